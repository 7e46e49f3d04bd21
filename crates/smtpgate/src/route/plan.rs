//! The routing plan of one message: recipients grouped by where they go and how the copy looks.

use std::collections::HashSet;
use std::sync::Arc;

use smtpgate_sieve::Action;

use super::aliases::Aliases;
use super::lists::AddressList;
use super::message::MessageView;
use super::rules::{self, Subject};
use super::srs::Srs;
use crate::config::{Config, RouteAction};
use crate::datetime::now_unix;
use crate::envelope::{Address, Recipient};
use crate::reloading::Reloading;

/// How deep aliases, redirects and copies may nest before a recipient is given up.
const MAX_DEPTH: usize = 12;
/// Most recipients one message may expand to.
const MAX_EXPANDED: usize = 10_000;

/// How a recipient came to be routed.
#[derive(Debug, Clone, Copy, Default)]
struct Origin {
    depth: usize,
    /// Reached through an alias, a redirect or a copy: the message is forwarded.
    forwarded: bool,
    /// Made by `copy_to`: a copy is never copied again.
    copy: bool,
}

impl Origin {
    fn forward(self) -> Origin {
        Origin {
            depth: self.depth + 1,
            forwarded: true,
            copy: self.copy,
        }
    }
    fn copy(self) -> Origin {
        Origin {
            depth: self.depth + 1,
            forwarded: true,
            copy: true,
        }
    }
    fn deeper(self) -> Origin {
        Origin {
            depth: self.depth + 1,
            ..self
        }
    }
}

/// Recipients that go the same way and get the same copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `None`: delivery by MX lookup.
    pub pool: Option<String>,
    pub recipients: Vec<Recipient>,
    pub add_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// Rewrite the envelope sender with SRS (the message is forwarded to another domain).
    pub srs_sender: Option<Address>,
    /// Names of the `[[filter]]`s the matching rules attach to this copy.
    pub filters: Vec<String>,
    /// The `[[stream]]` the matching rules put this copy in; `None` is the default stream.
    pub stream: Option<String>,
    /// The `[[route]]` rule whose action sent the copy on; `None`: no rule decided (MX delivery).
    pub route: Option<String>,
}

/// A refusal decided by routing, as an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub status: String,
    pub text: String,
}

/// The outcome of routing one message.
#[derive(Debug, Default)]
pub struct Plan {
    pub groups: Vec<Group>,
    pub reject: Option<Rejection>,
    /// Addresses dropped by a discard (logged, not delivered).
    pub discarded: Vec<String>,
    /// What happened, step by step, for logs and `smtpgate route test`.
    pub trace: Vec<String>,
}

/// The compiled routing configuration with its reloading files.
pub struct Router {
    config: Arc<Config>,
    aliases: Option<Reloading<Aliases>>,
    lists: Vec<Option<Reloading<AddressList>>>,
    srs: Option<Srs>,
}

impl Router {
    pub fn new(config: Arc<Config>) -> Result<Router, String> {
        let aliases = match &config.routing.aliases {
            Some(path) => Some(Reloading::new(path.clone(), Aliases::load)?),
            None => None,
        };
        let mut lists = Vec::new();
        for route in &config.routes {
            lists.push(match &route.when.recipient_file {
                Some(path) => Some(Reloading::new(path.clone(), AddressList::load)?),
                None => None,
            });
        }
        let srs = config
            .routing
            .srs
            .as_ref()
            .map(|s| Srs::with_hash_length(&s.secret, &s.domain, s.hash_length));
        Ok(Router {
            config,
            aliases,
            lists,
            srs,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Routes every recipient of a message.
    /// Whether routing reads files as it goes: Sieve scripts, and the alias and address-list
    /// files it reloads when they change.
    pub fn reads_files(&self) -> bool {
        self.config.routing.sieve_dir.is_some() || self.aliases.is_some() || self.lists.iter().any(Option::is_some)
    }

    pub fn plan(&self, msg: &MessageView<'_>, recipients: &[Recipient]) -> Plan {
        let mut st = State::default();
        for r in recipients {
            st.plan.trace.push(format!("recipient <{}>", r.address));
            self.route(msg, r.clone(), Origin::default(), &mut st);
        }
        st.plan
    }

    /// Routes one recipient on the envelope alone, for a proxy listener, which picks the upstream at
    /// RCPT time: rules that look at the content are skipped and Sieve scripts (which read the
    /// message) are not run; SRS, aliases and the envelope rules apply as usual.
    pub fn plan_envelope(&self, msg: &MessageView<'_>, recipient: &Recipient) -> Plan {
        let mut st = State {
            envelope_only: true,
            ..State::default()
        };
        st.plan
            .trace
            .push(format!("recipient <{}> (envelope only)", recipient.address));
        self.route(msg, recipient.clone(), Origin::default(), &mut st);
        st.plan
    }

    /// The rejection a recipient gets at RCPT time, when the rules can tell from the envelope alone.
    pub fn check_rcpt(&self, msg: &MessageView<'_>, address: &str) -> Option<Rejection> {
        if self.rewritten_before_rules(msg, address) {
            return None;
        }
        for (i, rule) in self.config.routes.iter().enumerate() {
            if rule.when.needs_content() {
                return None;
            }
            let list = self.lists[i].as_ref().map(|l| l.get());
            let s = Subject {
                msg,
                recipient: address,
                tags: &msg.tags,
                list: list.as_deref(),
            };
            if !rules::matches(&rule.when, &s) {
                continue;
            }
            match &rule.action {
                None => continue,
                Some(RouteAction::Reject { code, status, text }) => {
                    return Some(Rejection {
                        code: *code,
                        status: status.clone(),
                        text: text.clone(),
                    });
                }
                Some(_) => return None,
            }
        }
        None
    }

    /// Whether SRS, an alias or a Sieve script acts on `address` before the rules see it.
    fn rewritten_before_rules(&self, msg: &MessageView<'_>, address: &str) -> bool {
        let srs = msg.sender.is_null()
            && self
                .srs
                .as_ref()
                .is_some_and(|s| s.reverse(address, now_unix()).is_some());
        let alias = self.aliases.as_ref().is_some_and(|a| a.get().expand(address).is_some());
        let sieve = self
            .config
            .routing
            .sieve_dir
            .as_ref()
            .is_some_and(|d| super::sieve::has_script(d, address));
        srs || alias || sieve
    }

    fn route(&self, msg: &MessageView<'_>, rcpt: Recipient, origin: Origin, st: &mut State) {
        let addr = rcpt.address.clone();
        if origin.depth > MAX_DEPTH || st.expanded >= MAX_EXPANDED {
            st.plan.trace.push(format!("  <{addr}>: too many levels of forwarding"));
            st.reject(554, "5.4.6", "too many levels of forwarding");
            return;
        }
        st.expanded += 1;
        if st.delivered.contains(&addr.to_ascii_lowercase()) {
            st.plan.trace.push(format!("  <{addr}> already routed"));
            return;
        }
        if self.reverse_srs(msg, &rcpt, origin, st) || self.expand_alias(msg, &rcpt, origin, st) == Expanded::Replaced {
            return;
        }
        if !self.run_sieve(msg, &rcpt, origin, st) {
            return;
        }
        self.apply_rules(msg, rcpt, origin, st);
    }

    /// `SRS0=...@<our srs domain>`: a bounce coming back to a forwarded message's original sender.
    ///
    /// Only a bounce (the null sender) is reversed. An SRS address is made to carry bounces back; mail
    /// with a sender is not a bounce, and reversing it would let anyone who saw one of our SRS addresses
    /// (in a Return-Path, a list archive) send through us to the original sender for as long as the
    /// timestamp lasts, with our reputation. Postfix with postsrsd reverses every recipient, because its
    /// `recipient_canonical_maps` cannot see the sender; we can. Other mail to such an address is routed
    /// as it is, like any recipient at that domain.
    fn reverse_srs(&self, msg: &MessageView<'_>, rcpt: &Recipient, origin: Origin, st: &mut State) -> bool {
        let Some(srs) = &self.srs else { return false };
        let reversed = srs.reverse(&rcpt.address, now_unix());
        if reversed.is_some() && !msg.sender.is_null() {
            st.plan.trace.push(format!(
                "  SRS <{}>: not a bounce (sender <{}>), not reversed",
                rcpt.address, msg.sender
            ));
            return false;
        }
        match reversed {
            None => false,
            Some(Ok(original)) => {
                st.plan.trace.push(format!("  SRS <{}> -> <{original}>", rcpt.address));
                self.route(msg, with_address(rcpt, original), origin.deeper(), st);
                true
            }
            Some(Err(e)) => {
                st.plan.trace.push(format!("  SRS <{}>: {e:?}", rcpt.address));
                st.reject(550, "5.1.1", "invalid SRS address");
                true
            }
        }
    }

    fn expand_alias(&self, msg: &MessageView<'_>, rcpt: &Recipient, origin: Origin, st: &mut State) -> Expanded {
        let Some(aliases) = self.aliases.as_ref().map(|a| a.get()) else {
            return Expanded::No;
        };
        match aliases.expand(&rcpt.address) {
            None => Expanded::No,
            Some(Err(e)) => {
                st.plan.trace.push(format!("  alias <{}>: {e:?}", rcpt.address));
                st.reject(554, "5.4.6", "mail forwarding loop in aliases");
                Expanded::Replaced
            }
            Some(Ok(targets)) => {
                let list: Vec<&str> = targets.iter().map(|t| t.address.as_str()).collect();
                st.plan
                    .trace
                    .push(format!("  alias <{}> -> {}", rcpt.address, list.join(", ")));
                let mut keep_self = false;
                for t in &targets {
                    if t.address.eq_ignore_ascii_case(&rcpt.address) {
                        keep_self = true;
                    } else {
                        self.route(msg, with_address(rcpt, t.address.clone()), origin.forward(), st);
                    }
                }
                if keep_self { Expanded::Kept } else { Expanded::Replaced }
            }
        }
    }

    /// Runs the recipient's Sieve script; false when the script took the recipient away.
    fn run_sieve(&self, msg: &MessageView<'_>, rcpt: &Recipient, origin: Origin, st: &mut State) -> bool {
        let Some(dir) = self.config.routing.sieve_dir.as_ref().filter(|_| !st.envelope_only) else {
            return true;
        };
        let outcome = match super::sieve::run(dir, msg, &rcpt.address) {
            None => return true,
            Some(Err(e)) => {
                tracing::error!(error = %e, "Sieve script ignored");
                st.plan.trace.push(format!("  sieve: {e} (ignored, mail kept)"));
                return true;
            }
            Some(Ok(o)) => o,
        };
        st.plan
            .trace
            .extend(outcome.trace.iter().map(|t| format!("  sieve {t}")));
        let mut keep = false;
        for action in outcome.actions {
            match action {
                Action::Keep => keep = true,
                Action::Discard => {}
                Action::FileInto(folder) => {
                    st.tags.push(format!("fileinto:{folder}"));
                    keep = true;
                }
                Action::Redirect { address, .. } => {
                    self.route(msg, with_address(rcpt, address), origin.forward(), st);
                }
                Action::Reject(reason) => {
                    st.reject(550, "5.7.1", &reason);
                    return false;
                }
            }
        }
        if !keep {
            st.plan.trace.push(format!("  sieve: <{}> not kept", rcpt.address));
            st.plan.discarded.push(rcpt.address.to_string());
        }
        keep
    }

    fn apply_rules(&self, msg: &MessageView<'_>, rcpt: Recipient, origin: Origin, st: &mut State) {
        let mut changes = Changes::default();
        let mut tags = msg.tags.clone();
        tags.extend(st.tags.iter().cloned());
        for (i, rule) in self.config.routes.iter().enumerate() {
            if st.envelope_only && rule.when.needs_content() {
                continue;
            }
            let list = self.lists[i].as_ref().map(|l| l.get());
            let s = Subject {
                msg,
                recipient: &rcpt.address,
                tags: &tags,
                list: list.as_deref(),
            };
            if !rules::matches(&rule.when, &s) {
                continue;
            }
            st.plan.trace.push(format!("  rule {:?} matched", rule.name));
            for copy in rule.copy_to.iter().filter(|_| !origin.copy) {
                st.plan.trace.push(format!("  copy to <{copy}>"));
                self.route(msg, with_address(&rcpt, copy.clone()), origin.copy(), st);
            }
            changes.add.extend(rule.add_headers.iter().cloned());
            changes.remove.extend(rule.remove_headers.iter().cloned());
            changes.filters.extend(
                rule.filters
                    .iter()
                    .filter(|f| !changes.filters.contains(f))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            tags.extend(rule.tags.iter().cloned());
            if rule.stream.is_some() {
                changes.stream = rule.stream.clone();
            }
            if let Some(action) = &rule.action {
                changes.route = Some(rule.name.clone());
                return self.act(msg, rcpt, action.clone(), changes, origin, st);
            }
        }
        st.plan.trace.push("  no rule decided: MX delivery".into());
        self.deliver(msg, rcpt, None, changes, origin.forwarded, st);
    }

    fn act(
        &self,
        msg: &MessageView<'_>,
        rcpt: Recipient,
        action: RouteAction,
        changes: Changes,
        origin: Origin,
        st: &mut State,
    ) {
        match action {
            RouteAction::Pool(pool) => self.deliver(msg, rcpt, Some(pool), changes, origin.forwarded, st),
            RouteAction::Mx => self.deliver(msg, rcpt, None, changes, origin.forwarded, st),
            RouteAction::Reject { code, status, text } => {
                st.plan.trace.push(format!("  reject: {code} {status} {text}"));
                st.reject(code, &status, &text);
            }
            RouteAction::Discard => {
                st.plan.trace.push(format!("  discard <{}>", rcpt.address));
                st.plan.discarded.push(rcpt.address.into_string());
            }
            RouteAction::Redirect(targets) => {
                st.plan
                    .trace
                    .push(format!("  redirect <{}> -> {}", rcpt.address, targets.join(", ")));
                for t in targets {
                    self.route(msg, with_address(&rcpt, t), origin.forward(), st);
                }
            }
        }
    }

    fn deliver(
        &self,
        msg: &MessageView<'_>,
        rcpt: Recipient,
        pool: Option<String>,
        changes: Changes,
        forwarded: bool,
        st: &mut State,
    ) {
        let key = rcpt.address.to_ascii_lowercase();
        if !st.delivered.insert(key) {
            st.plan
                .trace
                .push(format!("  <{}> already routed (duplicate)", rcpt.address));
            return;
        }
        let srs_sender = match (&self.srs, forwarded) {
            (Some(srs), true) if !msg.sender.is_null() && !self.is_local(&rcpt.domain()) => {
                Some(Address::trusted(srs.forward(msg.sender.as_str(), now_unix())))
            }
            _ => None,
        };
        let target = pool
            .as_ref()
            .map_or_else(|| format!("MX of {}", rcpt.domain()), |p| format!("pool {p:?}"));
        st.plan.trace.push(format!("  deliver <{}> via {target}", rcpt.address));
        let group = st.plan.groups.iter_mut().find(|g| {
            g.pool == pool
                && g.add_headers == changes.add
                && g.remove_headers == changes.remove
                && g.srs_sender == srs_sender
                && g.filters == changes.filters
                && g.stream == changes.stream
                && g.route == changes.route
        });
        match group {
            Some(g) => g.recipients.push(rcpt),
            None => st.plan.groups.push(Group {
                pool,
                recipients: vec![rcpt],
                add_headers: changes.add,
                remove_headers: changes.remove,
                srs_sender,
                filters: changes.filters,
                stream: changes.stream,
                route: changes.route,
            }),
        }
    }

    fn is_local(&self, domain: &str) -> bool {
        self.config
            .listeners
            .iter()
            .any(|l| l.local_domains.iter().any(|d| d == domain))
    }
}

#[derive(PartialEq, Eq)]
enum Expanded {
    No,
    /// The alias includes itself: deliver to it as well.
    Kept,
    /// The recipient was replaced by its targets.
    Replaced,
}

#[derive(Default)]
struct Changes {
    add: Vec<(String, String)>,
    remove: Vec<String>,
    filters: Vec<String>,
    stream: Option<String>,
    /// The rule whose action decided.
    route: Option<String>,
}

#[derive(Default)]
struct State {
    plan: Plan,
    delivered: HashSet<String>,
    tags: Vec<String>,
    expanded: usize,
    /// Routing at RCPT time for a proxy listener: no content rules, no Sieve.
    envelope_only: bool,
}

impl State {
    fn reject(&mut self, code: u16, status: &str, text: &str) {
        if self.plan.reject.is_none() {
            self.plan.reject = Some(Rejection {
                code,
                status: status.into(),
                text: text.into(),
            });
        }
    }
}

/// A recipient routing made from another: `address` comes from configuration checked at load
/// (redirects, copies), an alias or list file, a Sieve redirect, or a reversed SRS address.
fn with_address(original: &Recipient, address: String) -> Recipient {
    Recipient {
        address: Address::trusted(address),
        notify: original.notify,
        orcpt: original.orcpt.clone(),
    }
}
