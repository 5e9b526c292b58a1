//! The MCP Streamable HTTP transport: sessions (legacy era) and stateless requests (modern
//! era) on one endpoint, in front of a JSON-RPC handler.
//!
#![doc = include_str!("../../docs/transport.md")]

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
