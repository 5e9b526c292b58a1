//! The Redis keys of the registry, built from a prefix.

/// The hashes the shared event log is spread over (see [`RecordKey::events`]). Few, so that
/// one batch touches each with many events; more than one, so that a Redis Cluster spreads
/// them over its masters.
pub(crate) const EVENT_BUCKETS: u32 = 8;

/// The event bucket of session `id`: FNV-1a of its bytes, the same on every node and version.
pub(crate) fn event_bucket_of(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % EVENT_BUCKETS
}

/// Builds the Redis keys of the registry from a prefix.
///
/// | key | built by | with the default prefix |
/// |---|---|---|
/// | a session's record | [`session`](Self::session) | `mcp:session:{<id>}` |
/// | a node's session index | [`node_index`](Self::node_index) | `mcp:session:node:{<node>}` |
/// | a node's liveness record | [`liveness`](Self::liveness) | `mcp:session:live:{<node>}` |
/// | the node set | [`node_set`](Self::node_set) | `mcp:session:nodes` |
///
/// The braces are part of every key: they are the Redis Cluster hash tag. Each command of the
/// registry touches exactly one key, so the registry works on a cluster without cross-slot
/// errors (a node's index and liveness record share the node's slot; the node set, one key
/// for the whole cluster, is touched only in the background). A session key always has `{`
/// right after the prefix, an index key `node:{`, a liveness key `live:{`, and the node set
/// none, so the kinds never collide; `SCAN MATCH mcp:session:{*` lists sessions only.
///
/// The prefix should not contain `{` or `}`: a brace in the prefix would become the hash tag of
/// every key and put all sessions in one cluster slot. `RedisStoreBuilder` rejects such a
/// prefix.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::RecordKey;
///
/// let keys = RecordKey::default();
/// assert_eq!(keys.session("abc"), "mcp:session:{abc}");
/// assert_eq!(keys.node_index("node-a"), "mcp:session:node:{node-a}");
/// assert_eq!(keys.liveness("node-a"), "mcp:session:live:{node-a}");
/// assert_eq!(keys.node_set(), "mcp:session:nodes");
/// assert_eq!(RecordKey::new("app1:sess:").session("abc"), "app1:sess:{abc}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    prefix: String,
}

impl RecordKey {
    /// The default key prefix, `mcp:session:`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::DEFAULT_PREFIX, "mcp:session:");
    /// assert_eq!(RecordKey::default().prefix(), RecordKey::DEFAULT_PREFIX);
    /// ```
    pub const DEFAULT_PREFIX: &'static str = "mcp:session:";

    /// Keys under `prefix`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::new("x:").prefix(), "x:");
    /// ```
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().prefix(), "mcp:session:");
    /// ```
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of session `id`'s record: `{prefix}{<id>}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().session("n1.Zx9"), "mcp:session:{n1.Zx9}");
    /// ```
    #[must_use]
    pub fn session(&self, id: &str) -> String {
        self.session_parts(id).concat()
    }

    /// The key holding `id`'s shared event log: the hash of its bucket (a stable hash of the
    /// id), `{prefix}events:{<b>}`, shared with the other sessions of that bucket.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// let key = RecordKey::default().events("n1.Zx9");
    /// assert!(key.starts_with("mcp:session:events:{"));
    /// assert_eq!(key, RecordKey::default().events("n1.Zx9"), "the same on every node");
    /// ```
    #[must_use]
    pub fn events(&self, id: &str) -> String {
        self.event_bucket(event_bucket_of(id))
    }

    /// The key of event bucket `b`: `{prefix}events:{<b>}`.
    pub(crate) fn event_bucket(&self, b: u32) -> String {
        format!("{}events:{{{b}}}", self.prefix)
    }

    /// The pieces of [`session`](Self::session)'s key, in order (for writing it out in place).
    pub(crate) fn session_parts<'a>(&'a self, id: &'a str) -> [&'a str; 4] {
        [&self.prefix, "{", id, "}"]
    }

    /// The key of `node`'s session index: `{prefix}node:{<node>}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().node_index("n1"), "mcp:session:node:{n1}");
    /// ```
    #[must_use]
    pub fn node_index(&self, node: &str) -> String {
        self.node_key("node:{", node)
    }

    /// The key of `node`'s liveness record ([`NodeRecord`](super::NodeRecord)): `{prefix}live:{<node>}`. It has
    /// the hash tag of the node's index, so both are in one cluster slot.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::default().liveness("n1"), "mcp:session:live:{n1}");
    /// ```
    #[must_use]
    pub fn liveness(&self, node: &str) -> String {
        self.node_key("live:{", node)
    }

    /// The key of the node set, the names of every node that announced itself:
    /// `{prefix}nodes`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RecordKey;
    ///
    /// assert_eq!(RecordKey::new("app1:").node_set(), "app1:nodes");
    /// ```
    #[must_use]
    pub fn node_set(&self) -> String {
        [self.prefix.as_str(), "nodes"].concat()
    }

    /// `{prefix}{kind}<node>}`, `kind` ending in the opening brace.
    fn node_key(&self, kind: &str, node: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + node.len() + 1);
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(node);
        key.push('}');
        key
    }
}

impl Default for RecordKey {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_collide() {
        let keys = RecordKey::default();
        assert_ne!(keys.session("node:{a}"), keys.node_index("a"));
        assert_ne!(keys.session("live:{a}"), keys.liveness("a"));
        assert_ne!(keys.liveness("a"), keys.node_index("a"));
        assert_ne!(keys.session("nodes"), keys.node_set());
        assert!(keys.liveness("x").starts_with("mcp:session:live:{"));
        assert!(keys.session("x").starts_with("mcp:session:{"));
    }
}
