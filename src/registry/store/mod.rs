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

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use memory::MemoryStore;

use crate::BoxError;

/// The registry's record of one session: who owns it and since when.
///
/// Serialized as compact JSON with one-letter field names, because one record is stored per
/// session for up to the whole TTL:
///
/// | field | JSON name | meaning |
/// |---|---|---|
/// | [`node`](Self::node) | `n` | the node that owns the session (its in-process state lives there) |
/// | [`incarnation`](Self::incarnation) | `i` | the owning node's incarnation: an id that changes every time the node's process starts |
/// | [`created_at`](Self::created_at) | `c` | when the session was created, unix seconds |
///
/// Unknown JSON fields are ignored when reading, so records written by a later version still
/// parse.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{Ownership, SessionRecord};
///
/// let record = SessionRecord::new("node-a", "7f3a").with_created_at(1_767_225_600);
/// assert_eq!(record.to_json(), r#"{"n":"node-a","i":"7f3a","c":1767225600}"#);
/// assert_eq!(SessionRecord::from_json(&record.to_json()).ok(), Some(record.clone()));
/// assert_eq!(record.ownership("node-a", "0001"), Ownership::PreviousIncarnation);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionRecord {
    /// The node that owns the session. JSON field `n`.
    #[serde(rename = "n")]
    pub node: String,
    /// The incarnation of the owning node that created the session. JSON field `i`.
    #[serde(rename = "i")]
    pub incarnation: String,
    /// Creation time, in seconds since the Unix epoch. JSON field `c`.
    #[serde(rename = "c")]
    pub created_at: u64,
    /// The protocol version negotiated in `initialize`. JSON field `v`. A record without it
    /// (written by an inner service other than this crate's transport, or by an earlier
    /// version) can be forwarded to its owner but not adopted.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The `clientInfo` of the client's `initialize`. JSON field `ci`.
    #[serde(rename = "ci", default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<serde_json::Value>,
    /// The `capabilities` of the client's `initialize`. JSON field `cc`.
    #[serde(rename = "cc", default, skip_serializing_if = "Option::is_none")]
    pub client_capabilities: Option<serde_json::Value>,
    /// The digest of the principal the session is bound to
    /// ([`principal_digest`](crate::session::principal_digest)), never the principal. JSON
    /// field `p`.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl SessionRecord {
    /// A record owned by `node` in its `incarnation`, created now (system clock).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert_eq!(record.node, "node-a");
    /// assert!(record.created_at > 0);
    /// ```
    pub fn new(node: impl Into<String>, incarnation: impl Into<String>) -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Self {
            node: node.into(),
            incarnation: incarnation.into(),
            created_at,
            protocol_version: None,
            client_info: None,
            client_capabilities: None,
            principal: None,
        }
    }

    /// Adds what another node needs to restore the session: the negotiated protocol version,
    /// the client's `clientInfo` and `capabilities`, and the principal digest, if bound.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a")
    ///     .with_created_at(1)
    ///     .with_restore("2025-11-25", Some(serde_json::json!({"name": "c", "version": "1"})), None, None);
    /// assert!(record.is_restorable());
    /// assert_eq!(record.to_json(), r#"{"n":"node-a","i":"7f3a","c":1,"v":"2025-11-25","ci":{"name":"c","version":"1"}}"#);
    /// ```
    #[must_use]
    pub fn with_restore(
        mut self,
        protocol_version: impl Into<String>,
        client_info: Option<serde_json::Value>,
        client_capabilities: Option<serde_json::Value>,
        principal: Option<String>,
    ) -> Self {
        self.protocol_version = Some(protocol_version.into());
        self.client_info = client_info;
        self.client_capabilities = client_capabilities;
        self.principal = principal;
        self
    }

    /// Whether the record carries what a node needs to restore the session (adopt it).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// assert!(!SessionRecord::new("node-a", "7f3a").is_restorable());
    /// ```
    #[must_use]
    pub fn is_restorable(&self) -> bool {
        self.protocol_version.is_some()
    }

    /// The same record under a new owner: `node` in `incarnation` (what an adopting node
    /// writes). The creation time and the restore fields stay.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let moved = SessionRecord::new("node-a", "1").with_created_at(5).owned_by("node-b", "2");
    /// assert!(moved.is_owned_by("node-b", "2"));
    /// assert_eq!(moved.created_at, 5);
    /// ```
    #[must_use]
    pub fn owned_by(&self, node: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            incarnation: incarnation.into(),
            ..self.clone()
        }
    }

    /// Replaces the creation time (unix seconds).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a").with_created_at(42);
    /// assert_eq!(record.created_at, 42);
    /// ```
    #[must_use]
    pub fn with_created_at(mut self, unix_seconds: u64) -> Self {
        self.created_at = unix_seconds;
        self
    }

    /// Whether the record belongs to `node` in exactly this `incarnation`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert!(record.is_owned_by("node-a", "7f3a"));
    /// assert!(!record.is_owned_by("node-a", "0001"));
    /// ```
    #[must_use]
    pub fn is_owned_by(&self, node: &str, incarnation: &str) -> bool {
        self.node == node && self.incarnation == incarnation
    }

    /// How the record relates to the node asking: `node` in its current `incarnation`.
    ///
    /// This is what tells a misrouted request ([`Ownership::OtherNode`]) from one for a session
    /// this node's previous process created ([`Ownership::PreviousIncarnation`]).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{Ownership, SessionRecord};
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert_eq!(record.ownership("node-a", "7f3a"), Ownership::Current);
    /// assert_eq!(record.ownership("node-a", "0001"), Ownership::PreviousIncarnation);
    /// assert_eq!(record.ownership("node-b", "7f3a"), Ownership::OtherNode);
    /// ```
    #[must_use]
    pub fn ownership(&self, node: &str, incarnation: &str) -> Ownership {
        if self.node != node {
            Ownership::OtherNode
        } else if self.incarnation == incarnation {
            Ownership::Current
        } else {
            Ownership::PreviousIncarnation
        }
    }

    /// The record's JSON form, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let json = SessionRecord::new("a", "b").with_created_at(1).to_json();
    /// assert_eq!(json, r#"{"n":"a","i":"b","c":1}"#);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing a struct of two strings and an integer cannot fail; the fallback keeps
        // this function total without a panic path.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored record.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] for which [`StoreError::is_invalid_record`] is true if `json` is not a
    /// record.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::from_json(r#"{"n":"a","i":"b","c":1,"future":true}"#)?;
    /// assert_eq!(record.node, "a");
    /// assert!(SessionRecord::from_json("not json").unwrap_err().is_invalid_record());
    /// // A record is an object: not the array form a derived decoder would also take.
    /// assert!(SessionRecord::from_json(r#"["a","b",1]"#).unwrap_err().is_invalid_record());
    /// # Ok::<(), mcp_affinity::registry::StoreError>(())
    /// ```
    pub fn from_json(json: &str) -> Result<Self, StoreError> {
        if !json
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(StoreError::invalid_record(
                "a session record is a JSON object",
            ));
        }
        serde_json::from_str(json).map_err(StoreError::invalid_record)
    }
}

/// Whether a node takes requests. See [`NodeRecord`].
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::NodeState;
///
/// assert_eq!(NodeState::Serving.as_str(), "serving");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeState {
    /// Serving: requests for its sessions are forwarded to it.
    Serving,
    /// Shutting down: its sessions are adopted by whichever node their next request reaches.
    Draining,
}

impl NodeState {
    /// `"serving"` or `"draining"`, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::NodeState;
    ///
    /// assert_eq!(NodeState::Draining.as_str(), "draining");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
        }
    }
}

/// A node's liveness record: written by the node itself in the background, with a short time
/// to live, so other nodes can tell a live owner (forward to it) from a gone, draining or
/// restarted one (adopt its sessions).
///
/// Stored as compact JSON: `{"s":"serving","i":"<incarnation>","a":"<address>","t":<unix
/// seconds>}`.
///
/// | field | JSON name | meaning |
/// |---|---|---|
/// | [`state`](Self::state) | `s` | `serving` or `draining` |
/// | [`incarnation`](Self::incarnation) | `i` | the node's current incarnation |
/// | [`address`](Self::address) | `a` | where other nodes reach it (`host:port`, internal), if it takes forwarded requests |
/// | [`updated_at`](Self::updated_at) | `t` | when it was written, unix seconds |
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{NodeRecord, NodeState};
///
/// let record = NodeRecord::new(NodeState::Serving, "7f3a").with_address("10.0.0.5:8080").with_updated_at(1);
/// assert_eq!(record.to_json(), r#"{"s":"serving","i":"7f3a","a":"10.0.0.5:8080","t":1}"#);
/// assert_eq!(NodeRecord::from_json(&record.to_json()).ok(), Some(record));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// Serving or draining. JSON field `s`.
    #[serde(rename = "s")]
    pub state: NodeState,
    /// The node's current incarnation. JSON field `i`.
    #[serde(rename = "i")]
    pub incarnation: String,
    /// The internal address other nodes forward to. JSON field `a`.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When the record was written, unix seconds. JSON field `t`.
    #[serde(rename = "t", default)]
    pub updated_at: u64,
}

impl NodeRecord {
    /// A liveness record in `state` for `incarnation`, written now (system clock), with no
    /// address.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let record = NodeRecord::new(NodeState::Draining, "7f3a");
    /// assert_eq!(record.state, NodeState::Draining);
    /// assert!(record.address.is_none());
    /// ```
    pub fn new(state: NodeState, incarnation: impl Into<String>) -> Self {
        Self {
            state,
            incarnation: incarnation.into(),
            address: None,
            updated_at: unix_now(),
        }
    }

    /// Sets the internal address other nodes forward to.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let record = NodeRecord::new(NodeState::Serving, "1").with_address("127.0.0.1:9000");
    /// assert_eq!(record.address.as_deref(), Some("127.0.0.1:9000"));
    /// ```
    #[must_use]
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Replaces the write time (unix seconds).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// assert_eq!(NodeRecord::new(NodeState::Serving, "1").with_updated_at(9).updated_at, 9);
    /// ```
    #[must_use]
    pub fn with_updated_at(mut self, unix_seconds: u64) -> Self {
        self.updated_at = unix_seconds;
        self
    }

    /// The record's JSON form, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let json = NodeRecord::new(NodeState::Serving, "1").with_updated_at(2).to_json();
    /// assert_eq!(json, r#"{"s":"serving","i":"1","t":2}"#);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored liveness record.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] for which [`StoreError::is_invalid_record`] is true if `json` is not
    /// a liveness record.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::NodeRecord;
    ///
    /// assert!(NodeRecord::from_json(r#"{"s":"serving","i":"1"}"#).is_ok());
    /// assert!(NodeRecord::from_json(r#"{"s":"sleeping","i":"1"}"#).unwrap_err().is_invalid_record());
    /// ```
    pub fn from_json(json: &str) -> Result<Self, StoreError> {
        if !json
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(StoreError::invalid_record("a node record is a JSON object"));
        }
        serde_json::from_str(json).map_err(StoreError::invalid_record)
    }
}

/// The outcome of [`RegistryStore::claim`]: the compare-and-set an adopting node makes on a
/// session's record.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::Claim;
///
/// fn won(c: &Claim) -> bool { matches!(c, Claim::Won) }
/// assert!(won(&Claim::Won));
/// assert!(!won(&Claim::Lost(None)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The record named the expected owner and now names the claimant.
    Won,
    /// The record names someone else (another node won a race, or the owner moved it): the
    /// record as it is now, or `None` if there is none.
    Lost(Option<SessionRecord>),
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// How a [`SessionRecord`] relates to the node that reads it. See [`SessionRecord::ownership`].
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{Ownership, SessionRecord};
///
/// let record = SessionRecord::new("node-b", "1");
/// match record.ownership("node-a", "1") {
///     Ownership::OtherNode => { /* misrouted: the session lives on node-b */ }
///     Ownership::PreviousIncarnation => { /* this node restarted since */ }
///     Ownership::Current => { /* ours */ }
///     _ => {}
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ownership {
    /// Owned by the asking node in its current incarnation.
    Current,
    /// Owned by the asking node, but created by an earlier process of it.
    PreviousIncarnation,
    /// Owned by another node.
    OtherNode,
}

/// Builds the Redis keys of the registry from a prefix.
///
/// | key | built by | with the default prefix |
/// |---|---|---|
/// | a session's record | [`session`](Self::session) | `mcp:session:{<id>}` |
/// | a node's session index | [`node_index`](Self::node_index) | `mcp:session:node:{<node>}` |
/// | a node's liveness record | [`liveness`](Self::liveness) | `mcp:session:live:{<node>}` |
/// | the node set | [`node_set`](Self::node_set) | `mcp:session:nodes` |
///
/// The braces are part of every key: they are the Redis Cluster hash tag. Each command of the
/// registry touches exactly one key, so the registry works on a cluster without cross-slot
/// errors (a node's index and liveness record share the node's slot; the node set, one key
/// for the whole cluster, is touched only in the background). A session key always has `{`
/// right after the prefix, an index key `node:{`, a liveness key `live:{`, and the node set
/// none, so the kinds never collide; `SCAN MATCH mcp:session:{*` lists sessions only.
///
/// The prefix should not contain `{` or `}`: a brace in the prefix would become the hash tag of
/// every key and put all sessions in one cluster slot. `RedisStoreBuilder` rejects such a
/// prefix.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::RecordKey;
///
/// let keys = RecordKey::default();
/// assert_eq!(keys.session("abc"), "mcp:session:{abc}");
/// assert_eq!(keys.node_index("node-a"), "mcp:session:node:{node-a}");
/// assert_eq!(keys.liveness("node-a"), "mcp:session:live:{node-a}");
/// assert_eq!(keys.node_set(), "mcp:session:nodes");
/// assert_eq!(RecordKey::new("app1:sess:").session("abc"), "app1:sess:{abc}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    prefix: String,
}

impl RecordKey {
    /// The default key prefix, `mcp:session:`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::DEFAULT_PREFIX, "mcp:session:");
    /// assert_eq!(RecordKey::default().prefix(), RecordKey::DEFAULT_PREFIX);
    /// ```
    pub const DEFAULT_PREFIX: &'static str = "mcp:session:";

    /// Keys under `prefix`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::new("x:").prefix(), "x:");
    /// ```
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().prefix(), "mcp:session:");
    /// ```
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of session `id`'s record: `{prefix}{<id>}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().session("n1.Zx9"), "mcp:session:{n1.Zx9}");
    /// ```
    #[must_use]
    pub fn session(&self, id: &str) -> String {
        self.session_parts(id).concat()
    }

    /// The pieces of [`session`](Self::session)'s key, in order (for writing it out in place).
    pub(crate) fn session_parts<'a>(&'a self, id: &'a str) -> [&'a str; 4] {
        [&self.prefix, "{", id, "}"]
    }

    /// The key of `node`'s session index: `{prefix}node:{<node>}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().node_index("n1"), "mcp:session:node:{n1}");
    /// ```
    #[must_use]
    pub fn node_index(&self, node: &str) -> String {
        self.node_key("node:{", node)
    }

    /// The key of `node`'s liveness record ([`NodeRecord`]): `{prefix}live:{<node>}`. It has
    /// the hash tag of the node's index, so both are in one cluster slot.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().liveness("n1"), "mcp:session:live:{n1}");
    /// ```
    #[must_use]
    pub fn liveness(&self, node: &str) -> String {
        self.node_key("live:{", node)
    }

    /// The key of the node set, the names of every node that announced itself:
    /// `{prefix}nodes`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::new("app1:").node_set(), "app1:nodes");
    /// ```
    #[must_use]
    pub fn node_set(&self) -> String {
        [self.prefix.as_str(), "nodes"].concat()
    }

    /// `{prefix}{kind}<node>}`, `kind` ending in the opening brace.
    fn node_key(&self, kind: &str, node: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + node.len() + 1);
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(node);
        key.push('}');
        key
    }
}

impl Default for RecordKey {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

/// Storage for the session registry.
///
/// One write of a batch: see [`RegistryStore::write_batch`].
///
/// Each variant is one of the store's single-write methods with its arguments.
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
/// let write = StoreWrite::Register { id: "s1", record: &record, ttl: Duration::from_secs(60) };
/// assert!(write.apply(&store).await?);
/// assert!(StoreWrite::Remove { id: "s1" }.apply(&store).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum StoreWrite<'a> {
    /// [`RegistryStore::register`].
    Register {
        /// The session id.
        id: &'a str,
        /// The record to store.
        record: &'a SessionRecord,
        /// Its time to live.
        ttl: Duration,
    },
    /// [`RegistryStore::remove`].
    Remove {
        /// The session id.
        id: &'a str,
    },
    /// [`RegistryStore::remove_if_owned`].
    RemoveIfOwned {
        /// The session id.
        id: &'a str,
        /// The node that must own the record.
        node: &'a str,
        /// The incarnation that must own the record.
        incarnation: &'a str,
    },
    /// [`RegistryStore::refresh`].
    Refresh {
        /// The session id.
        id: &'a str,
        /// The new time to live.
        ttl: Duration,
    },
}

impl StoreWrite<'_> {
    /// The session id the write is about.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::store::StoreWrite;
    ///
    /// assert_eq!(StoreWrite::Remove { id: "s1" }.id(), "s1");
    /// ```
    #[must_use]
    pub fn id(&self) -> &str {
        match *self {
            Self::Register { id, .. }
            | Self::Remove { id }
            | Self::RemoveIfOwned { id, .. }
            | Self::Refresh { id, .. } => id,
        }
    }

    /// Applies this write alone, with the store's single-write method, and returns what that
    /// method returns.
    ///
    /// # Errors
    ///
    /// The method's [`StoreError`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, store::StoreWrite};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let refresh = StoreWrite::Refresh { id: "unknown", ttl: Duration::from_secs(60) };
    /// assert!(!refresh.apply(&store).await?, "no record to refresh");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply<S: RegistryStore + ?Sized>(&self, store: &S) -> Result<bool, StoreError> {
        match *self {
            Self::Register { id, record, ttl } => store.register(id, record, ttl).await,
            Self::Remove { id } => store.remove(id).await,
            Self::RemoveIfOwned {
                id,
                node,
                incarnation,
            } => store.remove_if_owned(id, node, incarnation).await,
            Self::Refresh { id, ttl } => store.refresh(id, ttl).await,
        }
    }
}

/// The positions of `ids`, grouped by id: one group per distinct id, in order of first
/// appearance, each in order. Writes on one session are applied group by group.
pub(crate) fn group_by_id<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_id: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, id) in ids.enumerate() {
        let g = *by_id.entry(id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// Applies `writes` with their single-write methods: the writes on one session one after the
/// other, different sessions concurrently. The default of [`RegistryStore::write_batch`].
pub(crate) async fn write_each<S: RegistryStore + ?Sized>(
    store: &S,
    writes: &[StoreWrite<'_>],
) -> Result<Vec<bool>, StoreError> {
    let mut pending: Vec<_> = group_by_id(writes.iter().map(StoreWrite::id))
        .into_iter()
        .map(|positions| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(positions.len());
                for i in positions {
                    out.push((i, writes[i].apply(store).await?));
                }
                Ok::<_, StoreError>(out)
            })
        })
        .collect();
    let mut results = vec![false; writes.len()];
    let mut failure = None;
    std::future::poll_fn(|cx| {
        pending.retain_mut(|fut| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(Ok(done)) => {
                for (i, r) in done {
                    results[i] = r;
                }
                false
            }
            std::task::Poll::Ready(Err(e)) => {
                failure.get_or_insert(e);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match failure {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

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
}

/// A TTL in whole seconds: rounded up, at least one.
pub(crate) fn ttl_seconds(ttl: Duration) -> u64 {
    let rounded = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    rounded.max(1)
}

/// An error from a [`RegistryStore`].
///
/// Opaque: ask it what happened with the `is_*` methods and walk [`Error::source`] for the
/// cause. The registry layer treats every store error as "registry unavailable" and keeps
/// serving (fail-open) unless configured otherwise.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::StoreError;
///
/// let err = StoreError::timeout();
/// assert!(err.is_timeout());
/// assert_eq!(err.to_string(), "registry store timed out");
///
/// let err = StoreError::unavailable(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(err.is_unavailable());
/// assert!(std::error::Error::source(&err).is_some());
/// ```
pub struct StoreError {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Timeout,
    Unavailable,
    Backend,
    InvalidRecord,
    Config,
}

impl StoreError {
    fn with(kind: Kind, source: Option<BoxError>) -> Self {
        Self { kind, source }
    }

    /// The store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::timeout().is_timeout());
    /// ```
    #[must_use]
    pub fn timeout() -> Self {
        Self::with(Kind::Timeout, None)
    }

    /// The store cannot be reached: connection refused or dropped, not connected yet, cluster
    /// down.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::unavailable("connection refused").is_unavailable());
    /// ```
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Unavailable, Some(source.into()))
    }

    /// The store answered with an error, or failed in some other way.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// let err = StoreError::backend("WRONGTYPE");
    /// assert!(!err.is_timeout() && !err.is_unavailable());
    /// ```
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Backend, Some(source.into()))
    }

    /// The store holds something under the session's key that is not a [`SessionRecord`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::invalid_record("truncated").is_invalid_record());
    /// ```
    pub fn invalid_record(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::InvalidRecord, Some(source.into()))
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn config(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Config, Some(source.into()))
    }

    /// Whether the store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::timeout().is_timeout());
    /// assert!(!StoreError::unavailable("down").is_timeout());
    /// ```
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Whether the store could not be reached.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::unavailable("down").is_unavailable());
    /// assert!(!StoreError::timeout().is_unavailable());
    /// ```
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// Whether the stored value is not a valid [`SessionRecord`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// assert!(SessionRecord::from_json("{}").unwrap_err().is_invalid_record());
    /// ```
    #[must_use]
    pub fn is_invalid_record(&self) -> bool {
        self.kind == Kind::InvalidRecord
    }

    /// Whether the store was configured wrongly (a bad URL or prefix, no Tokio runtime). Such
    /// errors come from building a store, never from a later call.
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(feature = "redis")] {
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let err = RedisStore::builder("redis://127.0.0.1:1/")
    ///     .with_prefix("bad{prefix}:")
    ///     .build_lazy()
    ///     .unwrap_err();
    /// assert!(err.is_config());
    /// # }
    /// ```
    #[must_use]
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoreError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Timeout => "registry store timed out",
            Kind::Unavailable => "registry store unavailable",
            Kind::Backend => "registry store failed",
            Kind::InvalidRecord => "invalid session record",
            Kind::Config => "invalid registry store configuration",
        })
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
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

    #[test]
    fn record_json_is_compact_and_tolerant() {
        let record = SessionRecord::new("n", "i").with_created_at(7);
        assert_eq!(record.to_json(), r#"{"n":"n","i":"i","c":7}"#);
        let parsed = SessionRecord::from_json(r#"{"c":7,"i":"i","n":"n","x":[1]}"#);
        assert_eq!(parsed.ok(), Some(record));
        assert!(SessionRecord::from_json(r#"{"n":"n"}"#).is_err());
        assert!(SessionRecord::from_json(r#"{"n":1,"i":"i","c":7}"#).is_err());
    }

    #[test]
    fn error_display_and_source() {
        let err = StoreError::backend(std::io::Error::other("boom"));
        assert_eq!(err.to_string(), "registry store failed");
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("boom")
        );
        assert!(StoreError::timeout().source().is_none());
        assert_eq!(
            StoreError::config("x").to_string(),
            "invalid registry store configuration"
        );
        assert!(StoreError::config("x").is_config());
    }

    #[test]
    fn keys_never_collide() {
        let keys = RecordKey::default();
        assert_ne!(keys.session("node:{a}"), keys.node_index("a"));
        assert_ne!(keys.session("live:{a}"), keys.liveness("a"));
        assert_ne!(keys.liveness("a"), keys.node_index("a"));
        assert_ne!(keys.session("nodes"), keys.node_set());
        assert!(keys.liveness("x").starts_with("mcp:session:live:{"));
        assert!(keys.session("x").starts_with("mcp:session:{"));
    }
}
