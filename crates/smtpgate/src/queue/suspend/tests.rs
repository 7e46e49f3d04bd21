use super::*;
use crate::envelope::{QueueId, Sender};

fn env(rcpts: &[&str], pool: Option<&str>, route: Option<&str>, stream: Option<&str>) -> Envelope {
    Envelope {
        id: QueueId(1),
        sender: Sender::parse("a@sender.test").unwrap(),
        recipients: rcpts.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
        received_at: 0,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        pool: pool.map(Into::into),
        scan: Vec::new(),
        stream: stream.map(Into::into),
        route: route.map(Into::into),
    }
}

fn suspension(kind: Scope, value: &str, since: u64, until: Option<u64>) -> Suspension {
    Suspension {
        kind,
        value: kind.normalize(value).unwrap(),
        since,
        until,
        reason: Some("test".into()),
        by: "127.0.0.1:1".into(),
    }
}

#[test]
fn each_kind_covers_what_it_names_and_nothing_else() {
    let e = env(
        &["x@Example.COM", "y@other.test"],
        Some("relay"),
        Some("bulk-rule"),
        Some("bulk"),
    );
    let (example, other) = (&e.recipients[0], &e.recipients[1]);
    let domain = suspension(Scope::Domain, "EXAMPLE.com.", 0, None);
    assert_eq!(domain.value, "example.com");
    assert!(domain.covers(&e, example));
    assert!(!domain.covers(&e, other));
    assert!(!suspension(Scope::Domain, "com", 0, None).covers(&e, example));
    assert!(suspension(Scope::Pool, "relay", 0, None).covers(&e, other));
    assert!(!suspension(Scope::Pool, "Relay", 0, None).covers(&e, other));
    assert!(suspension(Scope::Route, "bulk-rule", 0, None).covers(&e, example));
    assert!(!suspension(Scope::Route, "bulk", 0, None).covers(&e, example));
    assert!(suspension(Scope::Stream, "bulk", 0, None).covers(&e, example));
    assert!(!suspension(Scope::Stream, "default", 0, None).covers(&e, example));
    // A copy by MX, with no rule and no stream: only a domain or the default stream.
    let mx = env(&["x@example.com"], None, None, None);
    assert!(suspension(Scope::Stream, "default", 0, None).covers(&mx, &mx.recipients[0]));
    assert!(!suspension(Scope::Pool, "relay", 0, None).covers(&mx, &mx.recipients[0]));
    assert!(!suspension(Scope::Route, "bulk-rule", 0, None).covers(&mx, &mx.recipients[0]));
}

#[test]
fn values_are_checked() {
    assert!(Scope::Domain.normalize("").is_err());
    assert!(Scope::Domain.normalize("a@b.test").is_err());
    assert!(Scope::Domain.normalize("a..b").is_err());
    assert!(Scope::Pool.normalize("a b").is_err());
    assert!(Scope::Route.normalize("a/b").is_err());
    assert!(Scope::Stream.normalize(&"x".repeat(MAX_TEXT + 1)).is_err());
    assert_eq!("route".parse::<Scope>(), Ok(Scope::Route));
    assert!("host".parse::<Scope>().is_err());
}

#[test]
fn one_with_a_duration_lapses_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let all = Suspensions::open(dir.path()).unwrap();
    let e = env(&["x@example.com"], None, None, None);
    all.set(suspension(Scope::Domain, "example.com", 1000, Some(5000)))
        .unwrap();
    assert!(all.covers(&e, &e.recipients[0], 4999));
    assert!(!all.covers(&e, &e.recipients[0], 5000));
    assert_eq!(all.next_lapse(), Some(5000));
    assert!(all.prune(4999).unwrap().is_empty());
    assert_eq!(all.prune(5000).unwrap().len(), 1);
    assert!(all.is_empty());
    assert!(all.active(0).is_empty());
    // Gone from the file too.
    assert!(Suspensions::open(dir.path()).unwrap().is_empty());
}

#[test]
fn changes_are_in_the_file_before_they_apply_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let all = Suspensions::open(dir.path()).unwrap();
    assert!(all.is_empty());
    let domain = suspension(Scope::Domain, "example.com", 1000, None);
    let pool = suspension(Scope::Pool, "relay", 2000, Some(9_000_000));
    assert_eq!(all.set(domain.clone()).unwrap(), None);
    assert_eq!(all.set(pool.clone()).unwrap(), None);
    let again = Suspensions::open(dir.path()).unwrap();
    assert_eq!(again.active(3000), vec![domain.clone(), pool.clone()]);
    assert!(!dir.path().join("suspended.json.tmp").exists());
    // Setting the same kind and value again replaces it.
    let longer = Suspension {
        until: None,
        ..pool.clone()
    };
    assert_eq!(again.set(longer.clone()).unwrap(), Some(pool));
    assert_eq!(again.active(3000).len(), 2);
    // Removing: only what is there; the file follows.
    assert_eq!(again.remove(Scope::Route, "relay", 3000).unwrap(), None);
    assert_eq!(again.remove(Scope::Domain, "example.com", 3000).unwrap(), Some(domain));
    let third = Suspensions::open(dir.path()).unwrap();
    assert_eq!(third.active(3000), vec![longer]);
}

#[test]
fn a_damaged_file_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), b"{\"version\":1,\"suspensions\":[{").unwrap();
    let error = Suspensions::open(dir.path()).unwrap_err();
    assert!(error.contains("suspended.json is damaged"), "{error}");
}
