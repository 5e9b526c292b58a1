//! Counters of one node's bus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::metrics;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) published: AtomicU64,
    pub(super) publish_failed: AtomicU64,
    pub(super) backlogged: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) dropped_malformed: AtomicU64,
    pub(super) dropped_oversized: AtomicU64,
    pub(super) dropped_unknown_session: AtomicU64,
    pub(super) dropped_overflow: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) connected: AtomicBool,
}

/// Why a received message was dropped (the metric's `reason`).
pub(super) use metrics::BusDrop as DropReason;

impl Counters {
    pub(super) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn dropped(&self, why: DropReason, n: u64) {
        let c = match why {
            DropReason::Malformed => &self.dropped_malformed,
            DropReason::Oversized => &self.dropped_oversized,
            DropReason::UnknownSession => &self.dropped_unknown_session,
            DropReason::Overflow => &self.dropped_overflow,
        };
        Self::bump(c, n);
        metrics::bus_dropped(why, n);
    }

    pub(super) fn snapshot(&self) -> BusStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            published: r(&self.published),
            publish_failed: r(&self.publish_failed),
            backlogged: r(&self.backlogged),
            received: r(&self.received),
            delivered: r(&self.delivered),
            dropped_malformed: r(&self.dropped_malformed),
            dropped_oversized: r(&self.dropped_oversized),
            dropped_unknown_session: r(&self.dropped_unknown_session),
            dropped_overflow: r(&self.dropped_overflow),
            disconnects: r(&self.disconnects),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of one node's bus counters
/// ([`ClusterBus::stats`](super::ClusterBus::stats)). Counters only grow.
///
/// # Example
///
/// ```
/// let bus = mcp_affinity::bus::ClusterBus::local("n1");
/// let stats = bus.stats();
/// assert_eq!(stats.published, 0);
/// assert!(stats.connected);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Messages handed to the backend (a Redis batch counts each message).
    pub published: u64,
    /// Messages the backend failed to send (Redis down): lost for other nodes.
    pub publish_failed: u64,
    /// Messages refused because the outgoing queue was full (Redis slow or down).
    pub backlogged: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Deliveries to this node's sessions (one per session reached) and replies completed.
    pub delivered: u64,
    /// Received messages that did not parse, or of another wire version.
    pub dropped_malformed: u64,
    /// Received messages over the configured size bound.
    pub dropped_oversized: u64,
    /// Per-session messages for a session this node does not hold (every other node counts
    /// the one its owner delivers).
    pub dropped_unknown_session: u64,
    /// Received messages dropped because this node's incoming queue was full (it fell
    /// behind), never blocking the connection or other nodes.
    pub dropped_overflow: u64,
    /// Times the subscription's connection was lost (it reconnects and resubscribes).
    pub disconnects: u64,
    /// Whether the node is subscribed now (always true for the local and in-process buses).
    pub connected: bool,
}
