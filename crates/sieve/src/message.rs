//! What a script can see of a message.

/// The view of one message, for one recipient, that a script is evaluated against.
///
/// The relay implements this over its spooled message; [`SimpleMessage`] implements it over
/// plain values for tests and simple callers.
pub trait Message {
    /// All values of the header field `name` (compared without regard to case), in the order they
    /// appear, unfolded and decoded to text (RFC 2047 encoded words decoded). Empty if the
    /// message has no such field.
    fn header(&self, name: &str) -> Vec<String>;
    /// The envelope sender (`MAIL FROM`) without angle brackets; `None` for the null sender `<>`.
    fn envelope_from(&self) -> Option<String>;
    /// The envelope recipient this script runs for, without angle brackets.
    fn envelope_to(&self) -> String;
    /// The size of the message in octets.
    fn size(&self) -> u64;
}

/// A [`Message`] made of plain values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleMessage {
    /// Header fields as (name, value) pairs, in message order, values already unfolded.
    pub headers: Vec<(String, String)>,
    /// The envelope sender; `None` for the null sender.
    pub from: Option<String>,
    /// The envelope recipient.
    pub to: String,
    /// The message size in octets.
    pub size: u64,
}

impl SimpleMessage {
    /// A message for recipient `to` with no headers, a null sender and size 0.
    pub fn new(to: impl Into<String>) -> Self {
        SimpleMessage {
            to: to.into(),
            ..Self::default()
        }
    }

    /// Adds a header field after the ones already present.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the envelope sender.
    pub fn with_from(mut self, from: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self
    }

    /// Sets the size in octets.
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }
}

impl Message for SimpleMessage {
    fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn envelope_from(&self) -> Option<String> {
        self.from.clone()
    }

    fn envelope_to(&self) -> String {
        self.to.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }
}
