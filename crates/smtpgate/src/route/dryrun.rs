//! `smtpgate route test`: what routing would do with a message, without sending anything.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use super::message::MessageView;
use super::plan::{Group, Plan, Router};
use crate::config::{Balance, Config};
use crate::envelope::{Address, Recipient, Sender};

/// The message to try.
#[derive(Debug, Default)]
pub struct DryRun {
    pub from: String,
    pub to: Vec<String>,
    /// `Name: value` lines, used when no message file is given.
    pub headers: Vec<String>,
    /// A whole message (RFC 5322).
    pub message: Option<Vec<u8>>,
    pub client: Option<IpAddr>,
    pub user: Option<String>,
    pub listener: Option<String>,
}

/// Routes the message and describes the result.
pub fn run(config: Arc<Config>, input: &DryRun) -> Result<String, String> {
    let router = Router::new(config.clone())?;
    let body = match &input.message {
        Some(m) => m.clone(),
        None => input
            .headers
            .iter()
            .map(|h| format!("{h}\r\n"))
            .collect::<String>()
            .into_bytes(),
    };
    let listener = input
        .listener
        .clone()
        .or_else(|| config.listeners.first().map(|l| l.name.clone()));
    let view = MessageView {
        sender: Sender::parse(&input.from).map_err(|e| format!("sender {:?}: {e}", input.from))?,
        client: input.client,
        user: input.user.clone(),
        listener: listener.unwrap_or_default(),
        ..Default::default()
    }
    .with_message(&body, config.routing.body_scan_limit);
    let recipients = input
        .to
        .iter()
        .map(|to| {
            Address::parse(to)
                .map(Recipient::new)
                .map_err(|e| format!("recipient {to:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plan = router.plan(&view, &recipients);
    Ok(describe(&config, &plan))
}

fn describe(config: &Config, plan: &Plan) -> String {
    let mut out = String::new();
    for line in &plan.trace {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "result:");
    if let Some(r) = &plan.reject {
        let _ = writeln!(out, "  the message is refused: {} {} {}", r.code, r.status, r.text);
        return out;
    }
    for (n, group) in plan.groups.iter().enumerate() {
        describe_group(config, n + 1, group, &mut out);
    }
    for d in &plan.discarded {
        let _ = writeln!(out, "  <{d}> is discarded");
    }
    if plan.groups.is_empty() {
        let _ = writeln!(out, "  nothing is delivered");
    }
    out
}

fn describe_group(config: &Config, n: usize, g: &Group, out: &mut String) {
    let rcpts: Vec<String> = g.recipients.iter().map(|r| format!("<{}>", r.address)).collect();
    let _ = writeln!(out, "  copy {n} to {}", rcpts.join(", "));
    match &g.pool {
        Some(pool) => describe_pool(config, pool, out),
        None => {
            let _ = writeln!(
                out,
                "    via MX lookup of each recipient's domain (lowest preference first)"
            );
        }
    }
    for (name, value) in &g.add_headers {
        let _ = writeln!(out, "    add header {name}: {value}");
    }
    for name in &g.remove_headers {
        let _ = writeln!(out, "    remove header {name}");
    }
    if let Some(sender) = &g.srs_sender {
        let _ = writeln!(out, "    envelope sender rewritten (SRS) to <{sender}>");
    }
}

/// The pool, its servers in the order they would be tried, then its fallbacks.
fn describe_pool(config: &Config, name: &str, out: &mut String) {
    let mut next = Some(name.to_owned());
    let mut depth = 0;
    while let Some(name) = next.take() {
        let Some(pool) = config.pools.iter().find(|p| p.name == name) else {
            let _ = writeln!(out, "    pool {name:?} is not configured");
            return;
        };
        let how = match pool.balance {
            Balance::Ordered => "in this order",
            Balance::RoundRobin => "in turn (round robin)",
            Balance::Weighted => "by weight",
            Balance::LeastConnections => "least connections first",
        };
        let servers: Vec<String> = pool
            .servers
            .iter()
            .map(|s| match pool.balance {
                Balance::Weighted => format!("{} (weight {})", s.addr, s.weight),
                _ => s.addr.to_string(),
            })
            .collect();
        let label = if depth == 0 { "via pool" } else { "then fallback pool" };
        let _ = writeln!(out, "    {label} {name:?}, servers {how}: {}", servers.join(", "));
        next = pool.fallback.clone();
        depth += 1;
    }
}
