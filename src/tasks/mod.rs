//! Tasks (SEP-2663, the `io.modelcontextprotocol/tasks` extension of `2026-07-28`): a
//! `tools/call` answered with a task the client polls, on any node of a cluster.
//!
//! - [`TaskStore`]: where tasks live, one small record per task with a TTL —
//!   [`MemoryTaskStore`] for one process, `RedisTaskStore` (feature `redis`) for a cluster.
//! - [`TaskManager`]: creates tasks (the `CreateTaskResult` goes out only once the store holds
//!   the task), runs them on this node, answers `tasks/get|update|cancel`.
//! - [`TaskLayer`]: between the transport and the handler; answers `tasks/*` itself, adds the
//!   extension to `server/discover`, and hands the handler a [`Tasks`] handle.
//! - [`TaskContext`]: what the task's work gets — status message, input requests answered by
//!   `tasks/update`, cooperative cancellation.
//!
//! # Where it sits, and why
//!
//! ```text
//! request ─► … ─► SseTransportLayer ─► TaskLayer ─► your handler
//!                 headers (Mcp-Name =   tasks/*      tools/call → Tasks::start(work)
//!                 taskId → -32020)     discover
//! ```
//!
//! The transport already validates the modern wire (including `Mcp-Name` = `taskId` on
//! `tasks/*`, `-32020`) and knows each request's era; the handler decides which tool calls
//! become tasks (the spec leaves that to the server). A layer between the two is the one place
//! that sees both the parsed request and the handler's answer without the three layer folders
//! (`affinity/`, `registry/`, `transport/`) importing each other: it only reads the
//! [`RequestContext`](crate::session::RequestContext) and the parsed message the transport puts
//! in the extensions. It serves the `2026-07-28` wire only; legacy requests pass through.
//!
//! # Statuses and errors
//!
//! `working` → (`input_required` ⇄ `working`)* → `completed` | `failed` | `cancelled` (terminal,
//! never left). The work's `Ok(result)` is `completed` (a tool error with `isError: true`
//! too), its `Err(error)` is `failed` with that JSON-RPC error. Unknown, expired, malformed or
//! another principal's task ids get `-32602` (HTTP 400); `tasks/*` without the client's opt-in
//! `-32021`; `tasks/result`, `tasks/list` `-32601` (HTTP 404). Ids are 128 bits from the OS's
//! CSPRNG. A record lives [`with_ttl`](TaskManagerBuilder::with_ttl) after its last change.
//!
//! # A node that dies
//!
//! The running node renews each task's lease (every third of
//! [`with_lease`](TaskManagerBuilder::with_lease), default 10 s). A `tasks/*` request that
//! finds a task which is not terminal and whose lease ran out ends it `failed` ("the node
//! running the task stopped") with a compare-and-set on the record's version, so the dead
//! node's task is `failed` at most one lease after its last renewal — never `working`
//! forever — and a slow node that comes back cannot overwrite that.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mcp_affinity::{
//!     handler::{handler_fn, ErrorObject},
//!     tasks::{MemoryTaskStore, TaskLayer, TaskManager, Tasks},
//!     SseTransportLayer,
//! };
//! use serde_json::json;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(SseTransportLayer::new())
//!     .layer(TaskLayer::new(tasks))
//!     .service(handler_fn(|req, _cx| async move {
//!         match req.method.as_str() {
//!             "tools/call" => {
//!                 let tasks = req.parts.extensions.get::<Tasks>().cloned();
//!                 match tasks.filter(Tasks::is_requested) {
//!                     Some(tasks) => tasks.start(|_task| async {
//!                         Ok(json!({"content": [{"type": "text", "text": "done"}]}))
//!                     }).await,
//!                     None => Ok(json!({"content": [{"type": "text", "text": "done"}]})),
//!                 }
//!             }
//!             other => Err(ErrorObject::method_not_found(other)),
//!         }
//!     }));
//! let meta = json!({
//!     "io.modelcontextprotocol/protocolVersion": "2026-07-28",
//!     "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}
//! });
//! let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
//!     "params": {"name": "slow", "arguments": {}, "_meta": meta}});
//! let req = http::Request::post("/mcp")
//!     .header("host", "localhost")
//!     .header("accept", "application/json, text/event-stream")
//!     .header("content-type", "application/json")
//!     .header("mcp-protocol-version", "2026-07-28")
//!     .header("mcp-method", "tools/call")
//!     .header("mcp-name", "slow")
//!     .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
//!     .unwrap();
//! let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc)
//!     .await
//!     .unwrap()
//!     .call(req)
//!     .await
//!     .unwrap();
//! use http_body_util::BodyExt;
//! let bytes = res.into_body().collect().await.unwrap().to_bytes();
//! let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
//! assert_eq!(v["result"]["resultType"], "task");
//! # }
//! ```

mod context;
mod dyn_store;
mod layer;
mod manager;
mod record;
#[cfg(feature = "redis")]
mod redis;
mod remote;
mod store;

pub use context::{TaskCancelled, TaskContext};
pub use layer::{ResponseBody, ResponseFuture, TaskLayer, TaskService};
pub use manager::{
    DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_RUNNING_TASKS, DEFAULT_POLL_INTERVAL, DEFAULT_TASK_LEASE,
    DEFAULT_TASK_TTL, EXTENSION_ID, TaskManager, TaskManagerBuilder, Tasks,
};
pub use record::{TaskRecord, TaskStatus};
#[cfg(feature = "redis")]
#[cfg_attr(nightly_doc_cfg, doc(cfg(feature = "redis")))]
pub use redis::{RedisTaskStore, RedisTaskStoreBuilder};
pub use store::{MemoryTaskStore, TaskStore, TaskStoreError};
