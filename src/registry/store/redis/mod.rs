//! The Redis registry store (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

mod batch;
mod builder;
mod commands;
mod conn;
mod continuity;
mod events;
mod index;
mod scripts;

pub use builder::RedisStoreBuilder;
use commands::{OwnedRemoval, Registered};
use conn::{bounded, classify, within};
use scripts::{CLAIM, INDEX_PUT, REMOVE_IF_OWNED, REMOVE_IF_STALE, RETIRABLE, WITHDRAW};

use super::{
    Claim, NodeRecord, RecordKey, RegistryStore, SessionRecord, StoreError, StoreWrite, ttl_seconds,
};
use crate::redis_conn::{Conn, Target};

/// The largest `remove_stale` batch: the index page size and the concurrent calls.
const MAX_BATCH: usize = 1024;
/// The longest TTL sent to Redis (ten years); longer ones are capped.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 60 * 60;

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
    /// to another node are dropped from the index on the way; the shared event logs of the
    /// removed and gone records are removed with them.
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
                    // Their shared event logs go with them (the records of sessions that
                    // were never closed would otherwise leave their events behind).
                    let gone: Vec<&str> = unlisted.iter().map(String::as_str).collect();
                    self.remove_event_logs(&gone).await?;
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

    async fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.announce_node(node, record, ttl).await
    }

    async fn node(&self, node: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.node_record(node).await
    }

    async fn withdraw(&self, node: &str, incarnation: &str) -> Result<bool, StoreError> {
        self.withdraw_node(node, incarnation).await
    }

    async fn nodes(&self) -> Result<Vec<String>, StoreError> {
        self.node_names().await
    }

    async fn retire(&self, node: &str) -> Result<bool, StoreError> {
        self.retire_node(node).await
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim_session(id, owner, incarnation, record, ttl)
            .await
    }

    /// On a single server: the records in one pipelined round trip of plain commands, then the
    /// node indexes in a second (see [`RedisStore`]'s "Commands"), both within one command
    /// timeout (an index update that fails or runs out of time is logged, not returned). On a cluster, where a record
    /// and its index live in different slots: the single-write methods, different sessions
    /// concurrently.
    async fn write_batch(&self, writes: &[StoreWrite<'_>]) -> Result<Vec<bool>, StoreError> {
        // One arm without the `redis-cluster` feature.
        #[cfg_attr(
            not(feature = "redis-cluster"),
            allow(clippy::infallible_destructuring_match)
        )]
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

    async fn append_events(
        &self,
        events: &[crate::registry::store::EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.append_event_batch(events, max_len, ttl).await
    }

    async fn read_events(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> Result<crate::registry::store::StoredEventPage, StoreError> {
        self.read_event_page(id, after, max).await
    }

    async fn remove_events(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.remove_event_logs(ids).await
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
