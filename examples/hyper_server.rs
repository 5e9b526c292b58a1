//! The layers on plain hyper 1 + hyper-util, no web framework:
//!
//! ```text
//! cargo run --example hyper_server -- 127.0.0.1:8080
//! ```
//!
//! `/mcp` goes through `SessionAffinityLayer` → `SessionRegistryLayer` → `SseTransportLayer`;
//! every other path answers 404 without touching them.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::{Service, ServiceExt};

type Body = UnsyncBoxBody<Bytes, mcp_affinity::BoxError>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "MCP (hyper) listening on http://{}/mcp",
        listener.local_addr()?
    );

    let mcp = common::mcp_service("hyper-node")?;
    // One service for every path: `/mcp` to the MCP stack, 404 elsewhere.
    let app = tower::service_fn(move |req: Request<Incoming>| {
        let mcp = mcp.clone();
        async move {
            if req.uri().path() == "/mcp" {
                let req = req.map(axum::body::Body::new);
                let res = mcp.oneshot(req).await?;
                return Ok::<_, Infallible>(res.map(|b| b.map_err(Into::into).boxed_unsync()));
            }
            let mut res = Response::new(
                Full::new(Bytes::from_static(b"not found"))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            );
            *res.status_mut() = http::StatusCode::NOT_FOUND;
            Ok::<Response<Body>, Infallible>(res)
        }
    });

    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

#[allow(dead_code)]
fn assert_service<S: Service<Request<Incoming>>>(_: &S) {}
