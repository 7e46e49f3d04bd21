//! TLSA records and the DANE certificate check, with certificates made by rcgen.

use std::sync::Arc;

use aws_lc_rs::digest;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const HOST: &str = "mx.example.test";

/// A self-signed certificate for `names` and its key's SubjectPublicKeyInfo.
fn self_signed(names: &[&str]) -> (CertificateDer<'static>, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    (made.cert.der().clone(), made.signing_key.subject_public_key_info())
}

/// A CA and a leaf for `host` it signed: (leaf, CA certificate, CA key's SPKI).
fn ca_and_leaf(ca_name: &str, host: &str) -> (CertificateDer<'static>, CertificateDer<'static>, Vec<u8>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = params.self_signed(&ca_key).unwrap().der().clone();
    let ca_spki = ca_key.subject_public_key_info();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &issuer).unwrap().der().clone();
    (leaf, ca, ca_spki)
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn sha512(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA512, data).as_ref().to_vec()
}

fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

/// The record `usage selector matching` for `cert` (whose key's SPKI is `spki`).
fn record_for(usage: u8, selector: u8, matching: u8, cert: &[u8], spki: &[u8]) -> Tlsa {
    let selected = if selector == SELECTOR_CERT { cert } else { spki };
    let data = match matching {
        MATCH_FULL => selected.to_vec(),
        MATCH_SHA256 => sha256(selected),
        _ => sha512(selected),
    };
    tlsa(usage, selector, matching, data)
}

fn verify(records: Vec<Tlsa>, chain: &[CertificateDer<'static>], name: &str) -> Result<(), rustls::Error> {
    let verifier = DaneVerifier::new(records, crate::tls::provider());
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn spki_is_the_certificates_public_key_info() {
    let (cert, spki_der) = self_signed(&[HOST]);
    assert_eq!(spki(&cert), Some(spki_der.as_slice()));
    let (leaf, ca, ca_spki) = ca_and_leaf("test CA", HOST);
    assert_eq!(spki(&ca), Some(ca_spki.as_slice()));
    assert!(spki(&leaf).is_some());
}

#[test]
fn spki_of_a_cut_or_garbled_certificate_is_none() {
    let (cert, _) = self_signed(&[HOST]);
    for cut in 0..cert.len() - 1 {
        // Cutting the outer SEQUENCE short always breaks its length.
        assert_eq!(spki(&cert[..cut]), None, "cut at {cut}");
    }
    assert_eq!(spki(b"\x30\x85\x00\x00\x00\x00\x01"), None, "5-byte length");
    assert_eq!(spki(b"\x04\x00"), None, "not a SEQUENCE");
}

#[test]
fn every_selector_and_matching_type_matches_its_certificate() {
    let (cert, spki_der) = self_signed(&[HOST]);
    let (other, _) = self_signed(&[HOST]);
    for selector in [SELECTOR_CERT, SELECTOR_SPKI] {
        for matching in [MATCH_FULL, MATCH_SHA256, MATCH_SHA512] {
            let record = record_for(DANE_EE, selector, matching, &cert, &spki_der);
            assert!(record.is_usable(), "3 {selector} {matching}");
            assert!(record.matches(&cert), "3 {selector} {matching}");
            assert!(
                !record.matches(&other),
                "3 {selector} {matching} matches another certificate"
            );
            let mut flipped = record.clone();
            flipped.data[0] ^= 1;
            assert!(!flipped.matches(&cert), "3 {selector} {matching} with a flipped byte");
        }
    }
}

#[test]
fn only_dane_usages_with_known_types_and_right_lengths_are_usable() {
    let digest = vec![0u8; 32];
    assert!(tlsa(DANE_EE, 1, 1, digest.clone()).is_usable());
    assert!(tlsa(DANE_TA, 0, 1, digest.clone()).is_usable());
    assert!(!tlsa(0, 1, 1, digest.clone()).is_usable(), "PKIX-TA(0)");
    assert!(!tlsa(1, 1, 1, digest.clone()).is_usable(), "PKIX-EE(1)");
    assert!(!tlsa(4, 1, 1, digest.clone()).is_usable(), "unassigned usage");
    assert!(!tlsa(DANE_EE, 2, 1, digest.clone()).is_usable(), "unknown selector");
    assert!(
        !tlsa(DANE_EE, 1, 3, digest.clone()).is_usable(),
        "unknown matching type"
    );
    assert!(!tlsa(DANE_EE, 1, 1, vec![0u8; 31]).is_usable(), "short SHA-256");
    assert!(!tlsa(DANE_EE, 1, 2, digest).is_usable(), "SHA-512 of 32 bytes");
    assert!(!tlsa(DANE_EE, 1, 0, Vec::new()).is_usable(), "empty full data");
    assert!(!tlsa(DANE_EE, 1, 7, vec![1]).matches(b"anything"));
}

#[test]
fn dane_ee_accepts_the_named_key_whatever_the_host_name() {
    let (cert, spki_der) = self_signed(&["some.other.name"]);
    let record = record_for(DANE_EE, SELECTOR_SPKI, MATCH_SHA256, &cert, &spki_der);
    assert_eq!(verify(vec![record.clone()], std::slice::from_ref(&cert), HOST), Ok(()));
    let (other, _) = self_signed(&[HOST]);
    let err = verify(vec![record], &[other], HOST).unwrap_err();
    assert!(
        err.to_string().contains("matches none of the host's TLSA records"),
        "{err}"
    );
}

#[test]
fn dane_ee_ignores_expiry() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap().der().clone();
    let record = record_for(
        DANE_EE,
        SELECTOR_CERT,
        MATCH_SHA512,
        &cert,
        &key.subject_public_key_info(),
    );
    assert_eq!(verify(vec![record], &[cert], HOST), Ok(()));
}

#[test]
fn dane_ta_needs_the_chain_and_the_host_name() {
    let (leaf, ca, ca_spki) = ca_and_leaf("test CA", HOST);
    let chain = [leaf.clone(), ca.clone()];
    for selector in [SELECTOR_CERT, SELECTOR_SPKI] {
        let record = record_for(DANE_TA, selector, MATCH_SHA256, &ca, &ca_spki);
        assert_eq!(verify(vec![record.clone()], &chain, HOST), Ok(()), "2 {selector} 1");
        assert!(
            verify(vec![record.clone()], &chain, "other.example.test").is_err(),
            "wrong name"
        );
        assert!(
            verify(vec![record], std::slice::from_ref(&leaf), HOST).is_err(),
            "TA not sent"
        );
    }
    let (_, other_ca, other_spki) = ca_and_leaf("other CA", HOST);
    let record = record_for(DANE_TA, SELECTOR_SPKI, MATCH_SHA256, &other_ca, &other_spki);
    assert!(verify(vec![record.clone()], &chain, HOST).is_err(), "another CA");
    // A server that sends the record's CA without having been signed by it.
    assert!(
        verify(vec![record], &[leaf, other_ca], HOST).is_err(),
        "not signed by the TA"
    );
}

#[test]
fn unusable_records_authenticate_nothing() {
    let (cert, spki_der) = self_signed(&[HOST]);
    for usage in [0, 1] {
        let record = record_for(usage, SELECTOR_SPKI, MATCH_SHA256, &cert, &spki_der);
        assert!(
            verify(vec![record], std::slice::from_ref(&cert), HOST).is_err(),
            "usage {usage}"
        );
    }
    // DANE-TA matches certificates after the server's own, never the server's own.
    let record = record_for(DANE_TA, SELECTOR_SPKI, MATCH_SHA256, &cert, &spki_der);
    assert!(verify(vec![record], std::slice::from_ref(&cert), HOST).is_err());
}

#[test]
fn any_matching_record_of_several_will_do() {
    let (cert, spki_der) = self_signed(&[HOST]);
    let (other, other_spki) = self_signed(&[HOST]);
    let records = vec![
        tlsa(1, 1, 1, sha256(&spki_der)),
        record_for(DANE_EE, SELECTOR_SPKI, MATCH_SHA256, &other, &other_spki),
        record_for(DANE_EE, SELECTOR_SPKI, MATCH_SHA256, &cert, &spki_der),
    ];
    assert_eq!(verify(records, &[cert], HOST), Ok(()));
}

/// A TLS handshake over an in-memory pipe with a server holding `cert` and `key`, the client
/// using [`client_config`] with `records`.
async fn handshake(records: Vec<Tlsa>, cert: CertificateDer<'static>, key: &KeyPair) -> Result<(), std::io::Error> {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(|_| ()) });
    let connector = tokio_rustls::TlsConnector::from(client_config(records));
    let name = ServerName::try_from(HOST).unwrap();
    let client = connector.connect(name, client_io).await.map(|_| ());
    let _ = server.await;
    client
}

#[tokio::test]
async fn handshake_succeeds_only_with_a_matching_record() {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["not-the-mx.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    let good = record_for(
        DANE_EE,
        SELECTOR_SPKI,
        MATCH_SHA256,
        &cert,
        &key.subject_public_key_info(),
    );
    assert!(handshake(vec![good], cert.clone(), &key).await.is_ok());
    let bad = tlsa(DANE_EE, SELECTOR_SPKI, MATCH_SHA256, vec![7; 32]);
    let err = handshake(vec![bad], cert, &key).await.unwrap_err();
    assert!(err.to_string().contains("TLSA"), "{err}");
}

/// A name server on one loopback port: over UDP it answers every question truncated, over TCP
/// with `reply` (given the question); returns its address.
async fn truncating_server(reply: impl Fn(&Message) -> Message + Send + Sync + 'static) -> std::net::SocketAddr {
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let query = Message::from_vec(&buf[..n]).unwrap();
            let mut truncated = Message::new();
            truncated
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_truncated(true)
                .add_queries(query.queries().to_vec());
            let _ = udp.send_to(&truncated.to_vec().unwrap(), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut query).await.unwrap();
            let answer = reply(&Message::from_vec(&query).unwrap()).to_vec().unwrap();
            stream.write_all(&(answer.len() as u16).to_be_bytes()).await.unwrap();
            stream.write_all(&answer).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn a_truncated_answer_is_asked_again_over_tcp_and_keeps_its_ad_bit() {
    let server = truncating_server(|query| {
        let q = &query.queries()[0];
        let asked_dnssec = query.authentic_data() && query.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_authentic_data(asked_dnssec)
            .add_query(q.clone());
        let tlsa = hickory_resolver::proto::rr::rdata::TLSA::new(3.into(), 1.into(), 1.into(), vec![9; 32]);
        reply.add_answer(Record::from_rdata(q.name().clone(), 300, RData::TLSA(tlsa)));
        reply
    })
    .await;
    let dns = SecureDns::new(&[server]).unwrap();
    let answer = dns.query("_25._tcp.mx.example.test", RecordType::TLSA).await.unwrap();
    assert!(answer.secure, "AD and DO were asked for, and the AD bit kept");
    assert_eq!((answer.nxdomain, answer.ttl, answer.records.len()), (false, 300, 1));
    let dane = Dane::new(dns, 25);
    // The MX, A and TLSA answers are all "secure" (the server answers TLSA to everything, so
    // the MX and A answers are secure NODATA): the host needs DANE with the one usable record.
    let hosts = dane.hosts("example.test", &["mx.example.test".into()]).await.unwrap();
    assert_eq!(hosts, [HostDane::Authenticated(vec![tlsa(3, 1, 1, vec![9; 32])])]);
}

#[tokio::test]
async fn servfail_from_every_server_is_an_error() {
    let server = truncating_server(|query| {
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_response_code(ResponseCode::ServFail)
            .add_queries(query.queries().to_vec());
        reply
    })
    .await;
    let dns = SecureDns::new(&[server]).unwrap();
    let err = dns.query("example.test", RecordType::MX).await.unwrap_err();
    assert!(
        err.contains("example.test MX") && err.contains("Server Failure"),
        "{err}"
    );
}
