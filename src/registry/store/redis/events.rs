//! The shared event log on Redis: a few hashes shared by every session, so that one command
//! writes the events of many sessions.
//!
//! A session's events (all its streams) live in one of 8 hashes, `{prefix}events:{<b>}` (`b`
//! a stable hash of the session id, the same on every node), as a ring of at most [`SLOTS`]
//! fields: field `<id>:<ordinal mod ring>`, value `<ordinal>:<stream>:<seq>:<last>:<data>`,
//! and its top `<id>:t` = `<ordinal>:<seq>:<highest>`: the standalone stream's newest event
//! and the highest ordinal over every stream (the ring may lose both to newer events). A
//! write overwrites the oldest event of its slot, so the log is bounded without a trim
//! command.
//!
//! A batch is one script per bucket it touches ([`scripts::APPEND_EVENTS`]): one `HMGET` of
//! the slots and tops it writes (an event is kept only if its slot holds an older ordinal, so
//! a former owner writing late never overwrites its successor), one `HSET` of all of them and
//! one `PEXPIRE` of the hash. A batch of 512 events spread over many sessions is then at most
//! 8 scripts of 4 commands each: 1/16 of a command per event, where a stream per session
//! costs 2 (an `XADD` per event and a `PEXPIRE` per session).
//!
//! The highest ordinal also says which slots a session can have used: `0 ..= min(highest,
//! ring - 1)`. Reading a session ([`scripts::READ_EVENTS`], on adoption) and deleting it
//! ([`scripts::REMOVE_EVENTS`], on close) look its top up first and touch only those slots,
//! so a session that logged nothing costs a lookup of one field, not of 257 (a reply of 257
//! nils to parse on the adoption path, measured at a quarter of an adoption's CPU).
//!
//! What this costs: the hashes expire only when no session of their bucket has written for
//! the TTL, so the events of a session that is never closed (its record expired, or removed
//! by a node that had no continuity) stay until their slots are reused or the bucket expires;
//! a closed session's fields are deleted (one script per bucket per batch).

use std::time::Duration;

use ::redis::Value;

use super::RedisStore;
use super::scripts;
use crate::registry::store::key::event_bucket_of as bucket_of;
use crate::registry::store::{EventWrite, StoreError, StoredEventPage};

/// The most events kept per session (a longer bound is cut to it).
pub(crate) const SLOTS: usize = 256;

impl RedisStore {
    /// `items` grouped by the bucket of the session `id_of` names, in their order within
    /// each.
    fn by_bucket<T>(
        items: impl IntoIterator<Item = T>,
        id_of: impl Fn(&T) -> &str,
    ) -> Vec<(u32, Vec<T>)> {
        let mut buckets: Vec<(u32, Vec<T>)> = Vec::new();
        for item in items {
            let b = bucket_of(id_of(&item));
            match buckets.iter_mut().find(|(k, _)| *k == b) {
                Some((_, list)) => list.push(item),
                None => buckets.push((b, vec![item])),
            }
        }
        buckets
    }

    pub(super) async fn append_event_batch(
        &self,
        events: &[EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ring = max_len.clamp(1, SLOTS);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let pending: Vec<_> = Self::by_bucket(events, |ev| ev.id)
            .into_iter()
            .map(|(bucket, list)| {
                let mut invocation =
                    scripts::APPEND_EVENTS.key(self.inner.keys.event_bucket(bucket));
                invocation.arg(ring).arg(ms);
                for ev in list {
                    invocation
                        .arg(ev.id)
                        .arg(ev.ordinal)
                        .arg(ev.stream)
                        .arg(ev.seq)
                        .arg(u8::from(ev.last))
                        .arg(ev.data.as_ref());
                }
                Box::pin(self.invoke::<i64>(invocation))
            })
            .collect();
        super::super::write::join_all(pending).await.map(drop)
    }

    pub(super) async fn read_event_page(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> Result<StoredEventPage, StoreError> {
        let mut invocation = scripts::READ_EVENTS.key(self.inner.keys.events(id));
        invocation.arg(id).arg(SLOTS);
        let reply: Value = self.invoke(invocation).await?;
        page(&reply, after, max)
    }

    pub(super) async fn remove_event_logs(&self, ids: &[&str]) -> Result<(), StoreError> {
        let pending: Vec<_> = Self::by_bucket(ids.iter().copied(), |id| id)
            .into_iter()
            .map(|(bucket, ids)| {
                let mut invocation =
                    scripts::REMOVE_EVENTS.key(self.inner.keys.event_bucket(bucket));
                invocation.arg(SLOTS).arg(ids);
                Box::pin(self.invoke::<i64>(invocation))
            })
            .collect();
        super::super::write::join_all(pending).await.map(drop)
    }
}

/// One stored slot: `<ordinal>:<stream>:<seq>:<last>:<data>`.
struct Slot {
    ordinal: u64,
    stream: u32,
    seq: u32,
    last: bool,
    data: bytes::Bytes,
}

/// Parses a slot's value; `None` for anything else.
fn slot(value: &[u8]) -> Option<Slot> {
    let mut parts = value.splitn(5, |b| *b == b':');
    let mut num = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u64>().ok())
    };
    let ordinal = num()?;
    let stream = u32::try_from(num()?).ok()?;
    let seq = u32::try_from(num()?).ok()?;
    let last = num()? == 1;
    let data = bytes::Bytes::copy_from_slice(parts.next()?);
    Some(Slot {
        ordinal,
        stream,
        seq,
        last,
        data,
    })
}

/// The page of a session's read ([`scripts::READ_EVENTS`]: its slots, then its top): its
/// standalone events after `after` (at most `max`), its `POST` answers' events, its tops.
/// Unreadable slots are skipped.
fn page(reply: &Value, after: Option<u32>, max: usize) -> Result<StoredEventPage, StoreError> {
    let items = match reply {
        Value::Array(items) => items.as_slice(),
        Value::Nil => &[],
        Value::ServerError(err) => return Err(super::classify(err.clone().into())),
        _ => {
            return Err(StoreError::backend(
                "unexpected reply to the event log's read",
            ));
        }
    };
    let bulk = |item: &Value| match item {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    };
    let (slots, top) = match items {
        [slots @ .., t] => (slots, bulk(t)),
        [] => (items, None),
    };
    let mut all: Vec<Slot> = slots
        .iter()
        .filter_map(bulk)
        .filter_map(|v| slot(&v))
        .collect();
    all.sort_unstable_by_key(|s| s.ordinal);
    // The top as written beside the ring (`<ordinal>:<seq>:<highest>`; `<ordinal>:<seq>` as
    // written before the highest ordinal was kept): the ring alone may have lost it to newer
    // events.
    let (top_ordinal, top_seq, high) = top
        .and_then(|t| {
            let s = std::str::from_utf8(&t).ok()?;
            let mut parts = s.splitn(3, ':');
            let o = parts.next()?.parse::<u64>().ok()?;
            let q = parts.next()?.parse::<u32>().ok()?;
            let h = match parts.next() {
                Some(h) => h.parse::<u64>().ok()?,
                None => o,
            };
            Some((o, q, h))
        })
        .unwrap_or((0, 0, 0));
    let mut out = StoredEventPage {
        top: top_seq,
        ordinal: top_ordinal.max(high),
        ..StoredEventPage::default()
    };
    for s in all {
        out.ordinal = out.ordinal.max(s.ordinal);
        if s.stream == 0 {
            out.top = out.top.max(s.seq);
            if after.is_some_and(|a| s.seq > a) && out.events.len() < max.max(1) {
                out.events.push((s.seq, s.data));
            }
        } else {
            out.requests
                .push(crate::session::RequestEvent::new(s.stream, s.seq, s.data).with_last(s.last));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::key::EVENT_BUCKETS as BUCKETS;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: every node, of every version, must put a session in the same bucket.
        assert_eq!(bucket_of(""), 0x811c_9dc5 % BUCKETS);
        assert_eq!(bucket_of("a"), 0xe40c_292c % BUCKETS);
        let mut counts = [0u32; BUCKETS as usize];
        for n in 0..8_000 {
            counts[bucket_of(&format!("n1.{n:x}Zq")) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (800..1_200).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn unreadable_slots_are_skipped_and_the_page_is_in_order() {
        let mut items: Vec<Value> = vec![Value::Nil; 12];
        items[0] = Value::BulkString(b"5:0:3:0:{}".to_vec());
        items[1] = Value::BulkString(b"x:0:1:0:{}".to_vec());
        items[2] = Value::BulkString(b"nocolon".to_vec());
        items[3] = Value::BulkString(b"4:2:1:1:a:b".to_vec());
        items[4] = Value::BulkString(b"2:0:1:0:one".to_vec());
        items[11] = Value::BulkString(b"9:7:11".to_vec());
        let got = page(&Value::Array(items), Some(0), 10).expect("parsed");
        assert_eq!(
            (got.top, got.ordinal),
            (7, 11),
            "the top fields win over the ring"
        );
        assert_eq!(
            got.events,
            vec![
                (1, bytes::Bytes::from_static(b"one")),
                (3, bytes::Bytes::from_static(b"{}"))
            ]
        );
        assert_eq!(
            got.requests,
            vec![
                crate::session::RequestEvent::new(2, 1, bytes::Bytes::from_static(b"a:b"))
                    .with_last(true)
            ]
        );
    }
}
