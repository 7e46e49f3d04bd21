//! Mail that applications hand over the admin API (`POST /api/v1/inject`) instead of SMTP: a raw
//! RFC 5322 message or its parts (from, subject, text, HTML, attachments, headers), an envelope
//! sender, and recipients each with their own substitutions. Each recipient's message is built
//! (templates rendered with minijinja when the request has substitutions), given a `Received:`
//! line of its own, and taken by [`super::take`] into the spool exactly as mail that came over SMTP
//! on the chosen listener: the same hop count, submission headers, filters, routing and copies.
//! A recipient's answer is given only once its copies are written and fsynced.
//!
//! Nothing a caller sends becomes a header line it did not ask for: a rendered header value or
//! subject with a line break is refused, header names must be field names (RFC 5322 2.2), and
//! an HTML body's substitutions are HTML-escaped.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::headers::{Trace, received};
use super::{Disposition, Draft, Dropped, SpoolSink, Taken};
use crate::config::ListenerConfig;
use crate::datetime::now_unix;
use crate::envelope::{Address, Envelope, QueueId, Recipient, Sender, SessionInfo};
use crate::queue::Queue;
use crate::spool::Content;

/// At most this many recipients per request: each is a message of its own.
pub const MAX_RECIPIENTS: usize = 1000;

/// Work a template may do (minijinja's fuel): ample for any mail merge, a bound for a loop.
const TEMPLATE_FUEL: u64 = 1_000_000;

/// What an application asks to send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The envelope sender (`MAIL FROM`); empty for the null sender.
    pub envelope_sender: String,
    pub recipients: Vec<RecipientSpec>,
    pub content: ContentSpec,
    /// Substitutions for every recipient; a recipient's own ones win.
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// The listener whose policy the message goes through (its filters, hop limit, submission
    /// headers); the first listener when not named.
    #[serde(default)]
    pub listener: Option<String>,
}

/// One recipient and its substitutions (`{{ name }}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientSpec {
    pub email: String,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
}

/// The message: as written (a string), or parts to build it from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentSpec {
    Raw(String),
    Parts(Box<Parts>),
}

/// The parts of a message smtpgate builds (MIME structure, encodings, `Date`, `Message-ID`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parts {
    /// `From:`: an address, or `Name <address>`.
    pub from: String,
    /// `To:`; the recipient's address when not given.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    /// Further header fields, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// A file attached to the message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub content_type: String,
    pub file_name: String,
    /// The content, base64-encoded.
    pub base64: String,
}

/// What became of each recipient.
#[derive(Debug, Default, Serialize)]
pub struct Response {
    pub accepted: Vec<Accepted>,
    pub refused: Vec<Refused>,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub recipient: String,
    /// The queue ids of the copies routing made (usually one).
    pub queue_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub recipient: String,
    pub reason: String,
}

/// A request that cannot be taken at all (the API answers 400 with it).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no recipients")]
    NoRecipients,
    #[error("too many recipients: at most {MAX_RECIPIENTS} per request")]
    TooManyRecipients,
    #[error("no listener named {0:?}")]
    NoListener(String),
    #[error("the configuration has no listener")]
    NoListeners,
    #[error("envelope_sender {0:?}: {1}")]
    Sender(String, String),
}

/// Takes every recipient's message; answers per recipient. `client` is the API caller.
pub async fn inject(queue: &Queue, request: Request, client: SocketAddr) -> Result<Response, RequestError> {
    let ctx = queue.ctx();
    if request.recipients.is_empty() {
        return Err(RequestError::NoRecipients);
    }
    if request.recipients.len() > MAX_RECIPIENTS {
        return Err(RequestError::TooManyRecipients);
    }
    let listener = match &request.listener {
        Some(name) => ctx.config.listeners.iter().find(|l| &l.name == name),
        None => ctx.config.listeners.first(),
    }
    .cloned()
    .ok_or_else(|| match &request.listener {
        Some(name) => RequestError::NoListener(name.clone()),
        None => RequestError::NoListeners,
    })?;
    let sender = Sender::parse(&request.envelope_sender)
        .map_err(|e| RequestError::Sender(request.envelope_sender.clone(), e.to_string()))?;
    let request = Arc::new(request);
    let listener = Arc::new(listener);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, _) in request.recipients.iter().enumerate() {
        let (queue, request, listener, sender) = (queue.clone(), request.clone(), listener.clone(), sender.clone());
        tasks.spawn(async move { (i, one(&queue, &request, i, &listener, sender, client).await) });
    }
    let mut answers: Vec<Option<Result<Accepted, Refused>>> = (0..request.recipients.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, answer)) => answers[i] = Some(answer),
            Err(e) => tracing::error!(error = %e, "an injected message failed"),
        }
    }
    let mut response = Response::default();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Some(Ok(a)) => response.accepted.push(a),
            Some(Err(r)) => response.refused.push(r),
            None => response.refused.push(Refused {
                recipient: request.recipients[i].email.clone(),
                reason: "local error".into(),
            }),
        }
    }
    Ok(response)
}

/// Builds and takes recipient `i`'s message.
async fn one(
    queue: &Queue,
    request: &Request,
    i: usize,
    listener: &ListenerConfig,
    sender: Sender,
    client: SocketAddr,
) -> Result<Accepted, Refused> {
    let spec = &request.recipients[i];
    let refuse = |reason: String| Refused {
        recipient: spec.email.clone(),
        reason,
    };
    let address = Address::parse(&spec.email).map_err(|e| refuse(format!("bad address: {e}")))?;
    let message = build(request, spec).map_err(refuse)?;
    if message.len() as u64 > listener.max_message_size {
        return Err(refuse(format!(
            "message too big: {} bytes, the listener takes at most {}",
            message.len(),
            listener.max_message_size
        )));
    }
    let ctx = queue.ctx();
    let id = ctx.ids.next();
    let trace = received(&Trace {
        helo: "api",
        ip: client.ip(),
        host: &ctx.config.hostname,
        protocol: "HTTP",
        id,
        tls: None,
        single_rcpt: Some(address.as_str()),
    });
    let mut bytes = trace.into_bytes();
    bytes.extend_from_slice(&message);
    let smtputf8 = !sender.as_str().is_ascii() || !address.as_str().is_ascii();
    let draft = Draft {
        env: envelope(id, sender, Recipient::new(address), smtputf8),
        body: Content::memory(bytes),
        origin: SessionInfo {
            client: Some(client.ip()),
            helo: None,
            user: None,
            listener: listener.name.clone(),
            tls: false,
        },
        peer: client,
    };
    let mut sink = SpoolSink::new(queue);
    match super::take(&ctx, listener, draft, &mut sink).await {
        Disposition::Accepted(Taken::Spooled(ids)) => Ok(Accepted {
            recipient: spec.email.clone(),
            queue_ids: ids.iter().map(QueueId::to_string).collect(),
        }),
        Disposition::Accepted(Taken::Proxied(reply)) | Disposition::Refused(reply) => {
            Err(refuse(reply.to_string().trim_end().to_owned()))
        }
        Disposition::Quarantined(entry) => Err(refuse(format!("quarantined as {entry}"))),
        Disposition::Dropped(Dropped::NoRecipients) => {
            Err(refuse("not sent: suppressed, or removed by a filter".into()))
        }
        Disposition::Dropped(Dropped::Discarded) => Err(refuse("discarded by a filter".into())),
    }
}

fn envelope(id: QueueId, sender: Sender, recipient: Recipient, smtputf8: bool) -> Envelope {
    Envelope {
        id,
        sender,
        recipients: vec![recipient],
        received_at: now_unix(),
        eight_bit: false,
        smtputf8,
        ret: None,
        envid: None,
        pool: None,
        scan: Vec::new(),
        stream: None,
        route: None,
    }
}

/// The message for one recipient, with CRLF line endings; `Err` says why it cannot be built.
pub fn build(request: &Request, spec: &RecipientSpec) -> Result<Vec<u8>, String> {
    let templates = Templates::new(request, spec);
    let message = match &request.content {
        ContentSpec::Raw(raw) => templates.render("message", raw)?.into_bytes(),
        ContentSpec::Parts(parts) => build_parts(parts, spec, &templates)?,
    };
    Ok(crlf(&message))
}

/// Renders templates when the request has substitutions; otherwise text is taken as written
/// (a message with `{{` in it is not a template unless the caller says so by substituting).
struct Templates {
    env: Option<minijinja::Environment<'static>>,
    vars: minijinja::Value,
}

impl Templates {
    fn new(request: &Request, spec: &RecipientSpec) -> Templates {
        if request.substitutions.is_empty() && spec.substitutions.is_empty() {
            return Templates {
                env: None,
                vars: minijinja::Value::UNDEFINED,
            };
        }
        let mut vars = request.substitutions.clone();
        vars.extend(spec.substitutions.clone());
        vars.entry("recipient")
            .or_insert_with(|| Value::String(spec.email.clone()));
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        Templates {
            env: Some(env),
            vars: minijinja::Value::from(minijinja::value::Serde(&vars)),
        }
    }

    /// `source` rendered; `name` ending in `.html` escapes what is substituted.
    fn render(&self, name: &str, source: &str) -> Result<String, String> {
        let Some(env) = &self.env else {
            return Ok(source.to_owned());
        };
        env.render_named_str(name, source, self.vars.clone())
            .map_err(|e| format!("template {name}: {e}"))
    }

    /// A header value: rendered, and refused when it would start a new header line.
    fn header(&self, name: &str, source: &str) -> Result<String, String> {
        let value = self.render(name, source)?;
        if value.contains(['\r', '\n']) {
            return Err(format!("{name}: a header value cannot hold a line break"));
        }
        Ok(value)
    }
}

fn build_parts(parts: &Parts, spec: &RecipientSpec, t: &Templates) -> Result<Vec<u8>, String> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::text::Text;
    let from = t.header("from", &parts.from)?;
    let to = match &parts.to {
        Some(to) => t.header("to", to)?,
        None => spec.email.clone(),
    };
    let mut b = MessageBuilder::new()
        .from(mailbox(&from)?)
        .to(mailbox(&to)?)
        .subject(t.header("subject", parts.subject.as_deref().unwrap_or(""))?);
    if let Some(reply_to) = &parts.reply_to {
        b = b.reply_to(mailbox(&t.header("reply_to", reply_to)?)?);
    }
    for (name, value) in &parts.headers {
        if !is_field_name(name) || is_structural(name) {
            return Err(format!("header {name:?}: not a field name this API may set"));
        }
        b = b.header(name.clone(), Text::new(t.header(name, value)?));
    }
    if let Some(text) = &parts.text_body {
        b = b.text_body(t.render("text_body", text)?);
    }
    if let Some(html) = &parts.html_body {
        b = b.html_body(t.render("body.html", html)?);
    }
    for a in &parts.attachments {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(a.base64.trim())
            .map_err(|e| format!("attachment {:?}: not base64: {e}", a.file_name))?;
        if a.content_type.contains(['\r', '\n', ';']) || a.file_name.contains(['\r', '\n']) {
            return Err(format!("attachment {:?}: bad content type or file name", a.file_name));
        }
        b = b.attachment(a.content_type.clone(), a.file_name.clone(), bytes);
    }
    b.write_to_vec().map_err(|e| format!("cannot build the message: {e}"))
}

/// `address` or `Name <address>`, checked as an address.
fn mailbox(text: &str) -> Result<mail_builder::headers::address::Address<'static>, String> {
    let text = text.trim();
    let (name, address) = match (text.rfind('<'), text.ends_with('>')) {
        (Some(open), true) => (
            Some(text[..open].trim().trim_matches('"').to_owned()),
            &text[open + 1..text.len() - 1],
        ),
        _ => (None, text),
    };
    Address::parse(address).map_err(|e| format!("address {address:?}: {e}"))?;
    let name = name.filter(|n| !n.is_empty());
    Ok(mail_builder::headers::address::Address::new_address(
        name,
        address.to_owned(),
    ))
}

/// A field name: printable US-ASCII except the colon (RFC 5322 2.2).
fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Fields the builder writes itself from the parts: set through them, not as headers.
fn is_structural(name: &str) -> bool {
    [
        "content-type",
        "content-transfer-encoding",
        "mime-version",
        "from",
        "to",
        "subject",
        "reply-to",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// Every line ending as CRLF (applications write bare LF).
fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n');
        }
        out.push(b);
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn each_recipient_gets_its_own_substitutions_and_html_is_escaped() {
        let r = request(
            r#"{"envelope_sender": "app@example.test",
                "recipients": [{"email": "a@example.test", "substitutions": {"name": "Ann <b>"}},
                               {"email": "b@example.test"}],
                "substitutions": {"name": "friend", "shop": "Shop"},
                "content": {"from": "Shop <app@example.test>", "subject": "Hi {{ name }}",
                            "text_body": "Dear {{ name }} at {{ recipient }}\n",
                            "html_body": "<p>{{ name }}</p>",
                            "headers": [["X-Campaign", "{{ shop }}-1"]]}}"#,
        );
        let a = String::from_utf8(build(&r, &r.recipients[0]).unwrap()).unwrap();
        assert!(a.contains("Subject: Hi Ann <b>\r\n"), "{a}");
        assert!(a.contains("Dear Ann <b> at a@example.test\r\n"), "{a}");
        assert!(a.contains("<p>Ann &lt;b&gt;</p>"), "{a}");
        assert!(a.contains("X-Campaign: Shop-1\r\n"), "{a}");
        assert!(a.contains("To: <a@example.test>\r\n"), "{a}");
        let b = String::from_utf8(build(&r, &r.recipients[1]).unwrap()).unwrap();
        assert!(b.contains("Subject: Hi friend\r\n"), "{b}");
        assert!(!b.contains('\n') || !b.replace("\r\n", "").contains('\n'), "CRLF only");
    }

    #[test]
    fn a_raw_message_without_substitutions_is_taken_as_written_with_crlf() {
        let r = request(
            r#"{"envelope_sender": "", "recipients": [{"email": "a@example.test"}],
                "content": "Subject: {{ not a template }}\n\nbody\n"}"#,
        );
        let m = build(&r, &r.recipients[0]).unwrap();
        assert_eq!(m, b"Subject: {{ not a template }}\r\n\r\nbody\r\n");
    }

    #[test]
    fn header_injection_and_bad_names_are_refused() {
        let r = request(
            r#"{"envelope_sender": "a@example.test",
                "recipients": [{"email": "a@example.test", "substitutions": {"s": "x\r\nBcc: evil@example.test"}}],
                "content": {"from": "a@example.test", "subject": "{{ s }}"}}"#,
        );
        let e = build(&r, &r.recipients[0]).unwrap_err();
        assert!(e.contains("line break"), "{e}");
        let r = request(
            r#"{"envelope_sender": "a@example.test", "recipients": [{"email": "a@example.test"}],
                "content": {"from": "a@example.test", "headers": [["Bad Name", "x"]]}}"#,
        );
        assert!(build(&r, &r.recipients[0]).unwrap_err().contains("field name"));
        let r = request(
            r#"{"envelope_sender": "a@example.test", "recipients": [{"email": "a@example.test"}],
                "content": {"from": "a@example.test", "headers": [["Content-Type", "text/html"]]}}"#,
        );
        assert!(build(&r, &r.recipients[0]).is_err());
    }

    #[test]
    fn an_undefined_substitution_is_an_error_not_an_empty_string() {
        let r = request(
            r#"{"envelope_sender": "a@example.test",
                "recipients": [{"email": "a@example.test", "substitutions": {"x": 1}}],
                "content": "Subject: {{ missing }}\r\n\r\nbody"}"#,
        );
        assert!(build(&r, &r.recipients[0]).unwrap_err().contains("template"));
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd\r"), b"a\r\nb\r\nc\r\nd\r\n");
    }
}
