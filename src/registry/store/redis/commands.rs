//! The commands both write paths send, built in place, and the reading of their replies.

use std::borrow::Cow;
use std::io::Write as _;

use ::redis::{Cmd, RedisWrite, ToRedisArgs, Value};
use serde::Deserialize;

use crate::registry::store::{Claim, RecordKey, SessionRecord, StoreError};

/// `SET key json NX GET EX ttl`: registers `record` under `id` unless a record is there, and
/// answers with that record (nil when it stored this one). [`registered`] reads the answer.
pub(super) fn register_command(
    keys: &RecordKey,
    id: &str,
    record: &SessionRecord,
    ttl: u64,
) -> Cmd {
    let key = SessionKey::new(keys, id);
    let json = record.node.len() + record.incarnation.len() + 40;
    let mut cmd = command("SET", 7, key.len() + json + 24);
    cmd.arg(key)
        .arg(RecordJson(record))
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(ttl);
    cmd
}

/// What a register found, from [`register_command`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registered {
    /// Nothing was there: the record is stored.
    New,
    /// The same record was there (a write replayed after a lost reply): it counts as stored,
    /// and its TTL must be reset (`EXPIRE`).
    Again,
    /// Another record is there, left alone: not stored.
    Other,
}

/// Reads [`register_command`]'s answer for `record`: the record that was there, if any.
pub(super) fn registered(found: Option<&[u8]>, record: &SessionRecord) -> Registered {
    match found {
        None => Registered::New,
        Some(old) if old == record.to_json().as_bytes() => Registered::Again,
        Some(_) => Registered::Other,
    }
}

/// `GET key`: session `id`'s record.
pub(super) fn get_command(keys: &RecordKey, id: &str) -> Cmd {
    key_command("GET", keys, id)
}

/// `GETDEL key`: removes session `id`'s record and answers with it.
pub(super) fn getdel_command(keys: &RecordKey, id: &str) -> Cmd {
    key_command("GETDEL", keys, id)
}

/// `EXPIRE key ttl`: sets session `id`'s record's TTL; answers 1 if the record exists.
pub(super) fn expire_command(keys: &RecordKey, id: &str, ttl: u64) -> Cmd {
    let key = SessionKey::new(keys, id);
    let mut cmd = command("EXPIRE", 3, key.len() + 26);
    cmd.arg(key).arg(ttl);
    cmd
}

/// `name key`, for the commands that take a record's key alone.
fn key_command(name: &str, keys: &RecordKey, id: &str) -> Cmd {
    let key = SessionKey::new(keys, id);
    let mut cmd = command(name, 2, name.len() + key.len());
    cmd.arg(key);
    cmd
}

/// What the compare-and-delete script answered (1, 0 or -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OwnedRemoval {
    /// The record was this node's and incarnation's: removed.
    Removed,
    /// Another node's or incarnation's record: kept.
    Kept,
    /// No record at all.
    Absent,
}

impl OwnedRemoval {
    pub(super) fn from_reply(reply: i64) -> Self {
        match reply {
            1 => Self::Removed,
            -1 => Self::Absent,
            _ => Self::Kept,
        }
    }

    /// Whether the session leaves the node's index: removed, or there is no record to keep
    /// the entry for.
    pub(super) fn unlists(self) -> bool {
        self != Self::Kept
    }
}

/// Reads the claim script's answer: 1 won, 0 no record, else the value found. A value that is
/// no record (the script compares nothing it cannot read) is an invalid-record error.
pub(super) fn claimed(reply: &Value) -> Result<Claim, StoreError> {
    let found = match reply {
        Value::Int(1) => return Ok(Claim::Won),
        Value::Int(0) | Value::Nil => return Ok(Claim::Lost(None)),
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        other => {
            return Err(StoreError::backend(format!(
                "unexpected reply to a claim: {other:?}"
            )));
        }
    };
    let json = std::str::from_utf8(found).map_err(StoreError::invalid_record)?;
    SessionRecord::from_json(json).map(|current| Claim::Lost(Some(current)))
}

/// A command named `name` with room for `args` arguments (the name included) of `bytes` bytes
/// in all, so that writing them never grows its buffers.
pub(super) fn command(name: &str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(args, bytes);
    cmd.arg(name);
    cmd
}

/// A session record's key, written into a command in place (see [`RecordKey::session`]).
pub(super) struct SessionKey<'a>([&'a str; 4]);

impl<'a> SessionKey<'a> {
    pub(super) fn new(keys: &'a RecordKey, id: &'a str) -> Self {
        Self(keys.session_parts(id))
    }

    pub(super) fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }
}

impl ToRedisArgs for SessionKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // The writer appends to the command's buffer: it cannot fail.
            let _ = arg.write_all(part.as_bytes());
        }
    }
}

/// A record's JSON (as [`SessionRecord::to_json`]), serialised into a command in place.
pub(super) struct RecordJson<'a>(&'a SessionRecord);

impl ToRedisArgs for RecordJson<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        // Two strings and an integer into the command's buffer: it cannot fail.
        let _ = serde_json::to_writer(out.writer_for_next_arg(), self.0);
    }
}

/// The node a stored record names, if it is a record ([`SessionRecord::from_json`] accepts
/// the same), borrowed from the reply where it has no escapes.
pub(super) fn node_of(value: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Stored<'a> {
        #[serde(rename = "n", borrow)]
        node: Cow<'a, str>,
        #[serde(rename = "i", borrow)]
        _incarnation: Cow<'a, str>,
        #[serde(rename = "c")]
        _created_at: u64,
    }
    serde_json::from_slice::<Stored<'_>>(value)
        .ok()
        .map(|stored| stored.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records_are_written_as_their_strings() {
        let keys = RecordKey::new("app:mcp:");
        let record = SessionRecord::new("node-\"a\"", "7f3a").with_created_at(1_767_225_600);
        let mut in_place = Cmd::new();
        in_place
            .arg(SessionKey::new(&keys, "n1.Zx9"))
            .arg(RecordJson(&record));
        let mut copied = Cmd::new();
        copied.arg(keys.session("n1.Zx9")).arg(record.to_json());
        assert_eq!(in_place.get_packed_command(), copied.get_packed_command());
        assert_eq!(
            SessionKey::new(&keys, "n1.Zx9").len(),
            "app:mcp:{n1.Zx9}".len()
        );
    }

    #[test]
    fn claim_replies_are_read_without_trusting_them() {
        assert_eq!(claimed(&Value::Int(1)).ok(), Some(Claim::Won));
        assert_eq!(claimed(&Value::Int(0)).ok(), Some(Claim::Lost(None)));
        let record = SessionRecord::new("node-b", "2").with_created_at(1);
        let found = Value::BulkString(record.to_json().into_bytes());
        assert_eq!(claimed(&found).ok(), Some(Claim::Lost(Some(record))));
        for junk in [
            Value::BulkString(b"not a record".to_vec()),
            Value::BulkString(b"[\"a\",\"b\",1]".to_vec()),
            Value::BulkString(vec![0xff, 0xfe]),
            Value::SimpleString("{}".to_owned()),
        ] {
            let err = claimed(&junk).expect_err("no record");
            assert!(err.is_invalid_record(), "{junk:?}: {err:?}");
        }
        let err = claimed(&Value::Int(7)).expect_err("no such answer");
        assert!(!err.is_invalid_record() && !err.is_timeout());
    }

    #[test]
    fn node_of_reads_what_from_json_reads() {
        for json in [
            r#"{"n":"node-a","i":"7f3a","c":1}"#,
            r#"{"n":"node-\"a\"","i":"7f3a","c":1}"#,
            r#"{"c":1,"i":"x","n":"b","extra":true}"#,
            r#"{"n":"node-a","c":1}"#,
            r#"{"n":"node-a","i":"7f3a","c":"1"}"#,
            r#"{"n":1,"i":"7f3a","c":1}"#,
            "not a record",
            "",
        ] {
            assert_eq!(
                node_of(json.as_bytes()).map(String::from),
                SessionRecord::from_json(json).ok().map(|r| r.node),
                "{json}"
            );
        }
        assert!(matches!(
            node_of(br#"{"n":"node-a","i":"7f3a","c":1}"#),
            Some(Cow::Borrowed("node-a"))
        ));
    }
}
