//! `kind = "rate_limit"`: limits on how fast a client, sender or user may connect, send
//! messages or add recipients, with the generic cell rate algorithm (GCRA) of [`crate::rate`].
//!
//! ```toml
//! [[filter]]
//! name = "rates"
//! kind = "rate_limit"
//! max_keys = 100000     # per limit: keys tracked at once
//! limits = [
//!   { key = "client", what = "connections", rate = "100/min", burst = 10 },
//!   { key = "sender", what = "messages", rate = "500/h", burst = 20 },
//!   { key = "user", what = "recipients", rate = "1000/d" },
//! ]
//! ```
//!
//! `key` is what is counted against: the client's address, the MAIL FROM address (lower case;
//! the null sender is `<>`), or the authenticated user (clients that did not authenticate are
//! not limited by a `user` limit). `rate` is a count per `s`, `min`, `h` or `d`.
//!
//! `burst` (default 1) is how many may come at the same instant: after that, one more each
//! `1/rate`. A limit of `3/min` with `burst = 3` admits three messages at once, then one every
//! 20 seconds; with `burst = 1` it admits one, then one every 20 seconds. Both average out at
//! the rate.
//!
//! Connections are counted in the connect hook (`421 4.7.0`, and the session closes), messages
//! at MAIL FROM, recipients at each RCPT TO (both `450 4.7.1`). A refused attempt is not
//! counted. When several limits apply to one event, it is counted against each only if all
//! admit it.
//!
//! State is in memory, per filter: a reload starts the counts afresh. A key whose allowance is
//! full again is forgotten; when `max_keys` are tracked, the key closest to being forgotten
//! makes room, so a flood of new keys costs memory up to the bound and no more.

use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use smtpgate_proto::Reply;
use tokio::time::Instant;

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, SessionInfo, Verdict};
use crate::envelope::{Address, Sender};
use crate::rate::{Buckets, DEFAULT_MAX_KEYS, Decision, Gcra, Limiter, Mode};

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    limits: Vec<RawLimit>,
    max_keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RawLimit {
    key: Option<String>,
    what: Option<String>,
    rate: Option<String>,
    burst: Option<u32>,
}

/// What a limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Client,
    Sender,
    User,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Connections,
    Messages,
    Recipients,
}

#[derive(Debug)]
struct Limit {
    key: Key,
    counted: Counted,
    gcra: Gcra,
    /// As configured, for the log: `sender messages 3/min burst 1`.
    label: String,
    table: Limiter<String>,
}

impl Limit {
    /// The key this event counts against, or None when the limit does not apply.
    fn key_of(&self, s: &SessionInfo, sender: Option<&str>) -> Option<String> {
        match self.key {
            Key::Client => s.client.map(|ip| ip.to_canonical().to_string()),
            Key::Sender => sender.map(|a| if a.is_empty() { "<>".into() } else { a.to_lowercase() }),
            Key::User => s.user.clone(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Buckets<String>> {
        self.table.lock()
    }
}

#[derive(Debug)]
pub struct RateLimit {
    limits: Vec<Limit>,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let max_keys = match o.max_keys {
        Some(0) => {
            errors.push(("max_keys".into(), "must be at least 1".into()));
            DEFAULT_MAX_KEYS
        }
        Some(n) => n,
        None => DEFAULT_MAX_KEYS,
    };
    if o.limits.is_empty() {
        errors.push(("limits".into(), "give at least one limit".into()));
    }
    let limits: Vec<Limit> = o
        .limits
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| limit(raw, max_keys, &format!("limits[{i}]"), &mut errors))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(RateLimit { limits }))
}

/// One `{ key, what, rate, burst }`, checked.
fn limit(raw: RawLimit, max_keys: usize, at: &str, errors: &mut BuildErrors) -> Option<Limit> {
    let before = errors.len();
    let mut error = |field: &str, message: String| errors.push((format!("{at}.{field}"), message));
    let key = match raw.key.as_deref() {
        Some("client") => Some(Key::Client),
        Some("sender") => Some(Key::Sender),
        Some("user") => Some(Key::User),
        other => {
            error("key", must_be_one_of(other, &["client", "sender", "user"]));
            None
        }
    };
    let counted = match raw.what.as_deref() {
        Some("connections") => Some(Counted::Connections),
        Some("messages") => Some(Counted::Messages),
        Some("recipients") => Some(Counted::Recipients),
        other => {
            error(
                "what",
                must_be_one_of(other, &["connections", "messages", "recipients"]),
            );
            None
        }
    };
    if counted == Some(Counted::Connections) && key.is_some_and(|k| k != Key::Client) {
        let message = "connections are counted before MAIL FROM and AUTH: use key = \"client\"".into();
        error("key", message);
    }
    let rate = match raw.rate.as_deref().map(parse_rate) {
        Some(Ok(rate)) => Some(rate),
        Some(Err(e)) => {
            error("rate", e);
            None
        }
        None => {
            error("rate", "is required (e.g. \"100/min\")".into());
            None
        }
    };
    let burst = raw.burst.unwrap_or(1);
    if burst == 0 {
        error("burst", "must be at least 1".into());
    }
    let (Some(key), Some(counted), Some((count, period, shown))) = (key, counted, rate) else {
        return None;
    };
    if errors.len() > before {
        return None;
    }
    Some(Limit {
        key,
        counted,
        gcra: Gcra::new(count, period, burst),
        label: format!("{key:?} {counted:?} {shown} burst {burst}").to_lowercase(),
        table: Limiter::new(max_keys),
    })
}

fn must_be_one_of(got: Option<&str>, allowed: &[&str]) -> String {
    let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    match got {
        Some(other) => format!("{other:?} is not one of {}", list.join(", ")),
        None => format!("is required (one of {})", list.join(", ")),
    }
}

/// `"100/min"` → (100, 60 s, "100/min"): the one rate parser the gate has
/// ([`crate::config::values::Rate`]).
fn parse_rate(text: &str) -> Result<(u32, Duration, String), String> {
    let rate: crate::config::values::Rate = text.parse()?;
    Ok((rate.count, rate.per, rate.to_string()))
}

impl Filter for RateLimit {
    fn connect<'a>(&'a self, s: &'a SessionInfo) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move { Ok(self.verdict(Counted::Connections, s, None, Reply::connection_rate_exceeded())) })
    }

    fn mail<'a>(&'a self, s: &'a SessionInfo, sender: &'a Sender) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            Ok(self.verdict(
                Counted::Messages,
                s,
                Some(sender.as_str()),
                Reply::rate_limit_exceeded(),
            ))
        })
    }

    fn rcpt<'a>(
        &'a self,
        s: &'a SessionInfo,
        sender: &'a Sender,
        _rcpt: &'a Address,
    ) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            Ok(self.verdict(
                Counted::Recipients,
                s,
                Some(sender.as_str()),
                Reply::rate_limit_exceeded(),
            ))
        })
    }
}

impl RateLimit {
    fn verdict(&self, counted: Counted, s: &SessionInfo, sender: Option<&str>, refusal: Reply) -> Verdict {
        match self.count(counted, s, sender, Instant::now()) {
            Ok(()) => Verdict::accept(),
            Err((limit, key, wait)) => {
                tracing::info!(limit = %limit.label, key = %key, retry_after = ?wait, "rate limit exceeded");
                Verdict::tempfail(refusal)
            }
        }
    }

    /// Counts one event against every limit that applies, or none of them if one refuses it (that
    /// limit, the key and how long until it would admit).
    fn count(
        &self,
        counted: Counted,
        s: &SessionInfo,
        sender: Option<&str>,
        now: Instant,
    ) -> Result<(), (&Limit, String, Duration)> {
        let applicable: Vec<(&Limit, String)> = self
            .limits
            .iter()
            .filter(|l| l.counted == counted)
            .filter_map(|l| l.key_of(s, sender).map(|k| (l, k)))
            .collect();
        // All locks at once, always in configured order, so the check and the count are one step.
        let mut tables: Vec<MutexGuard<'_, Buckets<String>>> = applicable.iter().map(|(l, _)| l.table()).collect();
        let mut next = Vec::with_capacity(applicable.len());
        for ((limit, key), table) in applicable.iter().zip(tables.iter_mut()) {
            match table.peek(key.as_str(), &limit.gcra, Mode::Admit, now) {
                (Decision::Allowed, Some(tat)) => next.push(tat),
                (decision, _) => return Err((limit, key.clone(), decision.delay())),
            }
        }
        for (((_, key), table), tat) in applicable.iter().zip(tables.iter_mut()).zip(next) {
            table.set(key.as_str(), tat);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn filter(limits: &str) -> RateLimit {
        let o: Options = options(table(&format!("limits = [{limits}]"))).unwrap();
        let mut errors = BuildErrors::new();
        let limits = o
            .limits
            .into_iter()
            .filter_map(|raw| limit(raw, 1000, "l", &mut errors))
            .collect();
        assert_eq!(errors, BuildErrors::new());
        RateLimit { limits }
    }

    fn client(last: u8) -> SessionInfo {
        SessionInfo {
            client: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))),
            ..SessionInfo::default()
        }
    }

    fn admitted(f: &RateLimit, counted: Counted, s: &SessionInfo, sender: Option<&str>) -> bool {
        f.count(counted, s, sender, Instant::now()).is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn sixty_a_minute_with_burst_one_admits_one_per_second() {
        let f = filter(r#"{ key = "client", what = "connections", rate = "60/min", burst = 1 }"#);
        let s = client(1);
        assert!(admitted(&f, Counted::Connections, &s, None));
        assert!(!admitted(&f, Counted::Connections, &s, None));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!admitted(&f, Counted::Connections, &s, None));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(admitted(&f, Counted::Connections, &s, None));
        assert!(!admitted(&f, Counted::Connections, &s, None));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_how_many_at_once_then_the_rate() {
        let f = filter(r#"{ key = "sender", what = "messages", rate = "3/min", burst = 3 }"#);
        let s = client(1);
        for _ in 0..3 {
            assert!(admitted(&f, Counted::Messages, &s, Some("a@example.test")));
        }
        assert!(!admitted(&f, Counted::Messages, &s, Some("A@Example.Test")));
        assert!(
            admitted(&f, Counted::Messages, &s, Some("b@example.test")),
            "other senders"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(admitted(&f, Counted::Messages, &s, Some("a@example.test")));
        assert!(!admitted(&f, Counted::Messages, &s, Some("a@example.test")));
        // Idle for a minute: the whole burst is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(admitted(&f, Counted::Messages, &s, Some("a@example.test")));
        }
        assert!(!admitted(&f, Counted::Messages, &s, Some("a@example.test")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_event_counts_against_no_limit() {
        let f = filter(
            r#"{ key = "client", what = "recipients", rate = "10/s", burst = 10 },
               { key = "sender", what = "recipients", rate = "1/h", burst = 1 }"#,
        );
        let s = client(1);
        assert!(admitted(&f, Counted::Recipients, &s, Some("a@example.test")));
        for _ in 0..20 {
            assert!(!admitted(&f, Counted::Recipients, &s, Some("a@example.test")));
        }
        // The client limit only counted the one admitted recipient: nine more from other senders.
        for i in 0..9 {
            assert!(admitted(
                &f,
                Counted::Recipients,
                &s,
                Some(&format!("s{i}@example.test"))
            ));
        }
        assert!(!admitted(&f, Counted::Recipients, &s, Some("s9@example.test")));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_apply_only_to_what_they_count_and_who_has_the_key() {
        let f = filter(r#"{ key = "user", what = "messages", rate = "1/d" }"#);
        let anonymous = client(1);
        for _ in 0..5 {
            assert!(admitted(&f, Counted::Messages, &anonymous, Some("a@example.test")));
            assert!(admitted(&f, Counted::Recipients, &anonymous, Some("a@example.test")));
        }
        let alice = SessionInfo {
            user: Some("alice".into()),
            ..client(2)
        };
        assert!(admitted(&f, Counted::Messages, &alice, Some("a@example.test")));
        assert!(!admitted(&f, Counted::Messages, &alice, Some("b@example.test")));
    }

    #[tokio::test(start_paused = true)]
    async fn hooks_answer_with_the_catalogue_replies() {
        let f = filter(
            r#"{ key = "client", what = "connections", rate = "1/h" },
               { key = "client", what = "messages", rate = "1/h" },
               { key = "client", what = "recipients", rate = "1/h" }"#,
        );
        let s = client(1);
        assert_eq!(f.connect(&s).await, Ok(Verdict::accept()));
        let refused = Verdict::tempfail(Reply::connection_rate_exceeded());
        assert_eq!(f.connect(&s).await, Ok(refused));
        assert_eq!(f.mail(&s, &Sender::Null).await, Ok(Verdict::accept()));
        assert_eq!(
            f.mail(&s, &Sender::Null).await,
            Ok(Verdict::tempfail(Reply::rate_limit_exceeded()))
        );
        assert_eq!(
            f.rcpt(
                &s,
                &Sender::Null,
                &crate::envelope::Address::parse("b@example.org").unwrap()
            )
            .await,
            Ok(Verdict::accept())
        );
        let refused = Verdict::tempfail(Reply::rate_limit_exceeded());
        assert_eq!(
            f.rcpt(
                &s,
                &Sender::Null,
                &crate::envelope::Address::parse("c@example.org").unwrap()
            )
            .await,
            Ok(refused)
        );
    }

    #[test]
    fn rates() {
        let ok = |n, secs, shown: &str| Ok((n, Duration::from_secs(secs), shown.to_owned()));
        assert_eq!(parse_rate("100/min"), ok(100, 60, "100/min"));
        assert_eq!(parse_rate("5/s"), ok(5, 1, "5/s"));
        assert_eq!(parse_rate(" 2 / h "), ok(2, 3600, "2/h"));
        assert_eq!(parse_rate("1/d"), ok(1, 86400, "1/d"));
        // The units shaping takes are taken here too, and the other way round.
        assert_eq!(parse_rate("30/m"), ok(30, 60, "30/min"));
        assert_eq!(parse_rate("7/hr"), ok(7, 3600, "7/h"));
        assert_eq!(
            "7/hr".parse::<crate::shaping::Rate>().map(|r| r.per),
            Ok(Duration::from_secs(3600))
        );
        for bad in ["100", "0/min", "-1/s", "1/week", "x/min", "/min"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Gcra::new(3, Duration::from_secs(60), 2).interval(),
            Duration::from_secs(20)
        );
        assert_eq!(
            Gcra::new(3, Duration::from_secs(60), 2).tolerance(),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn options_are_checked() {
        let keys = |text: &str| -> Vec<String> {
            build(table(text), Path::new("/"))
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("max_keys = 0"), ["max_keys", "limits"]);
        assert_eq!(
            keys(r#"limits = [{ key = "ip", what = "mails", rate = "1/week", burst = 0 }]"#),
            ["limits[0].key", "limits[0].what", "limits[0].rate", "limits[0].burst"]
        );
        assert_eq!(
            keys(r#"limits = [{ key = "sender", what = "connections", rate = "1/s" }]"#),
            ["limits[0].key"]
        );
        assert_eq!(
            keys(r#"limits = [{ key = "client", what = "messages" }]"#),
            ["limits[0].rate"]
        );
        assert_eq!(
            keys(r#"limits = [{ key = "client", what = "messages", rate = "1/s", brust = 2 }]"#),
            ["limits.0.brust"]
        );
        let ok = r#"limits = [{ key = "client", what = "connections", rate = "100/min", burst = 10 }]"#;
        assert!(build(table(ok), Path::new("/")).is_ok());
    }
}
