//! The event store: one redb file. Events are kept as JSON under `(at, seq)` (time order); three
//! index tables map a queue id, a Message-ID and an address (the sender and each recipient,
//! lowercased) to event keys as `(value, at, seq) -> ()`, so every question is a range scan of
//! one index from `(value, since)`, never a scan of the events. Pruning removes the oldest events
//! with their index entries.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::Event;
use super::id::seq_of;

type Key = (u64, u64);

const EVENTS: TableDefinition<Key, &[u8]> = TableDefinition::new("events");
const BY_QUEUE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("by_queue_id");
const BY_MESSAGE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("by_message_id");
const BY_ADDRESS: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("by_address");

/// The store's page cache: the newest pages of each table, which is where writes and most
/// questions go (redb's default, 1 GiB, would grow the gate's memory with the history).
const CACHE: usize = 16 << 20;
/// Events removed in one write transaction when pruning.
const PRUNE_BATCH: usize = 10_000;

/// What went wrong in the store (redb's error, as text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

fn err(e: impl Into<redb::Error>) -> StoreError {
    StoreError(e.into().to_string())
}

/// In which order answers come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    Chronological,
}

/// A question for the history: a queue id, a Message-ID or an address.
#[derive(Debug, Clone)]
pub struct Query {
    pub q: String,
    /// Unix ms; older events are left out.
    pub since_ms: u64,
    pub limit: usize,
    pub order: Order,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store, with its tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError(e.to_string()))?;
        }
        let db = Database::builder().set_cache_size(CACHE).create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(EVENTS).map_err(err)?;
            txn.open_table(BY_QUEUE).map_err(err)?;
            txn.open_table(BY_MESSAGE).map_err(err)?;
            txn.open_table(BY_ADDRESS).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Stores a batch of events (each with its JSON) in one transaction; `durable` waits for the
    /// disk (else a later durable commit or a clean close makes it so).
    pub fn write(&self, batch: &[(Event, String)], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError(e.to_string()))?;
        }
        {
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let mut by_queue = txn.open_table(BY_QUEUE).map_err(err)?;
            let mut by_message = txn.open_table(BY_MESSAGE).map_err(err)?;
            let mut by_address = txn.open_table(BY_ADDRESS).map_err(err)?;
            for (event, json) in batch {
                let (at, seq) = key_of(event);
                events.insert((at, seq), json.as_bytes()).map_err(err)?;
                let keys = IndexKeys::of(event);
                if let Some(q) = &keys.queue {
                    by_queue.insert((q.as_str(), at, seq), ()).map_err(err)?;
                }
                if let Some(m) = &keys.message {
                    by_message.insert((m.as_str(), at, seq), ()).map_err(err)?;
                }
                for a in &keys.addresses {
                    by_address.insert((a.as_str(), at, seq), ()).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// The events a query asks for. A queue id is looked up in its index; anything else as an
    /// address and as a Message-ID, whose copies' queue ids then bring their whole stories.
    pub fn query(&self, query: &Query) -> Result<Vec<Event>, StoreError> {
        let q = query.q.trim();
        let txn = self.db.begin_read().map_err(err)?;
        let events = txn.open_table(EVENTS).map_err(err)?;
        let by_queue = txn.open_table(BY_QUEUE).map_err(err)?;
        let mut keys = BTreeSet::new();
        let scan = |table: &redb::ReadOnlyTable<(&str, u64, u64), ()>, value: &str, keys: &mut BTreeSet<Key>| {
            scan_index(table, value, query, keys)
        };
        if is_queue_id(q) {
            scan(&by_queue, &q.to_ascii_uppercase(), &mut keys)?;
        } else {
            let by_address = txn.open_table(BY_ADDRESS).map_err(err)?;
            scan(&by_address, &q.to_ascii_lowercase(), &mut keys)?;
            let by_message = txn.open_table(BY_MESSAGE).map_err(err)?;
            let mut found = BTreeSet::new();
            scan(&by_message, &super::normal_message_id(q), &mut found)?;
            let mut queue_ids = BTreeSet::new();
            for key in &found {
                if let Some(id) = get(&events, *key)?.and_then(|e| e.queue_id) {
                    queue_ids.insert(id);
                }
            }
            for id in queue_ids {
                scan(&by_queue, &id, &mut keys)?;
            }
            keys.extend(found);
        }
        let ordered: Vec<Key> = match query.order {
            Order::Chronological => keys.into_iter().take(query.limit).collect(),
            Order::NewestFirst => keys.into_iter().rev().take(query.limit).collect(),
        };
        let mut out = Vec::with_capacity(ordered.len());
        for key in ordered {
            out.extend(get(&events, key)?);
        }
        Ok(out)
    }

    /// The newest events since `since_ms` (newest first), of `kind` when given, at most `limit`.
    pub fn recent(&self, since_ms: u64, kind: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let events = txn.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for entry in events.range((since_ms, 0)..).map_err(err)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, value) = entry.map_err(err)?;
            let Ok(event) = serde_json::from_slice::<Event>(value.value()) else {
                continue;
            };
            if kind.is_none_or(|k| k == event.kind.name()) {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Removes events older than `retention` before `now_ms`, then, while the store takes more
    /// than `max_size`, the oldest tenth of what is left. Returns how many were removed.
    pub fn prune(&self, now_ms: u64, retention: Duration, max_size: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.as_millis() as u64);
        let mut removed = 0;
        loop {
            let n = self.remove_oldest(PRUNE_BATCH, Some(cutoff))?;
            removed += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        // Freed pages are used again: past the cap, the file stops growing rather than shrinks.
        if self.used_bytes()? > max_size {
            let tenth = (self.count()? / 10).max(1) as usize;
            removed += self.remove_oldest(tenth, None)?;
        }
        Ok(removed)
    }

    /// How many events are kept.
    pub fn count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        txn.open_table(EVENTS).map_err(err)?.len().map_err(err)
    }

    /// Bytes of the store's pages in use.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let stats = txn.stats().map_err(err)?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort().map_err(err)?;
        Ok(used)
    }

    /// Index entries under `value` in `table` (a test looks at what pruning left).
    #[cfg(test)]
    pub fn index_len(&self, table: &str, value: &str) -> Result<usize, StoreError> {
        let def = match table {
            "queue" => BY_QUEUE,
            "message" => BY_MESSAGE,
            _ => BY_ADDRESS,
        };
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(def).map_err(err)?;
        let n = t
            .range((value, 0, 0)..=(value, u64::MAX, u64::MAX))
            .map_err(err)?
            .count();
        Ok(n)
    }

    /// Removes up to `max` of the oldest events (those before `before` only, when given) with
    /// their index entries, in one durable transaction.
    fn remove_oldest(&self, max: usize, before: Option<u64>) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut removed = 0;
        {
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let mut oldest = Vec::new();
            for entry in events.range(..(before.unwrap_or(u64::MAX), 0)).map_err(err)? {
                if oldest.len() >= max {
                    break;
                }
                let (key, value) = entry.map_err(err)?;
                let event = serde_json::from_slice::<Event>(value.value()).ok();
                oldest.push((key.value(), event));
            }
            let mut by_queue = txn.open_table(BY_QUEUE).map_err(err)?;
            let mut by_message = txn.open_table(BY_MESSAGE).map_err(err)?;
            let mut by_address = txn.open_table(BY_ADDRESS).map_err(err)?;
            for ((at, seq), event) in oldest {
                events.remove((at, seq)).map_err(err)?;
                removed += 1;
                let Some(event) = event else { continue };
                let keys = IndexKeys::of(&event);
                if let Some(q) = &keys.queue {
                    by_queue.remove((q.as_str(), at, seq)).map_err(err)?;
                }
                if let Some(m) = &keys.message {
                    by_message.remove((m.as_str(), at, seq)).map_err(err)?;
                }
                for a in &keys.addresses {
                    by_address.remove((a.as_str(), at, seq)).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(removed)
    }
}

/// Where an event is stored.
fn key_of(event: &Event) -> Key {
    (event.at, seq_of(&event.id))
}

/// The index values of one event.
struct IndexKeys {
    queue: Option<String>,
    message: Option<String>,
    addresses: BTreeSet<String>,
}

impl IndexKeys {
    fn of(event: &Event) -> IndexKeys {
        let addresses = event
            .sender
            .iter()
            .chain(&event.recipients)
            .filter(|a| !a.is_empty())
            .map(|a| a.to_ascii_lowercase())
            .collect();
        IndexKeys {
            queue: event.queue_id.as_ref().map(|q| q.to_ascii_uppercase()),
            message: event.message_id.clone(),
            addresses,
        }
    }
}

/// Whether `q` reads as a queue id (16 hex digits).
fn is_queue_id(q: &str) -> bool {
    q.len() == 16 && q.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Adds the keys under `value` since the query's time to `keys`: at most `limit` of them, from
/// the end the query's order starts at.
fn scan_index(
    table: &redb::ReadOnlyTable<(&str, u64, u64), ()>,
    value: &str,
    query: &Query,
    keys: &mut BTreeSet<Key>,
) -> Result<(), StoreError> {
    let range = table
        .range((value, query.since_ms, 0)..=(value, u64::MAX, u64::MAX))
        .map_err(err)?;
    let entries: Box<dyn Iterator<Item = _>> = match query.order {
        Order::Chronological => Box::new(range),
        Order::NewestFirst => Box::new(range.rev()),
    };
    for entry in entries.take(query.limit) {
        let (key, _) = entry.map_err(err)?;
        let (_, at, seq) = key.value();
        keys.insert((at, seq));
    }
    Ok(())
}

/// The event stored under `key`, if any (and readable).
fn get(events: &redb::ReadOnlyTable<Key, &[u8]>, key: Key) -> Result<Option<Event>, StoreError> {
    let value = events.get(key).map_err(err)?;
    Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
}
