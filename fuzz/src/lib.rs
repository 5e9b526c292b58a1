//! What the fuzz targets share: a tiny HTTP-ish request notation for inputs and seeds, a
//! Server-Sent Events parser written from the WHATWG algorithm, and the checks every answer of
//! the transport must pass.
//!
//! Every check panics with a message on a violated property: libFuzzer then records the input
//! as a crash under `fuzz/artifacts/<target>/`.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// A current-thread runtime with a paused clock: a stream that never ends (a standalone `GET`)
/// is cut after [`BODY_DEADLINE`] of virtual time, which passes as soon as nothing else runs.
///
/// # Panics
///
/// If the runtime cannot be built (not an input-derived failure).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// How long (virtual time) a response body is read before it is cut.
pub const BODY_DEADLINE: Duration = Duration::from_secs(1);

/// One request of an input, in the notation of the seed files:
///
/// ```text
/// POST /mcp
/// accept: application/json, text/event-stream
/// content-type: application/json
///
/// {"jsonrpc":"2.0","id":1,"method":"ping"}
/// ```
///
/// The first line is the method and the path; header lines follow up to an empty line; the
/// rest is the body. Requests of one input are separated by a line `~~~`. A header line that
/// is not a valid name or value is skipped (the server never sees it, as on the wire).
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: Vec<u8>,
    pub path: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Splits an input into its option line (a first line starting with `#`, as words) and its
/// requests.
pub fn parse_input(data: &[u8]) -> (Vec<String>, Vec<RawRequest>) {
    let (options, rest) = match data.strip_prefix(b"#") {
        Some(r) => {
            let end = r.iter().position(|&b| b == b'\n').unwrap_or(r.len());
            let words = String::from_utf8_lossy(&r[..end])
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            (words, r.get(end + 1..).unwrap_or_default())
        }
        None => (Vec::new(), data),
    };
    let requests = split(rest, b"\n~~~\n").map(parse_request).collect();
    (options, requests)
}

fn split<'a>(mut data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        match data.windows(sep.len()).position(|w| w == sep) {
            Some(at) => {
                let part = &data[..at];
                data = &data[at + sep.len()..];
                Some(part)
            }
            None => Some(std::mem::take(&mut data)),
        }
    })
}

fn parse_request(part: &[u8]) -> RawRequest {
    let mut lines = part.split_inclusive(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let first = first.strip_suffix(b"\n").unwrap_or(first);
    let (method, path) = match first.iter().position(|&b| b == b' ') {
        Some(at) => (first[..at].to_vec(), first[at + 1..].to_vec()),
        None => (first.to_vec(), b"/mcp".to_vec()),
    };
    let mut headers = Vec::new();
    let mut consumed = first.len() + usize::from(part.len() > first.len());
    for line in lines.by_ref() {
        consumed += line.len();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        headers.push((name.to_vec(), value.to_vec()));
    }
    let body = part.get(consumed..).unwrap_or_default().to_vec();
    RawRequest {
        method,
        path,
        headers,
        body,
    }
}

impl RawRequest {
    /// A request with these headers and body.
    pub fn new(method: &str, headers: &[(&str, &str)], body: &str) -> Self {
        Self {
            method: method.as_bytes().to_vec(),
            path: b"/mcp".to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// Replaces `from` by `to` in every header value and in the body.
    pub fn substitute(&mut self, from: &[u8], to: &[u8]) {
        for (_, v) in &mut self.headers {
            *v = replace(v, from, to);
        }
        self.body = replace(&self.body, from, to);
    }

    /// The `http` request, or `None` when the request line is not one `http` can carry.
    pub fn to_http(&self) -> Option<Request<Full<Bytes>>> {
        let method = Method::from_bytes(&self.method).ok()?;
        let uri = http::Uri::try_from(self.path.as_slice()).ok()?;
        let mut req = Request::new(Full::new(Bytes::from(self.body.clone())));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (n, v) in &self.headers {
            let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) else {
                continue;
            };
            req.headers_mut().append(n, v);
        }
        Some(req)
    }
}

fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() || s.len() < from.len() {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// One event of an SSE stream, as a browser's `EventSource` dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub last_event_id: String,
}

/// Parses an event stream by the WHATWG HTML "event stream interpretation" algorithm
/// (§9.2.6): lines end at CRLF, LF or a bare CR; a field's value loses one leading space;
/// `data` lines are joined with LF; an empty line dispatches (nothing when the data buffer is
/// empty); comments start with `:`; an event cut off by the end of the stream is discarded.
/// Also returns the last `retry:` value.
pub fn parse_sse(stream: &[u8]) -> (Vec<SseEvent>, Option<u64>) {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut events = Vec::new();
    let (mut event, mut data, mut last_id, mut retry) =
        (String::new(), String::new(), String::new(), None);
    let mut rest = text;
    while !rest.is_empty() {
        let Some(end) = rest.find(['\r', '\n']) else {
            // An unterminated last line: not a line at all.
            break;
        };
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(SseEvent {
                    event: if event.is_empty() {
                        "message".to_owned()
                    } else {
                        std::mem::take(&mut event)
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: last_id.clone(),
                });
            }
            event.clear();
            data.clear();
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
            "event" => value.clone_into(&mut event),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut last_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                retry = value.parse().ok();
            }
            _ => {}
        }
    }
    (events, retry)
}

/// `data` with every line break (CRLF, LF or a bare CR) as LF: what an SSE `data` field can
/// carry of it.
pub fn normalize_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// A response, read to its end or for [`BODY_DEADLINE`] of virtual time.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
    pub body: Vec<u8>,
    /// Whether the body ended (false: it was cut at the deadline).
    pub complete: bool,
}

/// Reads `res` (a body that fails is a violated property: the transport's bodies never fail).
pub async fn read<B>(res: Response<B>) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    let mut body = std::pin::pin!(body);
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    let mut out = Vec::new();
    let mut complete = false;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => {
                complete = true;
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => panic!("a response body failed: {e:?}"),
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        extensions: parts.extensions,
        body: out,
        complete,
    }
}

fn content_type(h: &HeaderMap) -> Option<&str> {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Checks one JSON-RPC message sent by the server: a response (exactly one of `result` and
/// `error`, an error with an integer `code` and a string `message`), a request or a
/// notification.
pub fn check_server_message(v: &Value, context: &str) {
    let Some(o) = v.as_object() else {
        panic!("{context}: a JSON-RPC message must be an object: {v}");
    };
    assert_eq!(
        o.get("jsonrpc"),
        Some(&Value::from("2.0")),
        "{context}: jsonrpc must be \"2.0\": {v}"
    );
    if let Some(id) = o.get("id") {
        assert!(
            id.is_null() || id.is_string() || id.is_i64() || id.is_u64(),
            "{context}: bad id: {v}"
        );
    }
    match (o.get("result"), o.get("error"), o.get("method")) {
        (Some(_), None, None) => assert!(o.contains_key("id"), "{context}: result without id: {v}"),
        (None, Some(e), None) => {
            assert!(o.contains_key("id"), "{context}: error without id: {v}");
            assert!(
                e.get("code").is_some_and(Value::is_i64),
                "{context}: error code must be an integer: {v}"
            );
            assert!(
                e.get("message").is_some_and(Value::is_string),
                "{context}: error message must be a string: {v}"
            );
        }
        (None, None, Some(m)) => assert!(m.is_string(), "{context}: method must be a string: {v}"),
        _ => panic!("{context}: neither a response, a request nor a notification: {v}"),
    }
}

/// Parses JSON as a `serde_json::Value`: `Ok(None)` when the text is valid JSON that a `Value`
/// cannot hold (a number beyond `f64`, which RFC 8259 §6 allows and a parser that skips or
/// keeps the number raw accepts), `Err` when it is not JSON.
pub fn json_value(bytes: &[u8]) -> Result<Option<Value>, serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.to_string().starts_with("number out of range") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The JSON-RPC error code of a JSON answer, if it is an error.
pub fn error_code(a: &Answer) -> Option<i64> {
    let v: Value = serde_json::from_slice(&a.body).ok()?;
    v.get("error")?.get("code")?.as_i64()
}

/// The properties of every answer of the stack, whatever the request:
///
/// - an error status (4xx, 5xx) has a JSON body holding one JSON-RPC error response;
/// - a JSON body (`application/json`) holds a JSON-RPC response (or a batch of them);
/// - an SSE body parses, and every event carries empty data (a priming event) or one
///   JSON-RPC message;
/// - `202 Accepted` has an empty body.
pub fn check_answer(a: &Answer, context: &str) {
    let ct = content_type(&a.headers).unwrap_or("");
    if a.status.is_client_error() || a.status.is_server_error() {
        assert!(
            ct.starts_with("application/json"),
            "{context}: an error status {} without a JSON-RPC body (content-type {ct:?}, body {:?})",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    if a.status == StatusCode::ACCEPTED {
        assert!(a.body.is_empty(), "{context}: 202 with a body");
    }
    if ct.starts_with("application/json") {
        assert!(a.complete, "{context}: a JSON body that never ends");
        let v: Value = match serde_json::from_slice(&a.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "{context}: JSON body does not parse ({e}): {:?}",
                String::from_utf8_lossy(&a.body)
            ),
        };
        match &v {
            Value::Array(items) => {
                assert!(!items.is_empty(), "{context}: an empty batch answer");
                for item in items {
                    check_server_message(item, context);
                    assert!(
                        item.get("method").is_none(),
                        "{context}: a request in a JSON answer"
                    );
                }
            }
            _ => {
                check_server_message(&v, context);
                assert!(
                    v.get("method").is_none(),
                    "{context}: a request in a JSON answer"
                );
            }
        }
        if a.status.is_client_error() || a.status.is_server_error() {
            assert!(
                v.get("error").is_some(),
                "{context}: error status {} with a result",
                a.status
            );
        }
    } else if ct.starts_with("text/event-stream") {
        let (events, _) = parse_sse(&a.body);
        for e in events {
            if e.data.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&e.data) {
                Ok(v) => check_server_message(&v, context),
                Err(err) => panic!("{context}: SSE data is not JSON ({err}): {:?}", e.data),
            }
        }
    } else {
        assert!(
            a.body.is_empty(),
            "{context}: a body of content-type {ct:?}: {:?}",
            String::from_utf8_lossy(&a.body)
        );
    }
}

/// Calls a tower service once, waiting for readiness (the services here are always ready).
pub async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: tower_service::Service<R>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

/// A service around `inner` that hands every request it sees to `seen` first (to observe what
/// an outer layer passes on).
#[derive(Clone, Debug)]
pub struct Probe<S, F> {
    pub inner: S,
    pub seen: F,
}

impl<S, F, B> tower_service::Service<Request<B>> for Probe<S, F>
where
    S: tower_service::Service<Request<B>>,
    F: Fn(&Request<B>),
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        (self.seen)(&req);
        self.inner.call(req)
    }
}
