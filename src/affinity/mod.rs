//! Load-balancer affinity for MCP sessions: the sticky cookie of ADR-0066, this node's tag in
//! session ids, and early misroute detection.
//!
#![doc = include_str!("../../docs/affinity.md")]

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
