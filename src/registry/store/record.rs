//! The registry's record of one session, how it relates to a node, and the outcome of a claim.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The registry's record of one session: who owns it and since when.
///
/// Serialized as compact JSON with one-letter field names, because one record is stored per
/// session for up to the whole TTL:
///
/// | field | JSON name | meaning |
/// |---|---|---|
/// | [`node`](Self::node) | `n` | the node that owns the session (its in-process state lives there) |
/// | [`incarnation`](Self::incarnation) | `i` | the owning node's incarnation: an id that changes every time the node's process starts |
/// | [`created_at`](Self::created_at) | `c` | when the session was created, unix seconds |
///
/// Unknown JSON fields are ignored when reading, so records written by a later version still
/// parse.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{Ownership, SessionRecord};
///
/// let record = SessionRecord::new("node-a", "7f3a").with_created_at(1_767_225_600);
/// assert_eq!(record.to_json(), r#"{"n":"node-a","i":"7f3a","c":1767225600}"#);
/// assert_eq!(SessionRecord::from_json(&record.to_json()).ok(), Some(record.clone()));
/// assert_eq!(record.ownership("node-a", "0001"), Ownership::PreviousIncarnation);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionRecord {
    /// The node that owns the session. JSON field `n`.
    #[serde(rename = "n")]
    pub node: String,
    /// The incarnation of the owning node that created the session. JSON field `i`.
    #[serde(rename = "i")]
    pub incarnation: String,
    /// Creation time, in seconds since the Unix epoch. JSON field `c`.
    #[serde(rename = "c")]
    pub created_at: u64,
    /// The protocol version negotiated in `initialize`. JSON field `v`. A record without it
    /// (written by an inner service other than this crate's transport, or by an earlier
    /// version) can be forwarded to its owner but not adopted.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The `clientInfo` of the client's `initialize`. JSON field `ci`.
    #[serde(rename = "ci", default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<serde_json::Value>,
    /// The `capabilities` of the client's `initialize`. JSON field `cc`.
    #[serde(rename = "cc", default, skip_serializing_if = "Option::is_none")]
    pub client_capabilities: Option<serde_json::Value>,
    /// The digest of the principal the session is bound to
    /// ([`principal_digest`](crate::session::principal_digest)), never the principal. JSON
    /// field `p`.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl SessionRecord {
    /// A record owned by `node` in its `incarnation`, created now (system clock).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert_eq!(record.node, "node-a");
    /// assert!(record.created_at > 0);
    /// ```
    pub fn new(node: impl Into<String>, incarnation: impl Into<String>) -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Self {
            node: node.into(),
            incarnation: incarnation.into(),
            created_at,
            protocol_version: None,
            client_info: None,
            client_capabilities: None,
            principal: None,
        }
    }

    /// Adds what another node needs to restore the session: the negotiated protocol version,
    /// the client's `clientInfo` and `capabilities`, and the principal digest, if bound.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a")
    ///     .with_created_at(1)
    ///     .with_restore("2025-11-25", Some(serde_json::json!({"name": "c", "version": "1"})), None, None);
    /// assert!(record.is_restorable());
    /// assert_eq!(record.to_json(), r#"{"n":"node-a","i":"7f3a","c":1,"v":"2025-11-25","ci":{"name":"c","version":"1"}}"#);
    /// ```
    #[must_use]
    pub fn with_restore(
        mut self,
        protocol_version: impl Into<String>,
        client_info: Option<serde_json::Value>,
        client_capabilities: Option<serde_json::Value>,
        principal: Option<String>,
    ) -> Self {
        self.protocol_version = Some(protocol_version.into());
        self.client_info = client_info;
        self.client_capabilities = client_capabilities;
        self.principal = principal;
        self
    }

    /// Whether the record carries what a node needs to restore the session (adopt it).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// assert!(!SessionRecord::new("node-a", "7f3a").is_restorable());
    /// ```
    #[must_use]
    pub fn is_restorable(&self) -> bool {
        self.protocol_version.is_some()
    }

    /// The same record under a new owner: `node` in `incarnation` (what an adopting node
    /// writes). The creation time and the restore fields stay.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let moved = SessionRecord::new("node-a", "1").with_created_at(5).owned_by("node-b", "2");
    /// assert!(moved.is_owned_by("node-b", "2"));
    /// assert_eq!(moved.created_at, 5);
    /// ```
    #[must_use]
    pub fn owned_by(&self, node: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            incarnation: incarnation.into(),
            ..self.clone()
        }
    }

    /// Replaces the creation time (unix seconds).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a").with_created_at(42);
    /// assert_eq!(record.created_at, 42);
    /// ```
    #[must_use]
    pub fn with_created_at(mut self, unix_seconds: u64) -> Self {
        self.created_at = unix_seconds;
        self
    }

    /// Whether the record belongs to `node` in exactly this `incarnation`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert!(record.is_owned_by("node-a", "7f3a"));
    /// assert!(!record.is_owned_by("node-a", "0001"));
    /// ```
    #[must_use]
    pub fn is_owned_by(&self, node: &str, incarnation: &str) -> bool {
        self.node == node && self.incarnation == incarnation
    }

    /// How the record relates to the node asking: `node` in its current `incarnation`.
    ///
    /// This is what tells a misrouted request ([`Ownership::OtherNode`]) from one for a session
    /// this node's previous process created ([`Ownership::PreviousIncarnation`]).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{Ownership, SessionRecord};
    ///
    /// let record = SessionRecord::new("node-a", "7f3a");
    /// assert_eq!(record.ownership("node-a", "7f3a"), Ownership::Current);
    /// assert_eq!(record.ownership("node-a", "0001"), Ownership::PreviousIncarnation);
    /// assert_eq!(record.ownership("node-b", "7f3a"), Ownership::OtherNode);
    /// ```
    #[must_use]
    pub fn ownership(&self, node: &str, incarnation: &str) -> Ownership {
        if self.node != node {
            Ownership::OtherNode
        } else if self.incarnation == incarnation {
            Ownership::Current
        } else {
            Ownership::PreviousIncarnation
        }
    }

    /// The record's JSON form, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let json = SessionRecord::new("a", "b").with_created_at(1).to_json();
    /// assert_eq!(json, r#"{"n":"a","i":"b","c":1}"#);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing a struct of two strings and an integer cannot fail; the fallback keeps
        // this function total without a panic path.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored record.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] for which [`StoreError::is_invalid_record`] is true if `json` is not a
    /// record.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// let record = SessionRecord::from_json(r#"{"n":"a","i":"b","c":1,"future":true}"#)?;
    /// assert_eq!(record.node, "a");
    /// assert!(SessionRecord::from_json("not json").unwrap_err().is_invalid_record());
    /// // A record is an object: not the array form a derived decoder would also take.
    /// assert!(SessionRecord::from_json(r#"["a","b",1]"#).unwrap_err().is_invalid_record());
    /// # Ok::<(), mcp_affinity::registry::StoreError>(())
    /// ```
    pub fn from_json(json: &str) -> Result<Self, StoreError> {
        if !json
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(StoreError::invalid_record(
                "a session record is a JSON object",
            ));
        }
        serde_json::from_str(json).map_err(StoreError::invalid_record)
    }
}

/// The outcome of [`RegistryStore::claim`](super::RegistryStore::claim): the compare-and-set an adopting node makes on a
/// session's record.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::Claim;
///
/// fn won(c: &Claim) -> bool { matches!(c, Claim::Won) }
/// assert!(won(&Claim::Won));
/// assert!(!won(&Claim::Lost(None)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The record named the expected owner and now names the claimant.
    Won,
    /// The record names someone else (another node won a race, or the owner moved it): the
    /// record as it is now, or `None` if there is none.
    Lost(Option<SessionRecord>),
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// How a [`SessionRecord`] relates to the node that reads it. See [`SessionRecord::ownership`].
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{Ownership, SessionRecord};
///
/// let record = SessionRecord::new("node-b", "1");
/// match record.ownership("node-a", "1") {
///     Ownership::OtherNode => { /* misrouted: the session lives on node-b */ }
///     Ownership::PreviousIncarnation => { /* this node restarted since */ }
///     Ownership::Current => { /* ours */ }
///     _ => {}
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ownership {
    /// Owned by the asking node in its current incarnation.
    Current,
    /// Owned by the asking node, but created by an earlier process of it.
    PreviousIncarnation,
    /// Owned by another node.
    OtherNode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_is_compact_and_tolerant() {
        let record = SessionRecord::new("n", "i").with_created_at(7);
        assert_eq!(record.to_json(), r#"{"n":"n","i":"i","c":7}"#);
        let parsed = SessionRecord::from_json(r#"{"c":7,"i":"i","n":"n","x":[1]}"#);
        assert_eq!(parsed.ok(), Some(record));
        assert!(SessionRecord::from_json(r#"{"n":"n"}"#).is_err());
        assert!(SessionRecord::from_json(r#"{"n":1,"i":"i","c":7}"#).is_err());
    }
}
