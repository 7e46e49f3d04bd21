//! The generic grammar of RFC 5228 section 8.2, before any command is given a meaning.
//!
//! ```text
//! command   = identifier arguments (";" / block)
//! arguments = *argument [test / test-list]
//! argument  = string-list / number / tag
//! test      = identifier arguments
//! test-list = "(" test *("," test) ")"
//! block     = "{" *command "}"
//! ```
//!
//! Blocks and tests nest; the parser counts the depth and refuses to go deeper than
//! [`MAX_NESTING`](crate::MAX_NESTING), so a hostile script cannot exhaust the stack here or in
//! the stages after this one, which recurse over the same tree.

use crate::MAX_NESTING;
use crate::error::ParseError;
use crate::lexer::{Tok, Token};

/// A command or a test: a name, its arguments, its tests and (for commands) its block.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    pub line: usize,
    pub args: Vec<Arg>,
    pub tests: TestArgs,
    pub block: Option<Vec<Node>>,
}

/// One argument of a command or test.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Tag(String, usize),
    Number(u64, usize),
    /// A single string or a `[..]` list of strings.
    Strings {
        values: Vec<String>,
        line: usize,
    },
}

/// The test or tests that follow a node's arguments.
#[derive(Debug, Clone)]
pub(crate) enum TestArgs {
    None,
    Single(Box<Node>),
    List(Vec<Node>),
}

/// Parses a token stream into the commands of a script.
pub(crate) fn parse(tokens: &[Token]) -> Result<Vec<Node>, ParseError> {
    let mut parser = Parser { tokens, pos: 0 };
    let commands = parser.commands(0)?;
    match parser.peek() {
        None => Ok(commands),
        Some(t) => Err(ParseError::new(
            t.line,
            format!("expected a command, found {}", describe(&t.tok)),
        )),
    }
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos)?;
        self.pos += 1;
        Some(t)
    }

    /// The line to blame for a problem at the current position.
    fn line(&self) -> usize {
        self.peek().or_else(|| self.tokens.last()).map_or(1, |t| t.line)
    }

    fn unexpected(&self, wanted: &str) -> ParseError {
        let found = self
            .peek_tok()
            .map_or_else(|| "the end of the script".to_string(), describe);
        ParseError::new(self.line(), format!("expected {wanted}, found {found}"))
    }

    fn expect(&mut self, tok: &Tok, wanted: &str) -> Result<(), ParseError> {
        if self.peek_tok() != Some(tok) {
            return Err(self.unexpected(wanted));
        }
        self.pos += 1;
        Ok(())
    }

    fn enter(&self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_NESTING {
            return Err(ParseError::new(
                self.line(),
                format!("nesting deeper than {MAX_NESTING} levels"),
            ));
        }
        Ok(())
    }

    fn commands(&mut self, depth: usize) -> Result<Vec<Node>, ParseError> {
        let mut out = Vec::new();
        while let Some(Tok::Ident(_)) = self.peek_tok() {
            out.push(self.command(depth)?);
        }
        Ok(out)
    }

    fn command(&mut self, depth: usize) -> Result<Node, ParseError> {
        let mut node = self.named(depth)?;
        match self.peek_tok() {
            Some(Tok::Semicolon) => self.pos += 1,
            Some(Tok::LBrace) => node.block = Some(self.block(depth + 1)?),
            _ => return Err(self.unexpected(&format!("';' or '{{' after {}", node.name))),
        }
        Ok(node)
    }

    /// `identifier arguments`: the part shared by commands and tests.
    fn named(&mut self, depth: usize) -> Result<Node, ParseError> {
        let Some(Token {
            tok: Tok::Ident(name),
            line,
        }) = self.peek().cloned()
        else {
            return Err(self.unexpected("a name"));
        };
        self.pos += 1;
        let args = self.arguments()?;
        let tests = self.test_args(depth)?;
        Ok(Node {
            name,
            line,
            args,
            tests,
            block: None,
        })
    }

    fn block(&mut self, depth: usize) -> Result<Vec<Node>, ParseError> {
        self.enter(depth)?;
        self.expect(&Tok::LBrace, "'{'")?;
        let commands = self.commands(depth)?;
        self.expect(&Tok::RBrace, "'}' or a command")?;
        Ok(commands)
    }

    fn arguments(&mut self) -> Result<Vec<Arg>, ParseError> {
        let mut args = Vec::new();
        while let Some(token) = self.peek().cloned() {
            let line = token.line;
            let arg = match token.tok {
                Tok::LBracket => Arg::Strings {
                    values: self.string_list()?,
                    line,
                },
                Tok::Tag(name) => self.single(Arg::Tag(name, line)),
                Tok::Number(n) => self.single(Arg::Number(n, line)),
                Tok::Str(s) => self.single(Arg::Strings { values: vec![s], line }),
                _ => break,
            };
            args.push(arg);
        }
        Ok(args)
    }

    /// Consumes the one token `arg` was made of.
    fn single(&mut self, arg: Arg) -> Arg {
        self.pos += 1;
        arg
    }

    fn string_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            match self.next().map(|t| t.tok.clone()) {
                Some(Tok::Str(s)) => values.push(s),
                _ => {
                    self.pos -= 1;
                    return Err(self.unexpected("a string in the list"));
                }
            }
            match self.next().map(|t| t.tok.clone()) {
                Some(Tok::Comma) => {}
                Some(Tok::RBracket) => return Ok(values),
                _ => {
                    self.pos -= 1;
                    return Err(self.unexpected("',' or ']'"));
                }
            }
        }
    }

    fn test_args(&mut self, depth: usize) -> Result<TestArgs, ParseError> {
        match self.peek_tok() {
            Some(Tok::Ident(_)) => Ok(TestArgs::Single(Box::new(self.test(depth + 1)?))),
            Some(Tok::LParen) => Ok(TestArgs::List(self.test_list(depth + 1)?)),
            _ => Ok(TestArgs::None),
        }
    }

    fn test(&mut self, depth: usize) -> Result<Node, ParseError> {
        self.enter(depth)?;
        self.named(depth)
    }

    fn test_list(&mut self, depth: usize) -> Result<Vec<Node>, ParseError> {
        self.enter(depth)?;
        self.pos += 1;
        let mut tests = Vec::new();
        loop {
            tests.push(self.test(depth)?);
            match self.peek_tok() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RParen) => {
                    self.pos += 1;
                    return Ok(tests);
                }
                _ => return Err(self.unexpected("',' or ')' in the test list")),
            }
        }
    }
}

/// How a token is named in error messages.
fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(name) => format!("'{name}'"),
        Tok::Tag(name) => format!("':{name}'"),
        Tok::Number(n) => format!("the number {n}"),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::Comma => "','".into(),
        Tok::Semicolon => "';'".into(),
    }
}
