//! The gate's side of connections to other mail servers, as runtime services: the SMTP client,
//! the upstream pools (balance, health, idle connections), MX lookups, MTA-STS policies and DANE.
//! Nothing here knows the queue or the running server's [`Context`](crate::context::Context):
//! delivery (`crate::deliver`) puts these together for one attempt.

pub mod client;
pub mod dane;
pub mod mta_sts;
pub mod mx;
pub mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;

use crate::config::QueueConfig;

/// What every connection to another mail server needs from the running configuration.
pub struct Dialer {
    pub resolver: TokioResolver,
    /// Our name in EHLO.
    pub hostname: String,
    /// The client TLS configuration for opportunistic TLS.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Timeouts and the SMTP port.
    pub queue: QueueConfig,
}

impl Dialer {
    /// The addresses of `host` (an IP address stands for itself); none when it does not resolve.
    pub async fn resolve_host(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![SocketAddr::new(ip, port)];
        }
        match self.resolver.lookup_ip(format!("{host}.").as_str()).await {
            Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot resolve upstream server");
                Vec::new()
            }
        }
    }
}

/// No server could be reached for a delivery: a temporary failure with its enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub status: &'static str,
    pub text: String,
}
