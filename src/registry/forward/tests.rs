//! Against real local servers on 127.0.0.1: hyper servers, and raw TCP ones where a test needs
//! a peer to misbehave.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc, watch};
use tokio::time::{Instant, timeout};

use super::{ForwardError, Forwarder, PeerBody};
use crate::BoxError;

/// A bound on every wait, so a broken behaviour fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(10);

type ServerBody = UnsyncBoxBody<Bytes, BoxError>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ServerBody>> + Send>>
        + Send
        + Sync,
>;

fn forwarder() -> Forwarder {
    Forwarder::new(Duration::from_secs(5), 8, Duration::from_secs(60))
}

fn full(body: &'static str) -> ServerBody {
    Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body fed from a channel: each message is one frame, the end is the sender dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl ChannelBody {
    fn new() -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Self(rx))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// A hyper HTTP/1.1 server on 127.0.0.1 that counts the connections it accepted and those
/// that ended.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: watch::Receiver<usize>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ServerBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ended_tx, ended) = watch::channel(0_usize);
        let ended_tx = Arc::new(ended_tx);
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let ended_tx = Arc::clone(&ended_tx);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = handler(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    ended_tx.send_modify(|n| *n += 1);
                });
            }
        });
        Self {
            addr,
            accepted,
            ended,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` connections have ended on the server side.
    async fn wait_ended(&mut self, n: usize) {
        timeout(DEADLINE, self.ended.wait_for(|ended| *ended >= n))
            .await
            .expect("server connections did not end")
            .unwrap();
    }
}

/// A server answering every request `200 ok`.
async fn ok_server() -> Server {
    Server::start(|_req| async { Response::new(full("ok")) }).await
}

/// An address nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn get(fwd: &Forwarder, addr: SocketAddr) -> Response<PeerBody> {
    let req = Request::get("/mcp")
        .header(header::HOST, "node")
        .body(Empty::<Bytes>::new())
        .unwrap();
    timeout(DEADLINE, fwd.forward(addr, req))
        .await
        .unwrap()
        .unwrap()
}

async fn body_text(res: Response<PeerBody>) -> String {
    let bytes = timeout(DEADLINE, res.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A sender whose connection task is gone: closed before anything was sent on it.
async fn dead_sender() -> super::Sender {
    let (io, _other) = tokio::io::duplex(64);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    drop(conn);
    sender
}

const END_TO_END: [(&str, &str); 10] = [
    ("host", "public.example"),
    ("origin", "https://app.example"),
    ("authorization", "Bearer t0ken"),
    ("mcp-session-id", "n1.abcdef"),
    ("mcp-protocol-version", "2025-11-25"),
    ("last-event-id", "0-7"),
    ("accept", "application/json, text/event-stream"),
    ("content-type", "application/json"),
    ("cookie", "_mcp_backend=n1; other=1"),
    ("mcp-forwarded-by", "node-b"),
];

const HOP_BY_HOP: [(&str, &str); 9] = [
    ("connection", "keep-alive, x-hop, mcp-forwarded-by"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("te", "trailers"),
    ("trailer", "x-checksum"),
    ("transfer-encoding", "gzip, chunked"),
    ("upgrade", "websocket"),
    ("x-hop", "1"),
    ("proxy-connection", "close"),
];

fn with_headers<B>(mut builder: http::request::Builder, body: B) -> Request<B> {
    for (name, value) in END_TO_END.iter().chain(&HOP_BY_HOP) {
        builder = builder.header(*name, *value);
    }
    builder.body(body).unwrap()
}

#[tokio::test]
async fn streamed_request_body_arrives_intact_with_end_to_end_headers_only() {
    let (head_tx, mut head_rx) = mpsc::unbounded_channel::<http::request::Parts>();
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Bytes>();
    let server = Server::start(move |req: Request<Incoming>| {
        let head_tx = head_tx.clone();
        let chunk_tx = chunk_tx.clone();
        async move {
            let (parts, mut body) = req.into_parts();
            head_tx.send(parts).unwrap();
            // Each frame is reported as it arrives, so the test sees the body streamed.
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    chunk_tx.send(data).unwrap();
                }
            }
            Response::builder()
                .header("content-type", "application/json")
                .header("mcp-session-id", "n1.abcdef")
                .header("connection", "x-resp-hop")
                .header("x-resp-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("trailer", "x-checksum")
                .body(full("done"))
                .unwrap()
        }
    })
    .await;

    let (body_tx, body) = ChannelBody::new();
    let req = with_headers(
        Request::post("http://public.example/mcp?x=1").version(Version::HTTP_2),
        body,
    );
    let fwd = forwarder();
    let addr = server.addr;
    let exchange = tokio::spawn(async move { fwd.forward(addr, req).await });

    let head = timeout(DEADLINE, head_rx.recv()).await.unwrap().unwrap();
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.uri, "/mcp?x=1", "origin form");
    assert_eq!(head.version, Version::HTTP_11);
    for (name, value) in END_TO_END {
        assert_eq!(
            head.headers.get_all(name).iter().collect::<Vec<_>>(),
            [value],
            "{name}"
        );
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-hop",
    ] {
        assert!(!head.headers.contains_key(name), "{name} was forwarded");
    }
    // hyper's own framing for a body of unknown length, not the client's `gzip, chunked`.
    assert_eq!(
        head.headers
            .get_all("transfer-encoding")
            .iter()
            .collect::<Vec<_>>(),
        ["chunked"]
    );

    // The server gets each chunk before the next one exists: the body is streamed, not buffered.
    for chunk in ["{\"jsonrpc\":", "\"2.0\"}"] {
        body_tx
            .send(Bytes::from_static(chunk.as_bytes()))
            .await
            .unwrap();
        let got = timeout(DEADLINE, chunk_rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, chunk);
    }
    drop(body_tx);

    let res = timeout(DEADLINE, exchange).await.unwrap().unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["mcp-session-id"], "n1.abcdef");
    for name in [
        "connection",
        "x-resp-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
    ] {
        assert!(!res.headers().contains_key(name), "{name} came back");
    }
    assert_eq!(body_text(res).await, "done");
}

#[tokio::test]
async fn host_comes_from_the_authority_when_missing() {
    let (host_tx, mut host_rx) = mpsc::unbounded_channel();
    let server = Server::start(move |req: Request<Incoming>| {
        let _ = host_tx.send(req.headers().get(header::HOST).cloned());
        async { Response::new(full("ok")) }
    })
    .await;
    let req = Request::get("http://public.example:8080/mcp")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = forwarder().forward(server.addr, req).await.unwrap();
    assert_eq!(body_text(res).await, "ok");
    let host = host_rx.recv().await.unwrap().unwrap();
    assert_eq!(host, "public.example:8080");
}

/// An SSE answer whose sender the test holds: events go out one at a time.
async fn sse_server() -> (Server, mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>) {
    let (stream_tx, stream_rx) = mpsc::unbounded_channel();
    let server = Server::start(move |req: Request<Incoming>| {
        let stream_tx = stream_tx.clone();
        async move {
            if req.uri().path() != "/sse" {
                return Response::new(full("ok"));
            }
            let (events, body) = ChannelBody::new();
            stream_tx.send(events).unwrap();
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body.map_err(|never| match never {}).boxed_unsync())
                .unwrap()
        }
    })
    .await;
    (server, stream_rx)
}

async fn open_sse(fwd: &Forwarder, addr: SocketAddr) -> Response<PeerBody> {
    let req = Request::get("/sse")
        .header(header::HOST, "node")
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    timeout(DEADLINE, fwd.forward(addr, req))
        .await
        .unwrap()
        .unwrap()
}

async fn next_data(body: &mut PeerBody) -> Bytes {
    timeout(DEADLINE, body.frame())
        .await
        .expect("no frame")
        .expect("body ended")
        .expect("body error")
        .into_data()
        .unwrap()
}

#[tokio::test]
async fn sse_response_streams_event_by_event() {
    let (server, mut streams) = sse_server().await;
    let fwd = forwarder();
    let res = open_sse(&fwd, server.addr).await;
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let events = streams.recv().await.unwrap();
    let mut body = res.into_body();
    for n in 0..3 {
        let event = Bytes::from(format!("id: 0-{n}\ndata: {{\"n\":{n}}}\n\n"));
        events.send(event.clone()).await.unwrap();
        // Received before the next event is even sent, the server not finished.
        assert_eq!(next_data(&mut body).await, event);
        assert!(!body.is_end_stream());
    }
    drop(events);
    assert!(timeout(DEADLINE, body.frame()).await.unwrap().is_none());
}

#[tokio::test]
async fn refused_connection_gives_the_request_back_untouched() {
    let addr = dead_port().await;
    let req = with_headers(
        Request::post("http://public.example/mcp?x=1"),
        Full::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")),
    );
    let headers = req.headers().clone();
    let Err(ForwardError::NotSent(back, err)) = forwarder().forward(addr, req).await else {
        panic!("expected NotSent");
    };
    let io = err.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(back.method(), Method::POST);
    assert_eq!(back.uri(), "http://public.example/mcp?x=1");
    assert_eq!(back.headers(), &headers);
    let body = back.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{\"jsonrpc\":\"2.0\"}");
}

#[tokio::test]
async fn closed_pooled_connection_is_replaced_by_a_new_one() {
    let server = ok_server().await;
    let fwd = forwarder();
    let req = Request::get("/mcp")
        .header(header::HOST, "node")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = fwd
        .send(server.addr, Some(dead_sender().await), req)
        .await
        .unwrap();
    assert_eq!(body_text(res).await, "ok");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn closed_pooled_connection_and_no_new_one_give_the_request_back_untouched() {
    let addr = dead_port().await;
    // No `Host`: one is added from the authority on the way, and taken away again.
    let mut req = Request::post("http://public.example/mcp")
        .version(Version::HTTP_2)
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("mcp-session-id", "n1.abcdef")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    req.extensions_mut().insert(7_u32);
    let headers = req.headers().clone();
    let Err(ForwardError::NotSent(back, _)) =
        forwarder().send(addr, Some(dead_sender().await), req).await
    else {
        panic!("expected NotSent");
    };
    assert_eq!(back.uri(), "http://public.example/mcp");
    assert_eq!(back.version(), Version::HTTP_2);
    assert_eq!(back.headers(), &headers);
    assert_eq!(back.extensions().get::<u32>(), Some(&7));
    assert_eq!(
        back.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );
}

/// A raw TCP peer: accepts one connection, reads one request head, writes `reply` and closes.
async fn raw_peer(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(reply).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    addr
}

#[tokio::test]
async fn peer_dying_mid_response_is_a_body_error() {
    let addr = raw_peer(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n",
    )
    .await;
    let res = get(&forwarder(), addr).await;
    let mut body = res.into_body();
    assert_eq!(next_data(&mut body).await, "data:1");
    let end = timeout(DEADLINE, body.frame()).await.unwrap();
    assert!(
        matches!(end, Some(Err(_))),
        "expected a body error, got {end:?}"
    );
}

#[tokio::test]
async fn peer_dying_before_its_answer_is_failed() {
    let addr = raw_peer(b"").await;
    let req = Request::get("/mcp")
        .header(header::HOST, "node")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let result = timeout(DEADLINE, forwarder().forward(addr, req))
        .await
        .unwrap();
    assert!(matches!(result, Err(ForwardError::Failed(_))), "{result:?}");
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let server = ok_server().await;
    let fwd = forwarder();
    for _ in 0..3 {
        let res = get(&fwd, server.addr).await;
        assert_eq!(body_text(res).await, "ok");
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_empty_answer_dropped_unread_gives_its_connection_back() {
    // `202` with no body, as a notification's answer: nothing polls its body, so only the
    // body's drop can hand the connection back.
    let server = Server::start(|_req| async {
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::ACCEPTED;
        res
    })
    .await;
    let fwd = forwarder();
    for _ in 0..3 {
        let res = get(&fwd, server.addr).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert!(res.body().is_end_stream());
        drop(res);
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn streaming_response_keeps_its_connection_busy_until_its_end() {
    let (server, mut streams) = sse_server().await;
    let fwd = forwarder();
    let sse = open_sse(&fwd, server.addr).await;
    let events = streams.recv().await.unwrap();

    // The only connection is busy with the stream: this one needs a second.
    assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    assert_eq!(server.accepted(), 2);

    events
        .send(Bytes::from_static(b"data: last\n\n"))
        .await
        .unwrap();
    drop(events);
    assert_eq!(body_text(sse).await, "data: last\n\n");
    // Both connections are idle now: no third one.
    for _ in 0..2 {
        assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    }
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_connection() {
    const N: usize = 4;
    // Each answer waits until all N requests have arrived: they must be in flight at once.
    let barrier = Arc::new(Barrier::new(N));
    let server = Server::start(move |_req| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            Response::new(full("ok"))
        }
    })
    .await;
    let fwd = forwarder();
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let fwd = fwd.clone();
            tokio::spawn(async move { body_text(get(&fwd, server.addr).await).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(timeout(DEADLINE, task).await.unwrap().unwrap(), "ok");
    }
    assert_eq!(server.accepted(), N);
}

#[tokio::test]
async fn dropping_a_streaming_response_closes_the_peer_stream() {
    let (mut server, mut streams) = sse_server().await;
    let fwd = forwarder();
    let sse = open_sse(&fwd, server.addr).await;
    let events = streams.recv().await.unwrap();
    events
        .send(Bytes::from_static(b"data: 1\n\n"))
        .await
        .unwrap();
    let mut body = sse.into_body();
    assert_eq!(next_data(&mut body).await, "data: 1\n\n");

    drop(body);
    // The server's connection ends and its response body (the event sender's receiver) is dropped.
    server.wait_ended(1).await;
    timeout(DEADLINE, events.closed()).await.unwrap();
    // Nothing of that connection stays pooled.
    assert_eq!(fwd.settle(server.addr, Instant::now()), 0);
    assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn idle_connections_are_bounded_per_peer() {
    const N: usize = 3;
    let barrier = Arc::new(Barrier::new(N));
    let mut server = Server::start(move |_req| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            Response::new(full("ok"))
        }
    })
    .await;
    let fwd = Forwarder::new(Duration::from_secs(5), 1, Duration::from_secs(60));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let fwd = fwd.clone();
            tokio::spawn(async move { body_text(get(&fwd, server.addr).await).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(timeout(DEADLINE, task).await.unwrap().unwrap(), "ok");
    }
    assert_eq!(fwd.settle(server.addr, Instant::now()), 1);
    // The two past the bound are closed, and the peer sees it.
    server.wait_ended(N - 1).await;
    assert_eq!(*server.ended.borrow(), N - 1);
}

#[tokio::test]
async fn idle_connections_expire() {
    let mut server = ok_server().await;
    let idle_timeout = Duration::from_secs(60);
    let fwd = Forwarder::new(Duration::from_secs(5), 8, idle_timeout);
    assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    let now = Instant::now();
    assert_eq!(fwd.settle(server.addr, now), 1);
    assert_eq!(
        fwd.settle(server.addr, now + idle_timeout - Duration::from_secs(1)),
        1
    );
    assert_eq!(fwd.settle(server.addr, now + idle_timeout), 0);
    server.wait_ended(1).await;
    // An expired connection is not handed out: the next request opens a new one.
    assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn no_pooling_with_max_idle_zero() {
    let mut server = ok_server().await;
    let fwd = Forwarder::new(Duration::from_secs(5), 0, Duration::from_secs(60));
    for _ in 0..2 {
        assert_eq!(body_text(get(&fwd, server.addr).await).await, "ok");
    }
    assert_eq!(server.accepted(), 2);
    assert_eq!(fwd.settle(server.addr, Instant::now()), 0);
    server.wait_ended(2).await;
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_gives_the_request_back() {
    // A listener that never accepts: once its accept queue is full, the kernel drops further
    // SYNs and a connect hangs. The clock is paused, so the timeouts pass without waiting.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
            Ok(stream) => queued.push(stream.unwrap()),
            Err(_) => break,
        }
        assert!(queued.len() < 100, "the accept queue never filled");
    }
    let fwd = Forwarder::new(Duration::from_secs(2), 8, Duration::from_secs(60));
    let req = Request::get("/mcp")
        .header(header::HOST, "node")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let Err(ForwardError::NotSent(back, err)) = fwd.forward(addr, req).await else {
        panic!("expected NotSent");
    };
    let io = err.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(back.into_body().collect().await.unwrap().to_bytes(), "x");
}

#[test]
fn hop_by_hop_headers_are_removed_and_recorded() {
    let mut headers = HeaderMap::new();
    headers.append("connection", "x-a, X-B".parse().unwrap());
    headers.append(
        "connection",
        "mcp-forwarded-by, , not a name".parse().unwrap(),
    );
    headers.append("x-a", "1".parse().unwrap());
    headers.append("x-a", "2".parse().unwrap());
    headers.append("x-b", "3".parse().unwrap());
    headers.append("mcp-forwarded-by", "node-b".parse().unwrap());
    headers.append("upgrade", "h2c".parse().unwrap());
    headers.append("mcp-session-id", "s".parse().unwrap());
    let mut removed = HeaderMap::new();
    super::rewrite::strip_hop_by_hop(&mut headers, Some(&mut removed));
    let mut kept: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    kept.sort_unstable();
    assert_eq!(kept, ["mcp-forwarded-by", "mcp-session-id"]);
    assert_eq!(
        removed.get_all("x-a").iter().collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_eq!(removed.get_all("connection").iter().count(), 2);
    assert_eq!(removed.len(), 6);
}

#[tokio::test]
async fn dropping_the_exchange_before_the_answer_closes_the_peer_connection() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let mut server = Server::start(move |_req| {
        let _ = arrived_tx.send(());
        std::future::pending::<Response<ServerBody>>()
    })
    .await;
    let fwd = forwarder();
    let addr = server.addr;
    let exchange = tokio::spawn(async move { get(&fwd, addr).await });
    timeout(DEADLINE, arrived.recv()).await.unwrap().unwrap();
    exchange.abort();
    server.wait_ended(1).await;
}

#[tokio::test]
async fn idle_connections_of_a_peer_no_longer_asked_for_expire_too() {
    let mut a = ok_server().await;
    let b = dead_port().await;
    let idle_timeout = Duration::from_secs(60);
    let fwd = Forwarder::new(Duration::from_secs(5), 8, idle_timeout);
    assert_eq!(body_text(get(&fwd, a.addr).await).await, "ok");
    let now = Instant::now();
    assert_eq!(fwd.settle(a.addr, now), 1);
    // Asking for another peer once the idle timeout has passed settles every peer.
    assert!(fwd.inner.pool.checkout(b, now + idle_timeout).is_none());
    a.wait_ended(1).await;
    assert_eq!(fwd.settle(a.addr, now + idle_timeout), 0);
}
