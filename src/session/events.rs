//! A session's SSE events beyond one node: what the transport reports as it appends them
//! ([`EventSink`], [`LoggedEvent`]) and what an adopting node hands back ([`StoredEvents`]).
//!
//! A legacy client resuming a stream with `Last-Event-ID: <stream>-N` may land on another
//! node than the one that sent it the events up to `N`: its standalone `GET` stream (stream
//! 0), or the SSE answer of a `POST` whose connection broke. The transport reports every
//! event of a session's streams to an [`EventSink`], if one is set
//! ([`with_event_sink`](crate::transport::SseTransportBuilder::with_event_sink)); the session
//! registry offers one that writes them to its store in batches, off the request path. The
//! node that adopts the session reads them back and passes them down in the
//! [`RestoreSession`](super::RestoreSession) ([`with_events`](super::RestoreSession::with_events),
//! [`with_request_events`](super::RestoreSession::with_request_events)), so the restored log
//! replays exactly the events after `N`.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

use super::SessionId;

/// When the transport sends an event of a standalone stream, relative to its sink storing it:
/// what [`EventSink::durability`] answers, and what the session registry's event log is
/// configured with
/// ([`SessionRegistryBuilder::with_event_log_durability`](crate::registry::SessionRegistryBuilder::with_event_log_durability)).
///
/// - [`WriteBehind`](Self::WriteBehind) (the default): at once; the sink stores it later. A
///   node killed outright (`SIGKILL`, a crash) may have sent events its sink had not stored
///   yet: a client that saw them and resumes elsewhere finds them missing from the store.
/// - [`WriteThrough`](Self::WriteThrough): once the sink reports it stored. The transport
///   hands the sink an [`EventAck`] with each event ([`EventSink::record_write_through`]) and
///   its SSE body holds the event (and the stream's later ones) back until the sink settles
///   it, so every event a client has seen, or could ask for again with `Last-Event-ID`, is in
///   the store. A crash still loses the events produced and not yet stored, but none of them
///   was sent. Only the stream waits: appending an event (a handler's `notify`) never does.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::Durability;
///
/// assert_eq!(Durability::default(), Durability::WriteBehind);
/// assert!(Durability::WriteThrough.is_write_through());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Send at once; the sink stores the event in the background. A crash of the node may
    /// lose events its clients have already seen.
    #[default]
    WriteBehind,
    /// Send once the sink reports the event stored (or gave it up): no client ever sees an
    /// event the store does not hold. Adds the store's write latency to each event's delivery.
    WriteThrough,
}

impl Durability {
    /// Whether events wait for the store.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::Durability;
    ///
    /// assert!(!Durability::WriteBehind.is_write_through());
    /// ```
    #[must_use]
    pub const fn is_write_through(self) -> bool {
        matches!(self, Self::WriteThrough)
    }
}

/// One event as the transport appended it to a session's log, reported to an [`EventSink`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mcp_affinity::session::LoggedEvent;
///
/// let data = Bytes::from_static(b"{}");
/// let ev = LoggedEvent::new(0, 3, 7, &data);
/// assert_eq!((ev.stream, ev.seq, ev.ordinal, ev.last), (0, 3, 7, false));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LoggedEvent<'a> {
    /// The stream: 0 for the standalone `GET` stream, another id for a `POST`'s SSE answer.
    pub stream: u32,
    /// Its sequence number in the stream (its SSE id is `<stream>-<seq>`).
    pub seq: u32,
    /// Its place among all the events of the session's log, every stream together: one more
    /// than the event before, and, on a restored session, above every ordinal stored before.
    pub ordinal: u64,
    /// Whether it ends its stream (a `POST`'s answer).
    pub last: bool,
    /// The JSON-RPC message, as sent in the SSE `data:` field.
    pub data: &'a Bytes,
}

impl<'a> LoggedEvent<'a> {
    /// An event of `stream`, not ending it.
    #[must_use]
    pub fn new(stream: u32, seq: u32, ordinal: u64, data: &'a Bytes) -> Self {
        Self {
            stream,
            seq,
            ordinal,
            last: false,
            data,
        }
    }

    /// The same event, ending its stream if `last`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_affinity::session::LoggedEvent;
    ///
    /// let data = Bytes::from_static(b"{}");
    /// assert!(LoggedEvent::new(4, 2, 9, &data).with_last(true).last);
    /// ```
    #[must_use]
    pub fn with_last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }
}

/// Receives every event appended to a session's log, in order, with its stream, sequence
/// number and ordinal ([`LoggedEvent`]).
///
/// Called while the session's event log is locked, so that events reach the sink in the
/// order they were numbered: an implementation must not block or wait (queue the event, or
/// drop it). It must not call back into the session.
///
/// A sink that answers [`Durability::WriteThrough`] from [`durability`](Self::durability)
/// gets [`record_write_through`](Self::record_write_through) instead of
/// [`record`](Self::record) for the events of the standalone stream, with an [`EventAck`]
/// to settle once the event is stored; the
/// default implementations make every existing sink write-behind.
///
/// # Example
///
/// ```
/// use std::sync::Mutex;
/// use bytes::Bytes;
/// use mcp_affinity::session::{EventSink, LoggedEvent, SessionId};
///
/// #[derive(Debug, Default)]
/// struct Recorder(Mutex<Vec<(String, u32, u32)>>);
///
/// impl EventSink for Recorder {
///     fn record(&self, session: &SessionId, event: LoggedEvent<'_>) {
///         if let Ok(mut v) = self.0.lock() {
///             v.push((session.as_str().to_owned(), event.stream, event.seq));
///         }
///     }
/// }
///
/// let r = Recorder::default();
/// let data = Bytes::from_static(b"{}");
/// r.record(&SessionId::parse("s1").unwrap(), LoggedEvent::new(0, 1, 1, &data));
/// assert_eq!(r.0.lock().unwrap()[0], ("s1".to_owned(), 0, 1));
/// ```
///
/// A write-through sink keeps each [`EventAck`] with its event and settles it once stored:
///
/// ```
/// use std::sync::Mutex;
/// use bytes::Bytes;
/// use mcp_affinity::session::{Durability, EventAck, EventSink, LoggedEvent, SessionId};
///
/// #[derive(Debug, Default)]
/// struct Queued(Mutex<Vec<(u32, Bytes, EventAck)>>);
///
/// impl Queued {
///     /// Called by the sink's own writer once the store holds the queued events.
///     fn stored(&self) {
///         let done: Vec<_> = self.0.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
///         for (_seq, _data, ack) in done {
///             ack.stored(); // the transport may send it now
///         }
///     }
/// }
///
/// impl EventSink for Queued {
///     fn record(&self, _session: &SessionId, _event: LoggedEvent<'_>) {}
///
///     fn durability(&self) -> Durability {
///         Durability::WriteThrough
///     }
///
///     fn record_write_through(&self, _session: &SessionId, ev: LoggedEvent<'_>, ack: EventAck) {
///         if let Ok(mut q) = self.0.lock() {
///             q.push((ev.seq, ev.data.clone(), ack));
///         } // else the ack is dropped: the event is released unstored, never held for ever
///     }
/// }
///
/// let transport = mcp_affinity::SseTransportLayer::builder()
///     .with_event_sink(Queued::default())
///     .build();
/// assert!(transport.is_ok());
/// ```
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// One event of one of `session`'s streams.
    fn record(&self, session: &SessionId, event: LoggedEvent<'_>);

    /// Whether the transport sends an event of the standalone stream at once
    /// ([`Durability::WriteBehind`], the default) or holds it back until the sink settles its
    /// [`EventAck`] ([`Durability::WriteThrough`]). Asked once per session, when its event
    /// log is made. Events of `POST` answers are never held (their request's own answer is
    /// one of them).
    fn durability(&self) -> Durability {
        Durability::WriteBehind
    }

    /// One event of `session`'s standalone stream under [`Durability::WriteThrough`]: as
    /// [`record`](Self::record), with the `ack` to settle once the store holds the event
    /// ([`EventAck::stored`]). The transport does not send the event (nor any later one of
    /// the stream) before. Dropping `ack` unsettled (the event was dropped, or its write
    /// given up) releases that event alone, unstored. The default records the event and
    /// settles it at once: write-behind.
    fn record_write_through(&self, session: &SessionId, event: LoggedEvent<'_>, ack: EventAck) {
        self.record(session, event);
        ack.stored();
    }
}

impl<T: EventSink + ?Sized> EventSink for Arc<T> {
    fn record(&self, session: &SessionId, event: LoggedEvent<'_>) {
        T::record(self, session, event);
    }

    fn durability(&self) -> Durability {
        T::durability(self)
    }

    fn record_write_through(&self, session: &SessionId, event: LoggedEvent<'_>, ack: EventAck) {
        T::record_write_through(self, session, event, ack);
    }
}

/// The transport's hold on one event of a write-through standalone stream
/// ([`EventSink::record_write_through`]): the event is not sent until it is settled.
/// [`stored`](Self::stored) says the store holds it (and every earlier event of the stream
/// that was handed over before it); dropping it unsettled releases that event alone,
/// unstored (the sink dropped it, or gave its write up), so a stream is never held for ever.
///
/// It holds a reference to its session's watermark, nothing else: it costs an `Arc` clone,
/// and keeping it after the session ended keeps one small allocation alive.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{Durability, EventAck, EventSink, LoggedEvent, SessionId};
///
/// /// Stores synchronously (a local file, say), then lets the transport send.
/// #[derive(Debug)]
/// struct Synchronous;
///
/// impl EventSink for Synchronous {
///     fn record(&self, _session: &SessionId, _event: LoggedEvent<'_>) {}
///
///     fn durability(&self) -> Durability {
///         Durability::WriteThrough
///     }
///
///     fn record_write_through(&self, session: &SessionId, ev: LoggedEvent<'_>, ack: EventAck) {
///         assert_eq!(ack.seq(), ev.seq);
///         self.record(session, ev);
///         ack.stored();
///     }
/// }
/// # let _ = Synchronous;
/// ```
#[must_use = "dropping an EventAck releases its event unstored"]
pub struct EventAck {
    mark: Option<Arc<Watermark>>,
    seq: u32,
}

impl fmt::Debug for EventAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventAck")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl EventAck {
    /// The sequence number of the event it holds.
    ///
    /// See [`EventAck`] for an example.
    #[must_use]
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The store holds the event: the transport may send it. Acks of one session must be
    /// settled in the order the sink got them (a sink that stores in order does): settling
    /// `0-N` also settles every earlier event of the stream.
    ///
    /// See [`EventAck`] for an example.
    pub fn stored(mut self) {
        if let Some(mark) = self.mark.take() {
            mark.advance(self.seq);
        }
    }
}

impl Drop for EventAck {
    fn drop(&mut self) {
        if let Some(mark) = self.mark.take() {
            mark.skip(self.seq);
        }
    }
}

/// Past this many separate runs of released (unstored) events above the stored mark, a
/// watermark releases everything up to the highest of them: the sink's queue is overloaded
/// and dropping, and the bookkeeping stays bounded.
const MAX_GAPS: usize = 64;

/// How far the store holds one write-through standalone stream: owned by the session's event
/// log, shared with the [`EventAck`]s of its events still on their way to the store. The
/// stream's reader asks it before each event ([`poll_settled`](Self::poll_settled)).
#[derive(Debug)]
pub(crate) struct Watermark {
    /// Every event up to this one is settled (stored, or released).
    settled: AtomicU32,
    state: Mutex<MarkState>,
}

#[derive(Debug, Default)]
struct MarkState {
    /// Runs `(first, last)` of events above `settled` released unstored: their acks were
    /// dropped while earlier events were still on their way.
    gaps: Vec<(u32, u32)>,
    /// The stream's reader, waiting for an event (one reader per stream).
    waker: Option<Waker>,
}

impl Watermark {
    /// A watermark with every event up to `floor` settled (a restored stream's events came
    /// from the store).
    pub(crate) fn new(floor: u32) -> Self {
        Self {
            settled: AtomicU32::new(floor),
            state: Mutex::new(MarkState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MarkState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ack of event `seq`, for the sink.
    pub(crate) fn ack(self: &Arc<Self>, seq: u32) -> EventAck {
        EventAck {
            mark: Some(self.clone()),
            seq,
        }
    }

    /// Ready when event `seq` may be sent (it is stored, or released); otherwise `cx` is
    /// woken when that may have changed.
    pub(crate) fn poll_settled(&self, seq: u32, cx: &mut Context<'_>) -> Poll<()> {
        if self.settled.load(Ordering::Acquire) >= seq {
            return Poll::Ready(());
        }
        let mut s = self.lock();
        // Again under the lock: `advance` and `skip` take the waker under it after their
        // change, so either this sees the change or they see this waker.
        if self.settled.load(Ordering::Acquire) >= seq
            || s.gaps.iter().any(|&(a, b)| (a..=b).contains(&seq))
        {
            return Poll::Ready(());
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Every event up to `seq` is stored.
    fn advance(&self, seq: u32) {
        if self.settled.fetch_max(seq, Ordering::AcqRel) >= seq {
            return;
        }
        let waker = {
            let mut s = self.lock();
            self.fold(&mut s);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves the mark over the released runs that now follow it, and forgets those below.
    fn fold(&self, s: &mut MarkState) {
        loop {
            let settled = self.settled.load(Ordering::Acquire);
            s.gaps.retain(|&(_, last)| last > settled);
            let next = settled.saturating_add(1);
            match s.gaps.iter().position(|&(first, _)| first <= next) {
                Some(i) => {
                    let (_, last) = s.gaps.swap_remove(i);
                    self.settled.fetch_max(last, Ordering::AcqRel);
                }
                None => return,
            }
        }
    }

    /// Event `seq` will not be stored: release it alone.
    fn skip(&self, seq: u32) {
        if self.settled.load(Ordering::Acquire) >= seq {
            return;
        }
        let waker = {
            let mut s = self.lock();
            if let Some(run) = s
                .gaps
                .iter_mut()
                .find(|(a, b)| b.checked_add(1) == Some(seq) || a.checked_sub(1) == Some(seq))
            {
                run.0 = run.0.min(seq);
                run.1 = run.1.max(seq);
            } else if s.gaps.len() < MAX_GAPS {
                s.gaps.push((seq, seq));
            } else {
                let top = s.gaps.iter().map(|&(_, b)| b).fold(seq, u32::max);
                s.gaps.clear();
                self.settled.fetch_max(top, Ordering::AcqRel);
            }
            self.fold(&mut s);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// An event of a `POST`'s SSE answer as the store kept it (see [`StoredEvents::requests`]).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mcp_affinity::session::RequestEvent;
///
/// let ev = RequestEvent::new(3, 1, Bytes::from_static(b"{}")).with_last(true);
/// assert_eq!((ev.stream, ev.seq, ev.last), (3, 1, true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestEvent {
    /// The stream (the `POST`'s answer), never 0.
    pub stream: u32,
    /// The event's sequence number in it.
    pub seq: u32,
    /// Whether it ended the stream (the answer itself).
    pub last: bool,
    /// The JSON-RPC message.
    pub data: Bytes,
}

impl RequestEvent {
    /// An event of `stream`, not its last.
    #[must_use]
    pub fn new(stream: u32, seq: u32, data: Bytes) -> Self {
        Self {
            stream,
            seq,
            last: false,
            data,
        }
    }

    /// The same event, the last of its stream if `last`.
    #[must_use]
    pub fn with_last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }
}

/// The events of a session as the store kept them, read when it was adopted: see
/// [`RestoreSession::with_events`](super::RestoreSession::with_events) and
/// [`with_request_events`](super::RestoreSession::with_request_events).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoredEvents {
    /// The last sequence number the client reported (`Last-Event-ID: 0-<after>`), if any.
    pub after: Option<u32>,
    /// The highest sequence number the store held for the session (0: none).
    pub top: u32,
    /// The events after `after` (all of them without it), in order of sequence number
    /// (there may be gaps where the store trimmed). Without `after`, a plain `GET` starts
    /// after them, and a later `Last-Event-ID` resumption replays them.
    pub events: Vec<(u32, Bytes)>,
    /// The highest ordinal the store held ([`LoggedEvent::ordinal`]): the restored log
    /// numbers its events' ordinals after it.
    pub ordinal: u64,
    /// The events of `POST` answers the store kept, in the order they were logged: the
    /// restored log holds them as ended streams, which a `GET` with `Last-Event-ID:
    /// <stream>-<seq>` replays from `seq` on (then the stream ends: the request ran on
    /// another node).
    pub requests: Vec<RequestEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    fn woken(c: &Count) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    fn ready(mark: &Watermark, seq: u32) -> bool {
        mark.poll_settled(seq, &mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn a_stored_ack_wakes_the_reader_and_settles_every_earlier_event() {
        let mark = Arc::new(Watermark::new(0));
        let (a1, a2, a3) = (mark.ack(1), mark.ack(2), mark.ack(3));
        let (count, w) = waker();
        assert!(
            mark.poll_settled(1, &mut Context::from_waker(&w))
                .is_pending()
        );
        assert_eq!(woken(&count), 0);
        a2.stored();
        assert_eq!(woken(&count), 1, "woken by the advance");
        assert!(ready(&mark, 1) && ready(&mark, 2), "stored up to 2");
        assert!(!ready(&mark, 3));
        // An ack settled late (stored with a later one) changes nothing.
        a1.stored();
        assert!(!ready(&mark, 3));
        a3.stored();
        assert!(ready(&mark, 3));
    }

    #[test]
    fn a_dropped_ack_releases_its_event_alone() {
        let mark = Arc::new(Watermark::new(0));
        let (a1, a2, a3) = (mark.ack(1), mark.ack(2), mark.ack(3));
        let (count, w) = waker();
        assert!(
            mark.poll_settled(2, &mut Context::from_waker(&w))
                .is_pending()
        );
        // Event 2 was given up (or dropped by a full queue) while 1 is still on its way.
        drop(a2);
        assert_eq!(woken(&count), 1, "the reader waiting for 2 is woken");
        assert!(ready(&mark, 2), "2 is released");
        assert!(!ready(&mark, 1), "1 still waits for the store");
        assert!(!ready(&mark, 3));
        // Adjacent releases join one run; a store advance clears the runs below it.
        drop(a3);
        assert!(ready(&mark, 3));
        a1.stored();
        assert!(ready(&mark, 1));
        assert!(
            mark.lock().gaps.is_empty(),
            "nothing to remember below the mark"
        );
    }

    #[test]
    fn an_overloaded_watermark_stays_bounded_and_releases() {
        let mark = Arc::new(Watermark::new(0));
        // Every other event released unstored while the ones between are still queued.
        let kept: Vec<EventAck> = (1..=2 * MAX_GAPS as u32 + 2)
            .filter_map(|seq| {
                let ack = mark.ack(seq);
                (seq % 2 == 1).then_some(ack)
            })
            .collect();
        assert!(mark.lock().gaps.len() <= MAX_GAPS);
        assert!(
            ready(&mark, 2 * MAX_GAPS as u32),
            "past the bound everything up to the highest release goes"
        );
        drop(kept);
        assert!(ready(&mark, 2 * MAX_GAPS as u32 + 2));
    }

    #[test]
    fn a_restored_floor_is_settled_and_the_watermark_dies_with_its_acks() {
        let mark = Arc::new(Watermark::new(8));
        assert!(
            ready(&mark, 8),
            "events read back from the store are stored"
        );
        assert!(!ready(&mark, 9));
        let ack = mark.ack(9);
        let weak = Arc::downgrade(&mark);
        drop(mark); // the session's log is gone
        assert!(weak.upgrade().is_some(), "an ack on its way keeps it");
        ack.stored();
        assert!(weak.upgrade().is_none(), "nothing left behind");
    }

    #[test]
    fn the_default_sink_methods_are_write_behind() {
        #[derive(Debug, Default)]
        struct Plain(AtomicUsize);
        impl EventSink for Plain {
            fn record(&self, _: &SessionId, _: LoggedEvent<'_>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sink = Arc::new(Plain::default());
        assert_eq!(sink.durability(), Durability::WriteBehind);
        let mark = Arc::new(Watermark::new(0));
        let id = SessionId::parse("s1").expect("id");
        let data = Bytes::new();
        sink.record_write_through(&id, LoggedEvent::new(0, 1, 1, &data), mark.ack(1));
        assert_eq!(sink.0.load(Ordering::SeqCst), 1, "recorded");
        assert!(ready(&mark, 1), "and settled at once");
    }
}
