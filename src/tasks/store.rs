//! The `TaskStore` trait, its error, and the in-memory store.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::TaskRecord;
use crate::BoxError;

/// Where tasks live: one record per task, readable by every node that shares the store.
///
/// Every method is one round trip; the [`TaskManager`](super::TaskManager) calls them off the
/// hot path of other requests (task creation, `tasks/*` and the running task's own changes).
/// A record expires [`ttl_ms`](TaskRecord::ttl_ms) after its last write.
///
/// Implementations: [`MemoryTaskStore`] (one process) and `RedisTaskStore` (feature `redis`;
/// a single Redis or, with `redis-cluster`, a Redis Cluster). One shared test suite
/// (`tests/task_store.rs`) runs against each.
///
/// # Example
///
/// A store that forwards to another (e.g. to count calls):
///
/// ```
/// use mcp_affinity::tasks::{MemoryTaskStore, TaskRecord, TaskStore, TaskStoreError};
///
/// #[derive(Debug, Default)]
/// struct Counting { inner: MemoryTaskStore, calls: std::sync::atomic::AtomicUsize }
///
/// impl TaskStore for Counting {
///     async fn create(&self, record: &TaskRecord) -> Result<bool, TaskStoreError> {
///         self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.create(record).await
///     }
///     async fn get(&self, id: &str) -> Result<Option<TaskRecord>, TaskStoreError> {
///         self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.get(id).await
///     }
///     async fn replace(&self, record: &TaskRecord, expected: u64) -> Result<bool, TaskStoreError> {
///         self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.replace(record, expected).await
///     }
///     async fn ping(&self) -> Result<(), TaskStoreError> { self.inner.ping().await }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), TaskStoreError> {
/// let store = Counting::default();
/// assert!(store.create(&TaskRecord::new("t1", "n1", 0, 60_000)).await?);
/// assert!(store.get("t1").await?.is_some());
/// assert_eq!(store.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
/// # Ok(())
/// # }
/// ```
pub trait TaskStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new record unless one with its id exists (`Ok(false)` then). Returns once the
    /// record is durably stored: a `get` from any node then finds it.
    fn create(
        &self,
        record: &TaskRecord,
    ) -> impl Future<Output = Result<bool, TaskStoreError>> + Send;

    /// The record of `id`, if it exists and has not expired.
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<TaskRecord>, TaskStoreError>> + Send;

    /// Replaces the record of `record.task_id` if the stored one is at version `expected`
    /// (`Ok(false)` when it is not, or is gone), and restarts its expiry.
    fn replace(
        &self,
        record: &TaskRecord,
        expected: u64,
    ) -> impl Future<Output = Result<bool, TaskStoreError>> + Send;

    /// Checks that the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), TaskStoreError>> + Send;
}

/// A failed store operation: a timeout, an unreachable store, a backend error or a record
/// that could not be read.
///
/// # Example
///
/// ```
/// use mcp_affinity::tasks::TaskStoreError;
/// let e = TaskStoreError::timeout();
/// assert!(e.is_timeout());
/// assert_eq!(e.to_string(), "task store timed out");
/// ```
#[derive(Debug)]
pub struct TaskStoreError {
    kind: ErrorKind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Timeout,
    Unavailable,
    Backend,
    InvalidRecord,
}

impl TaskStoreError {
    /// The store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(mcp_affinity::tasks::TaskStoreError::timeout().is_timeout());
    /// ```
    pub fn timeout() -> Self {
        Self {
            kind: ErrorKind::Timeout,
            source: None,
        }
    }

    /// The store cannot be reached.
    ///
    /// # Example
    ///
    /// ```
    /// let e = mcp_affinity::tasks::TaskStoreError::unavailable(std::io::Error::other("refused"));
    /// assert!(e.is_unavailable());
    /// ```
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            source: Some(source.into()),
        }
    }

    /// The store answered with an error.
    ///
    /// # Example
    ///
    /// ```
    /// let e = mcp_affinity::tasks::TaskStoreError::backend(std::io::Error::other("OOM"));
    /// assert!(!e.is_timeout() && !e.is_unavailable());
    /// ```
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Backend,
            source: Some(source.into()),
        }
    }

    /// A stored record could not be decoded.
    ///
    /// # Example
    ///
    /// ```
    /// let e = mcp_affinity::tasks::TaskStoreError::invalid_record(std::io::Error::other("bad json"));
    /// assert!(e.is_invalid_record());
    /// ```
    pub fn invalid_record(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::InvalidRecord,
            source: Some(source.into()),
        }
    }

    /// Whether the store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(mcp_affinity::tasks::TaskStoreError::timeout().is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the store could not be reached.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(!mcp_affinity::tasks::TaskStoreError::timeout().is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// Whether a stored record could not be decoded.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(!mcp_affinity::tasks::TaskStoreError::timeout().is_invalid_record());
    /// ```
    pub fn is_invalid_record(&self) -> bool {
        self.kind == ErrorKind::InvalidRecord
    }
}

impl fmt::Display for TaskStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ErrorKind::Timeout => "task store timed out",
            ErrorKind::Unavailable => "task store unavailable",
            ErrorKind::Backend => "task store error",
            ErrorKind::InvalidRecord => "invalid task record",
        })
    }
}

impl std::error::Error for TaskStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The in-memory [`TaskStore`]: one process (the nodes of one process may share it, it is a
/// cheap clone). Records expire on tokio's clock (so `tokio::time::pause` drives it in
/// tests); expired records are dropped when read and swept every 1,024 writes.
///
/// # Example
///
/// ```
/// use mcp_affinity::tasks::{MemoryTaskStore, TaskRecord, TaskStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::tasks::TaskStoreError> {
/// let store = MemoryTaskStore::new();
/// let mut record = TaskRecord::new("t1", "n1", 0, 60_000);
/// assert!(store.create(&record).await?);
/// assert!(!store.create(&record).await?, "ids are unique");
/// record.version = 2;
/// assert!(store.replace(&record, 1).await?);
/// assert!(!store.replace(&record, 1).await?, "compare-and-set on the version");
/// assert_eq!(store.get("t1").await?.map(|r| r.version), Some(2));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTaskStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    records: HashMap<String, (TaskRecord, Instant)>,
    writes: u64,
}

impl MemoryTaskStore {
    /// An empty store.
    ///
    /// # Example
    ///
    /// ```
    /// let store = mcp_affinity::tasks::MemoryTaskStore::new();
    /// assert_eq!(store.len(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of records that have not expired.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskRecord, TaskStore};
    /// let store = MemoryTaskStore::new();
    /// store.create(&TaskRecord::new("t", "n", 0, 1_000)).await.unwrap();
    /// assert_eq!(store.len(), 1);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .records
            .values()
            .filter(|(_, exp)| *exp > now)
            .count()
    }

    /// Whether no record is live.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(mcp_affinity::tasks::MemoryTaskStore::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(inner: &mut MemoryInner, record: &TaskRecord, now: Instant) {
        let expires = now + Duration::from_millis(record.ttl_ms);
        inner
            .records
            .insert(record.task_id.clone(), (record.clone(), expires));
        inner.writes += 1;
        if inner.writes.is_multiple_of(1024) {
            inner.records.retain(|_, (_, exp)| *exp > now);
        }
    }
}

impl TaskStore for MemoryTaskStore {
    async fn create(&self, record: &TaskRecord) -> Result<bool, TaskStoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner
            .records
            .get(&record.task_id)
            .is_some_and(|(_, exp)| *exp > now)
        {
            return Ok(false);
        }
        Self::write(&mut inner, record, now);
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<TaskRecord>, TaskStoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.records.get(id) {
            Some((record, exp)) if *exp > now => Ok(Some(record.clone())),
            Some(_) => {
                inner.records.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn replace(&self, record: &TaskRecord, expected: u64) -> Result<bool, TaskStoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.records.get(&record.task_id) {
            Some((stored, exp)) if *exp > now && stored.version == expected => {
                Self::write(&mut inner, record, now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ping(&self) -> Result<(), TaskStoreError> {
        Ok(())
    }
}
