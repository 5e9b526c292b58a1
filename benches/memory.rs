//! Memory per session: RSS growth while holding N idle sessions, without and with an open GET
//! stream each, and what is left after they close.
//!
//! `cargo bench -p mcp-affinity-benches --bench memory` (prints one JSON line per measurement)

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mcp_affinity::{SseTransportLayer, transport::RequestBody};
use tower::{Service, ServiceExt, service_fn};

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"b","version":"1"}}}"#;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn handler(_req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"b","version":"1"}}}"#,
    ))))
}

fn req(method: http::Method, session: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn main() {
    // Each measurement runs in a fresh process so one does not reuse the other's freed memory.
    let mode = std::env::var("MEMORY_BENCH_MODE").ok();
    let Some(mode) = mode else {
        for mode in ["idle", "stream"] {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .env("MEMORY_BENCH_MODE", mode)
                .status()
                .unwrap();
            assert!(status.success());
        }
        return;
    };
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        {
            let with_stream = mode == "stream";
            let mut svc = tower::ServiceBuilder::new()
                .layer(SseTransportLayer::builder().with_max_sessions(n + 200).build().unwrap())
                .service(service_fn(handler));
            // Warm up allocator pools so the baseline is fair.
            for _ in 0..100 {
                let _ = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await.unwrap().call(req(http::Method::POST, None, INIT)).await;
            }
            let before = rss_bytes();
            let mut ids = Vec::with_capacity(n);
            let mut streams = Vec::with_capacity(if with_stream { n } else { 0 });
            for _ in 0..n {
                let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await.unwrap().call(req(http::Method::POST, None, INIT)).await.unwrap();
                let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
                if with_stream {
                    let get = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await.unwrap().call(req(http::Method::GET, Some(&id), "")).await.unwrap();
                    streams.push(get.into_body());
                }
                ids.push(id);
            }
            let held = rss_bytes();
            drop(streams);
            for id in &ids {
                let _ = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await.unwrap().call(req(http::Method::DELETE, Some(id), "")).await.unwrap();
            }
            drop(ids);
            let after = rss_bytes();
            println!(
                "{{\"sessions\":{n},\"open_get_stream\":{with_stream},\"bytes_per_session\":{},\"rss_after_close_delta_kib\":{}}}",
                (held.saturating_sub(before)) / n as u64,
                (after as i64 - before as i64) / 1024
            );
        }
    });
}
