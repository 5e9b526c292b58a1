//! The in-process registry store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, NodeRecord, RegistryStore, SessionRecord, StoreError, ttl_seconds};

/// An in-process [`RegistryStore`]: a map behind a mutex.
///
/// This is the embedded default. It suits a single process: one node, or several nodes run in one
/// process (tests, demos, a single-binary deployment). **Clones share the same map**, so give
/// every node in the process a clone of one `MemoryStore` and they see each other's sessions,
/// which is what makes the registry's misroute detection work between them. Two stores created
/// with [`MemoryStore::new`] share nothing.
///
/// Time to live is measured with [`tokio::time::Instant`], so tests can drive expiry with
/// `tokio::time::pause` and `advance`. Expired records are dropped when they are next touched,
/// and the whole map is swept from time to time (after about as many writes as it held entries at
/// the previous sweep), so it never grows much beyond twice the records live at the previous
/// sweep, even if expired ids are never looked at again.
///
/// Node liveness ([`announce`](RegistryStore::announce), [`node`](RegistryStore::node)) and the
/// node set are kept the same way, shared by clones too; liveness records expire with their
/// TTL, measured with the same clock. [`claim`](RegistryStore::claim) is a compare-and-set
/// under the lock, and [`retire`](RegistryStore::retire) looks at the records themselves (there
/// is no separate node index to keep).
///
/// Operations never wait: each one takes the lock briefly and its future is ready at once
/// (`retire` and `remove_stale` walk every record while they hold it).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
/// let shared = MemoryStore::new();
/// let node_a = shared.clone();
/// let node_b = shared.clone();
///
/// node_a.register("s1", &SessionRecord::new("node-a", "1"), Duration::from_secs(60)).await?;
/// // node-b sees node-a's session: a request for s1 that reaches node-b is a misroute.
/// let record = node_b.lookup("s1").await?;
/// assert_eq!(record.map(|r| r.node).as_deref(), Some("node-a"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Writes since the last full sweep of expired entries.
    writes_since_sweep: usize,
    /// Entries left after the last sweep: the next sweep comes after as many writes.
    last_swept_len: usize,
    /// Liveness records, by node name.
    liveness: HashMap<String, Live>,
    /// The node set: every node announced and not retired since.
    nodes: HashSet<String>,
    /// The shared event log: each session's standalone events, bounded and expiring.
    events: HashMap<String, Events>,
}

/// One session's stored standalone events.
struct Events {
    /// `(ordinal, stream, seq, last, data)`, by ordinal.
    entries: std::collections::VecDeque<(u64, u32, u32, bool, bytes::Bytes)>,
    /// The highest standalone sequence number written.
    top: u32,
    /// The highest ordinal written.
    ordinal: u64,
    /// As [`Entry::expires_at`].
    expires_at: Option<Instant>,
}

struct Live {
    record: NodeRecord,
    /// As [`Entry::expires_at`].
    expires_at: Option<Instant>,
}

impl Live {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

struct Entry {
    record: SessionRecord,
    /// `None`: the TTL was too long to represent, so the entry never expires.
    expires_at: Option<Instant>,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The fewest writes between two sweeps.
const MIN_SWEEP_INTERVAL: usize = 64;

fn deadline(now: Instant, ttl: Duration) -> Option<Instant> {
    now.checked_add(Duration::from_secs(ttl_seconds(ttl)))
}

impl State {
    /// The live entry for `id`; an expired one is removed on the way.
    fn live(&mut self, id: &str, now: Instant) -> Option<&mut Entry> {
        if self
            .entries
            .get(id)
            .is_some_and(|entry| !entry.is_live(now))
        {
            self.entries.remove(id);
        }
        self.entries.get_mut(id)
    }

    /// `node`'s unexpired liveness record; an expired one is removed on the way.
    fn live_node(&mut self, node: &str, now: Instant) -> Option<&Live> {
        if self
            .liveness
            .get(node)
            .is_some_and(|live| !live.is_live(now))
        {
            self.liveness.remove(node);
        }
        self.liveness.get(node)
    }

    /// Counts a write and sweeps expired entries once the writes since the last sweep reach the
    /// number of entries that sweep left (at least [`MIN_SWEEP_INTERVAL`]). A sweep costs
    /// amortized O(1) per write, and the map never holds more than twice the entries left by the
    /// last sweep plus [`MIN_SWEEP_INTERVAL`].
    fn note_write(&mut self, now: Instant) {
        self.writes_since_sweep = self.writes_since_sweep.saturating_add(1);
        if self.writes_since_sweep >= self.last_swept_len.max(MIN_SWEEP_INTERVAL) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, entry| entry.is_live(now));
        self.writes_since_sweep = 0;
        self.last_swept_len = self.entries.len();
    }
}

impl MemoryStore {
    /// An empty store. Clone it to share it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::MemoryStore;
    ///
    /// let store = MemoryStore::new();
    /// assert!(store.is_empty());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of live (unexpired) records.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// store.register("s1", &SessionRecord::new("n", "1"), Duration::from_secs(60)).await?;
    /// assert_eq!(store.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .entries
            .values()
            .filter(|entry| entry.is_live(now))
            .count()
    }

    /// Whether the store holds no live record.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::MemoryStore;
    ///
    /// assert!(MemoryStore::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the map consistent, so a panic elsewhere while the lock
        // was held does not make the data unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register_now(&self, id: &str, record: &SessionRecord, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let stored = match state.live(id, now) {
            Some(entry) if entry.record == *record => {
                entry.expires_at = deadline(now, ttl);
                true
            }
            Some(_) => false,
            None => {
                state.entries.insert(
                    id.to_owned(),
                    Entry {
                        record: record.clone(),
                        expires_at: deadline(now, ttl),
                    },
                );
                true
            }
        };
        state.note_write(now);
        stored
    }

    fn remove_where(&self, id: &str, owned: impl FnOnce(&SessionRecord) -> bool) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let remove = state
            .live(id, now)
            .is_some_and(|entry| owned(&entry.record));
        if remove {
            state.entries.remove(id);
            state.events.remove(id);
        }
        state.note_write(now);
        remove
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Session ids are credentials of a sort: show the size only.
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("entries", &state.entries.len())
            .field("nodes", &state.nodes.len())
            .finish()
    }
}

impl RegistryStore for MemoryStore {
    async fn append_events(
        &self,
        events: &[super::EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        // To the millisecond, as Redis' `PEXPIRE`.
        let expires_at = now.checked_add(ttl.max(Duration::from_millis(1)));
        let mut state = self.lock();
        // Expired logs go first (the writes bound how many there can be).
        state
            .events
            .retain(|_, log| log.expires_at.is_none_or(|at| at > now));
        for ev in events {
            let log = state
                .events
                .entry(ev.id.to_owned())
                .or_insert_with(|| Events {
                    entries: std::collections::VecDeque::new(),
                    top: 0,
                    ordinal: 0,
                    expires_at,
                });
            log.expires_at = expires_at;
            // A late write of a former owner: not above what is there.
            if ev.ordinal <= log.ordinal {
                continue;
            }
            log.ordinal = ev.ordinal;
            if ev.stream == 0 {
                log.top = log.top.max(ev.seq);
            }
            log.entries
                .push_back((ev.ordinal, ev.stream, ev.seq, ev.last, ev.data.clone()));
            while log.entries.len() > max_len.max(1) {
                log.entries.pop_front();
            }
        }
        Ok(())
    }

    async fn read_events(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> Result<super::StoredEventPage, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        let Some(log) = state
            .events
            .get(id)
            .filter(|log| log.expires_at.is_none_or(|at| at > now))
        else {
            return Ok(super::StoredEventPage::default());
        };
        let events = match after {
            Some(after) => log
                .entries
                .iter()
                .filter(|e| e.1 == 0 && e.2 > after)
                .take(max)
                .map(|e| (e.2, e.4.clone()))
                .collect(),
            None => Vec::new(),
        };
        let requests = log
            .entries
            .iter()
            .filter(|e| e.1 != 0)
            .map(|e| crate::session::RequestEvent::new(e.1, e.2, e.4.clone()).with_last(e.3))
            .collect();
        Ok(super::StoredEventPage {
            top: log.top,
            events,
            ordinal: log.ordinal,
            requests,
        })
    }

    async fn remove_events(&self, ids: &[&str]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for id in ids {
            state.events.remove(*id);
        }
        Ok(())
    }

    async fn register(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.register_now(id, record, ttl))
    }

    async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = Instant::now();
        Ok(self.lock().live(id, now).map(|entry| entry.record.clone()))
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.remove_where(id, |_| true))
    }

    async fn remove_if_owned(
        &self,
        id: &str,
        node: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.remove_where(id, |record| record.is_owned_by(node, incarnation)))
    }

    async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        Ok(match state.live(id, now) {
            Some(entry) => {
                entry.expires_at = deadline(now, ttl);
                true
            }
            None => false,
        })
    }

    /// Removes the stale records in one pass under the lock; `batch` is not used.
    async fn remove_stale(
        &self,
        node: &str,
        current_incarnation: &str,
        _batch: usize,
    ) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut removed = 0;
        state.entries.retain(|_, entry| {
            if !entry.is_live(now) {
                return false;
            }
            let stale =
                entry.record.node == node && entry.record.incarnation != current_incarnation;
            removed += usize::from(stale);
            !stale
        });
        state.writes_since_sweep = 0;
        state.last_swept_len = state.entries.len();
        Ok(removed)
    }

    async fn announce(
        &self,
        node: &str,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.liveness.insert(
            node.to_owned(),
            Live {
                record: record.clone(),
                expires_at: deadline(now, ttl),
            },
        );
        if !state.nodes.contains(node) {
            state.nodes.insert(node.to_owned());
        }
        Ok(())
    }

    async fn node(&self, node: &str) -> Result<Option<NodeRecord>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .live_node(node, now)
            .map(|live| live.record.clone()))
    }

    async fn withdraw(&self, node: &str, incarnation: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let withdrawn = state
            .live_node(node, now)
            .is_some_and(|live| live.record.incarnation == incarnation);
        if withdrawn {
            state.liveness.remove(node);
        }
        Ok(withdrawn)
    }

    async fn nodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().nodes.iter().cloned().collect())
    }

    /// Walks every record under the lock to find one of `node`'s.
    async fn retire(&self, node: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.nodes.contains(node) || state.live_node(node, now).is_some() {
            return Ok(false);
        }
        let owns = state
            .entries
            .values()
            .any(|entry| entry.is_live(now) && entry.record.node == node);
        Ok(!owns && state.nodes.remove(node))
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        incarnation: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let claim = match state.live(id, now) {
            Some(entry) if entry.record.is_owned_by(owner, incarnation) => {
                entry.record = record.clone();
                entry.expires_at = deadline(now, ttl);
                Claim::Won
            }
            Some(entry) => Claim::Lost(Some(entry.record.clone())),
            None => Claim::Lost(None),
        };
        state.note_write(now);
        Ok(claim)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_len(store: &MemoryStore) -> usize {
        store.lock().entries.len()
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_without_being_touched() {
        let store = MemoryStore::new();
        let record = SessionRecord::new("n", "1");
        for i in 0..200 {
            assert!(
                store
                    .register(&format!("old-{i}"), &record, Duration::from_secs(5))
                    .await
                    .is_ok()
            );
        }
        assert_eq!(raw_len(&store), 200);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(store.len(), 0);
        // Writes to other ids eventually trigger a sweep of the expired ones.
        for i in 0..200 {
            assert!(
                store
                    .register(&format!("new-{i}"), &record, Duration::from_secs(60))
                    .await
                    .is_ok()
            );
        }
        assert!(
            raw_len(&store) <= 2 * 200 + MIN_SWEEP_INTERVAL,
            "expired entries linger: {}",
            raw_len(&store)
        );
        assert!(raw_len(&store) < 400, "no sweep happened");
        assert_eq!(store.len(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_and_refresh() {
        let store = MemoryStore::new();
        let record = SessionRecord::new("n", "1");
        assert_eq!(
            store
                .register("s", &record, Duration::from_secs(10))
                .await
                .ok(),
            Some(true)
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            store.refresh("s", Duration::from_secs(10)).await.ok(),
            Some(true)
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(store.lookup("s").await, Ok(Some(_))));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(store.lookup("s").await, Ok(None)));
        assert_eq!(
            store.refresh("s", Duration::from_secs(10)).await.ok(),
            Some(false)
        );
        // An expired record no longer blocks a new registration.
        let other = SessionRecord::new("m", "2");
        assert_eq!(
            store
                .register("s", &other, Duration::from_secs(10))
                .await
                .ok(),
            Some(true)
        );
        // Sub-second TTLs count as one second.
        assert_eq!(
            store
                .register("t", &record, Duration::from_millis(1))
                .await
                .ok(),
            Some(true)
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(store.lookup("t").await, Ok(Some(_))));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(store.lookup("t").await, Ok(None)));
    }

    #[tokio::test]
    async fn huge_ttl_never_expires_and_does_not_panic() {
        let store = MemoryStore::new();
        let record = SessionRecord::new("n", "1");
        assert_eq!(
            store.register("s", &record, Duration::MAX).await.ok(),
            Some(true)
        );
        assert_eq!(store.refresh("s", Duration::MAX).await.ok(), Some(true));
        assert!(matches!(store.lookup("s").await, Ok(Some(_))));
    }

    #[test]
    fn debug_does_not_show_ids() {
        let store = MemoryStore::new();
        let _ = store.register_now(
            "secret-id",
            &SessionRecord::new("n", "1"),
            Duration::from_secs(1),
        );
        let debug = format!("{store:?}");
        assert!(!debug.contains("secret-id"), "{debug}");
        assert!(debug.contains("entries: 1"), "{debug}");
        assert!(debug.contains("nodes: 0"), "{debug}");
    }
}
