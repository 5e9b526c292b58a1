//! The `tasks` workload: task creation and `tasks/get` (SEP-2663, the
//! `io.modelcontextprotocol/tasks` extension), on the stateless `2026-07-28` wire.
//!
//! 1. **create**: C connections, closed loop (one request in flight on each), send
//!    `tools/call slow_compute {"seconds": 0}` with the per-request opt-in
//!    (`_meta["io.modelcontextprotocol/clientCapabilities"].extensions
//!    ["io.modelcontextprotocol/tasks"]`). An answer counts when it is a `CreateTaskResult`
//!    (`resultType: "task"`) carrying a `taskId`, which is kept for phase 2. A server answers
//!    only once a `tasks/get` for the task would resolve (for this crate: once the task store
//!    holds it), and the task's work (a zero-second sleep) ends within about a millisecond, so
//!    the phase's CPU and Redis commands cover the whole life of a task: created, stored, run,
//!    completed and its final record written.
//! 2. **get**: with `--redis`, once Redis has been quiet for 300 ms (every task's final record
//!    written), the same C connections poll `tasks/get` (`Mcp-Name` = the `taskId`, the opt-in
//!    in `_meta`) round-robin over every id phase 1 created, closed loop: each answer must be
//!    the task (`resultType: "complete"`) with status `completed`; one still `working` or
//!    `input_required` counts as a poll of a task not yet done (`get_not_completed`), any other
//!    status as an error. `pollIntervalMs` is not honoured: the phase measures what one poll
//!    costs the server at saturation.
//!
//! Each phase has its own window (`--warmup`, then `--duration` measured) and reports, under
//! `create_` and `get_`: ops/s, latency p50/p90/p99/max, server CPU per operation
//! (`--server-pid`), and with `--redis` the Redis commands per operation (`INFO
//! commandstats` at the window's edges, so the commands scripts run are counted; the nodes'
//! background commands, a liveness record every 5 s and the example's change feed, fall into
//! the windows too, and are under 0.001 per operation at these rates).

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use bytes::Bytes;
use memchr::memmem;
use serde_json::{Value, json};

use super::{Args, Error, Tally, Usage, Window, cpu_fields, merge, sample_window, settle};
use crate::{
    client::{self, Conn, Target},
    stats::round3,
};

/// The fixture tool both servers expose: `slow_compute {seconds, label}` (a conformance
/// fixture of the Tasks extension), run as a task when the request opts in.
const TOOL: &str = "slow_compute";

/// `params._meta` of a `2026-07-28` request that opts in to the Tasks extension.
const META: &str = r#""io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}},"io.modelcontextprotocol/clientInfo":{"name":"loadgen","version":"0.0.0"}"#;

fn create_body(id: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{TOOL}","arguments":{{"seconds":0,"label":"bench"}},"_meta":{{{META}}}}}}}"#
    ))
}

fn get_body(id: u64, task: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tasks/get","params":{{"taskId":"{task}","_meta":{{{META}}}}}}}"#
    ))
}

/// The string value of `"key":"…"` in a JSON document written without spaces (both servers
/// write theirs so).
fn string_field<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let at = memmem::find(json, pat.as_bytes())? + pat.len();
    let end = at + memchr::memchr(b'"', &json[at..])?;
    std::str::from_utf8(&json[at..end]).ok()
}

/// The task id of a `CreateTaskResult`.
fn created_id(response: &[u8]) -> Result<String, Error> {
    if string_field(response, "resultType") != Some("task") {
        return Err(format!("not a task: {}", client::snippet(response)));
    }
    string_field(response, "taskId")
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("a task without taskId: {}", client::snippet(response)))
}

/// What a `tasks/get` answer says: `Ok(true)` completed, `Ok(false)` not yet done.
fn polled(response: &[u8], task: &str) -> Result<bool, Error> {
    if string_field(response, "taskId") != Some(task) {
        return Err(format!(
            "another task's answer: {}",
            client::snippet(response)
        ));
    }
    match string_field(response, "status") {
        Some("completed") => Ok(true),
        Some("working" | "input_required") => Ok(false),
        Some(other) => Err(format!("task ended {other}")),
        None => Err(format!("no status: {}", client::snippet(response))),
    }
}

/// One connection's share of phase 1: its tally and every task id it created (in the window
/// or not).
struct Created {
    tally: Tally,
    ids: Vec<String>,
}

/// One connection's share of phase 2.
struct Polled {
    tally: Tally,
    not_completed: u64,
}

async fn create_phase(args: &Args, target: &Arc<Target>, win: Window) -> (Tally, Vec<String>) {
    let mut handles = Vec::new();
    for task in 0..args.connections {
        let target = target.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(target.clone());
            let mut out = Created {
                tally: Tally::default(),
                ids: Vec::new(),
            };
            let mut k: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= win.end {
                    return out;
                }
                let id = ((task as u64) << 32) | k;
                k += 1;
                let req = client::post(&target, None, create_body(id), "tools/call", Some(TOOL));
                let r = tokio::time::timeout(client::REQUEST_TIMEOUT, async {
                    let res = conn.send(req).await?;
                    let answer = client::read_answer(res, None).await?;
                    created_id(&answer.response)
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let t1 = Instant::now();
                let r = match r {
                    Ok(task_id) => {
                        out.ids.push(task_id);
                        Ok(0)
                    }
                    Err(e) => {
                        if !e.starts_with("HTTP ") {
                            conn.reset();
                        }
                        Err(e)
                    }
                };
                out.tally.note(&win, t0, t1, r);
            }
        }));
    }
    let mut tally = Tally::default();
    let mut ids = Vec::new();
    for h in handles {
        match h.await {
            Ok(c) => {
                tally.merge(c.tally);
                ids.extend(c.ids);
            }
            Err(e) => {
                tally.errors += 1;
                tally.error_sample.get_or_insert(format!("task: {e}"));
            }
        }
    }
    (tally, ids)
}

async fn get_phase(
    args: &Args,
    target: &Arc<Target>,
    ids: Arc<Vec<String>>,
    win: Window,
) -> (Tally, u64) {
    let c = args.connections;
    let mut handles = Vec::new();
    for task in 0..c {
        let (target, ids) = (target.clone(), ids.clone());
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(target.clone());
            let mut out = Polled {
                tally: Tally::default(),
                not_completed: 0,
            };
            // Connection `task` polls ids task, task + C, task + 2C, … (then wraps around).
            let mut k: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= win.end {
                    return out;
                }
                let i = (task as u64 + k * c as u64) % ids.len() as u64;
                let task_id = &ids[i as usize];
                let id = ((task as u64) << 32) | k;
                k += 1;
                let req = client::post(
                    &target,
                    None,
                    get_body(id, task_id),
                    "tasks/get",
                    Some(task_id),
                );
                let r = tokio::time::timeout(client::REQUEST_TIMEOUT, async {
                    let res = conn.send(req).await?;
                    let answer = client::read_answer(res, None).await?;
                    polled(&answer.response, task_id)
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let t1 = Instant::now();
                let r = match r {
                    Ok(done) => {
                        if !done && t0 >= win.start && t1 <= win.end {
                            out.not_completed += 1;
                        }
                        Ok(0)
                    }
                    Err(e) => {
                        if !e.starts_with("HTTP ") && !e.starts_with("task ended") {
                            conn.reset();
                        }
                        Err(e)
                    }
                };
                out.tally.note(&win, t0, t1, r);
            }
        }));
    }
    let mut tally = Tally::default();
    let mut not_completed = 0;
    for h in handles {
        match h.await {
            Ok(p) => {
                tally.merge(p.tally);
                not_completed += p.not_completed;
            }
            Err(e) => {
                tally.errors += 1;
                tally.error_sample.get_or_insert(format!("task: {e}"));
            }
        }
    }
    (tally, not_completed)
}

/// One phase's figures, each key prefixed (`create_`, `get_`).
fn phase_fields(prefix: &str, mut tally: Tally, usage: Usage, secs: f64) -> Value {
    let ops = tally.samples.len() as f64;
    let mut v = json!({
        "ops": ops,
        "ops_per_s": round3(ops / secs),
        "errors": tally.errors,
        "error_sample": tally.error_sample,
    });
    merge(&mut v, tally.samples.summary());
    merge(&mut v, cpu_fields(&usage, ops, secs));
    match usage.redis {
        Some(Ok(calls)) => {
            let total: u64 = calls.values().sum();
            let per: BTreeMap<String, f64> = calls
                .iter()
                .map(|(k, n)| (k.clone(), round3(*n as f64 / ops.max(1.0))))
                .collect();
            merge(
                &mut v,
                json!({
                    "redis_commands": total,
                    "redis_commands_per_op": (ops > 0.0).then(|| round3(total as f64 / ops)),
                    "redis_commandstats_per_op": per,
                }),
            );
        }
        Some(Err(e)) => merge(&mut v, json!({ "redis_error": e })),
        None => {}
    }
    let Value::Object(map) = v else {
        return Value::Null;
    };
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect(),
    )
}

pub async fn run(args: &Args, target: Arc<Target>) -> Result<Value, Error> {
    let secs = args.duration;
    let win = Window::new(args);
    let sampler = sample_window(win, args);
    let (create, ids) = create_phase(args, &target, win).await;
    let create_usage = sampler.join().unwrap_or_default();
    if ids.is_empty() {
        return Err(format!(
            "no task created: {}",
            create.error_sample.as_deref().unwrap_or("no answer")
        ));
    }
    // Every task's final record is written once Redis is quiet.
    let settle_s = settle(args).await?;
    let live = ids.len();
    let ids = Arc::new(ids);
    let win = Window::new(args);
    let sampler = sample_window(win, args);
    let (get, not_completed) = get_phase(args, &target, ids, win).await;
    let get_usage = sampler.join().unwrap_or_default();

    let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let other = max(
        cpu_fields(&create_usage, 1.0, secs)["other_cpu_util"].as_f64(),
        cpu_fields(&get_usage, 1.0, secs)["other_cpu_util"].as_f64(),
    );
    let steal = max(
        cpu_fields(&create_usage, 1.0, secs)["steal_util"].as_f64(),
        cpu_fields(&get_usage, 1.0, secs)["steal_util"].as_f64(),
    );
    let errors = create.errors + get.errors;
    let error_sample = create
        .error_sample
        .clone()
        .or_else(|| get.error_sample.clone());
    let ops = (create.samples.len() + get.samples.len()) as f64;
    let mut v = json!({
        "sessions": 0,
        "connections": args.connections,
        "duration_s": secs,
        "tool": TOOL,
        "tasks_created": live,
        "get_not_completed": not_completed,
        "redis_settle_s": settle_s.map(round3),
        "ops": ops,
        "errors": errors,
        "error_sample": error_sample,
        // The larger of the two phases' (the harness repeats a disturbed run).
        "other_cpu_util": other,
        "steal_util": steal,
    });
    merge(&mut v, phase_fields("create_", create, create_usage, secs));
    merge(&mut v, phase_fields("get_", get, get_usage, secs));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_the_opt_in() {
        for body in [create_body(7), get_body(8, "abc")] {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let caps = &v["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"];
            assert!(caps["extensions"]["io.modelcontextprotocol/tasks"].is_object());
        }
        let v: Value = serde_json::from_slice(&get_body(8, "abc")).unwrap();
        assert_eq!(v["params"]["taskId"], "abc");
    }

    #[test]
    fn a_create_task_result_gives_its_id() {
        let r = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"t1","status":"working"}}"#;
        assert_eq!(created_id(r).unwrap(), "t1");
        let plain = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        assert!(created_id(plain).is_err());
    }

    #[test]
    fn polls_tell_completed_from_working_and_failed() {
        let get = |status: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"resultType":"complete","taskId":"t1","status":"{status}"}}}}"#
            )
        };
        assert!(polled(get("completed").as_bytes(), "t1").unwrap());
        assert!(!polled(get("working").as_bytes(), "t1").unwrap());
        assert!(polled(get("failed").as_bytes(), "t1").is_err());
        assert!(polled(get("completed").as_bytes(), "t2").is_err());
    }
}
