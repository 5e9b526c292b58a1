//! `RedisTaskStore`: tasks in Redis (a single server or, with `redis-cluster`, a Redis Cluster).

use std::{fmt, future::Future, sync::Arc, time::Duration};

use ::redis::{
    FromRedisValue, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{TaskRecord, TaskStore, TaskStoreError};
use crate::config::ConfigError;

const DEFAULT_PREFIX: &str = "mcp:task";
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
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

struct Inner {
    conn: Conn,
    prefix: String,
    command_timeout: Duration,
    create: Script,
    replace: Script,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl fmt::Debug for RedisTaskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = match self.inner.conn {
            Conn::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisTaskStore")
            .field("topology", &topology)
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
#[must_use]
#[derive(Debug, Clone)]
pub struct RedisTaskStoreBuilder {
    target: Target,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
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

    fn key(&self, id: &str) -> String {
        format!("{}:{{{id}}}", self.inner.prefix)
    }

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
        let conn = self.inner.conn.clone();
        self.bounded(async move {
            match conn {
                Conn::Single(mut c) => invocation.invoke_async(&mut c).await,
                #[cfg(feature = "redis-cluster")]
                Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
            }
        })
        .await
    }

    async fn query<T: FromRedisValue>(&self, cmd: ::redis::Cmd) -> Result<T, TaskStoreError> {
        let conn = self.inner.conn.clone();
        self.bounded(async move {
            match conn {
                Conn::Single(mut c) => cmd.query_async(&mut c).await,
                #[cfg(feature = "redis-cluster")]
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        })
        .await
    }
}

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
        if self.command_timeout.is_zero() {
            return Err(bad("command_timeout", "must be greater than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(bad("connect_timeout", "must be greater than zero"));
        }
        tokio::runtime::Handle::try_current()
            .map_err(|_| bad("runtime", "must be built inside a Tokio runtime"))?;
        let conn = match self.target {
            Target::Single(url) => {
                let client = ::redis::Client::open(url.as_str())
                    .map_err(|_| bad("url", "is not a valid Redis URL"))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.command_timeout))
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_number_of_retries(6)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(client, config)
                        .map_err(|_| bad("url", "is not a valid Redis URL"))?,
                )
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(bad("nodes", "must name at least one cluster node"));
                }
                let client =
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.command_timeout)
                        .build()
                        .map_err(|_| bad("url", "is not a valid Redis URL"))?;
                let config = ::redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.command_timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
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
