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
//!
//! With write-through ([`Durability::WriteThrough`],
//! [`with_event_log_durability`](super::SessionRegistryBuilder::with_event_log_durability)),
//! each queued event carries the transport's [`EventAck`]: the writer settles the acks of a
//! batch once the store took it, which lets the transport send those events. The write stays
//! the same batch, on the same task; the request path still only queues. A batch given up
//! after its attempts, and an event a full queue drops, release their acks unstored (counted
//! in [`events_dropped`](super::RegistryStats::events_dropped), with the same throttled
//! warning), so a store outage delays streams by at most the attempts' time, never for ever.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::{RegistryStore, store::EventWrite};
use crate::session::{Durability, EventAck, EventSink, LoggedEvent, SessionId};

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
    /// With write-through, the transport's ack, settled once the store holds the event
    /// (dropped unsettled: released).
    ack: Option<EventAck>,
}

impl Appended {
    fn new(event: LoggedEvent<'_>, ack: Option<EventAck>) -> Self {
        Self {
            stream: event.stream,
            seq: event.seq,
            ordinal: event.ordinal,
            last: event.last,
            data: event.data.clone(),
            ack,
        }
    }
}

#[derive(Debug)]
pub(crate) enum EventOp {
    /// The session's id is the transport's own (an `Arc` inside): queuing an event copies no
    /// id and allocates nothing but the queue slot. With write-through, the event's
    /// [`Appended::ack`].
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
    /// Whether the transport holds events back until written.
    pub(crate) durability: Durability,
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
            durability: Durability::WriteBehind,
        }
    }

    /// The same queue, for a transport that sends events written-behind or written-through.
    pub(crate) fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Queues `op` without waiting: a full queue drops it (and with it its ack, which
    /// releases its event unstored).
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
        let mut stored = false;
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
                    stored = true;
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
                    let released = queue.durability.is_write_through().then_some(writes.len());
                    tracing::warn!(error = %e, events = writes.len(), released, "shared event log write failed; events given up");
                }
            }
        }
        drop(writes);
        drop(removes);
        // Write-through: the transport may send what the store holds now. Given up, the acks
        // are dropped below, which releases their events unstored.
        for op in batch.drain(..) {
            if stored && let EventOp::Append(_, Appended { ack: Some(ack), .. }) = op {
                ack.stored();
            }
        }
        queue.done(n);
    }
}

/// The [`EventSink`] a session registry offers its transport
/// ([`RegistryHandle::event_sink`](super::RegistryHandle::event_sink)): every standalone
/// event goes onto the registry's bounded event queue, and from there, in batches and off the
/// request path, to the store, where a node adopting the session reads it back.
///
/// Its [`durability`](EventSink::durability) is the registry's
/// ([`with_event_log_durability`](super::SessionRegistryBuilder::with_event_log_durability)):
/// with write-through, the transport sends each event once the writer's batch carrying it is
/// stored.
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
        self.queue
            .push(EventOp::Append(session.clone(), Appended::new(event, None)));
    }

    fn durability(&self) -> Durability {
        self.queue.durability
    }

    fn record_write_through(&self, session: &SessionId, event: LoggedEvent<'_>, ack: EventAck) {
        self.queue.push(EventOp::Append(
            session.clone(),
            Appended::new(event, Some(ack)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::AtomicBool};
    use std::task::{Context, Waker};

    use super::*;
    use crate::registry::{SessionRecord, StoreError};
    use crate::session::Watermark;

    /// A store whose event writes fail while `down` is set, and record what they stored.
    #[derive(Debug, Default)]
    struct Flaky {
        down: AtomicBool,
        stored: Mutex<Vec<u32>>,
    }

    impl RegistryStore for Flaky {
        async fn register(
            &self,
            _: &str,
            _: &SessionRecord,
            _: Duration,
        ) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn lookup(&self, _: &str) -> Result<Option<SessionRecord>, StoreError> {
            Ok(None)
        }
        async fn remove(&self, _: &str) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn remove_if_owned(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn refresh(&self, _: &str, _: Duration) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn remove_stale(&self, _: &str, _: &str, _: usize) -> Result<usize, StoreError> {
            Ok(0)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn append_events(
            &self,
            events: &[EventWrite<'_>],
            _: usize,
            _: Duration,
        ) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("down"));
            }
            let mut stored = self.stored.lock().expect("lock");
            stored.extend(events.iter().map(|e| e.seq));
            Ok(())
        }
    }

    static DATA: Bytes = Bytes::from_static(b"{}");

    fn settled(mark: &Watermark, seq: u32) -> bool {
        mark.poll_settled(seq, &mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    fn setup(store: &Arc<Flaky>) -> (Arc<EventQueue>, RegistryEventSink) {
        let queue = Arc::new(EventQueue::new().with_durability(Durability::WriteThrough));
        let rx = queue.take_receiver().expect("receiver");
        tokio::spawn(writer(
            Arc::downgrade(store),
            Arc::downgrade(&queue),
            rx,
            Duration::from_secs(60),
        ));
        let sink = RegistryEventSink {
            queue: queue.clone(),
        };
        (queue, sink)
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_settles_acks_once_the_store_holds_the_batch() {
        let store = Arc::new(Flaky::default());
        let (queue, sink) = setup(&store);
        assert_eq!(sink.durability(), Durability::WriteThrough);
        let id = SessionId::parse("s1").expect("id");
        let mark = Arc::new(Watermark::new(0));
        for seq in 1..=3 {
            sink.record_write_through(
                &id,
                LoggedEvent::new(0, seq, u64::from(seq), &DATA),
                mark.ack(seq),
            );
        }
        assert!(!settled(&mark, 1), "queued, not yet stored");
        queue.drained().await;
        assert_eq!(*store.stored.lock().expect("lock"), [1, 2, 3]);
        assert!(settled(&mark, 3), "stored: the transport may send them");
        assert_eq!(queue.written.load(Ordering::Relaxed), 3);
        // The session's log goes away: its watermark goes with the last ack, nothing stays
        // behind in the registry.
        let weak = Arc::downgrade(&mark);
        drop(mark);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_given_up_releases_its_events_and_counts_them() {
        let store = Arc::new(Flaky::default());
        store.down.store(true, Ordering::SeqCst);
        let (queue, sink) = setup(&store);
        let id = SessionId::parse("s1").expect("id");
        let mark = Arc::new(Watermark::new(0));
        sink.record_write_through(&id, LoggedEvent::new(0, 1, 1, &DATA), mark.ack(1));
        // Every attempt fails (the paused clock runs the backoff): given up, released.
        queue.drained().await;
        assert!(store.stored.lock().expect("lock").is_empty());
        assert!(settled(&mark, 1), "released unstored: never held for ever");
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 1);
        // The store is back: the next event is held until stored, as before.
        store.down.store(false, Ordering::SeqCst);
        sink.record_write_through(&id, LoggedEvent::new(0, 2, 2, &DATA), mark.ack(2));
        assert!(!settled(&mark, 2));
        queue.drained().await;
        assert!(settled(&mark, 2));
        assert_eq!(*store.stored.lock().expect("lock"), [2]);
    }

    #[test]
    fn a_full_queue_releases_the_event_it_drops() {
        let queue = EventQueue::new().with_durability(Durability::WriteThrough);
        let mark = Arc::new(Watermark::new(0));
        let id = SessionId::parse("s1").expect("id");
        let op = |seq: u32| {
            let ev = LoggedEvent::new(0, seq, u64::from(seq), &DATA);
            EventOp::Append(id.clone(), Appended::new(ev, Some(mark.ack(seq))))
        };
        for seq in 1..=CAPACITY as u32 {
            queue.push(op(seq));
        }
        let last = CAPACITY as u32 + 1;
        queue.push(op(last));
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 1);
        assert!(settled(&mark, last), "dropped: released");
        assert!(!settled(&mark, last - 1), "the queued ones still wait");
    }

    #[test]
    fn write_behind_is_the_default() {
        let queue = Arc::new(EventQueue::new());
        let sink = RegistryEventSink { queue };
        assert_eq!(sink.durability(), Durability::WriteBehind);
    }
}
