//! `RedisTaskStore`: tasks in Redis (a single server or, with `redis-cluster`, a Redis Cluster).

use std::{fmt, future::Future, sync::Arc, time::Duration};

use ::redis::{FromRedisValue, RedisError, Script};

use super::{TaskRecord, TaskStore, TaskStoreError};
use crate::config::ConfigError;
use crate::redis_conn::{BuildError, Client, Conn, Target};

/// The default [`with_prefix`](RedisTaskStoreBuilder::with_prefix).
const DEFAULT_PREFIX: &str = "mcp:task";
/// The default [`with_command_timeout`](RedisTaskStoreBuilder::with_command_timeout).
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// The default [`with_connect_timeout`](RedisTaskStoreBuilder::with_connect_timeout).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Stores the record unless the key exists; sets its expiry.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Replaces the record if the stored version is `ARGV[1]`; restarts its expiry.
const REPLACE: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// The [`TaskStore`] in Redis: one hash per task, `<prefix>:{<task id>}` (default prefix
/// `mcp:task`; the braces are a Redis Cluster hash tag), fields `v` (the version) and `r` (the
/// record's JSON), expiring [`ttl_ms`](TaskRecord::ttl_ms) after its last write.
///
/// Every operation is one round trip: `create` and `replace` a short script (a
/// compare-and-set, so the answer says whether this write won), `get` one `HGET`. `create`
/// returns once the Redis master acknowledged the write: a `tasks/get` on any node then finds
/// the task (with replicas, reads go to the master). Redis 6.2 or later (or Valkey).
///
/// A cheap clone (an `Arc`); the connection reconnects by itself and every command is
/// bounded by the command timeout (default 500 ms).
///
/// # Example
///
/// ```
/// use mcp_affinity::tasks::{RedisTaskStore, TaskManager};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisTaskStore::builder("redis://127.0.0.1:6379/").build_lazy()?;
/// let tasks = TaskManager::builder("n1", store).build()?;
/// # let _ = tasks;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTaskStore {
    inner: Arc<Inner>,
}

/// What the clones of a [`RedisTaskStore`] share.
struct Inner {
    /// The connection.
    conn: Conn,
    /// The key prefix.
    prefix: String,
    /// The bound on each command.
    command_timeout: Duration,
    /// [`CREATE`].
    create: Script,
    /// [`REPLACE`].
    replace: Script,
}

impl fmt::Debug for RedisTaskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTaskStore")
            .field("topology", &self.inner.conn.topology())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The builder of a [`RedisTaskStore`]: [`RedisTaskStore::builder`] (one server) or
/// `RedisTaskStore::cluster_builder` (feature `redis-cluster`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::tasks::RedisTaskStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let err = RedisTaskStore::builder("redis://127.0.0.1/")
///     .with_prefix("bad{prefix")
///     .build_lazy()
///     .unwrap_err();
/// assert_eq!(err.field(), "prefix");
/// # }
/// ```
///
/// Its `Debug` shows no URL (they may carry passwords):
///
/// ```
/// let builder = mcp_affinity::tasks::RedisTaskStore::builder("redis://:secret@127.0.0.1/");
/// assert!(!format!("{builder:?}").contains("secret"));
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct RedisTaskStoreBuilder {
    target: Target,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
}

impl RedisTaskStore {
    /// A builder for a store on one Redis server at `url`.
    ///
    /// # Example
    ///
    /// See [`RedisTaskStore`].
    ///
    /// ```
    /// let builder = mcp_affinity::tasks::RedisTaskStore::builder("redis://127.0.0.1/");
    /// # let _ = builder;
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisTaskStoreBuilder {
        RedisTaskStoreBuilder::new(Target::Single(url.into()))
    }

    /// A builder for a store on a Redis Cluster, reached through any of `nodes`.
    ///
    /// # Example
    ///
    /// ```
    /// let builder = mcp_affinity::tasks::RedisTaskStore::cluster_builder(["redis://127.0.0.1:7000/"]);
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(nightly_doc_cfg, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_builder<I, S>(nodes: I) -> RedisTaskStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisTaskStoreBuilder::new(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// The key of task `id`: `<prefix>:{<id>}`.
    fn key(&self, id: &str) -> String {
        format!("{}:{{{id}}}", self.inner.prefix)
    }

    /// `fut` within the command timeout, its error mapped by [`classify`].
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, TaskStoreError> {
        match tokio::time::timeout(self.inner.command_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(TaskStoreError::timeout()),
        }
    }

    /// Runs `script` on `key` within the command timeout (loading it first where missing).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, TaskStoreError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.bounded(self.inner.conn.invoke(&invocation)).await
    }

    /// Sends `cmd` within the command timeout.
    async fn query<T: FromRedisValue>(&self, cmd: ::redis::Cmd) -> Result<T, TaskStoreError> {
        self.bounded(self.inner.conn.query(&cmd)).await
    }
}

/// What `err` means for the task store: a timeout, an unreachable store, or the store's own
/// error.
fn classify(err: RedisError) -> TaskStoreError {
    if err.is_timeout() {
        TaskStoreError::timeout()
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        TaskStoreError::unavailable(err)
    } else {
        TaskStoreError::backend(err)
    }
}

impl RedisTaskStoreBuilder {
    /// A builder for `target` with the default settings.
    fn new(target: Target) -> Self {
        Self {
            target,
            prefix: DEFAULT_PREFIX.into(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The key prefix (default `mcp:task`); keys are `<prefix>:{<task id>}`. No braces.
    ///
    /// # Example
    ///
    /// ```
    /// let b = mcp_affinity::tasks::RedisTaskStore::builder("redis://127.0.0.1/").with_prefix("app:task");
    /// # let _ = b;
    /// ```
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The bound on each command (default 500 ms).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = mcp_affinity::tasks::RedisTaskStore::builder("redis://127.0.0.1/")
    ///     .with_command_timeout(Duration::from_millis(200));
    /// # let _ = b;
    /// ```
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound on each connection attempt (default 1 s).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = mcp_affinity::tasks::RedisTaskStore::builder("redis://127.0.0.1/")
    ///     .with_connect_timeout(Duration::from_millis(300));
    /// # let _ = b;
    /// ```
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Builds the store without contacting Redis: it connects on first use (calls fail fast
    /// until Redis is reachable). Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (component `"tasks"`): an invalid `url`, a `prefix` with braces, a
    /// zero timeout, no cluster node, or no Tokio runtime (`runtime`).
    ///
    /// # Example
    ///
    /// See [`RedisTaskStore`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = mcp_affinity::tasks::RedisTaskStore::builder("not a url").build_lazy().unwrap_err();
    /// assert_eq!(err.field(), "url");
    /// # }
    /// ```
    pub fn build_lazy(self) -> Result<RedisTaskStore, ConfigError> {
        let bad = |field, reason| ConfigError::new("tasks", field, reason);
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(bad("prefix", "must be non-empty, without `{` or `}`"));
        }
        let conn = Client::open(self.target, self.command_timeout, self.connect_timeout)
            .and_then(Client::lazy)
            .map_err(|err| match err {
                BuildError::ZeroCommandTimeout => {
                    bad("command_timeout", "must be greater than zero")
                }
                BuildError::ZeroConnectTimeout => {
                    bad("connect_timeout", "must be greater than zero")
                }
                BuildError::NoRuntime(_) => bad("runtime", "must be built inside a Tokio runtime"),
                BuildError::Url(_) => bad("url", "is not a valid Redis URL"),
                #[cfg(feature = "redis-cluster")]
                BuildError::NoNodes => bad("nodes", "must name at least one cluster node"),
            })?;
        Ok(RedisTaskStore {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                command_timeout: self.command_timeout,
                create: Script::new(CREATE),
                replace: Script::new(REPLACE),
            }),
        })
    }
}

/// `record` as the JSON stored in its hash's `r` field.
fn encode(record: &TaskRecord) -> Result<String, TaskStoreError> {
    serde_json::to_string(record).map_err(TaskStoreError::invalid_record)
}

impl TaskStore for RedisTaskStore {
    async fn create(&self, record: &TaskRecord) -> Result<bool, TaskStoreError> {
        let json = encode(record)?;
        let version = record.version.to_string();
        let ttl = record.ttl_ms.max(1).to_string();
        let key = self.key(&record.task_id);
        let won: i64 = self
            .eval(&self.inner.create, &key, &[&version, &json, &ttl])
            .await?;
        Ok(won == 1)
    }

    async fn get(&self, id: &str) -> Result<Option<TaskRecord>, TaskStoreError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(self.key(id)).arg("r");
        let raw: Option<String> = self.query(cmd).await?;
        match raw {
            None => Ok(None),
            Some(raw) => serde_json::from_str(&raw)
                .map(Some)
                .map_err(TaskStoreError::invalid_record),
        }
    }

    async fn replace(&self, record: &TaskRecord, expected: u64) -> Result<bool, TaskStoreError> {
        let json = encode(record)?;
        let expected = expected.to_string();
        let version = record.version.to_string();
        let ttl = record.ttl_ms.max(1).to_string();
        let key = self.key(&record.task_id);
        let won: i64 = self
            .eval(
                &self.inner.replace,
                &key,
                &[&expected, &version, &json, &ttl],
            )
            .await?;
        Ok(won == 1)
    }

    async fn ping(&self) -> Result<(), TaskStoreError> {
        self.query::<()>(::redis::cmd("PING")).await
    }
}
