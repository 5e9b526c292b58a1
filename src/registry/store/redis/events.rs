//! The shared event log on Redis: one Redis Stream per session,
//! `{prefix}{<id>}:events` (the record's hash slot), entries `<seq>-1` with one field
//! `d` holding the event's JSON-RPC message.
//!
//! A batch is one pipeline per session on a cluster (its keys share a slot), the whole batch
//! in one pipeline on a single server: per session, `XADD key MAXLEN ~ <max> <seq>-1 d
//! <data>` for each event, then one `PEXPIRE key <ttl>`. An `XADD` refused because its id is
//! not above the stream's top (a former owner writing late) is skipped. Reading after `N` is
//! `XRANGE key <N+1>-0 + COUNT <max>` plus `XREVRANGE key + - COUNT 1` (the top), one round
//! trip.

#[cfg(feature = "redis-cluster")]
use std::future::Future;
#[cfg(feature = "redis-cluster")]
use std::pin::Pin;
use std::time::Duration;

use ::redis::{Pipeline, Value};

use super::RedisStore;
use super::conn::Conn;
use crate::registry::store::{EventWrite, StoreError, StoredEventPage};

/// One session's write, running.
#[cfg(feature = "redis-cluster")]
type Pending<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

impl RedisStore {
    fn events_key(&self, id: &str) -> String {
        self.inner.keys.events(id)
    }

    fn add_session(
        &self,
        pipe: &mut Pipeline,
        id: &str,
        events: &[&EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) {
        let key = self.events_key(id);
        for ev in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len.max(1))
                .arg(format!("{}-1", ev.seq))
                .arg("d")
                .arg(ev.data.as_ref());
        }
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        pipe.cmd("PEXPIRE").arg(&key).arg(ms);
    }

    pub(super) async fn append_event_batch(
        &self,
        events: &[EventWrite<'_>],
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // Per session, in the batch's order.
        let mut sessions: Vec<(&str, Vec<&EventWrite<'_>>)> = Vec::new();
        for ev in events {
            match sessions.iter_mut().find(|(id, _)| *id == ev.id) {
                Some((_, list)) => list.push(ev),
                None => sessions.push((ev.id, vec![ev])),
            }
        }
        if sessions.is_empty() {
            return Ok(());
        }
        match &self.inner.conn {
            Conn::Single(_) => {
                let mut pipe = ::redis::pipe();
                pipe.ignore_errors();
                for (id, list) in &sessions {
                    self.add_session(&mut pipe, id, list, max_len, ttl);
                }
                check(self.query_pipe::<Vec<Value>>(&pipe).await?)
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => {
                let pending: Vec<Pending<'_>> = sessions
                    .iter()
                    .map(|(id, list)| {
                        let mut pipe = ::redis::pipe();
                        pipe.ignore_errors();
                        self.add_session(&mut pipe, id, list, max_len, ttl);
                        Box::pin(async move { check(self.query_pipe::<Vec<Value>>(&pipe).await?) })
                            as Pending<'_>
                    })
                    .collect();
                super::super::write::join_all(pending).await.map(drop)
            }
        }
    }

    pub(super) async fn read_event_page(
        &self,
        id: &str,
        after: Option<u32>,
        max: usize,
    ) -> Result<StoredEventPage, StoreError> {
        let key = self.events_key(id);
        let mut pipe = ::redis::pipe();
        pipe.cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        if let Some(after) = after {
            pipe.cmd("XRANGE")
                .arg(&key)
                .arg(format!("{}-0", u64::from(after) + 1))
                .arg("+")
                .arg("COUNT")
                .arg(max.max(1));
        }
        let replies: Vec<Value> = self.query_pipe(&pipe).await?;
        let mut replies = replies.into_iter();
        let top = replies
            .next()
            .map(|r| entries(&r))
            .transpose()?
            .and_then(|e| e.last().map(|(seq, _)| *seq))
            .unwrap_or(0);
        let events = match replies.next() {
            Some(r) => entries(&r)?,
            None => Vec::new(),
        };
        Ok(StoredEventPage { top, events })
    }

    pub(super) async fn remove_event_logs(&self, ids: &[&str]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match &self.inner.conn {
            Conn::Single(_) => {
                let mut cmd = ::redis::cmd("DEL");
                for id in ids {
                    cmd.arg(self.events_key(id));
                }
                self.query::<i64>(cmd).await.map(drop)
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => {
                let pending: Vec<Pending<'_>> = ids
                    .iter()
                    .map(|id| {
                        let mut cmd = ::redis::cmd("DEL");
                        cmd.arg(self.events_key(id));
                        Box::pin(async move { self.query::<i64>(cmd).await.map(drop) })
                            as Pending<'_>
                    })
                    .collect();
                super::super::write::join_all(pending).await.map(drop)
            }
        }
    }
}

/// Whether an `XADD` was refused for its id (not above the stream's top): a late write.
fn stale_id(err: &::redis::ServerError) -> bool {
    err.details()
        .is_some_and(|d| d.contains("equal or smaller than the target stream top item"))
}

/// The first real error among a batch's replies (stale ids are skipped on purpose).
fn check(replies: Vec<Value>) -> Result<(), StoreError> {
    for reply in replies {
        if let Value::ServerError(err) = reply
            && !stale_id(&err)
        {
            return Err(super::classify(err.into()));
        }
    }
    Ok(())
}

/// The entries of an `XRANGE`/`XREVRANGE` reply: `(seq, data)`, an unreadable entry skipped.
fn entries(reply: &Value) -> Result<Vec<(u32, bytes::Bytes)>, StoreError> {
    let items = match reply {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        Value::ServerError(err) => return Err(super::classify(err.clone().into())),
        _ => return Err(StoreError::backend("unexpected reply to XRANGE")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else { continue };
        let (Some(id), Some(Value::Array(fields))) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let id = match id {
            Value::BulkString(b) => std::str::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s.as_str()),
            _ => None,
        };
        let Some(seq) = id
            .and_then(|id| id.split_once('-'))
            .and_then(|(ms, _)| ms.parse::<u32>().ok())
        else {
            continue;
        };
        let data = fields.chunks(2).find_map(|kv| match kv {
            [Value::BulkString(k), Value::BulkString(v)] if k == b"d" => {
                Some(bytes::Bytes::copy_from_slice(v))
            }
            _ => None,
        });
        if let Some(data) = data {
            out.push((seq, data));
        }
    }
    Ok(out)
}
