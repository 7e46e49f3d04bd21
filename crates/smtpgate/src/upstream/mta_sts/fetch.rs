//! Fetching a policy file: one HTTPS GET (RFC 8461 3.3) with hyper's HTTP/1 client over the
//! tokio-rustls stream connected here. No redirects, no caching, status 200 and `text/plain`
//! only, 64 KiB at most, all of it within [`FETCH_TIMEOUT`].
//!
//! hyper does the framing (Content-Length, chunked, close-delimited); the rules of RFC 8461 are
//! checked here, on the response head before any of the body is read ([`check_head`]) and on the
//! body as it arrives ([`read_body`]). e2e_mta_sts.rs tests each rule against a real HTTPS host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{ACCEPT, CONNECTION, CONTENT_TYPE, HOST, TRANSFER_ENCODING, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole fetch (address lookup, connection, TLS, request and response) must fit in this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest policy body accepted (RFC 8461 3.3 suggests 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// hyper's read buffer, which bounds the status line and header block.
const MAX_HEAD: usize = 16 * 1024;
/// The well-known path of the policy file (RFC 8461 3.2).
const PATH: &str = "/.well-known/mta-sts.txt";

/// Where and how to fetch policies.
pub(super) struct Fetcher {
    pub resolver: TokioResolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub port: u16,
}

impl Fetcher {
    /// The text of `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    pub async fn fetch(&self, domain: &str) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(&host))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
            .map_err(|e| format!("https://{host}{PATH}: {e}"))
    }

    async fn fetch_from(&self, host: &str) -> Result<String, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad host name: {e}"))?;
        let addrs = self.addresses(host).await?;
        let tcp = connect_any(&addrs).await?;
        let connector = TlsConnector::from(self.tls.clone());
        let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let body = get(tls, host).await?;
        String::from_utf8(body.into()).map_err(|_| "the policy is not UTF-8".to_string())
    }

    async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let ips = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("address lookup: {e}"))?;
        Ok(ips.iter().map(|ip| SocketAddr::new(ip, self.port)).collect())
    }
}

/// Connects to the first address that accepts.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// `GET /.well-known/mta-sts.txt` on `stream` (`Connection: close`); the policy body once the
/// response has passed every rule.
async fn get<S>(stream: S, host: &str) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let request = Request::get(PATH)
        .header(HOST, host)
        .header(USER_AGENT, "smtpgate")
        .header(ACCEPT, "text/plain")
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        check_head(&response)?;
        read_body(response.into_body()).await
    };
    crate::io::alongside(conn, exchange).await
}

/// Status 200 (a redirect is not followed), `text/plain`, a framing hyper knows; the body is
/// left unread.
fn check_head(response: &Response<Incoming>) -> Result<(), String> {
    match response.status() {
        StatusCode::OK => {}
        s if s.is_redirection() => {
            return Err(format!(
                "HTTP status {}: redirects are not followed (RFC 8461 3.3)",
                s.as_u16()
            ));
        }
        s => return Err(format!("HTTP status {}", s.as_u16())),
    }
    let headers = response.headers();
    // A coding other than chunked last would leave the body close-delimited and encoded.
    for value in headers.get_all(TRANSFER_ENCODING) {
        let value = String::from_utf8_lossy(value.as_bytes());
        let last = value.rsplit(',').next().unwrap_or("").trim();
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(format!("unsupported Transfer-Encoding {value:?}"));
        }
    }
    let content_type = headers.get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()));
    check_content_type(content_type.as_deref())
}

/// RFC 8461 3.3: the media type must be `text/plain` (parameters such as `charset` allowed).
fn check_content_type(value: Option<&str>) -> Result<(), String> {
    let value = value.ok_or("no Content-Type (text/plain required)")?;
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/plain") {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {:?}, not text/plain",
            value.chars().take(64).collect::<String>()
        ))
    }
}

/// The body, at most [`MAX_BODY`] bytes. A declared length over the limit is refused before
/// reading; a chunked or close-delimited body as soon as it passes the limit.
async fn read_body(body: Incoming) -> Result<Bytes, String> {
    let too_large = || format!("policy larger than {MAX_BODY} bytes");
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(format!("reading the response: {e}")),
    }
}
