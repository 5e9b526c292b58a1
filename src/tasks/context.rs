//! What a running task sees of itself: its status, its input requests, its cancellation.

use std::{fmt, sync::Arc};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{TaskManager, TaskStatus, manager::Running};
use crate::{handler::ErrorObject, protocol::codes};

/// The handle a task's work gets: set its status message, ask the client for input and await
/// the answers (`tasks/update`), see a `tasks/cancel`.
///
/// Cancellation is cooperative: after `tasks/cancel` the task is `cancelled` at once (its
/// result, if it still produces one, is dropped), [`cancelled`](Self::cancelled) resolves
/// and [`input`](Self::input) returns [`TaskCancelled`]; work that ignores it is dropped one
/// lease later ([`with_lease`](super::TaskManagerBuilder::with_lease)).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use mcp_affinity::tasks::{MemoryTaskStore, TaskManager};
/// use serde_json::json;
///
/// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
/// let created = tasks.start(None, |task| async move {
///     tokio::select! {
///         () = tokio::time::sleep(Duration::from_secs(60)) => Ok(json!({"content": []})),
///         () = task.cancelled() => Err(task.cancelled_error()),
///     }
/// }).await.unwrap();
/// let id = json!({"taskId": created["taskId"]});
/// tasks.answer("tasks/cancel", &id, None).await.unwrap();
/// let got = tasks.answer("tasks/get", &id, None).await.unwrap();
/// assert_eq!(got["status"], "cancelled");
/// # }
/// ```
#[derive(Clone)]
pub struct TaskContext {
    id: Arc<str>,
    manager: TaskManager,
    running: Arc<Running>,
    cancel: watch::Receiver<bool>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// [`TaskContext::input`] gave up: the task was cancelled (or ended by another node).
/// Converts into a JSON-RPC error with `?` (it is dropped with the task's result anyway).
///
/// # Example
///
/// ```
/// use mcp_affinity::{handler::ErrorObject, tasks::TaskCancelled};
/// let e: ErrorObject = TaskCancelled::new().into();
/// assert_eq!(e.message, "task cancelled");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCancelled {
    _p: (),
}

impl TaskCancelled {
    /// The error value.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::tasks::TaskCancelled::new().to_string(), "task cancelled");
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self { _p: () }
    }
}

impl fmt::Display for TaskCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task cancelled")
    }
}

impl std::error::Error for TaskCancelled {}

impl From<TaskCancelled> for ErrorObject {
    fn from(_: TaskCancelled) -> Self {
        Self::new(codes::INTERNAL_ERROR, "task cancelled")
    }
}

impl TaskContext {
    pub(super) fn new(
        id: String,
        manager: TaskManager,
        running: Arc<Running>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        Self {
            id: id.into(),
            manager,
            running,
            cancel,
        }
    }

    /// The task id (as the client knows it; keep it out of logs).
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskContext;
    /// fn id_len(task: &TaskContext) -> usize { task.id().len() }
    /// # let _ = id_len;
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the client cancelled the task.
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskContext;
    /// fn step(task: &TaskContext) -> bool { !task.is_cancelled() }
    /// # let _ = step;
    /// ```
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once the client cancels the task (at once if it has).
    ///
    /// # Example
    ///
    /// See [`TaskContext`].
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskContext;
    /// async fn wait(task: TaskContext) { task.cancelled().await }
    /// # let _ = wait;
    /// ```
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        // The sender lives as long as the task: an error cannot happen while we hold `self`.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The error to return from work that stopped on cancellation (its value is dropped:
    /// the task is already `cancelled`).
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskContext;
    /// fn stop(task: &TaskContext) -> mcp_affinity::handler::ErrorObject { task.cancelled_error() }
    /// # let _ = stop;
    /// ```
    pub fn cancelled_error(&self) -> ErrorObject {
        TaskCancelled::new().into()
    }

    /// Sets the task's `statusMessage` (stored before this returns; a failed write is retried
    /// with the next change).
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskContext;
    /// async fn report(task: &TaskContext) { task.set_status_message("step 2 of 3").await }
    /// # let _ = report;
    /// ```
    pub async fn set_status_message(&self, message: impl Into<String>) {
        let mut st = self.running.state.lock().await;
        if st.record.status.is_terminal() {
            return;
        }
        st.record.status_message = Some(message.into());
        self.manager.inner.commit(&mut st.record, true).await;
    }

    /// Asks the client for input and waits for every answer: the task turns
    /// `input_required` with `requests` in `inputRequests` (key → `{method, params}`, e.g.
    /// an `elicitation/create`), each key leaves `inputRequests` when `tasks/update` answers
    /// it, and the task is `working` again once all are answered. Returns the answers by key.
    ///
    /// # Errors
    ///
    /// [`TaskCancelled`] when the task is cancelled (or ended by another node) first.
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
    /// let created = tasks.start(None, |task| async move {
    ///     let ask = json!({"method": "elicitation/create", "params": {"message": "Sure?", "requestedSchema": {"type": "object"}}});
    ///     let answers = task.input([("confirm".to_owned(), ask)].into_iter().collect()).await?;
    ///     Ok(json!({"content": [{"type": "text", "text": answers["confirm"]["action"].to_string()}]}))
    /// }).await.unwrap();
    /// let id = created["taskId"].clone();
    /// # loop {
    /// #     let got = tasks.answer("tasks/get", &json!({"taskId": id}), None).await.unwrap();
    /// #     if got["status"] == "input_required" { break; }
    /// #     tokio::task::yield_now().await;
    /// # }
    /// let got = tasks.answer("tasks/get", &json!({"taskId": id}), None).await.unwrap();
    /// assert_eq!(got["inputRequests"]["confirm"]["method"], "elicitation/create");
    /// let update = json!({"taskId": id, "inputResponses": {"confirm": {"action": "accept"}}});
    /// tasks.answer("tasks/update", &update, None).await.unwrap();
    /// # }
    /// ```
    pub async fn input(
        &self,
        requests: Map<String, Value>,
    ) -> Result<Map<String, Value>, TaskCancelled> {
        let keys: Vec<String> = requests.keys().cloned().collect();
        {
            let mut st = self.running.state.lock().await;
            if st.record.status.is_terminal() {
                return Err(TaskCancelled::new());
            }
            for (key, request) in requests {
                st.answers.remove(&key);
                st.record.input_requests.insert(key, request);
            }
            if !st.record.input_requests.is_empty() {
                st.record.status = TaskStatus::InputRequired;
            }
            self.manager.inner.commit(&mut st.record, true).await;
        }
        let mut cancel = self.cancel.clone();
        loop {
            let notified = self.running.answered.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.running.state.lock().await;
                if st.record.status.is_terminal() {
                    return Err(TaskCancelled::new());
                }
                if keys.iter().all(|k| st.answers.contains_key(k)) {
                    let mut out = Map::new();
                    for key in &keys {
                        if let Some(answer) = st.answers.remove(key) {
                            out.insert(key.clone(), answer);
                        }
                    }
                    return Ok(out);
                }
            }
            tokio::select! {
                () = &mut notified => {}
                _ = cancel.wait_for(|c| *c) => return Err(TaskCancelled::new()),
            }
        }
    }

    /// One `elicitation/create` input request (for [`input`](Self::input)): a message and
    /// the schema of the answer.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskContext;
    /// use serde_json::json;
    /// let r = TaskContext::elicitation("Name?", json!({"type": "object"}));
    /// assert_eq!(r["method"], "elicitation/create");
    /// assert_eq!(r["params"]["message"], "Name?");
    /// ```
    pub fn elicitation(message: &str, schema: Value) -> Value {
        json!({
            "method": "elicitation/create",
            "params": { "mode": "form", "message": message, "requestedSchema": schema }
        })
    }
}
