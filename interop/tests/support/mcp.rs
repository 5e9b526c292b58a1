//! Test support: a real TCP server running a transport over an instrumented handler, and an
//! HTTP/SSE client.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SseTransportLayer,
    handler::{ErrorObject, HandlerRequest, handler_fn},
    protocol::{Era, ProtocolVersion},
    session::RequestContext,
    transport::TransportHandle,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

#[path = "http.rs"]
mod http_support;
#[allow(unused_imports)]
pub use http_support::{CONNECT_TIMEOUT, READ_TIMEOUT, http_builder, http_client};

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// What the handler tells the test: ("started", tool), ("dropped", tool), ("finished", tool).
#[derive(Debug)]
pub struct Probe {
    pub release: Notify,
    tx: mpsc::UnboundedSender<(String, String)>,
}

pub struct Observations(mpsc::UnboundedReceiver<(String, String)>);

impl Observations {
    /// Waits (bounded) for an observation of `kind` about `what`, skipping others.
    pub async fn wait(&mut self, kind: &str, what: &str) {
        let fut = async {
            while let Some((k, w)) = self.0.recv().await {
                if k == kind && w == what {
                    return;
                }
            }
            panic!("probe channel closed");
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| panic!("no {kind} {what} observed"));
    }

    pub fn try_has(&mut self, kind: &str, what: &str) -> bool {
        while let Ok((k, w)) = self.0.try_recv() {
            if k == kind && w == what {
                return true;
            }
        }
        false
    }
}

impl Probe {
    pub fn new() -> (Arc<Self>, Observations) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                release: Notify::new(),
                tx,
            }),
            Observations(rx),
        )
    }

    pub fn see(&self, kind: &str, what: &str) {
        let _ = self.tx.send((kind.into(), what.into()));
    }
}

/// Reports ("dropped", name) unless disarmed: the handler future was cancelled.
struct DropGuard {
    probe: Arc<Probe>,
    name: &'static str,
    armed: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.armed {
            self.probe.see("dropped", self.name);
        }
    }
}

fn text(s: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": s.into()}]})
}

/// The instrumented test handler.
pub async fn handle_request(
    probe: Arc<Probe>,
    req: HandlerRequest,
    cx: RequestContext,
) -> Result<Value, ErrorObject> {
    match req.method.as_str() {
        "initialize" => {
            // The session exists before the handler runs.
            if let Some(session) = cx.session() {
                probe.see("session-before-handler", "initialize");
                // Not known until initialize succeeds.
                assert!(session.client_capabilities().is_none());
            }
            if req
                .params
                .pointer("/clientInfo/name")
                .and_then(Value::as_str)
                == Some("fail")
            {
                return Err(ErrorObject::invalid_params("refused"));
            }
            let v = req
                .params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .and_then(ProtocolVersion::parse)
                .filter(|v| v.era() == Era::Legacy)
                .unwrap_or(ProtocolVersion::LATEST_LEGACY);
            Ok(initialize_result(v.as_str()))
        }
        "ping" => Ok(json!({})),
        "tools/call" => {
            let name = req
                .params
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let args = req.params.get("arguments").cloned().unwrap_or(Value::Null);
            tool(probe, &name, args, &req, &cx).await
        }
        m if m.starts_with("notifications/") => {
            probe.see("notification", m);
            Ok(Value::Null)
        }
        other => Err(ErrorObject::method_not_found(other)),
    }
}

async fn tool(
    probe: Arc<Probe>,
    name: &str,
    args: Value,
    req: &HandlerRequest,
    cx: &RequestContext,
) -> Result<Value, ErrorObject> {
    match name {
        "echo" => Ok(text(
            args.get("text").and_then(Value::as_str).unwrap_or_default(),
        )),
        // Waits until the test releases it; reports if it was dropped (cancelled) first.
        "wait" => {
            let mut guard = DropGuard {
                probe: probe.clone(),
                name: "wait",
                armed: true,
            };
            probe.see("started", "wait");
            probe.release.notified().await;
            guard.armed = false;
            probe.see("finished", "wait");
            Ok(text("released"))
        }
        // Streams one notification, then waits for release.
        "stream_wait" => {
            let mut guard = DropGuard {
                probe: probe.clone(),
                name: "stream_wait",
                armed: true,
            };
            cx.notify(
                "notifications/message",
                Some(json!({"level": "info", "data": "first"})),
            )
            .ok();
            probe.see("started", "stream_wait");
            probe.release.notified().await;
            cx.notify(
                "notifications/message",
                Some(json!({"level": "info", "data": "second"})),
            )
            .ok();
            guard.armed = false;
            Ok(text("streamed"))
        }
        "notify_n" => {
            let n = args.get("n").and_then(Value::as_u64).unwrap_or(1);
            for i in 0..n {
                cx.notify(
                    "notifications/message",
                    Some(json!({"level": "info", "data": i})),
                )
                .ok();
            }
            Ok(text("notified"))
        }
        "progress" => {
            let token = req.progress_token().cloned().unwrap_or(json!("none"));
            for i in 1..=3 {
                cx.notify(
                    "notifications/progress",
                    Some(json!({"progressToken": token, "progress": i})),
                )
                .ok();
            }
            Ok(text("done"))
        }
        "ask" => match cx
            .request(
                "sampling/createMessage",
                Some(json!({"messages": [], "maxTokens": 1})),
            )
            .await
        {
            Ok(v) => Ok(text(
                v.pointer("/content/text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )),
            Err(e) => Ok(text(format!("error: {e}"))),
        },
        "ask_standalone" => {
            let session = cx
                .session()
                .cloned()
                .ok_or_else(|| ErrorObject::internal("no session"))?;
            let p = probe.clone();
            // A plain task (not session-owned, which close would abort) to observe the failure.
            tokio::spawn(async move {
                let out = session.request("roots/list", None).await;
                p.see(
                    "standalone-answer",
                    &match out {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("error: {e}"),
                    },
                );
            });
            Ok(text("asked"))
        }
        // SEP-1699: notify, close the stream, wait for release, answer.
        "close_stream" => {
            cx.notify(
                "notifications/message",
                Some(json!({"level": "info", "data": "before-close"})),
            )
            .ok();
            let closed = cx.close_stream();
            probe.see("closed", &closed.to_string());
            probe.release.notified().await;
            Ok(text("after-close"))
        }
        "standalone" => {
            let session = cx
                .session()
                .ok_or_else(|| ErrorObject::internal("no session"))?;
            let msg = args
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("hello")
                .to_owned();
            session
                .notify(
                    "notifications/message",
                    Some(json!({"level": "info", "data": msg})),
                )
                .map_err(|e| ErrorObject::internal(e.to_string()))?;
            Ok(text("sent"))
        }
        "spawn" => {
            let session = cx
                .session()
                .ok_or_else(|| ErrorObject::internal("no session"))?;
            let p = probe.clone();
            session.spawn(async move {
                let _guard = DropGuard {
                    probe: p,
                    name: "spawned",
                    armed: true,
                };
                std::future::pending::<()>().await;
            });
            Ok(text("spawned"))
        }
        "panic" => panic!("handler panic on purpose"),
        other => Err(ErrorObject::invalid_params(format!("unknown tool {other}"))),
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub handle: TransportHandle,
    pub probe: Arc<Probe>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(layer: SseTransportLayer) -> (Self, Observations) {
        let handle = layer.handle();
        let (probe, obs) = Probe::new();
        let p = probe.clone();
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service(handler_fn(move |req, cx| {
                handle_request(p.clone(), req, cx)
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (
            Self {
                addr,
                handle,
                probe,
                task,
            },
            obs,
        )
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn client(&self) -> Client {
        Client {
            http: http_builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            url: self.url(),
            session: None,
        }
    }
}

/// A raw MCP-over-HTTP client.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
}

/// A server's `initialize` result for `version`.
pub fn initialize_result(version: &str) -> Value {
    json!({"protocolVersion": version, "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}})
}

pub fn initialize_body(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": version, "capabilities": {"sampling": {}}, "clientInfo": {"name": "test", "version": "1"}}})
}

impl Client {
    pub fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .post(&self.url)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = &self.session {
            b = b.header("mcp-session-id", s);
        }
        b
    }

    pub fn get(&self) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .get(&self.url)
            .header("accept", "text/event-stream");
        if let Some(s) = &self.session {
            b = b.header("mcp-session-id", s);
        }
        b
    }

    pub fn delete(&self) -> reqwest::RequestBuilder {
        let mut b = self.http.delete(&self.url);
        if let Some(s) = &self.session {
            b = b.header("mcp-session-id", s);
        }
        b
    }

    /// initialize + notifications/initialized at `version`; stores the session id.
    pub async fn connect(&mut self, version: &str) -> reqwest::Response {
        let res = self
            .post(&initialize_body(version))
            .send()
            .await
            .expect("initialize");
        assert_eq!(res.status(), 200, "initialize failed");
        let id = res
            .headers()
            .get("mcp-session-id")
            .expect("session id")
            .to_str()
            .expect("ascii")
            .to_owned();
        self.session = Some(id);
        let n = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .await
            .expect("initialized");
        assert_eq!(n.status(), 202);
        res
    }

    pub async fn call_tool(&self, id: i64, name: &str, args: Value) -> reqwest::Response {
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}}))
            .send()
            .await
            .expect("tools/call")
    }
}

/// One SSE event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub data: String,
    pub comment: bool,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Reads SSE events from a response, each read bounded by a timeout.
pub struct Sse {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: String,
}

impl Sse {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(
            res.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("text/event-stream"),
            "not an SSE response"
        );
        Self {
            stream: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (comments included), or `None` at the end of the stream.
    pub async fn next_raw(&mut self) -> Option<Event> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut ev = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        ev.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        ev.retry = v.parse().ok();
                    } else if let Some(v) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        data.push(v.to_owned());
                    }
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.stream.next()).await {
                Ok(Some(Ok(b))) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Ok(_) => return None,
                Err(_) => panic!("SSE read timed out"),
            }
        }
    }

    /// The next non-comment event: bounded as a whole, so keep-alive comments on a stream
    /// that sends nothing else do not keep the test waiting.
    pub async fn next(&mut self) -> Option<Event> {
        let next = async {
            loop {
                let ev = self.next_raw().await?;
                if !ev.comment {
                    return Some(ev);
                }
            }
        };
        tokio::time::timeout(READ_TIMEOUT, next)
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {READ_TIMEOUT:?}"))
    }

    /// Reads to the end, returning the events with data (skips priming and comments).
    pub async fn collect(mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            if !ev.data.is_empty() {
                out.push(ev);
            }
        }
        out
    }
}
