//! Finding where mail for a domain goes: MX records in preference order, the implicit MX, null MX.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// A host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MxError {
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    #[error("DNS lookup for {0} failed: {1}")]
    Temporary(String, String),
    #[error("no address found for the mail servers of {0}")]
    NoAddress(String),
}

impl MxError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, MxError::NullMx(_) | MxError::NoSuchDomain(_))
    }
}

/// Builds the resolver: the system's, or the configured name servers.
pub fn resolver(nameservers: &[SocketAddr]) -> std::io::Result<TokioResolver> {
    if nameservers.is_empty() {
        return Ok(TokioResolver::builder_tokio()?.build());
    }
    let mut config = ResolverConfig::new();
    for ns in nameservers {
        config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
    }
    Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build())
}

/// True for an answer that says the name exists but has no MX records (NOERROR, no data): only
/// then does the implicit MX apply (RFC 5321 5.1). SERVFAIL and REFUSED are failures to retry.
fn is_nodata(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    e.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NoError,
                ..
            }
        )
    })
}

/// Resolves the delivery targets of a domain (or an address literal like `[192.0.2.1]`) on `port`.
pub async fn targets(resolver: &TokioResolver, domain: &str, port: u16) -> Result<Vec<Target>, MxError> {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr = lit
            .trim_start_matches("IPv6:")
            .parse()
            .map_err(|_| MxError::NoSuchDomain(domain.into()))?;
        return Ok(vec![Target {
            host: domain.into(),
            addrs: vec![SocketAddr::new(ip, port)],
        }]);
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let hosts = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(mx) => {
            let mut records: Vec<(u16, String)> = mx
                .iter()
                .map(|r| {
                    (
                        r.preference(),
                        r.exchange().to_ascii().trim_end_matches('.').to_string(),
                    )
                })
                .collect();
            records.sort_by_key(|r| r.0);
            if records.len() == 1 && records[0].1.is_empty() {
                return Err(MxError::NullMx(domain.into()));
            }
            records.into_iter().map(|r| r.1).filter(|h| !h.is_empty()).collect()
        }
        Err(e) if e.is_nx_domain() => return Err(MxError::NoSuchDomain(domain.into())),
        Err(e) if is_nodata(&e) => vec![domain.to_string()],
        Err(e) => return Err(MxError::Temporary(domain.into(), e.to_string())),
    };
    let mut out = Vec::new();
    let mut last_err = None;
    for host in hosts {
        match resolver.lookup_ip(format!("{host}.").as_str()).await {
            Ok(ips) => {
                let addrs = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                out.push(Target { host, addrs });
            }
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    if out.is_empty() {
        return Err(match last_err {
            Some(e) => MxError::Temporary(domain.into(), e),
            None => MxError::NoAddress(domain.into()),
        });
    }
    Ok(out)
}
