//! One POST of a batch: hyper's HTTP/1 client over a TCP connection, with rustls (the public
//! web PKI) for https://. One connection per batch (`Connection: close`): batches are seconds
//! apart at the least, and a fresh connection never meets a stale one. The whole exchange fits
//! in the webhook's `timeout`. The body of the answer is not read: only its status counts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// What became of a POST that reached the receiver: its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// A 4xx other than 408 and 429: the receiver says the request is wrong, which is worth a
    /// louder log line (it is still retried: the receiver may be misconfigured for a while).
    pub fn is_refusal(self) -> bool {
        (400..500).contains(&self.0) && self.0 != 408 && self.0 != 429
    }
}

/// Where one webhook posts to.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub uri: Uri,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub secret: Option<Vec<u8>>,
}

impl Target {
    /// Parses the URL (checked at load); https gets a verifying client configuration.
    pub fn new(config: &crate::config::webhook::WebhookConfig) -> Result<Target, String> {
        let uri: Uri = config
            .url
            .parse()
            .map_err(|_| format!("{:?} is not a URL", config.url))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(verifying_config()?),
            Some("http") => None,
            _ => return Err(format!("{:?} is not an http:// or https:// URL", config.url)),
        };
        Ok(Target {
            name: config.name.clone(),
            uri,
            tls,
            timeout: config.timeout,
            secret: config.secret.as_ref().map(|s| s.0.as_bytes().to_vec()),
        })
    }

    /// POSTs `body` (a JSON array) signed at `timestamp`; the receiver's status, or why none came.
    pub async fn post(&self, body: Bytes, timestamp: u64) -> Result<Status, String> {
        tokio::time::timeout(self.timeout, self.exchange(body, timestamp))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    async fn exchange(&self, body: Bytes, timestamp: u64) -> Result<Status, String> {
        let host = self.uri.host().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let request = self.request(body, timestamp)?;
        match &self.tls {
            None => send(tcp, request).await,
            Some(config) => {
                let name = ServerName::try_from(bare.to_string()).map_err(|e| format!("bad host name: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                send(tls, request).await
            }
        }
    }

    fn request(&self, body: Bytes, timestamp: u64) -> Result<Request<Full<Bytes>>, String> {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let mut builder = Request::post(path)
            .header(HOST, authority)
            .header(USER_AGENT, "smtpgate")
            .header(CONTENT_TYPE, "application/json")
            .header(CONNECTION, "close")
            .header("Smtpgate-Webhook", &self.name)
            .header("Smtpgate-Timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            builder = builder.header("Smtpgate-Signature", super::sign::signature(secret, timestamp, &body));
        }
        builder
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))
    }
}

/// Sends `request` on `stream` and returns the status of the answer.
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Status, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        Ok(Status(response.status().as_u16()))
    };
    crate::io::alongside(conn, exchange).await
}

/// A client configuration that verifies the receiver's certificate against the public web PKI.
fn verifying_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(crate::tls::webpki_roots())
        .with_no_client_auth();
    Ok(Arc::new(config))
}
