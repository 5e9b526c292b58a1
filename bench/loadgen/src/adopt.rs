//! The `adopt` workload: the first request on a session whose owner drained.
//!
//! 1. N legacy sessions are initialized at `--init-url` (node A) over C connections; with
//!    `--redis`, the generator then waits until Redis has been quiet for 300 ms (A's registry
//!    has written the sessions' records).
//! 2. A is sent SIGTERM (`--drain-pid`), and its `/healthz` is polled until it answers `503`
//!    (A has marked itself draining), or A stops accepting connections.
//! 3. Every session's first request, a `ping`, goes to `--url` (node B), over C connections at
//!    once (each takes the next session when its previous request is answered): B does not
//!    hold the session, finds its owner draining, and adopts it. The latency of each request
//!    is recorded; one that is not a `200` carrying a result counts as failed (and its status
//!    is counted).
//! 4. A second `ping` on every session, the same way: by now B holds them.
//!
//! Reported: the first requests' latency (p50/p90/p99/max of those answered), how many failed,
//! the second round's, B's (`--server-pid`) and A's (`--peer-pid`) CPU and the Redis commands
//! (`--redis`) over step 3, and B's registry counters (`GET /stats`) after step 4.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::{
    Args, Error, Pids, calls_since, close_sessions, cpu_fields, cpu_mark, cpu_since, merge,
    node_stats, open_sessions, procfs, settle,
};
use crate::{
    client::{self, Conn, Session, Target},
    stats::{Samples, round3},
};

pub async fn run(args: &Args, target: Arc<Target>, init: Arc<Target>) -> Result<Value, Error> {
    let pid = args.drain_pid.ok_or("adopt needs --drain-pid")?;
    let setup = Instant::now();
    let sessions = open_sessions(&init, args.sessions, args.connections).await?;
    // The records are written in the background: all of them before the drain.
    settle(args).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let sessions = Arc::new(sessions);

    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
    if !killed.success() {
        return Err(format!("kill -TERM {pid}: {killed}"));
    }
    let drain_seen = draining(&init, Duration::from_secs_f64(args.wait)).await?;
    let drain_ms = signalled.elapsed().as_secs_f64() * 1e3;

    let mut redis = match &args.redis {
        Some(addr) => Some(
            procfs::Redis::connect(addr)
                .and_then(|mut r| {
                    let before = r.command_calls()?;
                    Ok((r, before))
                })
                .map_err(|e| format!("redis {addr}: {e}"))?,
        ),
        None => None,
    };
    let pids = Pids::of(args);
    let mark = cpu_mark(&pids);
    let mut first = round(&target, &sessions, args.connections).await;
    let usage = cpu_since(mark, &pids);
    let redis_calls = redis.as_mut().map(|(r, before)| {
        r.command_calls()
            .map(|after| calls_since(before, &after))
            .map_err(|e| e.to_string())
    });
    let mut second = round(&target, &sessions, args.connections).await;
    let stats = node_stats(&target).await;
    let close_failed = close_sessions(&target, sessions.clone(), args.connections).await;

    let n = sessions.len() as f64;
    let mut v = json!({
        "sessions": sessions.len(),
        "connections": args.connections,
        "setup_s": round3(setup_s),
        "drain_signal_to_503_ms": round3(drain_ms),
        "drain_seen": drain_seen,
        "ops": n,
        "first_s": round3(first.elapsed_s),
        "ops_per_s": round3(n / first.elapsed_s.max(1e-9)),
        "failed": first.failed,
        "errors": first.failed,
        "statuses": first.statuses,
        "answers_with_session_id": first.with_session_id,
        "error_sample": first.error_sample,
        "second_failed": second.failed,
        "second_statuses": second.statuses,
        "second_error_sample": second.error_sample,
        "node_stats": stats,
        "close_errors": close_failed,
    });
    merge(&mut v, first.samples.summary());
    let s2 = second.samples.summary();
    merge(
        &mut v,
        json!({"second_p50_ms": s2["p50_ms"], "second_p99_ms": s2["p99_ms"], "second_max_ms": s2["max_ms"]}),
    );
    merge(&mut v, cpu_fields(&usage, n, first.elapsed_s));
    match redis_calls {
        Some(Ok(calls)) => {
            let total = calls.values().sum::<u64>();
            merge(
                &mut v,
                json!({"redis_commands": total,
                       "redis_commands_per_session": round3(total as f64 / n),
                       "redis_commandstats": calls}),
            );
        }
        Some(Err(e)) => merge(&mut v, json!({"redis_error": e})),
        None => {}
    }
    Ok(v)
}

/// Polls `GET /healthz` at `init` until it answers `503` (`"503"`) or refuses connections
/// (`"refused"`, the node has stopped accepting), within `wait`.
async fn draining(init: &Arc<Target>, wait: Duration) -> Result<&'static str, Error> {
    let deadline = Instant::now() + wait;
    let mut conn = Conn::new(init.clone());
    let mut last = String::new();
    while Instant::now() < deadline {
        let req = http::Request::builder()
            .method(Method::GET)
            .uri("/healthz")
            .header(header::HOST, init.host.clone())
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap_or_default();
        match tokio::time::timeout(Duration::from_secs(1), conn.send(req)).await {
            Ok(Ok(res)) if res.status() == StatusCode::SERVICE_UNAVAILABLE => return Ok("503"),
            Ok(Ok(res)) => {
                last = format!("HTTP {}", res.status());
                let _ = client::expect_2xx(res).await;
            }
            Ok(Err(e)) if e.starts_with("connect") => return Ok("refused"),
            Ok(Err(e)) => {
                conn.reset();
                last = e;
            }
            Err(_) => {
                conn.reset();
                last = "timed out".into();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!(
        "{}: /healthz never answered 503 after SIGTERM (last: {last})",
        init.addr
    ))
}

/// One `ping` per session, `conc` at a time.
#[derive(Debug, Default)]
struct Round {
    /// Latency of the answered requests.
    samples: Samples,
    failed: u64,
    statuses: BTreeMap<String, u64>,
    error_sample: Option<String>,
    /// Answers naming the session (`Mcp-Session-Id`, which an adopting node sets).
    with_session_id: u64,
    elapsed_s: f64,
}

async fn round(target: &Arc<Target>, sessions: &Arc<Vec<Session>>, conc: usize) -> Round {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..conc.min(sessions.len()).max(1) {
        let (target, sessions, next) = (target.clone(), sessions.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target.clone());
            let mut r = Round::default();
            let mut k: u64 = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = sessions.get(i) else {
                    return r;
                };
                let id = ((task as u64) << 32) | k;
                k += 1;
                let body = Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#));
                let req = client::post(&target, Some(s), body, "ping", None);
                let t0 = Instant::now();
                let res = tokio::time::timeout(client::REQUEST_TIMEOUT, async {
                    let res = conn.send(req).await?;
                    let status = res.status();
                    let named = res.headers().contains_key("mcp-session-id");
                    let answer = client::read_answer(res, None).await;
                    Ok::<_, Error>((status, named, answer))
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let us = t0.elapsed().as_micros();
                match res {
                    Ok((status, named, answer)) => {
                        *r.statuses.entry(status.as_u16().to_string()).or_default() += 1;
                        r.with_session_id += u64::from(named);
                        match answer {
                            Ok(_) => r.samples.push_us(us),
                            Err(e) => {
                                r.failed += 1;
                                r.error_sample.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        conn.reset();
                        *r.statuses.entry("error".into()).or_default() += 1;
                        r.failed += 1;
                        r.error_sample.get_or_insert(e);
                    }
                }
            }
        }));
    }
    let mut all = Round::default();
    for t in tasks {
        match t.await {
            Ok(r) => {
                all.samples.extend(r.samples);
                all.failed += r.failed;
                all.with_session_id += r.with_session_id;
                for (k, v) in r.statuses {
                    *all.statuses.entry(k).or_default() += v;
                }
                if all.error_sample.is_none() {
                    all.error_sample = r.error_sample;
                }
            }
            Err(e) => {
                all.failed += 1;
                all.error_sample.get_or_insert(format!("task: {e}"));
            }
        }
    }
    all.elapsed_s = started.elapsed().as_secs_f64();
    all
}
