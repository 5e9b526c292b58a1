//! The cluster-wide session registry (ADR-0066): which legacy sessions exist and which node
//! holds them, so a request that reaches the wrong node gets a useful `404`, and records are
//! cleaned up on every close.
//!
//! What it does, reading only HTTP:
//!
//! - **Register.** A successful response that mints an `Mcp-Session-Id` (a legacy
//!   `initialize`) writes `mcp:session:{<id>}` = `{"n":<node>,"i":<incarnation>,"c":<unix s>}`
//!   with a 30-day TTL (`SET … NX EX`), in the background (fail-open) or before answering
//!   (fail-closed). Long-lived sessions get the TTL refreshed once half of it has passed.
//! - **Happy path.** A request for a session this node holds never touches the store.
//! - **Misroutes.** When the inner service answers `404` for a session id, the registry looks
//!   the id up: owned by another node → *misrouted* (`warn!` with owner and here), owned by this
//!   node's previous process → *node restarted*, absent → *unknown*. The lookups are bounded:
//!   an id the store did not know a moment ago is answered from a small cache, and over a
//!   rate ([`with_lookup_rate`](SessionRegistryBuilder::with_lookup_rate)) the answer is
//!   *unknown* without asking, so a flood of random ids costs the store little. All three are `404` with a
//!   JSON-RPC error (`-32001`, `data.reason`) telling the client to re-initialize; the
//!   [`SessionLookup`] response extension and the counters tell them apart. The body never
//!   names another node.
//! - **Cleanup.** `DELETE` removes the record whatever the inner service answered (the session
//!   may live on another node or in a previous process), once it answered — unless it refused
//!   the request for who sent it (a bad `Origin` or `Host`, another principal: a
//!   [`Refusal`](crate::protocol::Refusal), or a `401`/`403`/`421`), which removes nothing; a
//!   client hanging up before the answer still gets the record removed. Every other close of a session of
//!   this crate's transport (idle expiry, shutdown, [`Session::close`](crate::session::Session::close))
//!   removes it if this node still owns it (compare-and-delete). Writes go through ordered,
//!   bounded queues retried with backoff and jitter, so they survive a client hanging up and a
//!   store outage; [`RegistryHandle::flush`] drains them on shutdown. Over an inner service
//!   of its own (rmcp), which ends sessions without telling, the registry learns the end from
//!   the inner service's `404` for a session it registered (record removed, no lookup) or
//!   drops a session after an idle bound without requests
//!   ([`with_idle_timeout`](SessionRegistryBuilder::with_idle_timeout), default 1 hour). With
//!   continuity off, a node that restarts under the same name removes its previous process's
//!   records shortly after start.
//! - **Continuity** (on by default, [`with_continuity`](SessionRegistryBuilder::with_continuity)).
//!   Records also carry what restores a session elsewhere (protocol version, client info and
//!   capabilities, the principal's digest), and each node keeps a short-TTL liveness record
//!   ([`NodeRecord`]). A request for a session this node does not hold — its local view of
//!   held sessions says so, without the store — looks the record up, then the owner's
//!   liveness: a live, serving owner gets the request **forwarded** (feature `forward`; one
//!   hop at most, marked `Mcp-Forwarded-By`, the answer streamed back and marked
//!   [`Forwarded`](crate::session::Forwarded)); a gone, draining or restarted owner has the
//!   session **adopted** here ([`RegistryStore::claim`], a compare-and-set on owner and
//!   incarnation; the transport restores the session from a
//!   [`RestoreSession`](crate::session::RestoreSession)). On shutdown the records stay for the
//!   adopters ([`RegistryHandle::drain`], [`RegistryHandle::leave`]); records nobody claims are
//!   removed once the idle timeout has passed, by their node's next process or, for a node
//!   gone for good, by any live node.
//! - **Store down.** Existing sessions are unaffected, new ones are served (fail-open), the
//!   `404` path answers *unknown*. A store error never becomes a `500`.
//! - **Modern era.** `2026-07-28` requests pass through untouched.
//! - **Repeated headers.** A request with two `Mcp-Session-Id` or `MCP-Protocol-Version`
//!   headers is answered `400` with a JSON-RPC error before anything is read or removed (a
//!   balancer in front may have read the other copy); the inner service is not called.
//!
//! Stores: [`MemoryStore`] (embedded default: one process, several nodes may share it) and,
//! with the `redis` feature (on by default), [`RedisStore`] (single server or Redis Cluster
//! with `redis-cluster`).
//!
//! Over rmcp's `StreamableHttpService`, the feature `rmcp` adds `RmcpSessionStore`: the
//! registry's records as rmcp's session store, so the node that adopts a session has rmcp
//! restore it from the record.
//!
//! # Example
//!
//! ```
//! use mcp_affinity::{handler::handler_fn, registry::{MemoryStore, SessionRegistryLayer}, SseTransportLayer};
//! use serde_json::json;
//!
//! let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
//! let service = tower::ServiceBuilder::new()
//!     .layer(registry)
//!     .layer(SseTransportLayer::new())
//!     .service(handler_fn(|_req, _cx| async { Ok(json!({})) }));
//! # let _ = service;
//! ```
//!
//! With Redis:
//!
//! ```no_run
//! use std::time::Duration;
//! use mcp_affinity::registry::{RedisSessionRegistryLayer, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .with_command_timeout(Duration::from_millis(200))
//!     .build_lazy()?;
//! let registry: RedisSessionRegistryLayer = RedisSessionRegistryLayer::builder(store, "node-a")
//!     .with_ttl(Duration::from_secs(7 * 24 * 3600))
//!     .build()?;
//! # let _ = registry;
//! # Ok(())
//! # }
//! ```

mod body;
mod continuity;
#[cfg(feature = "forward")]
mod forward;
mod future;
mod handoff;
mod layer;
mod limit;
mod queue;
#[cfg(feature = "rmcp")]
mod rmcp_store;
mod service;
mod stats;
pub mod store;

pub use body::ResponseBody;
pub use future::{ResponseFuture, SessionLookup};
pub use layer::{
    ConfigError, DEFAULT_IDLE_TIMEOUT, DEFAULT_LIVENESS, DEFAULT_LOOKUP_RATE,
    DEFAULT_NEGATIVE_CACHE, DEFAULT_TTL, RegistryHandle, SessionRegistryBuilder,
    SessionRegistryLayer,
};
#[cfg(feature = "rmcp")]
pub use rmcp_store::RmcpSessionStore;
pub use service::SessionRegistry;
pub use stats::RegistryStats;
pub use store::{
    Claim, MemoryStore, NodeRecord, NodeState, Ownership, RecordKey, RegistryStore, SessionRecord,
    StoreError,
};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};

/// The Redis-backed registry layer named by ADR-0066.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mcp_affinity::registry::{RedisSessionRegistryLayer, RedisStore};
///
/// // `build_lazy` connects on first use, so no Redis server is needed here.
/// let store = RedisStore::builder("redis://127.0.0.1:6379").build_lazy()?;
/// let registry = RedisSessionRegistryLayer::new(store, "node-a")?;
/// assert_eq!(registry.handle().node(), "node-a");
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "redis")]
pub type RedisSessionRegistryLayer = SessionRegistryLayer<RedisStore>;
