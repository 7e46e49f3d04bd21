//! The one writer thread: takes events off the channel in batches (what comes within 200 ms of
//! the first; each already a JSON line with its index values, made by the thread that emitted
//! it), stores each batch in one transaction, appends it to the JSON-lines file and hands it to
//! the other sinks; prunes the store once a minute. A commit waits for the disk at most once a
//! second (and at a flush): the store is a history, and a crash loses at most the last second of
//! it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::log::LogFile;
use super::{Buffers, EventSink, Msg, Recorded, Store};
use crate::config::EventsConfig;

/// Events stored in one transaction at most.
const BATCH: usize = 4096;
/// How long the writer lets events gather after the first before it writes them.
const GATHER: Duration = Duration::from_millis(200);
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a commit may stay in memory only.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

struct Writer {
    store: Arc<Store>,
    log: Option<LogFile>,
    sinks: Vec<Box<dyn EventSink>>,
    /// Where the buffers of stored events go back to.
    buffers: Buffers,
    retention: Duration,
    max_size: u64,
    last_durable: Instant,
    /// Whether something was committed without waiting for the disk since.
    pending: bool,
}

/// Starts the writer; the sender is the only way to it, and it ends when every sender is gone.
pub(super) fn start(
    config: &EventsConfig,
    store: Arc<Store>,
    sinks: Vec<Box<dyn EventSink>>,
    buffers: Buffers,
    capacity: usize,
) -> SyncSender<Msg> {
    let (tx, rx) = sync_channel(capacity);
    let writer = Writer {
        store,
        log: config
            .log_file
            .clone()
            .map(|p| LogFile::new(p, config.log_max_size, config.log_keep)),
        sinks,
        buffers,
        retention: config.retention,
        max_size: config.max_size,
        last_durable: Instant::now(),
        pending: false,
    };
    let spawned = std::thread::Builder::new()
        .name("smtpgate-events".into())
        .spawn(move || writer.run(rx));
    if let Err(e) = spawned {
        // The receiver is gone with the closure: every event is counted as dropped.
        tracing::error!(error = %e, "events: cannot start the writer thread; no events are recorded");
    }
    tx
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        self.prune();
        let mut next_prune = Instant::now() + PRUNE_EVERY;
        loop {
            let wait = next_prune.saturating_duration_since(Instant::now());
            let wait = if self.pending { wait.min(DURABLE_EVERY) } else { wait };
            match rx.recv_timeout(wait) {
                Ok(first) => self.batch(first, &rx),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.pending && self.last_durable.elapsed() >= DURABLE_EVERY {
                self.commit(&mut Vec::new(), true);
            }
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + PRUNE_EVERY;
            }
        }
        self.commit(&mut Vec::new(), true);
    }

    /// Takes `first` and what follows it within [`GATHER`], and writes them in transactions of
    /// up to [`BATCH`]. The writer sleeps through the window rather than waking for each event,
    /// so under load neither it nor the senders pay a wake-up per event, and the store sees a
    /// few large transactions a second. A flush is answered once what came before it is stored.
    fn batch(&mut self, first: Msg, rx: &Receiver<Msg>) {
        if matches!(first, Msg::Event(_)) {
            std::thread::sleep(GATHER);
        }
        let mut events = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(event) => events.push(event),
                Msg::Flush(done) => {
                    self.commit(&mut events, true);
                    let _ = done.send(());
                }
            }
            if events.len() >= BATCH {
                self.commit(&mut events, false);
            }
            next = rx.try_recv().ok();
        }
        self.commit(&mut events, false);
    }

    /// Stores, logs and publishes `events`; with `durable` (or after a second), waits for the disk.
    fn commit(&mut self, events: &mut Vec<Recorded>, durable: bool) {
        if events.is_empty() && !(durable && self.pending) {
            return;
        }
        let durable = durable || self.last_durable.elapsed() >= DURABLE_EVERY;
        if let Err(e) = self.store.write(events, durable) {
            tracing::error!(error = %e, events = events.len(), "events: cannot store events");
        }
        if durable {
            self.last_durable = Instant::now();
        }
        self.pending = !durable;
        for event in events.iter() {
            self.publish(event.json());
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.flush()
        {
            tracing::error!(error = %e, "events: cannot write the log file");
        }
        self.buffers.give(events.drain(..));
    }

    fn publish(&mut self, json: &str) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.append(json)
        {
            tracing::error!(error = %e, "events: cannot write the log file");
        }
        for sink in &self.sinks {
            sink.publish(json);
        }
    }

    fn prune(&mut self) {
        match self.store.prune(super::id::now_ms(), self.retention, self.max_size) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "events: pruned old events"),
            Err(e) => tracing::error!(error = %e, "events: cannot prune"),
        }
    }
}
