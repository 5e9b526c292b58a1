//! The Tasks extension (SEP-2663) through the transport and `TaskLayer`, on one node with the
//! in-memory store: opt-in, advertisement, `CreateTaskResult`, `tasks/get|update|cancel`,
//! statuses, input requests, cancellation, errors and their HTTP statuses, TTL, a dead node.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    bus::{ClusterBus, MemoryBus},
    handler::{ErrorObject, HandlerRequest, handler_fn},
    tasks::{
        MemoryTaskStore, TaskContext, TaskLayer, TaskManager, TaskRecord, TaskStatus, TaskStore,
        Tasks,
    },
};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

type Req = http::Request<Full<Bytes>>;
const EXT: &str = "io.modelcontextprotocol/tasks";

/// Lets the `gate` tool finish.
#[derive(Clone, Default)]
struct Gate(Arc<Notify>);

/// The handler: `sync` (never a task), `gate` (a task that waits for the test), `ask` (a task
/// that asks for `a` and `b` at once), `boom` (a task that fails), `tool_error` (a task that
/// ends in a tool error), `stubborn` (ignores cancellation), `legacy_probe` (reports
/// whether a `Tasks` handle was present); `server/discover`.
fn handler(
    gate: Gate,
    seen: Arc<Mutex<Vec<bool>>>,
) -> impl Service<
    http::Request<mcp_affinity::transport::RequestBody>,
    Response = Response<mcp_affinity::handler::HandlerBody>,
    Error = Infallible,
    Future = mcp_affinity::handler::HandlerFuture,
> + Clone {
    handler_fn(move |req: HandlerRequest, _cx| {
        let gate = gate.clone();
        let seen = seen.clone();
        async move {
            let tasks = req.parts.extensions.get::<Tasks>().cloned();
            seen.lock().unwrap().push(tasks.is_some());
            match req.method.as_str() {
                "initialize" => Ok(
                    json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}}),
                ),
                "server/discover" => {
                    Ok(json!({"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}))
                }
                "tools/call" => {
                    let name = req.params["name"].as_str().unwrap_or_default().to_owned();
                    if name == "sync" {
                        return Ok(json!({"content": [{"type": "text", "text": "sync"}]}));
                    }
                    let tasks = tasks
                        .filter(Tasks::is_requested)
                        .ok_or_else(TaskManager::required_error)?;
                    tasks
                        .start(move |task: TaskContext| async move {
                            match name.as_str() {
                                "gate" => {
                                    tokio::select! {
                                        () = gate.0.notified() => Ok(json!({"content": [], "gate": "opened"})),
                                        () = task.cancelled() => Err(task.cancelled_error()),
                                    }
                                }
                                "ask" => {
                                    let mut asks = Map::new();
                                    asks.insert("a".into(), TaskContext::elicitation("A?", json!({"type": "object"})));
                                    asks.insert("b".into(), TaskContext::elicitation("B?", json!({"type": "object"})));
                                    let answers = task.input(asks).await?;
                                    Ok(json!({"content": [], "answers": answers}))
                                }
                                "boom" => Err(ErrorObject::new(-32050, "boom").with_data(json!({"x": 1}))),
                                "tool_error" => Ok(json!({"content": [], "isError": true})),
                                "stubborn" => {
                                    gate.0.notified().await;
                                    Ok(json!({"content": []}))
                                }
                                _ => Ok(json!({"content": []})),
                            }
                        })
                        .await
                }
                other => Err(ErrorObject::method_not_found(other)),
            }
        }
    })
}

struct Node {
    svc: tower::util::BoxCloneService<
        Req,
        Response<mcp_affinity::transport::ResponseBody>,
        Infallible,
    >,
    gate: Gate,
    seen: Arc<Mutex<Vec<bool>>>,
    store: MemoryTaskStore,
    manager: TaskManager,
}

fn node_with(manager: impl FnOnce(MemoryTaskStore) -> TaskManager, principal: bool) -> Node {
    let store = MemoryTaskStore::new();
    let tasks = manager(store.clone());
    let gate = Gate::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut layer = TaskLayer::new(tasks.clone());
    if principal {
        layer = layer.with_principal(|parts: &http::request::Parts| {
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    }
    let svc = SseTransportLayer::new().layer(layer.layer(handler(gate.clone(), seen.clone())));
    Node {
        svc: tower::util::BoxCloneService::new(svc),
        gate,
        seen,
        store,
        manager: tasks,
    }
}

/// A node of a cluster in this process: the shared store, its own bus on the shared hub.
fn cluster_node(name: &str, store: &MemoryTaskStore, hub: &MemoryBus) -> Node {
    let bus = ClusterBus::builder(name).with_memory(hub).build().unwrap();
    let name = name.to_owned();
    let shared = store.clone();
    let mut n = node_with(
        move |_own| {
            TaskManager::builder(name, shared)
                .with_bus(&bus)
                .build()
                .unwrap()
        },
        false,
    );
    n.store = store.clone();
    n
}

fn node() -> Node {
    node_with(|s| TaskManager::builder("n1", s).build().unwrap(), false)
}

/// A `2026-07-28` request, with the tasks opt-in when `opt_in`.
fn modern(method: &str, mut params: Value, opt_in: bool, name: Option<&str>) -> Req {
    let caps = if opt_in {
        json!({"extensions": {EXT: {}}})
    } else {
        json!({})
    };
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": caps
    });
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let name = name
        .map(str::to_owned)
        .or_else(|| params["name"].as_str().map(str::to_owned))
        .or_else(|| params["taskId"].as_str().map(str::to_owned));
    let mut b = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = name {
        b = b.header("mcp-name", name);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

impl Node {
    async fn send(&self, req: Req) -> (StatusCode, Value) {
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn call(&self, tool: &str, opt_in: bool) -> (StatusCode, Value) {
        self.send(modern(
            "tools/call",
            json!({"name": tool, "arguments": {}}),
            opt_in,
            None,
        ))
        .await
    }

    async fn task(&self, tool: &str) -> String {
        let (status, v) = self.call(tool, true).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["result"]["resultType"], "task", "{v}");
        v["result"]["taskId"].as_str().unwrap().to_owned()
    }

    async fn tasks(&self, method: &str, params: Value) -> (StatusCode, Value) {
        self.send(modern(method, params, true, None)).await
    }

    async fn get(&self, id: &str) -> Value {
        let (status, v) = self.tasks("tasks/get", json!({"taskId": id})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["result"].clone()
    }

    /// Polls until the task's status is `want` (yielding to the task between polls).
    async fn until(&self, id: &str, want: &str) -> Value {
        for _ in 0..10_000 {
            let got = self.get(id).await;
            if got["status"] == want {
                return got;
            }
            tokio::task::yield_now().await;
        }
        panic!("task never reached {want}: {}", self.get(id).await);
    }
}

#[tokio::test]
async fn discover_advertises_the_extension_under_capabilities_extensions() {
    let n = node();
    let (status, v) = n
        .send(modern("server/discover", json!({}), false, None))
        .await;
    assert_eq!(status, StatusCode::OK);
    let caps = &v["result"]["capabilities"];
    assert_eq!(caps["extensions"][EXT], json!({}), "{v}");
    assert!(caps.get("tasks").is_none());
    assert_eq!(
        caps["tools"],
        json!({}),
        "the handler's capabilities are kept"
    );
}

#[tokio::test]
async fn a_task_is_only_created_with_the_per_request_opt_in() {
    let n = node();
    // Without the opt-in a tool that only runs as a task is refused with -32021 (HTTP 400).
    let (status, v) = n.call("gate", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], -32021);
    assert_eq!(
        v["error"]["data"]["requiredCapabilities"]["extensions"][EXT],
        json!({})
    );
    assert!(n.store.is_empty());
    // A sync tool stays sync with the opt-in.
    let (_, v) = n.call("sync", true).await;
    assert!(v["result"].get("taskId").is_none(), "{v}");
    // With it: a flat CreateTaskResult, stored before it went out.
    let (status, v) = n.call("gate", true).await;
    assert_eq!(status, StatusCode::OK);
    let r = &v["result"];
    assert_eq!(r["resultType"], "task");
    assert_eq!(r["status"], "working");
    let id = r["taskId"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    for key in ["createdAt", "lastUpdatedAt"] {
        assert!(r[key].as_str().unwrap().ends_with('Z'), "{key}: {r}");
    }
    assert_eq!(r["ttlMs"], 300_000);
    assert_eq!(r["pollIntervalMs"], 500);
    for key in [
        "task",
        "result",
        "error",
        "inputRequests",
        "requestState",
        "ttl",
    ] {
        assert!(r.get(key).is_none(), "{key}");
    }
    assert!(n.store.get(id).await.unwrap().is_some());
    let got = n.get(id).await;
    assert_eq!(got["resultType"], "complete");
    assert_eq!(got["taskId"], id);
    assert_eq!(got["status"], "working");
    // Two tasks never share an id.
    let other = n.task("gate").await;
    assert_ne!(other, id);
}

#[tokio::test]
async fn tasks_methods_need_the_opt_in_and_removed_methods_are_not_found() {
    let n = node();
    let id = n.task("gate").await;
    for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
        let params = json!({"taskId": id, "inputResponses": {}});
        let (status, v) = n.send(modern(method, params, false, None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {v}");
        assert_eq!(v["error"]["code"], -32021, "{method}");
    }
    for method in ["tasks/result", "tasks/list"] {
        let (status, v) = n.tasks(method, json!({"taskId": id})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {v}");
        assert_eq!(v["error"]["code"], -32601, "{method}");
    }
    // The handler never saw a `tasks/*` request.
    assert_eq!(n.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_task_ids_get_invalid_params_and_a_routing_mismatch_gets_header_mismatch() {
    let n = node();
    let id = n.task("gate").await;
    let long = "x".repeat(200);
    for bad in [
        json!("nope"),
        json!(""),
        json!(long),
        json!("é"),
        json!(7),
        json!(null),
    ] {
        let name = bad
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "x".into());
        let req = modern("tasks/get", json!({"taskId": bad}), true, Some(&name));
        let (status, v) = n.send(req).await;
        // Non-ASCII and oversized values cannot be an `Mcp-Name` as sent: the transport
        // answers -32020 for those; everything else reaches the manager: -32602.
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        let code = v["error"]["code"].as_i64().unwrap();
        assert!(code == -32602 || code == -32020, "{bad}: {v}");
    }
    let (status, v) = n
        .send(modern(
            "tasks/get",
            json!({"taskId": id}),
            true,
            Some("another-task"),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], -32020, "{v}");
    let (status, v) = n
        .tasks("tasks/update", json!({"taskId": id, "inputResponses": [1]}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32602))
    );
}

#[tokio::test]
async fn input_requests_are_answered_one_key_at_a_time() {
    let n = node();
    let id = n.task("ask").await;
    let got = n.until(&id, "input_required").await;
    let keys: Vec<&String> = got["inputRequests"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(got["inputRequests"]["a"]["method"], "elicitation/create");
    // Unknown keys are ignored; the ack is empty.
    let (status, v) = n
        .tasks(
            "tasks/update",
            json!({"taskId": id, "inputResponses": {"zzz": {"x": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["result"], json!({"resultType": "complete"}));
    assert_eq!(
        n.get(&id).await["inputRequests"].as_object().unwrap().len(),
        2
    );
    // One answered: gone from the very next tasks/get, the other still outstanding.
    n.tasks(
        "tasks/update",
        json!({"taskId": id, "inputResponses": {"a": {"action": "accept"}}}),
    )
    .await;
    let got = n.get(&id).await;
    assert_eq!(got["status"], "input_required");
    let keys: Vec<&String> = got["inputRequests"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["b"]);
    n.tasks(
        "tasks/update",
        json!({"taskId": id, "inputResponses": {"b": {"action": "decline"}}}),
    )
    .await;
    let done = n.until(&id, "completed").await;
    assert_eq!(done["result"]["answers"]["a"]["action"], "accept");
    assert_eq!(done["result"]["answers"]["b"]["action"], "decline");
    assert!(done.get("inputRequests").is_none());
}

#[tokio::test]
async fn oversized_input_responses_are_refused() {
    let n = node_with(
        |s| {
            TaskManager::builder("n1", s)
                .with_max_input_bytes(64)
                .build()
                .unwrap()
        },
        false,
    );
    let id = n.task("ask").await;
    n.until(&id, "input_required").await;
    let big = "y".repeat(100);
    let (status, v) = n
        .tasks(
            "tasks/update",
            json!({"taskId": id, "inputResponses": {"a": {"text": big}}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(
        n.get(&id).await["inputRequests"].as_object().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn cancel_is_cooperative_terminal_and_idempotent() {
    let n = node();
    let id = n.task("gate").await;
    let (status, v) = n.tasks("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["result"], json!({"resultType": "complete"}));
    let got = n.until(&id, "cancelled").await;
    assert!(got.get("result").is_none() && got.get("error").is_none());
    // Terminal: a second cancel is the same ack, an update is ignored, the gate's result
    // never replaces `cancelled`.
    let (_, v) = n.tasks("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(v["result"], json!({"resultType": "complete"}));
    n.gate.0.notify_one();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(n.get(&id).await["status"], "cancelled");
    // Cancelling a waiting task ends its wait too.
    let asking = n.task("ask").await;
    n.until(&asking, "input_required").await;
    n.tasks("tasks/cancel", json!({"taskId": asking})).await;
    let got = n.until(&asking, "cancelled").await;
    assert!(got.get("inputRequests").is_none(), "{got}");
}

#[tokio::test]
async fn results_errors_and_tool_errors_end_in_their_statuses() {
    let n = node();
    let id = n.task("gate").await;
    // A permit: the task may not wait yet.
    n.gate.0.notify_one();
    let got = n.until(&id, "completed").await;
    assert_eq!(got["result"]["gate"], "opened");
    assert!(got.get("error").is_none());

    let id = n.task("tool_error").await;
    let got = n.until(&id, "completed").await;
    assert_eq!(got["result"]["isError"], true);

    let id = n.task("boom").await;
    let got = n.until(&id, "failed").await;
    assert_eq!(
        got["error"],
        json!({"code": -32050, "message": "boom", "data": {"x": 1}})
    );
    assert!(got.get("result").is_none());
    // Terminal updates and cancels are acknowledged and change nothing.
    n.tasks("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(n.get(&id).await["status"], "failed");
}

#[tokio::test]
async fn another_principals_task_is_unknown() {
    let n = node_with(|s| TaskManager::builder("n1", s).build().unwrap(), true);
    let mut req = modern(
        "tools/call",
        json!({"name": "gate", "arguments": {}}),
        true,
        None,
    );
    req.headers_mut().insert("x-user", "ada".parse().unwrap());
    let (_, v) = n.send(req).await;
    let id = v["result"]["taskId"].as_str().unwrap().to_owned();
    let as_user = |user: Option<&str>| {
        let mut req = modern("tasks/get", json!({"taskId": id}), true, None);
        if let Some(user) = user {
            req.headers_mut().insert("x-user", user.parse().unwrap());
        }
        req
    };
    let (status, v) = n.send(as_user(Some("ada"))).await;
    assert_eq!(
        (status, &v["result"]["status"]),
        (StatusCode::OK, &json!("working"))
    );
    for other in [Some("bob"), None] {
        let (status, v) = n.send(as_user(other)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{other:?}");
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["error"]["message"], "unknown or expired task");
    }
    let stored = n.store.get(&id).await.unwrap().unwrap();
    assert_ne!(
        stored.principal.as_deref(),
        Some("ada"),
        "a digest, never the principal"
    );
}

#[tokio::test(start_paused = true)]
async fn a_terminal_task_is_readable_for_its_ttl_then_unknown() {
    let n = node_with(
        |s| {
            TaskManager::builder("n1", s)
                .with_ttl(Duration::from_secs(10))
                .with_lease(Duration::from_secs(3))
                .build()
                .unwrap()
        },
        false,
    );
    let id = n.task("tool_error").await;
    n.until(&id, "completed").await;
    tokio::time::advance(Duration::from_millis(9_900)).await;
    assert_eq!(n.get(&id).await["status"], "completed");
    tokio::time::advance(Duration::from_millis(200)).await;
    let (status, v) = n.tasks("tasks/get", json!({"taskId": id})).await;
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32602))
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_task_outlives_its_ttl_while_its_node_renews_it() {
    let n = node_with(
        |s| {
            TaskManager::builder("n1", s)
                .with_ttl(Duration::from_secs(2))
                .with_lease(Duration::from_secs(1))
                .build()
                .unwrap()
        },
        false,
    );
    let id = n.task("gate").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stored = n
        .store
        .get(&id)
        .await
        .unwrap()
        .expect("renewed, not expired");
    assert_eq!(stored.status, TaskStatus::Working);
    assert!(
        stored.version > 10,
        "renewed every third of the lease: {}",
        stored.version
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_node_stopped_renewing_ends_failed_within_one_lease() {
    let store = MemoryTaskStore::new();
    let lease = Duration::from_secs(2);
    let survivor = TaskManager::builder("n2", store.clone())
        .with_lease(lease)
        .build()
        .unwrap();
    // A record as node n1 wrote it just before it died: working, leased for 2 s.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut record = TaskRecord::new("0123456789abcdef0123456789abcdef", "n1", now, 300_000);
    record.lease_until_ms = now + 2_000;
    assert!(store.create(&record).await.unwrap());
    let id = json!({"taskId": record.task_id});
    let got = survivor.answer("tasks/get", &id, None).await.unwrap();
    assert_eq!(got["status"], "working", "still within its lease");
    tokio::time::advance(lease + Duration::from_millis(50)).await;
    let got = survivor.answer("tasks/get", &id, None).await.unwrap();
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(got["error"]["code"], -32603);
    assert!(got["statusMessage"].as_str().unwrap().contains("stopped"));
    // The dead node's late write cannot undo it (compare-and-set on the version).
    let mut late = record.clone();
    late.status = TaskStatus::Completed;
    late.version = 2;
    assert!(!store.replace(&late, 1).await.unwrap());
    assert_eq!(
        store.get(&record.task_id).await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_cancellation_is_dropped_one_lease_later() {
    let n = node_with(
        |s| {
            TaskManager::builder("n1", s)
                .with_lease(Duration::from_secs(1))
                .build()
                .unwrap()
        },
        false,
    );
    let id = n.task("stubborn").await;
    n.tasks("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(n.get(&id).await["status"], "cancelled");
    assert_eq!(
        n.manager.running(),
        1,
        "still running: cancellation is cooperative"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(n.manager.running(), 0, "dropped one lease after the cancel");
    assert_eq!(n.get(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn legacy_requests_pass_through_without_a_tasks_handle() {
    let n = node();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}});
    let req = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(init.to_string())))
        .unwrap();
    let res = n.svc.clone().oneshot(req).await.unwrap();
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let get = json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"taskId": "x"}});
    let req = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(Full::new(Bytes::from(get.to_string())))
        .unwrap();
    let (_, v) = n.send(req).await;
    // The handler answered (the extension is not defined on the legacy wire).
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert_eq!(*n.seen.lock().unwrap(), [false, false]);
}

#[tokio::test]
async fn a_task_started_on_a_is_polled_on_b_updated_on_c_and_cancelled_on_b() {
    let store = MemoryTaskStore::new();
    let hub = MemoryBus::new();
    let a = cluster_node("a", &store, &hub);
    let b = cluster_node("b", &store, &hub);
    let c = cluster_node("c", &store, &hub);
    let id = a.task("ask").await;
    assert_eq!(store.get(&id).await.unwrap().unwrap().node, "a");
    // Polled on b: read from the store.
    let got = b.until(&id, "input_required").await;
    assert_eq!(got["inputRequests"].as_object().unwrap().len(), 2);
    // Updated on c: delivered to a over the bus, stored by a before c acknowledges, so the
    // very next poll on b sees it.
    let (status, v) = c
        .tasks(
            "tasks/update",
            json!({"taskId": id, "inputResponses": {"a": {"action": "accept"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["result"], json!({"resultType": "complete"}));
    let keys: Vec<String> = b.get(&id).await["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["b"]);
    // Cancelled on b: a's work sees it, and the status is cancelled everywhere.
    let (status, _) = b.tasks("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(status, StatusCode::OK);
    for n in [&a, &b, &c] {
        assert_eq!(n.get(&id).await["status"], "cancelled");
    }
    assert_eq!(
        b.manager.running() + c.manager.running(),
        0,
        "it only ever ran on a"
    );

    // A second task, completed through updates that land on other nodes.
    let id = b.task("ask").await;
    c.until(&id, "input_required").await;
    a.tasks("tasks/update", json!({"taskId": id, "inputResponses": {"a": {"action": "accept"}, "b": {"action": "decline"}}}))
        .await;
    let done = c.until(&id, "completed").await;
    assert_eq!(done["result"]["answers"]["b"]["action"], "decline");
}

#[tokio::test(start_paused = true)]
async fn an_update_for_a_node_that_is_gone_is_an_error_then_the_task_fails() {
    let store = MemoryTaskStore::new();
    let hub = MemoryBus::new();
    let b = cluster_node("b", &store, &hub);
    // A record node "a" (which never answers on the bus) left behind, still leased.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut record = TaskRecord::new("fedcba9876543210fedcba9876543210", "a", now, 300_000);
    record.status = TaskStatus::InputRequired;
    record
        .input_requests
        .insert("k".into(), json!({"method": "elicitation/create"}));
    record.lease_until_ms = now + 10_000;
    assert!(store.create(&record).await.unwrap());
    let update = json!({"taskId": record.task_id, "inputResponses": {"k": {"action": "accept"}}});
    let (status, v) = b.tasks("tasks/update", update.clone()).await;
    assert_eq!(status, StatusCode::OK, "an error in the JSON-RPC body: {v}");
    assert_eq!(v["error"]["code"], -32603);
    // Once its lease ran out, the task is failed; the update is acknowledged (terminal).
    tokio::time::advance(Duration::from_secs(11)).await;
    let (_, v) = b.tasks("tasks/update", update).await;
    assert_eq!(v["result"], json!({"resultType": "complete"}));
    assert_eq!(b.get(&record.task_id).await["status"], "failed");
}

/// A store that counts its reads.
#[derive(Debug, Clone, Default)]
struct CountingStore {
    inner: MemoryTaskStore,
    gets: Arc<std::sync::atomic::AtomicUsize>,
}

impl TaskStore for CountingStore {
    async fn create(
        &self,
        record: &TaskRecord,
    ) -> Result<bool, mcp_affinity::tasks::TaskStoreError> {
        self.inner.create(record).await
    }
    async fn get(
        &self,
        id: &str,
    ) -> Result<Option<TaskRecord>, mcp_affinity::tasks::TaskStoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(id).await
    }
    async fn replace(
        &self,
        record: &TaskRecord,
        expected: u64,
    ) -> Result<bool, mcp_affinity::tasks::TaskStoreError> {
        self.inner.replace(record, expected).await
    }
    async fn ping(&self) -> Result<(), mcp_affinity::tasks::TaskStoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_random_task_ids_costs_the_store_at_most_one_read_each() {
    let store = CountingStore::default();
    let tasks = TaskManager::builder("n1", store.clone()).build().unwrap();
    let gets = || store.gets.load(std::sync::atomic::Ordering::Relaxed);
    // Malformed ids (not the shape the crate mints) never reach the store.
    for n in 0..1_000 {
        let id = json!({"taskId": format!("guess-{n}")});
        let e = tasks.answer("tasks/get", &id, None).await.unwrap_err();
        assert_eq!(e.code, -32602);
    }
    assert_eq!(gets(), 0);
    // Well-formed random ids: one read each, and unknown.
    for n in 0..1_000u32 {
        let id = json!({"taskId": format!("{n:032x}")});
        for method in ["tasks/get", "tasks/cancel"] {
            let e = tasks.answer(method, &id, None).await.unwrap_err();
            assert_eq!(e.code, -32602, "{method}");
        }
    }
    assert_eq!(gets(), 2_000);
    // A task running here is answered from memory: no read at all.
    let created = tasks
        .start(None, |t| async move {
            t.cancelled().await;
            Ok(json!({}))
        })
        .await
        .unwrap();
    let before = gets();
    for _ in 0..100 {
        tasks
            .answer("tasks/get", &json!({"taskId": created["taskId"]}), None)
            .await
            .unwrap();
    }
    assert_eq!(gets(), before);
}

#[tokio::test]
async fn tagged_task_ids_carry_the_node_tag_for_a_balancer() {
    let n = node_with(
        |s| {
            TaskManager::builder("n1", s)
                .with_id_tag("t1")
                .build()
                .unwrap()
        },
        false,
    );
    let id = n.task("tool_error").await;
    let (tag, random) = id.split_once('.').unwrap();
    assert_eq!((tag, random.len()), ("t1", 32));
    assert_eq!(n.until(&id, "completed").await["taskId"], id.as_str());
}

#[tokio::test]
async fn a_task_of_this_nodes_previous_process_is_not_sent_over_the_bus() {
    let store = MemoryTaskStore::new();
    let hub = MemoryBus::new();
    let restarted = cluster_node("a", &store, &hub);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut record = TaskRecord::new("00112233445566778899aabbccddeeff", "a", now, 300_000);
    record.lease_until_ms = now + 60_000;
    assert!(store.create(&record).await.unwrap());
    let (_, v) = restarted
        .tasks("tasks/cancel", json!({"taskId": record.task_id}))
        .await;
    assert_eq!(v["error"]["code"], -32603, "{v}");
    // Not "did not answer": no bus request was made (it would never be answered).
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("restarted"), "{v}");
}
