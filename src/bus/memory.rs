//! The in-process bus: several nodes in one process (tests, or nodes sharing a `MemoryStore`).

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{cluster::WeakInner, stats::DropReason};

/// How many messages a node of a [`MemoryBus`] may fall behind before it loses some (each
/// loss counted in [`BusStats::dropped_overflow`](super::BusStats::dropped_overflow)).
pub const MEMORY_BUS_CAPACITY: usize = 4096;

/// An in-process hub for the [`ClusterBus`](super::ClusterBus)es of several nodes in one
/// process, as Redis pub/sub is for nodes in several: what each publishes, the others receive.
/// Clones share one hub.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
/// use mcp_affinity::bus::{Change, ClusterBus, MemoryBus};
///
/// let hub = MemoryBus::new();
/// let a = ClusterBus::builder("a").with_memory(&hub).build()?;
/// let b = ClusterBus::builder("b").with_memory(&hub).build()?;
/// let mut feed = b.changes();
/// a.publish_change(Change::ToolsListChanged).unwrap();
/// assert_eq!(feed.recv().await.unwrap(), Change::ToolsListChanged);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Bytes>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A new hub.
    ///
    /// # Example
    ///
    /// ```
    /// let hub = mcp_affinity::bus::MemoryBus::new();
    /// # let _ = hub;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(MEMORY_BUS_CAPACITY).0,
        }
    }

    pub(super) fn sender(&self) -> broadcast::Sender<Bytes> {
        self.tx.clone()
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.tx.subscribe()
    }
}

/// One node's receiving task: ends when the bus is dropped (or the hub with every bus).
pub(super) async fn receive(mut rx: broadcast::Receiver<Bytes>, bus: WeakInner) {
    loop {
        let msg = rx.recv().await;
        let Some(inner) = bus.upgrade() else { return };
        match msg {
            Ok(bytes) => inner.receive(&bytes),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                inner.counters.dropped(DropReason::Overflow, n)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
        drop(inner);
    }
}
