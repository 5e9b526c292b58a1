//! The cluster bus: notifications, server→client requests and the change feed, for sessions
//! on any node.
//!
#![doc = include_str!("../../docs/bus.md")]

mod change;
mod cluster;
mod filter;
mod memory;
mod message;
#[cfg(feature = "redis")]
mod redis;
mod stats;

pub use change::Change;
pub use cluster::{
    BusError, ClusterBus, ClusterBusBuilder, DEFAULT_BUS_QUEUE, DEFAULT_BUS_REQUEST_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, Delivery,
};
pub use filter::SessionFilter;
pub use memory::{MEMORY_BUS_CAPACITY, MemoryBus};
pub use stats::BusStats;
