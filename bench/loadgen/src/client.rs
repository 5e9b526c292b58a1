//! A lean HTTP/1.1 keep-alive client for Streamable HTTP MCP: one TCP connection per `Conn`,
//! one request in flight per connection, JSON and SSE answers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use memchr::memmem;
use tokio::net::TcpStream;

pub type Error = String;
pub type Body = Full<Bytes>;

/// The legacy protocol revision the generator negotiates.
pub const LEGACY_VERSION: &str = "2025-11-25";
/// The stateless (modern) protocol revision.
pub const MODERN_VERSION: &str = "2026-07-28";

/// How long one HTTP exchange may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the MCP endpoint is.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: String,
    pub stateless: bool,
}

impl Target {
    /// Parses `http://host:port/path` (IP literal or `localhost`).
    pub fn parse(url: &str, stateless: bool) -> Result<Arc<Self>, Error> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let resolved = if let Some(port) = authority.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else {
            authority.to_owned()
        };
        let addr: SocketAddr = resolved
            .parse()
            .map_err(|e| format!("{url}: host must be ip:port or localhost:port ({e})"))?;
        Ok(Arc::new(Self {
            addr,
            host: HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            path: path.to_owned(),
            stateless,
        }))
    }
}

/// A legacy session (or, for a server that mints none, just the negotiated version).
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Option<HeaderValue>,
    pub version: HeaderValue,
    /// The node that answered the `initialize` (its `x-mcp-node` header, which the node example
    /// sets), if it named one.
    pub node: Option<String>,
}

/// Opens a TCP connection with `TCP_NODELAY` and performs the HTTP/1.1 handshake; the
/// connection future is returned so the caller decides where it runs.
pub async fn handshake(
    target: &Target,
) -> Result<
    (
        SendRequest<Body>,
        http1::Connection<TokioIo<TcpStream>, Body>,
    ),
    Error,
> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = tcp.set_nodelay(true);
    http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A keep-alive connection that reconnects when the server closed it.
pub struct Conn {
    target: Arc<Target>,
    tx: Option<SendRequest<Body>>,
}

impl Conn {
    pub fn new(target: Arc<Target>) -> Self {
        Self { target, tx: None }
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Body>, Error> {
        let mut usable = false;
        if let Some(tx) = &mut self.tx {
            usable = tx.ready().await.is_ok();
        }
        if !usable {
            let (mut tx, conn) = handshake(&self.target).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            tx.ready().await.map_err(|e| format!("connection: {e}"))?;
            self.tx = Some(tx);
        }
        self.tx.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Sends one request and returns the response head (the body still streams).
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, Error> {
        let tx = self.sender().await?;
        match tx.send_request(req).await {
            Ok(res) => Ok(res),
            Err(e) => {
                self.tx = None;
                Err(format!("request: {e}"))
            }
        }
    }

    /// Drops the connection (the next request reconnects).
    pub fn reset(&mut self) {
        self.tx = None;
    }
}

/// A POST of one JSON-RPC message, with the session's headers or the modern per-request ones.
pub fn post(
    target: &Target,
    session: Option<&Session>,
    body: Bytes,
    method: &str,
    name: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(header::HOST, target.host.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    if target.stateless {
        b = b
            .header("mcp-protocol-version", MODERN_VERSION)
            .header("mcp-method", method);
        if let Some(name) = name {
            b = b.header("mcp-name", name);
        }
    } else if let Some(s) = session {
        b = b.header("mcp-protocol-version", s.version.clone());
        if let Some(id) = &s.id {
            b = b.header("mcp-session-id", id.clone());
        }
    }
    b.body(Full::new(body)).unwrap_or_default()
}

/// A GET (standalone stream) or DELETE for a session.
pub fn session_request(target: &Target, session: &Session, method: Method) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(header::HOST, target.host.clone())
        .header(header::ACCEPT, "text/event-stream")
        .header("mcp-protocol-version", session.version.clone());
    if let Some(id) = &session.id {
        b = b.header("mcp-session-id", id.clone());
    }
    b.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// `params._meta` for a modern request.
pub fn modern_meta() -> &'static str {
    r#""io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"loadgen","version":"0.0.0"}"#
}

pub fn initialize_body() -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{LEGACY_VERSION}","capabilities":{{}},"clientInfo":{{"name":"loadgen","version":"0.0.0"}}}}}}"#
    ))
}

pub fn initialized_body() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
}

/// What a JSON-RPC answer contained.
#[derive(Debug, Default)]
pub struct Answer {
    /// Events on an SSE answer that matched the counted pattern (e.g. progress notifications).
    pub counted: usize,
    /// The final response's raw JSON.
    pub response: Bytes,
}

/// Reads a JSON-RPC request's answer (JSON or SSE) to its end; `Ok` only for a `result`.
pub async fn read_answer(res: Response<Incoming>, count: Option<&[u8]>) -> Result<Answer, Error> {
    let status = res.status();
    let is_sse = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = res.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(format!("HTTP {status}: {}", snippet(&bytes)));
    }
    if !is_sse {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        return check_response(bytes, 0);
    }
    let mut sse = SseBuf::default();
    let mut answer = Answer::default();
    let mut response: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sse.push(&data);
        while let Some(event) = sse.next_event() {
            if memmem::find(&event, b"\"method\"").is_some() {
                if let Some(pat) = count
                    && memmem::find(&event, pat).is_some()
                {
                    answer.counted += 1;
                }
            } else if memmem::find(&event, b"{").is_some() && response.is_none() {
                response = Some(event);
            }
        }
    }
    match response {
        Some(r) => check_response(r, answer.counted),
        None => Err("SSE answer ended without a response".into()),
    }
}

fn check_response(bytes: Bytes, counted: usize) -> Result<Answer, Error> {
    if memmem::find(&bytes, b"\"result\"").is_some() {
        Ok(Answer {
            counted,
            response: bytes,
        })
    } else {
        Err(format!("not a result: {}", snippet(&bytes)))
    }
}

/// Reads and discards a body; `Ok` when the status is 2xx.
pub async fn expect_2xx(res: Response<Incoming>) -> Result<(), Error> {
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", snippet(&bytes)))
    }
}

pub fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(160)]);
    s.replace('\n', "\\n")
}

/// Splits an SSE byte stream into events (blank-line separated; `\n` or `\r\n`).
#[derive(Debug, Default)]
pub struct SseBuf {
    buf: Vec<u8>,
}

impl SseBuf {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_event(&mut self) -> Option<Bytes> {
        let lf = memmem::find(&self.buf, b"\n\n").map(|i| (i, 2));
        let crlf = memmem::find(&self.buf, b"\r\n\r\n").map(|i| (i, 4));
        let (at, len) = match (lf, crlf) {
            (Some(a), Some(b)) => {
                if a.0 <= b.0 {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return None,
        };
        let rest = self.buf.split_off(at + len);
        let mut event = std::mem::replace(&mut self.buf, rest);
        event.truncate(at);
        Some(Bytes::from(event))
    }
}

/// `initialize` + `notifications/initialized` on `conn`; returns the session.
pub async fn open_session(conn: &mut Conn) -> Result<Session, Error> {
    let target = conn.target().clone();
    let req = post(&target, None, initialize_body(), "initialize", None);
    let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = conn.send(req).await?;
        let id = res.headers().get("mcp-session-id").cloned();
        let node = res
            .headers()
            .get("x-mcp-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = read_answer(res, None).await?;
        Ok::<_, Error>((id, node, answer))
    })
    .await
    .map_err(|_| "initialize timed out".to_owned())??;
    let (id, node, answer) = res;
    let version = negotiated_version(&answer.response)
        .unwrap_or_else(|| HeaderValue::from_static(LEGACY_VERSION));
    let session = Session { id, version, node };
    let req = post(
        &target,
        Some(&session),
        initialized_body(),
        "notifications/initialized",
        None,
    );
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = conn.send(req).await?;
        expect_2xx(res).await
    })
    .await
    .map_err(|_| "notifications/initialized timed out".to_owned())??;
    Ok(session)
}

/// DELETE for the session (nothing to do for a server that minted no id).
pub async fn close_session(conn: &mut Conn, session: &Session) -> Result<(), Error> {
    if session.id.is_none() {
        return Ok(());
    }
    let req = session_request(conn.target(), session, Method::DELETE);
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = conn.send(req).await?;
        expect_2xx(res).await
    })
    .await
    .map_err(|_| "DELETE timed out".to_owned())?
}

fn negotiated_version(response: &[u8]) -> Option<HeaderValue> {
    let key = b"\"protocolVersion\":\"";
    let at = memmem::find(response, key)? + key.len();
    let end = at + memchr::memchr(b'"', &response[at..])?;
    HeaderValue::from_bytes(&response[at..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_on_blank_lines() {
        let mut s = SseBuf::default();
        s.push(b"id: 1\ndata: {\"a\":1}\n\nid: 2\r\ndata: {}\r\n\r\n: keep");
        assert_eq!(&s.next_event().unwrap()[..], b"id: 1\ndata: {\"a\":1}");
        assert_eq!(&s.next_event().unwrap()[..], b"id: 2\r\ndata: {}");
        assert!(s.next_event().is_none());
        s.push(b"alive\n\n");
        assert_eq!(&s.next_event().unwrap()[..], b": keepalive");
    }

    #[test]
    fn version_is_read_from_the_result() {
        let v = negotiated_version(br#"{"result":{"protocolVersion":"2025-06-18"}}"#).unwrap();
        assert_eq!(v, "2025-06-18");
    }

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://localhost:9000/mcp", false).unwrap();
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(t.path, "/mcp");
        assert_eq!(t.host, "localhost:9000");
    }
}
