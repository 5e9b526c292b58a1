//! A registry store that counts the calls it answers: the lookups (the 404 path's store
//! calls) and every call of any kind. Every method, liveness and claims included, goes to the
//! inner store, so the registry's continuity (forwarding, adoption) works over it.

#![allow(dead_code, unreachable_pub)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mcp_affinity::registry::{
    Claim, NodeRecord, RegistryStore, SessionRecord, StoreError, store::StoreWrite,
};

#[derive(Debug, Clone)]
pub struct Counting<S> {
    pub inner: S,
    lookups: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    latency: Option<Duration>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            lookups: Arc::default(),
            calls: Arc::default(),
            latency: None,
        }
    }

    /// Every read and claim (what a request waits for) takes `latency` longer, as over a
    /// network: concurrent requests then overlap in the store as they do on a real one.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    async fn wait(&self) {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
    }

    /// Session record lookups.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Every call, of any method (a batch counts once).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl<S: RegistryStore> RegistryStore for Counting<S> {
    async fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.call();
        self.inner.register(id, record, ttl).await
    }

    async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.call();
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.wait().await;
        self.inner.lookup(id).await
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.call();
        self.inner.remove(id).await
    }

    async fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        self.call();
        self.inner.remove_if_owned(id, node, incarnation).await
    }

    async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.call();
        self.inner.refresh(id, ttl).await
    }

    async fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        batch: usize,
    ) -> Result<usize, StoreError> {
        self.call();
        self.inner
            .remove_stale(node, current_incarnation, batch)
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call();
        self.inner.ping().await
    }

    async fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.call();
        self.inner.announce(node, record, ttl).await
    }

    async fn node(&self, node: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.call();
        self.wait().await;
        self.inner.node(node).await
    }

    async fn withdraw(&self, node: &str, incarnation: &str) -> Result<bool, StoreError> {
        self.call();
        self.inner.withdraw(node, incarnation).await
    }

    async fn nodes(&self) -> Result<Vec<String>, StoreError> {
        self.call();
        self.inner.nodes().await
    }

    async fn retire(&self, node: &str) -> Result<bool, StoreError> {
        self.call();
        self.inner.retire(node).await
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.call();
        self.wait().await;
        self.inner.claim(id, owner, incarnation, record, ttl).await
    }

    async fn write_batch(&self, writes: &[StoreWrite<'_>]) -> Result<Vec<bool>, StoreError> {
        self.call();
        self.inner.write_batch(writes).await
    }
}
