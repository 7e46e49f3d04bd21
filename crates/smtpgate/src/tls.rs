//! TLS set-up with rustls: the server side from certificate files, the client side for delivery and
//! for upstream pools ([`UpstreamTls`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Loads a certificate chain and key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The Mozilla root certificates (the `webpki-roots` crate): the production trust anchors for
/// policy hosts and for MX certificates under an enforced policy.
pub fn webpki_roots() -> Arc<rustls::RootCertStore> {
    Arc::new(rustls::RootCertStore::from_iter(
        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
    ))
}

/// Trust anchors for verified TLS towards MX hosts and MTA-STS policy hosts: the public web PKI,
/// plus the certificates in `extra` (a PEM file: a private CA).
pub fn trust_roots(extra: Option<&Path>) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = (*webpki_roots()).clone();
    if let Some(path) = extra {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(Arc::new(roots))
}

/// Trust anchors for a pool's servers: the certificates in `ca_file` only (a private CA), or the
/// public web PKI when there is none.
pub fn pool_roots(ca_file: Option<&Path>) -> Result<Arc<rustls::RootCertStore>, String> {
    let Some(path) = ca_file else {
        return Ok(webpki_roots());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// What is known of a TLS session's certificate, and how to learn it.
#[derive(Clone, Debug)]
pub enum CertCheck {
    /// The handshake verified it (a verifying client configuration): a session is a verified one.
    InHandshake,
    /// The handshake took any certificate; this verifier judges it afterwards, so that credentials go
    /// only over a verified session.
    After(Arc<WebPkiServerVerifier>),
    /// Nobody asks (no credentials on this connection).
    NotChecked,
}

impl CertCheck {
    /// Whether the chain `conn` received is valid for `name`; why not when it is not.
    pub fn verify(&self, conn: &rustls::ClientConnection, name: &ServerName<'_>) -> Result<(), String> {
        let verifier = match self {
            CertCheck::InHandshake => return Ok(()),
            CertCheck::NotChecked => return Err("the certificate was not checked".into()),
            CertCheck::After(verifier) => verifier,
        };
        let Some((end_entity, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
            return Err("the server sent no certificate".into());
        };
        verifier
            .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("its certificate does not verify: {e}"))
    }
}

/// How one pool's connections do TLS: the configuration the handshake runs with, and how the
/// certificate is judged.
///
/// | pool | handshake | credentials |
/// | --- | --- | --- |
/// | `tls = "required"` | verifies chain and name (`ca_file` or the web PKI) | sent |
/// | `tls = "required"`, `tls_verify = false` | any certificate | sent (unless `auth_unverified = false`) |
/// | `tls = "opportunistic"` | any certificate | sent only if it verifies, or with `auth_unverified = true` |
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub check: CertCheck,
}

impl UpstreamTls {
    /// For a pool: `verify_in_handshake` is `tls = "required"` with `tls_verify`.
    pub fn new(verify_in_handshake: bool, ca_file: Option<&Path>) -> Result<UpstreamTls, String> {
        let roots = pool_roots(ca_file)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| format!("trust anchors: {e}"))?;
        if !verify_in_handshake {
            return Ok(UpstreamTls {
                config: client_config(),
                check: CertCheck::After(verifier),
            });
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(UpstreamTls {
            config: Arc::new(config),
            check: CertCheck::InHandshake,
        })
    }
}

/// The client configuration for delivery.
///
/// Opportunistic STARTTLS between MTAs does not authenticate the server (RFC 7435): a certificate
/// that does not verify is still better than plaintext. Authenticated TLS to a destination comes with
/// MTA-STS and DANE policies.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    client_config_verified_by(Arc::new(Unauthenticated(provider())))
}

/// A client configuration whose server certificates `verifier` judges (DANE's, or none).
pub fn client_config_verified_by(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// The cryptography every client configuration uses: aws-lc-rs, rustls's default provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug)]
struct Unauthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
