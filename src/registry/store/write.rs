//! Batches of writes: one write of a batch, and the default way a store applies a batch.

use std::future::Future;
use std::time::Duration;

use super::{RegistryStore, SessionRecord, StoreError};

/// One write of a batch: see [`RegistryStore::write_batch`].
///
/// Each variant is one of the store's single-write methods with its arguments.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord, store::StoreWrite};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
/// let store = MemoryStore::new();
/// let record = SessionRecord::new("node-a", "7f3a");
/// let write = StoreWrite::Register { id: "s1", record: &record, ttl: Duration::from_secs(60) };
/// assert!(write.apply(&store).await?);
/// assert!(StoreWrite::Remove { id: "s1" }.apply(&store).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum StoreWrite<'a> {
    /// [`RegistryStore::register`].
    Register {
        /// The session id.
        id: &'a str,
        /// The record to store.
        record: &'a SessionRecord,
        /// Its time to live.
        ttl: Duration,
    },
    /// [`RegistryStore::remove`].
    Remove {
        /// The session id.
        id: &'a str,
    },
    /// [`RegistryStore::remove_if_owned`].
    RemoveIfOwned {
        /// The session id.
        id: &'a str,
        /// The node that must own the record.
        node: &'a str,
        /// The incarnation that must own the record.
        incarnation: &'a str,
    },
    /// [`RegistryStore::refresh`].
    Refresh {
        /// The session id.
        id: &'a str,
        /// The new time to live.
        ttl: Duration,
    },
}

impl StoreWrite<'_> {
    /// The session id the write is about.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::store::StoreWrite;
    ///
    /// assert_eq!(StoreWrite::Remove { id: "s1" }.id(), "s1");
    /// ```
    #[must_use]
    pub fn id(&self) -> &str {
        match *self {
            Self::Register { id, .. }
            | Self::Remove { id }
            | Self::RemoveIfOwned { id, .. }
            | Self::Refresh { id, .. } => id,
        }
    }

    /// Applies this write alone, with the store's single-write method, and returns what that
    /// method returns.
    ///
    /// # Errors
    ///
    /// The method's [`StoreError`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, store::StoreWrite};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = MemoryStore::new();
    /// let refresh = StoreWrite::Refresh { id: "unknown", ttl: Duration::from_secs(60) };
    /// assert!(!refresh.apply(&store).await?, "no record to refresh");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply<S: RegistryStore + ?Sized>(&self, store: &S) -> Result<bool, StoreError> {
        match *self {
            Self::Register { id, record, ttl } => store.register(id, record, ttl).await,
            Self::Remove { id } => store.remove(id).await,
            Self::RemoveIfOwned {
                id,
                node,
                incarnation,
            } => store.remove_if_owned(id, node, incarnation).await,
            Self::Refresh { id, ttl } => store.refresh(id, ttl).await,
        }
    }
}

/// The positions of `ids`, grouped by id: one group per distinct id, in order of first
/// appearance, each in order. Writes on one session are applied group by group.
pub(crate) fn group_by_id<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_id: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, id) in ids.enumerate() {
        let g = *by_id.entry(id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// Applies `writes` with their single-write methods: the writes on one session one after the
/// other, different sessions concurrently. The default of [`RegistryStore::write_batch`].
pub(crate) async fn write_each<S: RegistryStore + ?Sized>(
    store: &S,
    writes: &[StoreWrite<'_>],
) -> Result<Vec<bool>, StoreError> {
    let pending: Vec<_> = group_by_id(writes.iter().map(StoreWrite::id))
        .into_iter()
        .map(|positions| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(positions.len());
                for i in positions {
                    out.push((i, writes[i].apply(store).await?));
                }
                Ok::<_, StoreError>(out)
            })
        })
        .collect();
    let mut results = vec![false; writes.len()];
    for (i, r) in join_all(pending).await?.into_iter().flatten() {
        results[i] = r;
    }
    Ok(results)
}

/// Runs `pending` concurrently to the end (none is dropped half-way); their outputs in order,
/// or the first error once all have finished.
pub(crate) async fn join_all<T, F>(mut pending: Vec<F>) -> Result<Vec<T>, StoreError>
where
    F: Future<Output = Result<T, StoreError>> + Unpin,
{
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None)
        .take(pending.len())
        .collect();
    let mut index: Vec<usize> = (0..pending.len()).collect();
    let mut failure = None;
    std::future::poll_fn(|cx| {
        let mut k = 0;
        while k < pending.len() {
            match std::pin::Pin::new(&mut pending[k]).poll(cx) {
                std::task::Poll::Ready(r) => {
                    match r {
                        Ok(v) => out[index[k]] = Some(v),
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                    drop(pending.swap_remove(k));
                    index.swap_remove(k);
                }
                std::task::Poll::Pending => k += 1,
            }
        }
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match failure {
        Some(e) => Err(e),
        None => Ok(out.into_iter().flatten().collect()),
    }
}

/// One event of one of a session's streams, as the registry's event writer hands it to
/// [`RegistryStore::append_events`](super::RegistryStore::append_events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWrite<'a> {
    /// The session's id (what its record is keyed by).
    pub id: &'a str,
    /// The event's stream: 0 for the standalone stream, another id for a `POST`'s answer.
    pub stream: u32,
    /// The event's sequence number in its stream (its SSE id is `<stream>-<seq>`).
    pub seq: u32,
    /// Its place among the session's events, every stream together (increasing, across
    /// owners too): what a store bounds the session's log by.
    pub ordinal: u64,
    /// Whether it ended its stream.
    pub last: bool,
    /// The JSON-RPC message, as sent in the SSE `data:` field.
    pub data: &'a bytes::Bytes,
}

impl<'a> EventWrite<'a> {
    /// An event of the standalone stream (stream 0) whose ordinal is its sequence number.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_affinity::registry::store::EventWrite;
    ///
    /// let data = Bytes::from_static(b"{}");
    /// let ev = EventWrite::standalone("s1", 4, &data);
    /// assert_eq!((ev.stream, ev.seq, ev.ordinal), (0, 4, 4));
    /// ```
    #[must_use]
    pub fn standalone(id: &'a str, seq: u32, data: &'a bytes::Bytes) -> Self {
        Self {
            id,
            stream: 0,
            seq,
            ordinal: u64::from(seq),
            last: false,
            data,
        }
    }
}

/// What [`RegistryStore::read_events`](super::RegistryStore::read_events) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredEventPage {
    /// The highest sequence number of the standalone stream stored for the session (0: none).
    pub top: u32,
    /// The standalone events asked for, oldest first: `(seq, data)`.
    pub events: Vec<(u32, bytes::Bytes)>,
    /// The highest ordinal stored for the session (0: none).
    pub ordinal: u64,
    /// The stored events of its `POST` answers, in the order they were logged.
    pub requests: Vec<crate::session::RequestEvent>,
}
