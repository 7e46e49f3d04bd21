//! Filters attached to the listener and to routes, seen from the session.

use super::{Harness, INSIDE, config_with};

const FILTERS: &str = r#"
[[filter]]
name = "strip"
kind = "sanitize"
remove_headers = ["X-Internal"]
[[filter]]
name = "hold"
kind = "content"
body_rules = [{ regex = "wire transfer urgently", action = "quarantine" }]
"#;

async fn send(h: &mut Harness, rcpts: &[&str], body: &str) -> String {
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    for r in rcpts {
        h.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    h.cmd("DATA", "354").await;
    h.send(format!("{body}\r\n.\r\n").as_bytes()).await;
    h.reply().await
}

fn config(listener_filters: &str, routes: &str) -> String {
    config_with(&format!("filters = [{listener_filters}]")).replace("[[route]]\npool = \"nowhere\"", routes) + FILTERS
}

#[tokio::test]
async fn listener_filter_changes_the_spooled_message() {
    let mut h = Harness::start(&config("\"strip\"", "[[route]]\npool = \"nowhere\""), INSIDE).await;
    let r = send(
        &mut h,
        &["b@local.test"],
        "X-Internal: secret\r\nSubject: s\r\n\r\nhello",
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let body = String::from_utf8(h.spooled().remove(0).1).unwrap();
    assert!(!body.contains("X-Internal"), "{body}");
    assert!(body.contains("Subject: s"));
}

#[tokio::test]
async fn route_filter_applies_to_its_own_copy_only() {
    let routes = "[[route]]\nwhen = { recipient_domain = \"local.test\" }\npool = \"nowhere\"\nfilters = [\"strip\"]\n\
                  [[route]]\npool = \"nowhere\"\nadd_headers = { \"X-Other\" = \"1\" }";
    let mut h = Harness::start(&config("", routes), INSIDE).await;
    let r = send(
        &mut h,
        &["b@local.test", "c@other.test"],
        "X-Internal: secret\r\nSubject: s\r\n\r\nhello",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 2, "one copy per route");
    for (env, body) in spooled {
        let body = String::from_utf8(body).unwrap();
        match env.recipients[0].address.as_str() {
            "b@local.test" => assert!(!body.contains("X-Internal"), "filtered copy: {body}"),
            _ => assert!(
                body.contains("X-Internal: secret") && body.contains("X-Other: 1"),
                "other copy: {body}"
            ),
        }
    }
}

#[tokio::test]
async fn quarantined_message_is_answered_250_and_kept_aside() {
    let mut h = Harness::start(&config("\"hold\"", "[[route]]\npool = \"nowhere\""), INSIDE).await;
    let r = send(
        &mut h,
        &["b@local.test"],
        "Subject: pay\r\n\r\nplease wire transfer urgently",
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(h.spooled().is_empty(), "nothing to deliver");
    let entries = h.ctx.quarantine.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].filter, "hold");
    assert!(
        String::from_utf8(h.ctx.quarantine.message(&entries[0].id).unwrap())
            .unwrap()
            .contains("wire transfer")
    );
}
