//! A registry store that counts the lookups it answers (the 404 path's store calls).

#![allow(dead_code, unreachable_pub)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mcp_affinity::registry::{RegistryStore, SessionRecord, StoreError};

#[derive(Debug, Clone)]
pub struct Counting<S> {
    pub inner: S,
    lookups: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            lookups: Arc::default(),
        }
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl<S: RegistryStore> RegistryStore for Counting<S> {
    async fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.register(id, record, ttl).await
    }

    async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(id).await
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.remove(id).await
    }

    async fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        self.inner.remove_if_owned(id, node, incarnation).await
    }

    async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.refresh(id, ttl).await
    }

    async fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        batch: usize,
    ) -> Result<usize, StoreError> {
        self.inner
            .remove_stale(node, current_incarnation, batch)
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
