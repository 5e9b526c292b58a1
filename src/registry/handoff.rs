//! The in-process hand-off between the registry and an inner service's own session store
//! ([`RmcpSessionStore`](super::RmcpSessionStore), feature `rmcp`).
//!
//! An inner service that keeps its own sessions (rmcp) tells its session store what it needs
//! to restore a session; the registry is the one that writes records. So the store hands the
//! fields over to the registry here instead of writing them itself:
//!
//! - **minted**: rmcp persists a new session's `initialize` parameters before it answers, so
//!   the fields wait here under the id rmcp minted until the registry, seeing that answer,
//!   takes them into the session's record (one write, under the id clients use, which may be
//!   the affinity layer's envelope around rmcp's id);
//! - **restoring**: while the registry has an adopted session's inner service called, the
//!   record it claimed waits here under the id the inner service sees, for the store's `load`.
//!
//! Without the feature both are no-ops that cost nothing.

#[cfg(feature = "rmcp")]
pub(crate) use enabled::{Handoff, Restore};

#[cfg(not(feature = "rmcp"))]
pub(crate) use disabled::Handoff;

#[cfg(feature = "rmcp")]
mod enabled {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering::Relaxed},
        },
        time::Duration,
    };

    use serde_json::Value;
    use tokio::time::Instant;

    use crate::registry::SessionRecord;

    /// Fields waiting longer than this were never taken (the request was dropped between the
    /// store's write and the answer): they are dropped when the map is full.
    const STALE: Duration = Duration::from_secs(30);
    /// The most entries waiting at once.
    const CAPACITY: usize = 4096;

    /// What a session store hands over for a new session's record.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Restore {
        pub(crate) protocol_version: String,
        pub(crate) client_info: Option<Value>,
        pub(crate) client_capabilities: Option<Value>,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Handoff {
        /// Whether a session store uses this registry: until one does, the registry touches
        /// neither map.
        active: AtomicBool,
        minted: Mutex<HashMap<Arc<str>, (Instant, Restore)>>,
        restoring: Mutex<HashMap<Arc<str>, SessionRecord>>,
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    impl Handoff {
        pub(crate) fn activate(&self) {
            self.active.store(true, Relaxed);
        }

        fn is_active(&self) -> bool {
            self.active.load(Relaxed)
        }

        /// The store's side: the fields of session `inner_id`, minted a moment ago.
        pub(crate) fn put_minted(&self, inner_id: &str, restore: Restore) {
            let mut minted = lock(&self.minted);
            if minted.len() >= CAPACITY {
                let now = Instant::now();
                minted.retain(|_, (at, _)| now.duration_since(*at) < STALE);
                if minted.len() >= CAPACITY {
                    tracing::debug!(
                        "session store hand-off full: restore fields dropped (those sessions cannot be adopted)"
                    );
                    minted.clear();
                }
            }
            minted.insert(inner_id.into(), (Instant::now(), restore));
        }

        /// The registry's side: the fields of the session the inner service minted as
        /// `inner_id`, if its store handed any over.
        pub(crate) fn take_minted(&self, inner_id: &str) -> Option<Restore> {
            if !self.is_active() {
                return None;
            }
            lock(&self.minted).remove(inner_id).map(|(_, r)| r)
        }

        /// The registry's side: `record` (claimed by this node) is what the inner service
        /// restores session `inner_id` from while the returned guard lives.
        pub(crate) fn restoring(
            self: &Arc<Self>,
            inner_id: Option<&str>,
            record: impl FnOnce() -> SessionRecord,
        ) -> Restoring {
            let Some(id) = inner_id.filter(|_| self.is_active()) else {
                return Restoring(None);
            };
            let id: Arc<str> = id.into();
            lock(&self.restoring).insert(id.clone(), record());
            Restoring(Some((self.clone(), id)))
        }

        /// The store's side: the record the registry claimed for session `inner_id`, while it
        /// has the inner service restore it.
        pub(crate) fn restoring_record(&self, inner_id: &str) -> Option<SessionRecord> {
            lock(&self.restoring).get(inner_id).cloned()
        }

        /// The store's side: forgets anything waiting for `inner_id`.
        pub(crate) fn forget(&self, inner_id: &str) {
            lock(&self.minted).remove(inner_id);
        }

        #[cfg(test)]
        pub(crate) fn waiting(&self) -> usize {
            lock(&self.minted).len()
        }
    }

    /// Removes the restoring entry when the inner service has answered (or the request was
    /// dropped).
    #[derive(Debug)]
    pub(crate) struct Restoring(Option<(Arc<Handoff>, Arc<str>)>);

    impl Drop for Restoring {
        fn drop(&mut self) {
            if let Some((handoff, id)) = self.0.take() {
                lock(&handoff.restoring).remove(&id);
            }
        }
    }
}

#[cfg(not(feature = "rmcp"))]
mod disabled {
    use std::sync::Arc;

    use crate::registry::SessionRecord;

    /// Never built without the feature.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Restore {}

    impl Restore {
        pub(crate) fn apply(self, _record: SessionRecord) -> SessionRecord {
            match self {}
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Handoff;

    impl Handoff {
        #[inline]
        pub(crate) fn take_minted(&self, _inner_id: &str) -> Option<Restore> {
            None
        }

        #[inline]
        pub(crate) fn restoring(
            self: &Arc<Self>,
            _inner_id: Option<&str>,
            _record: impl FnOnce() -> SessionRecord,
        ) -> Restoring {
            Restoring
        }
    }

    #[derive(Debug)]
    pub(crate) struct Restoring;
}

#[cfg(feature = "rmcp")]
impl Restore {
    /// `record` with these restore fields (no principal: rmcp binds none).
    pub(crate) fn apply(
        self,
        record: crate::registry::SessionRecord,
    ) -> crate::registry::SessionRecord {
        record.with_restore(
            self.protocol_version,
            self.client_info,
            self.client_capabilities,
            None,
        )
    }
}
