//! Per-function cost of the hot paths, through the public API only: session lookup in a full
//! session table (one and two threads), one server notification out on an open SSE stream,
//! JSON-RPC parsing and era classification, and the affinity layer's cookie and tagged-id
//! handling.
//!
//! `cargo bench -p mcp-affinity-benches --bench hot_paths`
//!
//! With `HOT_PATHS_RECORDER=prometheus` in the environment, the Prometheus exporter's recorder
//! is installed first (feature `metrics`), so the same figures show what the layers' metrics
//! cost with a real recorder; `held_session/ping` is the happy path (no metric) and
//! `affinity_request/cookie_here_foreign_id_misroute` emits one counter per request.

mod support;
use support::{INIT, trivial};

use std::{
    convert::Infallible,
    hint::black_box,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SessionAffinityLayer, SseTransportLayer,
    protocol::{Message, ProtocolVersion},
    session::{NodeTag, SessionId, SessionIdGenerator},
    transport::TransportHandle,
};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Sessions held by the table in the lookup benches.
const SESSIONS: usize = 10_000;

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"label:bug is:open","limit":25,"fields":["title","state","labels"],"include_closed":false},"_meta":{"progressToken":"p-42"}}}"#;
const MODERN_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{}}}}}"#;

fn post() -> http::request::Builder {
    Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
}

fn body(s: &'static str) -> Full<Bytes> {
    Full::new(Bytes::from_static(s.as_bytes()))
}

/// A transport over the trivial handler, with timeouts long enough that the sweeper never
/// closes a session during the run, and `SESSIONS` of room.
fn transport() -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<mcp_affinity::transport::ResponseBody>,
        Error = Infallible,
    > + Clone,
    TransportHandle,
) {
    let layer = SseTransportLayer::builder()
        .with_max_sessions(2 * SESSIONS)
        .with_idle_timeout(Duration::from_secs(3600))
        .with_init_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer.layer(service_fn(trivial)), handle)
}

/// Creates a session with an `initialize` request; returns its id.
async fn initialize<S>(svc: &mut S) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Response<mcp_affinity::transport::ResponseBody>>,
    S::Error: std::fmt::Debug,
{
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post().body(body(INIT)).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.headers()["mcp-session-id"].to_str().unwrap().to_owned()
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Runs `per_thread(iters, t)` on `threads` threads at once; returns the wall time from the
/// common start to the last finish.
fn on_threads(
    threads: usize,
    iters: u64,
    per_thread: impl Fn(u64, usize) + Send + Sync + 'static,
) -> Duration {
    let per_thread = Arc::new(per_thread);
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (per_thread, start) = (per_thread.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                per_thread(iters, t);
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for w in workers {
        w.join().unwrap();
    }
    t0.elapsed()
}

/// Installs the Prometheus recorder when `HOT_PATHS_RECORDER=prometheus`.
fn recorder_if_asked() {
    #[cfg(feature = "metrics")]
    if std::env::var("HOT_PATHS_RECORDER").as_deref() == Ok("prometheus") {
        static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
            std::sync::OnceLock::new();
        HANDLE.get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        });
        eprintln!("hot_paths: Prometheus recorder installed");
    }
}

fn session_lookup(c: &mut Criterion) {
    recorder_if_asked();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut svc, handle) = transport();
    let ids: Vec<String> = rt.block_on(async {
        let mut ids = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            ids.push(initialize(&mut svc).await);
        }
        ids
    });
    assert_eq!(handle.session_count(), SESSIONS);
    let ids = Arc::new(ids);
    let miss = SessionId::parse("no-such-session-id-0000000").unwrap();

    // `TransportHandle::session` in a table of 10,000 sessions: hits cycle through every id,
    // a miss is an unknown id; with 2 threads each thread does `iters` lookups at once with
    // the other (time shown is wall time / iters, i.e. per-lookup latency under contention).
    let mut group = c.benchmark_group("session_lookup_10k");
    configure(&mut group);
    group.bench_function("hit_1_thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % SESSIONS;
            black_box(handle.session(&ids[i]))
        })
    });
    group.bench_function("miss_1_thread", |b| {
        b.iter(|| black_box(handle.session(black_box(miss.as_str()))))
    });
    group.bench_function("hit_2_threads_distinct", |b| {
        b.iter_custom(|iters| {
            let (handle, ids) = (handle.clone(), ids.clone());
            on_threads(2, iters, move |iters, t| {
                // Thread 0 walks the ids forwards, thread 1 from the middle.
                let mut i = t * SESSIONS / 2;
                for _ in 0..iters {
                    i = (i + 1) % SESSIONS;
                    black_box(handle.session(&ids[i]));
                }
            })
        })
    });
    group.bench_function("hit_2_threads_same_session", |b| {
        b.iter_custom(|iters| {
            let (handle, ids) = (handle.clone(), ids.clone());
            on_threads(2, iters, move |iters, _| {
                for _ in 0..iters {
                    black_box(handle.session(&ids[0]));
                }
            })
        })
    });
    group.finish();
    rt.block_on(handle.shutdown());
}

fn sse_notify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut svc, handle) = transport();
    let (session, mut stream) = rt.block_on(async {
        let id = initialize(&mut svc).await;
        let get = Request::get("http://localhost/mcp")
            .header("host", "localhost")
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &id)
            .header("mcp-protocol-version", "2025-11-25")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.ready().await.unwrap().call(get).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut stream = res.into_body();
        // The priming event (2025-11-25).
        let priming = stream.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(priming.starts_with(b"id: "));
        (handle.session(&id).unwrap(), stream)
    });
    let progress =
        json!({"progressToken": "p-42", "progress": 3, "total": 10, "message": "indexing"});

    // One `Session::notify` onto an open GET stream and the SSE frame it yields (JSON-RPC
    // encoding, event log append, SSE `id:`/`data:` framing, keep-alive reset).
    let mut group = c.benchmark_group("sse_notify");
    configure(&mut group);
    // The frame is ready as soon as `notify` returns: poll it once, inside the runtime
    // (the keep-alive timer is reset on every event).
    let _rt = rt.enter();
    let mut next_frame = move || {
        stream
            .frame()
            .now_or_never()
            .expect("event ready")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap()
    };
    group.bench_function("list_changed_no_params", |b| {
        b.iter(|| {
            session
                .notify("notifications/tools/list_changed", None)
                .unwrap();
            next_frame()
        })
    });
    group.bench_function("progress_with_params", |b| {
        b.iter(|| {
            session
                .notify("notifications/progress", Some(progress.clone()))
                .unwrap();
            next_frame()
        })
    });
    group.finish();
    drop(next_frame);
    drop(_rt);
    rt.block_on(handle.shutdown());
}

fn protocol_parse(c: &mut Criterion) {
    // `Message::parse` of typical request bodies (params kept raw), and revision parsing.
    let mut group = c.benchmark_group("protocol_parse");
    configure(&mut group);
    for (name, text) in [
        ("ping", PING),
        ("tools_call_args", TOOLS_CALL),
        ("modern_tools_call_meta", MODERN_CALL),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| Message::parse(black_box(text.as_bytes())).unwrap())
        });
    }
    group.bench_function("protocol_version_era", |b| {
        b.iter(|| ProtocolVersion::parse(black_box("2026-07-28")).map(ProtocolVersion::era))
    });
    group.finish();
}

fn protocol_classify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut svc, handle) = transport();
    let modern = |name: &'static str| {
        post()
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", name)
            .body(body(MODERN_CALL))
            .unwrap()
    };
    rt.block_on(async {
        let res = svc.ready().await.unwrap().call(modern("echo")).await;
        assert_eq!(res.unwrap().status(), 200);
        let res = svc.ready().await.unwrap().call(modern("other")).await;
        assert_eq!(res.unwrap().status(), 400);
    });

    // Era classification is crate-private, so through `SseTransport` over the trivial handler:
    // a 2026-07-28 `tools/call` with `_meta` and mirrored headers (parse, classify, handler),
    // and the same with a mismatched `Mcp-Name` (parse, classify, 400; no handler call).
    let mut group = c.benchmark_group("protocol_classify_post");
    configure(&mut group);
    for (name, mcp_name) in [("modern_ok", "echo"), ("modern_name_mismatch", "other")] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let fut = svc.call(modern(mcp_name));
                async move {
                    let res = fut.await.unwrap();
                    res.into_body().collect().await.unwrap().to_bytes()
                }
            })
        });
    }
    group.finish();
    rt.block_on(handle.shutdown());
}

fn affinity(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let here = NodeTag::derive("node-a");
    let other = NodeTag::derive("node-b");
    let layer = SessionAffinityLayer::new(here.clone());
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"{}")))
    });
    let plain = layer.layer(inner);
    let enveloped = SessionAffinityLayer::builder(here.clone())
        .with_envelope(true)
        .build()
        .expect("affinity")
        .layer(inner);
    let own_id = layer.id_generator().generate();
    let cookies = |tag: &NodeTag| {
        format!(
            "theme=dark; _ga=GA1.2.1234567890.1700000000; _mcp_backend={tag}; csrftoken=Zx81kQ2pLm"
        )
    };
    let (cookie_here, cookie_other) = (cookies(&here), cookies(&other));
    let request = |cookie: &str, id: &str| {
        Request::post("/mcp")
            .header("cookie", cookie)
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-11-25")
            .body(())
            .unwrap()
    };

    // `SessionAffinity` over a no-op inner service: a legacy POST with four cookies incl.
    // `_mcp_backend` and a tagged `Mcp-Session-Id`; the bare inner service as baseline.
    let mut group = c.benchmark_group("affinity_request");
    configure(&mut group);
    group.bench_function("bare_inner", |b| {
        b.to_async(&rt).iter(|| {
            let fut = inner.oneshot(request(&cookie_here, own_id.as_str()));
            async move { fut.await.unwrap() }
        })
    });
    group.bench_function("cookie_here_tagged_id", |b| {
        b.to_async(&rt).iter(|| {
            let fut = plain
                .clone()
                .oneshot(request(&cookie_here, own_id.as_str()));
            async move { fut.await.unwrap() }
        })
    });
    group.bench_function("stale_cookie_tagged_id_set_cookie", |b| {
        b.to_async(&rt).iter(|| {
            let fut = plain
                .clone()
                .oneshot(request(&cookie_other, own_id.as_str()));
            async move { fut.await.unwrap() }
        })
    });
    let foreign_id = format!("{other}.4f1c2a9e-77b0-4d1e-9a8b-0c5e3d2f1a6b");
    group.bench_function("cookie_here_foreign_id_misroute", |b| {
        b.to_async(&rt).iter(|| {
            let fut = plain.clone().oneshot(request(&cookie_here, &foreign_id));
            async move { fut.await.unwrap() }
        })
    });
    let enveloped_id = format!("{here}.4f1c2a9e-77b0-4d1e-9a8b-0c5e3d2f1a6b");
    group.bench_function("envelope_strip", |b| {
        b.to_async(&rt).iter(|| {
            let fut = enveloped
                .clone()
                .oneshot(request(&cookie_here, &enveloped_id));
            async move { fut.await.unwrap() }
        })
    });
    group.finish();

    // `SessionId` / `NodeTag` validation of a tagged id as the affinity layer mints them.
    let raw = own_id.as_str().to_owned();
    let mut group = c.benchmark_group("session_id_validation");
    configure(&mut group);
    group.bench_function("session_id_parse", |b| {
        b.iter(|| SessionId::parse(black_box(&raw)).unwrap())
    });
    group.bench_function("session_id_node_tag", |b| {
        b.iter(|| black_box(&own_id).node_tag().is_some())
    });
    group.bench_function("node_tag_is_valid", |b| {
        b.iter(|| NodeTag::is_valid(black_box(here.as_str())))
    });
    group.finish();
}

/// A whole `ping` POST on a session the transport holds (the happy path), through the
/// transport's service over the trivial handler.
fn held_session(c: &mut Criterion) {
    recorder_if_asked();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut svc, handle) = transport();
    let id = rt.block_on(initialize(&mut svc));
    let mut group = c.benchmark_group("held_session");
    configure(&mut group);
    group.bench_function("ping", |b| {
        b.to_async(&rt).iter(|| {
            let req = post()
                .header("mcp-session-id", id.as_str())
                .header("mcp-protocol-version", "2025-11-25")
                .body(body(PING))
                .unwrap();
            let fut = svc.clone().oneshot(req);
            async move {
                let res = fut.await.unwrap();
                res.into_body().collect().await.unwrap()
            }
        })
    });
    group.finish();
    rt.block_on(handle.shutdown());
}

/// One metric emission as `mcp_affinity::metrics` makes it (a key in a `static`, through
/// `metrics::with_recorder`): with no recorder, and with the Prometheus exporter's.
#[cfg(feature = "metrics")]
fn metric_emission(c: &mut Criterion) {
    use metrics::{Key, Label, Level, Metadata};
    static META: Metadata<'static> = Metadata::new("bench", Level::INFO, None);
    static LABELS: [Label; 2] = [
        Label::from_static_parts("layer", "affinity"),
        Label::from_static_parts("reason", "cookie"),
    ];
    static COUNTER: Key = Key::from_static_parts("bench_misroutes_total", &LABELS);
    static GAUGE: Key = Key::from_static_name("bench_streams");
    static HIST: Key = Key::from_static_name("bench_forward_seconds");
    let count = || metrics::with_recorder(|r| r.register_counter(&COUNTER, &META).increment(1));
    let gauge = || metrics::with_recorder(|r| r.register_gauge(&GAUGE, &META).increment(1.0));
    let hist = || metrics::with_recorder(|r| r.register_histogram(&HIST, &META).record(0.001));
    let mut group = c.benchmark_group("metric_emission");
    configure(&mut group);
    if std::env::var_os("HOT_PATHS_RECORDER").is_none() {
        group.bench_function("counter_no_recorder", |b| b.iter(count));
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    group.bench_function("counter_prometheus", |b| b.iter(count));
    group.bench_function("gauge_prometheus", |b| b.iter(gauge));
    group.bench_function("histogram_prometheus", |b| b.iter(hist));
    group.finish();
}

#[cfg(not(feature = "metrics"))]
fn metric_emission(_: &mut Criterion) {}

criterion_group!(
    benches,
    session_lookup,
    held_session,
    metric_emission,
    sse_notify,
    protocol_parse,
    protocol_classify,
    affinity
);
criterion_main!(benches);
