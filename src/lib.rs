//! Tower layers that run an MCP (Model Context Protocol) server on a cluster of nodes behind
//! a load balancer — for both protocol eras on one endpoint.
//!
//! ```text
//! request ─► SessionAffinityLayer ─► SessionRegistryLayer ─► SseTransportLayer ─► handler
//!            scope /mcp, cookie,      register on initialize,  sessions, SSE,      one JSON-RPC
//!            node tag, misroute hint  forward, adopt, cleanup  DELETE, resumption  message per call
//!            └───────────── McpStack::builder(node, store): all three, wired ─────────────┘
//! ```
//!
//! Legacy clients (MCP ≤ `2025-11-25`) get sessions whose in-process state (streams, pending
//! server requests, worker tasks) lives on one node, so they are pinned to it, and followed
//! to another node when theirs goes away; modern (`2026-07-28`) requests are stateless and
//! pass through.
//!
//! - [`stack`]: [`McpStack`], the three layers built and wired in one call, and the
//!   [`StackHandle`] that drains and stops a node in order.
//! - [`transport`]: [`SseTransportLayer`], the Streamable HTTP transport.
//! - [`registry`]: [`SessionRegistryLayer`] / `RedisSessionRegistryLayer`, the cluster-wide
//!   session registry: forwarding, adoption, cleanup.
//! - [`affinity`]: [`SessionAffinityLayer`], the sticky cookie and the node tag in session ids.
//! - [`session`]: session ids, the [`Session`](session::Session) handle, the per-request
//!   [`RequestContext`](session::RequestContext).
//! - [`protocol`]: header names, eras, JSON-RPC parsing, error bodies and
//!   [`Rejection`](protocol::Rejection)s.
//! - [`config`]: the one [`ConfigError`] every builder reports.
//! - [`handler`]: [`handler_fn`](handler::handler_fn), an async closure as the inner service.
//! - [`metrics`]: the names, types and labels of the metrics the layers emit through the
//!   `metrics` crate facade (feature `metrics`, on by default).
//!
//! # The whole stack
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use mcp_affinity::{McpStack, handler::handler_fn, registry::MemoryStore};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! // `RedisStore::builder("redis://…").build_lazy()?` for a real cluster.
//! let stack = McpStack::builder("node-a", MemoryStore::new())
//!     .with_internal_address("127.0.0.1:8080".parse()?) // where other nodes forward to
//!     .build()?;
//! let handle = stack.handle();
//! let mcp = tower::ServiceBuilder::new()
//!     .layer(stack)
//!     .service(handler_fn(|req, _cx| async move {
//!         Ok(match req.method.as_str() {
//!             "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {},
//!                                    "serverInfo": {"name": "demo", "version": "1"}}),
//!             _ => json!({}),
//!         })
//!     }));
//!
//! let init = http::Request::post("/mcp")
//!     .header("host", "localhost")
//!     .header("accept", "application/json, text/event-stream")
//!     .header("content-type", "application/json")
//!     .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#.to_owned())?;
//! let res = mcp.oneshot(init).await?;
//! assert_eq!(res.status(), 200);
//! assert!(res.headers()["mcp-session-id"].to_str()?.starts_with(handle.tag().as_str()));
//!
//! // SIGTERM: drain (the cluster adopts this node's sessions, `/healthz` reads
//! // `handle.is_draining()`), let running requests finish, close, flush, leave.
//! let report = handle.shutdown(Duration::from_secs(10)).await;
//! assert_eq!(report.closed, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Each layer also stands alone, over other MCP services (the registry and the affinity layer
//! read only HTTP, so they also work over rmcp's `StreamableHttpService`):
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
//!
//! # Configuration
//!
//! Every layer is configured the same way: a constructor with what it requires
//! (`SseTransportLayer::builder()`, `SessionRegistryLayer::builder(store, node)`,
//! `SessionAffinityLayer::builder(tag)`, `McpStack::builder(node, store)`), `with_*` setters,
//! and a `build()` that validates every value. An invalid value is a [`ConfigError`] naming
//! the layer, the setting and why — never a silent default or a clamp. `new(..)` gives the
//! defaults.
//!
//! # Order
//!
//! Layers added first see the request first: affinity, then the registry, then the transport
//! ([`McpStack`] builds them so). Affinity must see the client's session id and the final
//! response (its cookie and envelope have the last word); the registry must sit right above
//! the transport to pass it a session to restore and read back the one it restored.
//!
//! # Extensions
//!
//! The layers meet through HTTP and through typed extensions defined in [`session`],
//! [`protocol`] and [`affinity`]; none reads another's internals. What each layer writes and
//! reads:
//!
//! | extension | on | written by | read by |
//! |---|---|---|---|
//! | [`SessionIdEnvelope`](session::SessionIdEnvelope) | request | affinity (envelope mode: the id the client uses) | registry (removes it; keys records by it) |
//! | [`Misroute`](affinity::Misroute) | request, response | affinity (cookie or tag names another node) | your handler, outer layers (logs) |
//! | [`RestoreSession`](session::RestoreSession) | request | registry (adopting a session) | transport (restores it) |
//! | [`SessionRestored`](session::SessionRestored) | request | transport (the request that restored its session) | your handler |
//! | [`Message`](protocol::Message), [`RequestContext`](session::RequestContext), [`Session`](session::Session) | request | transport | your handler ([`handler_fn`](handler::handler_fn) reads them) |
//! | [`Session`](session::Session) | response | transport (`initialize`, a restore) | registry (records it, removes the record on every close) |
//! | [`SessionRestored`](session::SessionRestored) | response | registry (an adopting response) | affinity (no second envelope) |
//! | [`Forwarded`](session::Forwarded) | response | registry (answered by the owning node) | affinity (no cookie, no envelope: the owner's) |
//! | [`Rejection`](protocol::Rejection) | response | transport, affinity (strict mode, repeated headers), registry (fail-closed `503`) | outer layers ([`RejectionKind`](protocol::RejectionKind) says why) |
//! | [`Refusal`](protocol::Refusal) | response | transport (`Origin`, `Host`, principal) | registry (a refused request ends no session, removes no record) |
//! | [`SessionLookup`](registry::SessionLookup) | response | registry (its `404`: misrouted, node restarted, unknown) | outer layers (logs) |
//!
//! # Backpressure
//!
//! Every layer's `poll_ready` forwards the handler's readiness; none holds a resource in it.
//! What bounds the work instead:
//!
//! - **Transport**: running request handlers, per node (default 4,096, `503` beyond) and per
//!   session (default 64, `429`), answered at once with `Retry-After`, never queued; sessions
//!   per node (`503` on `initialize`); body size (`413`); a bounded event log per session
//!   (a slow SSE reader loses old events, memory does not grow); handler timeout and session
//!   lifetime. A legacy handler outlives its `POST`, so a `ConcurrencyLimitLayer` in front
//!   does not bound it — the transport's own bounds do.
//! - **Registry**: store writes go to bounded queues drained in the background (a full queue
//!   drops and counts; the record expires by TTL), so a slow Redis never holds a request;
//!   lookups on the `404` path are rate-limited and cached negatively; forwards stream at the
//!   owner's pace.
//! - **Affinity**: nothing to bound; a strict-mode `404` keeps the capacity the inner service
//!   reserved (tower#408).
//!
//! Put `ConcurrencyLimitLayer`/`RateLimitLayer` outside the stack to bound open requests; axum
//! treats every service as always ready.
//!
//! # Cancel safety
//!
//! What happens when a response future or a response body is dropped (the client hung up):
//!
//! - **Affinity**: it holds no state of a request; dropping drops the inner future or body.
//! - **Registry**: a dropped `DELETE` still removes the session's record (queued, as if
//!   answered); a dropped adoption gives back the record it claimed unless the transport
//!   restored the session; queued writes never depend on a request future. Dropping a
//!   forwarded response or body closes the connection to the owner, which sees its client
//!   go away.
//! - **Transport**: a dropped `initialize` discards its half-made session; a dropped restore
//!   lets the requests waiting for it go on. A handler that did not answer at its first poll
//!   runs in its own task: in the legacy era it keeps running when the `POST` is dropped and
//!   its remaining events stay in the session's event log for a `GET` + `Last-Event-ID`
//!   resumption; in the modern era dropping the response (or its SSE body) cancels it. Dropping
//!   a `GET` stream's body leaves the session open; the next `GET` resumes it.
//! - **Stack handle**: dropping [`StackHandle::shutdown`] stops at the step it was in; the
//!   steps taken stay.

// docs.rs (a nightly rustdoc) passes `--cfg nightly_doc_cfg` (Cargo.toml,
// `[package.metadata.docs.rs]`), which shows each item's feature requirement; `--cfg docsrs`
// alone enables nothing, so the docs also build with it on stable.
#![cfg_attr(nightly_doc_cfg, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod full_body;
mod macros;
mod throttle;

pub mod affinity;
pub mod config;
pub mod handler;
#[doc = include_str!("../docs/metrics.md")]
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod stack;
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
