//! Feedback that comes in as mail, read at end of data: complaint reports, late bounces, and
//! recipients on the suppression list when they are to be dropped.

use std::net::SocketAddr;

use crate::config::SuppressAction;
use crate::context::Context;
use crate::envelope::{Envelope, QueueId};
use crate::report::Complaint;
use crate::stats::{self, Recipients, Stats};
use crate::suppress::Reason;

/// How a suppression reason reads in logs and replies.
pub fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::HardBounce => "hard bounce",
        Reason::Complaint => "complaint",
        Reason::Manual => "manual",
    }
}

/// A complaint report to `complaints_address` is read (and that recipient consumed), a late
/// bounce to anyone is read (and still delivered), and with `[suppression] action = "drop"`
/// suppressed recipients are dropped here. Reports are read in the background, off the runtime's
/// threads (`Feedback::complaint`, `late_bounce`), so the client does not wait for them.
pub fn take_reports(ctx: &Context, id: QueueId, peer: SocketAddr, env: &mut Envelope, body: &[u8]) {
    let client = Some(peer.ip());
    let config = &ctx.config.suppression;
    if let Some(fbl) = &config.complaints_address
        && env.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(fbl))
    {
        let (feedback, stats, report) = (ctx.feedback.clone(), ctx.stats.clone(), body.to_vec());
        tokio::spawn(async move {
            match feedback.complaint(report, client).await {
                Some((complaint, matched)) => count_complaint(&stats, &complaint, &matched),
                None => {
                    tracing::warn!(queue_id = %id, client = %peer, "mail to the complaints address was not read as a complaint report: dropped")
                }
            }
        });
        env.recipients.retain(|r| !r.address.eq_ignore_ascii_case(fbl));
    }
    if env.sender.is_null() {
        let (feedback, report) = (ctx.feedback.clone(), body.to_vec());
        tokio::spawn(async move { feedback.late_bounce(report, client).await });
    }
    if config.action == SuppressAction::Drop {
        drop_suppressed(ctx, id, env);
    }
}

/// A complaint counts against the domain of each original recipient it was matched to (a message
/// smtpgate relayed to it: a forged report counts nothing), and the original sender's.
fn count_complaint(stats: &Stats, complaint: &Complaint, matched: &[String]) {
    if matched.is_empty() {
        return;
    }
    stats.record(&stats::Record {
        sender: complaint.original_sender.as_deref(),
        ..stats::Record::new(stats::Kind::Complaint, Recipients::Addresses(matched))
    });
}

/// Drops the recipients on the suppression list (logged, with why they are on it).
fn drop_suppressed(ctx: &Context, id: QueueId, env: &mut Envelope) {
    let sender = env.sender.clone();
    env.recipients
        .retain(|r| match ctx.feedback.suppression.contains(&r.address) {
            Some(entry) => {
                let reason = reason_text(entry.reason);
                tracing::info!(queue_id = %id, recipient = %r.address, reason, "suppressed recipient dropped");
                super::record::suppressed(ctx, id, &sender, r, reason);
                false
            }
            None => true,
        });
}
