//! Routing plans from configurations, without the network.

use std::sync::Arc;

use super::message::MessageView;
use super::plan::{Plan, Router};
use crate::config::Config;
use crate::envelope::Recipient;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> &Self {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn router(&self, routes: &str) -> Router {
        let text = format!(
            r#"
[admin]
enabled = false
[[listener]]
name = "in"
address = "127.0.0.1:0"
local_domains = ["example.test", "lists.example.test"]
[[pool]]
name = "old"
servers = ["127.0.0.1:2601"]
[[pool]]
name = "new"
servers = ["127.0.0.1:2602"]
[[pool]]
name = "archive"
servers = ["127.0.0.1:2603"]
{routes}
"#
        );
        let config = Config::from_toml_str(&text, self.dir.path()).unwrap_or_else(|e| panic!("{e}"));
        Router::new(Arc::new(config)).unwrap()
    }
}

fn plan(router: &Router, from: &str, to: &[&str], message: &[u8]) -> Plan {
    let view = MessageView {
        sender: crate::envelope::Sender::parse(from).unwrap(),
        listener: "in".into(),
        ..Default::default()
    }
    .with_message(message, 1 << 20);
    let rcpts: Vec<Recipient> = to.iter().map(|a| Recipient::parse(a).unwrap()).collect();
    router.plan(&view, &rcpts)
}

/// (pool, recipients) of each copy.
fn copies(p: &Plan) -> Vec<(Option<&str>, Vec<&str>)> {
    p.groups
        .iter()
        .map(|g| {
            (
                g.pool.as_deref(),
                g.recipients.iter().map(|r| r.address.as_str()).collect(),
            )
        })
        .collect()
}

const MSG: &[u8] = b"Subject: quarterly invoice\r\nX-Priority: 1 (Highest)\r\n\r\nplease pay\r\n";

#[test]
fn first_matching_rule_decides_and_the_rest_go_by_mx() {
    let r = Setup::new().router(
        r#"
[[route]]
name = "partners"
when = { recipient_domain = ["partner.example"], header = { "X-Priority" = "^1" } }
pool = "new"
[[route]]
when = { recipient_domain = "partner.example" }
pool = "old"
"#,
    );
    let p = plan(&r, "a@example.test", &["x@partner.example", "y@other.example"], MSG);
    assert_eq!(
        copies(&p),
        vec![
            (Some("new"), vec!["x@partner.example"]),
            (None, vec!["y@other.example"])
        ]
    );
    assert!(
        p.trace.iter().any(|t| t.contains("rule \"partners\" matched")),
        "{:?}",
        p.trace
    );
    let p = plan(&r, "a@example.test", &["x@partner.example"], b"Subject: hi\r\n\r\n");
    assert_eq!(copies(&p), vec![(Some("old"), vec!["x@partner.example"])]);
}

#[test]
fn every_kind_of_condition() {
    let s = Setup::new();
    s.file("migrated.txt", "moved@example.test\n# comment\n");
    let r = s.router(
        r#"
[[route]]
when = { sender = "/^boss@/" , subject = "invoice" }
pool = "archive"
[[route]]
when = { recipient_file = "migrated.txt" }
pool = "new"
[[route]]
when = { size_over = "1MB" }
reject = "552 5.3.4 too big for this route"
[[route]]
when = { body = "secret" }
discard = true
[[route]]
when = { recipient_domain = "example.test" }
pool = "old"
"#,
    );
    let p = plan(&r, "boss@corp.test", &["u@example.test"], MSG);
    assert_eq!(copies(&p), vec![(Some("archive"), vec!["u@example.test"])]);
    let p = plan(&r, "x@corp.test", &["moved@example.test", "stays@example.test"], MSG);
    assert_eq!(
        copies(&p),
        vec![
            (Some("new"), vec!["moved@example.test"]),
            (Some("old"), vec!["stays@example.test"])
        ]
    );
    let big = [b"Subject: x\r\n\r\n".as_slice(), &vec![b'a'; 1_100_000]].concat();
    let p = plan(&r, "x@corp.test", &["stays@example.test"], &big);
    assert_eq!(p.reject.as_ref().map(|r| r.code), Some(552));
    let p = plan(
        &r,
        "x@corp.test",
        &["stays@example.test"],
        b"Subject: x\r\n\r\nthe secret plan\r\n",
    );
    assert!(p.groups.is_empty());
    assert_eq!(p.discarded, vec!["stays@example.test"]);
}

#[test]
fn continue_rules_add_headers_tags_and_copies() {
    let r = Setup::new().router(
        r#"
[[route]]
continue = true
copy_to = ["journal@archive.test"]
add_headers = { "X-Journaled" = "yes" }
tag = "journaled"
[[route]]
when = { recipient = "journal@archive.test" }
pool = "archive"
[[route]]
when = { tag = "journaled" }
pool = "old"
"#,
    );
    let p = plan(&r, "a@example.test", &["b@example.test", "c@example.test"], MSG);
    assert!(p.reject.is_none(), "a copy is not copied again: {:?}", p.trace);
    let c = copies(&p);
    assert!(
        c.contains(&(Some("archive"), vec!["journal@archive.test"])),
        "one archive copy: {c:?}"
    );
    assert!(
        c.contains(&(Some("old"), vec!["b@example.test", "c@example.test"])),
        "{c:?}"
    );
    let old = p.groups.iter().find(|g| g.pool.as_deref() == Some("old")).unwrap();
    assert_eq!(old.add_headers, vec![("X-Journaled".to_string(), "yes".to_string())]);
}

#[test]
fn redirect_replaces_the_recipient_and_is_routed_again() {
    let r = Setup::new().router(
        r#"
[[route]]
when = { recipient = "old-address@example.test" }
redirect = ["new-address@elsewhere.test"]
[[route]]
when = { recipient_domain = "elsewhere.test" }
pool = "new"
"#,
    );
    let p = plan(&r, "a@x.test", &["old-address@example.test"], MSG);
    assert_eq!(copies(&p), vec![(Some("new"), vec!["new-address@elsewhere.test"])]);
}

#[test]
fn redirect_loop_is_refused_not_followed_forever() {
    let r = Setup::new().router(
        r#"
[[route]]
when = { recipient = "a@example.test" }
redirect = "b@example.test"
[[route]]
when = { recipient = "b@example.test" }
redirect = "a@example.test"
"#,
    );
    let p = plan(&r, "s@x.test", &["a@example.test"], MSG);
    assert_eq!(
        p.reject.as_ref().map(|r| (r.code, r.status.as_str())),
        Some((554, "5.4.6"))
    );
}

#[test]
fn rcpt_time_rejection_only_from_envelope_rules() {
    let r = Setup::new().router(
        r#"
[[route]]
when = { recipient = "@blocked.test" }
reject = "550 5.7.1 we do not send there"
[[route]]
when = { subject = "x" }
pool = "old"
[[route]]
when = { recipient = "late@blocked2.test" }
reject = "550 5.7.1 decided at DATA"
"#,
    );
    let view = MessageView {
        sender: crate::envelope::Sender::parse("a@example.test").unwrap(),
        ..Default::default()
    };
    let r1 = r.check_rcpt(&view, "x@blocked.test").expect("refused at RCPT");
    assert_eq!((r1.code, r1.text.as_str()), (550, "we do not send there"));
    assert_eq!(
        r.check_rcpt(&view, "late@blocked2.test"),
        None,
        "a content rule comes first: wait for DATA"
    );
}

#[test]
fn rcpt_time_rejection_waits_for_aliases() {
    let s = Setup::new();
    s.file("aliases", "team@example.test: a@x.test\n");
    let r = s.router("[routing]\naliases = \"aliases\"\n[[route]]\nwhen = { recipient = \"team@example.test\" }\nreject = \"550 5.7.1 closed\"\n");
    let view = MessageView {
        sender: crate::envelope::Sender::parse("s@example.test").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        r.check_rcpt(&view, "team@example.test"),
        None,
        "the rules see a@x.test, not the alias"
    );
}

#[test]
fn domain_fields_accept_a_leading_at_and_body_anchors_see_crlf_lines() {
    let r = Setup::new().router(
        "[[route]]\nwhen = { recipient_domain = \"@d.test\" }\npool = \"new\"\n[[route]]\nwhen = { body = \"(?m)^magic$\" }\npool = \"old\"\n",
    );
    assert_eq!(
        copies(&plan(&r, "s@x.test", &["c@d.test"], MSG)),
        vec![(Some("new"), vec!["c@d.test"])]
    );
    let p = plan(
        &r,
        "s@x.test",
        &["c@e.test"],
        b"Subject: x\r\n\r\nfirst\r\nmagic\r\nlast\r\n",
    );
    assert_eq!(copies(&p), vec![(Some("old"), vec!["c@e.test"])]);
}

#[test]
fn aliases_expand_nested_lists_and_detect_loops() {
    let s = Setup::new();
    s.file(
        "aliases",
        "team@example.test: alice@example.test, lead@example.test\nlead@example.test: bob@elsewhere.test\n\
         loop1@example.test: loop2@example.test\nloop2@example.test: loop1@example.test\n@old.test: @example.test\n",
    );
    let r = s.router("[routing]\naliases = \"aliases\"\n");
    let p = plan(&r, "s@x.test", &["team@example.test"], MSG);
    let mut all: Vec<&str> = p
        .groups
        .iter()
        .flat_map(|g| g.recipients.iter().map(|r| r.address.as_str()))
        .collect();
    all.sort();
    assert_eq!(all, vec!["alice@example.test", "bob@elsewhere.test"]);
    let p = plan(&r, "s@x.test", &["someone@old.test"], MSG);
    assert_eq!(copies(&p), vec![(None, vec!["someone@example.test"])]);
    let p = plan(&r, "s@x.test", &["loop1@example.test"], MSG);
    assert!(p.reject.is_some(), "alias loop is refused: {:?}", p.trace);
}

#[test]
fn sieve_redirect_copy_keeps_and_forwards() {
    let s = Setup::new();
    s.file(
        "sieve/alice@example.test.sieve",
        "require [\"copy\"];\nif header :contains \"subject\" \"invoice\" { redirect :copy \"books@partner.example\"; }\n",
    );
    let r = s.router("[routing]\nsieve_dir = \"sieve\"\n[[route]]\nwhen = { recipient_domain = \"partner.example\" }\npool = \"new\"\n");
    let p = plan(&r, "s@x.test", &["alice@example.test"], MSG);
    let c = copies(&p);
    assert!(c.contains(&(Some("new"), vec!["books@partner.example"])), "{c:?}");
    assert!(c.contains(&(None, vec!["alice@example.test"])), "{c:?}");
    let p = plan(&r, "s@x.test", &["alice@example.test"], b"Subject: lunch\r\n\r\n");
    assert_eq!(copies(&p), vec![(None, vec!["alice@example.test"])]);
}

#[test]
fn forwarding_to_another_domain_rewrites_the_sender_with_srs() {
    let s = Setup::new();
    s.file("aliases", "fwd@example.test: me@gmail.example\n");
    let r = s.router(
        "[routing]\naliases = \"aliases\"\nsrs = { secret = \"0123456789abcdef0123\", domain = \"example.test\" }\n",
    );
    let p = plan(&r, "sender@origin.test", &["fwd@example.test"], MSG);
    let srs = p.groups[0].srs_sender.clone().expect("rewritten");
    assert!(srs.starts_with("SRS0=") && srs.ends_with("@example.test"), "{srs}");
    // A bounce to the rewritten address goes back to the original sender.
    let back = plan(&r, "", &[&srs], MSG);
    assert_eq!(copies(&back), vec![(None, vec!["sender@origin.test"])]);
    // Not forwarded: no rewrite.
    let p = plan(&r, "sender@origin.test", &["direct@gmail.example"], MSG);
    assert_eq!(p.groups[0].srs_sender, None);
}

/// Regression: any mail to an SRS address was reversed, so whoever saw one of our SRS addresses could
/// send through us to the original sender. Only a bounce (the null sender) is reversed now.
#[test]
fn srs_address_is_reversed_for_bounces_only() {
    let s = Setup::new();
    s.file("aliases", "fwd@example.test: me@gmail.example\n");
    let r = s.router(
        "[routing]\naliases = \"aliases\"\nsrs = { secret = \"0123456789abcdef0123\", domain = \"srs.test\" }\n",
    );
    let srs = plan(&r, "sender@origin.test", &["fwd@example.test"], MSG).groups[0]
        .srs_sender
        .clone()
        .expect("rewritten");
    let bounce = plan(&r, "", &[&srs], MSG);
    assert_eq!(copies(&bounce), vec![(None, vec!["sender@origin.test"])]);
    let spam = plan(&r, "spammer@elsewhere.test", &[&srs], MSG);
    assert_eq!(copies(&spam), vec![(None, vec![srs.as_str()])], "{:#?}", spam.trace);
    assert!(
        spam.trace.iter().any(|l| l.contains("not a bounce")),
        "{:#?}",
        spam.trace
    );
}

/// A proxy listener routes at RCPT time: content rules are passed over, aliases still apply.
#[test]
fn envelope_plan_skips_content_rules_and_expands_aliases() {
    let s = Setup::new();
    s.file("aliases", "team@example.test: a@example.test, b@example.test\n");
    let r = s.router(
        r#"
[routing]
aliases = "aliases"
[[route]]
when = { subject = "invoice" }
pool = "archive"
[[route]]
when = { recipient_domain = "example.test" }
pool = "new"
[[route]]
pool = "old"
"#,
    );
    let view = MessageView {
        sender: crate::envelope::Sender::parse("s@example.org").unwrap(),
        listener: "in".into(),
        ..Default::default()
    };
    let team = r.plan_envelope(&view, &Recipient::parse("team@example.test").unwrap());
    assert_eq!(
        copies(&team),
        vec![(Some("new"), vec!["a@example.test", "b@example.test"])]
    );
    let other = r.plan_envelope(&view, &Recipient::parse("x@example.org").unwrap());
    assert_eq!(copies(&other), vec![(Some("old"), vec!["x@example.org"])]);
    // The full plan, with the message, takes the content rule first.
    let full = plan(&r, "s@example.org", &["x@example.org"], MSG);
    assert_eq!(copies(&full), vec![(Some("archive"), vec!["x@example.org"])]);
}
