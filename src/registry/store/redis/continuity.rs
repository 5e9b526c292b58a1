//! Liveness and adoption: the nodes' liveness records, the node set, and claiming a session.

use std::time::Duration;

use ::redis::Cmd;

use super::{CLAIM, Conn, RETIRABLE, RedisStore, WITHDRAW, capped_ttl_seconds, commands};
use crate::registry::store::{Claim, NodeRecord, SessionRecord, StoreError};

impl RedisStore {
    /// Whether `node` has no liveness record and lists no session ([`RETIRABLE`]).
    pub(super) async fn retirable(&self, node: &str) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let (live, index) = (keys.liveness(node), keys.node_index(node));
        Ok(self
            .eval_keys::<i64>(&RETIRABLE, &[&live, &index], &[])
            .await?
            == 1)
    }

    /// A command on the node set: `name <node set> node`.
    pub(super) fn node_set_command(&self, name: &str, node: &str) -> Cmd {
        let mut cmd = ::redis::cmd(name);
        cmd.arg(self.inner.keys.node_set()).arg(node);
        cmd
    }

    /// `SADD` to the node set and `SET … EX` of the liveness record: one pipelined round trip
    /// on a single server; on a cluster, where the two keys live in different slots, one after
    /// the other.
    pub(super) async fn announce_node(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let listed = self.node_set_command("SADD", node);
        let mut live = ::redis::cmd("SET");
        live.arg(self.inner.keys.liveness(node))
            .arg(record.to_json())
            .arg("EX")
            .arg(capped_ttl_seconds(ttl));
        match &self.inner.conn {
            Conn::Single(_) => {
                let mut pipe = ::redis::pipe();
                pipe.add_command(listed).add_command(live);
                self.query_pipe::<((), ())>(&pipe).await.map(drop)
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => {
                self.query::<()>(listed).await?;
                self.query::<()>(live).await
            }
        }
    }

    pub(super) async fn node_record(&self, node: &str) -> Result<Option<NodeRecord>, StoreError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.inner.keys.liveness(node));
        match self.query::<Option<String>>(cmd).await? {
            Some(json) => NodeRecord::from_json(&json).map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn withdraw_node(
        &self,
        node: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        let key = self.inner.keys.liveness(node);
        Ok(self.eval::<i64>(&WITHDRAW, &key, &[incarnation]).await? == 1)
    }

    pub(super) async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.node_set());
        self.query(cmd).await
    }

    /// Checks the node's slot, takes the node out of the node set, and checks again: a node
    /// that announced itself or registered a session in between is put back (`SADD`), so a
    /// node never stays out of the set while it has something to sweep.
    pub(super) async fn retire_node(&self, node: &str) -> Result<bool, StoreError> {
        if !self.retirable(node).await? {
            return Ok(false);
        }
        let removed: i64 = self.query(self.node_set_command("SREM", node)).await?;
        if removed == 0 {
            return Ok(false);
        }
        if self.retirable(node).await? {
            return Ok(true);
        }
        self.query::<i64>(self.node_set_command("SADD", node))
            .await?;
        Ok(false)
    }

    pub(super) async fn claim_session(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let secs = capped_ttl_seconds(ttl);
        let key = self.inner.keys.session(id);
        let (json, ttl_arg) = (record.to_json(), secs.to_string());
        let args = [owner, incarnation, &json, &ttl_arg];
        // The index entry and the claim go out together (one round trip on the adoption's
        // path, not two). The entry is sent first: on one server (one connection, commands
        // run in the order sent) it is listed before the record names the claimant, as in
        // `register`, so a claimant that dies in between leaves at worst an index entry its
        // next process drops. That order does not hold on a cluster (the two keys live on
        // different masters), nor when the server lost the index script and loads it again;
        // a claimant dying within that round trip leaves a record its TTL bounds.
        let (indexed, reply) = tokio::join!(
            self.index_add(&record.node, id, secs),
            self.eval::<::redis::Value>(&CLAIM, &key, &args),
        );
        let claim = commands::claimed(&reply?);
        if let Err(err) = indexed {
            // The claim ran all the same, and its outcome is what the caller acts on. Won,
            // unlisted: the record is this node's (the request goes on to restore it), its own
            // TTL still bounds it if this node never comes back, and the node's next refresh
            // of the record lists it again. Lost: nothing of this node's to list.
            tracing::debug!(node = %record.node, error = %err, "registry: node index update of a claim failed");
        }
        let keep_listing = match &claim {
            Ok(Claim::Won) => true,
            // The record another request of the claimant's node won is listed already.
            Ok(Claim::Lost(Some(current))) => current.node == record.node,
            _ => false,
        };
        if !keep_listing {
            // Best effort: an entry left behind is dropped by the node's next cleanup.
            if let Err(err) = self.index_remove(&record.node, id).await {
                tracing::debug!(node = %record.node, error = %err, "registry: node index update failed");
            }
        }
        claim
    }
}
