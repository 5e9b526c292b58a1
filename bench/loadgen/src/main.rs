//! `loadgen`: drives any Streamable HTTP MCP endpoint and prints one JSON line per run.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080/mcp --workload ping --sessions 1000 --connections 64 \
//!         --duration 5 --server-pid 1234
//! ```
//!
//! Workloads (legacy protocol 2025-11-25 with sessions unless `--stateless`):
//! - `churn`: C loops of initialize + notifications/initialized + DELETE (one op = one session)
//! - `ping`, `call`: `ping` / `tools/call echo` on N live sessions over C keep-alive connections
//! - `stream`: `tools/call progress {steps: K}` with a progress token; the answer must carry K
//!   progress notifications on the request's SSE stream
//! - `idle`: open N sessions (`--with-get`: each with a GET stream on its own connection), report
//!   the server's RSS per session, close them all and report RSS again
//! - `fanout`: N sessions with GET streams; `tools/call broadcast` (the node example's tool)
//!   sends one log message to every stream; time from the trigger to the last receipt. With
//!   `--node-url URL` (repeatable) the sessions are spread round-robin over `--url` and those
//!   nodes (the trigger's session on `--url`), for a broadcast that crosses the cluster bus
//! - `adopt`: N sessions initialized at `--init-url` (node A); then A is sent SIGTERM
//!   (`--drain-pid`) and, once its `/healthz` answers `503` (it drains), every session's first
//!   request (`ping`) goes to `--url` (node B), which adopts it; the latency of those first
//!   requests, and of a second round (by then the sessions are B's own), and how many failed
//!   (see `adopt.rs`)
//! - `chaos`: N sessions calling `tools/call echo` and `ping` (`--rate R` requests per second in
//!   all, 0: closed loop; `--renew K`: every K-th request of a connection ends a session, which
//!   a new one replaces) while `scripts/chaos.sh` kills and restarts Redis and the nodes; a
//!   session that gets `404` is initialized again, and failures are split into those on a
//!   killed node's sessions (`--events FILE` says which node was killed when) and the others
//!   (see `chaos.rs`)
//! - `tasks`: the Tasks extension (SEP-2663) on the stateless 2026-07-28 wire, in two phases:
//!   C loops of `tools/call slow_compute {seconds: 0}` with the per-request opt-in, each
//!   answered by a `CreateTaskResult`; then C loops of `tasks/get` round-robin over the ids
//!   the first phase created (all completed by then); ops/s, latency, server CPU and Redis
//!   commands per operation for each phase (see `tasks.rs`)
//!
//! `--init-url URL`: sessions are initialized there (node A) while the workload's requests go
//! to `--url` (node B): with `ping` or `call`, every request is one B forwards to A.
//!
//! `--stateless` sends 2026-07-28 requests (per-request `_meta` and headers, no session) for
//! `call` and `stream`; `tasks` always does.
//!
//! CPU: the server's utime+stime from `/proc/<pid>/stat` (`--server-pid`) and the generator's
//! own, over the measured window (after `--warmup`); `--peer-pid` measures a second server
//! process (node A of `--init-url`) the same way, reported apart (`peer_cpu_*`) and summed with
//! the first (`servers_cpu_*`). `--node-pid PID` (repeatable, in the order of `--node-url`)
//! measures each further node of a `fanout`: every node's CPU per delivery on that node
//! (`node_cpu_us_per_op`, `--url`'s first) and all of them summed (`servers_cpu_*`).
//! `--redis ADDR` counts Redis commands in the window (INFO commandstats at its start and its
//! end; for `fanout`, around the broadcasts, with the commands per broadcast; for `tasks`, in
//! each phase's window, per operation).

mod adopt;
mod chaos;
mod client;
mod procfs;
mod stats;
mod tasks;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use client::{Conn, Error, Session, Target};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use stats::{Samples, round3};
use tokio::{sync::mpsc, task::JoinHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Churn,
    Ping,
    Call,
    Stream,
    Idle,
    Fanout,
    Chaos,
    Adopt,
    Tasks,
}

impl Workload {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "churn" => Self::Churn,
            "ping" => Self::Ping,
            "call" => Self::Call,
            "stream" => Self::Stream,
            "idle" => Self::Idle,
            "fanout" => Self::Fanout,
            "chaos" => Self::Chaos,
            "adopt" => Self::Adopt,
            "tasks" => Self::Tasks,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Churn => "churn",
            Self::Ping => "ping",
            Self::Call => "call",
            Self::Stream => "stream",
            Self::Idle => "idle",
            Self::Fanout => "fanout",
            Self::Chaos => "chaos",
            Self::Adopt => "adopt",
            Self::Tasks => "tasks",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    url: String,
    init_url: Option<String>,
    node_urls: Vec<String>,
    workload: Workload,
    sessions: usize,
    connections: usize,
    duration: f64,
    warmup: f64,
    server_pid: Option<u32>,
    peer_pid: Option<u32>,
    node_pids: Vec<u32>,
    drain_pid: Option<u32>,
    with_get: bool,
    steps: usize,
    triggers: usize,
    stateless: bool,
    label: Option<String>,
    run: Option<u32>,
    threads: usize,
    settle: f64,
    redis: Option<String>,
    redis_pid: Option<u32>,
    wait: f64,
    rate: f64,
    renew: u64,
    events: Option<String>,
}

const USAGE: &str =
    "usage: loadgen --url http://HOST:PORT/mcp
  --workload churn|ping|call|stream|idle|fanout|chaos|adopt|tasks
  [--sessions N (64)] [--connections C (64)] [--duration SECS (5)] [--warmup SECS (1)]
  [--server-pid PID] [--init-url URL] [--peer-pid PID] [--drain-pid PID (adopt)] [--with-get] [--steps K (10)] [--triggers R (5)] [--stateless]
  [--node-url URL]... [--node-pid PID]... (fanout over several nodes)
  [--label TEXT] [--run I] [--threads T (1)] [--settle SECS (1)] [--redis HOST:PORT]
  [--redis-pid PID] [--wait SECS (10)] [--rate R (0: closed loop; chaos)]
  [--renew K (0: never; chaos)] [--events FILE (chaos)]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        init_url: None,
        node_urls: Vec::new(),
        workload: Workload::Ping,
        sessions: 64,
        connections: 64,
        duration: 5.0,
        warmup: 1.0,
        server_pid: None,
        peer_pid: None,
        node_pids: Vec::new(),
        drain_pid: None,
        with_get: false,
        steps: 10,
        triggers: 5,
        stateless: false,
        label: None,
        run: None,
        threads: 1,
        settle: 1.0,
        redis: None,
        redis_pid: None,
        wait: 10.0,
        rate: 0.0,
        renew: 0,
        events: None,
    };
    let mut it = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: bad value {v}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--url" => a.url = num("--url", it.next())?,
            "--workload" => {
                let w: String = num("--workload", it.next())?;
                a.workload = Workload::parse(&w).ok_or_else(|| format!("unknown workload {w}"))?;
            }
            "--sessions" => a.sessions = num(&arg, it.next())?,
            "--connections" => a.connections = num(&arg, it.next())?,
            "--duration" => a.duration = num(&arg, it.next())?,
            "--warmup" => a.warmup = num(&arg, it.next())?,
            "--server-pid" => a.server_pid = Some(num(&arg, it.next())?),
            "--init-url" => a.init_url = Some(num(&arg, it.next())?),
            "--peer-pid" => a.peer_pid = Some(num(&arg, it.next())?),
            "--node-url" => a.node_urls.push(num(&arg, it.next())?),
            "--node-pid" => a.node_pids.push(num(&arg, it.next())?),
            "--drain-pid" => a.drain_pid = Some(num(&arg, it.next())?),
            "--with-get" => a.with_get = true,
            "--steps" => a.steps = num(&arg, it.next())?,
            "--triggers" => a.triggers = num(&arg, it.next())?,
            "--stateless" => a.stateless = true,
            "--label" => a.label = Some(num(&arg, it.next())?),
            "--run" => a.run = Some(num(&arg, it.next())?),
            "--threads" => a.threads = num(&arg, it.next())?,
            "--settle" => a.settle = num(&arg, it.next())?,
            "--redis" => a.redis = Some(num(&arg, it.next())?),
            "--redis-pid" => a.redis_pid = Some(num(&arg, it.next())?),
            "--wait" => a.wait = num(&arg, it.next())?,
            "--rate" => a.rate = num(&arg, it.next())?,
            "--renew" => a.renew = num(&arg, it.next())?,
            "--events" => a.events = Some(num(&arg, it.next())?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.url.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    if a.connections == 0 || a.sessions == 0 {
        return Err("--connections and --sessions must be at least 1".into());
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        return Err("--rate must be 0 (closed loop) or a positive number".into());
    }
    if a.stateless
        && !matches!(
            a.workload,
            Workload::Call | Workload::Stream | Workload::Tasks
        )
    {
        return Err("--stateless applies to the call, stream and tasks workloads".into());
    }
    // The Tasks extension is defined on the 2026-07-28 wire only.
    if a.workload == Workload::Tasks {
        a.stateless = true;
    }
    if a.init_url.is_some()
        && (a.stateless
            || !matches!(
                a.workload,
                Workload::Ping | Workload::Call | Workload::Stream | Workload::Adopt
            ))
    {
        return Err(
            "--init-url applies to the ping, call, stream and adopt workloads (with sessions)"
                .into(),
        );
    }
    if !a.node_urls.is_empty() && a.workload != Workload::Fanout {
        return Err("--node-url applies to the fanout workload".into());
    }
    if !a.node_pids.is_empty() && a.node_pids.len() != a.node_urls.len() {
        return Err("--node-pid: one for each --node-url, in the same order".into());
    }
    if a.workload == Workload::Adopt && (a.init_url.is_none() || a.drain_pid.is_none()) {
        return Err(
            "adopt needs --init-url (the node that drains) and --drain-pid (its pid)".into(),
        );
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(args.clone())) {
        Ok(mut line) => {
            let head = json!({
                "label": args.label,
                "run": args.run,
                "workload": args.workload.name(),
                "era": if args.stateless { "2026-07-28" } else { client::LEGACY_VERSION },
                "url": args.url,
            });
            if let (Some(h), Some(l)) = (head.as_object(), line.as_object_mut()) {
                let mut merged = h.clone();
                merged.append(l);
                *l = merged;
            }
            println!("{line}");
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            println!(
                "{}",
                json!({"label": args.label, "run": args.run, "workload": args.workload.name(),
                       "url": args.url, "fatal": e})
            );
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<Value, Error> {
    let target = Target::parse(&args.url, args.stateless)?;
    wait_for(&target, args.wait).await?;
    let init = match &args.init_url {
        Some(url) => {
            let init = Target::parse(url, false)?;
            wait_for(&init, args.wait).await?;
            init
        }
        None => target.clone(),
    };
    match args.workload {
        Workload::Churn => churn(&args, target).await,
        Workload::Ping | Workload::Call | Workload::Stream => rpc(&args, target, init).await,
        Workload::Adopt => adopt::run(&args, target, init).await,
        Workload::Idle => idle(&args, target).await,
        Workload::Fanout => fanout(&args, target).await,
        Workload::Tasks => tasks::run(&args, target).await,
        Workload::Chaos => {
            let sessions = open_sessions(&target, args.sessions, args.connections).await?;
            let options = chaos::Options {
                connections: args.connections,
                duration: Duration::from_secs_f64(args.duration),
                rate: args.rate,
                renew: args.renew,
                events: args.events.clone(),
            };
            chaos::run(target, sessions, options).await
        }
    }
}

async fn wait_for(target: &Target, secs: f64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        match tokio::net::TcpStream::connect(target.addr).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{} not reachable: {e}", target.addr));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement window, CPU and Redis sampling

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn new(args: &Args) -> Self {
        let start = Instant::now() + Duration::from_secs_f64(args.warmup);
        Self {
            start,
            end: start + Duration::from_secs_f64(args.duration),
        }
    }
}

#[derive(Debug, Default)]
struct Usage {
    server_cpu_s: Option<f64>,
    peer_cpu_s: Option<f64>,
    /// `--node-pid`s, in their order.
    nodes_cpu_s: Vec<Option<f64>>,
    client_cpu_s: Option<f64>,
    redis_cpu_s: Option<f64>,
    /// Busy CPU seconds of the whole machine, and stolen by the hypervisor.
    machine: Option<(f64, f64)>,
    redis: Option<Result<BTreeMap<String, u64>, String>>,
}

/// CPU of the server and of this process at one instant.
#[derive(Debug, Clone)]
struct CpuMark {
    server: Option<f64>,
    peer: Option<f64>,
    nodes: Vec<Option<f64>>,
    client: Option<f64>,
    machine: Option<(f64, f64)>,
}

/// The server processes whose CPU a run measures: `--server-pid`, `--peer-pid` and the
/// `--node-pid`s.
#[derive(Debug, Clone, Default)]
struct Pids {
    server: Option<u32>,
    peer: Option<u32>,
    nodes: Vec<u32>,
}

impl Pids {
    fn of(args: &Args) -> Self {
        Self {
            server: args.server_pid,
            peer: args.peer_pid,
            nodes: args.node_pids.clone(),
        }
    }

    fn server(pid: u32) -> Self {
        Self {
            server: Some(pid),
            ..Self::default()
        }
    }
}

fn cpu_mark(pids: &Pids) -> CpuMark {
    CpuMark {
        server: pids.server.and_then(procfs::cpu_seconds),
        peer: pids.peer.and_then(procfs::cpu_seconds),
        nodes: pids.nodes.iter().map(|&p| procfs::cpu_seconds(p)).collect(),
        client: procfs::cpu_seconds(std::process::id()),
        machine: procfs::machine_cpu_seconds(),
    }
}

fn cpu_since(a: CpuMark, pids: &Pids) -> Usage {
    let b = cpu_mark(pids);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    Usage {
        server_cpu_s: diff(a.server, b.server),
        peer_cpu_s: diff(a.peer, b.peer),
        nodes_cpu_s: a
            .nodes
            .iter()
            .zip(&b.nodes)
            .map(|(&a, &b)| diff(a, b))
            .collect(),
        client_cpu_s: diff(a.client, b.client),
        redis_cpu_s: None,
        machine: a
            .machine
            .zip(b.machine)
            .map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
        redis: None,
    }
}

/// Samples CPU (and Redis command counts) at the window's edges, on its own thread so a busy
/// runtime does not delay the readings.
fn sample_window(win: Window, args: &Args) -> std::thread::JoinHandle<Usage> {
    let (pids, redis, redis_pid) = (Pids::of(args), args.redis.clone(), args.redis_pid);
    std::thread::spawn(move || {
        sleep_until(win.start);
        let mut conn = redis.as_deref().map(|addr| {
            procfs::Redis::connect(addr).and_then(|mut r| {
                let before = r.command_calls()?;
                Ok((r, before))
            })
        });
        let mark = cpu_mark(&pids);
        let redis_mark = redis_pid.and_then(procfs::cpu_seconds);
        sleep_until(win.end);
        let mut usage = cpu_since(mark, &pids);
        usage.redis_cpu_s = redis_mark
            .zip(redis_pid.and_then(procfs::cpu_seconds))
            .map(|(a, b)| b - a);
        usage.redis = conn.as_mut().map(|c| match c {
            Ok((r, before)) => r
                .command_calls()
                .map(|after| calls_since(before, &after))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        });
        usage
    })
}

/// Per-command calls between two `INFO commandstats` readings (commands that ran).
fn calls_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Per-task tallies.
#[derive(Debug, Default)]
struct Tally {
    samples: Samples,
    errors: u64,
    error_sample: Option<String>,
    counted: u64,
}

impl Tally {
    fn note(&mut self, win: &Window, t0: Instant, t1: Instant, r: Result<usize, Error>) {
        if t0 < win.start || t1 > win.end {
            return;
        }
        match r {
            Ok(counted) => {
                self.samples.push_us((t1 - t0).as_micros());
                self.counted += counted as u64;
            }
            Err(e) => {
                self.errors += 1;
                self.error_sample.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
        self.counted += other.counted;
        if self.error_sample.is_none() {
            self.error_sample = other.error_sample;
        }
    }
}

/// The common JSON for a timed, closed-loop run.
fn report(args: &Args, mut tally: Tally, usage: Usage, setup_s: f64) -> Value {
    let secs = args.duration;
    let ops = tally.samples.len() as f64;
    let mut v = json!({
        "sessions": args.sessions,
        "connections": args.connections,
        "duration_s": secs,
        "ops": ops,
        "ops_per_s": round3(ops / secs),
        "errors": tally.errors,
        "error_sample": tally.error_sample,
        "setup_s": round3(setup_s),
    });
    merge(&mut v, tally.samples.summary());
    merge(&mut v, cpu_fields(&usage, ops, secs));
    if let Some(r) = usage.redis {
        match r {
            Ok(calls) => {
                merge(
                    &mut v,
                    json!({"redis_commands": calls.values().sum::<u64>(), "redis_commandstats": calls}),
                );
            }
            Err(e) => merge(&mut v, json!({"redis_error": e})),
        }
    }
    if args.workload == Workload::Stream {
        merge(
            &mut v,
            json!({"steps": args.steps, "notifications": tally.counted,
                   "notifications_per_s": round3(tally.counted as f64 / secs)}),
        );
    }
    v
}

fn cpu_fields(usage: &Usage, ops: f64, secs: f64) -> Value {
    let per_op = |cpu: Option<f64>| cpu.filter(|_| ops > 0.0).map(|c| round3(c / ops * 1e6));
    let mut v = json!({
        "server_cpu_s": usage.server_cpu_s.map(round3),
        "server_cpu_us_per_op": per_op(usage.server_cpu_s),
        "server_cpu_util": usage.server_cpu_s.map(|c| round3(c / secs)),
        "client_cpu_s": usage.client_cpu_s.map(round3),
        "client_cpu_us_per_op": per_op(usage.client_cpu_s),
        "client_cpu_util": usage.client_cpu_s.map(|c| round3(c / secs)),
        "redis_cpu_us_per_op": per_op(usage.redis_cpu_s),
        // Cores busy with anything but the servers, this generator and Redis: other processes
        // on the machine disturbing the run.
        "other_cpu_util": usage.machine.map(|(busy, _)| {
            let ours = usage.server_cpu_s.unwrap_or(0.0)
                + usage.peer_cpu_s.unwrap_or(0.0)
                + usage.nodes_cpu_s.iter().flatten().sum::<f64>()
                + usage.client_cpu_s.unwrap_or(0.0)
                + usage.redis_cpu_s.unwrap_or(0.0);
            round3(((busy - ours) / secs).max(0.0))
        }),
        "steal_util": usage.machine.map(|(_, steal)| round3(steal / secs)),
    });
    // A second server (`--peer-pid`): its CPU apart, and both together.
    if usage.peer_cpu_s.is_some() {
        merge(
            &mut v,
            json!({
                "peer_cpu_s": usage.peer_cpu_s.map(round3),
                "peer_cpu_us_per_op": per_op(usage.peer_cpu_s),
                "peer_cpu_util": usage.peer_cpu_s.map(|c| round3(c / secs)),
            }),
        );
    }
    // Every server process together (with `--peer-pid` or `--node-pid`s); none if one of them
    // could not be read.
    if usage.peer_cpu_s.is_some() || !usage.nodes_cpu_s.is_empty() {
        let both: Option<f64> = std::iter::once(usage.server_cpu_s)
            .chain(usage.peer_cpu_s.map(Some))
            .chain(usage.nodes_cpu_s.iter().copied())
            .sum();
        merge(
            &mut v,
            json!({
                "servers_cpu_s": both.map(round3),
                "servers_cpu_us_per_op": per_op(both),
                "servers_cpu_util": both.map(|c| round3(c / secs)),
            }),
        );
    }
    v
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

async fn join_all(handles: Vec<JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => total.merge(t),
            Err(e) => {
                total.errors += 1;
                total.error_sample.get_or_insert(format!("task: {e}"));
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Opens `n` sessions over `conc` connections (each retried a few times).
async fn open_sessions(target: &Arc<Target>, n: usize, conc: usize) -> Result<Vec<Session>, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.min(n) {
        let target = target.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(out);
                }
                let mut last = String::new();
                let mut done = false;
                for _ in 0..3 {
                    match client::open_session(&mut conn).await {
                        Ok(s) => {
                            out.push((i, s));
                            done = true;
                            break;
                        }
                        Err(e) => {
                            conn.reset();
                            last = e;
                        }
                    }
                }
                if !done {
                    return Err(format!("opening session {i}: {last}"));
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// DELETEs every session over `conc` connections; returns the number of failures.
async fn close_sessions(target: &Arc<Target>, sessions: Arc<Vec<Session>>, conc: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.min(sessions.len()).max(1) {
        let target = target.clone();
        let next = next.clone();
        let sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = sessions.get(i) else {
                    return failed;
                };
                if client::close_session(&mut conn, s).await.is_err() {
                    conn.reset();
                    failed += 1;
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(1);
    }
    failed
}

// ---------------------------------------------------------------------------------------------
// churn

async fn churn(args: &Args, target: Arc<Target>) -> Result<Value, Error> {
    let win = Window::new(args);
    let sampler = sample_window(win, args);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut tally = Tally::default();
            loop {
                let t0 = Instant::now();
                if t0 >= win.end {
                    return tally;
                }
                let r = async {
                    let s = client::open_session(&mut conn).await?;
                    client::close_session(&mut conn, &s).await?;
                    Ok::<_, Error>(0)
                }
                .await;
                if r.is_err() {
                    conn.reset();
                }
                tally.note(&win, t0, Instant::now(), r);
            }
        }));
    }
    let tally = join_all(tasks).await;
    let usage = sampler.join().unwrap_or_default();
    // How long the registry needs to catch up once the load stops (its writes are queued).
    // Every session was DELETEd: keys left once Redis is quiet are records the registry never
    // removed (its own bookkeeping keys included).
    let drained = match args.redis.clone() {
        Some(addr) => Some(
            tokio::task::spawn_blocking(move || {
                let d = redis_quiet(&addr)?;
                // The nodes' liveness records and the node set are membership, not session
                // records: not counted.
                let keys = procfs::Redis::connect(&addr)
                    .and_then(|mut r| {
                        let all = r.dbsize()?;
                        let membership = r.count_keys("mcp:session:live:*")?
                            + r.count_keys("mcp:session:nodes")?;
                        Ok(all.saturating_sub(membership))
                    })
                    .map_err(|e| format!("redis {addr}: {e}"))?;
                Ok::<_, Error>((d, keys))
            })
            .await
            .map_err(|e| e.to_string())??,
        ),
        None => None,
    };
    let drain_s = drained.map(|d| d.0);
    let keys_left = drained.map(|d| d.1);
    let mut v = report(args, tally, usage, 0.0);
    merge(
        &mut v,
        json!({
            "sessions": Value::Null,
            "redis_drain_s": drain_s.map(|d| round3((d - 0.3).max(0.0))),
            "redis_keys_left": keys_left,
        }),
    );
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// ping, call, stream

fn rpc_body(
    w: Workload,
    stateless: bool,
    id: u64,
    steps: usize,
) -> (Bytes, &'static str, Option<&'static str>) {
    let meta = client::modern_meta();
    let s = match (w, stateless) {
        (Workload::Ping, _) => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#),
        (Workload::Call, false) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}"#
        ),
        (Workload::Call, true) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}},"_meta":{{{meta}}}}}}}"#
        ),
        (_, false) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"progress","arguments":{{"steps":{steps}}},"_meta":{{"progressToken":{id}}}}}}}"#
        ),
        (_, true) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"progress","arguments":{{"steps":{steps}}},"_meta":{{"progressToken":{id},{meta}}}}}}}"#
        ),
    };
    match w {
        Workload::Ping => (Bytes::from(s), "ping", None),
        Workload::Call => (Bytes::from(s), "tools/call", Some("echo")),
        _ => (Bytes::from(s), "tools/call", Some("progress")),
    }
}

async fn rpc(args: &Args, target: Arc<Target>, init: Arc<Target>) -> Result<Value, Error> {
    let setup = Instant::now();
    let sessions = if args.stateless {
        Vec::new()
    } else {
        open_sessions(&init, args.sessions, args.connections).await?
    };
    let setup_s = setup.elapsed().as_secs_f64();
    // A registry may still be writing the sessions' records: start the window once Redis has
    // been quiet for a moment, so it measures the steady state.
    let redis_settle_s = settle(args).await?;
    let sessions = Arc::new(sessions);
    let win = Window::new(args);
    let sampler = sample_window(win, args);
    let c = args.connections;
    let mut tasks = Vec::new();
    for task in 0..c {
        let own: Vec<usize> = if sessions.is_empty() {
            Vec::new()
        } else if sessions.len() >= c {
            (task..sessions.len()).step_by(c).collect()
        } else {
            vec![task % sessions.len()]
        };
        let target = target.clone();
        let sessions = sessions.clone();
        let (w, stateless, steps) = (args.workload, args.stateless, args.steps);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target.clone());
            let mut tally = Tally::default();
            let count: Option<&[u8]> = (w == Workload::Stream).then_some(b"notifications/progress");
            let mut k: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= win.end {
                    return tally;
                }
                let session = (!own.is_empty()).then(|| &sessions[own[k as usize % own.len()]]);
                let id = ((task as u64) << 32) | k;
                k += 1;
                let (body, method, name) = rpc_body(w, stateless, id, steps);
                let req = client::post(&target, session, body, method, name);
                let r = tokio::time::timeout(client::REQUEST_TIMEOUT, async {
                    let res = conn.send(req).await?;
                    client::read_answer(res, count).await
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let r = r.and_then(|a| {
                    if w == Workload::Stream && a.counted != steps {
                        Err(format!("{} of {steps} progress notifications", a.counted))
                    } else {
                        Ok(a.counted)
                    }
                });
                if r.as_ref().is_err_and(|e| !e.starts_with("HTTP ")) {
                    conn.reset();
                }
                tally.note(&win, t0, Instant::now(), r);
            }
        }));
    }
    let tally = join_all(tasks).await;
    let usage = sampler.join().unwrap_or_default();
    // B's registry counters (forwarded, adopted), when it is this crate's node example.
    let node_stats = match args.init_url {
        Some(_) => Some(node_stats(&target).await),
        None => None,
    };
    let close_failed = close_sessions(&init, sessions, args.connections).await;
    if let Some(addr) = args.redis.clone() {
        // Let the registry finish removing the records before the process is stopped.
        let _ = tokio::task::spawn_blocking(move || redis_quiet(&addr)).await;
    }
    let mut v = report(args, tally, usage, setup_s);
    if args.stateless {
        merge(&mut v, json!({"sessions": 0}));
    }
    merge(
        &mut v,
        json!({"close_errors": close_failed, "redis_settle_s": redis_settle_s.map(round3)}),
    );
    if let Some(stats) = node_stats {
        merge(
            &mut v,
            json!({"init_url": args.init_url, "node_stats": stats}),
        );
    }
    Ok(v)
}

/// The registry counters of the node at `target` (`GET /stats` of the node example), or why
/// there are none.
async fn node_stats(target: &Arc<Target>) -> Value {
    let req = http::Request::builder()
        .method(Method::GET)
        .uri("/stats")
        .header(header::HOST, target.host.clone())
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap_or_default();
    let mut conn = Conn::new(target.clone());
    let got = tokio::time::timeout(client::REQUEST_TIMEOUT, async {
        let res = conn.send(req).await?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("/stats: HTTP {status}"));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("/stats: {e}"))
    })
    .await
    .unwrap_or_else(|_| Err("/stats timed out".into()));
    match got {
        Ok(v) => v.get("registry").cloned().unwrap_or(v),
        Err(e) => json!({ "error": e }),
    }
}

/// With `--redis`: waits until Redis has been quiet (see [`redis_quiet`]) and returns how
/// long that took, in seconds.
async fn settle(args: &Args) -> Result<Option<f64>, Error> {
    let Some(addr) = args.redis.clone() else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || redis_quiet(&addr))
        .await
        .map_err(|e| e.to_string())?
        .map(Some)
}

/// Waits until Redis has executed no command for 300 ms (at most 30 s); returns the wait.
fn redis_quiet(addr: &str) -> Result<f64, Error> {
    let start = Instant::now();
    let mut r = procfs::Redis::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
    let total = |r: &mut procfs::Redis| -> Result<u64, Error> {
        Ok(r.command_calls()
            .map_err(|e| format!("redis {addr}: {e}"))?
            .values()
            .sum())
    };
    let mut last = total(&mut r)?;
    let mut quiet_since = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        let now = total(&mut r)?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// GET streams: idle and fanout

/// Where GET streams report the broadcast markers they read: (trigger index, node index, when),
/// `node` being the index of the node the streams are on.
#[derive(Debug, Clone)]
struct Receipts {
    tx: mpsc::UnboundedSender<(u32, usize, Instant)>,
    node: usize,
}

const MARKER: &[u8] = b"bcast";
const MARKER_LEN: usize = 10; // "bcast" + 4 digits + "x"

fn marker(r: u32) -> String {
    format!("bcast{r:04}x")
}

/// Opens a GET stream for each session, each on its own connection; the returned tasks own
/// the connections (aborting one closes its socket).
async fn open_streams(
    target: &Arc<Target>,
    sessions: &[Session],
    conc: usize,
    receipts: Option<Receipts>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let mut pending = Vec::with_capacity(sessions.len());
    for s in sessions {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let target = target.clone();
        let s = s.clone();
        let receipts = receipts.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), Error>>();
        let task = tokio::spawn(async move {
            let (mut tx, conn) = match client::handshake(&target).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let work = async move {
                let res = async {
                    tx.ready().await.map_err(|e| e.to_string())?;
                    tx.send_request(client::session_request(&target, &s, Method::GET))
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                let res = match res {
                    Ok(r)
                        if r.status() == StatusCode::OK
                            && r.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
                                v.as_bytes().starts_with(b"text/event-stream")
                            }) =>
                    {
                        r
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let _ = ready_tx.send(Err(format!(
                            "GET: HTTP {status}: {}",
                            client::snippet(&body)
                        )));
                        return;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("GET: {e}")));
                        return;
                    }
                };
                drop(permit);
                let _ = ready_tx.send(Ok(()));
                let mut body = res.into_body();
                let mut window: Vec<u8> = Vec::new();
                let mut seen: Option<u32> = None;
                while let Some(Ok(frame)) = body.frame().await {
                    let (Some(receipts), Ok(data)) = (&receipts, frame.into_data()) else {
                        continue;
                    };
                    window.extend_from_slice(&data);
                    for at in memchr::memmem::find_iter(&window, MARKER) {
                        let Some(m) = window.get(at..at + MARKER_LEN) else {
                            continue;
                        };
                        let Some(r) = std::str::from_utf8(&m[5..9])
                            .ok()
                            .and_then(|d| d.parse::<u32>().ok())
                        else {
                            continue;
                        };
                        if seen.is_none_or(|s| r > s) {
                            seen = Some(r);
                            let _ = receipts.tx.send((r, receipts.node, Instant::now()));
                        }
                    }
                    let keep = window.len().saturating_sub(MARKER_LEN - 1);
                    window.drain(..keep);
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = work => {}
            }
        });
        pending.push((task, ready_rx));
    }
    let mut tasks = Vec::with_capacity(pending.len());
    let mut first_err = None;
    for (task, ready) in pending {
        match ready.await {
            Ok(Ok(())) => tasks.push(task),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
                task.abort();
            }
            Err(_) => {
                first_err.get_or_insert("GET stream task ended".into());
                task.abort();
            }
        }
    }
    match first_err {
        Some(e) => {
            for t in &tasks {
                t.abort();
            }
            Err(e)
        }
        None => Ok(tasks),
    }
}

/// The server's RSS once it has stopped falling after a close: an allocator may hand freed
/// pages back to the system some time after they were freed (jemalloc's decay, ~1 s in the node
/// example). Waits at least `settle`, then until RSS has not fallen by more than 1% for 1.5 s
/// (at most 15 s).
async fn settled_rss(pid: u32, settle: Duration) -> Result<u64, Error> {
    let read =
        || procfs::rss_bytes(pid).ok_or_else(|| Error::from("cannot read the server's VmRSS"));
    tokio::time::sleep(settle).await;
    let start = Instant::now();
    let mut low = read()?;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(1500) && start.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read()?;
        if (now as f64) < low as f64 * 0.99 {
            since = Instant::now();
        }
        low = low.min(now);
    }
    read()
}

async fn idle(args: &Args, target: Arc<Target>) -> Result<Value, Error> {
    let pid = args.server_pid.ok_or("idle needs --server-pid")?;
    let settle = Duration::from_secs_f64(args.settle);
    let rss0 = procfs::rss_bytes(pid).ok_or("cannot read the server's VmRSS")?;
    let redis_before = match &args.redis {
        Some(addr) => Some(
            procfs::Redis::connect(addr)
                .and_then(|mut r| r.command_calls())
                .map_err(|e| format!("redis {addr}: {e}"))?,
        ),
        None => None,
    };
    let mark = cpu_mark(&Pids::server(pid));
    let t = Instant::now();
    let sessions = open_sessions(&target, args.sessions, args.connections).await?;
    let streams = if args.with_get {
        open_streams(&target, &sessions, args.connections, None).await?
    } else {
        Vec::new()
    };
    let open_s = t.elapsed().as_secs_f64();
    let open_usage = cpu_since(mark, &Pids::server(pid));
    tokio::time::sleep(settle).await;
    let rss1 = procfs::rss_bytes(pid).ok_or("cannot read the server's VmRSS")?;
    let n = sessions.len();
    let nstreams = streams.len();
    let mut close_failed = close_sessions(&target, Arc::new(sessions), args.connections).await;
    for s in &streams {
        s.abort();
    }
    let rss2 = settled_rss(pid, settle).await?;
    // A second round on the same process: if RSS does not grow again, the memory left after
    // the first close is held by the allocator for reuse, not leaked.
    let sessions = open_sessions(&target, args.sessions, args.connections).await?;
    let streams = if args.with_get {
        open_streams(&target, &sessions, args.connections, None).await?
    } else {
        Vec::new()
    };
    tokio::time::sleep(settle).await;
    let rss3 = procfs::rss_bytes(pid).ok_or("cannot read the server's VmRSS")?;
    close_failed += close_sessions(&target, Arc::new(sessions), args.connections).await;
    for s in &streams {
        s.abort();
    }
    let rss4 = settled_rss(pid, settle).await?;
    // Every command the registry sent for the 2 × n session lifecycles, once it is done.
    let redis_per_session = match args.redis.clone() {
        Some(addr) => {
            let calls = tokio::task::spawn_blocking(move || {
                redis_quiet(&addr)?;
                procfs::Redis::connect(&addr)
                    .and_then(|mut r| r.command_calls())
                    .map_err(|e| format!("redis {addr}: {e}"))
            })
            .await
            .map_err(|e| e.to_string())??;
            let calls = calls_since(&redis_before.unwrap_or_default(), &calls);
            let per: BTreeMap<String, f64> = calls
                .iter()
                .map(|(k, v)| (k.clone(), round3(*v as f64 / (2 * n) as f64)))
                .collect();
            Some(per)
        }
        None => None,
    };
    let kib = |b: u64| round3(b as f64 / 1024.0);
    let per = (rss1 as f64 - rss0 as f64) / n as f64;
    Ok(json!({
        "sessions": n,
        "connections": args.connections,
        "with_get": args.with_get,
        "streams": nstreams,
        "rss_before_kib": kib(rss0),
        "rss_open_kib": kib(rss1),
        "rss_closed_kib": kib(rss2),
        "rss_reopen_kib": kib(rss3),
        "rss_final_kib": kib(rss4),
        "bytes_per_session": per.round(),
        "kib_per_session": round3(per / 1024.0),
        "closed_vs_before_pct": round3((rss2 as f64 - rss0 as f64) / rss0 as f64 * 100.0),
        "reopen_growth_kib_per_session": round3((rss3 as f64 - rss1 as f64) / n as f64 / 1024.0),
        "open_s": round3(open_s),
        "server_cpu_us_per_open": open_usage.server_cpu_s.map(|c| round3(c / n as f64 * 1e6)),
        "client_cpu_s": open_usage.client_cpu_s.map(round3),
        "close_errors": close_failed,
        "errors": close_failed,
        "redis_commands_per_session": redis_per_session.as_ref().map(|m| round3(m.values().sum())),
        "redis_commandstats_per_session": redis_per_session,
    }))
}

async fn fanout(args: &Args, target: Arc<Target>) -> Result<Value, Error> {
    let settle = Duration::from_secs_f64(args.settle);
    // The nodes: `--url` first (the trigger's session is there), then every `--node-url`;
    // session i is opened on node i % k, and its GET stream goes to the same node.
    let mut targets = vec![target.clone()];
    for url in &args.node_urls {
        let t = Target::parse(url, false)?;
        wait_for(&t, args.wait).await?;
        targets.push(t);
    }
    let k = targets.len();
    let t = Instant::now();
    let (rtx, mut rrx) = mpsc::unbounded_channel();
    let mut sessions = Vec::with_capacity(k);
    let mut streams = Vec::with_capacity(k);
    for (node, target) in targets.iter().enumerate() {
        let count = (args.sessions + k - 1 - node) / k;
        let s = open_sessions(target, count, args.connections).await?;
        let receipts = Receipts {
            tx: rtx.clone(),
            node,
        };
        streams.push(open_streams(target, &s, args.connections, Some(receipts)).await?);
        sessions.push(s);
    }
    drop(rtx);
    let setup_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    // The registry may still be writing the sessions' records: start once Redis is quiet, so
    // that neither the servers' CPU nor the command counts include them.
    let redis_before = match args.redis.clone() {
        Some(addr) => Some(
            tokio::task::spawn_blocking(move || {
                redis_quiet(&addr)?;
                procfs::Redis::connect(&addr)
                    .and_then(|mut r| r.command_calls())
                    .map_err(|e| format!("redis {addr}: {e}"))
            })
            .await
            .map_err(|e| e.to_string())??,
        ),
        None => None,
    };
    let node_streams: Vec<usize> = streams.iter().map(Vec::len).collect();
    let n: usize = node_streams.iter().sum();
    let mut conn = Conn::new(target.clone());
    let trigger = &sessions[0][0];
    let mut lasts = Samples::default();
    let mut firsts = Samples::default();
    let mut responses = Samples::default();
    let mut all = Samples::default();
    let mut missing = 0usize;
    let mut node_deliveries = vec![0usize; k];
    let mut node_missing = vec![0usize; k];
    let mut errors = 0u64;
    let mut error_sample = None;
    let mut notified = Vec::new();
    let pids = Pids::of(args);
    let mark = cpu_mark(&pids);
    let redis_mark = args.redis_pid.and_then(procfs::cpu_seconds);
    let phase = Instant::now();
    let mut busy = Duration::ZERO;
    for r in 0..args.triggers as u32 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{r},"method":"tools/call","params":{{"name":"broadcast","arguments":{{"message":"{}"}}}}}}"#,
            marker(r)
        );
        let req = client::post(
            &target,
            Some(trigger),
            Bytes::from(body),
            "tools/call",
            Some("broadcast"),
        );
        let t0 = Instant::now();
        let answer = async {
            let res = conn.send(req).await?;
            client::read_answer(res, None).await
        }
        .await;
        let t_resp = Instant::now();
        match answer {
            Ok(a) => {
                responses.push_us((t_resp - t0).as_micros());
                notified.push(recipients(&a.response));
            }
            Err(e) => {
                errors += 1;
                error_sample.get_or_insert(e);
                conn.reset();
                continue;
            }
        }
        let deadline = t0 + Duration::from_secs(10);
        let mut got = 0usize;
        let mut node_got = vec![0usize; k];
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        while got < n {
            match tokio::time::timeout_at(deadline.into(), rrx.recv()).await {
                Ok(Some((idx, node, at))) if idx == r => {
                    got += 1;
                    node_got[node] += 1;
                    all.push_us((at - t0).as_micros());
                    first = Some(first.map_or(at, |f| f.min(at)));
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missing += n - got;
        for (node, got) in node_got.into_iter().enumerate() {
            node_deliveries[node] += got;
            node_missing[node] += node_streams[node] - got;
        }
        if let (Some(f), Some(l)) = (first, last) {
            firsts.push_us((f - t0).as_micros());
            lasts.push_us((l - t0).as_micros());
        }
        busy += t0.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut usage = cpu_since(mark, &pids);
    usage.redis_cpu_s = redis_mark
        .zip(args.redis_pid.and_then(procfs::cpu_seconds))
        .map(|(a, b)| b - a);
    let phase_s = phase.elapsed().as_secs_f64();
    // Redis commands over the broadcasts (one PUBLISH each is the bus's design).
    let redis_calls = match (args.redis.clone(), redis_before) {
        (Some(addr), Some(before)) => Some(
            tokio::task::spawn_blocking(move || {
                procfs::Redis::connect(&addr)
                    .and_then(|mut r| r.command_calls())
                    .map(|after| calls_since(&before, &after))
                    .map_err(|e| format!("redis {addr}: {e}"))
            })
            .await
            .map_err(|e| e.to_string())??,
        ),
        _ => None,
    };
    let last_list: Vec<f64> = lasts.0.iter().map(|v| round3(*v as f64 / 1000.0)).collect();
    let deliveries = all.len() as f64;
    let broadcasts = responses.len();
    let mut close_failed = 0;
    for (target, s) in targets.iter().zip(sessions) {
        close_failed += close_sessions(target, Arc::new(s), args.connections).await;
    }
    for s in streams.iter().flatten() {
        s.abort();
    }
    let mut v = json!({
        "sessions": args.sessions,
        "streams": n,
        "connections": args.connections,
        "triggers": args.triggers,
        "broadcasts": broadcasts,
        "deliveries": deliveries,
        "missing": missing,
        "notified": notified,
        "errors": errors + missing as u64,
        "error_sample": error_sample,
        "setup_s": round3(setup_s),
        "fanout_last_ms": last_list,
        "fanout_last_ms_median": lasts.summary()["p50_ms"],
        "fanout_first_ms_median": firsts.summary()["p50_ms"],
        "trigger_response_ms_median": responses.summary()["p50_ms"],
        "close_errors": close_failed,
    });
    // Latency percentiles over every single delivery (trigger sent → receipt).
    merge(&mut v, all.summary());
    let busy_s = busy.as_secs_f64();
    merge(&mut v, cpu_fields(&usage, deliveries, phase_s));
    merge(
        &mut v,
        json!({"ops": deliveries, "ops_per_s": round3(deliveries / busy_s.max(1e-9))}),
    );
    if k > 1 {
        // Each node's CPU per delivery on that node (`--url`'s first): the figure to compare
        // with one node's `server_cpu_us_per_op`.
        let node_cpu: Vec<Option<f64>> = std::iter::once(usage.server_cpu_s)
            .chain((0..k - 1).map(|i| usage.nodes_cpu_s.get(i).copied().flatten()))
            .collect();
        let per_delivery: Vec<Option<f64>> = node_cpu
            .iter()
            .zip(&node_deliveries)
            .map(|(cpu, &d)| cpu.filter(|_| d > 0).map(|c| round3(c / d as f64 * 1e6)))
            .collect();
        let max = per_delivery
            .iter()
            .copied()
            .collect::<Option<Vec<f64>>>()
            .and_then(|v| v.into_iter().reduce(f64::max));
        merge(
            &mut v,
            json!({
                "nodes": k,
                "node_urls": std::iter::once(&args.url).chain(&args.node_urls).collect::<Vec<_>>(),
                "node_streams": node_streams,
                "node_deliveries": node_deliveries,
                "node_missing": node_missing,
                "node_cpu_s": node_cpu.iter().map(|c| c.map(round3)).collect::<Vec<_>>(),
                "node_cpu_us_per_op": per_delivery,
                "node_cpu_us_per_op_max": max,
            }),
        );
    }
    if let Some(calls) = redis_calls {
        let total: u64 = calls.values().sum();
        let publish = calls.get("publish").copied().unwrap_or(0)
            + calls.get("spublish").copied().unwrap_or(0);
        let per = |c: u64| (broadcasts > 0).then(|| round3(c as f64 / broadcasts as f64));
        merge(
            &mut v,
            json!({
                "redis_commands": total,
                "redis_commandstats": calls,
                "redis_commands_per_notification": per(total),
                "redis_publish_per_notification": per(publish),
                // Every delivery is one event of a session's standalone stream: what the
                // shared event log writes, in batches.
                "redis_commands_per_delivery": (deliveries > 0.0).then(|| round3(total as f64 / deliveries)),
            }),
        );
    }
    Ok(v)
}

/// The number a broadcast answer reports (its text content), if any.
fn recipients(response: &[u8]) -> Option<u64> {
    let key = b"\"text\":\"";
    let at = memchr::memmem::find(response, key)? + key.len();
    let end = at + memchr::memchr(b'"', &response[at..])?;
    std::str::from_utf8(&response[at..end]).ok()?.parse().ok()
}
