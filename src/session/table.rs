//! The node-local session table: sharded, read-mostly.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{Fingerprint, Session, SessionId};

const SHARDS: usize = 32;

/// Ids up to this long are kept inside the table's buckets: the default ids (24 characters,
/// plus a node tag) are compared without reading another allocation, which is a cache miss
/// per request once a node holds thousands of sessions.
const INLINE: usize = 46;

/// A table key: the id's bytes, inline when short. Hashes and compares as `[u8]`, so lookups
/// take `id.as_bytes()`. Its `Debug` shows a fingerprint, like [`SessionId`]'s, never the id.
enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(SessionId),
}

impl Key {
    fn new(id: &SessionId) -> Self {
        let b = id.as_str().as_bytes();
        if b.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            // `b.len() <= INLINE < 256`.
            Self::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(id.clone())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(id) => id.as_str().as_bytes(),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids are visible ASCII (checked when the `SessionId` was made).
        let id = std::str::from_utf8(self.as_bytes()).unwrap_or_default();
        write!(f, "Key({})", Fingerprint::of(id))
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// What [`SessionTable::insert_new`] did.
#[derive(Debug)]
pub(crate) enum InsertNew {
    Inserted,
    /// The table holds a session with this id already: this one.
    Held(Session),
    Full,
}

/// Sessions held by this node.
#[derive(Debug)]
pub(crate) struct SessionTable {
    shards: Box<[RwLock<HashMap<Key, Session>>]>,
    len: AtomicUsize,
}

impl SessionTable {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// The shard of an id: FNV-1a over its bytes. Only spreads lock contention, so it need not
    /// resist chosen ids (each shard's map keeps std's keyed SipHash); about a third of the
    /// cost of hashing the id twice with SipHash, on every request.
    fn shard(&self, id: &str) -> &RwLock<HashMap<Key, Session>> {
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        &self.shards[(h ^ (h >> 32)) as usize % SHARDS]
    }

    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shard.get(id.as_bytes()).cloned()
    }

    /// Inserts unless `len() >= max`; returns false when full.
    pub(crate) fn insert(&self, session: Session, max: usize) -> bool {
        if self.len.fetch_add(1, Ordering::AcqRel) >= max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let mut shard = self
            .shard(session.id().as_str())
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.insert(Key::new(session.id()), session).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        } else {
            crate::metrics::sessions_held(1);
        }
        true
    }

    /// Inserts `session` unless the table holds its id already (then returns that session,
    /// and `session` is not inserted) or holds `max` sessions (`Full`). Never replaces.
    pub(crate) fn insert_new(&self, session: Session, max: usize) -> InsertNew {
        let mut shard = self
            .shard(session.id().as_str())
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = shard.get(session.id().as_str().as_bytes()) {
            return InsertNew::Held(held.clone());
        }
        if self.len.fetch_add(1, Ordering::AcqRel) >= max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return InsertNew::Full;
        }
        shard.insert(Key::new(session.id()), session);
        crate::metrics::sessions_held(1);
        InsertNew::Inserted
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Session> {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = shard.remove(id.as_bytes());
        if s.is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::sessions_held(-1);
            shrink_when_sparse(&mut shard);
        }
        s
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// A snapshot of every session (for sweeps and shutdown).
    pub(crate) fn snapshot(&self) -> Vec<Session> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            out.extend(shard.values().cloned());
        }
        out
    }
}

/// Halves a map's table once it is three-quarters empty, so the table of a burst of sessions
/// goes back to the allocator when they close (a `HashMap` never shrinks on its own), and
/// frees it once the map is empty. Whether the allocator then returns the memory to the
/// system is its own affair (glibc mostly keeps it for reuse), but a table left allocated
/// after the burst is one of the live blocks that keep glibc from trimming its heap: the
/// 32 shards' last tables, reallocated small while the sessions closed, sat high in the
/// worker thread's heap. Shrinking to twice the length leaves room to grow again before the
/// next resize, so the cost stays amortised O(1) per removal; an emptied map allocates again
/// (a few slots) on its next insert.
pub(crate) fn shrink_when_sparse<K, V, S>(map: &mut HashMap<K, V, S>)
where
    K: Eq + std::hash::Hash,
    S: BuildHasher,
{
    const MIN_CAPACITY: usize = 64;
    if map.is_empty() {
        if map.capacity() > 0 {
            map.shrink_to(0);
        }
    } else if map.capacity() > MIN_CAPACITY && map.len() * 4 < map.capacity() {
        map.shrink_to((map.len() * 2).max(MIN_CAPACITY / 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inline_or_not_find_by_bytes() {
        let ids: Vec<SessionId> = [1, INLINE - 1, INLINE, INLINE + 1, 200]
            .iter()
            .map(|&n| SessionId::parse(&format!("{}y", "x".repeat(n - 1))).unwrap())
            .collect();
        let mut map = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let key = Key::new(id);
            assert_eq!(key.as_bytes(), id.as_str().as_bytes());
            assert_eq!(
                matches!(key, Key::Inline { .. }),
                id.as_str().len() <= INLINE
            );
            map.insert(key, i);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(id.as_str().as_bytes()), Some(&i));
        }
        for id in &ids {
            let shown = format!("{:?}", Key::new(id));
            assert!(
                id.as_str().len() < 4 || !shown.contains(id.as_str()),
                "{shown}"
            );
            assert!(!shown.contains("120,"), "no raw bytes: {shown}");
            assert!(shown.contains(&Fingerprint::of(id.as_str()).to_string()));
        }
        assert_eq!(map.get(&b"x"[..]), None);
        assert_eq!(map.get(&[][..]), None);
        assert_eq!(map.remove(ids[3].as_str().as_bytes()), Some(3));
        assert_eq!(map.len(), ids.len() - 1);
    }

    #[test]
    fn a_sparse_table_shrinks() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|n| (n, n)).collect();
        let full = map.capacity();
        for n in 0..9_990 {
            map.remove(&n);
            shrink_when_sparse(&mut map);
        }
        assert_eq!(map.len(), 10);
        assert!(map.capacity() <= 64, "{} of {full}", map.capacity());
        // Emptied, it holds no table at all.
        for n in 9_990..10_000 {
            map.remove(&n);
            shrink_when_sparse(&mut map);
        }
        assert_eq!(map.capacity(), 0);
        // A table of at most 64 slots is otherwise left alone. (`capacity()` also falls
        // as removals leave tombstones, by an amount that depends on the random hashes, so
        // the check is that the call changes nothing, not a fixed figure.)
        let mut small: HashMap<u32, u32> = (0..40).map(|n| (n, n)).collect();
        for n in 0..38 {
            small.remove(&n);
            let before = small.capacity();
            shrink_when_sparse(&mut small);
            assert_eq!(small.capacity(), before, "after removing {}", n + 1);
        }
    }
}
