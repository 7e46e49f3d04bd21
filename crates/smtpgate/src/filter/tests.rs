//! The pipeline with filters written here: order, modifications, timeouts, fail open and closed.

use std::sync::Arc;
use std::time::Duration;

use smtpgate_proto::Reply;

use super::Handle;
use super::pipeline::run_data;
use super::{Action, BoxFuture, Filter, FilterError, MessageInfo, Modification, SessionInfo, Verdict};
use crate::config::{OnError, Stage};

#[derive(Debug)]
enum Behaviour {
    Tag(&'static str),
    AddHeader,
    RejectIfTagged(&'static str),
    Fail,
    Hang,
}

#[derive(Debug)]
struct Scripted(Behaviour);

impl Filter for Scripted {
    fn ehlo<'a>(&'a self, s: &'a SessionInfo) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            match (&self.0, s.helo.as_deref()) {
                (Behaviour::RejectIfTagged(bad), Some(helo)) if helo == *bad => {
                    Ok(Verdict::reject(Reply::new(550, "5.7.1", "bad HELO")))
                }
                _ => Ok(Verdict::accept()),
            }
        })
    }

    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            match &self.0 {
                Behaviour::Tag(t) => Ok(Verdict::accept().with(Modification::Tag(t.to_string()))),
                Behaviour::AddHeader => {
                    Ok(Verdict::accept().with(Modification::AddHeader("X-Seen".into(), "1".into())))
                }
                Behaviour::RejectIfTagged(t) if m.tags.iter().any(|x| x == t) => {
                    Ok(Verdict::reject(Reply::new(550, "5.7.1", "tagged")))
                }
                Behaviour::RejectIfTagged(_) => Ok(Verdict::accept()),
                Behaviour::Fail => Err(FilterError("scanner down".into())),
                Behaviour::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Verdict::accept())
                }
            }
        })
    }
}

fn spec(name: &str, b: Behaviour, on_error: OnError) -> Handle {
    Handle {
        name: name.into(),
        kind: "test".into(),
        stage: Stage::BeforeQueue,
        timeout: Duration::from_millis(200),
        on_error,
        filter: Arc::new(Scripted(b)),
    }
}

async fn run(filters: &[Handle]) -> super::pipeline::Outcome {
    let refs: Vec<&Handle> = filters.iter().collect();
    let info = SessionInfo::default();
    let msg = b"Received: x\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
    run_data(
        &refs,
        &info,
        &crate::envelope::Sender::parse("s@x.test").unwrap(),
        vec![crate::envelope::Address::parse("r@y.test").unwrap()],
        msg,
        Vec::new(),
    )
    .await
}

#[tokio::test]
async fn each_filter_sees_the_changes_of_the_ones_before() {
    let out = run(&[
        spec("a", Behaviour::Tag("dlp"), OnError::Accept),
        spec("b", Behaviour::AddHeader, OnError::Accept),
        spec("c", Behaviour::RejectIfTagged("dlp"), OnError::Accept),
    ])
    .await;
    assert_eq!(out.action, Action::Reject(Reply::new(550, "5.7.1", "tagged")));
    assert_eq!(out.decided_by.as_deref(), Some("c"));
    assert!(String::from_utf8_lossy(&out.message).contains("\r\nX-Seen: 1\r\n"));
}

#[tokio::test]
async fn a_broken_or_slow_filter_fails_open_or_closed_as_configured() {
    let open = run(&[
        spec("f", Behaviour::Fail, OnError::Accept),
        spec("h", Behaviour::Hang, OnError::Accept),
    ])
    .await;
    assert_eq!(open.action, Action::Accept);
    let closed = run(&[spec("h", Behaviour::Hang, OnError::TempFail)]).await;
    assert_eq!(closed.action, Action::TempFail(Reply::policy_unavailable()));
    let closed = run(&[spec("f", Behaviour::Fail, OnError::TempFail)]).await;
    assert!(matches!(closed.action, Action::TempFail(ref r) if r.code == 451));
}

#[tokio::test]
async fn the_ehlo_hook_sees_the_helo_name() {
    let f = [spec("h", Behaviour::RejectIfTagged("evil.test"), OnError::Accept)];
    let refs: Vec<&Handle> = f.iter().collect();
    let mut info = SessionInfo {
        helo: Some("good.test".into()),
        ..Default::default()
    };
    assert_eq!(super::pipeline::run_ehlo(&refs, &info).await, Action::Accept);
    info.helo = Some("evil.test".into());
    assert!(matches!(super::pipeline::run_ehlo(&refs, &info).await, Action::Reject(ref r) if r.code == 550));
}
