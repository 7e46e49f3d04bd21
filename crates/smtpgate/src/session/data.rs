//! DATA and BDAT: receiving the message, then spooling it before the `250`.

use std::net::SocketAddr;

use smtpgate_proto::{BareEol, BdatReceiver, DataOutcome, DataReceiver, Reply};

use super::conn::{Pace, ReadError};
use super::headers::{self, Trace};
use super::{Chunking, Draft, Flow, Session, Txn};
use crate::budget::Held;
use crate::config::BareLineEndings;
use crate::datetime::now_unix;
use crate::envelope::{Envelope, QueueId, Ret, Sender};
use crate::intake::{self, Disposition};
use crate::route::MessageView;
use crate::spool::{Incoming, IncomingError};

/// Octets of a BDAT chunk read before they are handed on (and, for a large message, written out).
const BDAT_PIECE: u64 = 256 * 1024;

impl Session {
    pub(super) async fn data(&mut self) -> Flow {
        let draft = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Mail(d) if !d.recipients.is_empty() => d,
            Txn::Mail(d) => {
                self.txn = Txn::Mail(d);
                return self.error(Reply::bad_sequence("no valid recipients"));
            }
            other => {
                self.txn = other;
                return self.error(Reply::bad_sequence("need MAIL and RCPT before DATA"));
            }
        };
        if self.conn.has_buffered() {
            // Content (or anything) sent before the 354 it must wait for (RFC 2920 3.1): not
            // taken as a message, whatever it says.
            tracing::info!(client = %self.peer, "improper pipelining: input before the 354 to DATA");
            self.conn.reply(&Reply::sync_error());
            return Flow::Close;
        }
        self.conn.reply(&Reply::start_data());
        let id = self.listener.ctx.ids.next();
        let mut incoming = self.incoming(id, &draft);
        let mut rx = DataReceiver::new(self.bare_eol(), self.listener.config.max_message_size)
            .with_nul(self.listener.config.nul_bytes);
        let pace = self.pace();
        // This message's share of the node's memory budget, held until it is answered.
        let mut held = self.listener.ctx.memory.hold();
        let mut lost = None;
        loop {
            let (used, done) = rx.feed(&self.conn.rbuf, &mut incoming.buf);
            bytes::Buf::advance(&mut self.conn.rbuf, used);
            if lost.is_none() {
                lost = Self::keep(self.peer, &mut incoming, &mut held).await.err();
            }
            if lost.is_some() {
                incoming.buf.clear();
            }
            if done {
                break;
            }
            if let Err(e) = self.conn.read_more(pace.deadline(rx.received()), false).await {
                tracing::info!(client = %self.peer, error = ?e, received = rx.received(), "connection lost during DATA");
                if let ReadError::Timeout = e {
                    self.conn.reply(&Reply::timeout());
                }
                return Flow::Close;
            }
        }
        if let Some(reply) = lost {
            self.listener.ctx.metrics.rejected.inc();
            return self.respond(reply);
        }
        let flow = self.complete(id, draft, incoming, rx.outcome()).await;
        drop(held);
        flow
    }

    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Flow {
        let limit = self.pace();
        let mut chunking = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Chunking(c) => c,
            Txn::Mail(draft) if !draft.recipients.is_empty() => {
                let id = self.listener.ctx.ids.next();
                let incoming = self.incoming(id, &draft);
                let receiver = BdatReceiver::new(self.bare_eol(), self.listener.config.max_message_size)
                    .with_nul(self.listener.config.nul_bytes);
                Box::new(Chunking {
                    draft,
                    id,
                    receiver,
                    incoming,
                    held: self.listener.ctx.memory.hold(),
                })
            }
            other => {
                // RFC 3030: the chunk is read and thrown away even when the command fails.
                self.txn = other;
                if self.conn.read_exact_with(size, limit, 0, |_| {}).await.is_err() {
                    return Flow::Close;
                }
                return self.error(Reply::bad_sequence("need MAIL and RCPT before BDAT"));
            }
        };
        // The chunk is read in pieces, so that a large one goes to the incoming file as it comes.
        let mut lost = None;
        let mut read = 0;
        while read < size {
            let piece = (size - read).min(BDAT_PIECE);
            let Chunking { receiver, incoming, .. } = &mut *chunking;
            let keeping = lost.is_none();
            if let Err(e) = self
                .conn
                .read_exact_with(piece, limit, read, |chunk| {
                    if keeping {
                        receiver.feed(chunk, &mut incoming.buf)
                    }
                })
                .await
            {
                tracing::info!(client = %self.peer, error = ?e, "connection lost during BDAT");
                if let ReadError::Timeout = e {
                    self.conn.reply(&Reply::timeout());
                }
                return Flow::Close;
            }
            read += piece;
            if lost.is_none() {
                let Chunking { incoming, held, .. } = &mut *chunking;
                lost = Self::keep(self.peer, incoming, held).await.err();
            }
        }
        if let DataOutcome::TooBig = chunking.receiver.outcome() {
            return self.error(Reply::message_too_big());
        }
        if let Some(reply) = lost {
            // The transaction ends here; its content and its share of the budget are dropped.
            self.listener.ctx.metrics.rejected.inc();
            return self.respond(reply);
        }
        if !last {
            self.txn = Txn::Chunking(chunking);
            return self.respond(Reply::chunk_ok(size));
        }
        let Chunking {
            draft,
            id,
            mut receiver,
            mut incoming,
            held,
        } = *chunking;
        receiver.finish(&mut incoming.buf);
        let flow = self.complete(id, draft, incoming, receiver.outcome()).await;
        drop(held);
        flow
    }

    /// A new message, starting with its trace header; it goes to a file once it is large.
    fn incoming(&self, id: QueueId, draft: &Draft) -> Incoming {
        let ctx = &self.listener.ctx;
        Incoming::new(
            self.trace_header(id, draft).into_bytes(),
            &ctx.spool.incoming_dir(),
            id,
            ctx.config.spool.spill_size,
            ctx.config.routing.body_scan_limit,
        )
    }

    /// After more content came in: writes it out once the message is large, and counts what is
    /// left in memory against the node's budget. `Err` is the reply the message will get: it is
    /// read to its end without being kept.
    async fn keep(peer: SocketAddr, incoming: &mut Incoming, held: &mut Held) -> Result<(), Reply> {
        if let Err(e) = incoming.settle().await {
            tracing::error!(client = %peer, error = %e, "cannot write an incoming message: reading it to its end without keeping it");
            return Err(Reply::local_error());
        }
        if !held.grow_to(incoming.in_memory()) {
            tracing::warn!(client = %peer, bytes = incoming.in_memory(), "memory budget for messages used up: reading this one to its end without keeping it");
            return Err(Reply::low_memory());
        }
        Ok(())
    }

    /// How long message data may take: `data_timeout`, plus time earned at `min_data_rate`.
    fn pace(&self) -> Pace {
        let config = &self.listener.config;
        Pace::new(config.data_timeout, config.min_data_rate)
    }

    fn bare_eol(&self) -> BareEol {
        match self.listener.config.bare_line_endings {
            BareLineEndings::Reject => BareEol::Reject,
            BareLineEndings::Normalize => BareEol::Normalize,
        }
    }

    fn trace_header(&self, id: QueueId, draft: &Draft) -> String {
        let helo = self.helo.as_ref().expect("MAIL needs HELO");
        let tls = self.tls.as_ref().map(|t| (t.version.as_str(), t.cipher.as_str()));
        let single = (draft.recipients.len() == 1).then(|| draft.recipients[0].address.as_str());
        headers::received(&Trace {
            helo: &helo.name,
            ip: self.peer.ip(),
            host: &self.listener.ctx.config.hostname,
            protocol: headers::protocol(helo.extended, self.tls.is_some(), self.user.is_some()),
            id,
            tls,
            single_rcpt: single,
        })
    }

    /// The end of a message: refuse it, or spool it and answer `250` once it is on disk.
    async fn complete(&mut self, id: QueueId, mut draft: Draft, incoming: Incoming, outcome: DataOutcome) -> Flow {
        let metrics = self.listener.ctx.metrics.clone();
        match outcome {
            DataOutcome::TooBig => {
                metrics.rejected.inc();
                return self.respond(Reply::message_too_big());
            }
            DataOutcome::BareLineEnding => {
                metrics.rejected.inc();
                return self.respond(Reply::bare_line_ending());
            }
            DataOutcome::Nul => {
                metrics.rejected.inc();
                tracing::info!(queue_id = %id, client = %self.peer, "message refused: NUL octets");
                return self.respond(Reply::nul_byte());
            }
            DataOutcome::Ok => {}
        }
        let mut body = match incoming.finish().await {
            Ok(content) => content,
            Err(IncomingError::HeaderTooLarge) => {
                metrics.rejected.inc();
                tracing::info!(queue_id = %id, client = %self.peer, "message refused: header section too large");
                return self.respond(Reply::header_too_big());
            }
            Err(IncomingError::Io(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot write an incoming message");
                return self.respond(Reply::local_error());
            }
        };
        let hops = received_count(&body.head);
        if hops > self.listener.config.max_hops {
            metrics.rejected.inc();
            tracing::warn!(queue_id = %id, client = %self.peer, hops, "message refused: too many hops (mail loop)");
            return self.respond(Reply::too_many_hops());
        }
        if self.listener.config.submission || self.user.is_some() {
            let at = received_len(&body.head);
            let extra = headers::missing_submission_headers(&body.head[at..], id, &self.listener.ctx.config.hostname);
            body.head.splice(at..at, extra.into_bytes());
        }
        self.feedback_intake(id, &mut draft, &body.routing_view());
        if draft.recipients.is_empty() {
            return self.respond(Reply::queued(&id.to_string()));
        }
        let mut filtered = match self.filter_message(id, &mut draft, body).await {
            Ok(f) => f,
            Err(flow) => return flow,
        };
        let body = std::mem::take(&mut filtered.body);
        if draft.recipients.is_empty() {
            return self.respond(Reply::queued(&id.to_string()));
        }
        if self.proxying() {
            // The proxy sends the message on before it answers: it takes it in memory.
            let body = match body.into_memory().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read an incoming message");
                    return self.respond(Reply::local_error());
                }
            };
            return self.proxy_message(id, &draft, body, filtered).await;
        }
        let (sender, rcpts, size) = (draft.sender.clone(), draft.recipients.len(), body.len());
        let received = intake::Received {
            id,
            env: self.envelope(id, &draft, body.is_ascii()),
            body,
            tags: filtered.tags,
            scan: filtered.scan,
        };
        let ctx = self.listener.ctx.clone();
        match intake::accept(&ctx, &self.listener.queue, &self.session_info(), received).await {
            Ok(Disposition::Refused(r)) => self.respond(r),
            Ok(Disposition::Accepted { spooled }) => {
                metrics.received.inc();
                tracing::info!(
                    queue_id = %id, client = %self.peer, sender = %sender, recipients = rcpts, size, copies = spooled.len(),
                    tls = self.tls.is_some(), user = self.user.as_deref().unwrap_or("-"), "message accepted"
                );
                self.respond(Reply::queued(&id.to_string()))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot spool message");
                self.respond(Reply::local_error())
            }
        }
    }

    /// Feedback that comes in as mail: a complaint report to `complaints_address` is read (and
    /// that recipient consumed), a late bounce to anyone is read (and still delivered), and with
    /// `[suppression] action = "drop"` suppressed recipients are dropped here. Reports are read
    /// in the background, off the runtime's threads (`Feedback::complaint`, `late_bounce`).
    fn feedback_intake(&self, id: QueueId, draft: &mut Draft, body: &[u8]) {
        let ctx = &self.listener.ctx;
        let config = &ctx.config.suppression;
        let client = Some(self.peer.ip());
        if let Some(fbl) = &config.complaints_address
            && draft.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(fbl))
        {
            let (feedback, report, peer) = (ctx.feedback.clone(), body.to_vec(), self.peer);
            tokio::spawn(async move {
                if feedback.complaint(report, client).await.is_none() {
                    tracing::warn!(queue_id = %id, client = %peer, "mail to the complaints address was not read as a complaint report: dropped");
                }
            });
            draft.recipients.retain(|r| !r.address.eq_ignore_ascii_case(fbl));
        }
        if draft.sender.is_null() {
            let (feedback, report) = (ctx.feedback.clone(), body.to_vec());
            tokio::spawn(async move { feedback.late_bounce(report, client).await });
        }
        if config.action == crate::config::SuppressAction::Drop {
            draft
                .recipients
                .retain(|r| match ctx.feedback.suppression.contains(&r.address) {
                    Some(entry) => {
                        let reason = super::rcpt::reason_text(entry.reason);
                        tracing::info!(queue_id = %id, recipient = %r.address, reason, "suppressed recipient dropped");
                        false
                    }
                    None => true,
                });
        }
    }

    /// The message as routing sees it, before its content is known.
    pub(super) fn view(&self, sender: &Sender) -> MessageView<'static> {
        MessageView {
            sender: sender.clone(),
            client: Some(self.peer.ip()),
            user: self.user.clone(),
            listener: self.listener.config.name.clone(),
            ..Default::default()
        }
    }

    pub(super) fn envelope(&self, id: QueueId, draft: &Draft, ascii: bool) -> Envelope {
        let p = &draft.params;
        Envelope {
            id,
            sender: draft.sender.clone(),
            recipients: draft.recipients.clone(),
            received_at: now_unix(),
            eight_bit: !ascii,
            smtputf8: p.smtputf8,
            ret: p.ret.as_ref().map(|r| match r {
                smtpgate_proto::Ret::Full => Ret::Full,
                smtpgate_proto::Ret::Hdrs => Ret::Hdrs,
            }),
            envid: p.envid.clone(),
            pool: None,
            scan: Vec::new(),
            stream: None,
        }
    }
}

/// How many `Received:` fields the header section holds (ours, just added, included).
fn received_count(body: &[u8]) -> usize {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |i| i + 2);
    body[..end]
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Length of the leading `Received:` header that the session wrote (it ends at the first line that
/// does not start with a tab).
fn received_len(body: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(i) = body[pos..].windows(2).position(|w| w == b"\r\n") {
        pos += i + 2;
        if body.get(pos) != Some(&b'\t') {
            return pos;
        }
    }
    body.len()
}
