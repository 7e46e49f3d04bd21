//! The in-memory queue: deliveries grouped by next hop, connection workers per hop, retries.
//!
//! Every message in here is also in the spool; the queue only decides what is tried when. A message
//! is split into one [`Delivery`] per next hop; each hop has a ready list and up to
//! `connections_per_destination` workers, each holding one connection that carries several messages.
//!
//! Architecture invariant: a recipient's final state is written to the spool before the message is
//! dropped from memory, and a bounce is spooled before the failure that caused it is recorded.

mod admin;
mod compact;
mod message;
mod scan;
mod settle;
pub mod suspend;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::context::Context;
use crate::envelope::{Envelope, QueueId};
use crate::route::{NextHop, next_hop};
use crate::spool::{Content, Recovered, SpoolError};
pub use admin::{ActionError, Filter, LastReply, Selector, State, Summary, parse_id};
pub use message::{BodyCache, Progress, QueuedMessage};
pub use suspend::{Scope, Suspension, Suspensions};

/// Memory for bodies waiting for their first delivery attempt.
const BODY_CACHE_BYTES: usize = 256 << 20;

/// A next hop as one stream sees it: every stream has its own ready list and workers per hop, so
/// a transactional message never waits behind a bulk backlog to the same destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    pub hop: NextHop,
    /// `None`: the default stream.
    pub stream: Option<String>,
}

/// Some recipients of one message, bound for one next hop.
pub struct Delivery {
    pub msg: Arc<QueuedMessage>,
    pub rcpts: Vec<u32>,
    pub attempts: u32,
    /// The message's epoch when this delivery was made (see [`QueuedMessage`]'s `epoch`).
    pub epoch: u64,
}

impl Delivery {
    /// Whether this delivery may go out: its message is not held and it is not stale.
    fn live(&self) -> bool {
        !self.msg.is_held() && self.epoch == self.msg.epoch()
    }
}

#[derive(Default)]
struct Dest {
    ready: VecDeque<Delivery>,
    workers: usize,
    idle: usize,
    wake: Arc<Notify>,
}

/// Handle to the queue; clones share it.
#[derive(Clone)]
pub struct Queue {
    /// Swapped on reload; every attempt takes the one current when it starts.
    ctx: Arc<std::sync::RwLock<Arc<Context>>>,
    dests: Arc<Mutex<HashMap<Lane, Dest>>>,
    /// Every message in the queue, by id.
    messages: Arc<Mutex<HashMap<QueueId, Arc<QueuedMessage>>>>,
    cache: Arc<BodyCache>,
    /// After-queue scans running at once (`MAX_SCANS`).
    scans: Arc<tokio::sync::Semaphore>,
    /// What an operator suspended (`suspend.rs`), and the deliveries it parked meanwhile.
    suspensions: Arc<Suspensions>,
    parked: Arc<Mutex<Vec<(NextHop, Delivery)>>>,
}

/// At most this many after-queue scans run at once.
const MAX_SCANS: usize = 32;

/// How long an idle connection waits for more mail before it says QUIT.
const IDLE: Duration = Duration::from_secs(2);

impl Queue {
    /// A queue on `ctx`'s spool, with the suspensions kept there (`suspended.json`); an error if
    /// that file cannot be read.
    pub fn open(ctx: Arc<Context>) -> Result<Self, String> {
        let suspensions = Arc::new(Suspensions::open(ctx.spool.dir())?);
        ctx.metrics
            .suspensions_active
            .set(suspensions.active(crate::events::now_ms()).len() as i64);
        Ok(Queue {
            ctx: Arc::new(std::sync::RwLock::new(ctx)),
            dests: Arc::default(),
            messages: Arc::default(),
            cache: BodyCache::new(BODY_CACHE_BYTES),
            scans: Arc::new(tokio::sync::Semaphore::new(MAX_SCANS)),
            suspensions,
            parked: Arc::default(),
        })
    }

    /// [`Queue::open`] for tests and tools; panics if the spool's `suspended.json` is damaged.
    pub fn new(ctx: Arc<Context>) -> Self {
        Queue::open(ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The current context.
    pub fn ctx(&self) -> Arc<Context> {
        self.ctx.read().unwrap().clone()
    }

    /// Switches to a reloaded configuration.
    pub fn set_context(&self, ctx: Arc<Context>) {
        *self.ctx.write().unwrap() = ctx;
    }

    /// Spools a new message durably, then schedules it. When this returns `Ok`, the message is safe.
    pub async fn accept(&self, env: Envelope, body: Vec<u8>) -> Result<(), SpoolError> {
        self.accept_content(env, Content::memory(body)).await
    }

    /// Spools a new message whose body may be in an incoming file, then schedules it.
    pub async fn accept_content(&self, env: Envelope, content: Content) -> Result<(), SpoolError> {
        let body_ref = self.ctx().spool.store_content(&env, &content).await?;
        let msg = QueuedMessage::new(env, body_ref, None, self.cache.admit(content.head));
        self.schedule(Arc::new(msg));
        Ok(())
    }

    /// Schedules what the spool held at start-up.
    pub async fn restore(&self, found: Vec<Recovered>) -> usize {
        let n = found.len();
        for r in found {
            let msg = Arc::new(QueuedMessage::new(r.env, r.body, Some(r.states), None));
            msg.set_held(r.held);
            if msg.pending().is_empty() {
                settle::finish(&self.ctx(), &msg).await;
            } else {
                self.schedule(msg);
            }
        }
        n
    }

    /// Registers a message in the queue; it is scanned by its after-queue filters first, if any.
    fn schedule(&self, msg: Arc<QueuedMessage>) {
        self.ctx().metrics.queue_depth.inc();
        if msg.is_held() {
            self.ctx().metrics.queue_held.inc();
        }
        self.messages.lock().unwrap().insert(msg.env.id, msg.clone());
        if msg.env.scan.is_empty() {
            self.dispatch(msg);
        } else {
            tokio::spawn(scan::run(self.clone(), msg));
        }
    }

    /// Hands a registered message's pending recipients to the workers of their next hops; a held
    /// message waits for its release.
    fn dispatch(&self, msg: Arc<QueuedMessage>) {
        if msg.is_held() {
            return;
        }
        let epoch = msg.epoch();
        let mut by_hop: HashMap<NextHop, Vec<u32>> = HashMap::new();
        for idx in msg.pending() {
            let hop = next_hop(&msg.env, &msg.env.recipients[idx as usize]);
            by_hop.entry(hop).or_default().push(idx);
        }
        for (hop, rcpts) in by_hop {
            self.push(
                hop,
                Delivery {
                    msg: msg.clone(),
                    rcpts,
                    attempts: 0,
                    epoch,
                },
            );
        }
    }

    /// Puts a delivery on its lane's ready list (its hop, its message's stream) and starts a worker
    /// if none is free.
    fn push(&self, hop: NextHop, d: Delivery) {
        if !d.live() {
            // Held or made stale by an operator: a release dispatches the message again.
            return;
        }
        // Suspended recipients are parked until a resume or a lapse pushes them again.
        let Some(d) = self.unsuspended(&hop, d) else {
            return;
        };
        let lane = Lane {
            hop: hop.clone(),
            stream: d.msg.env.stream.clone(),
        };
        let mut dests = self.dests.lock().unwrap();
        let dest = dests.entry(lane.clone()).or_default();
        dest.ready.push_back(d);
        let limit = match &hop {
            // A pool caps itself: each server's `max_connections`.
            NextHop::Pool(name) => self.ctx().pools.worker_limit(name),
            // The domain's shaping (an MX rollup's shared cap is enforced again at connect time).
            NextHop::Mx(domain) => Some(self.ctx().shaper.max_connections(domain)),
        }
        .unwrap_or(self.ctx().config.queue.connections_per_destination);
        if dest.ready.len() > dest.idle && dest.workers < limit {
            dest.workers += 1;
            tokio::spawn(worker::run(self.clone(), lane));
        } else {
            dest.wake.notify_one();
        }
    }

    /// A finished message leaves the queue.
    fn forget(&self, id: QueueId) {
        let gone = self.messages.lock().unwrap().remove(&id);
        self.ctx().metrics.queue_depth.dec();
        if gone.is_some_and(|m| m.is_held()) {
            self.ctx().metrics.queue_held.dec();
        }
    }

    /// Messages whose body is in spool segment `segment`.
    fn in_segment(&self, segment: u64) -> Vec<Arc<QueuedMessage>> {
        let messages = self.messages.lock().unwrap();
        messages
            .values()
            .filter(|m| m.body_ref().segment == segment)
            .cloned()
            .collect()
    }

    /// Starts the background task that moves long-queued messages out of old spool segments.
    pub fn start_compaction(&self, every: Duration) {
        tokio::spawn(compact::run(self.clone(), every));
    }

    /// Retries a delivery after `delay`, or sooner when an operator wakes the message (retry now;
    /// a hold, which parks it: [`Queue::push`] drops a delivery that may not go out).
    fn retry_later(&self, hop: NextHop, d: Delivery, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            let msg = d.msg.clone();
            let woken = msg.wake.notified();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = woken => {}
            }
            queue.push(hop, d);
        });
    }

    /// The next delivery for a worker of `hop` if one is ready now.
    fn try_next_for(&self, lane: &Lane) -> Option<Delivery> {
        self.pop_live(lane, &mut self.dests.lock().unwrap().get_mut(lane)?.ready)
    }

    /// The next delivery for a worker of `hop`, waiting a while for one; `None` means the worker should close.
    async fn next_for(&self, lane: &Lane) -> Option<Delivery> {
        for _ in 0..2 {
            let wake = {
                let mut dests = self.dests.lock().unwrap();
                let dest = dests.get_mut(lane)?;
                if let Some(d) = self.pop_live(lane, &mut dest.ready) {
                    return Some(d);
                }
                dest.idle += 1;
                dest.wake.clone()
            };
            let _ = tokio::time::timeout(IDLE, wake.notified()).await;
            let mut dests = self.dests.lock().unwrap();
            let dest = dests.get_mut(lane)?;
            dest.idle -= 1;
            if let Some(d) = self.pop_live(lane, &mut dest.ready) {
                return Some(d);
            }
        }
        None
    }

    /// Takes every delivery waiting for `hop` (when its servers are unreachable).
    fn drain(&self, lane: &Lane) -> Vec<Delivery> {
        let mut dests = self.dests.lock().unwrap();
        let waiting: Vec<Delivery> = dests
            .get_mut(lane)
            .map(|d| d.ready.drain(..).filter(Delivery::live).collect())
            .unwrap_or_default();
        drop(dests);
        waiting
            .into_iter()
            .filter_map(|d| self.unsuspended(&lane.hop, d))
            .collect()
    }

    /// A worker of `hop` is gone.
    fn worker_done(&self, lane: &Lane) {
        let mut dests = self.dests.lock().unwrap();
        if let Some(dest) = dests.get_mut(lane) {
            dest.workers -= 1;
            if dest.workers == 0 && dest.ready.is_empty() {
                dests.remove(lane);
            } else if !dest.ready.is_empty() && dest.workers == 0 {
                dest.workers += 1;
                tokio::spawn(worker::run(self.clone(), lane.clone()));
            }
        }
    }
}

impl Queue {
    /// The first delivery on a ready list that may go out; those of messages held (or made stale)
    /// since they were put there are skipped and dropped, and what a suspension made since then
    /// covers is parked.
    fn pop_live(&self, lane: &Lane, ready: &mut VecDeque<Delivery>) -> Option<Delivery> {
        while let Some(d) = ready.pop_front() {
            if d.live()
                && let Some(d) = self.unsuspended(&lane.hop, d)
            {
                return Some(d);
            }
        }
        None
    }
}
