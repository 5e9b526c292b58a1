use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::{task::AbortHandle, time::Sleep};

use super::log::{Cursor, Item};
use crate::{full_body::FullBytes, session::LogRef};

pin_project! {
    /// The response body of [`SseTransport`](super::SseTransport): empty, one JSON document,
    /// or a Server-Sent Events stream.
    ///
    /// # Cancel safety
    ///
    /// Dropping an SSE body (the client went away) releases its stream: in the legacy era the
    /// request keeps running and its remaining events stay in the session's event log for a
    /// `GET` + `Last-Event-ID` resumption; in the modern era dropping it cancels the request.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::handler::handler_fn;
    /// use tower::{Layer, ServiceExt};
    ///
    /// let svc = mcp_affinity::SseTransportLayer::new().layer(handler_fn(|_r, _c| async { Ok(serde_json::json!({})) }));
    /// let req = http::Request::post("/mcp").header("host", "localhost").body(String::new()).unwrap();
    /// let res: http::Response<mcp_affinity::transport::ResponseBody> = svc.oneshot(req).await.unwrap();
    /// let json = res.into_body().collect().await.unwrap().to_bytes();
    /// assert!(json.starts_with(br#"{"jsonrpc":"2.0""#));
    /// # }
    /// ```
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Full { data: FullBytes },
        // Boxed: a stream's state is 144 bytes, and every response (most of them JSON) is
        // moved through each layer's future by value; boxed, `Response<ResponseBody>` is 144
        // bytes instead of 256.
        Sse { sse: Pin<Box<SseBody>> },
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("ResponseBody")
                .field("len", &data.len())
                .finish(),
            Kind::Sse { .. } => f.debug_struct("ResponseBody").field("sse", &true).finish(),
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl ResponseBody {
    /// An empty body.
    ///
    /// # Example
    ///
    /// ```
    /// use http_body::Body;
    /// use mcp_affinity::transport::ResponseBody;
    ///
    /// let body = ResponseBody::empty();
    /// assert!(body.is_end_stream());
    /// assert_eq!(body.size_hint().exact(), Some(0));
    /// ```
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full {
                data: FullBytes::default(),
            },
        }
    }

    /// A body of these bytes.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::transport::ResponseBody;
    ///
    /// let body = ResponseBody::full(bytes::Bytes::from_static(b"{}"));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
    /// # }
    /// ```
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: FullBytes::new(data),
            },
        }
    }

    pub(crate) fn sse(sse: SseBody) -> Self {
        Self {
            kind: Kind::Sse { sse: Box::pin(sse) },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => data.poll_frame(),
            KindProj::Sse { sse } => sse.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_end_stream(),
            Kind::Sse { sse } => sse.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => data.size_hint(),
            Kind::Sse { .. } => SizeHint::default(),
        }
    }
}

/// Aborts a task when dropped (modern era: closing the stream cancels the request).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pin_project! {
    pub(crate) struct SseBody {
        log: LogRef,
        cursor: Cursor,
        prelude: Option<Bytes>,
        with_ids: bool,
        keep_alive: Option<KeepAlive>,
        done: bool,
        guard: Option<AbortOnDrop>,
    }

    impl PinnedDrop for SseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.log.log().release(this.cursor);
            crate::metrics::streams_open(era(*this.with_ids), -1);
        }
    }
}

/// The keep-alive of one stream: a comment goes out `interval` after the last frame. The timer
/// is moved only when it fires (resetting it on every event would cost a timer-wheel update
/// per delivery, per stream).
struct KeepAlive {
    interval: Duration,
    last_frame: tokio::time::Instant,
    // Boxed so the body is `Unpin` (easy to poll by hand); one allocation per stream.
    sleep: Pin<Box<Sleep>>,
}

impl KeepAlive {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_frame: tokio::time::Instant::now(),
            sleep: Box::pin(tokio::time::sleep(interval)),
        }
    }

    /// Ready when a keep-alive is due (`interval` without a frame); the caller sends it. A timer
    /// that fired early (frames went out meanwhile) is moved to `interval` after the last one.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let due = self.last_frame + self.interval;
            if due <= self.sleep.deadline() {
                self.sent();
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(due);
        }
    }

    /// A frame went out now.
    fn sent(&mut self) {
        self.last_frame = tokio::time::Instant::now();
    }
}

impl SseBody {
    /// `priming`: the retry hint for a priming event (an id and empty data) sent first.
    pub(crate) fn new(
        log: LogRef,
        cursor: Cursor,
        with_ids: bool,
        priming: Option<Duration>,
        keep_alive: Option<Duration>,
        guard: Option<AbortOnDrop>,
    ) -> Self {
        let prelude = priming.map(|retry| {
            let mut b = BytesMut::with_capacity(48);
            b.put_slice(b"id: ");
            put_event_id(&mut b, cursor.stream(), cursor_last_seq(&cursor));
            b.put_slice(b"\nretry: ");
            b.put_slice(retry.as_millis().to_string().as_bytes());
            b.put_slice(b"\ndata: \n\n");
            b.freeze()
        });
        crate::metrics::streams_open(era(with_ids), 1);
        Self {
            log,
            cursor,
            prelude,
            with_ids,
            keep_alive: keep_alive.map(KeepAlive::new),
            done: false,
            guard,
        }
    }
}

/// The era of a stream: legacy streams carry event ids, modern ones none.
fn era(with_ids: bool) -> crate::protocol::Era {
    if with_ids {
        crate::protocol::Era::Legacy
    } else {
        crate::protocol::Era::Modern
    }
}

fn cursor_last_seq(c: &Cursor) -> u32 {
    c.last_seq()
}

fn put_event_id(b: &mut BytesMut, stream: u32, seq: u32) {
    put_u32(b, stream);
    b.put_u8(b'-');
    put_u32(b, seq);
}

/// Decimal digits of `n`, without an allocation.
fn put_u32(b: &mut BytesMut, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.put_slice(&digits[at..]);
}

/// Parses an event id `<stream>-<seq>`.
pub(crate) fn parse_event_id(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Encodes one SSE event carrying `data`, one `data:` line per line of it.
///
/// An SSE parser ends a line at CRLF, LF or a bare CR, so `data` is split at each of them (a
/// CRLF once): a line break in `data` arrives as an LF, and nothing after a CR can be read as a
/// field of its own (`id:`, `event:`). JSON from serde has no raw line breaks (they are escaped
/// inside strings): one scan finds no line break and it goes out as one line, as it is.
pub(crate) fn encode_event(id: Option<(u32, u32)>, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 32);
    if let Some((stream, seq)) = id {
        b.put_slice(b"id: ");
        put_event_id(&mut b, stream, seq);
        b.put_u8(b'\n');
    }
    b.put_slice(b"event: message\n");
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&c| c == b'\n' || c == b'\r');
        put_data_line(&mut b, &rest[..end.unwrap_or(rest.len())]);
        let Some(end) = end else { break };
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
    }
    b.put_u8(b'\n');
    b.freeze()
}

fn put_data_line(b: &mut BytesMut, line: &[u8]) {
    b.put_slice(b"data: ");
    b.put_slice(line);
    b.put_u8(b'\n');
}

impl SseBody {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some(p) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let item = this.log.log().poll_next(this.cursor, cx);
        let frame = match item {
            Poll::Ready(Item::Event { stream, seq, data }) => {
                encode_event((*this.with_ids).then_some((stream, seq)), &data)
            }
            Poll::Ready(Item::End { retry }) => {
                *this.done = true;
                return Poll::Ready(retry.map(|r| {
                    Ok(Frame::data(Bytes::from(format!(
                        "retry: {}\n\n",
                        r.as_millis()
                    ))))
                }));
            }
            Poll::Pending => {
                let Some(keep_alive) = this.keep_alive.as_mut() else {
                    return Poll::Pending;
                };
                ready!(keep_alive.poll_due(cx));
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
            }
        };
        if let Some(keep_alive) = this.keep_alive.as_mut() {
            keep_alive.sent();
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_encoding() {
        assert_eq!(
            &encode_event(Some((3, 7)), b"{}")[..],
            b"id: 3-7\nevent: message\ndata: {}\n\n"
        );
        assert_eq!(
            &encode_event(None, b"a\r\nb")[..],
            b"event: message\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            &encode_event(None, b"a\rb\n\rc\r")[..],
            b"event: message\ndata: a\ndata: b\ndata: \ndata: c\ndata: \n\n"
        );
        assert_eq!(
            &encode_event(Some((0, u32::MAX)), b"{}")[..4 + 12],
            b"id: 0-4294967295"
        );
        assert_eq!(&encode_event(Some((10, 109)), b"")[..12], b"id: 10-109\ne");
        assert_eq!(parse_event_id("3-7"), Some((3, 7)));
        assert_eq!(parse_event_id("x-7"), None);
        assert_eq!(parse_event_id("37"), None);
    }

    /// One event as an SSE parser dispatches it.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        kind: String,
        data: String,
        id: String,
    }

    /// An event-stream parser that follows the WHATWG HTML rules ("Interpreting an event
    /// stream"): a line ends at CRLF, LF or CR; `data` lines are joined with LF and the last LF
    /// is removed; an event with an empty data buffer is not dispatched.
    fn parse_sse(stream: &[u8]) -> Vec<Parsed> {
        let text = std::str::from_utf8(stream).unwrap();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(['\r', '\n']) {
            lines.push(&rest[..i]);
            let crlf = rest[i..].starts_with("\r\n");
            rest = &rest[i + if crlf { 2 } else { 1 }..];
        }
        // What follows the last line break is an incomplete line: ignored.
        let (mut events, mut data, mut kind, mut id) =
            (Vec::new(), String::new(), String::new(), String::new());
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push(Parsed {
                        kind: if kind.is_empty() {
                            "message".to_owned()
                        } else {
                            std::mem::take(&mut kind)
                        },
                        data: std::mem::take(&mut data),
                        id: id.clone(),
                    });
                }
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "event" => kind = value.to_owned(),
                "id" if !value.contains('\0') => id = value.to_owned(),
                _ => {}
            }
        }
        events
    }

    /// What a parser gives back for `data`: every line break (CRLF counted once) is an LF.
    fn as_parsed(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    #[test]
    fn encoded_events_round_trip_through_an_sse_parser() {
        let mut cases: Vec<String> = [
            "",
            "{}",
            "a\rb",
            "a\nb",
            "a\r\nb",
            "a\n\rb",
            "a\r",
            "a\r\n",
            "a\n",
            "\r",
            "\r\r\n\n",
            "data: x\r\rid: 9\revent: other\r",
            ": not a comment\rretry: 1",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // Every string of up to five characters over `x`, CR and LF.
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|s| ['x', '\r', '\n'].map(|c| format!("{s}{c}")))
                .collect();
            cases.extend(frontier.iter().cloned());
        }
        for data in &cases {
            let encoded = encode_event(Some((3, 7)), data.as_bytes());
            let expected = Parsed {
                kind: "message".to_owned(),
                data: as_parsed(data),
                id: "3-7".to_owned(),
            };
            assert_eq!(parse_sse(&encoded), [expected], "{data:?} as {encoded:?}");
        }

        // A JSON string whose content holds escaped line breaks is one line, unchanged; JSON
        // with raw line breaks between tokens (a handler's own output) still parses the same.
        let value = serde_json::json!({"text": "one\r\ntwo\rthree\n", "n": 1});
        let compact = serde_json::to_vec(&value).unwrap();
        let encoded = encode_event(None, &compact);
        assert_eq!(encoded.iter().filter(|&&c| c == b'\n').count(), 3);
        let parsed = parse_sse(&encoded);
        assert_eq!(parsed[0].data.as_bytes(), &compact[..]);
        let pretty = serde_json::to_string_pretty(&value)
            .unwrap()
            .replace('\n', "\r");
        let parsed = parse_sse(&encode_event(None, pretty.as_bytes()));
        let back: serde_json::Value = serde_json::from_str(&parsed[0].data).unwrap();
        assert_eq!(back, value);
    }

    /// Found by the `sse` fuzz target: a bare CR ends a line for every SSE parser, so it
    /// must end a `data:` line here too (as LF and CRLF do).
    #[test]
    fn every_line_break_ends_a_data_line() {
        assert_eq!(
            &encode_event(None, b"a\rb\r\nc\nd\r")[..],
            b"event: message\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        );
        assert_eq!(
            &encode_event(None, b"\r\r\n")[..],
            b"event: message\ndata: \ndata: \ndata: \n\n"
        );
    }
}
