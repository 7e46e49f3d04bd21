//! The one catalogue of every reply the server sends.
//!
//! Handlers never write reply bytes themselves: they pick a named constructor here, so every
//! answer smtpgate can give is listed in one place with its code and RFC 3463 enhanced status.
//! Per RFC 2034 section 3, the greeting and the replies to HELO and EHLO carry no enhanced
//! status code; neither do the intermediate `334` and `354` replies.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply: a code, an enhanced status (`""` for none), a first line and more lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `"2.1.0"`, or `""` for replies that carry none.
    pub status: Cow<'static, str>,
    pub text: Cow<'static, str>,
    pub extra_lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: Cow::Borrowed(status),
            text: text.into(),
            extra_lines: Vec::new(),
        }
    }

    /// A reply an administrator wrote in the configuration (a routing rule's `reject`).
    pub fn policy(code: u16, status: String, text: String) -> Self {
        Reply {
            code,
            status: Cow::Owned(status),
            text: Cow::Owned(text),
            extra_lines: Vec::new(),
        }
    }

    /// Adds a line after the text (makes the reply multi-line).
    pub fn with_line(mut self, line: impl Into<String>) -> Self {
        self.extra_lines.push(line.into());
        self
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form, e.g. `250-2.0.0 line\r\n250 2.0.0 last\r\n`: multi-line when
    /// `extra_lines` is non-empty, the status on every line, no status when it is `""`.
    /// Control characters in the text (a CR or LF smuggled in from client input) become `?`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_with(out, &self.status);
    }

    /// Like [`write_to`](Self::write_to) but without the enhanced status, for sessions that
    /// began with HELO (RFC 2034: the client did not ask for enhanced status codes).
    pub fn write_plain_to(&self, out: &mut Vec<u8>) {
        self.write_with(out, "");
    }

    /// The wire form as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    fn write_with(&self, out: &mut Vec<u8>, status: &str) {
        let lines = std::iter::once(&*self.text).chain(self.extra_lines.iter().map(|l| l.as_str()));
        let last = self.extra_lines.len();
        for (i, line) in lines.enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let head = if status.is_empty() {
                format!("{:03}{sep}", self.code)
            } else {
                format!("{:03}{sep}{status} ", self.code)
            };
            out.extend_from_slice(head.as_bytes());
            push_sanitized(out, line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn push_sanitized(out: &mut Vec<u8>, line: &str) {
    out.extend(line.bytes().map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }));
}

impl fmt::Display for Reply {
    /// The first line as it goes on the wire, without CRLF: `250 2.1.0 sender OK`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

/// The catalogue. Codes and enhanced status codes follow RFC 5321 and RFC 3463/5248.
impl Reply {
    /// `220 {host} ESMTP smtpgate` (no enhanced status: RFC 5321 4.2 puts the domain first).
    pub fn greeting(host: &str) -> Self {
        Reply::new(220, "", format!("{host} ESMTP smtpgate"))
    }

    /// `250-{host} greets {client}` followed by one line per EHLO keyword; no status codes.
    pub fn ehlo(host: &str, client: &str, keywords: &[String]) -> Self {
        let mut r = Reply::new(250, "", format!("{host} greets {client}"));
        r.extra_lines = keywords.to_vec();
        r
    }

    /// `250 {host}`.
    pub fn helo(host: &str) -> Self {
        Reply::new(250, "", host.to_owned())
    }

    pub fn ok() -> Self {
        Reply::new(250, "2.0.0", "OK")
    }

    pub fn sender_ok() -> Self {
        Reply::new(250, "2.1.0", "sender OK")
    }

    pub fn recipient_ok() -> Self {
        Reply::new(250, "2.1.5", "recipient OK")
    }

    pub fn start_data() -> Self {
        Reply::new(354, "", "end data with <CR><LF>.<CR><LF>")
    }

    pub fn queued(id: &str) -> Self {
        Reply::new(250, "2.0.0", format!("OK queued as {id}"))
    }

    pub fn chunk_ok(octets: u64) -> Self {
        Reply::new(250, "2.0.0", format!("{octets} octets received"))
    }

    pub fn bye(host: &str) -> Self {
        Reply::new(221, "2.0.0", format!("{host} closing connection"))
    }

    pub fn reset() -> Self {
        Reply::new(250, "2.0.0", "reset")
    }

    pub fn vrfy() -> Self {
        Reply::new(
            252,
            "2.5.0",
            "cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    pub fn help() -> Self {
        Reply::new(
            214,
            "2.0.0",
            "commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
        )
    }

    pub fn ready_tls() -> Self {
        Reply::new(220, "2.0.0", "ready to start TLS")
    }

    pub fn auth_ok() -> Self {
        Reply::new(235, "2.7.0", "authentication succeeded")
    }

    /// `334 {challenge}` (`334 ` for an empty challenge).
    pub fn auth_continue(challenge_b64: &str) -> Self {
        Reply::new(334, "", challenge_b64.to_owned())
    }
}

/// Errors in what the client sent.
impl Reply {
    pub fn line_too_long() -> Self {
        Reply::new(500, "5.5.2", "line too long")
    }

    pub fn unrecognized() -> Self {
        Reply::new(500, "5.5.1", "command unrecognized")
    }

    pub fn syntax(what: &str) -> Self {
        Reply::new(501, "5.5.4", format!("syntax error: {what}"))
    }

    pub fn bad_address(what: &str) -> Self {
        Reply::new(501, "5.1.3", format!("bad address syntax: {what}"))
    }

    pub fn unknown_parameter(p: &str) -> Self {
        Reply::new(555, "5.5.4", format!("unsupported parameter {p}"))
    }

    /// `503 5.5.1 {what}`, e.g. "MAIL first", "RCPT first", "send EHLO first".
    pub fn bad_sequence(what: &str) -> Self {
        Reply::new(503, "5.5.1", what.to_owned())
    }

    pub fn not_implemented() -> Self {
        Reply::new(502, "5.5.1", "command not implemented")
    }

    pub fn bare_line_ending() -> Self {
        Reply::new(550, "5.6.0", "message contains bare CR or LF")
    }

    pub fn pregreet() -> Self {
        Reply::new(554, "5.5.0", "talked before the greeting")
    }

    /// `554 5.5.0`: the client sent more without waiting for a reply it must wait for (message
    /// content before the `354`, commands behind EHLO or HELO, or any pipelining after HELO),
    /// as Postfix's `smtpd_forbid_unauth_pipelining`. The connection is closed.
    pub fn sync_error() -> Self {
        Reply::new(554, "5.5.0", "Error: SMTP protocol synchronization")
    }

    /// `550 5.6.0`: a NUL octet in message content.
    pub fn nul_byte() -> Self {
        Reply::new(550, "5.6.0", "message contains NUL octets")
    }

    /// `554 5.4.6`: more `Received:` fields than the hop limit, a mail loop (RFC 5321 6.3).
    pub fn too_many_hops() -> Self {
        Reply::new(554, "5.4.6", "too many hops, mail loop detected")
    }

    pub fn bdat_mixed() -> Self {
        Reply::new(503, "5.5.1", "DATA not allowed in a BDAT transaction")
    }
}

/// Policy and limits.
impl Reply {
    pub fn too_many_recipients() -> Self {
        Reply::new(452, "4.5.3", "too many recipients")
    }

    pub fn message_too_big() -> Self {
        Reply::new(552, "5.3.4", "message size exceeds fixed limit")
    }

    /// A large message whose header section does not end within the part kept in memory.
    pub fn header_too_big() -> Self {
        Reply::new(552, "5.3.4", "message header section too large")
    }

    pub fn relay_denied() -> Self {
        Reply::new(554, "5.7.1", "relay access denied")
    }

    /// `553 5.1.3 {what}`: for `%`, `!` and source-route tricks aimed at local domains.
    pub fn bad_recipient_address(what: &str) -> Self {
        Reply::new(553, "5.1.3", what.to_owned())
    }

    pub fn need_smtputf8() -> Self {
        Reply::new(553, "5.6.7", "non-ASCII address requires SMTPUTF8")
    }

    pub fn too_many_errors() -> Self {
        Reply::new(421, "4.7.0", "too many errors, closing connection")
    }

    pub fn too_many_connections() -> Self {
        Reply::new(421, "4.7.0", "too many connections, try again later")
    }

    /// `454 4.7.0`: this client address failed AUTH too often and is locked out for a while.
    pub fn auth_locked() -> Self {
        Reply::new(454, "4.7.0", "too many authentication failures, try again later")
    }

    pub fn timeout() -> Self {
        Reply::new(421, "4.4.2", "timeout, closing connection")
    }

    pub fn tls_required() -> Self {
        Reply::new(530, "5.7.0", "must issue STARTTLS first")
    }

    /// `550 5.7.1`: the From: domain publishes DMARC `p=reject` and the message failed DMARC
    /// (RFC 7489).
    pub fn dmarc_rejected(domain: &str) -> Self {
        Reply::new(
            550,
            "5.7.1",
            format!("message rejected: it fails the DMARC policy of {domain}"),
        )
    }

    /// `554 5.7.1 message contains a virus ({name})`: a virus scanner found one.
    pub fn virus_found(name: &str) -> Self {
        Reply::new(554, "5.7.1", format!("message contains a virus ({name})"))
    }

    /// `550 5.7.1`: a spam scanner said reject.
    pub fn spam_rejected() -> Self {
        Reply::new(550, "5.7.1", "message rejected as spam")
    }

    /// `451 4.7.1`: a spam scanner said not now (rspamd's "soft reject").
    pub fn spam_deferred() -> Self {
        Reply::new(451, "4.7.1", "message deferred as possible spam, try again later")
    }

    /// `451 4.7.1`: greylisted; a legitimate sender retries and gets through.
    pub fn greylisted() -> Self {
        Reply::new(451, "4.7.1", "greylisted, try again later")
    }
}

/// Connection policy (the `connection` and `rate_limit` filters).
impl Reply {
    /// `554 5.7.1 client listed at {zone}`, instead of the greeting: a DNS block list lists the
    /// client. Names the zone only, never the list's answer or the address.
    pub fn client_listed(zone: &str) -> Self {
        Reply::new(554, "5.7.1", format!("client listed at {zone}"))
    }

    /// `421 4.7.1`: as [`client_listed`](Self::client_listed), for a filter set to tempfail.
    pub fn client_listed_deferred(zone: &str) -> Self {
        Reply::new(421, "4.7.1", format!("client listed at {zone}, try again later"))
    }

    /// `554 5.7.1`, instead of the greeting: the client's address has no PTR record whose name
    /// resolves back to it.
    pub fn reverse_dns_unconfirmed() -> Self {
        Reply::new(554, "5.7.1", "client address has no confirmed reverse DNS")
    }

    /// `421 4.7.1`: as [`reverse_dns_unconfirmed`](Self::reverse_dns_unconfirmed), deferred.
    pub fn reverse_dns_unconfirmed_deferred() -> Self {
        Reply::new(
            421,
            "4.7.1",
            "client address has no confirmed reverse DNS, try again later",
        )
    }

    /// `550 5.7.1 bad HELO`: the EHLO/HELO name is not a domain or address literal, or claims
    /// to be us or localhost.
    pub fn bad_helo() -> Self {
        Reply::new(550, "5.7.1", "bad HELO")
    }

    /// `450 4.7.1`: as [`bad_helo`](Self::bad_helo), for a filter set to tempfail.
    pub fn bad_helo_deferred() -> Self {
        Reply::new(450, "4.7.1", "bad HELO, try again later")
    }

    /// `421 4.7.0`, instead of the greeting: the client opens connections faster than its rate.
    pub fn connection_rate_exceeded() -> Self {
        Reply::new(421, "4.7.0", "too many connections from your address, try later")
    }

    /// `450 4.7.1`: messages or recipients faster than the configured rate.
    pub fn rate_limit_exceeded() -> Self {
        Reply::new(450, "4.7.1", "rate limit exceeded, try again later")
    }
}

/// A mail filter (milter) said no.
impl Reply {
    /// `550 5.7.1`: a milter answered `SMFIR_REJECT`.
    pub fn milter_rejected() -> Self {
        Reply::new(550, "5.7.1", "message rejected by mail filter")
    }

    /// `451 4.7.1`: a milter answered `SMFIR_TEMPFAIL`.
    pub fn milter_deferred() -> Self {
        Reply::new(451, "4.7.1", "message deferred by mail filter, try again later")
    }

    /// A reply a milter wrote itself (`SMFIR_REPLYCODE`): `code` is 4xx or 5xx, `status` its
    /// enhanced status (`""` for none), `text` its first line, `more` any further lines.
    pub fn from_milter(code: u16, status: String, text: String, more: Vec<String>) -> Self {
        Reply {
            code,
            status: Cow::Owned(status),
            text: Cow::Owned(text),
            extra_lines: more,
        }
    }
}

/// Our own trouble.
impl Reply {
    pub fn shutting_down(host: &str) -> Self {
        Reply::new(421, "4.3.2", format!("{host} shutting down"))
    }

    pub fn low_disk() -> Self {
        Reply::new(452, "4.3.1", "insufficient system storage")
    }

    /// The node's memory budget for message content is used up: try again later.
    pub fn low_memory() -> Self {
        Reply::new(452, "4.3.1", "insufficient system resources, try again later")
    }

    /// A policy check (filter) could not answer and is configured to fail closed.
    pub fn policy_unavailable() -> Self {
        Self::new(451, "4.7.1", "policy check unavailable, try again later")
    }

    pub fn local_error() -> Self {
        Reply::new(451, "4.3.0", "local error, try again later")
    }

    pub fn tls_unavailable() -> Self {
        Reply::new(454, "4.7.0", "TLS not available")
    }
}

/// Deliverability.
impl Reply {
    /// `550 5.1.1`: the recipient is on the suppression list; `why` says how it got there
    /// (`hard bounce`, `complaint`, `manual`).
    pub fn suppressed(why: &str) -> Self {
        Reply::new(
            550,
            "5.1.1",
            format!("recipient address is suppressed ({why}): mail to it is not sent"),
        )
    }
}

/// Inline proxy mode: answers that come from, or are about, the upstream server.
impl Reply {
    /// An upstream server's reply to RCPT or to the end of data, relayed to the client with its
    /// code, enhanced status and text. A `421` becomes `451` (the upstream is closing, this session
    /// is not); a code that cannot end a command (1xx, 3xx, out of range) becomes
    /// [`upstream_lost`](Self::upstream_lost).
    pub fn relayed(upstream: &crate::ParsedReply) -> Self {
        let code = match upstream.code {
            421 => 451,
            c @ (200..=299 | 400..=599) => c,
            _ => return Reply::upstream_lost(),
        };
        let status = upstream.status.clone().unwrap_or_default();
        let mut lines = upstream.lines.iter().cloned();
        Reply {
            code,
            status: Cow::Owned(status),
            text: Cow::Owned(lines.next().unwrap_or_default()),
            extra_lines: lines.collect(),
        }
    }

    /// `451 4.4.1`: no upstream server could be reached for this recipient.
    pub fn upstream_unavailable() -> Self {
        Reply::new(451, "4.4.1", "upstream server unavailable, try again later")
    }

    /// `451 4.4.2`: the upstream connection broke during the transaction.
    pub fn upstream_lost() -> Self {
        Reply::new(451, "4.4.2", "connection to upstream server lost, try again later")
    }

    /// `452 4.5.3`: this recipient is routed to another upstream than the transaction's first one
    /// (RFC 5321 4.5.3.1.10: the client sends it again in a later transaction).
    pub fn other_upstream() -> Self {
        Reply::new(
            452,
            "4.5.3",
            "recipient goes to another server: send it in a new transaction",
        )
    }

    /// `550` with the failure's own status: the recipient's domain takes no mail (null MX, no such
    /// domain), found when a proxy listener looked up where to forward it.
    pub fn undeliverable(status: String, text: String) -> Self {
        Reply {
            code: 550,
            status: Cow::Owned(status),
            text: Cow::Owned(text),
            extra_lines: Vec::new(),
        }
    }

    /// `550 5.6.7`: the upstream cannot take an SMTPUTF8 transaction.
    pub fn upstream_lacks_smtputf8() -> Self {
        Reply::new(550, "5.6.7", "the destination does not support SMTPUTF8")
    }

    /// `451 4.3.5`: routing sends this recipient several ways, which a live session cannot follow.
    pub fn not_proxyable() -> Self {
        Reply::new(
            451,
            "4.3.5",
            "recipient cannot be forwarded in proxy mode, try again later",
        )
    }
}

/// AUTH (RFC 4954).
impl Reply {
    pub fn auth_failed() -> Self {
        Reply::new(535, "5.7.8", "authentication credentials invalid")
    }

    pub fn auth_unsupported() -> Self {
        Reply::new(504, "5.5.4", "unrecognized authentication mechanism")
    }

    pub fn auth_cancelled() -> Self {
        Reply::new(501, "5.7.0", "authentication cancelled")
    }

    pub fn auth_needs_tls() -> Self {
        Reply::new(
            538,
            "5.7.11",
            "encryption required for requested authentication mechanism",
        )
    }

    pub fn already_authenticated() -> Self {
        Reply::new(503, "5.5.1", "already authenticated")
    }
}

/// Content policy (the `content` and `dlp` filters).
impl Reply {
    /// `550 5.7.1 message rejected by content policy ({reason})`; `reason` is a fixed phrase
    /// chosen by the filter ("header rule", "attachment type not allowed"), never message data.
    pub fn content_rejected(reason: &str) -> Self {
        Reply::new(550, "5.7.1", format!("message rejected by content policy ({reason})"))
    }

    /// `554 5.6.0`: MIME parts nested too deep or too many of them.
    pub fn mime_structure_rejected() -> Self {
        Reply::new(
            554,
            "5.6.0",
            "MIME structure exceeds limits (nesting or number of parts)",
        )
    }

    /// `550 5.7.0`: the data-loss prevention filter found data that may not leave.
    pub fn dlp_rejected() -> Self {
        Reply::new(
            550,
            "5.7.0",
            "message rejected: it appears to contain sensitive data (DLP policy)",
        )
    }
}
