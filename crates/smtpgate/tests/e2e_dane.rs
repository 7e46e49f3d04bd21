//! DANE (RFC 7672) in MX delivery: the `smtpgate` binary delivering to `example.test`, whose one
//! MX host `mx.example.test` is a scriptable [`Upstream`] on loopback (with or without STARTTLS),
//! against the test DNS server, which sets the AD bit for zones declared secure as a validating
//! resolver would. The TLSA records sit at `_<port>._tcp.mx.example.test`, the port being the
//! upstream's (`[queue] smtp_port`). One scenario per test.

mod support;

use std::net::Ipv4Addr;

use hickory_proto::rr::RecordType;
use support::{DnsServer, DnsTable, Gate, SOON, ServerCert, TestCa, Upstream, sha256, wait_until};

const DOMAIN: &str = "example.test";
const MX: &str = "mx.example.test";

/// A gate delivering `example.test` by MX through the test DNS server.
struct Scenario {
    gate: Gate,
    upstream: Upstream,
    dns: DnsServer,
}

impl Scenario {
    /// Starts the gate with `upstream` as the MX host; `zone` adds records to the usual MX and
    /// address records, and gets the TLSA owner name.
    fn start(upstream: Upstream, zone: impl FnOnce(DnsTable, &str) -> DnsTable) -> Scenario {
        let port = upstream.addr().port();
        let table = DnsTable::new().mx(DOMAIN, 10, MX).a(MX, Ipv4Addr::LOCALHOST);
        let dns = DnsServer::start(zone(table, &tlsa_name(port)));
        let gate = Gate::start(&format!(
            "hostname = \"gate.example.org\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
             relay_networks = [\"127.0.0.0/8\"]\n\n[dns]\nnameservers = [\"{dns}\"]\n\n\
             [queue]\nretry = [\"30s\"]\nsmtp_port = {port}\n",
            dns = dns.addr(),
        ));
        Scenario { gate, upstream, dns }
    }

    /// Sends one message to bob@example.test through the gate.
    fn send(&self) {
        let sent = support::smtplib_send(
            self.gate.smtp_addr(),
            "alice@example.org",
            &["bob@example.test"],
            &support::message("dane@example.org", "DANE", "Hello."),
        );
        assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    }

    /// The gate's log line for the first attempt to deliver to bob@example.test.
    fn attempt_line(&self) -> String {
        let find = || {
            (self.gate.stderr_lines().into_iter())
                .find(|l| l.contains("delivery attempt") && l.contains("bob@example.test"))
        };
        assert!(wait_until(SOON, || find().is_some()), "no delivery attempt logged");
        find().unwrap()
    }

    /// Checks that the attempt was deferred and nothing reached the MX; returns the log line.
    fn expect_deferred(&self) -> String {
        let line = self.attempt_line();
        assert!(line.contains("result=\"deferred\""), "{line}");
        assert!(self.upstream.messages().is_empty(), "mail reached the MX: {line}");
        assert_eq!(self.gate.metric("smtpgate_messages_bounced_total"), 0.0);
        line
    }

    /// The gate's warnings about DANE.
    fn dane_warnings(&self) -> Vec<String> {
        (self.gate.stderr_lines().into_iter())
            .filter(|l| l.contains("WARN") && l.contains("DANE"))
            .collect()
    }

    fn tlsa_queries(&self) -> usize {
        self.dns
            .query_count(&tlsa_name(self.upstream.addr().port()), RecordType::TLSA)
    }
}

fn tlsa_name(port: u16) -> String {
    format!("_{port}._tcp.{MX}")
}

/// Secure MX and a DANE-EE record for the MX's key: delivered over TLS, though the certificate
/// names another host (DANE-EE checks neither names nor dates).
#[test]
fn matching_dane_ee_record_delivers_over_tls() {
    let cert = ServerCert::self_signed("not-the-mx.example.net");
    let digest = sha256(&cert.spki);
    let s = Scenario::start(Upstream::with_starttls(&cert), |zone, tlsa| {
        zone.secure(DOMAIN).tlsa(tlsa, 3, 1, 1, &digest)
    });
    s.send();
    let got = s.upstream.wait_for(1, SOON);
    assert!(got[0].tls, "delivered without TLS");
    assert!(s.tlsa_queries() >= 1, "no TLSA lookup");
}

/// Secure MX and a DANE-EE record for another key: the handshake is refused, the attempt is
/// deferred with 4.7.5, and the warning names the host and the reason.
#[test]
fn tlsa_record_not_matching_the_certificate_defers() {
    let cert = ServerCert::self_signed(MX);
    let other = ServerCert::self_signed(MX);
    let digest = sha256(&other.spki);
    let s = Scenario::start(Upstream::with_starttls(&cert), |zone, tlsa| {
        zone.secure(DOMAIN).tlsa(tlsa, 3, 1, 1, &digest)
    });
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("TLSA"), "{line}");
    let warnings = s.dane_warnings();
    assert!(
        warnings.iter().any(|w| w.contains(MX) && w.contains("TLSA records")),
        "{warnings:#?}"
    );
}

/// The same mismatching record in a zone that is not secure (no AD bit): DANE does not apply and
/// the message goes out with opportunistic TLS.
#[test]
fn tlsa_record_in_an_insecure_zone_is_ignored() {
    let cert = ServerCert::self_signed(MX);
    let digest = sha256(&ServerCert::self_signed(MX).spki);
    let s = Scenario::start(Upstream::with_starttls(&cert), |zone, tlsa| {
        zone.tlsa(tlsa, 3, 1, 1, &digest)
    });
    s.send();
    let got = s.upstream.wait_for(1, SOON);
    assert!(got[0].tls);
    assert!(s.dane_warnings().is_empty(), "{:#?}", s.dane_warnings());
}

/// Secure TLSA records and an MX that offers no STARTTLS: never sent in plaintext; deferred.
#[test]
fn secure_tlsa_and_no_starttls_defers_and_never_sends_in_plaintext() {
    let digest = sha256(&ServerCert::self_signed(MX).spki);
    let s = Scenario::start(Upstream::start(), |zone, tlsa| {
        zone.secure(DOMAIN).tlsa(tlsa, 3, 1, 1, &digest)
    });
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("STARTTLS"), "{line}");
}

/// Only unusable records (PKIX-EE, an unknown selector): TLS is still mandatory (RFC 7672 2.2).
#[test]
fn unusable_tlsa_records_still_require_starttls() {
    let digest = sha256(&ServerCert::self_signed(MX).spki);
    let s = Scenario::start(Upstream::start(), |zone, tlsa| {
        zone.secure(DOMAIN)
            .tlsa(tlsa, 1, 1, 1, &digest)
            .tlsa(tlsa, 3, 7, 1, &digest)
    });
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("STARTTLS"), "{line}");
}

/// A DANE-TA record for the test CA; the MX presents a certificate for its name from that CA,
/// with the CA in its chain: delivered over TLS.
#[test]
fn dane_ta_record_delivers_when_the_chain_and_name_match() {
    let ca = TestCa::new("DANE test CA");
    let digest = sha256(&ca.root_spki);
    let s = Scenario::start(Upstream::with_starttls(&ca.server_cert(MX)), |zone, tlsa| {
        zone.secure(DOMAIN).tlsa(tlsa, 2, 1, 1, &digest)
    });
    s.send();
    let got = s.upstream.wait_for(1, SOON);
    assert!(got[0].tls);
}

/// A DANE-TA record for the test CA, but the MX's certificate from it names another host.
#[test]
fn dane_ta_record_refuses_a_certificate_for_another_name() {
    let ca = TestCa::new("DANE test CA");
    let digest = sha256(&ca.root_spki);
    let cert = ca.server_cert("www.example.test");
    let s = Scenario::start(Upstream::with_starttls(&cert), |zone, tlsa| {
        zone.secure(DOMAIN).tlsa(tlsa, 2, 1, 1, &digest)
    });
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("TLS required"), "{line}");
}

/// The TLSA lookup of a host with a secure MX fails (SERVFAIL): the host is not used, even though
/// it offers STARTTLS; deferred with 4.7.5, and the warning says why.
#[test]
fn tlsa_servfail_for_a_secure_mx_defers() {
    let cert = ServerCert::self_signed(MX);
    let s = Scenario::start(Upstream::with_starttls(&cert), |zone, tlsa| {
        zone.secure(DOMAIN).servfail(tlsa, RecordType::TLSA)
    });
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("DANE") && line.contains("Server Failure"), "{line}");
    assert_eq!(s.upstream.connection_count(), 0, "the host was contacted");
    let warnings = s.dane_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("TLSA lookup failed") && w.contains(MX)),
        "{warnings:#?}"
    );
}
