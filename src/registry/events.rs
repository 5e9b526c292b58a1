//! The registry's side of the shared event log: a bounded queue of the events the transport
//! reports (every stream of a legacy session) ([`RegistryEventSink`]), drained by one background writer
//! that hands them to the store in batches ([`RegistryStore::append_events`]).
//!
//! Nothing here is on the request path: the transport's report is a `try_send` (a full queue
//! drops the event and counts it, never waits), and the writer batches whatever is queued (up
//! to [`BATCH`] events) into one store call, one Redis round trip. [`Core::flush`](super::queue::Core::flush)
//! waits for the queue, so a graceful drain keeps every event; a process killed outright
//! loses what was queued and not yet written: the batch in flight and what queued behind it
//! during its round trip (a full batch of 512 took p50 3 ms, p99 4–7 ms on a local
//! `redis-server`; see the measurement in `tests/event_log.rs`).

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::{RegistryStore, store::EventWrite};
use crate::session::{EventSink, LoggedEvent, SessionId};

/// The most events one store call carries.
pub(crate) const BATCH: usize = 512;
/// Events queued at most; beyond it they are dropped (and counted).
pub(crate) const CAPACITY: usize = 65_536;
/// How many events the store keeps per session (about: Redis trims by whole nodes): the
/// transport's default log bound.
pub(crate) const MAX_LEN: usize = 256;
/// How often a failed batch is tried again before it is given up.
const ATTEMPTS: u32 = 4;

/// One event as queued: what [`EventWrite`] borrows.
#[derive(Debug)]
pub(crate) struct Appended {
    stream: u32,
    seq: u32,
    ordinal: u64,
    last: bool,
    data: Bytes,
}

#[derive(Debug)]
pub(crate) enum EventOp {
    /// The session's id is the transport's own (an `Arc` inside): queuing an event copies no
    /// id and allocates nothing but the queue slot.
    Append(SessionId, Appended),
    Remove(Arc<str>),
}

/// The queue, shared by the sinks and the writer.
#[derive(Debug)]
pub(crate) struct EventQueue {
    tx: mpsc::Sender<EventOp>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<EventOp>>>,
    pending: AtomicU64,
    drained: Notify,
    pub(crate) dropped: AtomicU64,
    pub(crate) written: AtomicU64,
    full_warning: crate::throttle::Throttle,
}

impl EventQueue {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            pending: AtomicU64::new(0),
            drained: Notify::new(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            full_warning: crate::throttle::Throttle::new(),
        }
    }

    /// Queues `op` without waiting: a full queue drops it.
    pub(crate) fn push(&self, op: EventOp) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(op).is_err() {
            self.done(1);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            crate::metrics::event_log_dropped(1);
            if self.full_warning.ready() {
                tracing::warn!(dropped, "registry event queue full: events dropped");
            }
        }
    }

    fn done(&self, n: u64) {
        if n > 0 && self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until the queue is empty (every event written or given up).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The writer's receiving end, once.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<EventOp>> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Drains the queue into the store until the registry is gone.
pub(crate) async fn writer<R: RegistryStore>(
    store: Weak<R>,
    queue: Weak<EventQueue>,
    mut rx: mpsc::Receiver<EventOp>,
    ttl: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (Some(store), Some(queue)) = (store.upgrade(), queue.upgrade()) else {
            return;
        };
        let n = batch.len() as u64;
        let writes: Vec<EventWrite<'_>> = batch
            .iter()
            .filter_map(|op| match op {
                EventOp::Append(id, ev) => Some(EventWrite {
                    id: id.as_str(),
                    stream: ev.stream,
                    seq: ev.seq,
                    ordinal: ev.ordinal,
                    last: ev.last,
                    data: &ev.data,
                }),
                EventOp::Remove(_) => None,
            })
            .collect();
        let removes: Vec<&str> = batch
            .iter()
            .filter_map(|op| match op {
                EventOp::Remove(id) => Some(&**id),
                EventOp::Append(..) => None,
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=ATTEMPTS {
            let appended = if writes.is_empty() {
                Ok(())
            } else {
                store.append_events(&writes, MAX_LEN, ttl).await
            };
            let removed = match appended {
                Ok(()) if !removes.is_empty() => store.remove_events(&removes).await,
                other => other,
            };
            match removed {
                Ok(()) => {
                    queue
                        .written
                        .fetch_add(writes.len() as u64, Ordering::Relaxed);
                    crate::metrics::event_log_written(writes.len() as u64);
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, "shared event log write failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    queue
                        .dropped
                        .fetch_add(writes.len() as u64, Ordering::Relaxed);
                    crate::metrics::event_log_dropped(writes.len() as u64);
                    tracing::warn!(error = %e, events = writes.len(), "shared event log write failed; events given up");
                }
            }
        }
        drop(writes);
        drop(removes);
        batch.clear();
        queue.done(n);
    }
}

/// The [`EventSink`] a session registry offers its transport
/// ([`RegistryHandle::event_sink`](super::RegistryHandle::event_sink)): every standalone
/// event goes onto the registry's bounded event queue, and from there, in batches and off the
/// request path, to the store, where a node adopting the session reads it back.
///
/// # Example
///
/// ```
/// use mcp_affinity::{SseTransportLayer, registry::{MemoryStore, SessionRegistryLayer}};
///
/// let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
/// let transport = SseTransportLayer::builder()
///     .with_event_sink(registry.handle().event_sink())
///     .build()
///     .unwrap();
/// # let _ = transport;
/// ```
#[derive(Debug, Clone)]
pub struct RegistryEventSink {
    pub(crate) queue: Arc<EventQueue>,
}

impl EventSink for RegistryEventSink {
    fn record(&self, session: &SessionId, event: LoggedEvent<'_>) {
        self.queue.push(EventOp::Append(
            session.clone(),
            Appended {
                stream: event.stream,
                seq: event.seq,
                ordinal: event.ordinal,
                last: event.last,
                data: event.data.clone(),
            },
        ));
    }
}
