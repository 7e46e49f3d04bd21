//! The byte stream a session or a delivery talks over: plain TCP, TLS, or an in-memory pipe in tests.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any bidirectional byte stream. Boxed so that STARTTLS can replace a stream in place.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// What a TLS handshake settled, for logs and the `Received:` header.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

impl TlsInfo {
    pub fn from_conn(conn: &rustls::CommonState) -> Self {
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace('_', ".");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        TlsInfo { version, cipher }
    }
}

/// A stream that reads nothing and discards writes: stands in while a stream is being upgraded.
pub fn placeholder() -> BoxIo {
    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()))
}

/// The address a client is counted as: IPv4 as it is, IPv6 cut to `ipv6_prefix` bits.
pub fn client_key(ip: std::net::IpAddr, ipv6_prefix: u8) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// Runs an HTTP `exchange` while `conn` (hyper's connection task) moves its bytes; both end
/// together, so nothing is left running after a timeout. The exchange's result is the answer: a
/// failure of the connection reaches it as an error of the response or the body. For the gate's
/// HTTP clients (MTA-STS policy fetches, rspamd).
pub async fn alongside<T>(conn: impl std::future::Future, exchange: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(conn, exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            out = &mut exchange => return out,
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}
