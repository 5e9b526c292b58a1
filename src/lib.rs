//! Tower layers that run an MCP (Model Context Protocol) server on a cluster of nodes behind
//! a load balancer — for both protocol eras on one endpoint.
//!
#![doc = include_str!("../docs/overview.md")]
// docs.rs (a nightly rustdoc) passes `--cfg nightly_doc_cfg` (Cargo.toml,
// `[package.metadata.docs.rs]`), which shows each item's feature requirement; `--cfg docsrs`
// alone enables nothing, so the docs also build with it on stable.
#![cfg_attr(nightly_doc_cfg, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod full_body;
mod macros;
#[cfg(feature = "redis")]
mod redis_conn;
mod throttle;

pub mod affinity;
pub mod bus;
pub mod config;
pub mod handler;
#[doc = include_str!("../docs/metrics.md")]
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod stack;
pub mod tasks;
pub mod transport;

pub use affinity::{SessionAffinity, SessionAffinityLayer};
pub use config::ConfigError;
#[cfg(feature = "redis")]
pub use registry::RedisSessionRegistryLayer;
pub use registry::{SessionRegistry, SessionRegistryLayer};
pub use stack::{McpStack, StackHandle};
pub use transport::{SseTransport, SseTransportLayer};

/// Boxed error used at body and generic boundaries.
///
/// # Example
///
/// ```
/// use mcp_affinity::BoxError;
///
/// let e: BoxError = std::io::Error::other("boom").into();
/// assert_eq!(e.to_string(), "boom");
/// assert!(e.downcast_ref::<std::io::Error>().is_some());
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Internals the fuzz targets in `fuzz/` reach directly (feature `__fuzz`). Not part of the
/// API: no stability promise, may change in any release.
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod __fuzz {
    use bytes::Bytes;

    /// The SSE encoding of one `message` event carrying `data`, with the event id
    /// `<stream>-<seq>` when `id` is given.
    pub fn encode_event(id: Option<(u32, u32)>, data: &[u8]) -> Bytes {
        crate::transport::encode_event(id, data)
    }

    /// Parses an SSE event id (`<stream>-<seq>`), as `Last-Event-ID` is read.
    pub fn parse_event_id(s: &str) -> Option<(u32, u32)> {
        crate::transport::parse_event_id(s)
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
