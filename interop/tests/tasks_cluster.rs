//! Tasks (SEP-2663) on a real cluster: three `examples/everything.rs` processes sharing one
//! `redis-server` (the task store and the cluster bus), HAProxy in front
//! (`examples/deploy/haproxy-header.cfg`: sticky on `Mcp-Session-Id` only, so modern
//! requests, which carry none, spread round robin over the nodes).
//!
//! - The official conformance suite (`tests/conformance/run.sh`, no expected-failures file)
//!   through the balancer: `--suite all` with no failure, the requirement sets passing, and the
//!   suite's tasks really ran on more than one node.
//! - A task started on n1, polled on n2, updated on n3, cancelled on n2 (requests sent to each
//!   node directly).
//! - A task whose node is SIGKILLed ends `failed` on the other nodes within its lease
//!   (`TaskManager`'s default, 10 s, after the node's last renewal).
//! - With tagged task ids (`everything --tagged-tasks`), the recipe's `use-server` rules send
//!   every `tasks/*` of a task through the balancer to the node running it.
//!
//! Skipped (with `SKIP:`) without HAProxy or the conformance suite, unless
//! `MCP_REQUIRE_CLUSTER=1` / `MCP_REQUIRE_CLIENTS=1`.

#[path = "../../tests/support/redis.rs"]
mod redis_support;

#[path = "support/process.rs"]
#[allow(dead_code)]
mod process_support;

#[path = "support/cluster.rs"]
mod cluster_support;

#[path = "support/report.rs"]
mod report_support;
use report_support::report;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use cluster_support::{Balancer, Cluster, exclusive, manifest_dir, use_example};
use serde_json::{Value, json};

const EXT: &str = "io.modelcontextprotocol/tasks";

/// One modern request to `url` (the tasks opt-in declared): the HTTP status and the body.
async fn modern(url: &str, method: &str, mut params: Value) -> (u16, Value) {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: {}}, "elicitation": {}}
    });
    let name = params
        .get("name")
        .or_else(|| params.get("taskId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .body(body.to_string());
    if let Some(name) = name {
        req = req.header("mcp-name", name);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let v = res.json().await.unwrap_or(Value::Null);
    (status, v)
}

async fn get(url: &str, id: &str) -> Value {
    let (status, v) = modern(url, "tasks/get", json!({"taskId": id})).await;
    assert_eq!(status, 200, "{v}");
    v["result"].clone()
}

/// Polls `tasks/get` on `url` until the status is `want`, at most `within`.
async fn until(url: &str, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let got = get(url, id).await;
        if got["status"] == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "not {want} within {within:?}: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`modern`] through `url`, also giving the `x-mcp-node` of the answer (which node served it).
async fn modern_served(url: &str, method: &str, mut params: Value) -> (Value, String) {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: {}}}
    });
    let name = params
        .get("name")
        .or_else(|| params.get("taskId"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .expect("a name");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let res = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header("mcp-name", name)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200, "{method}");
    let node = res
        .headers()
        .get("x-mcp-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (res.json().await.expect("JSON"), node)
}

#[tokio::test]
async fn tagged_task_ids_route_every_poll_to_the_running_node_through_haproxy() {
    let _guard = exclusive().await;
    use_example("everything");
    let Some(cluster) = Cluster::start(
        "tasks-tagged",
        Balancer::Header,
        &["--state-key", "tasks-cluster-test-key", "--tagged-tasks"],
    )
    .await
    else {
        return;
    };
    let lb = cluster.lb.mcp_url();
    let mut runners = BTreeSet::new();
    let mut polls = 0;
    // Tasks started round robin land on several nodes; each one's requests follow its tag.
    for _ in 0..3 {
        let (v, started_on) = modern_served(
            &lb,
            "tools/call",
            json!({"name": "slow_compute", "arguments": {"seconds": 30, "label": "t"}}),
        )
        .await;
        let id = v["result"]["taskId"].as_str().expect("a task").to_owned();
        assert!(
            id.starts_with(&format!("{started_on}.")),
            "{id} names its node {started_on}"
        );
        runners.insert(started_on.clone());
        for _ in 0..5 {
            let (v, served_by) = modern_served(&lb, "tasks/get", json!({"taskId": id})).await;
            assert_eq!(v["result"]["status"], "working", "{v}");
            assert_eq!(served_by, started_on, "a poll through the balancer");
            polls += 1;
        }
        let (_, served_by) = modern_served(&lb, "tasks/cancel", json!({"taskId": id})).await;
        assert_eq!(served_by, started_on, "the cancel too");
        let (v, _) = modern_served(&lb, "tasks/get", json!({"taskId": id})).await;
        assert_eq!(v["result"]["status"], "cancelled", "{v}");
    }
    assert!(runners.len() >= 2, "tasks ran on {runners:?} only");
    report(&format!(
        "tasks: tagged ids through HAProxy: {polls} polls on 3 tasks over {} nodes, each on the task's node",
        runners.len()
    ));
}

async fn start(test: &str) -> Option<Cluster> {
    use_example("everything");
    // The nodes of one fleet share the key that signs `requestState` (MRTR retries land on
    // any node).
    Cluster::start(
        test,
        Balancer::Header,
        &["--state-key", "tasks-cluster-test-key"],
    )
    .await
}

#[tokio::test]
async fn a_task_started_on_n1_is_polled_on_n2_updated_on_n3_cancelled_on_n2_and_fails_when_its_node_dies()
 {
    let _guard = exclusive().await;
    let Some(mut cluster) = start("tasks-across-nodes").await else {
        return;
    };
    let [n1, n2, n3] = ["n1", "n2", "n3"].map(|n| cluster.node(n).mcp_url());

    let (_, v) = modern(
        &n1,
        "tools/call",
        json!({"name": "confirm_delete", "arguments": {"filename": "f.txt"}}),
    )
    .await;
    let id = v["result"]["taskId"].as_str().expect("a task").to_owned();
    let asked = until(&n2, &id, "input_required", Duration::from_secs(10)).await;
    let key = asked["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let (status, v) = modern(
        &n3,
        "tasks/update",
        json!({"taskId": id, "inputResponses": {key: {"action": "accept", "content": {"confirm": true}}}}),
    )
    .await;
    assert_eq!(
        (status, &v["result"]),
        (200, &json!({"resultType": "complete"})),
        "{v}"
    );
    let done = until(&n2, &id, "completed", Duration::from_secs(10)).await;
    assert_eq!(done["result"]["content"][0]["text"], "f.txt: deleted");

    // How long an update takes to reach the running node and come back acknowledged (the
    // change stored): `tasks/update` on n3 for tasks running on n1, over the Redis bus.
    let mut took = Vec::new();
    for _ in 0..20 {
        let call = json!({"name": "confirm_delete", "arguments": {"filename": "g"}});
        let (_, v) = modern(&n1, "tools/call", call).await;
        let id = v["result"]["taskId"].as_str().expect("a task").to_owned();
        let asked = until(&n1, &id, "input_required", Duration::from_secs(10)).await;
        let key = asked["inputRequests"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        let update = json!({"taskId": id, "inputResponses": {key: {"action": "decline"}}});
        let sent = Instant::now();
        let (status, _) = modern(&n3, "tasks/update", update).await;
        took.push(sent.elapsed());
        assert_eq!(status, 200);
        assert_ne!(
            get(&n2, &id).await["status"],
            "input_required",
            "stored before the ack"
        );
    }
    took.sort();
    report(&format!(
        "tasks: tasks/update on a node that does not run the task, acknowledged (delivered over \
         the bus, stored) in {:.1} ms median, {:.1} ms max of {}",
        took[took.len() / 2].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        took.len()
    ));

    let (_, v) = modern(
        &n1,
        "tools/call",
        json!({"name": "slow_compute", "arguments": {"seconds": 60}}),
    )
    .await;
    let id = v["result"]["taskId"].as_str().expect("a task").to_owned();
    let (status, _) = modern(&n2, "tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(status, 200);
    // n1 stored `cancelled` before n2 acknowledged: every node sees it at once.
    for url in [&n1, &n2, &n3] {
        assert_eq!(get(url, &id).await["status"], "cancelled");
    }

    // A task on n1, then n1 is SIGKILLed: n2 answers `failed` once the lease ran out.
    let (_, v) = modern(
        &n1,
        "tools/call",
        json!({"name": "slow_compute", "arguments": {"seconds": 600}}),
    )
    .await;
    let id = v["result"]["taskId"].as_str().expect("a task").to_owned();
    assert_eq!(get(&n3, &id).await["status"], "working");
    cluster.node_mut("n1").kill9();
    let killed = Instant::now();
    let failed = until(&n2, &id, "failed", Duration::from_secs(15)).await;
    let took = killed.elapsed();
    assert_eq!(failed["error"]["code"], -32603);
    assert!(
        failed["statusMessage"]
            .as_str()
            .unwrap()
            .contains("stopped")
    );
    assert_eq!(
        get(&n3, &id).await["status"],
        "failed",
        "terminal everywhere"
    );
    report(&format!(
        "tasks: a SIGKILLed node's task was answered failed after {:.2} s (lease 10 s)",
        took.as_secs_f64()
    ));
}

/// One run's totals in `run.sh`'s output: `(passed, failed)`.
fn totals(stdout: &str, args: &str) -> Option<(u64, u64)> {
    let header = format!("({args}): exit");
    let mut lines = stdout
        .lines()
        .skip_while(|l| !(l.starts_with("--- ") && l.contains(&header)))
        .skip(1);
    let line = lines.next()?.trim();
    let line = line.strip_prefix("scored:").unwrap_or(line);
    let count = |what: &str| {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(what))
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count("passed")?, count("failed")?))
}

#[tokio::test]
async fn conformance_suite_all_through_three_nodes_behind_haproxy() {
    let suite = manifest_dir().join("tests").join("conformance");
    let installed = suite
        .join("node_modules/@modelcontextprotocol/conformance/package.json")
        .exists();
    if !installed && !std::env::var("MCP_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIP: the conformance suite is not installed (tests/conformance/run.sh --install)"
        );
        return;
    }
    let _guard = exclusive().await;
    let Some(cluster) = start("tasks-conformance").await else {
        return;
    };
    let results: PathBuf = cluster.dir.join("conformance");
    let output = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new("bash")
            .arg(suite.join("run.sh"))
            .arg(cluster.lb.mcp_url())
            .env("MCP_CONFORMANCE_RESULTS", &results)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run.sh within 15 minutes")
    .expect("run tests/conformance/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let context = format!("{stdout}\n{}", cluster.logs());
    let (passed, failed) =
        totals(&stdout, "--suite all").unwrap_or_else(|| panic!("no totals; {context}"));
    assert_eq!(failed, 0, "--suite all through 3 nodes: {context}");
    assert!(passed >= 233, "{passed} passed; {context}");
    for era in ["2025-11-25", "2026-07-28"] {
        let (_, failed) = totals(&stdout, &format!("--requirements {era}"))
            .unwrap_or_else(|| panic!("no totals for {era}; {context}"));
        assert_eq!(failed, 0, "--requirements {era}: {context}");
    }
    report(&format!(
        "tasks: conformance --suite all through 3 nodes behind HAProxy: {passed} passed, {failed} failed"
    ));
    // The suite's tasks ran on more than one node (modern requests spread round robin).
    let keys: Vec<String> = cluster.redis.keys("mcp:task:*");
    assert!(!keys.is_empty(), "no task in Redis");
    let nodes: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| {
            let raw: Option<String> = cluster.redis.cmd(&["HGET", k, "r"]);
            let v: Value = serde_json::from_str(&raw?).ok()?;
            v["node"].as_str().map(str::to_owned)
        })
        .collect();
    assert!(nodes.len() >= 2, "tasks ran on {nodes:?} only");
}
