//! A tiny authoritative DNS server for tests, answering from a table (replaceable while it runs,
//! see [`DnsServer::replace`]).
//!
//! It listens on 127.0.0.1 over UDP and, on the same port, TCP (hickory retries over TCP
//! after a truncated or failed UDP exchange). Every name is looked up case-insensitively,
//! with or without the trailing dot:
//!
//! - a name with records of the asked type: NOERROR with those records;
//! - a name with records of other types only, or declared with [`DnsTable::nodata`]:
//!   NOERROR/NODATA (no answer, an SOA in the authority section);
//! - a name declared [`DnsTable::silent`]: no reply at all, over UDP or TCP (a timeout);
//! - a (name, type) declared with [`DnsTable::servfail`]: SERVFAIL;
//! - any other name (or one declared with [`DnsTable::nxdomain`]): NXDOMAIN.
//!
//! Answers about a name in a zone declared [`DnsTable::secure`] have the AD bit set when the
//! question asked for DNSSEC (the AD or DO bit), as a validating resolver's would; every other
//! answer has it clear. That is all the DNSSEC there is: no signatures.
//!
//! Every question it receives is recorded (see [`DnsServer::queries`]). Answers carry a TTL of
//! 5 s unless [`DnsTable::ttl`] says otherwise (0: resolvers do not cache them).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const TTL: u32 = 5;
const TCP_IDLE: Duration = Duration::from_secs(30);
const BIND_ATTEMPTS: usize = 20;

/// The records a [`DnsServer`] answers from.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    records: HashMap<String, Vec<RData>>,
    nodata: HashSet<String>,
    nxdomain: HashSet<String>,
    silent: HashSet<String>,
    servfail: HashSet<(String, RecordType)>,
    secure: HashSet<String>,
    ttl: Option<u32>,
}

/// One question the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: RecordType,
    /// Whether it came over TCP.
    pub tcp: bool,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let name = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&name).unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"))
}

impl DnsTable {
    pub fn new() -> DnsTable {
        DnsTable::default()
    }

    /// An MX record; an `exchange` of `"."` (or `""`) is the null MX of RFC 7505.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        let exchange = if exchange.trim_end_matches('.').is_empty() {
            Name::root()
        } else {
            fqdn(exchange)
        };
        let rdata = RData::MX(MX::new(preference, exchange));
        self.records.entry(key(name)).or_default().push(rdata);
        self
    }

    /// An A record.
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        let rdata = RData::A(A(ip));
        self.records.entry(key(name)).or_default().push(rdata);
        self
    }

    /// A TXT record (SPF, DKIM keys, DMARC policies); text longer than 255 bytes is split into
    /// several character-strings, as RFC 7208 3.3 and RFC 6376 3.6.2.2 expect.
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        let chunks = text.as_bytes().chunks(255);
        let strings = chunks.map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        let rdata = RData::TXT(TXT::new(strings));
        self.records.entry(key(name)).or_default().push(rdata);
        self
    }

    /// A TLSA record (RFC 6698): `usage selector matching data`, e.g. `3 1 1 <SHA-256 of the key>`
    /// at `_25._tcp.mx.example.test`.
    pub fn tlsa(mut self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> Self {
        let tlsa = TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data.to_vec(),
        );
        self.records.entry(key(name)).or_default().push(RData::TLSA(tlsa));
        self
    }

    /// Answers about `zone` and every name below it are "validated": the AD bit is set when
    /// the question asks for DNSSEC, as a validating resolver does for a signed zone.
    pub fn secure(mut self, zone: &str) -> Self {
        self.secure.insert(key(zone));
        self
    }

    /// Whether `name` (a key) is in a zone declared secure.
    fn is_secure(&self, name: &str) -> bool {
        self.secure
            .iter()
            .any(|zone| name == zone || name.ends_with(&format!(".{zone}")))
    }

    /// A name that exists but has no records (every question about it gets NODATA).
    pub fn nodata(mut self, name: &str) -> Self {
        self.nodata.insert(key(name));
        self
    }

    /// A name that does not exist. Unknown names get NXDOMAIN anyway; this documents it
    /// and wins over records added for the same name.
    pub fn nxdomain(mut self, name: &str) -> Self {
        self.nxdomain.insert(key(name));
        self
    }

    /// A name whose questions are never answered.
    pub fn silent(mut self, name: &str) -> Self {
        self.silent.insert(key(name));
        self
    }

    /// Questions about `name` of type `qtype` get SERVFAIL (a temporary failure).
    pub fn servfail(mut self, name: &str, qtype: RecordType) -> Self {
        self.servfail.insert((key(name), qtype));
        self
    }

    /// The TTL of every answer (5 s when not set).
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = Some(secs);
        self
    }

    /// The reply to `request`, or None to stay silent.
    fn answer(&self, request: &Message) -> Option<Message> {
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_authoritative(true)
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(false);
        let query = match (request.op_code(), request.queries()) {
            (OpCode::Query, [query]) => query.clone(),
            _ => {
                response.set_response_code(ResponseCode::FormErr);
                return Some(response);
            }
        };
        response.add_query(query.clone());
        let name = key(&query.name().to_ascii());
        if self.silent.contains(&name) {
            return None;
        }
        if self.servfail.contains(&(name.clone(), query.query_type())) {
            response.set_response_code(ResponseCode::ServFail);
            return Some(response);
        }
        let asks_dnssec =
            request.authentic_data() || request.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok);
        response.set_authentic_data(asks_dnssec && self.is_secure(&name));
        let records = self.records.get(&name).filter(|_| !self.nxdomain.contains(&name));
        let exists = records.is_some() || self.nodata.contains(&name);
        if !exists {
            response.set_response_code(ResponseCode::NXDomain);
            response.add_name_server(soa(&name));
            return Some(response);
        }
        let owner = query.name().clone();
        let matching: Vec<Record> = records
            .into_iter()
            .flatten()
            .filter(|r| r.record_type() == query.query_type())
            .map(|r| Record::from_rdata(owner.clone(), self.ttl.unwrap_or(TTL), r.clone()))
            .collect();
        response.set_response_code(ResponseCode::NoError);
        if matching.is_empty() {
            response.add_name_server(soa(&name));
        } else {
            response.add_answers(matching);
        }
        Some(response)
    }
}

/// The SOA of the zone `name` is in (its parent, or itself for a single label).
fn soa(name: &str) -> Record {
    let zone = name.split_once('.').map_or(name, |(_, parent)| parent);
    let zone = fqdn(if zone.is_empty() { "test" } else { zone });
    let rdata = SOA::new(fqdn("ns.test"), fqdn("hostmaster.test"), 1, 3600, 600, 86400, TTL);
    Record::from_rdata(zone, TTL, RData::SOA(rdata))
}

struct Shared {
    table: Mutex<DnsTable>,
    queries: Mutex<Vec<DnsQuery>>,
    stop: AtomicBool,
}

impl Shared {
    /// Decodes a request, records its questions and builds the reply bytes (None: no reply).
    fn handle(&self, bytes: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("[dns] undecodable request ({} bytes): {e}", bytes.len());
                return None;
            }
        };
        {
            let mut queries = self.queries.lock().unwrap();
            for q in request.queries() {
                queries.push(DnsQuery {
                    name: key(&q.name().to_ascii()),
                    qtype: q.query_type(),
                    tcp,
                });
            }
        }
        let response = self.table.lock().unwrap().answer(&request)?;
        match response.to_vec() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("[dns] cannot encode response: {e}");
                None
            }
        }
    }
}

/// A running DNS server on 127.0.0.1 (UDP and TCP, one port); stops on drop.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl DnsServer {
    pub fn start(table: DnsTable) -> DnsServer {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("udp local_addr");
        let shared = Arc::new(Shared {
            table: Mutex::new(table),
            queries: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let udp_shared = shared.clone();
        let udp_thread = thread::Builder::new()
            .name(format!("dns-udp-{}", addr.port()))
            .spawn(move || serve_udp(udp, udp_shared))
            .expect("spawn dns udp thread");
        let tcp_shared = shared.clone();
        let tcp_thread = thread::Builder::new()
            .name(format!("dns-tcp-{}", addr.port()))
            .spawn(move || serve_tcp(tcp, tcp_shared))
            .expect("spawn dns tcp thread");
        DnsServer {
            addr,
            shared,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// The address for `[dns] nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers from `table` from now on (a record changed at the authoritative server).
    pub fn replace(&self, table: DnsTable) {
        *self.shared.table.lock().unwrap() = table;
    }

    /// Every question received so far, in order.
    pub fn queries(&self) -> Vec<DnsQuery> {
        self.shared.queries.lock().unwrap().clone()
    }

    /// How many questions about `name` (any case, with or without the trailing dot) of
    /// type `qtype` have been received.
    pub fn query_count(&self, name: &str, qtype: RecordType) -> usize {
        let name = key(name);
        let queries = self.shared.queries.lock().unwrap();
        queries.iter().filter(|q| q.name == name && q.qtype == qtype).count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both blocking loops so they see the flag.
        if let Ok(s) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
            let _ = s.send_to(&[], self.addr);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free loopback port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind dns udp");
        let addr = udp.local_addr().expect("udp local_addr");
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP in {BIND_ATTEMPTS} attempts");
}

fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                eprintln!("[dns] udp receive failed: {e}");
                return;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if n == 0 {
            continue;
        }
        if let Some(reply) = shared.handle(&buf[..n], false) {
            let _ = socket.send_to(&reply, from);
        }
    }
}

fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        thread::spawn(move || {
            if let Err(e) = serve_tcp_conn(stream, &shared) {
                eprintln!("[dns] tcp connection ended: {e}");
            }
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client closes or idles out.
fn serve_tcp_conn(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TCP_IDLE))?;
    loop {
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut request)?;
        if let Some(reply) = shared.handle(&request, true) {
            let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
            stream.write_all(&len.to_be_bytes())?;
            stream.write_all(&reply)?;
        }
    }
}
