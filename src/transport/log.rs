//! The bounded event log behind every SSE stream.
//!
//! A legacy session owns one log shared by all its streams (the standalone GET stream is
//! stream 0, every POST that streams gets its own id); a modern request owns a private log with
//! one stream. Events are appended once, in order, and read by at most one connection per
//! stream through a [`Cursor`]. The log is bounded by event count and bytes: the oldest events
//! are evicted first, so a client that never reads cannot grow memory. Events stay after
//! delivery until evicted so that `GET` + `Last-Event-ID` can replay them.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

/// The standalone (GET) stream of a session.
pub(crate) const STANDALONE: u32 = 0;

/// The first POST stream id of a restored session's log: random in `[2^20, 2^31)`, far from
/// the small ids the session's former node numbered from 1.
fn restored_stream_base() -> u32 {
    // Without a random source, still far from 1; only the spread is lost.
    let r = getrandom::u32().unwrap_or(1 << 30);
    (r & ((1 << 31) - 1)).max(1 << 20)
}

/// Hashes the stream ids of one log. They are small sequential numbers this log assigns (never
/// chosen by a client), so a multiplicative hash spreads them well and needs none of SipHash's
/// flooding resistance; several lookups happen per request and per delivered event.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Multiplying by an odd constant permutes the low bits (the bucket index) of
        // sequential ids, and mixes every bit of `n` into the high bits (the control tag).
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Bounds of one log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogLimits {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
}

#[derive(Debug)]
struct Event {
    stream: u32,
    seq: u32,
    last: bool,
    /// When it was appended (for pruning replay data).
    at: Instant,
    data: Bytes,
}

/// Where a POST stream is in choosing its wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The handler has sent nothing yet; the answer may still be plain JSON.
    Pending,
    /// Something was streamed: the answer is SSE.
    Sse,
    /// The answer went out as JSON; the stream is gone.
    Json,
}

#[derive(Debug)]
struct Stream {
    next_seq: u32,
    delivered: u32,
    live: usize,
    phase: Phase,
    finished: bool,
    reader: u64,
    /// The reader's waker. A stream has two waiters at most, each with its own slot: its
    /// reader, and the POST future that waits for the stream's phase (a `Last-Event-ID` reader
    /// can attach while that POST still waits), so neither can take the other's wake-up.
    waker: Option<Waker>,
    /// The waker of the POST future waiting in [`EventLog::poll_phase`].
    phase_waker: Option<Waker>,
    /// The server asked to close the connection before any reader attached: the next
    /// (non-resuming) reader delivers what is there and ends.
    detach_pending: bool,
    /// The reader told to end (the node drains): it delivers what is there, then ends with
    /// this reconnect hint. A reader attached later is not affected.
    end_reader: Option<(u64, Duration)>,
}

impl Stream {
    fn new(phase: Phase) -> Self {
        Self {
            next_seq: 1,
            delivered: 0,
            live: 0,
            phase,
            finished: false,
            reader: 0,
            waker: None,
            phase_waker: None,
            detach_pending: false,
            end_reader: None,
        }
    }

    /// Wakes both waiters: something they wait for changed.
    fn wake(&mut self) {
        self.wake_reader();
        if let Some(w) = self.phase_waker.take() {
            w.wake();
        }
    }

    /// Wakes the reader alone (it is replaced or detached).
    fn wake_reader(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn removable(&self) -> bool {
        self.finished && self.live == 0 && self.reader == 0
    }
}

#[derive(Debug)]
struct State {
    events: VecDeque<Event>,
    first: u64,
    bytes: usize,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    /// POST streams opened and still untouched (`Pending`, no waker, no reader), kept here
    /// instead of in `streams` until something needs their state: most handlers answer at
    /// once, and then the answer goes out as JSON without the map ever being read or written
    /// (its table is a separate allocation: a cache miss per request with many sessions).
    untouched: Untouched,
    next_stream: u32,
    next_reader: u64,
    readers: usize,
    closed: Option<Option<Duration>>,
    dropped: u64,
    /// Bumped when events are removed from the middle of the log.
    generation: u64,
    /// The ordinal of the next event appended (every stream together), for the sink.
    next_ordinal: u64,
}

impl State {
    /// Moves an untouched stream into the map, where every operation but `complete` finds it.
    fn touch(&mut self, stream: u32) {
        if self.untouched.take(stream) {
            self.streams.insert(stream, Stream::new(Phase::Pending));
        }
    }
}

/// A few stream ids, inline.
#[derive(Debug, Default)]
struct Untouched {
    ids: [u32; 4],
    len: u8,
}

impl Untouched {
    /// Adds `id`; false when full (the caller keeps the stream in the map instead).
    fn push(&mut self, id: u32) -> bool {
        let Some(slot) = self.ids.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = id;
        self.len += 1;
        true
    }

    /// Removes `id`; whether it was there.
    fn take(&mut self, id: u32) -> bool {
        let len = usize::from(self.len);
        let Some(i) = self.ids[..len].iter().position(|&x| x == id) else {
            return false;
        };
        self.ids.swap(i, len - 1);
        self.len -= 1;
        true
    }

    fn contains(&self, id: u32) -> bool {
        self.ids[..usize::from(self.len)].contains(&id)
    }
}

/// Why a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The stream has ended (its response was sent) or does not exist.
    StreamEnded,
    /// The session (or request) is closed.
    Closed,
}

/// Why a reader could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachError {
    /// Another connection reads this stream (a second standalone GET → 409).
    Busy,
    /// No such stream (anymore).
    Unknown,
    /// The log is closed.
    Closed,
}

/// What a reader gets next.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event: its stream, its sequence number and the JSON-RPC message.
    Event { stream: u32, seq: u32, data: Bytes },
    /// The stream ended. `retry` is the reconnect hint to send first, if any.
    End { retry: Option<Duration> },
}

/// A reader's position in one stream.
#[derive(Debug)]
pub(crate) struct Cursor {
    stream: u32,
    reader: u64,
    next: u64,
    last_seq: u32,
    done: bool,
    drain_then_end: bool,
    generation: u64,
}

impl Cursor {
    pub(crate) fn stream(&self) -> u32 {
        self.stream
    }

    pub(crate) fn last_seq(&self) -> u32 {
        self.last_seq
    }
}

/// Where a log reports its standalone stream's events: the session's id and the sink.
pub(crate) type SinkRef = (
    crate::session::SessionId,
    Arc<dyn crate::session::EventSink>,
);

/// The log itself.
#[derive(Debug)]
pub(crate) struct EventLog {
    state: Mutex<State>,
    limits: LogLimits,
    /// Told of every event of the standalone stream, in order (under the lock).
    sink: Option<SinkRef>,
    /// With a write-through sink: how far the sink has stored the standalone stream. Its
    /// reader sends no event above it.
    held: Option<Arc<crate::session::Watermark>>,
}

impl EventLog {
    pub(crate) fn new(limits: LogLimits, with_standalone: bool) -> Self {
        let mut streams = HashMap::default();
        if with_standalone {
            streams.insert(STANDALONE, Stream::new(Phase::Sse));
        }
        Self {
            state: Mutex::new(State {
                events: VecDeque::new(),
                first: 0,
                bytes: 0,
                streams,
                untouched: Untouched::default(),
                next_stream: 1,
                next_reader: 1,
                readers: 0,
                closed: None,
                dropped: 0,
                generation: 0,
                next_ordinal: 1,
            }),
            limits,
            sink: None,
            held: None,
        }
    }

    /// The same log, reporting its standalone stream's events to `sink`. A write-through
    /// sink ([`Durability::WriteThrough`](crate::session::Durability::WriteThrough)) also
    /// holds them back from the stream's reader until it has stored them; the events already
    /// in the log (a restored log's, read from the store) are not held.
    pub(crate) fn with_sink(mut self, sink: Option<SinkRef>) -> Self {
        self.held = match &sink {
            Some((_, sink)) if sink.durability().is_write_through() => {
                let floor = self
                    .lock()
                    .streams
                    .get(&STANDALONE)
                    .map_or(0, |st| st.next_seq.saturating_sub(1));
                Some(Arc::new(crate::session::Watermark::new(floor)))
            }
            _ => None,
        };
        self.sink = sink;
        self
    }

    /// The log of a session restored on this node: its standalone stream numbers its events
    /// after `standalone_after` (the last one the client reports having), and its POST streams
    /// start at a random id, so an event id the client kept from the session's former node
    /// names no stream of this log (rather than another request's).
    ///
    /// `stored` are the standalone stream's events another node wrote to the shared store
    /// (in order of sequence number; gaps allowed), and `top` the highest sequence number it
    /// held: they are kept under their ids, and new events are numbered after
    /// `max(top, standalone_after, last stored)`, so ids stay unique and ordered across owners.
    pub(crate) fn restored(
        limits: LogLimits,
        standalone_after: Option<u32>,
        top: u32,
        stored: Vec<(u32, Bytes)>,
    ) -> Self {
        let log = Self::new(limits, true);
        {
            let mut guard = log.lock();
            let s = &mut *guard;
            let now = Instant::now();
            let mut last = standalone_after.unwrap_or(0);
            let mut live = 0;
            for (seq, data) in stored {
                // Only what the client has not seen, in increasing order.
                if seq <= last {
                    continue;
                }
                last = seq;
                live += 1;
                s.bytes += data.len();
                s.events.push_back(Event {
                    stream: STANDALONE,
                    seq,
                    last: false,
                    at: now,
                    data,
                });
            }
            let top = top.max(last);
            if let Some(st) = s.streams.get_mut(&STANDALONE) {
                st.next_seq = top.saturating_add(1);
                // Without a `Last-Event-ID` (the session adopted by a POST), the stored
                // events stay for a later resumption, and a plain `GET` starts after them.
                st.delivered = standalone_after.unwrap_or(top);
                st.live = live;
            }
            s.next_stream = restored_stream_base();
            log.evict(s);
        }
        log
    }

    /// The same restored log, holding the `POST` answers another node stored as ended
    /// streams under their ids (a `GET` with `Last-Event-ID: <stream>-<seq>` replays the rest
    /// of one, then it ends: its request ran elsewhere), and numbering ordinals after
    /// `ordinal`. Its own `POST` streams are numbered above them.
    pub(crate) fn with_requests(
        self,
        ordinal: u64,
        requests: Vec<crate::session::RequestEvent>,
    ) -> Self {
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            s.next_ordinal = s.next_ordinal.max(ordinal.saturating_add(1));
            let now = Instant::now();
            for ev in requests {
                if ev.stream == STANDALONE {
                    continue;
                }
                if ev.stream >= s.next_stream {
                    s.next_stream = ev.stream.saturating_add(1);
                }
                let st = s.streams.entry(ev.stream).or_insert_with(|| {
                    let mut st = Stream::new(Phase::Sse);
                    st.finished = true;
                    st.next_seq = 0;
                    st
                });
                // In order within a stream; a disordered or repeated one is skipped.
                if ev.seq < st.next_seq {
                    continue;
                }
                st.next_seq = ev.seq.saturating_add(1);
                st.live += 1;
                s.bytes += ev.data.len();
                s.events.push_back(Event {
                    stream: ev.stream,
                    seq: ev.seq,
                    last: ev.last,
                    at: now,
                    data: ev.data,
                });
            }
            self.evict(s);
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the log inconsistent in a way that
        // matters more than refusing service; recover the guard.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a new POST stream whose wire form is not yet decided.
    pub(crate) fn open_stream(&self) -> Result<u32, AppendError> {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Err(AppendError::Closed);
        }
        let id = s.next_stream;
        s.next_stream = s.next_stream.wrapping_add(1).max(1);
        if !s.untouched.push(id) {
            s.streams.insert(id, Stream::new(Phase::Pending));
        }
        Ok(id)
    }

    /// Appends a message to a stream; `last` ends the stream after it. Returns the sequence
    /// number it was given (its event id is `<stream>-<seq>`).
    pub(crate) fn append(&self, stream: u32, data: Bytes, last: bool) -> Result<u32, AppendError> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.closed.is_some() {
            return Err(AppendError::Closed);
        }
        s.touch(stream);
        let st = s.streams.get_mut(&stream).ok_or(AppendError::StreamEnded)?;
        if st.finished || st.phase == Phase::Json {
            return Err(AppendError::StreamEnded);
        }
        st.phase = Phase::Sse;
        let seq = st.next_seq;
        st.next_seq = st.next_seq.saturating_add(1);
        st.live += 1;
        st.finished = last;
        st.wake();
        if let Some((id, sink)) = &self.sink {
            // Under the lock: the sink sees the events in the order they were numbered.
            let ordinal = s.next_ordinal;
            s.next_ordinal += 1;
            let event =
                crate::session::LoggedEvent::new(stream, seq, ordinal, &data).with_last(last);
            match &self.held {
                // Only the standalone stream waits for the store: a `POST` answer's events
                // (its response among them) go out at once.
                Some(mark) if stream == STANDALONE => {
                    sink.record_write_through(id, event, mark.ack(seq));
                }
                _ => sink.record(id, event),
            }
        }
        s.bytes += data.len();
        s.events.push_back(Event {
            stream,
            seq,
            last,
            at: Instant::now(),
            data,
        });
        self.evict(s);
        Ok(seq)
    }

    fn evict(&self, s: &mut State) {
        while s.events.len() > 1
            && (s.events.len() > self.limits.max_events || s.bytes > self.limits.max_bytes)
        {
            let Some(ev) = s.events.pop_front() else {
                break;
            };
            s.first += 1;
            s.bytes -= ev.data.len();
            if let Some(st) = s.streams.get_mut(&ev.stream) {
                st.live -= 1;
                if ev.seq > st.delivered {
                    s.dropped += 1;
                    tracing::debug!(
                        stream = ev.stream,
                        "event evicted before delivery (slow reader)"
                    );
                }
                if st.removable() {
                    s.streams.remove(&ev.stream);
                }
            }
        }
    }

    /// Forces a pending stream into SSE form (a handler closing its stream early).
    pub(crate) fn force_sse(&self, stream: u32) {
        let mut s = self.lock();
        s.touch(stream);
        if let Some(st) = s.streams.get_mut(&stream)
            && st.phase == Phase::Pending
        {
            st.phase = Phase::Sse;
            st.wake();
        }
    }

    /// Detaches the current reader of a stream (SEP-1699: the server closes the connection;
    /// the client resumes with `Last-Event-ID`).
    pub(crate) fn detach_reader(&self, stream: u32) {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.touch(stream);
        if let Some(st) = s.streams.get_mut(&stream) {
            if st.reader == 0 {
                st.detach_pending = true;
            } else {
                st.reader = 0;
                s.readers -= 1;
                st.wake_reader();
            }
        }
    }

    /// The handler finished. Returns `true` if the answer may go out as JSON (nothing was
    /// streamed), in which case the stream is removed; otherwise `data` (if any) was appended as
    /// the stream's last event.
    pub(crate) fn complete(&self, stream: u32, data: Option<Bytes>) -> bool {
        {
            let mut s = self.lock();
            // Untouched: nothing was streamed, so the answer goes out as JSON.
            if s.untouched.take(stream) {
                return true;
            }
            let Some(st) = s.streams.get_mut(&stream) else {
                return false;
            };
            if st.phase == Phase::Pending {
                st.phase = Phase::Json;
                st.finished = true;
                st.wake();
                // A reader may have attached (a GET naming this stream) before the answer
                // went out as JSON: it ends, and no longer counts as one.
                let had_reader = st.reader != 0;
                s.streams.remove(&stream);
                if had_reader {
                    s.readers -= 1;
                }
                return true;
            }
            if data.is_none() {
                st.finished = true;
                st.wake();
                if st.removable() {
                    s.streams.remove(&stream);
                }
                return false;
            }
        }
        if let Some(data) = data {
            let _ = self.append(stream, data, true);
        }
        false
    }

    /// The phase of a POST stream, registering `cx` to be woken when it changes.
    pub(crate) fn poll_phase(&self, stream: u32, cx: &mut Context<'_>) -> Phase {
        let mut s = self.lock();
        s.touch(stream);
        match s.streams.get_mut(&stream) {
            Some(st) => {
                if st.phase == Phase::Pending {
                    st.phase_waker = Some(cx.waker().clone());
                }
                st.phase
            }
            None => Phase::Json,
        }
    }

    /// Attaches a reader. `after` is the last sequence number the client has (`Last-Event-ID`);
    /// `None` means "whatever has not been delivered yet". `exclusive` refuses to take over a
    /// stream that already has a reader. `resume` marks a `Last-Event-ID` reconnection, which
    /// clears a pending server-side close.
    pub(crate) fn attach(
        &self,
        stream: u32,
        after: Option<u32>,
        exclusive: bool,
        resume: bool,
    ) -> Result<Cursor, AttachError> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.closed.is_some() {
            return Err(AttachError::Closed);
        }
        s.touch(stream);
        let reader = s.next_reader;
        let first = s.first;
        let st = s.streams.get_mut(&stream).ok_or(AttachError::Unknown)?;
        if exclusive && st.reader != 0 {
            return Err(AttachError::Busy);
        }
        if st.reader == 0 {
            s.readers += 1;
        } else {
            st.wake_reader();
        }
        st.reader = reader;
        let drain_then_end = st.detach_pending && !resume;
        if resume {
            st.detach_pending = false;
        }
        let last_seq = after.unwrap_or(st.delivered);
        s.next_reader += 1;
        Ok(Cursor {
            stream,
            reader,
            next: first,
            last_seq,
            done: false,
            drain_then_end,
            generation: s.generation,
        })
    }

    /// Releases a reader (its connection is gone).
    pub(crate) fn release(&self, cursor: &Cursor) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(st) = s.streams.get_mut(&cursor.stream)
            && st.reader == cursor.reader
        {
            st.reader = 0;
            st.waker = None;
            s.readers -= 1;
            if st.removable() {
                s.streams.remove(&cursor.stream);
            }
        }
    }

    /// The next item for a reader, or `Pending` (with `cx` registered).
    pub(crate) fn poll_next(&self, cursor: &mut Cursor, cx: &mut Context<'_>) -> Poll<Item> {
        if cursor.done {
            return Poll::Ready(Item::End { retry: None });
        }
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(retry) = s.closed {
            cursor.done = true;
            return Poll::Ready(Item::End { retry });
        }
        let first = s.first;
        if cursor.generation != s.generation {
            cursor.generation = s.generation;
            cursor.next = first;
        }
        let Some(st) = s.streams.get_mut(&cursor.stream) else {
            cursor.done = true;
            return Poll::Ready(Item::End { retry: None });
        };
        if st.reader != cursor.reader {
            cursor.done = true;
            return Poll::Ready(Item::End { retry: None });
        }
        let mut idx = cursor.next.max(first);
        let end = first + s.events.len() as u64;
        while idx < end {
            let ev = &s.events[(idx - first) as usize];
            idx += 1;
            if ev.stream != cursor.stream || ev.seq <= cursor.last_seq {
                continue;
            }
            // Write-through: the sink has not stored this event yet. It waits, and the
            // stream's later events with it (in order); the sink's watermark wakes the reader
            // once it is stored, and so does anything that changes the stream (a takeover,
            // a drain) through `st.waker`.
            if ev.stream == STANDALONE
                && let Some(mark) = &self.held
                && mark.poll_settled(ev.seq, cx).is_pending()
            {
                cursor.next = idx - 1;
                st.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            cursor.next = idx;
            cursor.last_seq = ev.seq;
            st.delivered = st.delivered.max(ev.seq);
            if ev.last {
                cursor.done = true;
            }
            return Poll::Ready(Item::Event {
                stream: ev.stream,
                seq: ev.seq,
                data: ev.data.clone(),
            });
        }
        cursor.next = idx;
        if st.finished || cursor.drain_then_end {
            cursor.done = true;
            return Poll::Ready(Item::End { retry: None });
        }
        if let Some((reader, retry)) = st.end_reader
            && reader == cursor.reader
        {
            cursor.done = true;
            return Poll::Ready(Item::End { retry: Some(retry) });
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Closes the log: every reader ends (after `retry`, if given); appends fail.
    pub(crate) fn close(&self, retry: Option<Duration>) {
        let mut s = self.lock();
        if s.closed.is_some() {
            return;
        }
        s.closed = Some(retry);
        s.events.clear();
        s.bytes = 0;
        for st in s.streams.values_mut() {
            st.wake();
        }
    }

    /// Drops replay data older than `max_age`: events already delivered, and events of finished
    /// streams, so an idle session does not keep its last answers for ever. Undelivered events
    /// of live streams stay (the bounds still apply to them).
    pub(crate) fn prune(&self, max_age: Duration) {
        let Some(cutoff) = Instant::now().checked_sub(max_age) else {
            return;
        };
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.events.front().is_none_or(|e| e.at >= cutoff) {
            return;
        }
        let before = s.events.len();
        let streams = &mut s.streams;
        let mut freed = 0;
        s.events.retain(|ev| {
            let keep = ev.at >= cutoff
                || streams
                    .get(&ev.stream)
                    .is_some_and(|st| !st.finished && ev.seq > st.delivered);
            if !keep {
                freed += ev.data.len();
                if let Some(st) = streams.get_mut(&ev.stream) {
                    st.live -= 1;
                }
            }
            keep
        });
        s.bytes -= freed;
        // Positions shifted: readers rescan from the start (they skip by sequence number).
        if s.events.len() != before {
            s.generation += 1;
        }
        s.streams.retain(|_, st| !st.removable());
    }

    /// Whether a stream currently has a reader or is waiting for its handler.
    pub(crate) fn readers(&self) -> usize {
        self.lock().readers
    }

    /// Whether a stream exists.
    #[cfg(test)]
    pub(crate) fn has_stream(&self, stream: u32) -> bool {
        let s = self.lock();
        s.streams.contains_key(&stream) || s.untouched.contains(stream)
    }

    /// Whether this log issued the event id `stream-seq` (or the priming id `stream-0`): its
    /// stream exists and has numbered that far. A `Last-Event-ID` naming anything else was
    /// not issued here (another node's, or forged), so resuming from it would skip this
    /// log's events.
    pub(crate) fn issued(&self, stream: u32, seq: u32) -> bool {
        let s = self.lock();
        match s.streams.get(&stream) {
            Some(st) => seq < st.next_seq,
            None => seq == 0 && s.untouched.contains(stream),
        }
    }

    /// Ends the current reader of `stream` (the node drains): it delivers the events it has
    /// not yet sent, then ends with the reconnect hint `retry`, so its client reconnects
    /// (with `Last-Event-ID`), possibly to another node. The stream stays: a later reader
    /// attaches as usual. Returns whether a reader was told to end.
    pub(crate) fn end_reader(&self, stream: u32, retry: Duration) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() {
            return false;
        }
        match s.streams.get_mut(&stream) {
            Some(st) if st.reader != 0 => {
                st.end_reader = Some((st.reader, retry));
                st.wake_reader();
                true
            }
            _ => false,
        }
    }

    /// (events held, bytes held, events dropped before delivery) — for tests and metrics.
    pub(crate) fn stats(&self) -> (usize, usize, u64) {
        let s = self.lock();
        (s.events.len(), s.bytes, s.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::task::Waker;

    #[test]
    fn stream_id_hashes_spread_sequential_ids() {
        let build = BuildHasherDefault::<StreamIdHasher>::default();
        let low: std::collections::HashSet<u64> =
            (0..1024u32).map(|n| build.hash_one(n) & 1023).collect();
        assert_eq!(low.len(), 1024, "the low bits are a permutation");
        let tags: std::collections::HashSet<u64> =
            (0..1024u32).map(|n| build.hash_one(n) >> 57).collect();
        assert!(tags.len() > 100, "{} distinct tags", tags.len());
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn log(max_events: usize) -> EventLog {
        EventLog::new(
            LogLimits {
                max_events,
                max_bytes: 1 << 20,
            },
            true,
        )
    }

    #[test]
    fn untouched_streams_behave_like_pending_ones() {
        let l = log(16);
        // More streams than fit inline: the fifth goes to the map, and all behave alike.
        let ids: Vec<u32> = (0..6).map(|_| l.open_stream().unwrap()).collect();
        for &id in &ids {
            assert!(l.has_stream(id));
            assert_eq!(l.poll_phase(id, &mut cx()), Phase::Pending);
        }
        let l = log(16);
        let ids: Vec<u32> = (0..6).map(|_| l.open_stream().unwrap()).collect();
        // Answered at once: JSON, and the stream is gone.
        assert!(l.complete(ids[0], Some(Bytes::from_static(b"a"))));
        assert!(!l.has_stream(ids[0]));
        assert_eq!(l.poll_phase(ids[0], &mut cx()), Phase::Json);
        assert_eq!(
            l.append(ids[0], Bytes::from_static(b"late"), false),
            Err(AppendError::StreamEnded)
        );
        // Something streamed first: SSE, and the answer is the last event.
        l.append(ids[1], Bytes::from_static(b"n"), false).unwrap();
        assert_eq!(l.poll_phase(ids[1], &mut cx()), Phase::Sse);
        assert!(!l.complete(ids[1], Some(Bytes::from_static(b"r"))));
        assert_eq!(l.stats().0, 2);
        // Forced to SSE before anything was sent; cancelled (no answer) while untouched.
        l.force_sse(ids[2]);
        assert_eq!(l.poll_phase(ids[2], &mut cx()), Phase::Sse);
        assert!(l.complete(ids[3], None));
        assert!(!l.has_stream(ids[3]));
        // A reader may attach to a stream whose handler has not answered yet; if nothing
        // is streamed, the answer still goes out as JSON and the reader ends.
        let mut cur = l.attach(ids[4], None, true, false).unwrap();
        assert!(l.poll_next(&mut cur, &mut cx()).is_pending());
        assert_eq!(l.readers(), 1);
        assert!(l.complete(ids[4], Some(Bytes::from_static(b"x"))));
        assert_eq!(
            l.readers(),
            0,
            "the ended reader no longer keeps the session busy"
        );
        assert!(matches!(
            l.poll_next(&mut cur, &mut cx()),
            Poll::Ready(Item::End { retry: None })
        ));
        l.release(&cur);
        assert_eq!(l.readers(), 0);
        // The one kept in the map from the start.
        assert!(l.complete(ids[5], None));
        assert!(!l.has_stream(ids[5]));
    }

    fn next(l: &EventLog, c: &mut Cursor) -> Option<(u32, u32)> {
        match l.poll_next(c, &mut cx()) {
            Poll::Ready(Item::Event { stream, seq, .. }) => Some((stream, seq)),
            _ => None,
        }
    }

    #[test]
    fn streams_are_separate_and_resumable() {
        let l = log(100);
        let a = l.open_stream().unwrap();
        let b = l.open_stream().unwrap();
        l.append(a, Bytes::from_static(b"a1"), false).unwrap();
        l.append(b, Bytes::from_static(b"b1"), false).unwrap();
        l.append(a, Bytes::from_static(b"a2"), true).unwrap();
        let mut ca = l.attach(a, Some(0), false, false).unwrap();
        assert_eq!(next(&l, &mut ca), Some((a, 1)));
        assert_eq!(next(&l, &mut ca), Some((a, 2)));
        assert!(matches!(
            l.poll_next(&mut ca, &mut cx()),
            Poll::Ready(Item::End { .. })
        ));
        l.release(&ca);
        // Resume after seq 1: only a's later event, never b's.
        let mut again = l.attach(a, Some(1), false, true).unwrap();
        assert_eq!(next(&l, &mut again), Some((a, 2)));
    }

    #[test]
    fn standalone_is_exclusive_and_holds_undelivered() {
        let l = log(100);
        l.append(STANDALONE, Bytes::from_static(b"x"), false)
            .unwrap();
        let mut c = l.attach(STANDALONE, None, true, false).unwrap();
        assert_eq!(
            l.attach(STANDALONE, None, true, false).unwrap_err(),
            AttachError::Busy
        );
        assert_eq!(next(&l, &mut c), Some((0, 1)));
        assert!(l.poll_next(&mut c, &mut cx()).is_pending());
        l.release(&c);
        let mut c2 = l.attach(STANDALONE, None, true, false).unwrap();
        assert!(l.poll_next(&mut c2, &mut cx()).is_pending());
    }

    #[test]
    fn bounded_and_json_phase() {
        let l = log(4);
        for _ in 0..100 {
            l.append(STANDALONE, Bytes::from_static(b"0123456789"), false)
                .unwrap();
        }
        let (events, bytes, dropped) = l.stats();
        assert_eq!((events, bytes, dropped), (4, 40, 96));
        let s = l.open_stream().unwrap();
        assert!(l.complete(s, Some(Bytes::from_static(b"r"))));
        assert!(!l.has_stream(s));
        let s = l.open_stream().unwrap();
        l.append(s, Bytes::from_static(b"n"), false).unwrap();
        assert!(!l.complete(s, Some(Bytes::from_static(b"r"))));
        assert_eq!(
            l.append(s, Bytes::from_static(b"late"), false),
            Err(AppendError::StreamEnded)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prune_drops_old_replay_data_but_not_undelivered_events() {
        let l = log(100);
        let done = l.open_stream().unwrap();
        l.append(done, Bytes::from_static(b"n"), false).unwrap();
        l.append(done, Bytes::from_static(b"r"), true).unwrap();
        l.append(STANDALONE, Bytes::from_static(b"undelivered"), false)
            .unwrap();
        let live = l.open_stream().unwrap();
        l.append(live, Bytes::from_static(b"pending"), false)
            .unwrap();
        let mut reader = l.attach(live, Some(0), false, false).unwrap();
        tokio::time::advance(Duration::from_secs(120)).await;
        l.prune(Duration::from_secs(60));
        assert!(
            !l.has_stream(done),
            "a finished stream's replay data is gone"
        );
        assert_eq!(l.stats().0, 2, "undelivered events stay");
        assert_eq!(next(&l, &mut reader), Some((live, 1)));
        l.append(live, Bytes::from_static(b"more"), false).unwrap();
        assert_eq!(next(&l, &mut reader), Some((live, 2)));
        tokio::time::advance(Duration::from_secs(120)).await;
        l.prune(Duration::from_secs(60));
        assert_eq!(
            l.stats().0,
            1,
            "delivered events go too; the standalone backlog stays"
        );
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Count {
        fn waker() -> (std::sync::Arc<Self>, Waker) {
            let c = std::sync::Arc::new(Self::default());
            (c.clone(), Waker::from(c))
        }

        fn woken(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
        }
    }

    /// The POST future waits for its stream's phase while a `Last-Event-ID` reader of the same
    /// stream waits for its next event: whichever registered first, both are woken by the
    /// event, by the end of the stream, and neither loses its registration when the other
    /// goes away.
    #[test]
    fn a_waiting_post_and_a_resuming_reader_are_both_woken() {
        for reader_first in [false, true] {
            for event in [true, false] {
                let l = log(16);
                let s = l.open_stream().unwrap();
                let (post, post_waker) = Count::waker();
                let (reader, reader_waker) = Count::waker();
                let mut cur = l.attach(s, Some(0), false, true).unwrap();
                let mut poll_reader =
                    |l: &EventLog| l.poll_next(&mut cur, &mut Context::from_waker(&reader_waker));
                if reader_first {
                    assert!(poll_reader(&l).is_pending());
                }
                assert_eq!(
                    l.poll_phase(s, &mut Context::from_waker(&post_waker)),
                    Phase::Pending
                );
                if !reader_first {
                    assert!(poll_reader(&l).is_pending());
                }
                if event {
                    l.append(s, Bytes::from_static(b"progress"), false).unwrap();
                } else {
                    // The handler answered without streaming: JSON, and the reader ends.
                    assert!(l.complete(s, Some(Bytes::from_static(b"answer"))));
                }
                assert!(
                    post.woken(),
                    "the POST future is woken ({reader_first}, {event})"
                );
                assert!(
                    reader.woken(),
                    "the reader is woken ({reader_first}, {event})"
                );
                if event {
                    assert_eq!(l.poll_phase(s, &mut cx()), Phase::Sse);
                    assert!(matches!(
                        poll_reader(&l),
                        Poll::Ready(Item::Event { seq: 1, .. })
                    ));
                } else {
                    assert_eq!(l.poll_phase(s, &mut cx()), Phase::Json);
                    assert!(matches!(poll_reader(&l), Poll::Ready(Item::End { .. })));
                }
            }
        }

        // The reader goes away while the POST waits: the POST is still woken.
        let l = log(16);
        let s = l.open_stream().unwrap();
        let (post, post_waker) = Count::waker();
        let (_, reader_waker) = Count::waker();
        let mut cur = l.attach(s, Some(0), false, true).unwrap();
        assert_eq!(
            l.poll_phase(s, &mut Context::from_waker(&post_waker)),
            Phase::Pending
        );
        assert!(
            l.poll_next(&mut cur, &mut Context::from_waker(&reader_waker))
                .is_pending()
        );
        l.release(&cur);
        l.append(s, Bytes::from_static(b"progress"), false).unwrap();
        assert!(
            post.woken(),
            "a released reader takes no other waiter's registration"
        );

        // A new reader takes over while the POST waits: the old reader ends, the POST and the
        // new reader are woken by the next event.
        let l = log(16);
        let s = l.open_stream().unwrap();
        let (post, post_waker) = Count::waker();
        let (old, old_waker) = Count::waker();
        let (new, new_waker) = Count::waker();
        let mut first = l.attach(s, Some(0), false, true).unwrap();
        assert!(
            l.poll_next(&mut first, &mut Context::from_waker(&old_waker))
                .is_pending()
        );
        assert_eq!(
            l.poll_phase(s, &mut Context::from_waker(&post_waker)),
            Phase::Pending
        );
        let mut second = l.attach(s, Some(0), false, true).unwrap();
        assert!(old.woken(), "the replaced reader is told to end");
        assert!(matches!(
            l.poll_next(&mut first, &mut cx()),
            Poll::Ready(Item::End { .. })
        ));
        assert!(
            l.poll_next(&mut second, &mut Context::from_waker(&new_waker))
                .is_pending()
        );
        l.append(s, Bytes::from_static(b"progress"), false).unwrap();
        assert!(post.woken() && new.woken());
    }

    #[test]
    fn takeover_ends_old_reader() {
        let l = log(10);
        let mut old = l.attach(STANDALONE, None, true, false).unwrap();
        let _new = l.attach(STANDALONE, Some(0), false, true).unwrap();
        assert!(matches!(
            l.poll_next(&mut old, &mut cx()),
            Poll::Ready(Item::End { .. })
        ));
    }

    #[test]
    fn an_ended_reader_delivers_what_it_has_then_ends_with_the_hint() {
        let l = log(16);
        let retry = Duration::from_millis(1500);
        // No reader: nothing to end.
        assert!(!l.end_reader(STANDALONE, retry));
        let mut old = l.attach(STANDALONE, None, true, false).unwrap();
        l.append(STANDALONE, Bytes::from_static(b"a"), false)
            .unwrap();
        assert!(l.end_reader(STANDALONE, retry));
        assert_eq!(next(&l, &mut old), Some((STANDALONE, 1)));
        assert!(matches!(
            l.poll_next(&mut old, &mut cx()),
            Poll::Ready(Item::End { retry: Some(r) }) if r == retry
        ));
        l.release(&old);
        assert_eq!(l.readers(), 0);
        // The stream stays: a later reader is not told to end.
        let mut new = l.attach(STANDALONE, None, true, false).unwrap();
        l.append(STANDALONE, Bytes::from_static(b"b"), false)
            .unwrap();
        assert_eq!(next(&l, &mut new), Some((STANDALONE, 2)));
        assert!(l.poll_next(&mut new, &mut cx()).is_pending());
    }

    #[test]
    fn issued_ids_and_a_restored_log() {
        let l = log(16);
        assert!(l.issued(STANDALONE, 0));
        assert!(!l.issued(STANDALONE, 1), "not numbered yet");
        l.append(STANDALONE, Bytes::from_static(b"a"), false)
            .unwrap();
        assert!(l.issued(STANDALONE, 1));
        let s = l.open_stream().unwrap();
        assert!(l.issued(s, 0), "the priming id of an untouched stream");
        assert!(!l.issued(s, 1));
        assert!(!l.issued(s + 1, 0), "no such stream");

        // Restored after the client's `0-41`: the standalone stream goes on at 42, and POST
        // streams are numbered far from the former node's.
        let r = EventLog::restored(
            LogLimits {
                max_events: 16,
                max_bytes: 1 << 20,
            },
            Some(41),
            0,
            Vec::new(),
        );
        assert!(r.issued(STANDALONE, 41));
        assert!(!r.issued(STANDALONE, 42));
        let mut c = r.attach(STANDALONE, None, true, false).unwrap();
        assert_eq!(c.last_seq(), 41);
        r.append(STANDALONE, Bytes::from_static(b"n"), false)
            .unwrap();
        assert_eq!(next(&r, &mut c), Some((STANDALONE, 42)));
        let first = r.open_stream().unwrap();
        assert!(first >= 1 << 20, "{first}");
        assert!(!r.issued(1, 0));
    }

    fn limits(max_events: usize) -> LogLimits {
        LogLimits {
            max_events,
            max_bytes: 1 << 20,
        }
    }

    fn stored(seqs: &[u32]) -> Vec<(u32, Bytes)> {
        seqs.iter()
            .map(|&n| (n, Bytes::from(format!("e{n}"))))
            .collect()
    }

    fn next_data(l: &EventLog, c: &mut Cursor) -> Option<(u32, Bytes)> {
        match l.poll_next(c, &mut cx()) {
            Poll::Ready(Item::Event { seq, data, .. }) => Some((seq, data)),
            _ => None,
        }
    }

    #[test]
    fn a_restored_log_keeps_stored_ids_and_numbers_after_the_top() {
        // The store held 1..=8; the client has 0-3 and was sent 4..=8 by the previous node.
        let r = EventLog::restored(limits(16), Some(3), 8, stored(&[4, 5, 6, 7, 8]));
        assert!(r.issued(STANDALONE, 8));
        assert!(!r.issued(STANDALONE, 9));
        let mut c = r.attach(STANDALONE, Some(3), true, true).unwrap();
        for n in 4..=8 {
            assert_eq!(
                next_data(&r, &mut c),
                Some((n, Bytes::from(format!("e{n}"))))
            );
        }
        assert_eq!(next_data(&r, &mut c), None, "nothing more: no duplicate");
        assert_eq!(
            r.append(STANDALONE, Bytes::from_static(b"live"), false),
            Ok(9)
        );
        assert_eq!(
            next_data(&r, &mut c),
            Some((9, Bytes::from_static(b"live")))
        );
        // A reconnection after 0-6 replays exactly 7, 8, 9.
        let mut c = r.attach(STANDALONE, Some(6), false, true).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| next_data(&r, &mut c).map(|e| e.0)).collect();
        assert_eq!(got, [7, 8, 9]);
    }

    #[test]
    fn a_restored_log_skips_seen_and_disordered_events_and_allows_gaps() {
        // Trimmed by the store (gap 5..6), one event the client has (2), one out of order.
        let r = EventLog::restored(limits(16), Some(3), 9, stored(&[2, 4, 7, 6, 9]));
        let mut c = r.attach(STANDALONE, Some(3), true, true).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| next_data(&r, &mut c).map(|e| e.0)).collect();
        assert_eq!(got, [4, 7, 9]);
        assert_eq!(r.stats().0, 3);
        // The top the store reports wins over the events it returned (and the client's id
        // over both, should it be higher).
        let r = EventLog::restored(limits(16), Some(3), 12, stored(&[4]));
        assert_eq!(
            r.append(STANDALONE, Bytes::from_static(b"x"), false),
            Ok(13)
        );
        let r = EventLog::restored(limits(16), Some(20), 12, stored(&[4]));
        assert_eq!(r.stats().0, 0);
        assert_eq!(
            r.append(STANDALONE, Bytes::from_static(b"x"), false),
            Ok(21)
        );
    }

    #[test]
    fn a_log_restored_without_an_id_keeps_the_events_for_a_resumption() {
        // Adopted by a POST: the stored events are there, a plain GET starts after them, a
        // later `Last-Event-ID` resumption replays from its id.
        let r = EventLog::restored(limits(16), None, 8, stored(&[1, 2, 3, 4, 5, 6, 7, 8]));
        let mut plain = r.attach(STANDALONE, None, true, false).unwrap();
        assert_eq!(next_data(&r, &mut plain), None);
        assert_eq!(r.append(STANDALONE, Bytes::from_static(b"n"), false), Ok(9));
        assert_eq!(next_data(&r, &mut plain).map(|e| e.0), Some(9));
        let mut resumed = r.attach(STANDALONE, Some(3), false, true).unwrap();
        let got: Vec<u32> =
            std::iter::from_fn(|| next_data(&r, &mut resumed).map(|e| e.0)).collect();
        assert_eq!(got, [4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_restored_log_is_bounded_like_any_other() {
        let r = EventLog::restored(
            limits(4),
            Some(0),
            10,
            stored(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        );
        assert_eq!(r.stats().0, 4);
        let mut c = r.attach(STANDALONE, Some(0), true, true).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| next_data(&r, &mut c).map(|e| e.0)).collect();
        assert_eq!(got, [7, 8, 9, 10]);
    }

    /// What the sink saw: `(stream, seq, ordinal, last, data)`.
    type Seen = (u32, u32, u64, bool, Bytes);

    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<Seen>>);

    impl crate::session::EventSink for Recorder {
        fn record(&self, session: &crate::session::SessionId, ev: crate::session::LoggedEvent<'_>) {
            assert_eq!(session.as_str(), "s1");
            self.0
                .lock()
                .unwrap()
                .push((ev.stream, ev.seq, ev.ordinal, ev.last, ev.data.clone()));
        }
    }

    #[test]
    fn the_sink_sees_every_event_of_every_stream_with_its_ordinal() {
        let rec = Arc::new(Recorder::default());
        let id = crate::session::SessionId::parse("s1").unwrap();
        let l = log(16).with_sink(Some((id, rec.clone())));
        let post = l.open_stream().unwrap();
        l.append(STANDALONE, Bytes::from_static(b"a"), false)
            .unwrap();
        l.append(post, Bytes::from_static(b"p"), false).unwrap();
        l.append(STANDALONE, Bytes::from_static(b"b"), false)
            .unwrap();
        l.append(post, Bytes::from_static(b"r"), true).unwrap();
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                (STANDALONE, 1, 1, false, Bytes::from_static(b"a")),
                (post, 1, 2, false, Bytes::from_static(b"p")),
                (STANDALONE, 2, 3, false, Bytes::from_static(b"b")),
                (post, 2, 4, true, Bytes::from_static(b"r")),
            ]
        );
        l.close(None);
        assert!(
            l.append(STANDALONE, Bytes::from_static(b"c"), false)
                .is_err()
        );
        assert_eq!(
            rec.0.lock().unwrap().len(),
            4,
            "a refused event is not reported"
        );
    }

    #[test]
    fn a_restored_log_replays_stored_post_answers_then_ends_them() {
        use crate::session::RequestEvent;
        let rec = Arc::new(Recorder::default());
        let id = crate::session::SessionId::parse("s1").unwrap();
        let r = EventLog::restored(limits(16), None, 2, stored(&[1, 2]))
            .with_requests(
                40,
                vec![
                    RequestEvent::new(3, 1, Bytes::from_static(b"p1")),
                    RequestEvent::new(5, 1, Bytes::from_static(b"q1")),
                    RequestEvent::new(3, 2, Bytes::from_static(b"p2")),
                    RequestEvent::new(3, 2, Bytes::from_static(b"dup")),
                    RequestEvent::new(3, 3, Bytes::from_static(b"p3")).with_last(true),
                ],
            )
            .with_sink(Some((id, rec.clone())));
        assert!(r.issued(3, 1) && r.issued(3, 3) && r.issued(5, 1));
        assert!(!r.issued(3, 4) && !r.issued(4, 1));
        // `Last-Event-ID: 3-1`: the rest of that answer, then the stream ends.
        let mut c = r.attach(3, Some(1), false, true).unwrap();
        assert_eq!(next_data(&r, &mut c), Some((2, Bytes::from_static(b"p2"))));
        assert_eq!(next_data(&r, &mut c), Some((3, Bytes::from_static(b"p3"))));
        assert_eq!(next_data(&r, &mut c), None);
        // A stream cut before its answer ends after what was stored.
        let mut c = r.attach(5, Some(0), false, true).unwrap();
        assert_eq!(next_data(&r, &mut c), Some((1, Bytes::from_static(b"q1"))));
        assert_eq!(next_data(&r, &mut c), None);
        // New streams are numbered above the restored ones; ordinals go on above the stored.
        let post = r.open_stream().unwrap();
        assert!(post > 5);
        r.append(post, Bytes::from_static(b"n"), false).unwrap();
        assert_eq!(rec.0.lock().unwrap()[0].2, 41);
    }

    /// A write-through sink that keeps the acks until the test settles them.
    #[derive(Debug, Default)]
    struct Holding(std::sync::Mutex<Vec<crate::session::EventAck>>);

    impl crate::session::EventSink for Holding {
        fn record(&self, _: &crate::session::SessionId, ev: crate::session::LoggedEvent<'_>) {
            assert_ne!(ev.stream, STANDALONE, "the standalone stream is held");
        }

        fn durability(&self) -> crate::session::Durability {
            crate::session::Durability::WriteThrough
        }

        fn record_write_through(
            &self,
            _: &crate::session::SessionId,
            _: crate::session::LoggedEvent<'_>,
            ack: crate::session::EventAck,
        ) {
            self.0.lock().unwrap().push(ack);
        }
    }

    impl Holding {
        /// Settles the acks of `seqs`: stored, or (`stored == false`) dropped.
        fn settle(&self, seqs: &[u32], stored: bool) {
            let mut acks = self.0.lock().unwrap();
            let (now, keep): (Vec<_>, Vec<_>) =
                acks.drain(..).partition(|a| seqs.contains(&a.seq()));
            *acks = keep;
            drop(acks);
            for ack in now {
                if stored {
                    ack.stored();
                } else {
                    drop(ack);
                }
            }
        }
    }

    fn held_log(sink: &Arc<Holding>) -> EventLog {
        let id = crate::session::SessionId::parse("s1").unwrap();
        log(16).with_sink(Some((id, sink.clone())))
    }

    #[test]
    fn write_through_holds_standalone_events_until_stored_in_order() {
        let sink = Arc::new(Holding::default());
        let l = held_log(&sink);
        let mut c = l.attach(STANDALONE, None, true, false).unwrap();
        let (reader, reader_waker) = Count::waker();
        for data in [b"a", b"b", b"c"] {
            l.append(STANDALONE, Bytes::from_static(data), false)
                .unwrap();
        }
        assert!(
            l.poll_next(&mut c, &mut Context::from_waker(&reader_waker))
                .is_pending(),
            "nothing is sent before the sink stored it"
        );
        let woken = reader.0.load(std::sync::atomic::Ordering::SeqCst);
        // Event 2 given up first: it is released, but 1 still holds the stream (order).
        sink.settle(&[2], false);
        assert!(l.poll_next(&mut c, &mut cx()).is_pending());
        sink.settle(&[1], true);
        assert!(
            reader.0.load(std::sync::atomic::Ordering::SeqCst) > woken,
            "the store's advance wakes the reader"
        );
        assert_eq!(next(&l, &mut c), Some((STANDALONE, 1)));
        assert_eq!(next(&l, &mut c), Some((STANDALONE, 2)), "released unstored");
        assert_eq!(next(&l, &mut c), None, "3 waits");
        sink.settle(&[3], true);
        assert_eq!(next(&l, &mut c), Some((STANDALONE, 3)));
        // A POST stream's events are not held (its response is one of them).
        let post = l.open_stream().unwrap();
        l.append(post, Bytes::from_static(b"p"), false).unwrap();
        let mut p = l.attach(post, Some(0), false, true).unwrap();
        assert_eq!(next(&l, &mut p), Some((post, 1)));
        // A resumption replays what is stored at once.
        l.release(&c);
        let mut again = l.attach(STANDALONE, Some(0), true, true).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| next(&l, &mut again).map(|e| e.1)).collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn a_held_reader_still_ends_on_takeover_and_close() {
        let sink = Arc::new(Holding::default());
        let l = held_log(&sink);
        let mut old = l.attach(STANDALONE, None, true, false).unwrap();
        l.append(STANDALONE, Bytes::from_static(b"a"), false)
            .unwrap();
        let (woken, w) = Count::waker();
        assert!(
            l.poll_next(&mut old, &mut Context::from_waker(&w))
                .is_pending()
        );
        let mut new = l.attach(STANDALONE, Some(0), false, true).unwrap();
        assert!(woken.woken(), "the held reader is told of the takeover");
        assert!(matches!(
            l.poll_next(&mut old, &mut cx()),
            Poll::Ready(Item::End { .. })
        ));
        assert!(l.poll_next(&mut new, &mut cx()).is_pending());
        l.close(None);
        assert!(matches!(
            l.poll_next(&mut new, &mut cx()),
            Poll::Ready(Item::End { .. })
        ));
    }

    #[test]
    fn a_restored_write_through_log_sends_what_came_from_the_store_at_once() {
        let sink = Arc::new(Holding::default());
        let id = crate::session::SessionId::parse("s1").unwrap();
        let r = EventLog::restored(limits(16), Some(3), 8, stored(&[4, 5, 6, 7, 8]))
            .with_sink(Some((id, sink.clone())));
        let mut c = r.attach(STANDALONE, Some(3), true, true).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| next(&r, &mut c).map(|e| e.1)).collect();
        assert_eq!(got, [4, 5, 6, 7, 8], "read back from the store: stored");
        assert_eq!(r.append(STANDALONE, Bytes::from_static(b"n"), false), Ok(9));
        assert_eq!(next(&r, &mut c), None, "a new event waits for the store");
        sink.settle(&[9], true);
        assert_eq!(next(&r, &mut c), Some((STANDALONE, 9)));
    }
}
