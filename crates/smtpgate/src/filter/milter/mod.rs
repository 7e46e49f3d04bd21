//! `kind = "milter"`: hands the message to a Sendmail/Postfix mail filter (OpenDKIM, OpenDMARC,
//! rspamd's milter proxy, ...) over the milter protocol, version 6.
//!
//! ```toml
//! [[filter]]
//! name = "opendkim"
//! kind = "milter"
//! address = "127.0.0.1:8891"      # or: socket = "/run/opendkim/opendkim.sock"
//! timeout = "30s"
//! macros = { j = "mx.example.com", "{daemon_name}" = "smtpgate" }
//! ```
//!
//! The whole conversation for one message is replayed at the end of data, on a connection of its
//! own: negotiation, connect, HELO, MAIL, each RCPT, DATA, each header, end of headers, the body
//! in chunks, end of message; then the milter's changes and its final answer, then QUIT. The
//! milter's negotiation reply is honoured: steps it does not want are not sent, replies it
//! will not give are not waited for.
//!
//! Answers: accept or continue → accept, with the milter's changes (added header fields as
//! such; changes by index or to the body as the rewritten message; recipients added and
//! removed); reject, tempfail or a reply code of its own → that refusal; discard → discard;
//! quarantine → quarantine. Since the replay comes after the client was answered for each
//! RCPT, a refusal at any earlier step refuses the whole message (the sender hears of it;
//! dropping one recipient silently would lose mail). The milter down, or breaking the protocol
//! → `Err`, so the filter's `on_error` decides. `SMFIF_CHGFROM` is not offered: a verdict
//! cannot change the envelope sender.
//!
//! Macros: at connect `{daemon_name}` (`smtpgate`), `{client_addr}` and the configured
//! `macros`; at MAIL `{mail_addr}` and `{auth_authen}` for an authenticated client; at RCPT
//! `{rcpt_addr}`.

mod edit;
mod protocol;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use smtpgate_proto::Reply;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use self::edit::{LeadingSpace, Message};
use self::protocol::{Command, Peer, Response, action, code, step};
use super::options::{BuildErrors, options};
use super::{Action, BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

#[derive(Debug, Deserialize)]
struct Options {
    address: Option<String>,
    socket: Option<PathBuf>,
    macros: Option<BTreeMap<String, String>>,
}

/// Where the milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// `host:port`, resolved at each connection.
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug)]
pub struct Milter {
    endpoint: Endpoint,
    /// Sent at connect, after (and so over) our own.
    macros: Vec<(String, String)>,
}

pub fn build(raw: toml::Table, base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let endpoint = endpoint(o.address, o.socket, base_dir, &mut errors);
    let macros: Vec<(String, String)> = o.macros.unwrap_or_default().into_iter().collect();
    for (name, _) in &macros {
        if name.is_empty() || name.contains('\0') {
            errors.push((format!("macros.{name}"), "is not a macro name".into()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(Milter { endpoint, macros }))
}

/// Exactly one of `address` and `socket`; a relative socket path is relative to the config.
fn endpoint(address: Option<String>, socket: Option<PathBuf>, base: &Path, errors: &mut BuildErrors) -> Endpoint {
    match (address, socket) {
        (Some(_), Some(_)) => {
            errors.push(("socket".into(), "give either address or socket, not both".into()));
            Endpoint::Unix(PathBuf::new())
        }
        (None, Some(path)) => Endpoint::Unix(base.join(path)),
        (Some(a), None) => {
            let valid = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !valid {
                let message = format!("{a:?} is not host:port (use e.g. 127.0.0.1:8891)");
                errors.push(("address".into(), message));
            }
            Endpoint::Tcp(a)
        }
        (None, None) => {
            errors.push(("address".into(), "is required (or socket)".into()));
            Endpoint::Unix(PathBuf::new())
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Filter for Milter {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let result = match &self.endpoint {
                Endpoint::Tcp(addr) => match TcpStream::connect(addr.as_str()).await {
                    Ok(s) => converse(s, m, &self.macros).await,
                    Err(e) => Err(FilterError(e.to_string())),
                },
                Endpoint::Unix(path) => match UnixStream::connect(path).await {
                    Ok(s) => converse(s, m, &self.macros).await,
                    Err(e) => Err(FilterError(e.to_string())),
                },
            };
            result.map_err(|e| FilterError(format!("milter at {}: {}", self.endpoint, e.0)))
        })
    }
}

/// One message's whole conversation on a fresh connection.
async fn converse<S>(stream: S, m: &MessageInfo<'_>, macros: &[(String, String)]) -> Result<Verdict, FilterError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Conversation::negotiate(stream).await?;
    let verdict = c.replay(m, macros).await;
    // The milter resets on QUIT; whether it hears it changes nothing for this message.
    let _ = protocol::write_packet(&mut c.stream, &Command::Quit).await;
    verdict
}

/// Where the replay stands after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Go on with the next step.
    Continue,
    /// Skip the rest of the body (`SMFIR_SKIP`).
    SkipBody,
    /// The milter has decided before the end of the message.
    Final(Verdict),
}

/// Returns from the enclosing function with the step unless it says go on.
macro_rules! stop_unless_continue {
    ($step:expr) => {
        match $step {
            Step::Continue => {}
            decided => return Ok(decided),
        }
    };
}

/// A negotiated connection to a milter.
struct Conversation<S> {
    stream: S,
    /// The protocol flags the milter asked for.
    steps: u32,
    /// The actions the milter asked for.
    actions: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conversation<S> {
    async fn negotiate(mut stream: S) -> Result<Conversation<S>, FilterError> {
        let offer = Command::OptNeg {
            version: protocol::VERSION,
            actions: protocol::OFFERED_ACTIONS,
            steps: protocol::OFFERED_STEPS,
        };
        protocol::write_packet(&mut stream, &offer).await.map_err(io)?;
        let (version, actions, steps) = match read(&mut stream).await? {
            Response::OptNeg {
                version,
                actions,
                steps,
            } => (version, actions, steps),
            other => return Err(FilterError(format!("expected its negotiation, got {other:?}"))),
        };
        if !(2..=protocol::VERSION).contains(&version) {
            return Err(FilterError(format!("unsupported milter protocol version {version}")));
        }
        // What it asks beyond our offer, it does not get (libmilter refuses such a milter too).
        if actions & !protocol::OFFERED_ACTIONS != 0 || steps & !protocol::OFFERED_STEPS != 0 {
            return Err(FilterError(format!(
                "asks for actions {actions:#x} / steps {steps:#x} beyond our offer"
            )));
        }
        Ok(Conversation { stream, steps, actions })
    }

    fn wants(&self, skip_flag: u32) -> bool {
        self.steps & skip_flag == 0
    }

    async fn replay(&mut self, m: &MessageInfo<'_>, macros: &[(String, String)]) -> Result<Verdict, FilterError> {
        let lead = match self.steps & step::HDR_LEADSPC {
            0 => LeadingSpace::Stripped,
            _ => LeadingSpace::Kept,
        };
        let message = Message::parse(m.message, lead);
        if let Step::Final(v) = self.envelope(m, macros).await? {
            return Ok(v);
        }
        if let Step::Final(v) = self.content(&message).await? {
            return Ok(v);
        }
        self.macros(code::EOM, Vec::new()).await?;
        self.send(&Command::EndOfMessage).await?;
        self.end_of_message(message).await
    }

    /// Connect, HELO, MAIL, each RCPT and DATA, as far as the milter wants them.
    async fn envelope(&mut self, m: &MessageInfo<'_>, extra: &[(String, String)]) -> Result<Step, FilterError> {
        let s = m.session;
        if self.wants(step::NOCONNECT) {
            let (hostname, peer) = match s.client {
                Some(address) => (format!("[{address}]"), Peer::Inet { port: 0, address }),
                None => ("localhost".to_string(), Peer::Unknown),
            };
            let mut macros = vec![("{daemon_name}".to_string(), "smtpgate".to_string())];
            macros.extend(s.client.map(|a| ("{client_addr}".to_string(), a.to_string())));
            macros.extend(extra.iter().cloned());
            self.macros(code::CONNECT, macros).await?;
            stop_unless_continue!(self.ask(&Command::Connect { hostname, peer }, step::NR_CONN).await?);
        }
        if let Some(helo) = s.helo.as_ref().filter(|_| self.wants(step::NOHELO)) {
            stop_unless_continue!(self.ask(&Command::Helo(helo.clone()), step::NR_HELO).await?);
        }
        if self.wants(step::NOMAIL) {
            let mut macros = vec![("{mail_addr}".to_string(), m.sender.to_string())];
            macros.extend(s.user.as_ref().map(|u| ("{auth_authen}".to_string(), u.clone())));
            self.macros(code::MAIL, macros).await?;
            let mail = Command::Mail(vec![format!("<{}>", m.sender)]);
            stop_unless_continue!(self.ask(&mail, step::NR_MAIL).await?);
        }
        let rcpts = if self.wants(step::NORCPT) { m.recipients } else { &[] };
        for rcpt in rcpts {
            self.macros(code::RCPT, vec![("{rcpt_addr}".to_string(), rcpt.to_string())])
                .await?;
            stop_unless_continue!(
                self.ask(&Command::Rcpt(vec![format!("<{rcpt}>")]), step::NR_RCPT)
                    .await?
            );
        }
        if self.wants(step::NODATA) {
            self.macros(code::DATA, Vec::new()).await?;
            stop_unless_continue!(self.ask(&Command::Data, step::NR_DATA).await?);
        }
        Ok(Step::Continue)
    }

    /// Each header field, the end of the header section, the body in chunks.
    async fn content(&mut self, message: &Message) -> Result<Step, FilterError> {
        if self.wants(step::NOHDRS) {
            for (name, value) in message.headers() {
                stop_unless_continue!(self.ask(&Command::Header(name, value), step::NR_HDR).await?);
            }
        }
        if self.wants(step::NOEOH) {
            self.macros(code::EOH, Vec::new()).await?;
            stop_unless_continue!(self.ask(&Command::EndOfHeaders, step::NR_EOH).await?);
        }
        if self.wants(step::NOBODY) {
            for chunk in message.body().chunks(protocol::BODY_CHUNK) {
                match self.ask(&Command::Body(chunk.to_vec()), step::NR_BODY).await? {
                    Step::Continue => {}
                    Step::SkipBody => break,
                    decided => return Ok(decided),
                }
            }
        }
        Ok(Step::Continue)
    }

    /// The changes and the final answer after `SMFIC_BODYEOB`.
    async fn end_of_message(&mut self, mut message: Message) -> Result<Verdict, FilterError> {
        let mut recipients = Vec::new();
        let mut quarantine = None;
        let mut body_replaced = false;
        loop {
            let response = read(&mut self.stream).await?;
            self.allowed(&response)?;
            match response {
                Response::AddHeader(name, value) => message.add_header(&name, &value),
                Response::InsertHeader(i, name, value) => message.insert_header(i, &name, &value),
                Response::ChangeHeader(i, name, value) => message.change_header(i, &name, &value),
                Response::ReplaceBody(chunk) => {
                    message.replace_body(&chunk, !body_replaced);
                    body_replaced = true;
                }
                Response::AddRecipient(r) => recipients.push(Modification::AddRecipient(unbracket(&r))),
                Response::DeleteRecipient(r) => recipients.push(Modification::RemoveRecipient(unbracket(&r))),
                Response::Quarantine(reason) => quarantine = Some(reason),
                Response::Progress => {}
                other => match decision(other)? {
                    Step::Final(v) if v.action != Action::Accept => return Ok(v),
                    Step::Final(_) | Step::Continue => break,
                    Step::SkipBody => return Err(FilterError("SMFIR_SKIP at end of message".into())),
                },
            }
        }
        let mut modifications = message.into_modifications();
        modifications.extend(recipients);
        let action = match quarantine {
            Some(reason) => Action::Quarantine(format!("quarantined by milter: {reason}")),
            None => Action::Accept,
        };
        Ok(Verdict { action, modifications })
    }

    /// A change the milter did not negotiate is a protocol error (Postfix refuses it too).
    fn allowed(&self, response: &Response) -> Result<(), FilterError> {
        let needs = match response {
            Response::AddHeader(..) | Response::InsertHeader(..) => action::ADDHDRS,
            Response::ChangeHeader(..) => action::CHGHDRS,
            Response::ReplaceBody(_) => action::CHGBODY,
            Response::AddRecipient(_) => action::ADDRCPT | action::ADDRCPT_PAR,
            Response::DeleteRecipient(_) => action::DELRCPT,
            Response::Quarantine(_) => action::QUARANTINE,
            Response::ChangeFrom(_) => return Err(FilterError("SMFIR_CHGFROM was not offered".into())),
            _ => return Ok(()),
        };
        match self.actions & needs {
            0 => Err(FilterError(format!("{response:?} without negotiating it"))),
            _ => Ok(()),
        }
    }

    /// Sends `command`; waits for the answer unless the milter said it sends none (`no_reply`).
    async fn ask(&mut self, command: &Command, no_reply: u32) -> Result<Step, FilterError> {
        self.send(command).await?;
        if self.steps & no_reply != 0 {
            return Ok(Step::Continue);
        }
        loop {
            match read(&mut self.stream).await? {
                Response::Progress => continue,
                Response::Skip if matches!(command, Command::Body(_)) => return Ok(Step::SkipBody),
                other => return decision(other),
            }
        }
    }

    async fn macros(&mut self, stage: u8, pairs: Vec<(String, String)>) -> Result<(), FilterError> {
        if pairs.is_empty() {
            return Ok(());
        }
        self.send(&Command::Macros { stage, pairs }).await
    }

    async fn send(&mut self, command: &Command) -> Result<(), FilterError> {
        protocol::write_packet(&mut self.stream, command).await.map_err(io)
    }
}

/// What an answer to a step means.
fn decision(response: Response) -> Result<Step, FilterError> {
    let verdict = match response {
        Response::Continue => return Ok(Step::Continue),
        Response::Accept => Verdict::accept(),
        Response::Reject => Verdict::reject(Reply::milter_rejected()),
        Response::TempFail => Verdict::tempfail(Reply::milter_deferred()),
        Response::Discard => Verdict {
            action: Action::Discard,
            modifications: Vec::new(),
        },
        Response::ReplyCode(text) => reply_code(&text)?,
        other => return Err(FilterError(format!("unexpected {other:?}"))),
    };
    Ok(Step::Final(verdict))
}

/// `SMFIR_REPLYCODE`: `550 5.7.1 text`, or several lines `550-5.7.1 a\r\n550 5.7.1 b`.
fn reply_code(text: &str) -> Result<Verdict, FilterError> {
    let bad = || FilterError(format!("bad reply code {text:?}"));
    let mut lines = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty());
    let first = lines.next().ok_or_else(bad)?;
    let code: u16 = first.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    if !(400..600).contains(&code) {
        return Err(bad());
    }
    let (status, first_text) = split_status(first.get(4..).unwrap_or(""), code);
    let more = lines.map(|l| split_status(l.get(4..).unwrap_or(""), code).1).collect();
    let reply = Reply::from_milter(code, status, first_text, more);
    Ok(match code {
        400..=499 => Verdict::tempfail(reply),
        _ => Verdict::reject(reply),
    })
}

/// `5.7.1 text` → (`5.7.1`, `text`); the status must have the reply code's class.
fn split_status(rest: &str, code: u16) -> (String, String) {
    let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let parts: Vec<&str> = word.split('.').collect();
    let is_status = parts.len() == 3
        && parts[0] == (code / 100).to_string()
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    match is_status {
        true => (word.to_string(), after.to_string()),
        false => (String::new(), rest.to_string()),
    }
}

fn unbracket(address: &str) -> String {
    let a = address.trim();
    a.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a)
        .to_string()
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Response, FilterError> {
    let (cmd, data) = protocol::read_packet(stream).await.map_err(io)?;
    Response::decode(cmd, &data).map_err(|e| FilterError(e.0))
}

fn io(e: std::io::Error) -> FilterError {
    FilterError(e.to_string())
}

#[cfg(test)]
mod tests;
