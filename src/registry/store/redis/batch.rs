//! [`RedisStore::write_batch`](super::RedisStore) on a single server: two pipelined round trips
//! of plain commands.
//!
//! The first round trip lists the sessions the batch registers in their node's index (one
//! `ZADD` per node; not those a later write of the batch removes), then writes the records, in
//! the batch's order, one or two commands per write:
//!
//! | write | commands | result |
//! |---|---|---|
//! | register | `SET key json NX GET EX ttl` | stored (nil), or an identical record was there |
//! | remove | `GETDEL key` | a record was there |
//! | remove if owned | the compare-and-delete script (`EVALSHA`) | it was ours and is gone |
//! | refresh | `EXPIRE key ttl`, `GET key` | the record exists |
//!
//! Its replies give each write's result and say which node index each session joins or leaves
//! (a removed record names its node). The second round trip first resets the TTL of each record
//! a register found already there, identical (a write replayed after a lost reply), unless a
//! later write of the batch set or removed it; then it updates the indexes: per index, one call
//! of the index script listing the ids that join it (scored with the server's clock; then the
//! index is pruned and its expiry extended) and one `ZREM` of the ids that leave it, at most
//! [`IDS_PER_INDEX_COMMAND`] ids per command. Per session and index the batch's last change
//! wins, so a session registered and removed in the same batch touches no index at all. The
//! index updates are best effort, as in the single-write methods: an error the server answers
//! is logged, and each record's own TTL still applies; a round trip lost on the way (timed
//! out, the connection dropped) fails the batch, which the registry then replays write by
//! write, each write putting its session's index entry in step again.
//!
//! Listing a session before its record is written means that a node dying between the two
//! round trips (or while the first runs) leaves at worst an index entry without a record, which
//! its next process drops, never a record its next process cannot find
//! ([`remove_stale`](crate::registry::RegistryStore::remove_stale) walks the index). A register
//! that finds another node's record takes its listing back in the second round trip.
//!
//! Writes on one session take effect in the batch's order. The one exception would be a
//! compare-and-delete refused because the server lost its script: it is sent again after the
//! rest, so when a later write of the batch touched the same session the batch fails instead
//! (and the registry replays it write by write, in order).
//!
//! Plain commands cost Redis a fraction of what the same work costs inside a script (each
//! `redis.call` and each argument crosses into Lua and back): this is the registry's write
//! path, so under session churn it is most of what Redis does.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use ::redis::aio::ConnectionManager;
use ::redis::{Pipeline, ServerErrorKind, Value};
use tokio::time::Instant;

use super::commands::{
    OwnedRemoval, Registered, SessionKey, command, expire_command, get_command, getdel_command,
    node_of, register_command, registered,
};
use super::{INDEX_PUT, REMOVE_IF_OWNED, RedisStore, capped_ttl_seconds as secs, classify, within};
use crate::registry::store::{RecordKey, StoreError, StoreWrite};

/// The most ids one index command carries (the index script unpacks its arguments onto the Lua
/// stack, which holds about 8,000 values).
const IDS_PER_INDEX_COMMAND: usize = 512;

/// What the batch does to the node indexes: per (node, session), the last write wins.
struct IndexChanges<'a> {
    entries: HashMap<(Cow<'a, str>, &'a str), Change>,
}

struct Change {
    /// `Some(ttl)`: join the index (or stay, with a new expiry); `None`: leave it.
    join: Option<u64>,
    /// The batch's first change was a register that stored a new record, so the id was not
    /// listed before the batch: leaving needs no `ZREM`.
    unlisted: bool,
}

impl<'a> IndexChanges<'a> {
    /// Room for `writes` changes without growing.
    fn with_capacity(writes: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(writes),
        }
    }

    /// `id` joins `node`'s index for `ttl`; `new_record`: its record was just created.
    fn join(&mut self, node: Cow<'a, str>, id: &'a str, ttl: u64, new_record: bool) {
        let change = self.entries.entry((node, id)).or_insert(Change {
            join: None,
            unlisted: new_record,
        });
        change.join = Some(ttl);
    }

    fn leave(&mut self, node: Cow<'a, str>, id: &'a str) {
        let change = self.entries.entry((node, id)).or_insert(Change {
            join: None,
            unlisted: false,
        });
        change.join = None;
    }

    /// Per node: the ids joining its index and the ids leaving it.
    fn by_node(&self) -> HashMap<&str, NodeUpdate<'a>> {
        let mut by_node: HashMap<&str, NodeUpdate<'a>> = HashMap::new();
        for ((node, id), change) in &self.entries {
            match change.join {
                Some(ttl) => by_node.entry(node).or_default().joins.push((ttl, *id)),
                None if change.unlisted => {}
                None => by_node.entry(node).or_default().leaves.push(*id),
            }
        }
        by_node
    }
}

/// One node index's part of a batch.
#[derive(Default)]
struct NodeUpdate<'a> {
    /// Ids joining the index, with their TTLs in seconds.
    joins: Vec<(u64, &'a str)>,
    /// Ids leaving it.
    leaves: Vec<&'a str>,
}

impl RedisStore {
    /// Applies `writes` in two round trips (see the module docs), done by `deadline`.
    pub(super) async fn write_pipelined(
        &self,
        conn: &ConnectionManager,
        writes: &[StoreWrite<'_>],
        deadline: Instant,
    ) -> Result<Vec<bool>, StoreError> {
        let keys = &self.inner.keys;

        // Round trip 1: the listings, then the records. Each record command is built at its final
        // size, with the key and the record's JSON written straight into it.
        let mut pipe = Pipeline::with_capacity(writes.len() + 1);
        pipe.ignore_errors();
        let prelisted = prelist(&mut pipe, keys, writes);
        let listings = pipe.len();
        for write in writes {
            match *write {
                StoreWrite::Register { id, record, ttl } => {
                    pipe.add_command(register_command(keys, id, record, secs(ttl)));
                }
                StoreWrite::Remove { id } => {
                    pipe.add_command(getdel_command(keys, id));
                }
                StoreWrite::RemoveIfOwned {
                    id,
                    node,
                    incarnation,
                } => {
                    remove_if_owned(&mut pipe, SessionKey::new(keys, id), node, incarnation);
                }
                StoreWrite::Refresh { id, ttl } => {
                    pipe.add_command(expire_command(keys, id, secs(ttl)))
                        .add_command(get_command(keys, id));
                }
            }
        }
        let mut replies = within(deadline, run(conn, &pipe)).await?;
        // The listings are best effort, as every index update: the second round trip lists
        // the new sessions again.
        if let Some(err) = replies.drain(..listings).find_map(|r| server_error(&r)) {
            tracing::debug!(error = %err, "registry: node index update failed");
        }

        // A server that lost its scripts (restart, `SCRIPT FLUSH`) refused the compare-and-delete
        // writes without running them: load the script and send those writes again, unless a
        // later write of the batch touched the same session (sent again now, they would land
        // after it: the batch fails instead, and the queue replays it in order).
        let refused: Vec<(usize, usize)> = reply_positions(writes)
            .filter(|&(w, r)| {
                matches!(writes[w], StoreWrite::RemoveIfOwned { .. }) && is_noscript(&replies[r])
            })
            .collect();
        if !refused.is_empty() {
            within(deadline, load(conn, &REMOVE_IF_OWNED)).await?;
            let overtaken = refused.iter().any(|&(w, _)| {
                let id = writes[w].id();
                writes[w + 1..].iter().any(|later| later.id() == id)
            });
            if overtaken {
                return Err(StoreError::backend(
                    "the server had lost the compare-and-delete script, and a later write of \
                     the batch touched the same session",
                ));
            }
            let mut again = ::redis::pipe();
            again.ignore_errors();
            for &(w, _) in &refused {
                if let StoreWrite::RemoveIfOwned {
                    id,
                    node,
                    incarnation,
                } = writes[w]
                {
                    remove_if_owned(&mut again, SessionKey::new(keys, id), node, incarnation);
                }
            }
            let resent = within(deadline, run(conn, &again)).await?;
            for (&(_, r), reply) in refused.iter().zip(resent) {
                replies[r] = reply;
            }
        }

        // Each write's result, and what it does to the indexes.
        let mut results = Vec::with_capacity(writes.len());
        let mut index = IndexChanges::with_capacity(writes.len());
        // Registers that found their own record: its TTL is reset in round 2, unless a later
        // write of the batch set or removed the record (the last write on a session wins).
        let mut ttl_resets: HashMap<&str, u64> = HashMap::new();
        for (w, r) in reply_positions(writes) {
            let write = &writes[w];
            if !ttl_resets.is_empty() && !matches!(write, StoreWrite::Register { .. }) {
                ttl_resets.remove(write.id());
            }
            let done = match *write {
                StoreWrite::Register { id, record, ttl } => {
                    match registered(bytes(&replies[r])?, record) {
                        Registered::New => {
                            ttl_resets.remove(id);
                            index.join(Cow::Borrowed(&record.node), id, secs(ttl), true);
                            true
                        }
                        Registered::Again => {
                            ttl_resets.insert(id, secs(ttl));
                            index.join(Cow::Borrowed(&record.node), id, secs(ttl), false);
                            true
                        }
                        Registered::Other => {
                            if prelisted.contains(id) {
                                index.leave(Cow::Borrowed(&record.node), id);
                            }
                            false
                        }
                    }
                }
                StoreWrite::Remove { id } => match bytes(&replies[r])? {
                    None => false,
                    Some(value) => {
                        // The record names the index it is listed in; an unreadable one is in
                        // none of ours.
                        if let Some(node) = node_of(value) {
                            index.leave(node, id);
                        }
                        true
                    }
                },
                StoreWrite::RemoveIfOwned { id, node, .. } => {
                    let outcome = OwnedRemoval::from_reply(int(&replies[r])?);
                    if outcome.unlists() {
                        index.leave(Cow::Borrowed(node), id);
                    }
                    outcome == OwnedRemoval::Removed
                }
                StoreWrite::Refresh { id, ttl } => {
                    let refreshed = int(&replies[r])? == 1;
                    // Keep the index entry's expiry in step with the record's.
                    if refreshed && let Some(node) = bytes(&replies[r + 1])?.and_then(node_of) {
                        index.join(node, id, secs(ttl), false);
                    }
                    refreshed
                }
            };
            results.push(done);
        }

        // Round trip 2: the TTL resets, then the node indexes. A reset is part of its write's
        // result: if it fails, the batch fails. The indexes are best effort, as in the
        // single-write methods: an error the server answers is logged, and each record's own
        // TTL still applies; a round trip lost on the way fails the batch.
        let pipe = index_pipeline(&self.inner.keys, &ttl_resets, &index);
        if pipe.is_empty() {
            return Ok(results);
        }
        let sent = within(deadline, async {
            let replies = run(conn, &pipe).await?;
            if !replies.iter().any(is_noscript) {
                return Ok(replies);
            }
            // Every command of this round trip can run twice: load, send it again.
            load(conn, &INDEX_PUT).await?;
            run(conn, &pipe).await
        })
        .await;
        let index_failure = match sent {
            Ok(replies) => {
                let (resets, updates) = replies.split_at(ttl_resets.len());
                if let Some(err) = resets.iter().find_map(server_error) {
                    return Err(err);
                }
                updates.iter().find_map(server_error)
            }
            Err(err) if ttl_resets.is_empty() && !err.is_timeout() && !err.is_unavailable() => {
                Some(err)
            }
            Err(err) => return Err(err),
        };
        if let Some(err) = index_failure {
            tracing::debug!(error = %err, "registry: node index update failed");
        }
        Ok(results)
    }
}

/// Adds to `pipe` one `ZADD` per node listing the sessions `writes` registers, except those a
/// later write of the batch removes (and an `EXPIRE … NX`, so a new index expires even if the
/// second round trip never runs), scored by their expiry (this machine's clock; the second
/// round trip scores them again with the server's). Returns the ids listed.
fn prelist<'w>(
    pipe: &mut Pipeline,
    keys: &RecordKey,
    writes: &[StoreWrite<'w>],
) -> HashSet<&'w str> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut removed_later: HashSet<&str> = HashSet::new();
    let mut listed: HashSet<&'w str> = HashSet::new();
    let mut by_node: HashMap<&'w str, Vec<(u64, &'w str)>> = HashMap::new();
    for write in writes.iter().rev() {
        match *write {
            StoreWrite::Remove { id } | StoreWrite::RemoveIfOwned { id, .. } => {
                removed_later.insert(id);
            }
            StoreWrite::Register { id, record, ttl }
                if !removed_later.contains(id) && listed.insert(id) =>
            {
                by_node
                    .entry(record.node.as_str())
                    .or_default()
                    .push((now.saturating_add(secs(ttl)), id));
            }
            _ => {}
        }
    }
    for (node, ids) in &by_node {
        let index = keys.node_index(node);
        for chunk in ids.chunks(IDS_PER_INDEX_COMMAND) {
            let mut cmd = ::redis::cmd("ZADD");
            cmd.arg(&index);
            for (score, id) in chunk {
                cmd.arg(*score).arg(*id);
            }
            pipe.add_command(cmd);
        }
        // A new index gets an expiry at once (`NX`: an existing one keeps its own), as long as
        // its newest entry's: should the node die before the second round trip sets it, the
        // index does not outlive its records.
        let newest = ids.iter().map(|(expiry, _)| *expiry).max().unwrap_or(now);
        pipe.add_command(
            ::redis::cmd("EXPIRE")
                .arg(&index)
                .arg(newest.saturating_sub(now).max(1))
                .arg("NX")
                .to_owned(),
        );
    }
    listed
}

/// `(write, first reply)` for each write: a refresh has two replies, every other write one.
fn reply_positions<'w>(
    writes: &'w [StoreWrite<'_>],
) -> impl Iterator<Item = (usize, usize)> + use<'w> {
    writes.iter().enumerate().scan(0, |next, (w, write)| {
        let r = *next;
        *next += match write {
            StoreWrite::Refresh { .. } => 2,
            _ => 1,
        };
        Some((w, r))
    })
}

fn remove_if_owned(pipe: &mut Pipeline, key: SessionKey<'_>, node: &str, incarnation: &str) {
    let hash = REMOVE_IF_OWNED.get_hash();
    let bytes = hash.len() + key.len() + node.len() + incarnation.len() + 8;
    let mut cmd = command("EVALSHA", 6, bytes);
    cmd.arg(hash).arg(1).arg(key).arg(node).arg(incarnation);
    pipe.add_command(cmd);
}

/// The second round trip's commands: the TTL resets first (one `EXPIRE` each), then per node
/// index the ids joining it (the index script, [`IDS_PER_INDEX_COMMAND`] at a time: the script
/// unpacks its arguments onto Lua's stack) and the ids leaving it (one `ZREM`).
fn index_pipeline(
    keys: &RecordKey,
    ttl_resets: &HashMap<&str, u64>,
    index: &IndexChanges<'_>,
) -> Pipeline {
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    for (id, ttl) in ttl_resets {
        pipe.add_command(expire_command(keys, id, *ttl));
    }
    for (node, update) in index.by_node() {
        let key = keys.node_index(node);
        for chunk in update.joins.chunks(IDS_PER_INDEX_COMMAND) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(INDEX_PUT.get_hash())
                .arg(1)
                .arg(&key);
            for (ttl, id) in chunk {
                cmd.arg(*ttl).arg(*id);
            }
        }
        if !update.leaves.is_empty() {
            pipe.cmd("ZREM").arg(&key).arg(&update.leaves);
        }
    }
    pipe
}

/// Sends `pipe`; one reply per command (errors among them).
async fn run(conn: &ConnectionManager, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
    let replies: Vec<Value> = pipe
        .query_async(&mut conn.clone())
        .await
        .map_err(classify)?;
    if replies.len() != pipe.len() {
        return Err(StoreError::backend(format!(
            "the pipeline answered {} of {} commands",
            replies.len(),
            pipe.len()
        )));
    }
    Ok(replies)
}

async fn load(conn: &ConnectionManager, script: &::redis::Script) -> Result<(), StoreError> {
    script
        .load_async(&mut conn.clone())
        .await
        .map(drop)
        .map_err(classify)
}

fn is_noscript(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(err) if err.kind() == Some(ServerErrorKind::NoScript))
}

fn server_error(reply: &Value) -> Option<StoreError> {
    match reply {
        Value::ServerError(err) => Some(classify(err.clone().into())),
        _ => None,
    }
}

/// A string reply's bytes, `None` for nil.
fn bytes(reply: &Value) -> Result<Option<&[u8]>, StoreError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(s) => Ok(Some(s.as_bytes())),
        other => Err(unexpected(other)),
    }
}

fn int(reply: &Value) -> Result<i64, StoreError> {
    match reply {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: &Value) -> StoreError {
    server_error(reply)
        .unwrap_or_else(|| StoreError::backend(format!("unexpected reply in a batch: {reply:?}")))
}
