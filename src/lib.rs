//! Tower layers that run an MCP (Model Context Protocol) server on a cluster of nodes behind
//! a load balancer — for both protocol eras on one endpoint.
//!
//! ```text
//! request ─► SessionAffinityLayer ─► RedisSessionRegistryLayer ─► SseTransportLayer ─► handler
//!            scope /mcp, cookie,      register on initialize,       sessions, SSE,       one JSON-RPC
//!            node tag, misroute hint  404 enrichment, cleanup       DELETE, resumption   message per call
//! ```
//!
//! Legacy clients (MCP ≤ `2025-11-25`) get sessions whose in-process state (streams, pending
//! server requests, worker tasks) lives on one node, so they are pinned to it; modern
//! (`2026-07-28`) requests are stateless and pass through.
//!
//! - [`transport`]: [`SseTransportLayer`], the Streamable HTTP transport.
//! - [`session`]: session ids, the [`Session`](session::Session) handle, the per-request
//!   [`RequestContext`](session::RequestContext).
//! - [`protocol`]: header names, eras, JSON-RPC parsing and error bodies.
//! - [`registry`]: [`SessionRegistryLayer`] / `RedisSessionRegistryLayer`, the cluster-wide
//!   session registry.
//! - [`handler`]: [`handler_fn`](handler::handler_fn), an async closure as the inner service.
//!
//! # Order
//!
//! Layers added first see the request first: affinity, then the registry, then the transport.
//!
//! # Example
//!
//! ```
//! use mcp_affinity::{handler::handler_fn, SseTransportLayer};
//! use serde_json::json;
//!
//! let service = tower::ServiceBuilder::new()
//!     .layer(SseTransportLayer::new())
//!     .service(handler_fn(|_req, _cx| async { Ok(json!({})) }));
//! # let _ = service;
//! ```
// docs.rs (a nightly rustdoc) passes `--cfg nightly_doc_cfg` (Cargo.toml,
// `[package.metadata.docs.rs]`), which shows each item's feature requirement; `--cfg docsrs`
// alone enables nothing, so the docs also build with it on stable.
#![cfg_attr(nightly_doc_cfg, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod full_body;
mod macros;
mod throttle;

pub mod affinity;
pub mod handler;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod transport;

pub use affinity::{SessionAffinity, SessionAffinityLayer};
#[cfg(feature = "redis")]
pub use registry::RedisSessionRegistryLayer;
pub use registry::{SessionRegistry, SessionRegistryLayer};
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
