//! The Redis registry store (feature `redis`).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Script,
    ServerErrorKind,
};
use tokio::task::JoinSet;

mod batch;
mod commands;

use commands::{OwnedRemoval, Registered};

use super::{
    Claim, Kind, NodeRecord, RecordKey, RegistryStore, SessionRecord, StoreError, StoreWrite,
    ttl_seconds,
};

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect attempts per reconnect round of the connection manager; a failed round is retried
/// by the next command.
const RECONNECT_RETRIES: usize = 6;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// The largest `remove_stale` batch: the index page size and the concurrent calls.
const MAX_BATCH: usize = 1024;
/// The longest TTL sent to Redis (ten years); longer ones are capped.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 60 * 60;

/// The Lua the record scripts share, so a stored value is read one way: `json_of` (a JSON
/// object, or nil for anything else: missing, not JSON, not an object) and `record_of` (a
/// session record: an object naming its node). Only what needs an atomic read-then-write is a
/// script (the compare-and-deletes, the claim's compare-and-set, and listing ids in a node
/// index by the server's clock); registering, refreshing and removing are plain commands.
const LUA_LIB: &str = r"
local function json_of(value)
  if not value then return nil end
  local ok, decoded = pcall(cjson.decode, value)
  if ok and type(decoded) == 'table' then return decoded end
  return nil
end
local function record_of(value)
  local record = json_of(value)
  if record and type(record['n']) == 'string' then return record end
  return nil
end
";

/// A script: [`LUA_LIB`] followed by `body`.
fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_LIB}\n{body}"))
}

/// Single-key scripts (any topology).
///
/// `KEYS[1]` record key; `ARGV[1]` node, `ARGV[2]` incarnation. 1: deleted; 0: another
/// node's or incarnation's record, kept; -1: no record.
static REMOVE_IF_OWNED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local value = redis.call('GET', KEYS[1])
if not value then return -1 end
local record = record_of(value)
if record and record['n'] == ARGV[1] and record['i'] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` record key; `ARGV[1]` node, `ARGV[2]` current incarnation.
/// 1: deleted (the node's, another incarnation); 0: kept (current incarnation);
/// -1: gone or not the node's (drop it from the node's index).
static REMOVE_IF_STALE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local record = record_of(redis.call('GET', KEYS[1]))
if not record or record['n'] ~= ARGV[1] then return -1 end
if record['i'] == ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

/// `KEYS[1]` record key; `ARGV[1]` expected owner node, `ARGV[2]` its incarnation, `ARGV[3]`
/// the claimant's record (JSON), `ARGV[4]` TTL seconds. 1: claimed (the record replaced); 0:
/// no record; otherwise the value found (another owner's record, or something that is no
/// record), left alone.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local record = record_of(value)
if record and record['n'] == ARGV[1] and record['i'] == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  return 1
end
return value
",
    )
});

/// `KEYS[1]` liveness key; `ARGV[1]` incarnation. 1: deleted; 0: no liveness record, or
/// another incarnation's (kept; so is a value that is no liveness record).
static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local live = json_of(redis.call('GET', KEYS[1]))
if live and type(live['s']) == 'string' and live['i'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` liveness key, `KEYS[2]` node index (one node: one slot). 1: the node has no
/// liveness record and lists no session (entries past their expiry are pruned first); 0:
/// otherwise.
static RETIRABLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
return 1
",
    )
});

/// `KEYS[1]` node index; `ARGV` pairs of TTL seconds and session id. Lists each id, scored by
/// the (server) time its record expires, then prunes the index and extends its expiry once.
static INDEX_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- Scores are the unix time (server clock) at which the record expires; entries past it are
-- pruned, and the index lives at least as long as its newest entry.
local now, scored, longest = tonumber(redis.call('TIME')[1]), {}, 0
for a = 1, #ARGV, 2 do
  local ttl = tonumber(ARGV[a])
  scored[#scored + 1] = now + ttl
  scored[#scored + 1] = ARGV[a + 1]
  if ttl > longest then longest = ttl end
end
redis.call('ZADD', KEYS[1], unpack(scored))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if redis.call('TTL', KEYS[1]) < longest then redis.call('EXPIRE', KEYS[1], longest) end
return 1
",
    )
});

/// A [`RegistryStore`] backed by Redis: one server, or a Redis Cluster with feature
/// `redis-cluster`.
///
/// # Keys
///
/// With the default prefix `mcp:session:` (see [`RecordKey`]) the store writes:
///
/// | key | type | content | expiry |
/// |---|---|---|---|
/// | `mcp:session:{<id>}` | string | the [`SessionRecord`] as JSON, `{"n":"<node>","i":"<incarnation>","c":<unix seconds>}` | the session TTL |
/// | `mcp:session:node:{<node>}` | sorted set | ids of the sessions `<node>` registered or claimed, scored by their expiry (unix seconds) | as long as its newest entry |
/// | `mcp:session:live:{<node>}` | string | `<node>`'s liveness, the [`NodeRecord`](crate::registry::NodeRecord) as JSON, `{"s":"serving","i":"<incarnation>","a":"<address>","t":<unix seconds>}` | the liveness TTL (seconds; refreshed by every announce) |
/// | `mcp:session:nodes` | set | the names of the nodes that announced themselves and were not retired since | none (a few names; retired ones leave it) |
///
/// The node index exists so a restarted node can find what its previous process left behind
/// ([`remove_stale`](RegistryStore::remove_stale)) without scanning the keyspace: the store
/// never uses `KEYS` or `SCAN`. The node set is the list of indexes the orphan sweep walks.
/// The single-write methods touch one key per command, so the
/// store works on a Redis Cluster; the braces are the keys' hash tags (a node's index and
/// liveness record share its slot; the node set is one key, touched only in the background). The index is best
/// effort against the server: entries are pruned once expired, and if the server refuses an
/// index write the record's own TTL still removes the record. An index write lost on the way
/// (timed out, the connection dropped) fails its write, which the registry then retries.
///
/// # Commands
///
/// The single-write methods, one key per command: `register` is `SET key json NX GET EX ttl`
/// (and `EXPIRE` when it finds the same record, a replayed write), `refresh` is `EXPIRE` then
/// `GET`, `remove` is `GETDEL`, `remove_if_owned` a small compare-and-delete Lua script
/// (`EVALSHA`); each is followed by its node index update (the index script, or `ZREM`),
/// except `register`, which lists the session in the index first (so a node that dies in
/// between leaves no record its restart cannot find). `lookup` is `GET`, `ping` is `PING`.
///
/// Liveness and adoption, all off the request path except `claim` and `node` (an adopting or
/// forwarding node's one look at the owner): `announce` is `SADD` to the node set and
/// `SET live json EX ttl` (pipelined in one round trip on a single server), `node` is `GET`,
/// `withdraw` a compare-and-delete script on the liveness key, `nodes` is `SMEMBERS`,
/// `retire` a check script on the node's slot, `SREM`, the check again (and `SADD` if the node
/// came back meanwhile). `claim` lists the session in the claimant's index (the index script),
/// then runs a compare-and-set script on the record (`GET`, and `SET … EX` when it wins); a
/// lost claim takes the listing back (`ZREM`) unless the record names the claimant's node.
///
/// [`write_batch`](RegistryStore::write_batch), which the registry's write queues use, sends a
/// single server two pipelined round trips of plain commands, whatever the batch's size. The
/// first lists the sessions it registers in their node's index (one `ZADD` per node), then
/// writes the records in the batch's order: a register is `SET key json NX GET EX ttl`,
/// a remove `GETDEL`, a refresh `EXPIRE` and `GET`, a `remove_if_owned` the compare-and-delete
/// script. The second resets the TTL of records a register found already there (a replayed
/// write) and updates the node indexes: per index, one script call that lists the ids joining
/// it and prunes it, and one `ZREM` of the ids leaving it (512 ids at most per command). The
/// index updates are best effort, as in the single-write methods (a lost round trip fails the
/// batch, which the registry replays write by write); a session registered and
/// removed in the same batch touches no index. Plain commands keep Redis's share of the work
/// small: under session churn, one script doing the whole batch's work cost Redis about twice
/// as much CPU per session. On a cluster `write_batch` falls back to the single-write methods.
///
/// This needs Redis 7.0 or later (`SET` with both `NX` and `GET`), or Valkey. On an older
/// server every batch fails with a syntax error, and the registry's queue then replays its
/// writes one by one through the single-write methods (which need 6.2: `GETDEL`).
///
/// TTLs are whole seconds (see [`RegistryStore`]) and capped at ten years.
///
/// # Timeouts and outages
///
/// Every call is bounded by the command timeout (default 250 ms) and fails with
/// [`StoreError::is_timeout`] when it runs out, whatever the server or network does. A single
/// server is reached through an auto-reconnecting connection: when the connection drops, the
/// failing call reports it ([`StoreError::is_unavailable`]) and a reconnect starts in the
/// background; later calls succeed once Redis is back. [`RedisStore::lazy`] builds a store
/// without contacting Redis at all, so a node can start while Redis is down.
///
/// Clones share one connection.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use mcp_affinity::registry::{RedisStore, RegistryStore, SessionRecord};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .with_prefix("app1:mcp:session:")
///     .with_command_timeout(Duration::from_millis(100))
///     .build_lazy()?;
/// store.register("s1", &SessionRecord::new("node-a", "7f3a"), Duration::from_secs(3600)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    keys: RecordKey,
    command_timeout: Duration,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

/// `$send` with `$c` bound to the connection of `$conn` (a [`Conn`], consumed), whichever kind it
/// is: the two kinds are different types behind the same `ConnectionLike` calls.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $send:expr) => {
        match $conn {
            Conn::Single(mut $c) => $send,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(mut $c) => $send,
        }
    };
}

impl Conn {
    fn topology(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => "cluster",
        }
    }
}

/// Builds a [`RedisStore`]. Created by [`RedisStore::builder`] (and `RedisStore::cluster_builder`
/// with feature `redis-cluster`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::RedisStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
/// // Building lazily contacts no server.
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .with_prefix("staging:mcp:session:")
///     .with_command_timeout(Duration::from_millis(100))
///     .with_connect_timeout(Duration::from_millis(500))
///     .build_lazy()?;
/// assert_eq!(store.keys().session("s1"), "staging:mcp:session:{s1}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Clone)]
enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

enum Client {
    Single(::redis::Client),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<::redis::cluster::ClusterClient>),
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: they are not shown.
        let target = match &self.target {
            Target::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStoreBuilder")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            prefix: RecordKey::DEFAULT_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the key prefix (default `mcp:session:`); see [`RecordKey`] for the keys built from
    /// it. It must not contain `{` or `}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_prefix("tenant-a:mcp:session:");
    /// ```
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the timeout of every store call, including the time to wait for a reconnect
    /// (default 250 ms). Keep it short: the registry must never hold a request up for long.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_command_timeout(Duration::from_millis(50));
    /// ```
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the timeout of each attempt to open a connection (default 1 s).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_connect_timeout(Duration::from_millis(300));
    /// ```
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn prepare(self) -> Result<(Client, RecordKey, Duration, Duration), StoreError> {
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::config(
                "the key prefix must not contain `{` or `}`",
            ));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::config("timeouts must be greater than zero"));
        }
        // The connections spawn background tasks on the current Tokio runtime.
        tokio::runtime::Handle::try_current().map_err(StoreError::config)?;
        let client = match self.target {
            Target::Single(url) => {
                Client::Single(::redis::Client::open(url.as_str()).map_err(StoreError::config)?)
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(StoreError::config("no cluster node given"));
                }
                let client =
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.command_timeout)
                        .build()
                        .map_err(StoreError::config)?;
                Client::Cluster(Box::new(client))
            }
        };
        Ok((
            client,
            RecordKey::new(self.prefix),
            self.command_timeout,
            self.connect_timeout,
        ))
    }

    fn manager_config(
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(command_timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
    }

    #[cfg(feature = "redis-cluster")]
    fn cluster_config(
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> ::redis::cluster::ClusterConfig {
        ::redis::cluster::ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(command_timeout)
    }

    /// Builds the store without contacting Redis; it connects on first use.
    ///
    /// Use this to start a node while Redis may be down: calls fail (fast, with
    /// [`StoreError::is_unavailable`] or [`StoreError::is_timeout`]) until Redis is reachable
    /// and succeed from then on.
    ///
    /// # Errors
    ///
    /// A [`StoreError::is_config`] error if the URL or prefix is invalid, a timeout is zero, or
    /// this is called outside a Tokio runtime.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/").build_lazy()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_lazy(self) -> Result<RedisStore, StoreError> {
        let (client, keys, command_timeout, connect_timeout) = self.prepare()?;
        let conn = match client {
            Client::Single(client) => Conn::Single(
                ConnectionManager::new_lazy_with_config(
                    client,
                    Self::manager_config(command_timeout, connect_timeout),
                )
                .map_err(StoreError::config)?,
            ),
            #[cfg(feature = "redis-cluster")]
            Client::Cluster(client) => {
                Conn::Cluster(client.get_pending_async_connection_with_config(
                    Self::cluster_config(command_timeout, connect_timeout),
                ))
            }
        };
        Ok(RedisStore::from_parts(conn, keys, command_timeout))
    }

    /// Connects, checks that Redis answers, and builds the store.
    ///
    /// # Errors
    ///
    /// A [`StoreError::is_config`] error as for [`build_lazy`](Self::build_lazy), or the error
    /// of the first connection attempt: [`StoreError::is_unavailable`] if Redis refused it,
    /// [`StoreError::is_timeout`] if it did not answer within the connect timeout plus the command
    /// timeout.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/").connect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let (client, keys, command_timeout, connect_timeout) = self.prepare()?;
        let limit = connect_timeout.saturating_add(command_timeout);
        let conn = match client {
            Client::Single(client) => {
                // One direct attempt reports the real cause (refused, timed out, auth) instead of
                // the manager's retry loop running into our deadline.
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout));
                bounded(limit, async {
                    let mut probe = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    ::redis::cmd("PING").query_async::<()>(&mut probe).await
                })
                .await?;
                let manager = ConnectionManager::new_lazy_with_config(
                    client,
                    Self::manager_config(command_timeout, connect_timeout),
                )
                .map_err(StoreError::config)?;
                Conn::Single(manager)
            }
            #[cfg(feature = "redis-cluster")]
            Client::Cluster(client) => Conn::Cluster(
                bounded(
                    limit,
                    client.get_async_connection_with_config(Self::cluster_config(
                        command_timeout,
                        connect_timeout,
                    )),
                )
                .await?,
            ),
        };
        let store = RedisStore::from_parts(conn, keys, command_timeout);
        // Open the store's own connection now, with the connect timeout to spare.
        bounded(limit, store.conn_query::<()>(::redis::cmd("PING"))).await?;
        Ok(store)
    }
}

impl RedisStore {
    fn from_parts(conn: Conn, keys: RecordKey, command_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                keys,
                command_timeout,
            }),
        }
    }

    /// A builder for a store on the single Redis server at `url` (`redis://[user:password@]host:port[/db]`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1:6379/0");
    /// ```
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Single(url.to_owned()))
    }

    /// A builder for a store on a Redis Cluster, given the URLs of some of its nodes.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::cluster_builder(&["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"]);
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub fn cluster_builder(nodes: &[&str]) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Cluster(
            nodes.iter().map(|&node| node.to_owned()).collect(),
        ))
    }

    /// Connects to the Redis server at `url` with the default settings, failing if it does not
    /// answer. See [`RedisStoreBuilder::connect`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// use mcp_affinity::registry::{RedisStore, RegistryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
    /// store.ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A store for the Redis server at `url` with the default settings, connecting on first use.
    /// See [`RedisStoreBuilder::build_lazy`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::build_lazy`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// // Nothing listens on port 1: building still succeeds.
    /// let store = RedisStore::lazy("redis://127.0.0.1:1/")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn lazy(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).build_lazy()
    }

    /// Connects to a Redis Cluster with the default settings, failing if it does not answer.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::connect_cluster(&["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        Self::cluster_builder(nodes).connect().await
    }

    /// A store for a Redis Cluster with the default settings, connecting in the background.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::build_lazy`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::lazy_cluster(&["redis://127.0.0.1:1/"])?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub fn lazy_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        Self::cluster_builder(nodes).build_lazy()
    }

    /// The keys this store writes.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::lazy("redis://127.0.0.1:6379/")?;
    /// assert_eq!(store.keys().session("s1"), "mcp:session:{s1}");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn keys(&self) -> &RecordKey {
        &self.inner.keys
    }

    /// The timeout of every call.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::lazy("redis://127.0.0.1:6379/")?;
    /// assert_eq!(store.command_timeout(), Duration::from_millis(250));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// Sends `cmd` without a deadline of its own.
    async fn conn_query<T: FromRedisValue>(&self, cmd: Cmd) -> RedisResult<T> {
        on_conn!(self.inner.conn.clone(), |conn| cmd
            .query_async(&mut conn)
            .await)
    }

    /// Sends `cmd` within the command timeout.
    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        bounded(self.inner.command_timeout, self.conn_query(cmd)).await
    }

    /// Sends `pipe` (commands on one key: one slot on a cluster) in one round trip, within the
    /// command timeout.
    async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
    ) -> Result<T, StoreError> {
        let sent = async {
            on_conn!(self.inner.conn.clone(), |conn| pipe
                .query_async(&mut conn)
                .await)
        };
        bounded(self.inner.command_timeout, sent).await
    }

    /// Runs `script` on `key` within the command timeout (loading it first where missing).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let conn = self.inner.conn.clone();
        bounded(self.inner.command_timeout, async move {
            on_conn!(conn, |conn| invocation.invoke_async(&mut conn).await)
        })
        .await
    }

    /// Runs `script` on `keys` (all in one slot) within the command timeout.
    async fn eval_keys<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let conn = self.inner.conn.clone();
        bounded(self.inner.command_timeout, async move {
            on_conn!(conn, |conn| invocation.invoke_async(&mut conn).await)
        })
        .await
    }

    /// Whether `node` has no liveness record and lists no session ([`RETIRABLE`]).
    async fn retirable(&self, node: &str) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let (live, index) = (keys.liveness(node), keys.node_index(node));
        Ok(self
            .eval_keys::<i64>(&RETIRABLE, &[&live, &index], &[])
            .await?
            == 1)
    }

    /// A command on the node set: `name <node set> node`.
    fn node_set_command(&self, name: &str, node: &str) -> Cmd {
        let mut cmd = ::redis::cmd(name);
        cmd.arg(self.inner.keys.node_set()).arg(node);
        cmd
    }

    /// Adds `id` to `node`'s index (see [`index_outcome`]).
    async fn index_add(&self, node: &str, id: &str, ttl: u64) -> Result<(), StoreError> {
        let index = self.inner.keys.node_index(node);
        let sent = self
            .eval::<i64>(&INDEX_PUT, &index, &[&ttl.to_string(), id])
            .await;
        index_outcome(node, sent.map(drop))
    }

    /// Removes `id` from `node`'s index (see [`index_outcome`]).
    async fn index_remove(&self, node: &str, id: &str) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(self.inner.keys.node_index(node)).arg(id);
        let sent = self.query::<i64>(cmd).await;
        index_outcome(node, sent.map(drop))
    }
}

/// What a node index update's failure does to its write. The index is best effort against the
/// server: an error it answers (say, the index key holds another type) is logged and otherwise
/// ignored, and the record's own TTL still applies. An update lost on the way (timed out, the
/// connection dropped) may or may not have run: the write fails, and the registry retries it,
/// which puts the index entry in step again.
fn index_outcome(node: &str, sent: Result<(), StoreError>) -> Result<(), StoreError> {
    match sent {
        Err(err) if err.is_timeout() || err.is_unavailable() => Err(err),
        Err(err) => {
            tracing::debug!(node, error = %err, "registry: node index update failed");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// `fut`, or a timeout error once `deadline` has passed.
async fn within<T>(
    deadline: tokio::time::Instant,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or_else(|_elapsed| Err(StoreError::timeout()))
}

/// Runs a Redis future within `limit`, mapping its outcome to ours.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    within(tokio::time::Instant::now() + limit, async {
        fut.await.map_err(classify)
    })
    .await
}

fn classify(err: RedisError) -> StoreError {
    let kind = if err.is_timeout() {
        Kind::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
        )
    {
        Kind::Unavailable
    } else {
        Kind::Backend
    };
    StoreError::with(kind, Some(Box::new(err)))
}

/// A TTL in whole seconds, at most [`MAX_TTL_SECONDS`].
fn capped_ttl_seconds(ttl: Duration) -> u64 {
    ttl_seconds(ttl).min(MAX_TTL_SECONDS)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's URL may carry a password: it is not shown.
        f.debug_struct("RedisStore")
            .field("topology", &self.inner.conn.topology())
            .field("prefix", &self.inner.keys.prefix())
            .field("command_timeout", &self.inner.command_timeout)
            .finish()
    }
}

impl RegistryStore for RedisStore {
    async fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let secs = capped_ttl_seconds(ttl);
        // Listed before the record is written: a node that dies in between leaves at worst an
        // index entry without a record (its next process drops it), never a record its next
        // process cannot find.
        self.index_add(&record.node, id, secs).await?;
        let cmd = commands::register_command(keys, id, record, secs);
        let found: Option<Vec<u8>> = self.query(cmd).await?;
        match commands::registered(found.as_deref(), record) {
            Registered::New => {}
            Registered::Again => {
                self.query::<i64>(commands::expire_command(keys, id, secs))
                    .await?;
            }
            Registered::Other => {
                self.index_remove(&record.node, id).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let cmd = commands::get_command(&self.inner.keys, id);
        match self.query::<Option<String>>(cmd).await? {
            Some(json) => SessionRecord::from_json(&json).map(Some),
            None => Ok(None),
        }
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let cmd = commands::getdel_command(&self.inner.keys, id);
        let Some(json) = self.query::<Option<Vec<u8>>>(cmd).await? else {
            return Ok(false);
        };
        // The record names the index it is listed in; an unreadable one is in none of ours.
        if let Some(node) = commands::node_of(&json) {
            self.index_remove(&node, id).await?;
        }
        Ok(true)
    }

    async fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        let key = self.inner.keys.session(id);
        let outcome = OwnedRemoval::from_reply(
            self.eval::<i64>(&REMOVE_IF_OWNED, &key, &[node, incarnation])
                .await?,
        );
        if outcome.unlists() {
            self.index_remove(node, id).await?;
        }
        Ok(outcome == OwnedRemoval::Removed)
    }

    async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let secs = capped_ttl_seconds(ttl);
        // The record (for its node, to keep the index entry's expiry in step) comes in the same
        // round trip.
        let mut pipe = ::redis::pipe();
        pipe.add_command(commands::expire_command(keys, id, secs))
            .add_command(commands::get_command(keys, id));
        let (extended, json): (i64, Option<Vec<u8>>) = self.query_pipe(&pipe).await?;
        if extended != 1 {
            return Ok(false);
        }
        if let Some(node) = json.as_deref().and_then(commands::node_of) {
            self.index_add(&node, id, secs).await?;
        }
        Ok(true)
    }

    /// Walks `node`'s index with `ZSCAN` (`batch` ids per page) and runs an atomic
    /// compare-and-delete on each record, `batch` at a time. Ids whose record is gone or belongs
    /// to another node are dropped from the index on the way.
    async fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let batch = batch.clamp(1, MAX_BATCH);
        let index = self.inner.keys.node_index(node);
        let node: Arc<str> = Arc::from(node);
        let current: Arc<str> = Arc::from(current_incarnation);
        let mut cursor = String::from("0");
        let mut removed = 0;
        loop {
            let mut scan = ::redis::cmd("ZSCAN");
            scan.arg(&index).arg(&cursor).arg("COUNT").arg(batch);
            let (next, page): (String, Vec<String>) = self.query(scan).await?;
            // The page alternates members and scores.
            let ids: Vec<String> = page.into_iter().step_by(2).collect();
            for chunk in ids.chunks(batch) {
                let mut checks = JoinSet::new();
                for id in chunk {
                    let store = self.clone();
                    let (id, node, current) = (id.clone(), Arc::clone(&node), Arc::clone(&current));
                    checks.spawn(async move {
                        let key = store.inner.keys.session(&id);
                        let outcome = store
                            .eval::<i64>(&REMOVE_IF_STALE, &key, &[&node, &current])
                            .await;
                        (id, outcome)
                    });
                }
                let mut unlisted = Vec::new();
                let mut failure = None;
                while let Some(joined) = checks.join_next().await {
                    match joined {
                        Ok((id, Ok(1))) => {
                            removed += 1;
                            unlisted.push(id);
                        }
                        Ok((id, Ok(-1))) => unlisted.push(id),
                        Ok((_, Ok(_))) => {}
                        Ok((_, Err(err))) => {
                            failure.get_or_insert(err);
                        }
                        Err(join_err) => {
                            failure.get_or_insert_with(|| StoreError::backend(join_err));
                        }
                    }
                }
                if !unlisted.is_empty() {
                    let mut zrem = ::redis::cmd("ZREM");
                    zrem.arg(&index).arg(&unlisted);
                    self.query::<i64>(zrem).await?;
                }
                if let Some(err) = failure {
                    return Err(err);
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        Ok(removed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(::redis::cmd("PING")).await
    }

    /// `SADD` to the node set and `SET … EX` of the liveness record: one pipelined round trip
    /// on a single server; on a cluster, where the two keys live in different slots, one after
    /// the other.
    async fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let listed = self.node_set_command("SADD", node);
        let mut live = ::redis::cmd("SET");
        live.arg(self.inner.keys.liveness(node))
            .arg(record.to_json())
            .arg("EX")
            .arg(capped_ttl_seconds(ttl));
        match &self.inner.conn {
            Conn::Single(_) => {
                let mut pipe = ::redis::pipe();
                pipe.add_command(listed).add_command(live);
                self.query_pipe::<((), ())>(&pipe).await.map(drop)
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => {
                self.query::<()>(listed).await?;
                self.query::<()>(live).await
            }
        }
    }

    async fn node(&self, node: &str) -> Result<Option<NodeRecord>, StoreError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.inner.keys.liveness(node));
        match self.query::<Option<String>>(cmd).await? {
            Some(json) => NodeRecord::from_json(&json).map(Some),
            None => Ok(None),
        }
    }

    async fn withdraw(&self, node: &str, incarnation: &str) -> Result<bool, StoreError> {
        let key = self.inner.keys.liveness(node);
        Ok(self.eval::<i64>(&WITHDRAW, &key, &[incarnation]).await? == 1)
    }

    async fn nodes(&self) -> Result<Vec<String>, StoreError> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.node_set());
        self.query(cmd).await
    }

    /// Checks the node's slot, takes the node out of the node set, and checks again: a node
    /// that announced itself or registered a session in between is put back (`SADD`), so a
    /// node never stays out of the set while it has something to sweep.
    async fn retire(&self, node: &str) -> Result<bool, StoreError> {
        if !self.retirable(node).await? {
            return Ok(false);
        }
        let removed: i64 = self.query(self.node_set_command("SREM", node)).await?;
        if removed == 0 {
            return Ok(false);
        }
        if self.retirable(node).await? {
            return Ok(true);
        }
        self.query::<i64>(self.node_set_command("SADD", node))
            .await?;
        Ok(false)
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let secs = capped_ttl_seconds(ttl);
        // Listed before the record names the claimant, as in `register`: a claimant that dies
        // in between leaves at worst an index entry its next process drops.
        self.index_add(&record.node, id, secs).await?;
        let key = self.inner.keys.session(id);
        let reply: ::redis::Value = self
            .eval(
                &CLAIM,
                &key,
                &[owner, incarnation, &record.to_json(), &secs.to_string()],
            )
            .await?;
        let claim = commands::claimed(&reply);
        let keep_listing = match &claim {
            Ok(Claim::Won) => true,
            // The record another request of the claimant's node won is listed already.
            Ok(Claim::Lost(Some(current))) => current.node == record.node,
            _ => false,
        };
        if !keep_listing {
            // Best effort: an entry left behind is dropped by the node's next cleanup.
            if let Err(err) = self.index_remove(&record.node, id).await {
                tracing::debug!(node = %record.node, error = %err, "registry: node index update failed");
            }
        }
        claim
    }

    /// On a single server: the records in one pipelined round trip of plain commands, then the
    /// node indexes in a second (see [`RedisStore`]'s "Commands"), both within one command
    /// timeout (an index update that fails or runs out of time is logged, not returned). On a cluster, where a record
    /// and its index live in different slots: the single-write methods, different sessions
    /// concurrently.
    async fn write_batch(&self, writes: &[StoreWrite<'_>]) -> Result<Vec<bool>, StoreError> {
        let conn = match &self.inner.conn {
            Conn::Single(conn) => conn,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => return super::write_each(self, writes).await,
        };
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + self.inner.command_timeout;
        self.write_pipelined(conn, writes, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_outside_a_runtime_is_a_config_error() {
        let err = RedisStore::lazy("redis://127.0.0.1:1/")
            .map(drop)
            .expect_err("no runtime");
        assert!(err.is_config(), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_configuration_is_rejected() {
        let bad_prefix = RedisStore::builder("redis://127.0.0.1:1/")
            .with_prefix("a{b}:")
            .build_lazy();
        assert!(bad_prefix.map(drop).expect_err("braces").is_config());
        let zero = RedisStore::builder("redis://127.0.0.1:1/")
            .with_command_timeout(Duration::ZERO)
            .build_lazy();
        assert!(zero.map(drop).expect_err("zero timeout").is_config());
        let bad_url = RedisStore::lazy("not a url");
        assert!(bad_url.map(drop).expect_err("bad url").is_config());
    }

    #[tokio::test]
    async fn debug_hides_the_url() {
        let store =
            RedisStore::lazy("redis://user:hunter2@127.0.0.1:1/").map_err(|e| e.to_string());
        let debug = format!("{store:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let builder = format!(
            "{:?}",
            RedisStore::builder("redis://user:hunter2@127.0.0.1:1/")
        );
        assert!(!builder.contains("hunter2"), "{builder}");
    }

    #[test]
    fn ttl_argument_is_capped() {
        assert_eq!(capped_ttl_seconds(Duration::from_secs(30)), 30);
        assert_eq!(capped_ttl_seconds(Duration::MAX), MAX_TTL_SECONDS);
    }
}
