//! Certificates for TLS tests (rcgen): a test certificate authority and the server
//! certificates it signs, self-signed server certificates, and what DANE needs of them (the
//! key's SubjectPublicKeyInfo, SHA-256 digests for TLSA records).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PublicKeyData,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority for the test: its root and the certificates it signs.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub root: CertificateDer<'static>,
    /// The root key's SubjectPublicKeyInfo (DER).
    pub root_spki: Vec<u8>,
}

/// A server's certificate chain (its own first) and private key.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The server key's SubjectPublicKeyInfo (DER): what a `3 1 x` TLSA record names.
    pub spki: Vec<u8>,
}

impl ServerCert {
    /// A self-signed certificate for `host`, from no CA.
    pub fn self_signed(host: &str) -> ServerCert {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![host.to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        ServerCert {
            chain: vec![cert.der().clone()],
            spki: key.subject_public_key_info(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(smtpgate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server certificate");
        Arc::new(config)
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let root = params.self_signed(&key).expect("CA certificate").der().clone();
        TestCa {
            root_spki: key.subject_public_key_info(),
            issuer: Issuer::new(params, key),
            root,
        }
    }

    /// Trust anchors holding this CA only.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("CA root is a valid trust anchor");
        Arc::new(roots)
    }

    /// A server certificate for `host`, with its chain (leaf, root) and key.
    pub fn server_cert(&self, host: &str) -> ServerCert {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![host.to_string()]).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        ServerCert {
            chain: vec![leaf.der().clone(), self.root.clone()],
            spki: key.subject_public_key_info(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// The root in PEM, for `[mta_sts] ca_file`.
    pub fn root_pem(&self) -> String {
        pem(&self.root)
    }
}

/// A certificate in PEM.
pub fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// SHA-256 of `data`, as a TLSA record's `1` matching type holds it.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}
