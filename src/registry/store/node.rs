//! A node's liveness record and its state (serving or draining).

use serde::{Deserialize, Serialize};

use super::{StoreError, unix_now};

/// Whether a node takes requests. See [`NodeRecord`].
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::NodeState;
///
/// assert_eq!(NodeState::Serving.as_str(), "serving");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeState {
    /// Serving: requests for its sessions are forwarded to it.
    Serving,
    /// Shutting down: its sessions are adopted by whichever node their next request reaches.
    Draining,
}

impl NodeState {
    /// `"serving"` or `"draining"`, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::NodeState;
    ///
    /// assert_eq!(NodeState::Draining.as_str(), "draining");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
        }
    }
}

/// A node's liveness record: written by the node itself in the background, with a short time
/// to live, so other nodes can tell a live owner (forward to it) from a gone, draining or
/// restarted one (adopt its sessions).
///
/// Stored as compact JSON: `{"s":"serving","i":"<incarnation>","a":"<address>","t":<unix
/// seconds>}`.
///
/// | field | JSON name | meaning |
/// |---|---|---|
/// | [`state`](Self::state) | `s` | `serving` or `draining` |
/// | [`incarnation`](Self::incarnation) | `i` | the node's current incarnation |
/// | [`address`](Self::address) | `a` | where other nodes reach it (`host:port`, internal), if it takes forwarded requests |
/// | [`updated_at`](Self::updated_at) | `t` | when it was written, unix seconds |
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{NodeRecord, NodeState};
///
/// let record = NodeRecord::new(NodeState::Serving, "7f3a").with_address("10.0.0.5:8080").with_updated_at(1);
/// assert_eq!(record.to_json(), r#"{"s":"serving","i":"7f3a","a":"10.0.0.5:8080","t":1}"#);
/// assert_eq!(NodeRecord::from_json(&record.to_json()).ok(), Some(record));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// Serving or draining. JSON field `s`.
    #[serde(rename = "s")]
    pub state: NodeState,
    /// The node's current incarnation. JSON field `i`.
    #[serde(rename = "i")]
    pub incarnation: String,
    /// The internal address other nodes forward to. JSON field `a`.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When the record was written, unix seconds. JSON field `t`.
    #[serde(rename = "t", default)]
    pub updated_at: u64,
}

impl NodeRecord {
    /// A liveness record in `state` for `incarnation`, written now (system clock), with no
    /// address.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let record = NodeRecord::new(NodeState::Draining, "7f3a");
    /// assert_eq!(record.state, NodeState::Draining);
    /// assert!(record.address.is_none());
    /// ```
    pub fn new(state: NodeState, incarnation: impl Into<String>) -> Self {
        Self {
            state,
            incarnation: incarnation.into(),
            address: None,
            updated_at: unix_now(),
        }
    }

    /// Sets the internal address other nodes forward to.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let record = NodeRecord::new(NodeState::Serving, "1").with_address("127.0.0.1:9000");
    /// assert_eq!(record.address.as_deref(), Some("127.0.0.1:9000"));
    /// ```
    #[must_use]
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Replaces the write time (unix seconds).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// assert_eq!(NodeRecord::new(NodeState::Serving, "1").with_updated_at(9).updated_at, 9);
    /// ```
    #[must_use]
    pub fn with_updated_at(mut self, unix_seconds: u64) -> Self {
        self.updated_at = unix_seconds;
        self
    }

    /// The record's JSON form, as stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{NodeRecord, NodeState};
    ///
    /// let json = NodeRecord::new(NodeState::Serving, "1").with_updated_at(2).to_json();
    /// assert_eq!(json, r#"{"s":"serving","i":"1","t":2}"#);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored liveness record.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] for which [`StoreError::is_invalid_record`] is true if `json` is not
    /// a liveness record.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::NodeRecord;
    ///
    /// assert!(NodeRecord::from_json(r#"{"s":"serving","i":"1"}"#).is_ok());
    /// assert!(NodeRecord::from_json(r#"{"s":"sleeping","i":"1"}"#).unwrap_err().is_invalid_record());
    /// ```
    pub fn from_json(json: &str) -> Result<Self, StoreError> {
        if !json
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(StoreError::invalid_record("a node record is a JSON object"));
        }
        serde_json::from_str(json).map_err(StoreError::invalid_record)
    }
}
