//! The task manager: creates tasks, runs them, answers `tasks/get|update|cancel`.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{
    TaskContext, TaskRecord, TaskStatus, TaskStore, TaskStoreError,
    dyn_store::DynTaskStore,
    remote::{Remote, Sent},
};
use crate::{
    config::ConfigError, handler::ErrorObject, protocol::codes, session::principal_digest,
};

/// The extension's identifier: the key of the client's opt-in
/// (`_meta["io.modelcontextprotocol/clientCapabilities"].extensions`) and of the server's
/// advertisement (`capabilities.extensions` in `server/discover`).
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::EXTENSION_ID, "io.modelcontextprotocol/tasks");
/// ```
pub const EXTENSION_ID: &str = "io.modelcontextprotocol/tasks";

/// How long a task stays readable after its last change, by default (5 minutes, rmcp's value).
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::DEFAULT_TASK_TTL.as_secs(), 300);
/// ```
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(300);

/// The poll interval suggested to clients (`pollIntervalMs`), by default.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::DEFAULT_POLL_INTERVAL.as_millis(), 500);
/// ```
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a node vouches for a running task between renewals, by default. A task whose
/// node died is answered `failed` by the first `tasks/*` request after its lease ran out: at
/// most this long after the node's last renewal (renewed every third of it).
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::DEFAULT_TASK_LEASE.as_secs(), 10);
/// ```
pub const DEFAULT_TASK_LEASE: Duration = Duration::from_secs(10);

/// The largest `inputResponses` a `tasks/update` may carry (serialized JSON), by default.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::DEFAULT_MAX_INPUT_BYTES, 256 * 1024);
/// ```
pub const DEFAULT_MAX_INPUT_BYTES: usize = 256 * 1024;

/// The most tasks one node runs at once, by default; one more is refused with `-32603`.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::tasks::DEFAULT_MAX_RUNNING_TASKS, 1024);
/// ```
pub const DEFAULT_MAX_RUNNING_TASKS: usize = 1024;

/// Creates tasks, runs them on this node and answers `tasks/get`, `tasks/update` and
/// `tasks/cancel` from the [`TaskStore`]. Cheap to clone (an `Arc`): every clone shares the
/// store and the running tasks.
///
/// Put it in front of the handler with [`TaskLayer`](super::TaskLayer); a handler then finds
/// a [`Tasks`] handle in each modern request's extensions. See the [module docs](super).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
///
/// let tasks = TaskManager::builder("n1", MemoryTaskStore::new())
///     .with_ttl(Duration::from_secs(60))
///     .build()
///     .unwrap();
/// assert_eq!(tasks.node(), "n1");
/// assert_eq!(tasks.running(), 0);
/// ```
#[derive(Clone)]
pub struct TaskManager {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManager")
            .field("node", &self.inner.node)
            .field("ttl", &self.inner.ttl)
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) node: String,
    store: Box<dyn DynTaskStore>,
    ttl: Duration,
    poll: Duration,
    lease: Duration,
    max_input_bytes: usize,
    max_running: usize,
    running: Mutex<HashMap<String, Arc<Running>>>,
    clock: Clock,
    remote: Option<Remote>,
    tag: Option<String>,
}

/// Wall-clock milliseconds that follow tokio's clock (so paused-time tests move them).
#[derive(Debug)]
struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            base_ms,
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// The builder of a [`TaskManager`]; see [`TaskManager::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
///
/// let err = TaskManager::builder("n1", MemoryTaskStore::new())
///     .with_lease(Duration::from_millis(10))
///     .build()
///     .unwrap_err();
/// assert_eq!((err.component(), err.field()), ("tasks", "lease"));
/// ```
#[must_use]
pub struct TaskManagerBuilder {
    node: String,
    store: Box<dyn DynTaskStore>,
    ttl: Duration,
    poll: Duration,
    lease: Duration,
    max_input_bytes: usize,
    max_running: usize,
    remote: Option<Remote>,
    tag: Option<String>,
}

impl fmt::Debug for TaskManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManagerBuilder")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .field("poll", &self.poll)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl TaskManagerBuilder {
    /// How long a task stays readable after its last change (default [`DEFAULT_TASK_TTL`]);
    /// clients see it as `ttlMs`. At least one second.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// assert!(TaskManager::builder("n1", MemoryTaskStore::new()).with_ttl(Duration::ZERO).build().is_err());
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The poll interval suggested to clients, `pollIntervalMs` (default
    /// [`DEFAULT_POLL_INTERVAL`]). At least one millisecond.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new())
    ///     .with_poll_interval(Duration::from_millis(200))
    ///     .build();
    /// assert!(tasks.is_ok());
    /// ```
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// How long this node vouches for a running task between renewals (default
    /// [`DEFAULT_TASK_LEASE`], renewed every third of it): the longest a task whose node died
    /// keeps its last status before a `tasks/*` request on another node ends it `failed`.
    /// At least 300 ms, and less than the TTL.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new())
    ///     .with_lease(Duration::from_secs(3))
    ///     .build();
    /// assert!(tasks.is_ok());
    /// ```
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The largest `inputResponses` a `tasks/update` may carry, in bytes of JSON (default
    /// [`DEFAULT_MAX_INPUT_BYTES`]); a larger one is refused with `-32602`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// assert!(TaskManager::builder("n1", MemoryTaskStore::new()).with_max_input_bytes(0).build().is_err());
    /// ```
    pub fn with_max_input_bytes(mut self, bytes: usize) -> Self {
        self.max_input_bytes = bytes;
        self
    }

    /// The most tasks this node runs at once (default [`DEFAULT_MAX_RUNNING_TASKS`]).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// assert!(TaskManager::builder("n1", MemoryTaskStore::new()).with_max_running(0).build().is_err());
    /// ```
    pub fn with_max_running(mut self, tasks: usize) -> Self {
        self.max_running = tasks;
        self
    }

    /// Reaches the tasks of other nodes over the cluster bus: a `tasks/update` or
    /// `tasks/cancel` that lands on a node which does not run the task is delivered to the
    /// node that does, which applies and stores it before it acknowledges (so the next
    /// `tasks/get`, on any node, sees it). The bus's node name must be this manager's.
    /// Without a bus, such a request is answered `-32603` (one node, or a balancer that
    /// routes `tasks/*` on `Mcp-Name`, needs none).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{bus::ClusterBus, tasks::{MemoryTaskStore, TaskManager}};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new())
    ///     .with_bus(&ClusterBus::local("n1"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = tasks;
    /// let mismatch = TaskManager::builder("n1", MemoryTaskStore::new())
    ///     .with_bus(&ClusterBus::local("n2"))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(mismatch.field(), "bus");
    /// # }
    /// ```
    pub fn with_bus(mut self, bus: &crate::bus::ClusterBus) -> Self {
        self.remote = Some(Remote::new(bus));
        self
    }

    /// Starts every task id with `<tag>.` (then 32 random hex digits), so a balancer that
    /// routes `tasks/*` on `Mcp-Name` (= the task id) can send them to the node running the
    /// task (HAProxy: `use-server n1 if { req.hdr(mcp-name) -m beg n1. }` per node, in the
    /// `/mcp` backend). Optional: without it any node answers any task from the shared store;
    /// with it, polls skip the store read on the running node (it answers from memory). Use an opaque tag (not a hostname): 1 to 32 ASCII letters,
    /// digits, `-` or `_`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).with_id_tag("k7").build().unwrap();
    /// let created = tasks.start(None, |_t| async { Ok(serde_json::json!({})) }).await.unwrap();
    /// assert!(created["taskId"].as_str().unwrap().starts_with("k7."));
    /// assert!(TaskManager::builder("n1", MemoryTaskStore::new()).with_id_tag("a.b").build().is_err());
    /// # }
    /// ```
    pub fn with_id_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Validates the settings and builds the manager.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (component `"tasks"`) naming the first invalid setting: an empty
    /// `node`, a `ttl` under one second, a `poll_interval` of zero, a `lease` under 300 ms
    /// or not under the TTL, a `max_input_bytes` or `max_running` of zero, an invalid
    /// `id_tag`, a `bus` of another node.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let err = TaskManager::builder("", MemoryTaskStore::new()).build().unwrap_err();
    /// assert_eq!(err.field(), "node");
    /// ```
    pub fn build(self) -> Result<TaskManager, ConfigError> {
        let bad = |field, reason| Err(ConfigError::new("tasks", field, reason));
        if self.node.is_empty() || !self.node.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("node", "must be non-empty visible ASCII");
        }
        if self.ttl < Duration::from_secs(1) {
            return bad("ttl", "must be at least 1 second");
        }
        if self.poll.is_zero() {
            return bad("poll_interval", "must be at least 1 millisecond");
        }
        if self.lease < Duration::from_millis(300) || self.lease >= self.ttl {
            return bad("lease", "must be at least 300 ms and less than the ttl");
        }
        if self.max_input_bytes == 0 {
            return bad("max_input_bytes", "must be at least 1");
        }
        if self.max_running == 0 {
            return bad("max_running", "must be at least 1");
        }
        if self.tag.as_deref().is_some_and(|t| !is_tag(t)) {
            return bad(
                "id_tag",
                "must be 1 to 32 ASCII letters, digits, `-` or `_`",
            );
        }
        if self.remote.as_ref().is_some_and(|r| r.node() != self.node) {
            return bad("bus", "must be the bus of the same node");
        }
        let manager = TaskManager {
            inner: Arc::new(Inner {
                node: self.node,
                store: self.store,
                ttl: self.ttl,
                poll: self.poll,
                lease: self.lease,
                max_input_bytes: self.max_input_bytes,
                max_running: self.max_running,
                running: Mutex::new(HashMap::new()),
                clock: Clock::new(),
                remote: self.remote,
                tag: self.tag,
            }),
        };
        if let Some(remote) = &manager.inner.remote {
            remote.serve(&manager);
        }
        Ok(manager)
    }
}

/// One task running on this node.
pub(super) struct Running {
    pub(super) state: tokio::sync::Mutex<State>,
    pub(super) answered: Notify,
    pub(super) cancel: watch::Sender<bool>,
}

pub(super) struct State {
    pub(super) record: TaskRecord,
    /// Answers delivered by `tasks/update`, not yet taken by the task.
    pub(super) answers: Map<String, Value>,
}

/// A change asked for by the client, applied by the node running the task.
#[derive(Debug, Clone)]
pub(super) enum Control {
    /// `tasks/update`: answers, by key (only keys the task asked for).
    Update(Map<String, Value>),
    /// `tasks/cancel`.
    Cancel,
}

/// What a write of a running task's record came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Commit {
    Written,
    /// The stored record is at another version or gone: another node ended the task (its
    /// lease had run out) or it expired.
    Lost,
    /// The store failed; the record in memory is unchanged and the next write retries.
    Failed,
}

impl TaskManager {
    /// A builder for a manager on `node` (its name in the records) over `store`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
    /// # let _ = tasks;
    /// ```
    pub fn builder(node: impl Into<String>, store: impl TaskStore) -> TaskManagerBuilder {
        TaskManagerBuilder {
            node: node.into(),
            store: Box::new(store),
            ttl: DEFAULT_TASK_TTL,
            poll: DEFAULT_POLL_INTERVAL,
            lease: DEFAULT_TASK_LEASE,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_running: DEFAULT_MAX_RUNNING_TASKS,
            remote: None,
            tag: None,
        }
    }

    /// The node name.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// assert_eq!(TaskManager::builder("n7", MemoryTaskStore::new()).build().unwrap().node(), "n7");
    /// ```
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The number of tasks running on this node now.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// assert_eq!(TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap().running(), 0);
    /// ```
    pub fn running(&self) -> usize {
        self.inner.lock_running().len()
    }

    /// Checks that the store answers (for a health check).
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
    /// assert!(tasks.ping().await.is_ok());
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), TaskStoreError> {
        self.inner.store.ping().await
    }

    /// The `server/discover` capability entry: insert it into `capabilities.extensions`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskManager;
    /// use serde_json::json;
    ///
    /// let mut caps = json!({"tools": {}});
    /// TaskManager::advertise(&mut caps);
    /// assert_eq!(caps["extensions"]["io.modelcontextprotocol/tasks"], json!({}));
    /// ```
    pub fn advertise(capabilities: &mut Value) {
        if let Some(obj) = capabilities.as_object_mut() {
            let ext = obj
                .entry("extensions")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(ext) = ext.as_object_mut() {
                ext.insert(EXTENSION_ID.into(), json!({}));
            }
        }
    }

    /// Whether a request's params declare the extension in
    /// `_meta["io.modelcontextprotocol/clientCapabilities"].extensions`: only then may the
    /// server answer it with a task, and only then are `tasks/*` served.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskManager;
    /// use serde_json::json;
    ///
    /// let with = json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}});
    /// assert!(TaskManager::requested(&with));
    /// assert!(!TaskManager::requested(&json!({"_meta": {}})));
    /// ```
    pub fn requested(params: &Value) -> bool {
        params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
            .and_then(|c| c.get("extensions"))
            .and_then(|e| e.get(EXTENSION_ID))
            .is_some_and(|v| !v.is_null())
    }

    /// The `-32021` error for a request that needs the extension and did not declare it
    /// (HTTP 400 under this crate's transport), with
    /// `data.requiredCapabilities.extensions["io.modelcontextprotocol/tasks"]`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskManager;
    /// let e = TaskManager::required_error();
    /// assert_eq!(e.code, -32021);
    /// assert!(e.data.unwrap()["requiredCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object());
    /// ```
    pub fn required_error() -> ErrorObject {
        ErrorObject::new(
            codes::MISSING_REQUIRED_CLIENT_CAPABILITY,
            format!("this request needs the client capability extensions[\"{EXTENSION_ID}\"]"),
        )
        .with_data(json!({ "requiredCapabilities": { "extensions": { EXTENSION_ID: {} } } }))
    }

    /// Starts `work` as a task for a principal (`None`: unauthenticated) and returns its
    /// `CreateTaskResult` once the task is stored (a `tasks/get` on any node sharing the
    /// store then finds it). Handlers normally call [`Tasks::start`], which checks the
    /// client's opt-in first.
    ///
    /// `work` runs in its own tokio task on this node: `Ok(result)` ends the task `completed`
    /// with `result` (a tool error with `isError: true` is such a result), `Err(error)` ends it
    /// `failed` with that JSON-RPC error. A panic in `work` ends it `failed` (`-32603`).
    ///
    /// # Errors
    ///
    /// `-32603` when the store could not store the task or this node already runs
    /// [`with_max_running`](TaskManagerBuilder::with_max_running) tasks.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// use serde_json::json;
    ///
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
    /// let created = tasks.start(None, |_task| async { Ok(json!({"content": []})) }).await.unwrap();
    /// assert_eq!(created["resultType"], "task");
    /// let id = created["taskId"].as_str().unwrap();
    /// assert_eq!(id.len(), 32);
    /// # }
    /// ```
    pub async fn start<F, Fut>(
        &self,
        principal: Option<&str>,
        work: F,
    ) -> Result<Value, ErrorObject>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, ErrorObject>> + Send + 'static,
    {
        let inner = &self.inner;
        if inner.lock_running().len() >= inner.max_running {
            return Err(ErrorObject::internal("too many tasks running on this node"));
        }
        let id = new_task_id(inner.tag.as_deref())
            .ok_or_else(|| ErrorObject::internal("no randomness for a task id"))?;
        let now = inner.clock.now_ms();
        let mut record = TaskRecord::new(id.clone(), inner.node.clone(), now, millis(inner.ttl));
        record.poll_interval_ms = Some(millis(inner.poll).max(1));
        record.principal = principal.map(principal_digest);
        record.lease_until_ms = now.saturating_add(millis(inner.lease));
        match inner.store.create(&record).await {
            Ok(true) => {}
            Ok(false) => return Err(ErrorObject::internal("task id collision")),
            Err(e) => {
                tracing::error!(error = %e, "task not stored");
                return Err(ErrorObject::internal("the task store is unavailable"));
            }
        }
        let created = record.create_result();
        let (cancel, cancel_rx) = watch::channel(false);
        let running = Arc::new(Running {
            state: tokio::sync::Mutex::new(State {
                record,
                answers: Map::new(),
            }),
            answered: Notify::new(),
            cancel,
        });
        inner.lock_running().insert(id.clone(), running.clone());
        let cx = TaskContext::new(id.clone(), self.clone(), running.clone(), cancel_rx.clone());
        let manager = self.clone();
        tokio::spawn(async move {
            let out = manager.drive(&running, cancel_rx, work(cx)).await;
            manager.finish(&running, out).await;
            manager.inner.lock_running().remove(&id);
        });
        Ok(created)
    }

    /// Runs `work` while renewing the task's lease; `None` when the task was lost (another
    /// node ended it) or cancelled and `work` did not stop within a lease.
    async fn drive<Fut>(
        &self,
        running: &Running,
        mut cancel_rx: watch::Receiver<bool>,
        work: Fut,
    ) -> Option<Result<Value, ErrorObject>>
    where
        Fut: Future<Output = Result<Value, ErrorObject>> + Send,
    {
        let lease = self.inner.lease;
        let every = lease / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let work = std::panic::AssertUnwindSafe(work);
        let mut work = std::pin::pin!(futures_catch(work));
        let mut grace = std::pin::pin!(async {
            let _ = cancel_rx.wait_for(|c| *c).await;
            tokio::time::sleep(lease).await;
        });
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tick.tick() => {
                    let mut st = running.state.lock().await;
                    if !st.record.status.is_terminal() && self.inner.commit(&mut st.record, false).await == Commit::Lost {
                        return None;
                    }
                }
                () = &mut grace => return None,
            }
        }
    }

    /// Ends the task with `out` unless it already ended (cancelled, or taken over).
    async fn finish(&self, running: &Running, out: Option<Result<Value, ErrorObject>>) {
        let Some(out) = out else { return };
        let mut st = running.state.lock().await;
        if st.record.status.is_terminal() {
            return;
        }
        match out {
            Ok(result) => {
                st.record.status = TaskStatus::Completed;
                st.record.result = Some(strip_related_task(result));
            }
            Err(error) => {
                st.record.status = TaskStatus::Failed;
                st.record.error = Some(serde_json::to_value(&error).unwrap_or(Value::Null));
            }
        }
        st.record.input_requests.clear();
        // The final write matters most: retried while the lease would keep the task alive.
        let deadline = Instant::now() + self.inner.lease;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.inner.commit(&mut st.record, true).await {
                Commit::Written | Commit::Lost => return,
                Commit::Failed if Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Commit::Failed => return,
            }
        }
    }

    /// Answers `tasks/get`, `tasks/update` or `tasks/cancel` (`params` as sent, `principal`
    /// the request's, if any) with the JSON-RPC result (`resultType` included) or error.
    /// [`TaskLayer`](super::TaskLayer) calls it; other frameworks may too.
    ///
    /// # Errors
    ///
    /// `-32602` for malformed params, an oversized `inputResponses`, or a task that is
    /// unknown, expired or another principal's; `-32601` for any other `tasks/` method;
    /// `-32603` when the store fails.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
    /// use serde_json::json;
    ///
    /// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
    /// let created = tasks.start(None, |_t| async { Ok(json!({"content": []})) }).await.unwrap();
    /// let got = tasks.answer("tasks/get", &json!({"taskId": created["taskId"]}), None).await.unwrap();
    /// assert_eq!(got["taskId"], created["taskId"]);
    /// let unknown = tasks.answer("tasks/get", &json!({"taskId": "nope"}), None).await.unwrap_err();
    /// assert_eq!(unknown.code, -32602);
    /// let removed = tasks.answer("tasks/list", &json!({}), None).await.unwrap_err();
    /// assert_eq!(removed.code, -32601);
    /// # }
    /// ```
    pub async fn answer(
        &self,
        method: &str,
        params: &Value,
        principal: Option<&str>,
    ) -> Result<Value, ErrorObject> {
        let ack = || json!({ "resultType": "complete" });
        match method {
            "tasks/get" | "tasks/update" | "tasks/cancel" => {}
            other => return Err(ErrorObject::method_not_found(other)),
        }
        let id = task_id(params)?;
        let responses = if method == "tasks/update" {
            Some(self.input_responses(params)?)
        } else {
            None
        };
        let record = self.read(id, principal).await?;
        match method {
            "tasks/get" => Ok(record.detailed()),
            _ if record.status.is_terminal() => Ok(ack()),
            "tasks/update" => {
                let responses = responses.unwrap_or_default();
                // Keys never asked for are ignored.
                let wanted: Map<String, Value> = responses
                    .into_iter()
                    .filter(|(k, _)| record.input_requests.contains_key(k))
                    .collect();
                if !wanted.is_empty() {
                    self.control(&record, Control::Update(wanted)).await?;
                }
                Ok(ack())
            }
            _ => {
                self.control(&record, Control::Cancel).await?;
                Ok(ack())
            }
        }
    }

    /// `params.inputResponses`: an object of objects, within the size bound.
    fn input_responses(&self, params: &Value) -> Result<Map<String, Value>, ErrorObject> {
        let raw = params
            .get("inputResponses")
            .and_then(Value::as_object)
            .ok_or_else(|| ErrorObject::invalid_params("inputResponses must be an object"))?;
        let size = serde_json::to_vec(raw).map_or(usize::MAX, |b| b.len());
        if size > self.inner.max_input_bytes {
            return Err(ErrorObject::invalid_params("inputResponses too large"));
        }
        if let Some((key, _)) = raw.iter().find(|(_, v)| !v.is_object()) {
            return Err(ErrorObject::invalid_params(format!(
                "inputResponses.{key} must be an object"
            )));
        }
        Ok(raw.clone())
    }

    /// Applies `control` to the task: here when it runs here, else on its node.
    async fn control(&self, record: &TaskRecord, control: Control) -> Result<(), ErrorObject> {
        if let Some(running) = self.local(&record.task_id) {
            self.apply(&running, control).await;
            return Ok(());
        }
        if record.node == self.inner.node {
            // Recorded as this node's but not running here: a previous process of this node
            // ran it (the bus does not loop back); its lease runs out, then it ends failed.
            return Err(ErrorObject::internal(
                "the task's node restarted; the task ends failed once its lease runs out",
            ));
        }
        let Some(remote) = &self.inner.remote else {
            return Err(ErrorObject::internal(
                "the task runs on another node, which this node cannot reach",
            ));
        };
        match remote.send(&record.node, &record.task_id, control).await? {
            Sent::Applied => Ok(()),
            Sent::NotThere => {
                // It ended meanwhile (then the ack is right), or its node no longer runs it
                // (its lease runs out, then it ends failed): re-read to tell.
                let now = self.inner.store.get(&record.task_id).await;
                match now {
                    Ok(Some(r)) if r.status.is_terminal() => Ok(()),
                    Ok(None) => Err(ErrorObject::invalid_params("unknown or expired task")),
                    _ => Err(ErrorObject::internal(
                        "the task's node does not run it any more; retry",
                    )),
                }
            }
        }
    }

    /// Applies `control` to the task `id` if it runs here; whether it does.
    pub(super) async fn apply_local(&self, id: &str, control: Control) -> bool {
        match self.local(id) {
            Some(running) => {
                self.apply(&running, control).await;
                true
            }
            None => false,
        }
    }

    async fn apply(&self, running: &Running, control: Control) {
        let mut st = running.state.lock().await;
        if st.record.status.is_terminal() {
            return;
        }
        match control {
            Control::Update(responses) => {
                let mut took = false;
                for (key, value) in responses {
                    if st.record.input_requests.remove(&key).is_some() {
                        st.answers.insert(key, value);
                        took = true;
                    }
                }
                if !took {
                    return;
                }
                if st.record.input_requests.is_empty()
                    && st.record.status == TaskStatus::InputRequired
                {
                    st.record.status = TaskStatus::Working;
                }
                self.inner.commit(&mut st.record, true).await;
                drop(st);
                running.answered.notify_waiters();
            }
            Control::Cancel => {
                st.record.status = TaskStatus::Cancelled;
                st.record.status_message = Some("cancelled by the client".into());
                st.record.input_requests.clear();
                self.inner.commit(&mut st.record, true).await;
                drop(st);
                running.cancel.send_replace(true);
                running.answered.notify_waiters();
            }
        }
    }

    fn local(&self, id: &str) -> Option<Arc<Running>> {
        self.inner.lock_running().get(id).cloned()
    }

    /// The task's record as `principal` may see it: from memory when it runs here, else from
    /// the store; a task past its lease that is not terminal ends `failed` first.
    async fn read(&self, id: &str, principal: Option<&str>) -> Result<TaskRecord, ErrorObject> {
        let unknown = || ErrorObject::invalid_params("unknown or expired task");
        let store_down = |e: TaskStoreError| {
            tracing::error!(error = %e, "task store read failed");
            ErrorObject::internal("the task store is unavailable")
        };
        let record = match self.local(id) {
            Some(running) => running.state.lock().await.record.clone(),
            None => {
                let mut record = self
                    .inner
                    .store
                    .get(id)
                    .await
                    .map_err(store_down)?
                    .ok_or_else(unknown)?;
                for _ in 0..3 {
                    if record.status.is_terminal()
                        || record.lease_until_ms >= self.inner.clock.now_ms()
                    {
                        break;
                    }
                    // Its node stopped renewing: end it, unless that node (or another) just
                    // wrote; then read again.
                    let expected = record.version;
                    let mut failed = record.clone();
                    failed.status = TaskStatus::Failed;
                    failed.status_message = Some("the node running the task stopped".into());
                    failed.error = Some(json!({
                        "code": codes::INTERNAL_ERROR,
                        "message": "the node running the task stopped before it finished",
                    }));
                    failed.input_requests.clear();
                    failed.version += 1;
                    failed.updated_at_ms = self.inner.clock.now_ms();
                    if self
                        .inner
                        .store
                        .replace(&failed, expected)
                        .await
                        .map_err(store_down)?
                    {
                        tracing::warn!("task ended failed: its node stopped renewing it");
                        record = failed;
                        break;
                    }
                    record = self
                        .inner
                        .store
                        .get(id)
                        .await
                        .map_err(store_down)?
                        .ok_or_else(unknown)?;
                }
                record
            }
        };
        match (&record.principal, principal) {
            (None, _) => Ok(record),
            (Some(owner), Some(p)) if *owner == principal_digest(p) => Ok(record),
            _ => Err(unknown()),
        }
    }
}

impl Inner {
    pub(super) fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes a running task's record (a compare-and-set on its version), renewing its
    /// lease; `changed`: the status or its data changed (`lastUpdatedAt` moves).
    pub(super) async fn commit(&self, record: &mut TaskRecord, changed: bool) -> Commit {
        let expected = record.version;
        let now = self.clock.now_ms();
        let before = (record.updated_at_ms, record.lease_until_ms);
        record.version += 1;
        if changed {
            record.updated_at_ms = now.max(record.updated_at_ms);
        }
        record.lease_until_ms = now.saturating_add(millis(self.lease));
        match self.store.replace(record, expected).await {
            Ok(true) => Commit::Written,
            Ok(false) => Commit::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "task record not written; retried on the next change");
                record.version = expected;
                (record.updated_at_ms, record.lease_until_ms) = before;
                Commit::Failed
            }
        }
    }
}

/// The per-request tasks handle, in the extensions of every modern request that
/// [`TaskLayer`](super::TaskLayer) passes to the handler: whether this request opted in, and
/// a way to start a task for it.
///
/// # Example
///
/// ```
/// use mcp_affinity::handler::{ErrorObject, HandlerRequest};
/// use mcp_affinity::tasks::Tasks;
/// use serde_json::{json, Value};
///
/// async fn slow_tool(req: &HandlerRequest) -> Result<Value, ErrorObject> {
///     let Some(tasks) = req.parts.extensions.get::<Tasks>().filter(|t| t.is_requested()) else {
///         return Ok(json!({"content": [{"type": "text", "text": "done at once"}]}));
///     };
///     tasks.start(|task| async move {
///         task.set_status_message("halfway").await;
///         Ok(json!({"content": [{"type": "text", "text": "done later"}]}))
///     }).await
/// }
/// # let _ = slow_tool;
/// ```
#[derive(Clone, Debug)]
pub struct Tasks {
    manager: TaskManager,
    requested: bool,
    principal: Option<Arc<str>>,
}

impl Tasks {
    pub(super) fn new(manager: TaskManager, requested: bool, principal: Option<Arc<str>>) -> Self {
        Self {
            manager,
            requested,
            principal,
        }
    }

    /// Whether the request declared the extension (per request, in its `_meta`): without it,
    /// it must not be answered with a task.
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::Tasks;
    /// fn may_run_as_task(tasks: Option<&Tasks>) -> bool {
    ///     tasks.is_some_and(Tasks::is_requested)
    /// }
    /// assert!(!may_run_as_task(None));
    /// ```
    pub fn is_requested(&self) -> bool {
        self.requested
    }

    /// The manager.
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::Tasks;
    /// fn node(tasks: &Tasks) -> &str {
    ///     tasks.manager().node()
    /// }
    /// # let _ = node;
    /// ```
    pub fn manager(&self) -> &TaskManager {
        &self.manager
    }

    /// Starts `work` as a task for this request ([`TaskManager::start`], bound to the
    /// request's principal) and returns its `CreateTaskResult`.
    ///
    /// # Errors
    ///
    /// [`TaskManager::required_error`] (`-32021`) when the request did not opt in, else those
    /// of [`TaskManager::start`].
    ///
    /// # Example
    ///
    /// See [`Tasks`].
    ///
    /// ```
    /// # use mcp_affinity::tasks::Tasks;
    /// async fn run(tasks: &Tasks) -> Result<serde_json::Value, mcp_affinity::handler::ErrorObject> {
    ///     tasks.start(|_task| async { Ok(serde_json::json!({"content": []})) }).await
    /// }
    /// # let _ = run;
    /// ```
    pub async fn start<F, Fut>(&self, work: F) -> Result<Value, ErrorObject>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, ErrorObject>> + Send + 'static,
    {
        if !self.requested {
            return Err(TaskManager::required_error());
        }
        self.manager.start(self.principal.as_deref(), work).await
    }
}

/// `params.taskId`: a string of visible ASCII, within the length bound.
fn task_id(params: &Value) -> Result<&str, ErrorObject> {
    let id = params
        .get("taskId")
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorObject::invalid_params("taskId must be a string"))?;
    // Only the shape this crate mints reaches the store: a flood of malformed ids costs it
    // nothing (and a well-formed one a single read).
    if !is_task_id(id) {
        return Err(ErrorObject::invalid_params("unknown or expired task"));
    }
    Ok(id)
}

/// Whether `id` has the shape of the ids this crate mints: 32 lowercase hex digits, after an
/// optional `<tag>.` ([`with_id_tag`](TaskManagerBuilder::with_id_tag)).
fn is_task_id(id: &str) -> bool {
    let random = match id.rsplit_once('.') {
        Some((tag, random)) => {
            if !is_tag(tag) {
                return false;
            }
            random
        }
        None => id,
    };
    random.len() == 32
        && random
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A node tag in task ids: 1 to 32 ASCII letters, digits, `-` or `_`.
fn is_tag(tag: &str) -> bool {
    (1..=32).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 128 bits from the OS's CSPRNG as 32 lowercase hex digits, after `<tag>.` if given.
fn new_task_id(tag: Option<&str>) -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(match tag {
        Some(tag) => format!("{tag}.{random}"),
        None => random,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The v1 `io.modelcontextprotocol/related-task` `_meta` key has no place on an inlined
/// result (the task id is at the root of `tasks/get`).
fn strip_related_task(mut result: Value) -> Value {
    if let Some(meta) = result.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.remove("io.modelcontextprotocol/related-task");
    }
    result
}

/// `work`'s output, or `-32603` if it panicked.
async fn futures_catch<Fut>(work: std::panic::AssertUnwindSafe<Fut>) -> Result<Value, ErrorObject>
where
    Fut: Future<Output = Result<Value, ErrorObject>>,
{
    CatchUnwind { inner: work }.await
}

pin_project_lite::pin_project! {
    struct CatchUnwind<F> { #[pin] inner: std::panic::AssertUnwindSafe<F> }
}

impl<F> Future for CatchUnwind<F>
where
    F: Future<Output = Result<Value, ErrorObject>>,
{
    type Output = Result<Value, ErrorObject>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("task panicked");
                std::task::Poll::Ready(Err(ErrorObject::internal("the task panicked")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_minted_shape_is_a_task_id() {
        let minted = new_task_id(None).unwrap();
        assert!(is_task_id(&minted));
        let tagged = new_task_id(Some("n-1_x")).unwrap();
        assert!(is_task_id(&tagged) && tagged.starts_with("n-1_x."));
        assert_ne!(new_task_id(None), new_task_id(None));
        for bad in [
            "",
            "nope",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            ".0123456789abcdef0123456789abcdef",
            "a.b.0123456789abcdef0123456789abcdef",
            "{x}.0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_task_id(bad), "{bad}");
        }
    }
}
