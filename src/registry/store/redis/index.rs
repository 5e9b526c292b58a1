//! The node index: the sessions each node registered or claimed, so a restarted node finds
//! what its previous process left behind.

use super::{INDEX_PUT, RedisStore};
use crate::registry::store::StoreError;

impl RedisStore {
    /// Adds `id` to `node`'s index (see [`index_outcome`]).
    pub(super) async fn index_add(&self, node: &str, id: &str, ttl: u64) -> Result<(), StoreError> {
        let index = self.inner.keys.node_index(node);
        let sent = self
            .eval::<i64>(&INDEX_PUT, &index, &[&ttl.to_string(), id])
            .await;
        index_outcome(node, sent.map(drop))
    }

    /// Removes `id` from `node`'s index (see [`index_outcome`]).
    pub(super) async fn index_remove(&self, node: &str, id: &str) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(self.inner.keys.node_index(node)).arg(id);
        let sent = self.query::<i64>(cmd).await;
        index_outcome(node, sent.map(drop))
    }
}

/// What a node index update's failure does to its write. The index is best effort against the
/// server: an error it answers (say, the index key holds another type) is logged and otherwise
/// ignored, and the record's own TTL still applies. An update lost on the way (timed out, the
/// connection dropped) may or may not have run: the write fails, and the registry retries it,
/// which puts the index entry in step again.
pub(super) fn index_outcome(node: &str, sent: Result<(), StoreError>) -> Result<(), StoreError> {
    match sent {
        Err(err) if err.is_timeout() || err.is_unavailable() => Err(err),
        Err(err) => {
            tracing::debug!(node, error = %err, "registry: node index update failed");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}
