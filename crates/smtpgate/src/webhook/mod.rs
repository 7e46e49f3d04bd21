//! Webhooks: events POSTed in signed batches to the URLs of `[[webhook]]`, from a durable
//! outbox per webhook (`<spool>/webhooks/<name>/`), so a crash or a receiver down for a day
//! loses nothing; an event is dropped only past its webhook's `max_age`, and that is counted.
//!
//! [`Webhooks::publish`] takes an event (a JSON object with a string `id`, unique, and a string
//! `type`) and hands it, without waiting, to the outbox of each webhook that wants its type
//! ([`outbox`]); each webhook's sender ([`sender`]) reads batches from its outbox's cursor,
//! signs them ([`sign`]), POSTs them ([`post`]) and moves the cursor after a 2xx, retrying with
//! [`backoff`] otherwise. Delivery is at least once: after a crash the batch in flight is sent
//! again with the same ids, which the receiver deduplicates by.
//!
//! A runtime service: it depends on the configuration, the metrics' types and leaf modules only.
//! Across reloads (`Context::successor`) an outbox stays open for the whole process and a
//! webhook whose configuration is unchanged keeps its sender; [`Webhooks::start`], once the new
//! context is adopted, stops the senders of webhooks changed or removed (a removed webhook's
//! outbox stays on disk) and starts the new ones.

pub mod backoff;
pub mod outbox;
pub mod post;
mod sender;
pub mod sign;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::webhook::WebhookConfig;
use crate::metrics::{Counter, Gauge};
use outbox::{Entry, Outbox};

pub use sender::split_expired;

/// Why an event was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than the webhook's `max_age` when its turn came.
    MaxAge,
    /// The writer's channel was full: events came faster than the disk took them.
    Overflow,
    /// The outbox could not be written.
    WriteError,
    /// A stored line that is not an event (damage on disk).
    Unreadable,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::MaxAge,
        DropReason::Overflow,
        DropReason::WriteError,
        DropReason::Unreadable,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::MaxAge => "max_age",
            DropReason::Overflow => "overflow",
            DropReason::WriteError => "write_error",
            DropReason::Unreadable => "unreadable",
        }
    }
}

/// One webhook's counters, kept for the process (across reloads).
#[derive(Default)]
pub struct Stats {
    pub sent: Counter,
    pub failures: Counter,
    /// Events stored and not yet sent or dropped.
    pub backlog: Gauge,
    dropped: [Counter; 4],
}

impl Stats {
    pub fn dropped(&self, reason: DropReason, n: u64) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i].add(n);
        }
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.dropped[i].get())
    }
}

/// An outbox open in this process, with its counters.
struct Opened {
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
}

/// What every generation of [`Webhooks`] in the process shares.
struct Registry {
    /// `<spool>/webhooks`.
    root: PathBuf,
    /// Every outbox opened, by webhook name: one writer per folder for the whole process.
    outboxes: Mutex<HashMap<String, Arc<Opened>>>,
    /// The hooks whose sender runs, by name.
    running: Mutex<HashMap<String, Arc<Hook>>>,
}

/// One configured webhook: its outbox and its sender's switch.
struct Hook {
    config: WebhookConfig,
    opened: Arc<Opened>,
    target: post::Target,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The webhooks of one configuration.
pub struct Webhooks {
    hooks: Vec<Arc<Hook>>,
    registry: Arc<Registry>,
}

impl Webhooks {
    /// The webhooks of `configs`, with their outboxes under `<spool_dir>/webhooks/`. Nothing
    /// is sent before [`Webhooks::start`]; events published before are kept.
    pub fn open(spool_dir: &Path, configs: &[WebhookConfig]) -> Result<Webhooks, String> {
        let first = Webhooks {
            hooks: Vec::new(),
            registry: Arc::new(Registry {
                root: spool_dir.join("webhooks"),
                outboxes: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
            }),
        };
        first.successor(configs)
    }

    /// The webhooks of a new configuration: an unchanged webhook is the same (its sender goes
    /// on), a changed one gets a new sender on the same outbox. Nothing stops until
    /// [`Webhooks::start`] is called on the result, so a reload that fails changes nothing.
    pub fn successor(&self, configs: &[WebhookConfig]) -> Result<Webhooks, String> {
        let mut hooks = Vec::with_capacity(configs.len());
        for config in configs {
            match self.hooks.iter().find(|h| h.config == *config) {
                Some(same) => hooks.push(same.clone()),
                None => hooks.push(Arc::new(self.new_hook(config)?)),
            }
        }
        Ok(Webhooks {
            hooks,
            registry: self.registry.clone(),
        })
    }

    fn new_hook(&self, config: &WebhookConfig) -> Result<Hook, String> {
        warn_if_readable(config);
        let opened = self.registry.open(&config.name)?;
        let target = post::Target::new(config).map_err(|e| format!("webhook {}: {e}", config.name))?;
        Ok(Hook {
            config: config.clone(),
            opened,
            target,
            stop: watch::Sender::new(false),
            task: Mutex::new(None),
        })
    }

    /// Makes these the running webhooks: stops every other sender (of a previous configuration)
    /// and starts these ones' that are not running yet. Must be called within a tokio runtime.
    pub fn start(&self) {
        let mut running = lock(&self.registry.running);
        running.retain(|name, hook| {
            let keep = self.hooks.iter().any(|h| Arc::ptr_eq(h, hook));
            if !keep {
                tracing::info!(webhook = %name, "webhook sender stopped");
                hook.stop.send_replace(true);
            }
            keep
        });
        for hook in &self.hooks {
            if running.contains_key(&hook.config.name) {
                continue;
            }
            let sender = sender::Sender {
                outbox: hook.opened.outbox.clone(),
                target: hook.target.clone(),
                batch_size: hook.config.batch_size,
                max_age: hook.config.max_age,
                stats: hook.opened.stats.clone(),
            };
            *lock(&hook.task) = Some(tokio::spawn(sender.run(hook.stop.subscribe())));
            running.insert(hook.config.name.clone(), hook.clone());
        }
    }

    /// Whether no webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Stores `event` for every webhook that wants its type, without waiting for the disk. An
    /// event needs a string `id` and a string `type`; one without is logged and not stored.
    pub fn publish(&self, event: &Value) {
        if self.hooks.is_empty() {
            return;
        }
        let kind = event.get("type").and_then(Value::as_str);
        let id = event.get("id").and_then(Value::as_str);
        let (Some(kind), Some(_)) = (kind, id) else {
            tracing::warn!("an event without a string id and type is not published to webhooks");
            return;
        };
        let line = outbox::encode(&Entry {
            published: sender::now(),
            event: event.clone(),
        });
        for hook in self.hooks.iter().filter(|h| h.config.wants(kind)) {
            if !hook.opened.outbox.append(line.clone()) {
                hook.opened.stats.dropped(DropReason::Overflow, 1);
            }
        }
    }

    /// Stops every sender and closes every outbox of the process, after the writers wrote and
    /// fsynced what they hold. For shutdown; later events are dropped (counted as overflow).
    pub async fn close(&self) {
        let hooks: Vec<Arc<Hook>> = lock(&self.registry.running).drain().map(|(_, h)| h).collect();
        for hook in &hooks {
            hook.stop.send_replace(true);
        }
        for hook in hooks {
            let task = lock(&hook.task).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        let opened: Vec<Arc<Opened>> = lock(&self.registry.outboxes).values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || opened.iter().for_each(|o| o.outbox.close())).await;
    }

    /// The counters of the webhook `name` (of this configuration).
    pub fn stats(&self, name: &str) -> Option<Arc<Stats>> {
        self.hooks
            .iter()
            .find(|h| h.config.name == name)
            .map(|h| h.opened.stats.clone())
    }

    /// The webhooks' metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        if self.hooks.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        let each = |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&Stats) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for hook in &self.hooks {
                let _ = writeln!(
                    out,
                    "{name}{{webhook=\"{}\"}} {}",
                    hook.config.name,
                    value(&hook.opened.stats)
                );
            }
        };
        each(
            &mut out,
            "smtpgate_webhook_sent_total",
            "counter",
            "events a webhook receiver acknowledged",
            &|s| s.sent.get().to_string(),
        );
        each(
            &mut out,
            "smtpgate_webhook_failures_total",
            "counter",
            "webhook POSTs that failed (retried)",
            &|s| s.failures.get().to_string(),
        );
        each(
            &mut out,
            "smtpgate_webhook_backlog",
            "gauge",
            "events in a webhook's outbox not yet sent",
            &|s| s.backlog.get().to_string(),
        );
        let name = "smtpgate_webhook_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} events a webhook never sent, by reason\n# TYPE {name} counter"
        );
        for hook in &self.hooks {
            for reason in DropReason::ALL {
                let n = hook.opened.stats.dropped_count(reason);
                let _ = writeln!(
                    out,
                    "{name}{{webhook=\"{}\",reason=\"{}\"}} {n}",
                    hook.config.name,
                    reason.label()
                );
            }
        }
        out
    }
}

/// Logs a warning when other users can read the webhook's secret file (it should be 0600, as
/// the admin token is); the secret is what makes a receiver trust a request.
fn warn_if_readable(config: &WebhookConfig) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(path) = &config.secret_file
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            webhook = %config.name,
            file = %path.display(),
            "the webhook's secret file can be read by other users; make it mode 0600"
        );
    }
}

impl Registry {
    /// The outbox of `name`, opened once for the process.
    fn open(&self, name: &str) -> Result<Arc<Opened>, String> {
        let mut outboxes = lock(&self.outboxes);
        if let Some(opened) = outboxes.get(name) {
            return Ok(opened.clone());
        }
        let dir = self.root.join(name);
        let stats = Arc::new(Stats::default());
        let outbox = Outbox::open(&dir, stats.clone()).map_err(|e| format!("webhook outbox {}: {e}", dir.display()))?;
        let opened = Arc::new(Opened {
            outbox: Arc::new(outbox),
            stats,
        });
        outboxes.insert(name.to_owned(), opened.clone());
        Ok(opened)
    }
}
