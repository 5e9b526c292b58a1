//! The limit: a bare hyper 1 HTTP/1.1 server that reads any request's body and answers
//! `{"jsonrpc":"2.0","id":1,"result":{}}` as `application/json`, with no session, no parsing and
//! no routing. `TCP_NODELAY` on accepted sockets.
//!
//! With `--fanout` it is also the fan-out limit: the least a hyper server must do to deliver one
//! message to N open streams. An `initialize` answer carries `mcp-session-id: bare` (so a client
//! can go on), a `GET` opens an SSE stream fed by a channel, and a POST naming the `broadcast`
//! tool sends one pre-encoded event (carrying the call's `message`) to every open stream, then
//! answers with the number of streams in the `text` of a tool result. Nothing is stored,
//! numbered or replayable; `DELETE` answers `200`.
//!
//! With `--forward ADDR` it is the forwarding limit: the least a hyper HTTP/1.1 hop must do to
//! pass a request to a server at `ADDR` and its answer back. Each accepted connection gets its
//! own connection to `ADDR` (no pool, no routing, no header rewritten), and every request on it
//! is sent there as it came, its response streamed back as it comes.
//!
//! ```text
//! peer-hyper --listen 127.0.0.1:8082
//! peer-hyper --listen 127.0.0.1:8083 --forward 127.0.0.1:8082
//! ```

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response,
    body::{Body, Frame, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

const ANSWER: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body as any server must; its content is ignored.
    let _ = req.into_body().collect().await;
    Ok(json(Bytes::from_static(ANSWER)))
}

fn json(body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

/// The open streams of `--fanout` mode.
type Streams = Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>;

/// An SSE body fed by a channel: each message is one frame.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

type FanoutBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

async fn fanout(
    req: Request<Incoming>,
    streams: Streams,
) -> Result<Response<FanoutBody>, Infallible> {
    let full = |res: Response<Full<Bytes>>| res.map(http_body_util::Either::Left);
    match *req.method() {
        Method::GET => {
            let (tx, rx) = mpsc::unbounded_channel();
            streams.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
            let mut res = Response::new(http_body_util::Either::Right(ChannelBody(rx)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            Ok(res)
        }
        Method::POST => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if find(&body, br#""initialize""#).is_some() {
                let mut res = json(Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"bare","version":"0"}}}"#,
                ));
                res.headers_mut()
                    .insert("mcp-session-id", header::HeaderValue::from_static("bare"));
                return Ok(full(res));
            }
            if find(&body, br#""broadcast""#).is_none() {
                return Ok(full(json(Bytes::from_static(ANSWER))));
            }
            let message = message_of(&body).unwrap_or_default();
            let mut event = Vec::with_capacity(message.len() + 96);
            event.extend_from_slice(
                br#"data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":""#,
            );
            event.extend_from_slice(message);
            event.extend_from_slice(b"\"}}\n\n");
            let event = Bytes::from(event);
            let sent = {
                let mut open = streams.lock().unwrap_or_else(|e| e.into_inner());
                open.retain(|tx| tx.send(event.clone()).is_ok());
                open.len()
            };
            Ok(full(json(Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{sent}"}}]}}}}"#
            )))))
        }
        _ => Ok(full(json(Bytes::from_static(ANSWER)))),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `message` argument's raw JSON string content (no escapes expected).
fn message_of(body: &[u8]) -> Option<&[u8]> {
    let key = br#""message":""#;
    let at = find(body, key)? + key.len();
    let len = body[at..].iter().position(|&c| c == b'"')?;
    Some(&body[at..at + len])
}

/// `--forward`: serves one accepted connection by sending each of its requests over one
/// connection of its own to `upstream`. An upstream that cannot be reached closes the
/// connection.
async fn forward(tcp: tokio::net::TcpStream, upstream: SocketAddr) {
    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
    else {
        return;
    };
    tokio::spawn(conn);
    // HTTP/1.1 serves one request of a connection at a time: the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = service_fn(move |req: Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            sender.send_request(req).await
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

struct Args {
    listen: SocketAddr,
    fanout: bool,
    forward: Option<SocketAddr>,
}

fn args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:8082".to_owned();
    let mut fanout = false;
    let mut forward = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => listen = it.next().ok_or("--listen needs a value")?,
            "--fanout" => fanout = true,
            "--forward" => {
                let addr = it.next().ok_or("--forward needs a value")?;
                forward = Some(addr.parse().map_err(|e| format!("--forward {addr}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("usage: peer-hyper [--listen ADDR] [--fanout | --forward ADDR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    if fanout && forward.is_some() {
        return Err("--fanout and --forward exclude each other".to_owned());
    }
    Ok(Args {
        listen,
        fanout,
        forward,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let streams = Streams::default();
    println!(
        "bare hyper peer listening on http://{}/",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        if let Some(upstream) = args.forward {
            tokio::spawn(forward(tcp, upstream));
        } else if args.fanout {
            let streams = streams.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| fanout(req, streams.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        } else {
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(answer))
                    .await;
            });
        }
    }
}
