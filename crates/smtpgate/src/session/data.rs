//! DATA and BDAT: receiving the message, then handing it to intake (`intake::take`), which spools
//! it (or sends it upstream, on a proxy listener) before the `250`.

use std::net::SocketAddr;

use smtpgate_proto::{BareEol, BdatReceiver, DataOutcome, DataReceiver, Reply};

use super::conn::{Pace, ReadError};
use super::{Chunking, Draft, Flow, Session, Txn};
use crate::budget::Held;
use crate::config::BareLineEndings;
use crate::datetime::now_unix;
use crate::envelope::{Envelope, QueueId, Ret, Sender};
use crate::intake::headers::{self, Trace};
use crate::intake::proxy::ProxySink;
use crate::intake::{self, Disposition, SpoolSink, Taken};
use crate::route::MessageView;
use crate::spool::{Content, Incoming, IncomingError};
use crate::stats;

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

    /// The end of a message: refused as it came in, or handed to intake, with the spool or the
    /// upstream (on a proxy listener) as its sink; the session only answers what intake decided.
    async fn complete(&mut self, id: QueueId, draft: Draft, incoming: Incoming, outcome: DataOutcome) -> Flow {
        let body = match self.finished(id, incoming, outcome).await {
            Ok(body) => body,
            Err(reply) => {
                self.count_message(stats::Kind::Rejected, &draft);
                return self.respond(reply);
            }
        };
        let received = intake::Draft {
            env: self.envelope(id, &draft, body.is_ascii()),
            body,
            origin: self.session_info(),
            peer: self.peer,
        };
        let ctx = self.listener.ctx.clone();
        let listener = self.listener.clone();
        let disposition = if self.proxying() {
            let upstream_env = self.upstream_envelope(&draft, None);
            let mut sink = ProxySink::new(&mut self.proxy, self.peer, upstream_env, draft.params.size);
            intake::take(&ctx, &listener.config, received, &mut sink).await
        } else {
            let mut sink = SpoolSink::new(&listener.queue);
            intake::take(&ctx, &listener.config, received, &mut sink).await
        };
        match &disposition {
            Disposition::Refused(_) => self.count_message(stats::Kind::Rejected, &draft),
            Disposition::Quarantined(_) => self.count_message(stats::Kind::Quarantined, &draft),
            Disposition::Accepted(_) | Disposition::Dropped(_) => {}
        }
        let reply = match disposition {
            Disposition::Refused(reply) | Disposition::Accepted(Taken::Proxied(reply)) => reply,
            Disposition::Accepted(Taken::Spooled(_)) | Disposition::Quarantined(_) | Disposition::Dropped(_) => {
                Reply::queued(&id.to_string())
            }
        };
        self.respond(reply)
    }

    /// The message as received, or the reply that refuses it as it came in (too big, bare line
    /// endings, NUL octets, a header section too large) or that says it could not be kept.
    async fn finished(&mut self, id: QueueId, incoming: Incoming, outcome: DataOutcome) -> Result<Content, Reply> {
        let metrics = &self.listener.ctx.metrics;
        match outcome {
            DataOutcome::TooBig => {
                metrics.rejected.inc();
                return Err(Reply::message_too_big());
            }
            DataOutcome::BareLineEnding => {
                metrics.rejected.inc();
                return Err(Reply::bare_line_ending());
            }
            DataOutcome::Nul => {
                metrics.rejected.inc();
                tracing::info!(queue_id = %id, client = %self.peer, "message refused: NUL octets");
                return Err(Reply::nul_byte());
            }
            DataOutcome::Ok => {}
        }
        match incoming.finish().await {
            Ok(content) => Ok(content),
            Err(IncomingError::HeaderTooLarge) => {
                metrics.rejected.inc();
                tracing::info!(queue_id = %id, client = %self.peer, "message refused: header section too large");
                Err(Reply::header_too_big())
            }
            Err(IncomingError::Io(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot write an incoming message");
                Err(Reply::local_error())
            }
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
            route: None,
        }
    }
}
