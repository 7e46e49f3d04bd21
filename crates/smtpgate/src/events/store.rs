//! The event store: one redb file. Events are kept as JSON under `(at, seq)` (time order). The
//! queue index maps a queue id to the keys of its events; the Message-ID and address indexes map
//! those of the events that open a story (`received`, `refused`, `quarantined`, ...: every event
//! but the delivery attempts, expiries and admin actions that continue a queued copy's story) to
//! the copy's queue id. So every question is a range scan of one index, never a scan of the
//! events, and a message's whole story is found through its queue id. An index key is bytes,
//! `value NUL at seq` (big endian): ordered by value, then time, and compared with one `memcmp`.
//! A batch goes into each table in key order, so the keys that share a gap (new events at the
//! end, a copy's next events after its last) are spliced in as one run. Pruning removes the
//! oldest events with their index entries.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::time::Duration;

use redb::{
    CursorError, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::{Event, Recorded};

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
    /// How long a story can go on after it opened: an address or Message-ID finds the stories
    /// that opened this long before the query's `since` too (their later events may be since).
    story_span_ms: u64,
}

impl Store {
    /// Opens (or creates) the store, with its tables. `story_span` is how long a copy can stay
    /// queued (`queue.max_age`): how far before a query's `since` its story may have opened.
    pub fn open(path: &Path, story_span: Duration) -> Result<Store, StoreError> {
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
        Ok(Store {
            db,
            story_span_ms: story_span.as_millis() as u64,
        })
    }

    /// Stores a batch of events in one transaction; `durable` waits for the disk (else a later
    /// durable commit or a clean close makes it so).
    pub fn write(&self, batch: &[Recorded], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError(e.to_string()))?;
        }
        // Each table's entries in key order, so that the keys that fall into one gap of a
        // table (new events at its end, a queue id's next events after its last) go in as one
        // run rather than one descent each.
        let mut stored: Vec<(Key, &[u8])> = Vec::with_capacity(batch.len());
        let mut by_queue = Entries::with_capacity(batch.len());
        let mut by_message = Entries::with_capacity(batch.len() / 2);
        let mut by_address = Entries::with_capacity(batch.len());
        for event in batch {
            let (at, seq) = (event.at, event.seq);
            stored.push(((at, seq), event.json_bytes()));
            let keys = IndexKeys::of(event.index());
            let queue = keys.queue.unwrap_or("").as_bytes();
            if let Some(q) = keys.queue {
                by_queue.push(q, at, seq, &[]);
            }
            if let Some(m) = keys.message {
                by_message.push(m, at, seq, queue);
            }
            for a in keys.addresses() {
                by_address.push(a, at, seq, queue);
            }
        }
        stored.sort_unstable_by_key(|(key, _)| *key);
        splice(
            &mut txn.open_table(EVENTS).map_err(err)?,
            stored.iter().map(|(k, v)| (*k, *v)),
        )?;
        for (table, mut entries) in [(BY_QUEUE, by_queue), (BY_MESSAGE, by_message), (BY_ADDRESS, by_address)] {
            entries.sort();
            splice(&mut txn.open_table(table).map_err(err)?, entries.iter())?;
        }
        txn.commit().map_err(err)
    }

    /// The events a query asks for. A queue id is looked up in its index; anything else as an
    /// address and as a Message-ID, whose stories (each a queue id) then bring their events.
    pub fn query(&self, query: &Query) -> Result<Vec<Event>, StoreError> {
        let q = query.q.trim();
        let txn = self.db.begin_read().map_err(err)?;
        let events = txn.open_table(EVENTS).map_err(err)?;
        let by_queue = txn.open_table(BY_QUEUE).map_err(err)?;
        let mut keys = BTreeSet::new();
        if is_queue_id(q) {
            story(&by_queue, &q.to_ascii_uppercase(), query, &mut keys)?;
        } else {
            let mut stories = Stories {
                by_queue: &by_queue,
                query,
                opened_from: match query.since_ms {
                    0 => 0,
                    since => since.saturating_sub(self.story_span_ms),
                },
                seen: HashSet::new(),
                keys: &mut keys,
            };
            let by_address = txn.open_table(BY_ADDRESS).map_err(err)?;
            stories.scan(&by_address, &q.to_ascii_lowercase())?;
            let by_message = txn.open_table(BY_MESSAGE).map_err(err)?;
            stories.scan(&by_message, &super::normal_message_id(q))?;
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
            let (mut key, mut values) = (Vec::new(), Vec::new());
            for ((at, seq), event) in oldest {
                events.remove((at, seq)).map_err(err)?;
                removed += 1;
                let Some(event) = event else { continue };
                values.clear();
                super::index_values(&event, &mut values);
                let keys = IndexKeys::of(super::index_parts(&values));
                if let Some(q) = keys.queue {
                    by_queue.remove(index_key(&mut key, q, at, seq)).map_err(err)?;
                }
                if let Some(m) = keys.message {
                    by_message.remove(index_key(&mut key, m, at, seq)).map_err(err)?;
                }
                for a in keys.addresses() {
                    by_address.remove(index_key(&mut key, a, at, seq)).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(removed)
    }
}

/// Inserts `entries` (in key order) into `table`. Keys that fall into the same gap between the
/// table's entries are spliced in as one run through a cursor (redb builds the new leaves once),
/// and the cursor seeks again only where the next key is past the gap. A key the table already
/// has is replaced, as [`redb::Table::insert`] does.
fn splice<'a, K, V>(
    table: &mut redb::Table<K, V>,
    entries: impl Iterator<Item = (K::SelfType<'a>, V::SelfType<'a>)>,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let mut entries = entries;
    let mut next = entries.next();
    while let Some((key, value)) = next.take() {
        let mut cursor = table.lower_bound_mut(Bound::Included(&key)).map_err(err)?;
        match cursor.insert_before(&key, &value) {
            Ok(()) => {
                // The run goes on while the next key still sorts before the entry after the gap.
                for (key, value) in entries.by_ref() {
                    match cursor.insert_before(&key, &value) {
                        Ok(()) => {}
                        Err(CursorError::UnorderedKey) => {
                            next = Some((key, value));
                            break;
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
                cursor.close().map_err(err)?;
            }
            Err(CursorError::UnorderedKey) => {
                // Equal to the entry after the gap: replaced.
                cursor.close().map_err(err)?;
                table.insert(&key, &value).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
        if next.is_none() {
            next = entries.next();
        }
    }
    Ok(())
}

/// A batch's entries for one index: the keys in one buffer, each with its value.
struct Entries<'v> {
    keys: Vec<u8>,
    entries: Vec<(std::ops::Range<usize>, &'v [u8])>,
}

impl<'v> Entries<'v> {
    fn with_capacity(n: usize) -> Entries<'v> {
        Entries {
            keys: Vec::with_capacity(n * 48),
            entries: Vec::with_capacity(n),
        }
    }

    /// Adds the key of `value` at `(at, seq)` with `stored` as its value.
    fn push(&mut self, value: &str, at: u64, seq: u64, stored: &'v [u8]) {
        let start = self.keys.len();
        append_index_key(&mut self.keys, value, at, seq);
        self.entries.push((start..self.keys.len(), stored));
    }

    fn sort(&mut self) {
        let keys = &self.keys;
        self.entries
            .sort_unstable_by(|a, b| keys[a.0.clone()].cmp(&keys[b.0.clone()]));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &'v [u8])> {
        self.entries
            .iter()
            .map(|(range, stored)| (&self.keys[range.clone()], *stored))
    }
}

/// The index values of one event, as [`super::index_values`] wrote them (normalised, each
/// address once).
struct IndexKeys<'a, I> {
    queue: Option<&'a str>,
    message: Option<&'a str>,
    rest: I,
}

impl<'a, I: Iterator<Item = (u8, &'a str)> + Clone> IndexKeys<'a, I> {
    fn of(parts: I) -> IndexKeys<'a, I> {
        let find = |tag| parts.clone().find(|(t, _)| *t == tag).map(|(_, v)| v);
        IndexKeys {
            queue: find(b'Q'),
            message: find(b'M'),
            rest: parts,
        }
    }

    fn addresses(&self) -> impl Iterator<Item = &'a str> + use<'a, I> {
        self.rest.clone().filter(|(t, _)| *t == b'A').map(|(_, v)| v)
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
    append_index_key(buf, value, at, seq);
    buf
}

/// Appends the index key `value NUL at seq` to `buf`.
fn append_index_key(buf: &mut Vec<u8>, value: &str, at: u64, seq: u64) {
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&at.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
}

/// `(at, seq)` from an index key's tail.
fn key_from_index(key: &[u8]) -> Option<Key> {
    let tail = key.len().checked_sub(16).map(|at| &key[at..])?;
    let at = u64::from_be_bytes(tail[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[8..].try_into().ok()?);
    Some((at, seq))
}

/// The range of `value`'s index keys from `from_ms` on, in the query's order.
fn index_range<'t>(
    table: &'t redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    value: &str,
    from_ms: u64,
    order: Order,
) -> Result<Box<dyn Iterator<Item = redb::Result<IndexEntry<'t>>> + 't>, StoreError> {
    let from = index_key(&mut Vec::new(), value, from_ms, 0).to_vec();
    let to = index_key(&mut Vec::new(), value, u64::MAX, u64::MAX).to_vec();
    let range = table.range(from.as_slice()..=to.as_slice()).map_err(err)?;
    Ok(match order {
        Order::Chronological => Box::new(range),
        Order::NewestFirst => Box::new(range.rev()),
    })
}

type IndexEntry<'t> = (
    redb::AccessGuard<'t, &'static [u8]>,
    redb::AccessGuard<'t, &'static [u8]>,
);

/// Adds the keys of queue id `id`'s events since the query's time to `keys`: at most `limit`,
/// from the end the query's order starts at.
fn story(
    by_queue: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    id: &str,
    query: &Query,
    keys: &mut BTreeSet<Key>,
) -> Result<(), StoreError> {
    if id.is_empty() || id.contains('\0') {
        return Ok(());
    }
    for entry in index_range(by_queue, id, query.since_ms, query.order)?.take(query.limit) {
        let (key, _) = entry.map_err(err)?;
        keys.extend(key_from_index(key.value()));
    }
    Ok(())
}

/// The stories an address or a Message-ID opened, gathered into `keys`.
struct Stories<'q, 't> {
    by_queue: &'t redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    query: &'q Query,
    /// Stories that opened before this cannot have events since the query's time.
    opened_from: u64,
    /// Queue ids whose stories are in `keys` already.
    seen: HashSet<Vec<u8>>,
    keys: &'q mut BTreeSet<Key>,
}

impl Stories<'_, '_> {
    /// Adds the events of the stories `value` opened in `table`, in the query's order, until
    /// `limit` events are gathered. An entry whose event has no queue id is that event alone.
    fn scan(
        &mut self,
        table: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        value: &str,
    ) -> Result<(), StoreError> {
        if value.is_empty() || value.contains('\0') {
            return Ok(());
        }
        for entry in index_range(table, value, self.opened_from, self.query.order)? {
            if self.keys.len() >= self.query.limit {
                break;
            }
            let (key, queue) = entry.map_err(err)?;
            let queue = queue.value();
            if queue.is_empty() {
                if let Some(key) = key_from_index(key.value()).filter(|(at, _)| *at >= self.query.since_ms) {
                    self.keys.insert(key);
                }
            } else if self.seen.insert(queue.to_vec())
                && let Ok(id) = std::str::from_utf8(queue)
            {
                story(self.by_queue, id, self.query, self.keys)?;
            }
        }
        Ok(())
    }
}

/// The event stored under `key`, if any (and readable).
fn get(events: &redb::ReadOnlyTable<Key, &[u8]>, key: Key) -> Result<Option<Event>, StoreError> {
    let value = events.get(key).map_err(err)?;
    Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
}
