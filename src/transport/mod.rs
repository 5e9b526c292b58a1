//! The MCP Streamable HTTP transport: sessions (legacy era) and stateless requests (modern
//! era) on one endpoint, in front of a JSON-RPC handler.
//!
//! # The handler contract
//!
//! The inner service receives **one** client JSON-RPC request or notification per call, as an
//! `http::Request<`[`RequestBody`]`>` whose extensions hold the parsed
//! [`Message`](crate::protocol::Message), a [`RequestContext`](crate::session::RequestContext)
//! and, in the legacy era, the [`Session`](crate::session::Session). It answers with an HTTP
//! response whose body is the JSON-RPC response (`application/json`). Client JSON-RPC
//! *responses* (answers to server→client requests) are consumed by the transport.
//!
//! The transport chooses the wire form: plain JSON when the handler streamed nothing before
//! its result, otherwise an SSE stream (priming event on `2025-11-25`, the related messages,
//! the response, end).
//!
//! | request | legacy era (≤ `2025-11-25`) | modern era (`2026-07-28`) |
//! |---|---|---|
//! | `POST initialize` | creates a session, `Mcp-Session-Id` on success | `404`/`-32601` |
//! | `POST` other | needs `Mcp-Session-Id` (`400` without, `404` unknown) | stateless, headers validated |
//! | `GET` | standalone stream, `Last-Event-ID` resumption, `409` for a second (a `GET` whose `Last-Event-ID` names the standalone stream replaces it: the old one ends, the new one replays from the id) | `405` |
//! | `DELETE` | closes the session | `405` |
//! | any, for a session this node does not hold, with a [`RestoreSession`](crate::session::RestoreSession) for its id (put there by the session registry) | the session is restored, then the request served (see [`with_on_restore`](SseTransportBuilder::with_on_restore)) | — |
//! | any, with a repeated singleton header (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Last-Event-ID`, `Host`, `Origin`, `Content-Type`) | `400`/`-32600` | `400`/`-32020` |
//!
//! # Sessions that outlive their node
//!
//! A session another node created (or a previous process of this one) is *restored* here when
//! the session registry has taken it over: the request carries a
//! [`RestoreSession`](crate::session::RestoreSession), the transport rebuilds the session from
//! it (the principal binding checked), runs the
//! [restore hook](SseTransportBuilder::with_on_restore) and marks the handler's request with
//! [`SessionRestored`](crate::session::SessionRestored). A node leaving the cluster
//! [drains](TransportHandle::drain) first: it mints and restores no more sessions, ends its
//! standalone streams with a `retry:` hint so their clients reconnect elsewhere, and keeps
//! serving the requests of its sessions until it [shuts down](TransportHandle::shutdown).
//!
//! # Example
//!
//! ```
//! use mcp_affinity::{handler::handler_fn, SseTransportLayer};
//! use serde_json::json;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(SseTransportLayer::new())
//!     .service(handler_fn(|req, _cx| async move {
//!         match req.method.as_str() {
//!             "initialize" => Ok(json!({
//!                 "protocolVersion": "2025-11-25",
//!                 "capabilities": {},
//!                 "serverInfo": {"name": "demo", "version": "1"}
//!             })),
//!             _ => Ok(json!({})),
//!         }
//!     }));
//!
//! let req = http::Request::post("http://localhost/mcp")
//!     .header("host", "localhost")
//!     .header("accept", "application/json, text/event-stream")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(
//!         r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
//!     )))?;
//! let res = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! assert_eq!(res.status(), 200);
//! assert!(res.headers().contains_key("mcp-session-id"));
//! # Ok(())
//! # }
//! ```

mod answer;
mod batch;
mod body;
mod config;
mod delete;
mod future;
mod get;
mod initialize;
mod layer;
mod limit;
pub(crate) mod log;
mod lookup;
mod negotiate;
mod post;
mod post_legacy;
mod post_modern;
mod read;
mod request_body;
mod restore;
mod run;
mod security;
mod service;

pub use body::ResponseBody;
#[cfg(feature = "__fuzz")]
pub(crate) use body::{encode_event, parse_event_id};
pub use config::{ConfigError, HostPolicy, OriginPolicy, PrincipalExtractor};
pub use future::ResponseFuture;
pub use layer::{SseTransportBuilder, SseTransportLayer, TransportHandle};
pub use request_body::RequestBody;
pub use service::SseTransport;
