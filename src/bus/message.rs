//! What travels on the bus: one small JSON object per message.
//!
//! `{"v":1,"o":ORIGIN,"to":NODE?,"b":{KIND:{…}}}`: `o` names the sending node's process (its
//! name and incarnation), so a node drops its own messages when the backend echoes them;
//! `to`, on replies only, names the process that waits for it. Notifications carry the
//! JSON-RPC message already encoded (`m`), so a receiving node appends it as it is.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};

use super::{Change, SessionFilter};

/// The wire format's version; a message of another version is dropped (and counted).
pub(super) const VERSION: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope<'a> {
    pub(super) v: u8,
    #[serde(borrow)]
    pub(super) o: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(super) to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) b: Body<'a>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Body<'a> {
    /// A notification for every session the filter accepts, on every node.
    #[serde(rename = "all")]
    All {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        f: Option<SessionFilter>,
        #[serde(borrow)]
        m: &'a RawValue,
    },
    /// A notification for one session, delivered by the node that holds it.
    #[serde(rename = "one")]
    One {
        #[serde(borrow)]
        s: Cow<'a, str>,
        #[serde(borrow)]
        m: &'a RawValue,
    },
    /// A server→client request for one session; the holder sends it and replies to `o`.
    #[serde(rename = "req")]
    Request {
        #[serde(borrow)]
        s: Cow<'a, str>,
        c: u64,
        #[serde(borrow)]
        m: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<Value>,
    },
    /// The outcome of a `req`, for the process named by the envelope's `to`.
    #[serde(rename = "rep")]
    Reply {
        c: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// `closed`, `stream_ended`, `too_many_pending`, `timeout`, `not_supported` or
        /// `rejected` (then `d` is the client's JSON-RPC error).
        #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
        e: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        d: Option<Value>,
    },
    /// A change for the change feed.
    #[serde(rename = "chg")]
    Change { c: Change },
    /// A control message for a task running on node `n` (`tasks/update`, `tasks/cancel`); that
    /// node applies it and replies to `o` with `ok: true` (applied) or `false` (not running
    /// there).
    #[serde(rename = "task")]
    Task {
        #[serde(borrow)]
        n: Cow<'a, str>,
        #[serde(borrow)]
        t: Cow<'a, str>,
        c: u64,
        #[serde(borrow)]
        k: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<Value>,
    },
}

/// Encodes one message.
pub(super) fn encode(origin: &str, to: Option<&str>, body: Body<'_>) -> Vec<u8> {
    let env = Envelope {
        v: VERSION,
        o: Cow::Borrowed(origin),
        to: to.map(Cow::Borrowed),
        b: body,
    };
    // A struct of strings, numbers and JSON values: serializing it cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// An encoded JSON-RPC message as a raw JSON value (it is valid JSON by construction).
pub(super) fn raw(message: &[u8]) -> Option<&RawValue> {
    std::str::from_utf8(message)
        .ok()
        .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_borrows_its_notification() {
        let note = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"x":"\u00e9"}}"#;
        let bytes = encode(
            "n1/1",
            None,
            Body::All {
                f: Some(SessionFilter::new().with_resource("file:///a")),
                m: raw(note).unwrap(),
            },
        );
        let env: Envelope<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((env.v, env.o.as_ref(), env.to), (1, "n1/1", None));
        let Body::All { f, m } = env.b else {
            panic!("kind")
        };
        assert_eq!(m.get().as_bytes(), note);
        assert_eq!(f, Some(SessionFilter::new().with_resource("file:///a")));
    }

    #[test]
    fn replies_and_changes_round_trip() {
        let bytes = encode(
            "n2/7",
            Some("n1/1"),
            Body::Reply {
                c: 9,
                ok: None,
                e: Some("rejected".into()),
                d: Some(serde_json::json!({"code": -1})),
            },
        );
        let env: Envelope<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(env.to.as_deref(), Some("n1/1"));
        assert!(matches!(
            env.b,
            Body::Reply {
                c: 9,
                e: Some(_),
                ..
            }
        ));
        let bytes = encode(
            "n2/7",
            None,
            Body::Change {
                c: Change::resource_updated("u"),
            },
        );
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"o":"n2/7","b":{"chg":{"c":{"u":{"uri":"u"}}}}}"#
        );
    }

    #[test]
    fn junk_does_not_parse() {
        for junk in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"v":1,"o":"x","b":{"nope":{}}}"#,
            b"\xff",
        ] {
            assert!(serde_json::from_slice::<Envelope<'_>>(junk).is_err());
        }
    }
}
