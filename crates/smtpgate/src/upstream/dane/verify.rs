//! The certificate check of a DANE connection (RFC 7672 3): the server's chain must match one of
//! the host's usable TLSA records.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::tlsa::{DANE_EE, DANE_TA, Tlsa};

/// Accepts a server's chain when one of the usable TLSA records matches it:
///
/// - DANE-EE(3): the server's own certificate (its key, with selector 1) matches; its names and
///   validity dates are not looked at (RFC 7672 3.1.1).
/// - DANE-TA(2): a certificate the server sent after its own matches, and the server's
///   certificate chains to it (signatures, validity, server-authentication use) and is valid for
///   the name the connection was made with: the MX host name (RFC 7672 3.1.2, 3.2.2, 3.2.3).
///
/// The handshake's signatures are checked with the crypto provider as for any connection.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for a host with these TLSA records; unusable ones are left out.
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        let records = records.into_iter().filter(Tlsa::is_usable).collect();
        DaneVerifier { records, provider }
    }

    fn usage(&self, usage: u8) -> impl Iterator<Item = &Tlsa> {
        self.records.iter().filter(move |r| r.usage == usage)
    }

    /// Whether the chain leads from `end_entity` to a DANE-TA certificate among `intermediates`,
    /// with the name checked; the last failure when it does not.
    fn trust_anchor(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut last = no_match();
        let anchors = intermediates
            .iter()
            .filter(|c| self.usage(DANE_TA).any(|r| r.matches(c)));
        for anchor in anchors {
            let mut roots = RootCertStore::empty();
            if let Err(e) = roots.add(anchor.clone().into_owned()) {
                last = e;
                continue;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            match verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The error for a chain that no TLSA record matches.
fn no_match() -> rustls::Error {
    const TEXT: &str = "the certificate chain matches none of the host's TLSA records";
    /// rustls shows the error with `Debug`, so both say what happened.
    #[derive(thiserror::Error)]
    #[error("{TEXT}")]
    struct NoMatch;
    impl std::fmt::Debug for NoMatch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(TEXT)
        }
    }
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NoMatch))))
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.usage(DANE_EE).any(|r| r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        self.trust_anchor(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for a connection to a host with these TLSA records.
pub fn client_config(records: Vec<Tlsa>) -> Arc<rustls::ClientConfig> {
    crate::tls::client_config_verified_by(Arc::new(DaneVerifier::new(records, crate::tls::provider())))
}
