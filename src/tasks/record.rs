//! A task's stored state and its wire forms (`CreateTaskResult`, the `tasks/get` answer).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The status of a task (SEP-2663). `completed`, `failed` and `cancelled` are terminal: a task
/// never leaves them.
///
/// # Example
///
/// ```
/// use mcp_affinity::tasks::TaskStatus;
///
/// assert_eq!(TaskStatus::InputRequired.as_str(), "input_required");
/// assert!(TaskStatus::Cancelled.is_terminal());
/// assert!(!TaskStatus::Working.is_terminal());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Running.
    Working,
    /// Waiting for the client's answers to its `inputRequests` (`tasks/update`).
    InputRequired,
    /// Finished with a result (a tool error with `isError: true` included).
    Completed,
    /// Finished with a JSON-RPC error.
    Failed,
    /// Cancelled by the client (`tasks/cancel`).
    Cancelled,
}

impl TaskStatus {
    /// The wire name.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::tasks::TaskStatus::Working.as_str(), "working");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::InputRequired => "input_required",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the status is final (`completed`, `failed`, `cancelled`).
    ///
    /// # Example
    ///
    /// ```
    /// assert!(mcp_affinity::tasks::TaskStatus::Failed.is_terminal());
    /// ```
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`TaskStore`](super::TaskStore) keeps of one task: one small JSON document.
///
/// The node running the task is its only writer while it runs; every write raises
/// [`version`](Self::version) by one and is a compare-and-set on the previous version, so a
/// node that took over a task whose node died (it then ends `failed`) is never overwritten.
///
/// # Example
///
/// ```
/// use mcp_affinity::tasks::{TaskRecord, TaskStatus};
///
/// let record = TaskRecord::new("0123456789abcdef0123456789abcdef", "n1", 1_700_000_000_000, 60_000);
/// assert_eq!(record.status, TaskStatus::Working);
/// assert_eq!(record.version, 1);
/// let json = serde_json::to_string(&record).unwrap();
/// let back: TaskRecord = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, record);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task id (unguessable: 128 bits from the OS's CSPRNG).
    #[serde(rename = "id")]
    pub task_id: String,
    /// The status.
    pub status: TaskStatus,
    /// A human-readable note on the status.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "msg")]
    pub status_message: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    #[serde(rename = "created")]
    pub created_at_ms: u64,
    /// Time of the last change, milliseconds since the Unix epoch.
    #[serde(rename = "updated")]
    pub updated_at_ms: u64,
    /// How long the record stays readable after its last change, in milliseconds.
    #[serde(rename = "ttl")]
    pub ttl_ms: u64,
    /// The poll interval suggested to clients, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "poll")]
    pub poll_interval_ms: Option<u64>,
    /// The outstanding requests to the client (`input_required`), by key.
    #[serde(default, skip_serializing_if = "Map::is_empty", rename = "input")]
    pub input_requests: Map<String, Value>,
    /// The tool's result (`completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The JSON-RPC error (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// The node running the task.
    pub node: String,
    /// The digest of the principal that created the task ([`principal_digest`]), if any:
    /// another principal's `tasks/*` get the answer for an unknown task.
    ///
    /// [`principal_digest`]: crate::session::principal_digest
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "principal")]
    pub principal: Option<String>,
    /// Raised by one on every write.
    #[serde(rename = "v")]
    pub version: u64,
    /// Until when (milliseconds since the Unix epoch) the running node vouches for the task;
    /// renewed while it runs. A task that is not terminal past its lease lost its node.
    #[serde(rename = "lease")]
    pub lease_until_ms: u64,
}

impl TaskRecord {
    /// A new `working` task at version 1, created at `now_ms` on `node`, readable for
    /// `ttl_ms` after its last change; its lease ends at `now_ms` until the manager sets it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskRecord;
    /// let r = TaskRecord::new("t", "n1", 5, 1_000);
    /// assert_eq!((r.created_at_ms, r.updated_at_ms, r.ttl_ms), (5, 5, 1_000));
    /// assert_eq!(r.node, "n1");
    /// ```
    pub fn new(
        task_id: impl Into<String>,
        node: impl Into<String>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            status: TaskStatus::Working,
            status_message: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            ttl_ms,
            poll_interval_ms: None,
            input_requests: Map::new(),
            result: None,
            error: None,
            node: node.into(),
            principal: None,
            version: 1,
            lease_until_ms: now_ms,
        }
    }

    /// The fields every task envelope carries.
    fn envelope(&self, result_type: &str) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("resultType".into(), json!(result_type));
        out.insert("taskId".into(), json!(self.task_id));
        out.insert("status".into(), json!(self.status.as_str()));
        if let Some(msg) = &self.status_message {
            out.insert("statusMessage".into(), json!(msg));
        }
        out.insert("createdAt".into(), json!(iso8601(self.created_at_ms)));
        out.insert("lastUpdatedAt".into(), json!(iso8601(self.updated_at_ms)));
        out.insert("ttlMs".into(), json!(self.ttl_ms));
        if let Some(poll) = self.poll_interval_ms {
            out.insert("pollIntervalMs".into(), json!(poll));
        }
        out
    }

    /// The `CreateTaskResult` for this task: flat, `resultType: "task"`, no `result`, `error`,
    /// `inputRequests` or `requestState`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::TaskRecord;
    /// let v = TaskRecord::new("t1", "n1", 0, 60_000).create_result();
    /// assert_eq!(v["resultType"], "task");
    /// assert_eq!(v["taskId"], "t1");
    /// assert_eq!(v["createdAt"], "1970-01-01T00:00:00.000Z");
    /// assert_eq!(v["ttlMs"], 60_000);
    /// assert!(v.get("result").is_none());
    /// ```
    pub fn create_result(&self) -> Value {
        Value::Object(self.envelope("task"))
    }

    /// The answer to `tasks/get`: the envelope with `resultType: "complete"`, plus
    /// `inputRequests` (`input_required`), `result` (`completed`) or `error` (`failed`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{TaskRecord, TaskStatus};
    /// let mut r = TaskRecord::new("t1", "n1", 0, 60_000);
    /// r.status = TaskStatus::Completed;
    /// r.result = Some(serde_json::json!({"content": []}));
    /// let v = r.detailed();
    /// assert_eq!(v["resultType"], "complete");
    /// assert_eq!(v["status"], "completed");
    /// assert_eq!(v["result"]["content"], serde_json::json!([]));
    /// ```
    pub fn detailed(&self) -> Value {
        let mut out = self.envelope("complete");
        match self.status {
            TaskStatus::InputRequired => {
                out.insert(
                    "inputRequests".into(),
                    Value::Object(self.input_requests.clone()),
                );
            }
            TaskStatus::Completed => {
                if let Some(result) = &self.result {
                    out.insert("result".into(), result.clone());
                }
            }
            TaskStatus::Failed => {
                if let Some(error) = &self.error {
                    out.insert("error".into(), error.clone());
                }
            }
            TaskStatus::Working | TaskStatus::Cancelled => {}
        }
        Value::Object(out)
    }
}

/// Milliseconds since the Unix epoch as an ISO 8601 UTC timestamp with milliseconds.
pub(crate) fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_785_196_800_123), "2026-07-28T00:00:00.123Z");
        assert_eq!(iso8601(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn detailed_carries_only_the_fields_of_its_status() {
        let mut r = TaskRecord::new("t", "n", 0, 10);
        r.input_requests
            .insert("a".into(), json!({"method": "elicitation/create"}));
        r.result = Some(json!({"x": 1}));
        r.error = Some(json!({"code": -1, "message": "m"}));
        let working = r.detailed();
        for key in ["inputRequests", "result", "error", "requestState"] {
            assert!(working.get(key).is_none(), "{key}");
        }
        r.status = TaskStatus::InputRequired;
        assert!(r.detailed().get("inputRequests").is_some());
        assert!(r.detailed().get("result").is_none());
        r.status = TaskStatus::Failed;
        assert_eq!(r.detailed()["error"]["code"], -1);
        assert!(r.detailed().get("result").is_none());
        let created = r.create_result();
        for key in [
            "inputRequests",
            "result",
            "error",
            "requestState",
            "ttl",
            "pollInterval",
        ] {
            assert!(created.get(key).is_none(), "{key}");
        }
    }
}
