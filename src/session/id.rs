//! Session ids, node tags and the pluggable id generator.

use std::{borrow::Borrow, fmt, hash::Hasher, sync::Arc};

/// A legacy-era MCP session id: 1–256 visible ASCII characters (0x21–0x7E), as the spec
/// requires.
///
/// Its `Debug` and `Display` print a short [fingerprint](SessionId::fingerprint), never the id
/// itself, so ids do not leak into logs by accident; [`as_str`](SessionId::as_str) gives the
/// raw value.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::SessionId;
///
/// let id = SessionId::parse("n1.abc").unwrap();
/// assert_eq!(id.as_str(), "n1.abc");
/// assert_eq!(id.node_tag(), Some("n1"));
/// assert!(!format!("{id}").contains("abc"));
/// assert!(SessionId::parse("has space").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

/// The error for a string that is not a valid session id.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::SessionId;
/// let err = SessionId::parse("").unwrap_err();
/// assert_eq!(err.to_string(), "invalid session id");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSessionId(());

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid session id")
    }
}

impl std::error::Error for InvalidSessionId {}

/// The longest session id accepted.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{SessionId, MAX_SESSION_ID_LEN};
///
/// assert_eq!(MAX_SESSION_ID_LEN, 256);
/// assert!(SessionId::parse(&"a".repeat(MAX_SESSION_ID_LEN)).is_ok());
/// assert!(SessionId::parse(&"a".repeat(MAX_SESSION_ID_LEN + 1)).is_err());
/// ```
pub const MAX_SESSION_ID_LEN: usize = 256;

impl SessionId {
    /// Validates and wraps a session id.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::SessionId;
    ///
    /// assert_eq!(SessionId::parse("abc-123").unwrap().as_str(), "abc-123");
    /// assert!(SessionId::parse("tab\there").is_err());
    /// assert!(SessionId::parse("é").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, InvalidSessionId> {
        if Self::is_valid(s) {
            Ok(Self(s.into()))
        } else {
            Err(InvalidSessionId(()))
        }
    }

    /// Whether `s` is a valid session id (visible ASCII, 1–256 bytes).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::SessionId;
    ///
    /// assert!(SessionId::is_valid("abc~!{}"));
    /// assert!(!SessionId::is_valid(""));
    /// assert!(!SessionId::is_valid("a b"));
    /// ```
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_SESSION_ID_LEN
            && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
    }

    /// The raw id. Treat it as a secret: do not log it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::SessionId;
    ///
    /// let id = SessionId::parse("n1.abc").unwrap();
    /// assert_eq!(id.as_str(), "n1.abc");
    /// assert_ne!(id.to_string(), "n1.abc"); // Display prints the fingerprint
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node tag prefix of an id minted by a [`TaggedIdGenerator`] (`<tag>.<random>`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::SessionId;
    ///
    /// assert_eq!(SessionId::parse("n1.abc").unwrap().node_tag(), Some("n1"));
    /// assert_eq!(SessionId::parse("abc").unwrap().node_tag(), None);
    /// assert_eq!(SessionId::parse("a:b.c").unwrap().node_tag(), None);
    /// ```
    pub fn node_tag(&self) -> Option<&str> {
        self.0
            .split_once('.')
            .map(|(tag, _)| tag)
            .filter(|t| NodeTag::is_valid(t))
    }

    /// A short, stable, non-reversible fingerprint for logs (8 hex digits).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{Fingerprint, SessionId};
    ///
    /// let id = SessionId::parse("n1.secret").unwrap();
    /// assert_eq!(id.fingerprint(), Fingerprint::of("n1.secret"));
    /// assert_eq!(format!("{id:?}"), format!("SessionId({})", id.fingerprint()));
    /// ```
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.fingerprint())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fingerprint(), f)
    }
}

/// A log-safe fingerprint of a secret string (a session id, a cookie).
///
/// # Example
///
/// ```
/// use mcp_affinity::session::Fingerprint;
/// assert_eq!(Fingerprint::of("x").to_string().len(), 8);
/// assert_eq!(Fingerprint::of("x"), Fingerprint::of("x"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u32);

impl Fingerprint {
    /// Fingerprints a string. Stable across processes, so logs of different nodes correlate.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::Fingerprint;
    ///
    /// let fp = Fingerprint::of("secret-session-id");
    /// assert_eq!(fp, Fingerprint::of("secret-session-id"));
    /// assert!(fp.to_string().bytes().all(|b| b.is_ascii_hexdigit()));
    /// ```
    pub fn of(s: &str) -> Self {
        // SipHash with fixed keys: deterministic; 32 bits reveal nothing usable of a 128-bit id.
        #[allow(deprecated)]
        let mut h =
            std::hash::SipHasher::new_with_keys(0x6d63_702d_6166_6669, 0x6e69_7479_2d66_7072);
        h.write(s.as_bytes());
        Self(h.finish() as u32)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Makes new session ids. Implemented for closures `Fn() -> SessionId`.
///
/// The transport mints ids with [`try_generate`](Self::try_generate): a generator that cannot
/// make an unguessable id (its random source failed) says so there, and the `initialize` that
/// asked for the id is answered `503` with `Retry-After`, minting no session. A generator
/// that wraps another (say, to add a prefix) wraps its `try_generate`, not its `generate`,
/// which panics when the random source fails.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{RandomIdGenerator, SessionId, SessionIdGenerator};
///
/// let id = RandomIdGenerator.generate();
/// assert_eq!(id.as_str().len(), 24);
/// let fixed = || SessionId::parse("fixed").unwrap();
/// assert_eq!(fixed.generate().as_str(), "fixed");
/// assert_eq!(fixed.try_generate().unwrap().as_str(), "fixed");
/// ```
pub trait SessionIdGenerator: Send + Sync + 'static {
    /// Returns a fresh, unguessable id.
    ///
    /// # Panics
    ///
    /// The generators of this crate panic if the operating system's random source fails (as
    /// `getrandom` failing is not otherwise recoverable here); [`try_generate`](Self::try_generate)
    /// returns an error instead.
    fn generate(&self) -> SessionId;

    /// Returns a fresh, unguessable id, or an error if none can be made now (the random source
    /// failed). The default calls [`generate`](Self::generate); a generator that can fail
    /// overrides it and never falls back to a weaker source.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{GenerateIdError, SessionId, SessionIdGenerator};
    ///
    /// /// A generator whose random source is down.
    /// struct Broken;
    ///
    /// impl SessionIdGenerator for Broken {
    ///     fn generate(&self) -> SessionId {
    ///         panic!("no random source")
    ///     }
    ///
    ///     fn try_generate(&self) -> Result<SessionId, GenerateIdError> {
    ///         Err(GenerateIdError::new())
    ///     }
    /// }
    ///
    /// assert_eq!(Broken.try_generate(), Err(GenerateIdError::new()));
    /// ```
    fn try_generate(&self) -> Result<SessionId, GenerateIdError> {
        Ok(self.generate())
    }
}

/// No session id could be made: the random source failed.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::GenerateIdError;
///
/// assert_eq!(
///     GenerateIdError::new().to_string(),
///     "no session id could be generated: the random source failed"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateIdError(());

impl GenerateIdError {
    /// The error, for a [`SessionIdGenerator`] whose random source failed.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::GenerateIdError;
    ///
    /// let err = GenerateIdError::new();
    /// assert_eq!(err, GenerateIdError::default());
    /// ```
    pub const fn new() -> Self {
        Self(())
    }
}

impl fmt::Display for GenerateIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no session id could be generated: the random source failed")
    }
}

impl std::error::Error for GenerateIdError {}

impl<F> SessionIdGenerator for F
where
    F: Fn() -> SessionId + Send + Sync + 'static,
{
    fn generate(&self) -> SessionId {
        self()
    }
}

/// The default generator: 144 bits from the operating system's CSPRNG, base64url (24 chars).
/// If that source fails, [`try_generate`](SessionIdGenerator::try_generate) fails too: there is
/// no fallback to a weaker source.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{RandomIdGenerator, SessionIdGenerator};
/// assert_ne!(RandomIdGenerator.generate(), RandomIdGenerator.generate());
/// assert_eq!(RandomIdGenerator.try_generate().unwrap().as_str().len(), 24);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIdGenerator;

impl SessionIdGenerator for RandomIdGenerator {
    fn generate(&self) -> SessionId {
        self.try_generate().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_generate(&self) -> Result<SessionId, GenerateIdError> {
        Ok(SessionId(try_random_token()?.into()))
    }
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's random source fail (unit tests only).
    static RANDOM_SOURCE_FAILS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While it lives, the random source of the thread that made it fails (unit tests only).
#[cfg(test)]
pub(crate) struct FailingRandomSource(());

#[cfg(test)]
impl FailingRandomSource {
    pub(crate) fn start() -> Self {
        RANDOM_SOURCE_FAILS.set(true);
        Self(())
    }
}

#[cfg(test)]
impl Drop for FailingRandomSource {
    fn drop(&mut self) {
        RANDOM_SOURCE_FAILS.set(false);
    }
}

/// Fills `bytes` from the operating system's CSPRNG.
fn fill_random(bytes: &mut [u8]) -> Result<(), GenerateIdError> {
    #[cfg(test)]
    if RANDOM_SOURCE_FAILS.get() {
        return Err(GenerateIdError::new());
    }
    getrandom::fill(bytes).map_err(|e| {
        tracing::error!(error = %e, "operating system random source failed");
        GenerateIdError::new()
    })
}

/// 24 base64url characters carrying 144 bits from the operating system's CSPRNG, or an error
/// if it failed. Every secret token (a session id) comes from here.
pub(crate) fn try_random_token() -> Result<String, GenerateIdError> {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes)?;
    Ok(base64url(&bytes))
}

/// 24 base64url characters that tell this value apart from every other one made on this
/// host: unique, not secret (a node's registry incarnation). From the operating system's
/// CSPRNG; should it fail, from the clock, the process id and a counter, which is still
/// unique but guessable, so never use it for a session id ([`try_random_token`]).
pub(crate) fn random_token() -> String {
    try_random_token().unwrap_or_else(|_| {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = [0u8; 18];
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            #[allow(deprecated)]
            let mut h =
                std::hash::SipHasher::new_with_keys(0x0000_756e_6971_7565, 0x0000_0074_6f6b_656e);
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_u64(n);
            h.write_usize(i);
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        base64url(&bytes)
    })
}

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    push_base64url(&mut out, bytes);
    out
}

fn push_base64url(out: &mut String, bytes: &[u8]) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
}

/// An opaque node tag: 1–32 characters of `[A-Za-z0-9_-]`, never a hostname or address.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::NodeTag;
///
/// let tag = NodeTag::new("n1").unwrap();
/// assert_eq!(tag.as_str(), "n1");
/// assert!(NodeTag::new("10.0.0.1").is_err());
/// let derived = NodeTag::derive("node-a.internal");
/// assert!(!derived.as_str().contains("internal"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTag(Arc<str>);

/// The error for a string that is not a valid [`NodeTag`] (1–32 characters of
/// `[A-Za-z0-9_-]`).
///
/// # Example
///
/// ```
/// use mcp_affinity::session::NodeTag;
///
/// let err = NodeTag::new("10.0.0.1").unwrap_err();
/// assert_eq!(err.to_string(), "invalid node tag: expected 1 to 32 characters of [A-Za-z0-9_-]");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidNodeTag(());

impl fmt::Display for InvalidNodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid node tag: expected 1 to 32 characters of [A-Za-z0-9_-]")
    }
}

impl std::error::Error for InvalidNodeTag {}

impl NodeTag {
    /// Validates a tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::NodeTag;
    ///
    /// assert_eq!(NodeTag::new("n1").unwrap().as_str(), "n1");
    /// assert!(NodeTag::new("").is_err());
    /// assert!(NodeTag::new("has space").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`InvalidNodeTag`] when `tag` is empty, longer than 32 characters, or has a character
    /// outside `[A-Za-z0-9_-]`.
    pub fn new(tag: &str) -> Result<Self, InvalidNodeTag> {
        if Self::is_valid(tag) {
            Ok(Self(tag.into()))
        } else {
            Err(InvalidNodeTag(()))
        }
    }

    /// Derives an opaque tag from a node name (8 hex digits of its fingerprint), so the name
    /// itself never reaches clients.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::NodeTag;
    ///
    /// let tag = NodeTag::derive("pod-17.cluster.local");
    /// assert_eq!(tag.as_str().len(), 8);
    /// assert_eq!(tag, NodeTag::derive("pod-17.cluster.local"));
    /// assert_ne!(tag, NodeTag::derive("pod-18.cluster.local"));
    /// ```
    pub fn derive(node_name: &str) -> Self {
        Self(Fingerprint::of(node_name).to_string().into())
    }

    /// Whether `s` is a valid tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::NodeTag;
    ///
    /// assert!(NodeTag::is_valid("node_1-a"));
    /// assert!(!NodeTag::is_valid("node.1"));
    /// assert!(!NodeTag::is_valid(&"x".repeat(33)));
    /// ```
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::NodeTag;
    ///
    /// let tag = NodeTag::new("eu-1").unwrap();
    /// assert_eq!(tag.as_str(), "eu-1");
    /// assert_eq!(tag.to_string(), "eu-1");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A generator of ids `<tag>.<random>` (random as [`RandomIdGenerator`], failing as it does
/// when the random source fails), so a load balancer can pin on the `Mcp-Session-Id` header
/// alone.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{NodeTag, SessionIdGenerator, TaggedIdGenerator};
///
/// let g = TaggedIdGenerator::new(NodeTag::new("n2").unwrap());
/// let id = g.generate();
/// assert_eq!(id.node_tag(), Some("n2"));
/// assert_eq!(id.as_str().len(), 3 + 24);
/// ```
#[derive(Debug, Clone)]
pub struct TaggedIdGenerator {
    tag: NodeTag,
}

impl TaggedIdGenerator {
    /// A generator for this node's tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdGenerator, TaggedIdGenerator};
    ///
    /// let g = TaggedIdGenerator::new(NodeTag::derive("node-b"));
    /// let id = g.generate();
    /// assert_eq!(id.node_tag(), Some(NodeTag::derive("node-b").as_str()));
    /// ```
    pub const fn new(tag: NodeTag) -> Self {
        Self { tag }
    }

    /// The tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, TaggedIdGenerator};
    ///
    /// let g = TaggedIdGenerator::new(NodeTag::new("n7").unwrap());
    /// assert_eq!(g.tag().as_str(), "n7");
    /// ```
    pub fn tag(&self) -> &NodeTag {
        &self.tag
    }
}

impl SessionIdGenerator for TaggedIdGenerator {
    fn generate(&self) -> SessionId {
        self.try_generate().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_generate(&self) -> Result<SessionId, GenerateIdError> {
        let mut bytes = [0u8; 18];
        fill_random(&mut bytes)?;
        let mut s = String::with_capacity(self.tag.0.len() + 25);
        s.push_str(&self.tag.0);
        s.push('.');
        push_base64url(&mut s, &bytes);
        Ok(SessionId(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_known() {
        assert_eq!(base64url(b"\xfb\xff\xfe"), "-__-");
        assert_eq!(base64url(b"ab"), "YWI");
    }

    #[test]
    fn random_ids_are_visible_ascii_and_distinct() {
        let ids: std::collections::HashSet<_> =
            (0..1000).map(|_| RandomIdGenerator.generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| SessionId::is_valid(i.as_str())));
    }

    #[test]
    fn a_failing_random_source_makes_no_id() {
        let tagged = TaggedIdGenerator::new(NodeTag::new("n1").unwrap());
        {
            let _fail = FailingRandomSource::start();
            assert_eq!(
                RandomIdGenerator.try_generate(),
                Err(GenerateIdError::new())
            );
            assert_eq!(tagged.try_generate(), Err(GenerateIdError::new()));
            assert!(try_random_token().is_err());
            // A unique, non-secret token (a registry incarnation) is still made.
            let (a, b) = (random_token(), random_token());
            assert_ne!(a, b);
            assert_eq!(a.len(), 24);
            assert!(SessionId::is_valid(&a));
        }
        assert!(RandomIdGenerator.try_generate().is_ok());
        assert_eq!(tagged.try_generate().unwrap().node_tag(), Some("n1"));
    }

    /// The transport asks its generator with `try_generate`: a failing random source fails the
    /// `initialize` (503, a JSON-RPC error, `Retry-After`), mints no session and never calls
    /// the handler.
    #[tokio::test]
    async fn initialize_fails_with_503_when_the_random_source_fails() {
        use http_body_util::BodyExt;
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };
        use tower::{Layer, ServiceExt};

        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let handler = crate::handler::handler_fn(move |_req, _cx| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                Ok(
                    serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {},
                    "serverInfo": {"name": "s", "version": "1"}}),
                )
            }
        });
        let layer = crate::SseTransportLayer::new();
        let handle = layer.handle();
        let svc = layer.layer(handler);
        let init = || {
            let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
            http::Request::post("/mcp")
                .header("host", "localhost")
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap()
        };
        let deadline = std::time::Duration::from_secs(10);
        let res = {
            let _fail = FailingRandomSource::start();
            tokio::time::timeout(deadline, svc.clone().oneshot(init()))
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get("mcp-session-id").is_none());
        assert!(res.headers().get(http::header::RETRY_AFTER).is_some());
        assert!(res.extensions().get::<crate::session::Session>().is_none());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["id"], 1, "{body}");
        assert!(
            body.pointer("/error/code").is_some_and(|c| c.is_i64()),
            "{body}"
        );
        assert_eq!(handle.session_count(), 0, "no session was minted");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");

        // The source is back: the next initialize is served.
        let res = tokio::time::timeout(deadline, svc.oneshot(init()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::OK);
        assert!(res.headers().get("mcp-session-id").is_some());
        assert_eq!(handle.session_count(), 1);
    }

    #[test]
    fn tag_parsing() {
        assert_eq!(SessionId::parse("abc").unwrap().node_tag(), None);
        assert_eq!(SessionId::parse("a b.c").ok(), None);
        assert_eq!(SessionId::parse("x!.c").unwrap().node_tag(), None);
    }
}
