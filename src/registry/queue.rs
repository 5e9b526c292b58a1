//! The registry's write path: ordered, retried, bounded.
//!
//! Every store write (register, remove, refresh) goes through a small set of ordered queues,
//! sharded by session id so the operations on one session keep their order (a `DELETE` right
//! after `initialize` never overtakes its registration). A worker retries the head of its queue
//! with exponential backoff and jitter while the store is down, until it succeeds or the record
//! would have expired anyway. Enqueuing never waits and never fails the request: when a queue
//! is full the operation is dropped and counted, and the record's TTL cleans up.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{RegistryStore, SessionRecord, stats::Counters};

pub(crate) const SHARDS: usize = 4;

#[derive(Debug)]
pub(crate) enum OpKind {
    Register(SessionRecord),
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
    /// Sessions this node registered, with when their TTL was last set (for refreshes).
    live: Mutex<HashMap<Arc<str>, Instant>>,
}

impl<R: RegistryStore> Core<R> {
    pub(crate) fn new(
        store: Arc<R>,
        node: Arc<str>,
        incarnation: Arc<str>,
        ttl: Duration,
        capacity: usize,
    ) -> Self {
        let per_shard = (capacity / SHARDS).max(1);
        let (senders, receivers) = (0..SHARDS).map(|_| mpsc::channel(per_shard)).unzip();
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
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn with_options(mut self, fail_closed: bool, lookup_timeout: Duration) -> Self {
        self.fail_closed = fail_closed;
        self.lookup_timeout = lookup_timeout;
        self
    }

    /// Starts the workers, the refresher and the stale-record cleanup: once, and only from
    /// within a Tokio runtime (outside one it does nothing and a later call starts them).
    pub(crate) fn start(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let receivers = self
            .receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(receivers) = receivers else { return };
        for rx in receivers {
            tokio::spawn(worker(Arc::downgrade(self), rx));
        }
        tokio::spawn(refresher(Arc::downgrade(self)));
        tokio::spawn(clean_previous_incarnations(Arc::downgrade(self)));
    }

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
        if self.senders[shard].try_send(op).is_err() {
            self.op_done();
            self.counters.dropped_ops.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.node, "registry queue full: operation dropped (the record's TTL will clean up)");
        }
    }

    fn op_done(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every queued operation has landed (or was given up), at most `timeout`.
    /// Returns whether the queues are empty.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    pub(crate) fn forget(&self, id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
            .is_some()
    }

    pub(crate) fn mark_live(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.into(), Instant::now());
    }

    async fn execute(&self, op: &Op) -> Result<(), super::StoreError> {
        let id = &*op.id;
        match &op.kind {
            OpKind::Register(record) => {
                if self.store.register(id, record, self.ttl).await? {
                    self.counters.registered.fetch_add(1, Ordering::Relaxed);
                    self.mark_live(id);
                } else {
                    tracing::warn!(node = %self.node, "a different record already exists for a new session id");
                }
            }
            OpKind::Remove => {
                if self.store.remove(id).await? {
                    self.counters.removed.fetch_add(1, Ordering::Relaxed);
                }
                self.forget(id);
            }
            OpKind::RemoveIfOwned => {
                if self
                    .store
                    .remove_if_owned(id, &self.node, &self.incarnation)
                    .await?
                {
                    self.counters.removed.fetch_add(1, Ordering::Relaxed);
                }
                self.forget(id);
            }
            OpKind::Refresh => {
                if self.store.refresh(id, self.ttl).await? {
                    self.counters.refreshed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// A random factor in [0.5, 1.5) for jittered backoff.
fn jitter() -> f64 {
    0.5 + f64::from(getrandom::u32().unwrap_or(0x8000_0000)) / f64::from(u32::MAX)
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn worker<R: RegistryStore>(core: Weak<Core<R>>, mut rx: mpsc::Receiver<Op>) {
    while let Some(op) = rx.recv().await {
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(c) = core.upgrade() else { return };
            match c.execute(&op).await {
                Ok(()) => {
                    c.op_done();
                    break;
                }
                Err(e) => {
                    c.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    c.counters.retries.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= op.deadline {
                        tracing::warn!(node = %c.node, "registry operation abandoned: the record has expired meanwhile");
                        c.op_done();
                        break;
                    }
                    tracing::debug!(error = %e, node = %c.node, "registry operation failed; will retry");
                }
            }
            drop(core.upgrade());
            tokio::time::sleep(backoff.mul_f64(jitter())).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Refreshes the TTL of long-lived sessions, rarely: once half the TTL has passed.
async fn refresher<R: RegistryStore>(core: Weak<Core<R>>) {
    let period = match core.upgrade() {
        Some(c) => (c.ttl / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<Arc<str>> = {
            let mut live = c
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            live.iter_mut()
                .filter(|(_, at)| now.duration_since(**at) >= c.ttl / 2)
                .map(|(id, at)| {
                    *at = now;
                    id.clone()
                })
                .collect()
        };
        for id in due {
            c.enqueue(&id, OpKind::Refresh);
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
                tracing::debug!(error = %e, "stale-record cleanup failed; will retry");
            }
        }
        drop(c);
        tokio::time::sleep(backoff.mul_f64(jitter())).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
