//! The cluster-wide session registry (ADR-0066): which legacy sessions exist and which node
//! holds them, so a request that reaches the wrong node gets a useful `404`, and records are
//! cleaned up on every close.
//!
#![doc = include_str!("../../docs/registry.md")]

mod body;
mod continuity;
mod events;
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
pub use events::RegistryEventSink;
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
