//! Running filters in order, with their timeouts and fail-open or fail-closed answers, applying
//! each one's modifications before the next one looks.

use smtpgate_proto::Reply;

use super::Handle;
use super::{Action, MessageInfo, Modification, SessionInfo, Verdict};
use crate::config::OnError;
use crate::envelope::{Address, Sender};

/// The message after the filters, and what they decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: Action,
    /// The filter that decided, when it was not an accept.
    pub decided_by: Option<String>,
    pub message: Vec<u8>,
    pub recipients: Vec<Address>,
    pub tags: Vec<String>,
    /// Filters that did not check the message (each also named in an `X-Smtpgate-Unchecked:`
    /// header); the caller counts them.
    pub unchecked: Vec<String>,
}

/// Runs the end-of-data hook of each filter in order. The first non-accept action ends the run.
pub async fn run_data(
    filters: &[&Handle],
    session: &SessionInfo,
    sender: &Sender,
    recipients: Vec<Address>,
    message: Vec<u8>,
    tags: Vec<String>,
) -> Outcome {
    let mut out = Outcome {
        action: Action::Accept,
        decided_by: None,
        message,
        recipients,
        tags,
        unchecked: Vec::new(),
    };
    for f in filters {
        let info = MessageInfo {
            session,
            sender,
            recipients: &out.recipients,
            message: &out.message,
            tags: &out.tags,
        };
        let verdict = ask(f, f.filter.data(&info)).await;
        let modifications = verdict
            .modifications
            .into_iter()
            .map(|m| match m {
                Modification::Unchecked(why) => {
                    tracing::warn!(filter = %f.name, reason = %why, "message passed without this filter's check");
                    out.unchecked.push(f.name.clone());
                    Modification::AddHeader("X-Smtpgate-Unchecked".into(), unchecked_value(&f.name, &why))
                }
                m => m,
            })
            .collect();
        apply(&mut out, modifications);
        if verdict.action != Action::Accept {
            tracing::info!(filter = %f.name, action = ?verdict.action, "filter decided");
            out.action = verdict.action;
            out.decided_by = Some(f.name.clone());
            return out;
        }
    }
    out
}

/// Runs the RCPT hook of each filter; the first refusal is the answer.
pub async fn run_rcpt(filters: &[&Handle], session: &SessionInfo, sender: &Sender, rcpt: &Address) -> Action {
    for f in filters {
        let verdict = ask(f, f.filter.rcpt(session, sender, rcpt)).await;
        if verdict.action != Action::Accept {
            return verdict.action;
        }
    }
    Action::Accept
}

/// Runs the EHLO/HELO hook of each filter; the first refusal is the answer.
pub async fn run_ehlo(filters: &[&Handle], session: &SessionInfo) -> Action {
    for f in filters {
        let verdict = ask(f, f.filter.ehlo(session)).await;
        if verdict.action != Action::Accept {
            return verdict.action;
        }
    }
    Action::Accept
}

/// Runs the MAIL hook of each filter; the first refusal is the answer.
pub async fn run_mail(filters: &[&Handle], session: &SessionInfo, sender: &Sender) -> Action {
    for f in filters {
        let verdict = ask(f, f.filter.mail(session, sender)).await;
        if verdict.action != Action::Accept {
            return verdict.action;
        }
    }
    Action::Accept
}

/// Runs the connect hook of each filter; the first refusal is the answer.
pub async fn run_connect(filters: &[&Handle], session: &SessionInfo) -> Action {
    for f in filters {
        let verdict = ask(f, f.filter.connect(session)).await;
        if verdict.action != Action::Accept {
            return verdict.action;
        }
    }
    Action::Accept
}

/// One hook with the filter's timeout; a failure or timeout becomes its `on_error` answer.
async fn ask(f: &Handle, hook: impl std::future::Future<Output = Result<Verdict, super::FilterError>>) -> Verdict {
    use tracing::Instrument;
    let span = tracing::info_span!("filter", name = %f.name);
    let error = match tokio::time::timeout(f.timeout, hook.instrument(span)).await {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e.0,
        Err(_) => format!("no answer within {:?}", f.timeout),
    };
    tracing::warn!(filter = %f.name, error = %error, on_error = ?f.on_error, "filter failed");
    match f.on_error {
        OnError::Accept => Verdict::accept().with(Modification::Unchecked(format!("filter failed: {error}"))),
        OnError::TempFail => Verdict::tempfail(Reply::policy_unavailable()),
    }
}

fn apply(out: &mut Outcome, modifications: Vec<Modification>) {
    for m in modifications {
        match m {
            Modification::AddHeader(name, value) => {
                out.message = crate::message::apply_header_changes(&out.message, &[(name, value)], &[]);
            }
            Modification::RemoveHeader(name) => {
                out.message = crate::message::apply_header_changes(&out.message, &[], &[name]);
            }
            Modification::ReplaceMessage(m) => out.message = m,
            Modification::AddRecipient(r) => match checked_recipient(&r) {
                Some(r) if !out.recipients.iter().any(|x| x.eq_ignore_ascii_case(&r)) => out.recipients.push(r),
                Some(_) => {}
                None => {
                    tracing::warn!(recipient = %r.escape_debug(), "a filter added a recipient that is not an address: ignored")
                }
            },
            Modification::RemoveRecipient(r) => out.recipients.retain(|x| !x.eq_ignore_ascii_case(&r)),
            Modification::Tag(t) => {
                if !out.tags.contains(&t) {
                    out.tags.push(t);
                }
            }
            // Turned into a header by `run_data`; other hooks have no message to mark.
            Modification::Unchecked(_) => {}
        }
    }
}

/// The `X-Smtpgate-Unchecked:` value: the filter's name and why, on one line, at most 200 bytes.
fn unchecked_value(filter: &str, why: &str) -> String {
    let mut value: String = format!("{filter}; {why}")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if value.len() > 200 {
        let mut cut = 200;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
    }
    value
}

/// A recipient a filter (a milter, say) adds, as `local@domain`: it must be one mailbox, as RCPT
/// would take it (angle brackets allowed); anything else is refused.
fn checked_recipient(r: &str) -> Option<Address> {
    let bare = r.trim();
    let bare = bare.strip_prefix('<').and_then(|b| b.strip_suffix('>')).unwrap_or(bare);
    let mailbox = smtpgate_proto::Mailbox::parse(bare).ok()?;
    Some(Address::from(&mailbox))
}

#[cfg(test)]
mod recipient_tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            action: Action::Accept,
            decided_by: None,
            message: Vec::new(),
            recipients: vec![crate::envelope::Address::parse("a@example.org").unwrap()],
            tags: Vec::new(),
            unchecked: Vec::new(),
        }
    }

    #[test]
    fn added_recipients_must_be_mailboxes() {
        let mut out = outcome();
        let added = [
            "<b@example.org>",
            "c@example.org",
            "A@example.org",
            "x@y>\r\nRCPT TO:<z@example.org",
            "no-domain",
            "",
            "two@example.org three@example.org",
        ];
        apply(
            &mut out,
            added
                .iter()
                .map(|r| Modification::AddRecipient(r.to_string()))
                .collect(),
        );
        assert_eq!(out.recipients, ["a@example.org", "b@example.org", "c@example.org"]);
    }
}
