//! DNS questions whose answers say whether they were validated: the AD bit of a validating
//! resolver the gate trusts (RFC 4035 3.2.3, RFC 6840 5.8).
//!
//! hickory's resolver does not expose the AD bit, so this asks the question itself: one query
//! with RD and AD set and EDNS0 with the DO bit, over UDP, again over TCP when the answer is
//! truncated, to each name server in turn until one answers NOERROR or NXDOMAIN.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one name server has to answer one question (over UDP, then TCP if truncated).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The EDNS0 UDP payload size offered (the DNS flag day 2020 value).
const UDP_PAYLOAD: u16 = 1232;
/// How long a negative answer without an SOA is kept.
const NEGATIVE_TTL: u32 = 60;

/// An answer: the records of the asked type, whether the resolver validated it, and its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer section's records of the asked type (CNAMEs and signatures left out).
    pub records: Vec<RData>,
    /// The AD bit: the resolver validated the answer (or the denial) with DNSSEC.
    pub secure: bool,
    /// NXDOMAIN (otherwise NOERROR, with or without records).
    pub nxdomain: bool,
    /// The smallest TTL of the records, or the negative TTL of the SOA (RFC 2308).
    pub ttl: u32,
}

/// Asks configured name servers questions with DNSSEC status.
#[derive(Debug, Clone)]
pub struct SecureDns {
    servers: Vec<SocketAddr>,
}

impl SecureDns {
    /// Asks `nameservers` (`[dns] nameservers`), or the system's (`/etc/resolv.conf`) when empty.
    pub fn new(nameservers: &[SocketAddr]) -> std::io::Result<SecureDns> {
        let mut servers = nameservers.to_vec();
        if servers.is_empty() {
            let (config, _) =
                hickory_resolver::system_conf::read_system_conf().map_err(|e| std::io::Error::other(e.to_string()))?;
            for ns in config.name_servers() {
                if !servers.contains(&ns.socket_addr) {
                    servers.push(ns.socket_addr);
                }
            }
        }
        if servers.is_empty() {
            return Err(std::io::Error::other("no name server configured"));
        }
        Ok(SecureDns { servers })
    }

    /// The answer to `name` `rtype`; an error when no server answered NOERROR or NXDOMAIN.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| format!("{name}: {e}"))?;
        let mut last = String::from("no name server");
        for server in &self.servers {
            match timeout(QUERY_TIMEOUT, exchange(*server, &fqdn, rtype)).await {
                Ok(Ok(reply)) => match answer(&reply, rtype) {
                    Ok(a) => return Ok(a),
                    Err(code) => last = format!("{server} answered {code}"),
                },
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server} did not answer within {QUERY_TIMEOUT:?}"),
            }
        }
        Err(format!("DNS lookup of {name} {rtype} failed: {last}"))
    }
}

/// The question as a message: RD and AD set, EDNS0 with DO (RFC 3225, RFC 6840 5.7).
fn request(id: u16, name: &Name, rtype: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_authentic_data(true)
        .add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD).set_version(0).set_dnssec_ok(true);
    message.set_edns(edns);
    message
}

/// What a reply says, or its response code when it is neither NOERROR nor NXDOMAIN.
fn answer(reply: &Message, rtype: RecordType) -> Result<Answer, ResponseCode> {
    let code = reply.response_code();
    if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
        return Err(code);
    }
    let records: Vec<_> = reply.answers().iter().filter(|r| r.record_type() == rtype).collect();
    let ttl = if records.is_empty() {
        let soa = reply.name_servers().iter().find_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        });
        soa.unwrap_or(NEGATIVE_TTL)
    } else {
        records.iter().map(|r| r.ttl()).min().unwrap_or(0)
    };
    Ok(Answer {
        records: records.iter().map(|r| r.data().clone()).collect(),
        secure: reply.authentic_data(),
        nxdomain: code == ResponseCode::NXDomain,
        ttl,
    })
}

/// One question to one server: UDP, then TCP when the reply is truncated.
async fn exchange(server: SocketAddr, name: &Name, rtype: RecordType) -> std::io::Result<Message> {
    let mut id = [0u8; 2];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| std::io::Error::other("no random id"))?;
    let id = u16::from_be_bytes(id);
    let bytes = request(id, name, rtype).to_vec().map_err(std::io::Error::other)?;
    let reply = udp(server, &bytes, id, name, rtype).await?;
    if !reply.truncated() {
        return Ok(reply);
    }
    tcp(server, &bytes, id, name, rtype).await
}

/// Whether `reply` answers our question `id`.
fn is_reply(reply: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    reply.id() == id
        && reply.message_type() == MessageType::Response
        && reply
            .queries()
            .first()
            .is_some_and(|q| q.query_type() == rtype && q.name() == name)
}

async fn udp(server: SocketAddr, bytes: &[u8], id: u16, name: &Name, rtype: RecordType) -> std::io::Result<Message> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything else (a late reply, a forgery) is ignored; the timeout ends the wait.
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && is_reply(&reply, id, name, rtype)
        {
            return Ok(reply);
        }
    }
}

async fn tcp(server: SocketAddr, bytes: &[u8], id: u16, name: &Name, rtype: RecordType) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    let reply = Message::from_vec(&reply).map_err(std::io::Error::other)?;
    if !is_reply(&reply, id, name, rtype) {
        return Err(std::io::Error::other("reply does not match the question"));
    }
    Ok(reply)
}
