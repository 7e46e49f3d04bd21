use super::*;
use crate::reply::classify::Category;

use crate::shaping::{Key, Rate, Rules, Shape};

const MIN: u64 = 60_000;
const T0: u64 = 1_795_366_400_000;

fn rules(text: &str) -> Result<Rules, String> {
    Rules::parse(text, &crate::config::Config::builtin().queue).map_err(|e| e.to_string())
}

fn one_rule(text: &str) -> Rule {
    let mut r = rules(text).expect("valid rules").adaptive;
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn reply<'a>(hosts: &'a [&'a str], text: &'a str, status: Option<&'a str>, category: Category) -> Reply<'a> {
    Reply {
        domain: "yahoo.com",
        hosts,
        code: code_of(text),
        status,
        text,
        category,
    }
}

/// The code a test reply line starts with, as the typed reply would carry it.
fn code_of(text: &str) -> Option<u16> {
    text.get(..3).and_then(|c| c.parse().ok())
}

fn limit() -> Limit {
    Limit::new(Some("bulk"), Key::Mx("*.yahoodns.net".into()))
}

#[test]
fn rules_match_on_every_condition_given() {
    let rule = one_rule(
        r#"
        [[adaptive]]
        name = "yahoo-ts"
        mx = "*.yahoodns.net"
        code = "42"
        status = "4.7."
        text = '\[ts0[1-3]\]'
        action = "suspend"
        duration = "30m"
        "#,
    );
    let hosts = ["mta5.am0.yahoodns.net"];
    let ts = "421 4.7.0 [TS03] Messages from 192.0.2.1 permanently deferred";
    assert!(rule.matches(&reply(&hosts, ts, Some("4.7.0"), Category::RateLimited)));
    // Each condition on its own decides.
    assert!(!rule.matches(&reply(&["mx.example.com"], ts, Some("4.7.0"), Category::RateLimited)));
    let other_code = "451 4.7.0 [TS03] deferred";
    assert!(!rule.matches(&reply(&hosts, other_code, Some("4.7.0"), Category::RateLimited)));
    assert!(!rule.matches(&reply(&hosts, ts, Some("4.2.0"), Category::RateLimited)));
    let other_text = "421 4.7.0 [TS04] deferred";
    assert!(!rule.matches(&reply(&hosts, other_text, Some("4.7.0"), Category::RateLimited)));
    assert!(!rule.matches(&reply(&hosts, "connection refused", None, Category::Network)));
}

#[test]
fn enhanced_status_prefixes_end_at_a_dot() {
    assert!(status_starts_with("4.7.0", "4.7.0"));
    assert!(status_starts_with("4.7.0", "4.7."));
    assert!(status_starts_with("4.7.28", "4.7"));
    assert!(!status_starts_with("4.7.28", "4.7.2"));
    assert!(!status_starts_with("4.7.0", "4.7.00"));
}

#[test]
fn a_category_rule_matches_the_classified_reply() {
    let rule = one_rule(
        r#"
        [[adaptive]]
        category = "rate_limited"
        action = "throttle"
        rate_factor = 0.5
        duration = "10m"
        "#,
    );
    assert_eq!(rule.name, "adaptive rule 1");
    let text = "450 4.7.28 unusual rate of unsolicited mail";
    assert!(rule.matches(&reply(&[], text, Some("4.7.28"), Category::RateLimited)));
    assert!(!rule.matches(&reply(&[], text, Some("4.7.28"), Category::SpamBlock)));
}

#[test]
fn bad_rules_are_refused_with_every_mistake_named() {
    let err = rules(
        r#"
        [[adaptive]]
        code = "2x"
        status = "x"
        text = "("
        category = "slow"
        action = "pause"
        duration = "soon"
        rate_factor = 1.5
        "#,
    )
    .unwrap_err();
    for needle in [
        "adaptive[0].code",
        "adaptive[0].status",
        "adaptive[0].text",
        "adaptive[0].category",
        "adaptive[0].action",
        "adaptive[0].duration",
        "adaptive[0].rate_factor",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    let err = rules("[[adaptive]]\naction = \"suspend\"\nduration = \"1m\"\n").unwrap_err();
    assert!(err.contains("needs at least one of"), "{err}");
    let err = rules("[[adaptive]]\ncode = \"421\"\naction = \"throttle\"\nduration = \"1m\"\n").unwrap_err();
    assert!(err.contains("rate_factor or connection_factor below 1"), "{err}");
    let err = rules("[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\n").unwrap_err();
    assert!(err.contains("adaptive[0].duration: missing"), "{err}");
}

#[test]
fn a_throttle_holds_then_recovers_linearly() {
    let rule = one_rule(
        "[[adaptive]]\ncode = \"421\"\naction = \"throttle\"\nrate_factor = 0.2\nconnection_factor = 0.5\nduration = \"10m\"\nrecover = \"20m\"\n",
    );
    let actions = Actions::default();
    let (action, change) = actions.hit(&limit(), &rule, "421 slow down", T0);
    assert_eq!(change, Change::Started);
    assert_eq!((action.until, action.recovered), (T0 + 10 * MIN, T0 + 30 * MIN));
    let at = |t: u64| actions.effect(&limit(), t);
    let full = at(T0 + 5 * MIN).expect("in force");
    assert_eq!(
        (full.rate_factor, full.connection_factor, full.suspended_until),
        (0.2, 0.5, None)
    );
    let half = at(T0 + 20 * MIN).expect("recovering");
    assert!((half.rate_factor - 0.6).abs() < 1e-9, "{half:?}");
    assert!((half.connection_factor - 0.75).abs() < 1e-9, "{half:?}");
    assert!(at(T0 + 30 * MIN).is_none(), "recovered");
    assert!(actions.list(T0 + 30 * MIN).is_empty(), "an ended action is gone");
}

#[test]
fn a_new_match_renews_the_action_and_keeps_the_stronger_factors() {
    let soft = one_rule("[[adaptive]]\ncode = \"4\"\naction = \"throttle\"\nrate_factor = 0.5\nduration = \"10m\"\n");
    let hard = one_rule("[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\nduration = \"5m\"\n");
    let actions = Actions::default();
    actions.hit(&limit(), &soft, "451 later", T0);
    let (renewed, change) = actions.hit(&limit(), &hard, "421 go away", T0 + 8 * MIN);
    assert_eq!(change, Change::Renewed);
    assert_eq!(renewed.hits, 2);
    assert_eq!(renewed.suspended_until, Some(T0 + 13 * MIN));
    assert_eq!(renewed.until, T0 + 13 * MIN, "full strength from the latest match");
    assert_eq!(renewed.rate_factor, 0.5);
    assert_eq!(renewed.reason, "421 go away");
    let e = actions.effect(&limit(), T0 + 9 * MIN).expect("in force");
    assert_eq!(e.suspended_until, Some(T0 + 13 * MIN));
    // After a suspension without recovery the action ends.
    assert!(actions.effect(&limit(), T0 + 13 * MIN).is_none());
    // A match after the end starts afresh.
    let (_, change) = actions.hit(&limit(), &soft, "451 later", T0 + 14 * MIN);
    assert_eq!(change, Change::Started);
}

#[test]
fn effects_lower_the_shape() {
    let mut shape = Shape::from_queue(&crate::config::Config::builtin().queue);
    shape.max_connections = 5;
    shape.message_rate = Some("600/min".parse().unwrap());
    shape.connection_rate = Some("1/s".parse().unwrap());
    Effect {
        suspended_until: None,
        rate_factor: 0.2,
        connection_factor: 0.5,
    }
    .apply(&mut shape);
    assert_eq!(shape.max_connections, 3, "rounded up");
    assert_eq!(shape.message_rate, Some("120/min".parse::<Rate>().unwrap()));
    let conn = shape.connection_rate.unwrap();
    assert_eq!(
        conn.interval(),
        std::time::Duration::from_secs(5),
        "1/s x0.2: one every 5 s"
    );
    let mut one = Shape::from_queue(&crate::config::Config::builtin().queue);
    one.max_connections = 1;
    Effect {
        suspended_until: None,
        rate_factor: 1.0,
        connection_factor: 0.1,
    }
    .apply(&mut one);
    assert_eq!(one.max_connections, 1, "never below one connection");
}

#[test]
fn the_administrator_edits_cancels_and_starts_actions() {
    let rule = one_rule("[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\nduration = \"1h\"\n");
    let actions = Actions::default();
    actions.hit(&limit(), &rule, "421 busy", T0);
    let edit = Edit {
        suspend: Some(false),
        rate_factor: Some(0.5),
        duration: Some(std::time::Duration::from_secs(600)),
        ..Edit::default()
    };
    let edited = actions.edit(&limit(), &edit, T0 + MIN);
    assert_eq!(edited.suspended_until, None);
    assert_eq!((edited.rate_factor, edited.until), (0.5, T0 + 11 * MIN));
    assert_eq!(edited.rule, rule.name, "the rule stays named");
    assert!(actions.cancel(&limit()).is_some());
    assert!(actions.effect(&limit(), T0 + 2 * MIN).is_none());
    assert!(actions.cancel(&limit()).is_none());
    let other = Limit::new(None, Key::Domain("example.com".into()));
    let manual = actions.edit(
        &other,
        &Edit {
            suspend: Some(true),
            duration: Some(std::time::Duration::from_secs(60)),
            ..Edit::default()
        },
        T0,
    );
    assert_eq!((manual.by.as_str(), manual.suspended_until), ("admin", Some(T0 + MIN)));
    assert_eq!(actions.list(T0).len(), 1);
    assert!(
        Edit {
            rate_factor: Some(0.0),
            ..Edit::default()
        }
        .check()
        .is_err()
    );
}

#[test]
fn shared_actions_merge_newest_first_and_cancels_propagate() {
    let rule = one_rule("[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\nduration = \"1h\"\n");
    let here = Actions::default();
    let (remote, _) = Actions::default().hit(&limit(), &rule, "421 busy", T0);
    // Learned from another node.
    assert_eq!(
        here.merge_shared(vec![remote.clone()], T0 + 1),
        vec![remote.key.clone()]
    );
    assert_eq!(here.get(&limit()).unwrap().reason, "421 busy");
    // An older copy does not replace a newer one.
    let mut stale = remote.clone();
    stale.updated = T0 - 1;
    stale.reason = "old".into();
    assert!(here.merge_shared(vec![stale], T0 + 2).is_empty());
    assert_eq!(here.get(&limit()).unwrap().reason, "421 busy");
    // Gone from the store after it was seen there: cancelled elsewhere.
    assert_eq!(here.merge_shared(vec![], T0 + 3), vec![remote.key.clone()]);
    assert!(here.get(&limit()).is_none());
    // An action of this node not yet shared is kept.
    here.hit(&limit(), &rule, "421 busy", T0 + 4);
    assert!(here.merge_shared(vec![], T0 + 5).is_empty());
    assert!(here.get(&limit()).is_some());
}

#[test]
fn limits_print_and_parse_back() {
    for limit in [
        Limit::new(Some("bulk"), Key::Mx("*.yahoodns.net".into())),
        Limit::new(None, Key::Domain("example.com".into())),
    ] {
        assert_eq!(Limit::parse(&limit.to_string()), Ok(limit));
    }
    assert_eq!(
        Limit::parse("default/domain:example.com"),
        Ok(Limit::new(Some("default"), Key::Domain("example.com".into())))
    );
    assert!(Limit::parse("example.com").is_err());
    assert!(Limit::parse("bulk/host:x").is_err());
}

#[test]
fn limits_per_source_print_and_parse_back() {
    let limit =
        Limit::new(Some("bulk"), Key::Mx("*.yahoodns.net".into())).with_source(Some("192.0.2.1".parse().unwrap()));
    assert_eq!(limit.to_string(), "bulk@192.0.2.1/mx:*.yahoodns.net");
    assert_eq!(Limit::parse(&limit.to_string()), Ok(limit.clone()));
    let v6 = limit.clone().with_source(Some("2001:db8::1".parse().unwrap()));
    assert_eq!(Limit::parse(&v6.to_string()), Ok(v6));
    assert!(Limit::parse("bulk@nowhere/mx:x").is_err());
    let rule = one_rule("[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\nduration = \"1h\"\n");
    assert_eq!(
        action(&rule, &limit, "421", T0).destination,
        "mx:*.yahoodns.net from 192.0.2.1"
    );
}

/// The shaper matches code rules on a reply's typed code: a server's `421` suspends, while a
/// `451` whose text starts with "421" and the gate's own failure worded like one do not.
#[tokio::test]
async fn the_shaper_reacts_to_the_typed_code() {
    use crate::reply::{Classified, Classifier, Command, EnhancedStatus, Upstream};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shaping.toml");
    std::fs::write(
        &path,
        "[[adaptive]]\ncode = \"421\"\naction = \"suspend\"\nduration = \"10m\"\n",
    )
    .unwrap();
    let queue = crate::config::Config::builtin().queue.clone();
    let loaded = crate::reloading::Loaded::read(path, |p| Rules::load(p, &queue)).unwrap();
    let shaper = crate::shaping::Shaper::new(Some(loaded), &queue, None);
    let classified = |reply: Upstream| Classified {
        class: Classifier::defaults().reply(&reply),
        reply,
    };
    let (key, hosts) = (limit(), ["mta5.am0.yahoodns.net"]);
    let suspended = |shaper: &crate::shaping::Shaper| {
        let shape = shaper.shape("yahoo.com", &hosts).1;
        shaper.effective(&key, shape).1.is_some()
    };
    let local = classified(Upstream::local("4.4.1", "421 said the proxy", Command::Connect));
    let other = classified(Upstream::remote(
        451,
        None,
        "421 in the text only",
        Command::Rcpt,
        "mx:25",
    ));
    shaper.observe(&key, "yahoo.com", &hosts, &[&local, &other]).await;
    assert!(!suspended(&shaper), "no server replied 421");
    let busy = classified(Upstream::remote(
        421,
        Some(EnhancedStatus::new("4.7.0")),
        "try again later",
        Command::Greeting,
        "mx:25",
    ));
    shaper.observe(&key, "yahoo.com", &hosts, &[&busy]).await;
    assert!(suspended(&shaper), "a server's 421 suspends");
}
