//! Running a compiled script: the actions it asks for, implicit keep, and the trace.

use crate::ast::{Act, Command, IfChain};
use crate::condition::holds;
use crate::message::Message;
use crate::{MAX_ACTIONS, MAX_REDIRECTS};

/// One thing to do with the message, as decided by a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver to the recipient's default mailbox (explicit `keep` or the implicit keep).
    Keep,
    /// The script ran `discard`. It only cancels the implicit keep: it never cancels another
    /// action, so `[Keep, Discard]` (an explicit `keep` and a `discard`) still means "deliver".
    Discard,
    /// Send the message on to `address` (RFC 5228 section 4.2). `copy` is `true` when every
    /// `redirect` to this address had `:copy` (RFC 3894).
    Redirect { address: String, copy: bool },
    /// Deliver to the named folder (RFC 5228 section 4.1); the relay makes it a routing tag.
    FileInto(String),
    /// Refuse the message with this reason (RFC 5429).
    Reject(String),
}

/// What a script decided for one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The actions in the order the script ran them, duplicates removed, with the implicit
    /// [`Action::Keep`] last when nothing cancelled it.
    pub actions: Vec<Action>,
    /// The steps taken, one line each, for a dry run: `line 3: if header :contains "subject"
    /// "invoice" -> true`, `line 4: redirect "a@b.example"`, `implicit keep`.
    pub trace: Vec<String>,
}

/// Whether the script goes on after a command.
enum Flow {
    Continue,
    Stop,
}

struct Run<'m> {
    msg: &'m dyn Message,
    actions: Vec<Action>,
    keep_cancelled: bool,
    trace: Vec<String>,
    /// A run-time error, after which the script stops and the message is kept.
    error: Option<String>,
}

/// Evaluates `commands` against `msg`.
pub(crate) fn run(commands: &[Command], msg: &dyn Message) -> Outcome {
    let mut run = Run {
        msg,
        actions: Vec::new(),
        keep_cancelled: false,
        trace: Vec::new(),
        error: None,
    };
    run.block(commands);
    run.finish()
}

impl Run<'_> {
    fn block(&mut self, commands: &[Command]) -> Flow {
        for command in commands {
            if let Flow::Stop = self.command(command) {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn command(&mut self, command: &Command) -> Flow {
        match command {
            Command::If(chain) => self.if_chain(chain),
            Command::Stop { line } => {
                self.trace.push(format!("line {line}: stop"));
                Flow::Stop
            }
            Command::Act { line, act } => {
                self.act(*line, act);
                match self.error {
                    Some(_) => Flow::Stop,
                    None => Flow::Continue,
                }
            }
        }
    }

    fn if_chain(&mut self, chain: &IfChain) -> Flow {
        for branch in &chain.branches {
            let result = holds(&branch.test, self.msg);
            self.trace.push(format!(
                "line {}: {} {} -> {result}",
                branch.line, branch.keyword, branch.test
            ));
            if result {
                return self.block(&branch.body);
            }
        }
        match &chain.otherwise {
            Some(otherwise) => {
                self.trace.push(format!("line {}: else", otherwise.line));
                self.block(&otherwise.body)
            }
            None => Flow::Continue,
        }
    }

    fn act(&mut self, line: usize, act: &Act) {
        self.trace.push(format!("line {line}: {act}"));
        self.keep_cancelled |= act.cancels_implicit_keep();
        self.record(match act {
            Act::Keep => Action::Keep,
            Act::Discard => Action::Discard,
            Act::Redirect { address, copy } => Action::Redirect {
                address: address.clone(),
                copy: *copy,
            },
            Act::FileInto { folder, .. } => Action::FileInto(folder.clone()),
            Act::Reject(reason) => Action::Reject(reason.clone()),
        });
    }

    /// Adds an action unless it is already there (RFC 5228 section 2.10.3: a message is not
    /// filed twice into one folder nor redirected twice to one address).
    fn record(&mut self, action: Action) {
        if let Action::Redirect { address, copy } = &action {
            let earlier = self.actions.iter_mut().find_map(|a| match a {
                Action::Redirect { address: seen, copy } if same_address(seen, address) => Some(copy),
                _ => None,
            });
            if let Some(earlier_copy) = earlier {
                *earlier_copy &= *copy;
                return;
            }
        }
        if self.actions.contains(&action) {
            return;
        }
        let redirects = self
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Redirect { .. }))
            .count();
        if matches!(action, Action::Redirect { .. }) && redirects >= MAX_REDIRECTS {
            self.error = Some(format!("more than {MAX_REDIRECTS} different redirects"));
        } else if self.actions.len() >= MAX_ACTIONS {
            self.error = Some(format!("more than {MAX_ACTIONS} different actions"));
        } else {
            self.actions.push(action);
        }
    }

    fn finish(mut self) -> Outcome {
        let error = self.error.take().or_else(|| conflict(&self.actions).map(String::from));
        if let Some(problem) = error {
            self.trace
                .push(format!("run-time error: {problem}; keeping the message instead"));
            return Outcome {
                actions: vec![Action::Keep],
                trace: self.trace,
            };
        }
        if !self.keep_cancelled {
            self.trace.push("implicit keep".to_string());
            self.record(Action::Keep);
        }
        Outcome {
            actions: self.actions,
            trace: self.trace,
        }
    }
}

/// RFC 5429 section 2.1: `reject` cannot be combined with actions that deliver the message. Such a
/// script is a run-time error, which RFC 5228 section 2.10.6 resolves by keeping the message.
fn conflict(actions: &[Action]) -> Option<&'static str> {
    let rejects = actions.iter().filter(|a| matches!(a, Action::Reject(_))).count();
    let delivers = actions
        .iter()
        .any(|a| matches!(a, Action::Keep | Action::Redirect { .. } | Action::FileInto(_)));
    match (rejects, delivers) {
        (0, _) => None,
        (1, false) => None,
        (1, true) => Some("reject cannot be combined with keep, fileinto or redirect"),
        _ => Some("the message was rejected twice with different reasons"),
    }
}

/// Addresses are the same when the local parts are equal and the domains equal ignoring case.
fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a == b,
    }
}
