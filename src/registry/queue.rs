//! The registry's write path: ordered, retried, bounded.
//!
//! Every store write (register, remove, refresh) goes through a small set of ordered queues,
//! sharded by session id so the operations on one session keep their order (a `DELETE` right
//! after `initialize` never overtakes its registration). A worker takes up to 64 queued
//! operations at a time and hands them to the store in one
//! [`write_batch`](super::RegistryStore::write_batch) call (two pipelined round trips of plain
//! commands on a Redis server, whatever the batch's size). If the batch fails, its operations are replayed one by one, in order per session,
//! each retried with exponential backoff and jitter while the store is down, until it succeeds
//! or the record would have expired anyway. Enqueuing never waits and never fails the request:
//! when a queue is full the operation is dropped and counted, and the record's TTL cleans up.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{
    RegistryStore, SessionRecord,
    limit::LookupLimits,
    stats::Counters,
    store::{StoreWrite, group_by_id},
};

pub(crate) const SHARDS: usize = 4;

/// Shards of the local view of held sessions.
const LIVE_SHARDS: usize = 16;

/// How the registry learns that a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// The session's close hook reports it (this crate's transport).
    Hooked,
    /// Nothing reports it (an inner service of its own, such as rmcp): the inner service's
    /// `404` for the id, or the idle bound.
    Unreported,
}

#[derive(Debug)]
pub(crate) enum OpKind {
    Register(SessionRecord, Ends),
    Remove,
    RemoveIfOwned,
    Refresh,
}

#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) id: Arc<str>,
    pub(crate) kind: OpKind,
    pub(crate) deadline: Instant,
}

/// A session this node registered.
#[derive(Debug)]
struct Tracked {
    /// When its record's TTL was last set (for refreshes).
    refreshed: Instant,
    /// The last request for it, for sessions no close hook reports ([`Ends::Unreported`]).
    seen: Option<Instant>,
}

/// Shared registry state used by the service and the workers.
#[derive(Debug)]
pub(crate) struct Core<R> {
    pub(crate) store: Arc<R>,
    pub(crate) node: Arc<str>,
    pub(crate) incarnation: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) fail_closed: bool,
    pub(crate) lookup_timeout: Duration,
    pub(crate) counters: Counters,
    senders: Vec<mpsc::Sender<Op>>,
    receivers: Mutex<Option<Vec<mpsc::Receiver<Op>>>>,
    hasher: std::collections::hash_map::RandomState,
    pending: AtomicU64,
    drained: Notify,
    /// Sessions this node holds (keyed by the id clients use), from the response that minted
    /// or restored them until they end: the local view that tells, without the store, that a
    /// request names a session held elsewhere. Sharded: every legacy request reads it.
    live: [Mutex<HashMap<Arc<str>, Tracked>>; LIVE_SHARDS],
    /// How many of `live` are [`Ends::Unreported`]: while there are none, requests are not
    /// tracked at all.
    unreported: AtomicUsize,
    /// The idle bound of [`Ends::Unreported`] sessions.
    pub(crate) idle_timeout: Duration,
    /// Bounds on the `404` path's lookups.
    pub(crate) limits: LookupLimits,
    /// The "queue full" warning, logged at most once a second.
    full_warning: crate::throttle::Throttle,
    started: AtomicBool,
    /// Liveness, forwarding and adoption; `None` when turned off.
    pub(crate) continuity: Option<super::continuity::Continuity>,
    /// What an inner service's own session store hands over (feature `rmcp`).
    pub(crate) handoff: Arc<super::handoff::Handoff>,
    /// The shared event log's queue (standalone events on their way to the store).
    pub(crate) events: Arc<super::events::EventQueue>,
}

impl<R: RegistryStore> Core<R> {
    pub(crate) fn new(
        store: Arc<R>,
        node: Arc<str>,
        incarnation: Arc<str>,
        ttl: Duration,
        capacity: usize,
    ) -> Self {
        // `capacity` was validated (at least one slot per shard): the shards share it exactly.
        let (senders, receivers) = (0..SHARDS)
            .map(|i| mpsc::channel((capacity / SHARDS + usize::from(i < capacity % SHARDS)).max(1)))
            .unzip();
        Self {
            store,
            node,
            incarnation,
            ttl,
            fail_closed: false,
            lookup_timeout: Duration::from_millis(500),
            counters: Counters::default(),
            senders,
            receivers: Mutex::new(Some(receivers)),
            hasher: std::collections::hash_map::RandomState::new(),
            pending: AtomicU64::new(0),
            drained: Notify::new(),
            live: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            unreported: AtomicUsize::new(0),
            idle_timeout: super::layer::DEFAULT_IDLE_TIMEOUT,
            limits: LookupLimits::new(
                super::layer::DEFAULT_LOOKUP_RATE.0,
                super::layer::DEFAULT_LOOKUP_RATE.1,
                super::layer::DEFAULT_NEGATIVE_CACHE.0,
                super::layer::DEFAULT_NEGATIVE_CACHE.1,
            ),
            full_warning: crate::throttle::Throttle::new(),
            started: AtomicBool::new(false),
            continuity: None,
            handoff: Arc::default(),
            events: Arc::new(super::events::EventQueue::new()),
        }
    }

    pub(crate) fn with_options(mut self, fail_closed: bool, lookup_timeout: Duration) -> Self {
        self.fail_closed = fail_closed;
        self.lookup_timeout = lookup_timeout;
        self
    }

    pub(crate) fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    pub(crate) fn with_limits(mut self, limits: LookupLimits) -> Self {
        self.limits = limits;
        self
    }

    pub(crate) fn with_continuity(
        mut self,
        continuity: Option<super::continuity::Continuity>,
    ) -> Self {
        self.continuity = continuity;
        self
    }

    /// Whether the transport sends the standalone events it reports at once, or once the
    /// event writer stored them.
    pub(crate) fn with_event_durability(mut self, durability: crate::session::Durability) -> Self {
        self.events = Arc::new(super::events::EventQueue::new().with_durability(durability));
        self
    }

    /// Starts the workers, the refresher and the stale-record cleanup: once, and only from
    /// within a Tokio runtime (outside one it does nothing and a later call starts them).
    /// Called for every request as a fallback, so once started it is one atomic load.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let receivers = self
            .receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(receivers) = receivers else { return };
        self.started.store(true, Ordering::Release);
        for rx in receivers {
            tokio::spawn(worker(Arc::downgrade(self), rx));
        }
        if let Some(rx) = self.events.take_receiver() {
            tokio::spawn(super::events::writer(
                Arc::downgrade(&self.store),
                Arc::downgrade(&self.events),
                rx,
                self.idle_timeout,
            ));
        }
        tokio::spawn(refresher(Arc::downgrade(self)));
        tokio::spawn(idle_sweeper(Arc::downgrade(self)));
        if self.continuity.is_some() {
            // A previous process's records stay adoptable; the orphan sweep removes what
            // nobody claimed once the idle timeout has passed.
            tokio::spawn(super::continuity::heartbeat(Arc::downgrade(self)));
            tokio::spawn(super::continuity::orphan_sweeper(Arc::downgrade(self)));
        } else {
            tokio::spawn(clean_previous_incarnations(Arc::downgrade(self)));
        }
    }
}

/// The bookkeeping that needs no store: callable from anywhere (a drop guard included).
impl<R> Core<R> {
    pub(crate) fn enqueue(&self, id: &str, kind: OpKind) {
        let mut h = self.hasher.build_hasher();
        h.write(id.as_bytes());
        let shard = (h.finish() as usize) % SHARDS;
        let op = Op {
            id: id.into(),
            kind,
            deadline: Instant::now() + self.ttl,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        crate::metrics::registry_queue(1);
        if self.senders[shard].try_send(op).is_err() {
            self.op_done();
            let dropped = self.counters.dropped_ops.fetch_add(1, Ordering::Relaxed) + 1;
            crate::metrics::registry_dropped();
            if self.full_warning.ready() {
                tracing::warn!(
                    node = %self.node,
                    dropped,
                    "registry queue full: operations dropped (their records' TTL will clean up)"
                );
            }
        }
    }

    fn op_done(&self) {
        crate::metrics::registry_queue(-1);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every queued operation has landed (or was given up), at most `timeout`,
    /// and every queued event of the shared event log. Returns whether the queues are empty.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if self.pending() == 0 {
                    break;
                }
                notified.await;
            }
            self.events.drained().await;
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn shard_of(&self, id: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(id.as_bytes());
        // The write queues use the low bits; the view uses others.
        (h.finish() >> 32) as usize % LIVE_SHARDS
    }

    fn live(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Tracked>> {
        lock_shard(&self.live[self.shard_of(id)])
    }

    /// Whether this node holds session `id` (the id clients use).
    #[inline]
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.live(id).contains_key(id)
    }

    /// After the inner service's `404` for `id`: how this node tracks the session, and for a
    /// session no close hook reports, forgets it (the `404` is its end). A session the close
    /// hook reports stays: it is still held, so that `404` is the handler's own answer.
    pub(crate) fn inner_not_found(&self, id: &str) -> Option<Ends> {
        let mut live = self.live(id);
        if live.get(id)?.seen.is_none() {
            return Some(Ends::Hooked);
        }
        self.untrack(&mut live, id);
        Some(Ends::Unreported)
    }

    /// Drops a session from the sessions this node tracks; whether it was tracked.
    pub(crate) fn forget(&self, id: &str) -> bool {
        self.untrack(&mut self.live(id), id)
    }

    fn untrack(&self, live: &mut HashMap<Arc<str>, Tracked>, id: &str) -> bool {
        let removed = live.remove(id);
        if removed.as_ref().is_some_and(|t| t.seen.is_some()) {
            self.unreported.fetch_sub(1, Ordering::Relaxed);
        }
        crate::session::shrink_when_sparse(live);
        removed.is_some()
    }

    /// Notes that this node holds session `id` (the id clients use). Called when the
    /// response that minted (or restored) it is answered, before its record is written, so
    /// the next request finds it held.
    pub(crate) fn mark_live(&self, id: &str, ends: Ends) {
        let now = Instant::now();
        let tracked = Tracked {
            refreshed: now,
            seen: (ends == Ends::Unreported).then_some(now),
        };
        if tracked.seen.is_some() {
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(old) = self.live(id).insert(id.into(), tracked)
            && old.seen.is_some()
        {
            self.unreported.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// [`mark_live`](Self::mark_live), unless the session is tracked already: how it is
    /// tracked then stays (a session whose close hook reports its end is not turned into one
    /// tracked by its requests).
    pub(crate) fn mark_live_if_absent(&self, id: &str, ends: Ends) {
        let mut live = self.live(id);
        if live.contains_key(id) {
            return;
        }
        let now = Instant::now();
        let seen = (ends == Ends::Unreported).then_some(now);
        if seen.is_some() {
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
        live.insert(
            id.into(),
            Tracked {
                refreshed: now,
                seen,
            },
        );
    }

    /// Notes a request for session `id` (the id clients use), for the idle bound. Costs one
    /// atomic load while no tracked session lacks a close hook (this crate's transport).
    #[inline]
    pub(crate) fn tracks_requests(&self) -> bool {
        self.unreported.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn touch(&self, id: &str) {
        if let Some(tracked) = self.live(id).get_mut(id)
            && let Some(seen) = &mut tracked.seen
        {
            *seen = Instant::now();
        }
    }

    /// How many sessions this node tracks.
    pub(crate) fn tracked(&self) -> usize {
        self.live.iter().map(|shard| lock_shard(shard).len()).sum()
    }
}

impl<R: RegistryStore> Core<R> {
    /// The store write an operation stands for.
    fn write<'a>(&'a self, op: &'a Op) -> StoreWrite<'a> {
        let id = &*op.id;
        match &op.kind {
            OpKind::Register(record, _) => StoreWrite::Register {
                id,
                record,
                ttl: self.ttl,
            },
            OpKind::Remove => StoreWrite::Remove { id },
            OpKind::RemoveIfOwned => StoreWrite::RemoveIfOwned {
                id,
                node: &self.node,
                incarnation: &self.incarnation,
            },
            OpKind::Refresh => StoreWrite::Refresh { id, ttl: self.ttl },
        }
    }

    /// Bookkeeping once an operation landed with result `done`.
    fn settle(&self, op: &Op, done: bool) {
        let id = &*op.id;
        match &op.kind {
            OpKind::Register(_, ends) => {
                if done {
                    self.counters.registered.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::registry_write(crate::metrics::Write::Register);
                    self.mark_live(id, *ends);
                } else {
                    tracing::warn!(node = %self.node, "a different record already exists for a new session id");
                }
            }
            OpKind::Remove | OpKind::RemoveIfOwned => {
                if done {
                    self.counters.removed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::registry_write(crate::metrics::Write::Remove);
                    if self.continuity.is_some() {
                        // The session is gone: its shared event log goes too.
                        self.events
                            .push(super::events::EventOp::Remove(op.id.clone()));
                    }
                }
                self.forget(id);
            }
            OpKind::Refresh => {
                if done {
                    self.counters.refreshed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::registry_write(crate::metrics::Write::Refresh);
                }
            }
        }
    }

    /// Applies `op` alone: the replay of a failed batch, or a retry. Either way an earlier
    /// attempt may have landed with its answer lost.
    async fn execute(&self, op: &Op) -> Result<(), super::StoreError> {
        let done = self.write(op).apply(&*self.store).await?;
        if !done && matches!(op.kind, OpKind::Remove) {
            // The record names the node index its session is listed in, and an unconditional
            // removal that landed unanswered took it along: finding no record now, the removal
            // cannot unlist the session. A compare-and-delete of this node's (no record: leave
            // the index) makes sure the session is not left in this node's index, where it is
            // listed when this node made it; another node's index is pruned when that node
            // restarts or as its entries expire.
            StoreWrite::RemoveIfOwned {
                id: &op.id,
                node: &self.node,
                incarnation: &self.incarnation,
            }
            .apply(&*self.store)
            .await?;
        }
        self.settle(op, done);
        Ok(())
    }
}

fn lock_shard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random factor in [0.5, 1.5) for jittered backoff.
fn jitter() -> f64 {
    0.5 + f64::from(getrandom::u32().unwrap_or(0x8000_0000)) / f64::from(u32::MAX)
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Operations one worker hands to the store at once (one `write_batch` call).
const IN_FLIGHT: usize = 64;

async fn worker<R: RegistryStore>(core: Weak<Core<R>>, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(IN_FLIGHT);
    let mut running = tokio::task::JoinSet::new();
    while rx.recv_many(&mut batch, IN_FLIGHT).await > 0 {
        let Some(c) = core.upgrade() else { return };
        // The fast path: the whole batch in one store call (two round trips to a Redis server).
        let landed = {
            let writes: Vec<StoreWrite<'_>> = batch.iter().map(|op| c.write(op)).collect();
            c.store.write_batch(&writes).await
        };
        match landed {
            Ok(results) if results.len() == batch.len() => {
                for (op, done) in batch.drain(..).zip(results) {
                    c.settle(&op, done);
                    c.op_done();
                }
                continue;
            }
            Ok(_) => {
                tracing::warn!(node = %c.node, "registry store answered a batch with a wrong number of results; replaying it");
            }
            Err(e) => {
                c.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                crate::metrics::store_error(crate::metrics::StoreOp::Write);
                tracing::debug!(error = %e, node = %c.node, "registry batch failed; replaying it write by write");
            }
        }
        drop(c);
        // The slow path: each session's operations replayed in order, each retried with backoff
        // until it lands (every write is idempotent when replayed in order).
        let groups = group_by_id(batch.iter().map(|op| &*op.id));
        let mut ops: Vec<Option<Op>> = batch.drain(..).map(Some).collect();
        for positions in groups {
            let group = positions
                .into_iter()
                .filter_map(|i| ops[i].take())
                .collect();
            running.spawn(run_in_order(core.clone(), group));
        }
        // The whole batch lands before the next one starts: that keeps per-session order across
        // batches.
        while running.join_next().await.is_some() {}
    }
}

/// Runs `ops` (all on one session id) one after the other, each retried until it lands.
async fn run_in_order<R: RegistryStore>(core: Weak<Core<R>>, ops: Vec<Op>) {
    for op in ops {
        if !run_with_retry(&core, &op).await {
            return;
        }
    }
}

/// Runs `op`, retrying with backoff and jitter while the store fails, until it lands or its
/// record would have expired anyway. Returns `false` when the registry is gone.
async fn run_with_retry<R: RegistryStore>(core: &Weak<Core<R>>, op: &Op) -> bool {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(c) = core.upgrade() else {
            return false;
        };
        match c.execute(op).await {
            Ok(()) => {
                c.op_done();
                return true;
            }
            Err(e) => {
                c.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                crate::metrics::store_error(crate::metrics::StoreOp::Write);
                c.counters.retries.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= op.deadline {
                    tracing::warn!(node = %c.node, "registry operation abandoned: the record has expired meanwhile");
                    c.op_done();
                    return true;
                }
                tracing::debug!(error = %e, node = %c.node, "registry operation failed; will retry");
            }
        }
        tokio::time::sleep(backoff.mul_f64(jitter())).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// An interval of `period` that delays missed ticks, past its first (immediate) tick.
async fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tick
}

/// Refreshes the TTL of long-lived sessions, rarely: once half the TTL has passed.
async fn refresher<R: RegistryStore>(core: Weak<Core<R>>) {
    let period = match core.upgrade() {
        Some(c) => (c.ttl / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        None => return,
    };
    let mut tick = ticker(period).await;
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        let now = Instant::now();
        let mut due: Vec<Arc<str>> = Vec::new();
        for shard in &c.live {
            due.extend(
                lock_shard(shard)
                    .iter_mut()
                    .filter(|(_, t)| now.duration_since(t.refreshed) >= c.ttl / 2)
                    .map(|(id, t)| {
                        t.refreshed = now;
                        id.clone()
                    }),
            );
        }
        for id in due {
            c.enqueue(&id, OpKind::Refresh);
        }
    }
}

/// Drops the sessions no close hook reports (an inner service of its own) once no request
/// came for them for the idle bound: their records are removed if this node still owns them.
/// An inner service's own expiry leaves no other trace, and without this the tracked set and
/// the refreshed records would grow for ever.
async fn idle_sweeper<R: RegistryStore>(core: Weak<Core<R>>) {
    let period = match core.upgrade() {
        Some(c) => (c.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60)),
        None => return,
    };
    let mut tick = ticker(period).await;
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        if !c.tracks_requests() {
            continue;
        }
        let now = Instant::now();
        let mut idle: Vec<Arc<str>> = Vec::new();
        for shard in &c.live {
            let mut live = lock_shard(shard);
            let start = idle.len();
            idle.extend(
                live.iter()
                    .filter(|(_, t)| {
                        t.seen
                            .is_some_and(|seen| now.duration_since(seen) >= c.idle_timeout)
                    })
                    .map(|(id, _)| id.clone()),
            );
            for id in &idle[start..] {
                live.remove(id);
            }
            crate::session::shrink_when_sparse(&mut live);
        }
        if idle.is_empty() {
            continue;
        }
        c.unreported.fetch_sub(idle.len(), Ordering::Relaxed);
        c.counters
            .idle_expired
            .fetch_add(idle.len() as u64, Ordering::Relaxed);
        tracing::debug!(node = %c.node, sessions = idle.len(), "idle sessions without a close hook dropped; their records are removed");
        for id in idle {
            c.enqueue(&id, OpKind::RemoveIfOwned);
        }
    }
}

/// A node restarted under the same name removes what its previous incarnations left,
/// retrying while the store is down.
async fn clean_previous_incarnations<R: RegistryStore>(core: Weak<Core<R>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(c) = core.upgrade() else { return };
        match c.store.remove_stale(&c.node, &c.incarnation, 256).await {
            Ok(0) => return,
            Ok(n) => {
                c.counters
                    .stale_removed
                    .fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(node = %c.node, removed = n, "removed records of a previous incarnation");
                backoff = BACKOFF_MIN;
                continue;
            }
            Err(e) => {
                c.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                crate::metrics::store_error(crate::metrics::StoreOp::Sweep);
                tracing::debug!(error = %e, "stale-record cleanup failed; will retry");
            }
        }
        drop(c);
        tokio::time::sleep(backoff.mul_f64(jitter())).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryStore;

    /// Many sessions registered and removed back to back: every operation lands, none is
    /// dropped, and no removal overtakes its registration (which would leave a record behind).
    #[tokio::test]
    async fn concurrent_batches_keep_each_sessions_order() {
        let store = Arc::new(MemoryStore::new());
        let core = Arc::new(Core::new(
            store.clone(),
            "n1".into(),
            "inc".into(),
            Duration::from_secs(600),
            4096,
        ));
        core.start();
        for i in 0..1000 {
            let id = format!("s{i}");
            core.enqueue(
                &id,
                OpKind::Register(SessionRecord::new("n1", "inc"), Ends::Hooked),
            );
            core.enqueue(&id, OpKind::RemoveIfOwned);
        }
        assert!(core.flush(Duration::from_secs(10)).await);
        let stats = core.counters.snapshot(core.pending(), core.tracked());
        assert_eq!(stats.dropped_ops, 0);
        assert_eq!(stats.registered, 1000);
        assert_eq!(stats.removed, 1000);
        assert!(store.is_empty(), "{} records left behind", store.len());
    }
}
