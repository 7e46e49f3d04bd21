//! What routing sees of a message: envelope, session facts, headers, and a bounded part of the body.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::envelope::Sender;
use crate::message::Headers;

/// A message as routing rules and Sieve scripts see it.
#[derive(Debug, Clone, Default)]
pub struct MessageView<'a> {
    pub sender: Sender,
    pub client: Option<IpAddr>,
    pub user: Option<String>,
    pub listener: String,
    pub size: u64,
    /// The header fields: intake's one parsed view, borrowed; none at RCPT time.
    pub headers: Cow<'a, Headers>,
    /// The start of the body (after the header section), at most the scan limit.
    pub body: &'a [u8],
    /// Tags set before routing (by filters).
    pub tags: Vec<String>,
}

impl<'a> MessageView<'a> {
    /// The view of `message` with its headers already parsed (`headers` read from `message`,
    /// which may stop after the start of its body); the body view is cut at `body_limit` bytes.
    pub fn with_parsed(mut self, headers: &'a Headers, message: &'a [u8], body_limit: u64) -> Self {
        let body = &message[headers.body_start().min(message.len())..];
        self.body = &body[..body.len().min(body_limit as usize)];
        self.headers = Cow::Borrowed(headers);
        self
    }

    /// Parses the header section of `message` (a whole message: its size is the view's).
    pub fn with_message(mut self, message: &'a [u8], body_limit: u64) -> Self {
        let headers = Headers::parse(message);
        let body = &message[headers.body_start().min(message.len())..];
        self.body = &body[..body.len().min(body_limit as usize)];
        self.headers = Cow::Owned(headers);
        self.size = message.len() as u64;
        self
    }

    /// Every value of a header, case-insensitive name.
    pub fn header<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers.values(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfolds_headers_and_finds_the_body() {
        let msg = b"Subject: hello\r\n world\r\nX-A: 1\r\n\r\nbody here";
        let view = MessageView::default().with_message(msg, 4);
        assert_eq!(
            view.headers.fields(),
            [("Subject".into(), "hello world".into()), ("X-A".into(), "1".into())]
        );
        assert_eq!(view.body, b"body");
        assert_eq!(view.size, msg.len() as u64);
        let parsed = Headers::parse(msg);
        let borrowed = MessageView::default().with_parsed(&parsed, msg, 1 << 20);
        assert!(matches!(borrowed.headers, Cow::Borrowed(_)));
        assert_eq!(borrowed.body, b"body here");
    }
}
