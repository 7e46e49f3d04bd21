//! The event store: one redb file. Events are kept as JSON under `(at, seq)` (time order); three
//! index tables map a queue id, a Message-ID and an address (the sender and each recipient,
//! lowercased) to event keys, so every question is a range scan of one index from
//! `(value, since)`, never a scan of the events. An index key is bytes, `value NUL at seq` (big
//! endian): ordered by value, then time, and compared with one `memcmp`; the Message-ID and
//! address indexes keep the event's queue id as their value, so a message's whole story is found
//! without reading its events. Pruning removes the oldest events with their index entries.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::Event;
use super::id::seq_of;

type Key = (u64, u64);
type Index = TableDefinition<'static, &'static [u8], &'static [u8]>;

const EVENTS: TableDefinition<Key, &[u8]> = TableDefinition::new("events");
const BY_QUEUE: Index = TableDefinition::new("queue_index");
const BY_MESSAGE: Index = TableDefinition::new("message_index");
const BY_ADDRESS: Index = TableDefinition::new("address_index");
/// Index tables of earlier versions (keyed by tuples): dropped when the store is opened, so
/// their events are found by queue id only until they age out.
const FORMER: [TableDefinition<(&str, u64, u64), ()>; 3] = [
    TableDefinition::new("by_queue_id"),
    TableDefinition::new("by_message_id"),
    TableDefinition::new("by_address"),
];

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
        for former in FORMER {
            txn.delete_table(former).map_err(err)?;
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
            let mut key = Vec::new();
            for (event, json) in batch {
                let (at, seq) = key_of(event);
                events.insert((at, seq), json.as_bytes()).map_err(err)?;
                let keys = IndexKeys::of(event);
                let queue = keys.queue.as_deref().unwrap_or("").as_bytes();
                if let Some(q) = &keys.queue {
                    by_queue.insert(index_key(&mut key, q, at, seq), &[][..]).map_err(err)?;
                }
                if let Some(m) = &keys.message {
                    by_message.insert(index_key(&mut key, m, at, seq), queue).map_err(err)?;
                }
                for a in &keys.addresses {
                    by_address.insert(index_key(&mut key, a, at, seq), queue).map_err(err)?;
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
        if is_queue_id(q) {
            scan_index(
                &by_queue,
                &q.to_ascii_uppercase(),
                query,
                &mut keys,
                &mut BTreeSet::new(),
            )?;
        } else {
            let mut queue_ids = BTreeSet::new();
            let by_address = txn.open_table(BY_ADDRESS).map_err(err)?;
            scan_index(&by_address, &q.to_ascii_lowercase(), query, &mut keys, &mut queue_ids)?;
            let by_message = txn.open_table(BY_MESSAGE).map_err(err)?;
            let message_id = super::normal_message_id(q);
            scan_index(&by_message, &message_id, query, &mut keys, &mut queue_ids)?;
            for id in queue_ids {
                scan_index(&by_queue, &id, query, &mut keys, &mut BTreeSet::new())?;
            }
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
        let from = index_key(&mut Vec::new(), value, 0, 0).to_vec();
        let to = index_key(&mut Vec::new(), value, u64::MAX, u64::MAX).to_vec();
        let n = t.range(from.as_slice()..=to.as_slice()).map_err(err)?.count();
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
            let mut key = Vec::new();
            for ((at, seq), event) in oldest {
                events.remove((at, seq)).map_err(err)?;
                removed += 1;
                let Some(event) = event else { continue };
                let keys = IndexKeys::of(&event);
                if let Some(q) = &keys.queue {
                    by_queue.remove(index_key(&mut key, q, at, seq)).map_err(err)?;
                }
                if let Some(m) = &keys.message {
                    by_message.remove(index_key(&mut key, m, at, seq)).map_err(err)?;
                }
                for a in &keys.addresses {
                    by_address.remove(index_key(&mut key, a, at, seq)).map_err(err)?;
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

/// The index values of one event: borrowed from it when already in their indexed form (the
/// usual case: the writer allocates nothing per event for them).
struct IndexKeys<'a> {
    queue: Option<Cow<'a, str>>,
    message: Option<&'a str>,
    addresses: Vec<Cow<'a, str>>,
}

impl<'a> IndexKeys<'a> {
    fn of(event: &'a Event) -> IndexKeys<'a> {
        let mut addresses: Vec<Cow<'a, str>> = Vec::with_capacity(1 + event.recipients.len());
        for a in event.sender.iter().chain(&event.recipients) {
            if a.is_empty() {
                continue;
            }
            let a = lower(a);
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        IndexKeys {
            queue: event.queue_id.as_deref().map(upper),
            message: event.message_id.as_deref(),
            addresses,
        }
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    match s.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(s.to_ascii_lowercase()),
        false => Cow::Borrowed(s),
    }
}

fn upper(s: &str) -> Cow<'_, str> {
    match s.bytes().any(|b| b.is_ascii_lowercase()) {
        true => Cow::Owned(s.to_ascii_uppercase()),
        false => Cow::Borrowed(s),
    }
}

/// Whether `q` reads as a queue id (16 hex digits).
fn is_queue_id(q: &str) -> bool {
    q.len() == 16 && q.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `value NUL at seq` in `buf`: an index key. Indexed values never hold a NUL (addresses and
/// Message-IDs are single lines of printable text, queue ids hex), so one value's keys are a
/// contiguous range that no longer value shares.
fn index_key<'a>(buf: &'a mut Vec<u8>, value: &str, at: u64, seq: u64) -> &'a [u8] {
    buf.clear();
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&at.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf
}

/// `(at, seq)` from an index key's tail.
fn key_from_index(key: &[u8]) -> Option<Key> {
    let tail = key.len().checked_sub(16).map(|at| &key[at..])?;
    let at = u64::from_be_bytes(tail[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[8..].try_into().ok()?);
    Some((at, seq))
}

/// Adds the keys under `value` since the query's time to `keys` (and the queue ids the entries
/// hold to `queue_ids`): at most `limit` of them, from the end the query's order starts at.
fn scan_index(
    table: &redb::ReadOnlyTable<&[u8], &[u8]>,
    value: &str,
    query: &Query,
    keys: &mut BTreeSet<Key>,
    queue_ids: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    if value.is_empty() || value.contains('\0') {
        return Ok(());
    }
    let from = index_key(&mut Vec::new(), value, query.since_ms, 0).to_vec();
    let to = index_key(&mut Vec::new(), value, u64::MAX, u64::MAX).to_vec();
    let range = table.range(from.as_slice()..=to.as_slice()).map_err(err)?;
    let entries: Box<dyn Iterator<Item = _>> = match query.order {
        Order::Chronological => Box::new(range),
        Order::NewestFirst => Box::new(range.rev()),
    };
    for entry in entries.take(query.limit) {
        let (key, queue) = entry.map_err(err)?;
        keys.extend(key_from_index(key.value()));
        if let Ok(id) = std::str::from_utf8(queue.value())
            && !id.is_empty()
        {
            queue_ids.insert(id.to_owned());
        }
    }
    Ok(())
}

/// The event stored under `key`, if any (and readable).
fn get(events: &redb::ReadOnlyTable<Key, &[u8]>, key: Key) -> Result<Option<Event>, StoreError> {
    let value = events.get(key).map_err(err)?;
    Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
}
