//! Load-balancer affinity for MCP sessions: the sticky cookie of ADR-0066, this node's tag in
//! session ids, and early misroute detection.
//!
//! A legacy-era MCP session (revisions up to `2025-11-25`) lives in one process, so every
//! request of the session must reach the node that created it. [`SessionAffinityLayer`] gives
//! a load balancer two keys to pin on:
//!
//! - **The cookie** `_mcp_backend=<tag>; Path=/mcp; HttpOnly; Secure; SameSite=Strict`, for
//!   balancers that route on a cookie (Traefik, HAProxy `cookie`, nginx `sticky route`) and
//!   clients that keep cookies (browsers). Many MCP clients keep none.
//! - **The session id** `<tag>.<random>`, which every legacy client echoes in
//!   `Mcp-Session-Id`; balancers that learn the header from the `initialize` response (HAProxy
//!   `stick store-response`, nginx `sticky learn`, Envoy) keep cookie-less clients pinned, and
//!   any node can tell from an id which node owns it. The transport mints such ids with
//!   [`SessionAffinityLayer::id_generator`]; for an inner service that mints its own ids (rmcp)
//!   the layer wraps them in an envelope ([`with_envelope`](SessionAffinityBuilder::with_envelope)).
//!
//! The tag is opaque: [`NodeTag::derive`](crate::session::NodeTag::derive) turns a node name
//! into 8 hex digits, so no hostname or address reaches clients.
//!
//! # What happens to a request
//!
//! | request | treatment |
//! |---|---|
//! | path outside the scope (default `/mcp`: `/mcp` and `/mcp/…`, not `/mcpx`) | untouched, no cookie |
//! | in scope, with a repeated `Mcp-Session-Id` or `MCP-Protocol-Version` header | `400` with a JSON-RPC error (`-32600`, or `-32020` when a copy names the modern era), inner not called, no cookie |
//! | `POST` with `MCP-Protocol-Version` ≥ `2026-07-28` (modern era, stateless) | untouched, no cookie |
//! | anything else in scope (legacy era) | the cookie unless the request carries this node's; the envelope in envelope mode; misroute detection |
//!
//! Misroute detection, for a legacy request in scope:
//!
//! | `Mcp-Session-Id` | cookie | result |
//! |---|---|---|
//! | absent (an `initialize`) | any | served; no misroute |
//! | this node's tag | any | served (stripped to the inner id in envelope mode); a stale cookie is replaced |
//! | another node's tag | any | [`Misroute`] of kind [`SessionId`](MisrouteKind::SessionId) |
//! | no tag | another node's | [`Misroute`] of kind [`Cookie`](MisrouteKind::Cookie) |
//!
//! A misrouted request gets a [`Misroute`] in its extensions and a `debug` log line (owner and
//! here tags; never the id or the cookie), and is passed on: the session registry and the
//! transport answer `404` and the client re-initializes, on whichever node the balancer picks,
//! and gets that node's cookie. In [strict mode](SessionAffinityBuilder::with_strict) a
//! session-id misroute is answered `404` at once.
//!
//! Cookies are read following RFC 6265 §4.2.1 and never trusted: a value that is not a valid node
//! tag, or a `Cookie` header line over 4096 bytes, is ignored and counted
//! ([`AffinityStats`]); incoming cookies are never echoed. Several affinity cookies (one per
//! matching `Path`, or split over HTTP/2 lines) count only when they name the same node: when
//! they disagree, a balancer may have followed any of them, so they confirm no node (no cookie
//! misroute) and the node's cookie is set again.
//!
//! # Example
//!
//! The defaults, over any inner service:
//!
//! ```
//! use mcp_affinity::SessionAffinityLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let affinity = SessionAffinityLayer::for_node("node-a");
//! let tag = affinity.tag().clone();
//! let svc = ServiceBuilder::new()
//!     .layer(affinity)
//!     .service(tower::service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
//!     }));
//!
//! let req = http::Request::post("/mcp").body(String::new())?;
//! let res = svc.clone().oneshot(req).await?;
//! assert_eq!(
//!     res.headers()["set-cookie"],
//!     format!("_mcp_backend={tag}; Path=/mcp; HttpOnly; Secure; SameSite=Strict").as_str()
//! );
//!
//! // Other paths are not touched.
//! let res = svc.oneshot(http::Request::post("/graphql").body(String::new())?).await?;
//! assert!(!res.headers().contains_key("set-cookie"));
//! # Ok(())
//! # }
//! ```
//!
//! Customized: an inner service that mints its own session ids (as rmcp does) behind an
//! envelope, a renamed cookie, strict mode:
//!
//! ```
//! use mcp_affinity::{SessionAffinityLayer, affinity::SameSite, session::NodeTag};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let affinity = SessionAffinityLayer::builder(NodeTag::new("n1")?)
//!     .with_scope("/api/mcp")
//!     .with_cookie_name("mcp_node")
//!     .with_cookie_same_site(SameSite::Lax)
//!     .with_envelope(true)
//!     .with_strict(true)
//!     .build()?;
//! let stats = affinity.stats();
//! let svc = ServiceBuilder::new()
//!     .layer(affinity)
//!     .service(tower::service_fn(|req: http::Request<String>| async move {
//!         // The inner service only ever sees its own ids.
//!         let seen = req.headers().get("mcp-session-id").cloned();
//!         let mut res = http::Response::new(String::from("{}"));
//!         res.headers_mut()
//!             .insert("mcp-session-id", seen.unwrap_or_else(|| "1234-abcd".parse().unwrap()));
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//!
//! // `initialize` (no session id): the inner id comes back enveloped.
//! let res = svc.clone().oneshot(http::Request::post("/api/mcp").body(String::new())?).await?;
//! assert_eq!(res.headers()["mcp-session-id"], "n1.1234-abcd");
//! assert!(res.headers()["set-cookie"].to_str()?.starts_with("mcp_node=n1; Path=/api/mcp;"));
//!
//! // A follow-up: the inner service sees (and echoes) `1234-abcd`.
//! let req = http::Request::post("/api/mcp")
//!     .header("mcp-session-id", "n1.1234-abcd")
//!     .header("cookie", "mcp_node=n1")
//!     .body(String::new())?;
//! let res = svc.clone().oneshot(req).await?;
//! assert_eq!(res.headers()["mcp-session-id"], "n1.1234-abcd");
//! assert!(!res.headers().contains_key("set-cookie"));
//!
//! // Another node's session: 404 at once (strict mode), JSON-RPC error -32001.
//! let req = http::Request::post("/api/mcp")
//!     .header("mcp-session-id", "n2.5678-ef01")
//!     .body(String::new())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 404);
//! assert_eq!(stats.snapshot().strict_rejections, 1);
//! # Ok(())
//! # }
//! ```
//!
//! With this crate's transport, give it the layer's id generator; the ids then carry the tag
//! themselves and need no envelope:
//!
//! ```
//! use mcp_affinity::{SessionAffinityLayer, SseTransportLayer, handler::handler_fn};
//! use serde_json::json;
//!
//! let affinity = SessionAffinityLayer::for_node("node-a");
//! let transport = SseTransportLayer::builder().with_id_generator(affinity.id_generator()).build().unwrap();
//! let svc = tower::ServiceBuilder::new()
//!     .layer(affinity) // outermost
//!     // .layer(registry)
//!     .layer(transport)
//!     .service(handler_fn(|_req, _cx| async { Ok(json!({})) }));
//! # let _ = svc;
//! ```
//!
//! # With axum
//!
//! `Router::route_service` passes the full path, so the default scope works. Under
//! `Router::nest_service("/mcp", ..)` the nested service sees paths with `/mcp` removed: use
//! the scope `/` there and keep the cookie on `/mcp` (or put the layer around the whole router
//! with `Router::layer`, where it sees full paths).
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use mcp_affinity::SessionAffinityLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mcp = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("{}")))
//! });
//! let affinity = SessionAffinityLayer::for_node("node-a");
//!
//! let app = Router::new()
//!     .route_service("/mcp", ServiceBuilder::new().layer(affinity.clone()).service(mcp.clone()))
//!     .route("/graphql", get(|| async { "round-robin" }));
//! let res = app.clone().oneshot(http::Request::post("/mcp").body(Body::empty())?).await?;
//! assert!(res.headers().contains_key("set-cookie"));
//! let res = app.oneshot(http::Request::get("/graphql").body(Body::empty())?).await?;
//! assert!(!res.headers().contains_key("set-cookie"));
//!
//! // Nested: the inner service sees `/`, the browser must still send the cookie to `/mcp`.
//! let nested = SessionAffinityLayer::builder(affinity.tag().clone())
//!     .with_scope("/")
//!     .with_cookie_path("/mcp")
//!     .build()?;
//! let app = Router::new().nest_service("/mcp", ServiceBuilder::new().layer(nested).service(mcp));
//! let res = app.oneshot(http::Request::post("/mcp").body(Body::empty())?).await?;
//! assert!(res.headers()["set-cookie"].to_str()?.contains("; Path=/mcp;"));
//! # Ok(())
//! # }
//! ```
//!
//! # Load balancer recipes
//!
//! HAProxy, pinning on the session id (works for every legacy client; the stick table must
//! keep whole ids, see [`id_generator`](SessionAffinityLayer::id_generator)):
//!
//! ```text
//! backend mcp
//!     stick-table type string len 64 size 100k expire 30m
//!     stick store-response res.hdr(mcp-session-id)
//!     stick match req.hdr(mcp-session-id)
//!     option redispatch
//! ```
//!
//! HAProxy, routing on the cookie the nodes set (`server n1 … cookie <tag>` per node):
//! `cookie _mcp_backend`. Use `stick match`, not `stick on`: `initialize` carries no id, so
//! `stick on` learns nothing from it.

mod body;
mod config;
mod cookies;
mod future;
mod layer;
mod misroute;
mod service;
mod stats;

pub use body::ResponseBody;
pub use config::{ConfigError, SameSite};
pub use future::ResponseFuture;
pub use layer::SessionAffinityBuilder;
pub use layer::SessionAffinityLayer;
pub use misroute::{Misroute, MisrouteKind};
pub use service::SessionAffinity;
pub use stats::{AffinityStats, AffinityStatsSnapshot};
