//! What routing sees of a message: envelope, session facts, headers, and a bounded part of the body.

use crate::envelope::Sender;
use std::net::IpAddr;

/// A message as routing rules and Sieve scripts see it.
#[derive(Debug, Clone, Default)]
pub struct MessageView<'a> {
    pub sender: Sender,
    pub client: Option<IpAddr>,
    pub user: Option<String>,
    pub listener: String,
    pub size: u64,
    /// Header fields, unfolded, in order.
    pub headers: Vec<(String, String)>,
    /// The start of the body (after the header section), at most the scan limit.
    pub body: &'a [u8],
    /// Tags set before routing (by filters).
    pub tags: Vec<String>,
}

impl<'a> MessageView<'a> {
    /// Parses the header section of `message`; the body view is cut at `body_limit` bytes.
    pub fn with_message(mut self, message: &'a [u8], body_limit: u64) -> Self {
        let (headers, body_start) = crate::message::parse_headers(message);
        self.headers = headers;
        let body = &message[body_start.min(message.len())..];
        self.body = &body[..body.len().min(body_limit as usize)];
        self.size = message.len() as u64;
        self
    }

    /// Every value of a header, case-insensitive name.
    pub fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unfolds_headers_and_finds_the_body() {
        let msg = b"Subject: hello\r\n world\r\nX-A: 1\r\n\r\nbody here";
        let (h, at) = crate::message::parse_headers(msg);
        assert_eq!(
            h,
            vec![("Subject".into(), "hello world".into()), ("X-A".into(), "1".into())]
        );
        assert_eq!(&msg[at..], b"body here");
    }
}
