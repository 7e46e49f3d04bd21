//! Turning script text into tokens (RFC 5228 section 2 and the grammar in section 8.1).
//!
//! Comments (`#` to end of line, `/* .. */`) and white space are dropped here. Strings arrive
//! already decoded: quoted strings without their escapes, `text:` strings without their
//! dot-stuffing. Identifiers and tags are lower-cased, because Sieve compares them without regard
//! to case (the RFC's own example writes `:DOMAIN` and `NOT`).

use crate::error::ParseError;

/// One token of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A command or test name, lower-cased.
    Ident(String),
    /// A tagged argument without its colon, lower-cased.
    Tag(String),
    /// A number with its `K`/`M`/`G` quantifier applied.
    Number(u64),
    /// A decoded quoted or multi-line string.
    Str(String),
    LBracket,
    RBracket,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semicolon,
}

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
}

/// Splits a whole script into tokens.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        text,
        src: text.as_bytes(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    while let Some(b) = lexer.skip_blanks()? {
        lexer.token(b)?;
    }
    Ok(lexer.out)
}

struct Lexer<'a> {
    text: &'a str,
    src: &'a [u8],
    pos: usize,
    line: usize,
    out: Vec<Token>,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    /// Skips white space and comments; returns the next significant byte, or `None` at the end.
    fn skip_blanks(&mut self) -> Result<Option<u8>, ParseError> {
        loop {
            match self.peek() {
                None => return Ok(None),
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    self.bump();
                }
                Some(b'#') => self.skip_line(),
                Some(b'/') if self.peek_at(1) == Some(b'*') => self.skip_bracket_comment()?,
                Some(b) => return Ok(Some(b)),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.bump() {
            if b == b'\n' {
                break;
            }
        }
    }

    fn skip_bracket_comment(&mut self) -> Result<(), ParseError> {
        let start = self.line;
        self.pos += 2;
        loop {
            match self.bump() {
                None => return Err(ParseError::new(start, "unterminated /* comment")),
                Some(b'*') if self.peek() == Some(b'/') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => {}
            }
        }
    }

    fn token(&mut self, first: u8) -> Result<(), ParseError> {
        let line = self.line;
        let tok = match first {
            b'"' => self.quoted()?,
            b':' => self.tag()?,
            b'0'..=b'9' => self.number()?,
            b if is_ident_start(b) => self.identifier_or_text()?,
            _ => self.punctuation()?,
        };
        self.out.push(Token { tok, line });
        Ok(())
    }

    fn punctuation(&mut self) -> Result<Tok, ParseError> {
        let tok = match self.peek() {
            Some(b'[') => Tok::LBracket,
            Some(b']') => Tok::RBracket,
            Some(b'(') => Tok::LParen,
            Some(b')') => Tok::RParen,
            Some(b'{') => Tok::LBrace,
            Some(b'}') => Tok::RBrace,
            Some(b',') => Tok::Comma,
            Some(b';') => Tok::Semicolon,
            _ => {
                let c = self.text[self.pos..].chars().next().unwrap_or('?');
                return Err(ParseError::new(self.line, format!("unexpected character {c:?}")));
            }
        };
        self.pos += 1;
        Ok(tok)
    }

    /// A quoted string: `\` takes the next character literally (RFC 5228 section 2.4.2).
    fn quoted(&mut self) -> Result<Tok, ParseError> {
        let start = self.line;
        self.pos += 1;
        let mut buf = Vec::new();
        loop {
            match self.bump() {
                None => return Err(ParseError::new(start, "unterminated quoted string")),
                Some(b'"') => break,
                Some(b'\\') => match self.bump() {
                    None => return Err(ParseError::new(start, "unterminated quoted string")),
                    Some(b) => buf.push(b),
                },
                Some(b) => buf.push(b),
            }
        }
        into_string(buf, start).map(Tok::Str)
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn tag(&mut self) -> Result<Tok, ParseError> {
        self.pos += 1;
        if !self.peek().is_some_and(is_ident_start) {
            return Err(ParseError::new(self.line, "':' must be followed by a tag name"));
        }
        Ok(Tok::Tag(self.word().to_ascii_lowercase()))
    }

    fn number(&mut self) -> Result<Tok, ParseError> {
        let line = self.line;
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let too_big = || ParseError::new(line, "number too large");
        let value: u64 = self.text[start..self.pos].parse().map_err(|_| too_big())?;
        let shift = match self.peek().map(|b| b.to_ascii_uppercase()) {
            Some(b'K') => 10,
            Some(b'M') => 20,
            Some(b'G') => 30,
            _ => 0,
        };
        if shift > 0 {
            self.pos += 1;
        }
        if self.peek().is_some_and(is_ident_char) {
            return Err(ParseError::new(line, "a number may only be followed by K, M or G"));
        }
        let value = value.checked_mul(1 << shift).ok_or_else(too_big)?;
        Ok(Tok::Number(value))
    }

    fn identifier_or_text(&mut self) -> Result<Tok, ParseError> {
        let word = self.word().to_ascii_lowercase();
        if word == "text" && self.peek() == Some(b':') {
            return self.multiline();
        }
        Ok(Tok::Ident(word))
    }

    /// A `text:` string (RFC 5228 section 2.4.2): the lines up to one holding a lone `.`, each
    /// ending in CRLF, with the leading dot removed from lines that start with one.
    fn multiline(&mut self) -> Result<Tok, ParseError> {
        let start = self.line;
        self.pos += 1;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'#') => self.skip_line(),
            Some(b'\n') => self.skip_line(),
            Some(b'\r') if self.peek_at(1) == Some(b'\n') => self.skip_line(),
            _ => return Err(ParseError::new(start, "text: must be followed by the end of the line")),
        }
        let mut value = String::new();
        loop {
            let Some(line) = self.take_line() else {
                return Err(ParseError::new(
                    start,
                    "text: string not ended by a line holding only '.'",
                ));
            };
            if line == "." {
                return Ok(Tok::Str(value));
            }
            value.push_str(line.strip_prefix('.').unwrap_or(line));
            value.push_str("\r\n");
        }
    }

    /// The next line without its line ending, or `None` at the end of the script.
    fn take_line(&mut self) -> Option<&'a str> {
        let rest = self.text.get(self.pos..).filter(|r| !r.is_empty())?;
        let (line, consumed) = match rest.find('\n') {
            Some(end) => (&rest[..end], end + 1),
            None => (rest, rest.len()),
        };
        self.pos += consumed;
        if consumed > line.len() {
            self.line += 1;
        }
        Some(line.strip_suffix('\r').unwrap_or(line))
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn into_string(buf: Vec<u8>, line: usize) -> Result<String, ParseError> {
    String::from_utf8(buf).map_err(|_| ParseError::new(line, "string is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn quoted_escapes() {
        assert_eq!(toks(r#""a\"b\\c\d""#), vec![Tok::Str(r#"a"b\cd"#.into())]);
    }

    #[test]
    fn numbers_with_quantifiers() {
        assert_eq!(
            toks("1 2K 3m 4G"),
            vec![
                Tok::Number(1),
                Tok::Number(2048),
                Tok::Number(3 << 20),
                Tok::Number(4 << 30)
            ]
        );
        assert!(tokenize("99999999999999999999").is_err());
        assert!(tokenize("17179869184G").is_err());
        assert!(tokenize("12X").is_err());
    }

    #[test]
    fn comments_are_skipped_and_lines_counted() {
        let t = tokenize("# one\n/* two\nthree */ keep;\n").unwrap();
        assert_eq!(
            t[0],
            Token {
                tok: Tok::Ident("keep".into()),
                line: 3
            }
        );
    }

    #[test]
    fn multiline_unstuffs_dots() {
        let t = toks("text: # comment\nline one\n..dot\n.\n;");
        assert_eq!(t, vec![Tok::Str("line one\r\n.dot\r\n".into()), Tok::Semicolon]);
    }

    #[test]
    fn multiline_accepts_crlf() {
        let t = toks("TEXT:\r\na\r\n.\r\n");
        assert_eq!(t, vec![Tok::Str("a\r\n".into())]);
    }

    #[test]
    fn tags_are_lowercased() {
        assert_eq!(toks(":DOMAIN"), vec![Tok::Tag("domain".into())]);
    }
}
