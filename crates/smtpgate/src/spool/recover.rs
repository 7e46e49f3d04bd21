//! Start-up recovery: replays every segment, drops torn tails, and returns the live messages.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::record::{self, Decoded, Record};
use super::{BodyRef, Recovered, segment_id, segment_path};
use crate::envelope::QueueId;

pub(super) struct Found {
    pub messages: Vec<Recovered>,
    pub live: BTreeMap<u64, u64>,
    pub next_segment: u64,
}

/// How to treat a torn record at the end of a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Torn {
    Truncate,
    Leave,
}

/// Replays the spool without modifying it.
pub(super) fn scan_readonly(dir: &Path) -> io::Result<Vec<Recovered>> {
    Ok(scan_with(dir, Torn::Leave)?.messages)
}

pub(super) fn scan(dir: &Path) -> io::Result<Found> {
    scan_with(dir, Torn::Truncate)
}

fn scan_with(dir: &Path, torn: Torn) -> io::Result<Found> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment_id(e.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    let mut map: BTreeMap<QueueId, Recovered> = BTreeMap::new();
    for &id in &ids {
        replay_segment(dir, id, &mut map, torn)?;
    }
    let mut live: BTreeMap<u64, u64> = ids.iter().map(|&id| (id, 0)).collect();
    for m in map.values() {
        *live.entry(m.body.segment).or_default() += 1;
    }
    let next_segment = ids.last().map_or(1, |l| l + 1);
    Ok(Found {
        messages: map.into_values().collect(),
        live,
        next_segment,
    })
}

fn replay_segment(dir: &Path, seg: u64, map: &mut BTreeMap<QueueId, Recovered>, torn: Torn) -> io::Result<()> {
    let path = segment_path(dir, seg);
    let data = std::fs::read(&path)?;
    let mut pos = 0;
    while pos < data.len() {
        match record::decode(&data[pos..]) {
            Decoded::Record(rec, used) => {
                apply(rec, seg, pos as u64, map);
                pos += used;
            }
            Decoded::Truncated | Decoded::Corrupt => match next_valid(&data, pos + 1) {
                // Damage in the middle of a segment: skip the bad bytes, keep what follows.
                Some(next) => {
                    tracing::error!(
                        segment = seg,
                        offset = pos,
                        skipped = next - pos,
                        "spool: skipping a damaged record"
                    );
                    pos = next;
                }
                // A record that never completed at the end: it was never acknowledged, so it is dropped.
                None => {
                    if torn == Torn::Truncate {
                        tracing::warn!(
                            segment = seg,
                            offset = pos,
                            "spool: dropping incomplete record at end of segment"
                        );
                        OpenOptions::new().write(true).open(&path)?.set_len(pos as u64)?;
                    }
                    break;
                }
            },
        }
    }
    Ok(())
}

/// The offset of the next record at or after `from` that decodes with a valid checksum.
fn next_valid(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < data.len() {
        let found = data[at..]
            .windows(record::MAGIC.len())
            .position(|w| w == record::MAGIC)?;
        at += found;
        if let Decoded::Record(..) = record::decode(&data[at..]) {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn apply(rec: Record<'_>, seg: u64, at: u64, map: &mut BTreeMap<QueueId, Recovered>) {
    match rec {
        Record::Message {
            env,
            states,
            body,
            body_offset,
        } => {
            let body = BodyRef {
                segment: seg,
                offset: at + body_offset as u64,
                len: body.len() as u64,
            };
            map.insert(env.id, Recovered { env, states, body });
        }
        Record::Status { id, updates } => {
            if let Some(m) = map.get_mut(&id) {
                for (idx, st) in updates {
                    if let Some(s) = m.states.get_mut(idx as usize) {
                        *s = st;
                    }
                }
            }
        }
        Record::Done { id } => {
            map.remove(&id);
        }
    }
}
