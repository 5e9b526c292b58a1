use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one registry (shared by every clone of the layer).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) registered: AtomicU64,
    pub(crate) removed: AtomicU64,
    pub(crate) refreshed: AtomicU64,
    pub(crate) misroutes: AtomicU64,
    pub(crate) unknown: AtomicU64,
    pub(crate) node_restarted: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dropped_ops: AtomicU64,
    pub(crate) stale_removed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) inner_ended: AtomicU64,
    pub(crate) idle_expired: AtomicU64,
    pub(crate) lookups_limited: AtomicU64,
    pub(crate) known_misses: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_failures: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) adoptions_lost: AtomicU64,
    pub(crate) orphans_removed: AtomicU64,
}

/// A snapshot of a registry's counters.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
/// let stats = layer.handle().stats();
/// assert_eq!(stats.registered, 0);
/// assert_eq!(stats.cleanup_pending, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Records written for new sessions.
    pub registered: u64,
    /// Records removed (DELETE, close hooks, 404s of sessions this node had).
    pub removed: u64,
    /// TTL refreshes of long-lived sessions.
    pub refreshed: u64,
    /// 404s for sessions owned by another node.
    pub misroutes: u64,
    /// 404s for sessions not in the registry (or while it was unreachable).
    pub unknown: u64,
    /// 404s for sessions of this node's previous incarnation.
    pub node_restarted: u64,
    /// Store operations still queued (waiting or being retried).
    pub cleanup_pending: u64,
    /// Store errors seen (each failed attempt counts).
    pub store_errors: u64,
    /// Retried store operations.
    pub retries: u64,
    /// Operations dropped because a queue was full (their records expire by TTL).
    pub dropped_ops: u64,
    /// Standalone-stream events written to the shared event log.
    pub events_written: u64,
    /// Standalone-stream events dropped on their way to the shared event log (its queue was
    /// full, or the store failed every attempt). With write-through
    /// ([`with_event_log_durability`](super::SessionRegistryBuilder::with_event_log_durability))
    /// each of them was released to its stream unstored rather than held for ever.
    pub events_dropped: u64,
    /// Standalone-stream events queued for the shared event log.
    pub events_pending: u64,
    /// Records of previous incarnations removed at start.
    pub stale_removed: u64,
    /// `initialize` requests refused with `503` in fail-closed mode.
    pub refused: u64,
    /// Sessions this node registered that the inner service ended on its own, learnt from its
    /// `404` for their id (no store lookup is made for them).
    pub inner_ended: u64,
    /// Sessions without a close hook (an inner service of its own, such as rmcp) dropped after
    /// the idle bound ([`with_idle_timeout`](super::SessionRegistryBuilder::with_idle_timeout)).
    pub idle_expired: u64,
    /// Sessions this node registered and still tracks.
    pub tracked: u64,
    /// `404`s answered "unknown" without a store lookup because lookups were over their rate
    /// ([`with_lookup_rate`](super::SessionRegistryBuilder::with_lookup_rate)).
    pub lookups_limited: u64,
    /// `404`s answered "unknown" from the cache of ids the store did not know
    /// ([`with_negative_cache`](super::SessionRegistryBuilder::with_negative_cache)).
    pub known_misses: u64,
    /// Requests forwarded to the live node that owns their session (feature `forward`).
    pub forwarded: u64,
    /// Forwards that failed: nobody listening at the owner (the session is then adopted), or
    /// the owner failed during the exchange.
    pub forward_failures: u64,
    /// Sessions this node took over from a gone, draining or restarted owner.
    pub adopted: u64,
    /// Adoptions another node won first (the request then went to the winner).
    pub adoptions_lost: u64,
    /// Orphaned records (of nodes gone for longer than the idle timeout, or of this node's
    /// previous process) removed.
    pub orphans_removed: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, pending: u64, tracked: usize) -> RegistryStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RegistryStats {
            registered: r(&self.registered),
            removed: r(&self.removed),
            refreshed: r(&self.refreshed),
            misroutes: r(&self.misroutes),
            unknown: r(&self.unknown),
            node_restarted: r(&self.node_restarted),
            cleanup_pending: pending,
            store_errors: r(&self.store_errors),
            retries: r(&self.retries),
            dropped_ops: r(&self.dropped_ops),
            events_written: 0,
            events_dropped: 0,
            events_pending: 0,
            stale_removed: r(&self.stale_removed),
            refused: r(&self.refused),
            inner_ended: r(&self.inner_ended),
            idle_expired: r(&self.idle_expired),
            tracked: tracked as u64,
            lookups_limited: r(&self.lookups_limited),
            forwarded: r(&self.forwarded),
            forward_failures: r(&self.forward_failures),
            adopted: r(&self.adopted),
            adoptions_lost: r(&self.adoptions_lost),
            orphans_removed: r(&self.orphans_removed),
            known_misses: r(&self.known_misses),
        }
    }
}
