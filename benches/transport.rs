//! Per-request cost of `SseTransport` over a trivial handler, against the bare handler.
//!
//! `cargo bench -p mcp-affinity-benches --bench transport`

mod support;
use support::{INIT, trivial};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use mcp_affinity::{SseTransportLayer, transport::RequestBody};
use tower::{Service, ServiceExt, service_fn};

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

fn post(body: &'static str, session: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("ping");

    let mut bare = service_fn(trivial::<RequestBody>);
    group.bench_function("bare_handler", |b| {
        b.to_async(&rt).iter(|| {
            let req = Request::post("http://localhost/mcp")
                .body(RequestBody::new(Bytes::from_static(PING.as_bytes())))
                .unwrap();
            let fut = bare.call(req);
            async move {
                let res = fut.await.unwrap();
                res.into_body().collect().await.unwrap().to_bytes()
            }
        })
    });

    let mut svc = tower::ServiceBuilder::new()
        .layer(SseTransportLayer::new())
        .service(service_fn(trivial::<RequestBody>));
    let session = rt.block_on(async {
        let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
            .await
            .unwrap()
            .call(post(INIT, None))
            .await
            .unwrap();
        res.headers()["mcp-session-id"].to_str().unwrap().to_owned()
    });
    group.bench_function("transport_existing_session", |b| {
        b.to_async(&rt).iter(|| {
            let fut = svc.call(post(PING, Some(&session)));
            async move {
                let res = fut.await.unwrap();
                res.into_body().collect().await.unwrap().to_bytes()
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("session");
    group.bench_function("initialize_then_delete", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                    .await
                    .unwrap()
                    .call(post(INIT, None))
                    .await
                    .unwrap();
                let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
                let del = Request::delete("http://localhost/mcp")
                    .header("host", "localhost")
                    .header("mcp-session-id", id)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                    .await
                    .unwrap()
                    .call(del)
                    .await
                    .unwrap()
                    .status()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
