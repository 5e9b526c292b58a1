//! Storage backends of the session registry.
//!
//! The registry keeps one small record per live legacy-era session: which node owns it, which
//! incarnation (process start) of that node created it, and when. The record is written once when
//! the session is created, read only when a request names a session the local node does not know,
//! and deleted when the session closes. [`RegistryStore`] is the storage contract; two backends
//! implement it:
//!
//! - [`MemoryStore`]: in-process, the embedded default. Clones share one map, so several nodes
//!   running in one process (tests, demos) see each other's sessions.
//! - `RedisStore` (feature `redis`, on by default): a Redis server or, with feature
//!   `redis-cluster`, a Redis Cluster. It connects lazily if asked to, reconnects on its own and
//!   bounds every command with a short timeout.
//!
//! # Records and keys
//!
//! A [`SessionRecord`] is stored as compact JSON, `{"n":"<node>","i":"<incarnation>","c":<created
//! at, unix seconds>}`. [`RecordKey`] builds the Redis keys; with the default prefix a session's
//! key is `mcp:session:{<id>}`. The braces are part of the key: they are the Redis Cluster hash tag,
//! so every key of one session lands in the same slot. Each node also keeps a short-lived
//! liveness record of itself ([`NodeRecord`], `mcp:session:live:{<node>}`) and is listed in the
//! node set (`mcp:session:nodes`); other nodes read them to tell a live owner from a gone one
//! before they [claim](RegistryStore::claim) its sessions. See the `RedisStore` docs for every
//! key it writes.
//!
//! # Time to live
//!
//! Every record has a time to live, so a record that no cleanup path removed (a crashed node, a
//! client that never sent DELETE) still disappears. Stores count TTLs in whole seconds: a
//! duration is rounded up, and anything shorter than one second counts as one second.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
//! let store = MemoryStore::new();
//! let record = SessionRecord::new("node-a", "7f3a");
//! let ttl = Duration::from_secs(30 * 24 * 60 * 60);
//!
//! assert!(store.register("s1", &record, ttl).await?);
//! assert_eq!(store.lookup("s1").await?.map(|r| r.node), Some("node-a".to_owned()));
//! // Only the owner removes its record on close ...
//! assert!(!store.remove_if_owned("s1", "node-b", "0001").await?);
//! assert!(store.remove_if_owned("s1", "node-a", "7f3a").await?);
//! assert_eq!(store.lookup("s1").await?, None);
//! # Ok(())
//! # }
//! ```
//!
//! # Writing a store
//!
//! Any type implementing [`RegistryStore`] can back the registry. Report failures with the
//! [`StoreError`] constructors so the layer can tell an outage from a bad record:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use std::time::Duration;
//! use mcp_affinity::registry::{RegistryStore, SessionRecord, StoreError};
//!
//! /// A store without expiry, for illustration only.
//! #[derive(Debug, Default)]
//! struct NaiveStore(Mutex<HashMap<String, SessionRecord>>);
//!
//! impl NaiveStore {
//!     fn map(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, SessionRecord>>, StoreError> {
//!         self.0.lock().map_err(|_| StoreError::unavailable("lock poisoned"))
//!     }
//! }
//!
//! impl RegistryStore for NaiveStore {
//!     async fn register(&self, id: &str, record: &SessionRecord, _ttl: Duration) -> Result<bool, StoreError> {
//!         let mut map = self.map()?;
//!         match map.get(id) {
//!             Some(existing) => Ok(existing == record),
//!             None => {
//!                 map.insert(id.to_owned(), record.clone());
//!                 Ok(true)
//!             }
//!         }
//!     }
//!     async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
//!         Ok(self.map()?.get(id).cloned())
//!     }
//!     async fn remove(&self, id: &str) -> Result<bool, StoreError> {
//!         Ok(self.map()?.remove(id).is_some())
//!     }
//!     async fn remove_if_owned(&self, id: &str, node: &str, incarnation: &str) -> Result<bool, StoreError> {
//!         let mut map = self.map()?;
//!         if map.get(id).is_some_and(|r| r.is_owned_by(node, incarnation)) {
//!             map.remove(id);
//!             return Ok(true);
//!         }
//!         Ok(false)
//!     }
//!     async fn refresh(&self, id: &str, _ttl: Duration) -> Result<bool, StoreError> {
//!         Ok(self.map()?.contains_key(id))
//!     }
//!     async fn remove_stale(&self, node: &str, current: &str, _batch: usize) -> Result<usize, StoreError> {
//!         let mut map = self.map()?;
//!         let before = map.len();
//!         map.retain(|_, r| r.node != node || r.incarnation == current);
//!         Ok(before - map.len())
//!     }
//!     async fn ping(&self) -> Result<(), StoreError> {
//!         self.map().map(drop)
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod error;
mod key;
mod memory;
mod node;
mod record;
#[cfg(feature = "redis")]
mod redis;
mod write;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "redis")]
use error::Kind;
pub use error::StoreError;
pub use key::RecordKey;
pub use memory::MemoryStore;
pub use node::{NodeRecord, NodeState};
pub(crate) use record::unix_now;
pub use record::{Claim, Ownership, SessionRecord};
pub use write::{EventWrite, StoreWrite, StoredEventPage};
pub(crate) use write::{group_by_id, write_each};

/// Storage for the session registry.
///
/// Implemented by [`MemoryStore`] and `RedisStore`. Every method takes `&self` and returns a
/// `Send` future, so one store can be shared (in an `Arc` or by cloning) by every request. The
/// layer never calls a store on the happy path of a request; see the
/// [module docs](crate::registry) for when it does.
///
/// # Semantics every implementation keeps
///
/// - TTLs are whole seconds, rounded up, at least one second.
/// - An expired record behaves exactly like an absent one.
/// - [`register`](Self::register) is idempotent: repeating it with an identical record (same
///   node, incarnation and creation time) succeeds and resets the TTL, so a write retried after
///   a timeout cannot be mistaken for a collision.
/// - After an error, in particular a timeout, the operation may or may not have taken effect.
///
/// # Example
///
/// Code generic over the store, as the registry layer is:
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord, StoreError};
///
/// async fn close<S: RegistryStore>(store: &S, id: &str) -> Result<bool, StoreError> {
///     store.remove_if_owned(id, "node-a", "7f3a").await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let store = MemoryStore::new();
/// store.register("s1", &SessionRecord::new("node-a", "7f3a"), Duration::from_secs(60)).await?;
/// assert!(close(&store, "s1").await?);
/// # Ok(())
/// # }
/// ```
pub trait RegistryStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `record` for session `id` with a time to live, unless a record exists.
    ///
    /// Redis: `SET key value NX EX ttl`. Returns `Ok(true)` if the record is now stored: no
    /// (unexpired) record existed, or an identical one did (then its TTL is reset to `ttl`).
    /// Returns `Ok(false)` if a different record exists under `id`; it is left untouched.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time.
    fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The record of session `id`, if one exists and has not expired.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, or holds something under the
    /// key that is not a record ([`StoreError::is_invalid_record`]).
    fn lookup(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// Removes the record of session `id`, whoever owns it.
    ///
    /// This is the DELETE rule of the registry: a client that ends its session cleans up the
    /// record even when the session lives on another node or in a previous process. Every other
    /// close path uses [`remove_if_owned`](Self::remove_if_owned). Returns whether a record
    /// existed.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time.
    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the record of session `id` only if `node` in `incarnation` owns it.
    ///
    /// Atomic compare-and-delete: a node never removes a record another node (or another
    /// incarnation of itself) wrote meanwhile. Returns whether the record was removed.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time.
    fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Resets the time to live of session `id`'s record to `ttl`. Redis: `EXPIRE`.
    ///
    /// Returns whether a record existed.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time.
    fn refresh(
        &self,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the records `node` owns from incarnations other than `current_incarnation`.
    ///
    /// A node that restarts under the same name calls this to clean up what its previous process
    /// left behind. Records of other nodes and of the current incarnation stay. `batch` bounds
    /// the work done per round trip (Redis: the index page size and the number of concurrent
    /// compare-and-delete calls, from 1 to 1024). Returns how many records were removed.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time. Records removed before
    /// the failure stay removed, and calling again continues the work.
    fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        batch: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Writes `node`'s liveness record with a time to live, and lists `node` in the node set
    /// (which the orphan sweep walks, see [`nodes`](Self::nodes)).
    ///
    /// The registry calls it in the background, every few seconds (never per request); each
    /// call replaces the record and restarts its TTL. Redis: `SET <live key> <json> EX <ttl>`
    /// and `SADD <node set> <node>`, pipelined in one round trip on a single server (see
    /// [`RecordKey::liveness`] and [`RecordKey::node_set`]). The default answers an error: a
    /// store that does not implement liveness makes the registry keep today's `404`s for
    /// sessions of other nodes (no forwarding, no adoption).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, or has no liveness.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, NodeRecord, NodeState, RegistryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let me = NodeRecord::new(NodeState::Serving, "7f3a").with_address("10.0.0.5:8080");
    /// store.announce("node-a", &me, Duration::from_secs(15)).await?;
    /// assert_eq!(store.node("node-a").await?, Some(me));
    /// assert_eq!(store.nodes().await?, ["node-a"]);
    /// # Ok(())
    /// # }
    /// ```
    fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (node, record, ttl);
        std::future::ready(Err(StoreError::backend(
            "this store keeps no node liveness",
        )))
    }

    /// `node`'s liveness record, if it is alive (its record has not expired and was not
    /// withdrawn). Redis: `GET <live key>`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, holds something under the
    /// key that is not a [`NodeRecord`] ([`StoreError::is_invalid_record`]), or has no
    /// liveness (the default).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// assert_eq!(MemoryStore::new().node("node-a").await?, None, "never announced");
    /// # Ok(())
    /// # }
    /// ```
    fn node(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<NodeRecord>, StoreError>> + Send {
        let _ = node;
        std::future::ready(Err(StoreError::backend(
            "this store keeps no node liveness",
        )))
    }

    /// Removes `node`'s liveness record if it names `incarnation` (a node leaving the cluster
    /// for good, so the others adopt its sessions at once). Returns whether it was removed.
    ///
    /// Atomic compare-and-delete: a node's previous process never withdraws what its next one
    /// announced. Redis: a Lua script on the liveness key (`EVALSHA`). The node stays in the
    /// node set (its sessions still need sweeping); see [`retire`](Self::retire).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, or has no liveness (the
    /// default).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, NodeRecord, NodeState, RegistryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let record = NodeRecord::new(NodeState::Draining, "7f3a");
    /// store.announce("node-a", &record, Duration::from_secs(15)).await?;
    /// assert!(!store.withdraw("node-a", "0001").await?, "another incarnation's");
    /// assert!(store.withdraw("node-a", "7f3a").await?);
    /// assert_eq!(store.node("node-a").await?, None);
    /// # Ok(())
    /// # }
    /// ```
    fn withdraw(
        &self,
        node: &str,
        incarnation: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (node, incarnation);
        std::future::ready(Err(StoreError::backend(
            "this store keeps no node liveness",
        )))
    }

    /// The node set: every node that [announced](Self::announce) itself and was not
    /// [retired](Self::retire) since, alive or not, in no particular order. Redis:
    /// `SMEMBERS <node set>`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, or has no liveness (the
    /// default).
    fn nodes(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        std::future::ready(Err(StoreError::backend(
            "this store keeps no node liveness",
        )))
    }

    /// Removes `node` from the node set if it is gone for good: it has no liveness record and
    /// no session is listed under it, so the orphan sweep has nothing left to visit. Returns
    /// whether it was removed. A node that announces itself again is listed again.
    ///
    /// `MemoryStore` looks at the records themselves. Redis looks at the node's session index
    /// (entries past their expiry do not count; they are pruned on the way), which also lists
    /// sessions other nodes have [claimed](Self::claim) since, until
    /// [`remove_stale`](Self::remove_stale) or the sweep drops them. Redis: a Lua script on
    /// the node's slot (liveness key and index: `EVALSHA`), `SREM` from the node set, and the
    /// script again to catch a node that announced itself or registered a session meanwhile
    /// (then `SADD` puts it back).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, or has no liveness (the
    /// default).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, NodeRecord, NodeState, RegistryStore, SessionRecord};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let ttl = Duration::from_secs(60);
    /// store.announce("node-a", &NodeRecord::new(NodeState::Serving, "1"), ttl).await?;
    /// store.register("s1", &SessionRecord::new("node-a", "1"), ttl).await?;
    /// assert!(!store.retire("node-a").await?, "alive");
    /// store.withdraw("node-a", "1").await?;
    /// assert!(!store.retire("node-a").await?, "a session is left");
    /// store.remove("s1").await?;
    /// assert!(store.retire("node-a").await?);
    /// assert!(store.nodes().await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    fn retire(&self, node: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = node;
        std::future::ready(Err(StoreError::backend(
            "this store keeps no node liveness",
        )))
    }

    /// Takes ownership of session `id` atomically: if its record names `owner` in
    /// `incarnation`, replaces it with `record` (the claimant as owner, see
    /// [`SessionRecord::owned_by`]) with time to live `ttl`, and lists `id` in the claimant's
    /// (`record.node`'s) node index, so the claimant's cleanup paths
    /// ([`remove_stale`](Self::remove_stale) after its restart) find it. When several nodes
    /// claim one session at once, exactly one wins; every other gets
    /// [`Claim::Lost`] with the winner's record.
    ///
    /// The previous owner's index may keep listing the session; its cleanup skips records
    /// that no longer name it (and drops them from its index).
    ///
    /// Redis: the claimant's index update first (the index script, `EVALSHA`, as for
    /// [`register`](Self::register): a node that dies right after winning leaves no record
    /// its next process cannot find), then a compare-and-set Lua script on the record's key
    /// (`EVALSHA`: `GET`, and `SET … EX` when it wins); a lost claim takes the listing back
    /// (`ZREM`) unless the record it lost to names the claimant's node too.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed, did not answer in time, holds something under the
    /// key that is not a record ([`StoreError::is_invalid_record`]; it is left alone), or cannot
    /// claim (the default).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{Claim, MemoryStore, RegistryStore, SessionRecord};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let ttl = Duration::from_secs(60);
    /// let record = SessionRecord::new("node-a", "1");
    /// store.register("s1", &record, ttl).await?;
    ///
    /// let adopted = record.owned_by("node-b", "7");
    /// assert_eq!(store.claim("s1", "node-a", "1", &adopted, ttl).await?, Claim::Won);
    /// // A second claimant that expected node-a too comes second.
    /// let late = record.owned_by("node-c", "3");
    /// assert_eq!(store.claim("s1", "node-a", "1", &late, ttl).await?, Claim::Lost(Some(adopted)));
    /// assert_eq!(store.claim("gone", "node-a", "1", &late, ttl).await?, Claim::Lost(None));
    /// # Ok(())
    /// # }
    /// ```
    fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        let _ = (id, owner, incarnation, record, ttl);
        std::future::ready(Err(StoreError::backend("this store cannot claim sessions")))
    }

    /// Checks that the store answers.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed or did not answer in time.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Applies several writes and returns each one's result, as its single-write method would.
    ///
    /// The registry's write queues call this with up to 64 queued writes at a time. The writes
    /// on one session take effect in their order; writes on different sessions may interleave.
    /// The default runs each write with its single-write method, the writes of different
    /// sessions concurrently; `RedisStore` sends a single server the whole batch in two
    /// pipelined round trips (the records, then the node indexes).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if any write failed. Any of the writes may then have taken effect;
    /// every write is idempotent when replayed in order, which is what the registry does.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord, store::StoreWrite};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// let ttl = Duration::from_secs(60);
    /// let results = store
    ///     .write_batch(&[
    ///         StoreWrite::Register { id: "s1", record: &record, ttl },
    ///         StoreWrite::Register { id: "s2", record: &record, ttl },
    ///         StoreWrite::Remove { id: "s1" },
    ///     ])
    ///     .await?;
    /// assert_eq!(results, [true, true, true]);
    /// assert_eq!(store.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    fn write_batch(
        &self,
        writes: &[StoreWrite<'_>],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        write_each(self, writes)
    }

    /// Appends events of sessions' streams (the shared event log): per session, in the order
    /// given, each under its stream, sequence number and ordinal, the session's log (every
    /// stream together) trimmed to about its newest `max_len` events by ordinal and set to
    /// expire `ttl` after this write. An event whose ordinal is not above what the store
    /// holds in its place (a late write of a former owner) is skipped, not an error.
    ///
    /// `RedisStore` keeps at most 256 events per session (a longer `max_len` is cut to
    /// it), in hashes shared by many sessions, so that one batch is a few commands.
    ///
    /// The registry's event writer calls this with up to 512 queued events at a time. The
    /// default stores nothing (a store without a shared event log: an adopted session's
    /// standalone stream starts empty).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed; some events may have been stored.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, store::EventWrite};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let data = Bytes::from_static(b"{}");
    /// let events: Vec<EventWrite<'_>> =
    ///     (1..=3).map(|seq| EventWrite::standalone("s1", seq, &data)).collect();
    /// store.append_events(&events, 256, Duration::from_secs(60)).await?;
    /// let page = store.read_events("s1", Some(1), 10).await?;
    /// assert_eq!(page.top, 3);
    /// assert_eq!(page.events.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    fn append_events(
        &self,
        events: &[EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (events, max_len, ttl);
        std::future::ready(Ok(()))
    }

    /// Reads a session's stored standalone events after sequence number `after` (at most
    /// `max`, oldest first), the highest standalone sequence number and ordinal stored, and
    /// the stored events of its `POST` answers; with `after` `None`, no standalone events.
    /// Called once when this node adopts a session. The default has none.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed.
    fn read_events(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> impl Future<Output = Result<StoredEventPage, StoreError>> + Send {
        let _ = (id, after, max);
        std::future::ready(Ok(StoredEventPage::default()))
    }

    /// Removes the stored events of sessions whose record was removed (closed sessions).
    /// The default does nothing.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store failed.
    fn remove_events(&self, ids: &[&str]) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = ids;
        std::future::ready(Ok(()))
    }
}

impl<S: RegistryStore> RegistryStore for Arc<S> {
    fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::register(self, id, record, ttl)
    }

    fn lookup(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send {
        S::lookup(self, id)
    }

    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::remove(self, id)
    }

    fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::remove_if_owned(self, id, node, incarnation)
    }

    fn refresh(
        &self,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::refresh(self, id, ttl)
    }

    fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        batch: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        S::remove_stale(self, node, current_incarnation, batch)
    }

    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::ping(self)
    }

    fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::announce(self, node, record, ttl)
    }

    fn node(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<NodeRecord>, StoreError>> + Send {
        S::node(self, node)
    }

    fn withdraw(
        &self,
        node: &str,
        incarnation: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::withdraw(self, node, incarnation)
    }

    fn nodes(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        S::nodes(self)
    }

    fn retire(&self, node: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        S::retire(self, node)
    }

    fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        S::claim(self, id, owner, incarnation, record, ttl)
    }

    fn write_batch(
        &self,
        writes: &[StoreWrite<'_>],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        S::write_batch(self, writes)
    }

    fn append_events(
        &self,
        events: &[EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::append_events(self, events, max_len, ttl)
    }

    fn read_events(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> impl Future<Output = Result<StoredEventPage, StoreError>> + Send {
        S::read_events(self, id, after, max)
    }

    fn remove_events(&self, ids: &[&str]) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::remove_events(self, ids)
    }
}

/// A TTL in whole seconds: rounded up, at least one.
pub(crate) fn ttl_seconds(ttl: Duration) -> u64 {
    let rounded = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    rounded.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
        assert_eq!(ttl_seconds(Duration::MAX), u64::MAX);
    }
}
