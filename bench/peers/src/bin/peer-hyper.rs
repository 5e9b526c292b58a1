//! The limit: a bare hyper 1 HTTP/1.1 server that reads any request's body and answers
//! `{"jsonrpc":"2.0","id":1,"result":{}}` as `application/json`, with no session, no parsing and
//! no routing. `TCP_NODELAY` on accepted sockets.
//!
//! ```text
//! peer-hyper --listen 127.0.0.1:8082
//! ```

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

const ANSWER: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body as any server must; its content is ignored.
    let _ = req.into_body().collect().await;
    let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

fn listen_arg() -> Result<SocketAddr, String> {
    let mut listen = "127.0.0.1:8082".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => listen = it.next().ok_or("--listen needs a value")?,
            "-h" | "--help" => {
                println!("usage: peer-hyper [--listen ADDR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = listen_arg()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
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
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(answer))
                .await;
        });
    }
}
