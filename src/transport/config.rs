//! Transport configuration: limits, timeouts and the DNS-rebinding policies.

use std::{fmt, sync::Arc, time::Duration};

use http::request::Parts;

use super::log::LogLimits;
use crate::session::{RandomIdGenerator, Session, SessionIdGenerator};

/// Which `Host` header values are accepted (DNS-rebinding protection).
///
/// # Example
///
/// ```
/// use mcp_affinity::transport::HostPolicy;
///
/// let p = HostPolicy::localhost();
/// assert!(p.allows("127.0.0.1:8080"));
/// assert!(!p.allows("evil.example.com"));
/// let p = HostPolicy::list(["mcp.example.com"]);
/// assert!(p.allows("mcp.example.com:443"));
/// assert!(HostPolicy::any().allows("anything"));
/// ```
#[derive(Debug, Clone)]
pub struct HostPolicy(HostPolicyKind);

#[derive(Debug, Clone)]
enum HostPolicyKind {
    Any,
    /// Lowercase entries, each with whether it names a port (worked out once, not per request).
    List(Arc<[(String, bool)]>),
}

impl HostPolicy {
    /// Any host (no DNS-rebinding protection).
    ///
    /// # ⚠️ Warning
    ///
    /// Only behind a proxy or balancer that itself restricts the `Host` header, or for servers
    /// that are not reachable from a browser.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::HostPolicy;
    ///
    /// assert!(HostPolicy::any().allows("attacker.example"));
    /// assert!(!HostPolicy::localhost().allows("attacker.example"));
    /// ```
    pub fn any() -> Self {
        Self(HostPolicyKind::Any)
    }

    /// `localhost`, `127.0.0.1` and `[::1]`, on any port (the default).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::HostPolicy;
    ///
    /// let p = HostPolicy::localhost();
    /// assert!(p.allows("localhost:3000"));
    /// assert!(p.allows("[::1]:3000"));
    /// assert!(!p.allows("0.0.0.0:3000"));
    /// ```
    pub fn localhost() -> Self {
        Self::list(["localhost", "127.0.0.1", "[::1]"])
    }

    /// Exactly these hosts; an entry without a port matches every port, one with a port
    /// (`host:8080`) only that port. Matching ignores ASCII case.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::HostPolicy;
    ///
    /// let p = HostPolicy::list(["Mcp.Example.com"]);
    /// assert!(p.allows("mcp.example.com"));
    /// assert!(p.allows("mcp.example.com:8443"));
    /// assert!(!p.allows("example.com"));
    /// ```
    pub fn list<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(HostPolicyKind::List(
            hosts
                .into_iter()
                .map(|h| {
                    let h = h.into().to_ascii_lowercase();
                    let port = has_port(&h);
                    (h, port)
                })
                .collect(),
        ))
    }

    /// Whether a `Host` header value (`host[:port]`) is allowed.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::HostPolicy;
    ///
    /// let p = HostPolicy::list(["mcp.example.com", "internal:8080"]);
    /// assert!(p.allows("MCP.example.com:443"));
    /// assert!(p.allows("internal:8080"));
    /// assert!(!p.allows("internal:9090"));
    /// ```
    pub fn allows(&self, host: &str) -> bool {
        match &self.0 {
            HostPolicyKind::Any => true,
            HostPolicyKind::List(list) => {
                // Entries are stored lowercase; the request's host is compared without a copy.
                let name = strip_port(host);
                list.iter().any(|(h, port)| {
                    if *port {
                        h.eq_ignore_ascii_case(host)
                    } else {
                        h.eq_ignore_ascii_case(name)
                    }
                })
            }
        }
    }

    pub(crate) fn is_any(&self) -> bool {
        matches!(self.0, HostPolicyKind::Any)
    }
}

fn has_port(h: &str) -> bool {
    strip_port(h).len() != h.len()
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // `[v6]` or `[v6]:port`; anything else after the `]` is not a port: nothing is
        // stripped, so the whole value must match an entry.
        return match rest.find(']') {
            Some(i) if is_port_suffix(&rest[i + 1..]) => &h[..i + 2],
            _ => h,
        };
    }
    // `name:digits` (a plain scan from the end: ports are short, `rsplit_once` searches more).
    let digits = h.bytes().rev().take_while(u8::is_ascii_digit).count();
    match h.len().checked_sub(digits + 1) {
        Some(colon) if h.as_bytes()[colon] == b':' => &h[..colon],
        _ => h,
    }
}

/// Nothing, or `:` and digits (RFC 9110 `[ ":" port ]`, `port = *DIGIT`).
fn is_port_suffix(s: &str) -> bool {
    s.is_empty()
        || s.strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Which `Origin` header values are accepted; a request without `Origin` always passes.
///
/// The default accepts an origin whose host is allowed by the [`HostPolicy`] and equals the
/// request's `Host` (same-origin), plus the origins added with [`OriginPolicy::allow`].
///
/// # Example
///
/// ```
/// use mcp_affinity::transport::OriginPolicy;
///
/// let p = OriginPolicy::same_origin().allow("https://app.example.com");
/// assert!(p.allows("https://app.example.com", "mcp.example.com"));
/// assert!(p.allows("http://mcp.example.com", "mcp.example.com"));
/// assert!(!p.allows("https://evil.example.com", "mcp.example.com"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// Same-origin requests only (the default).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::OriginPolicy;
    ///
    /// let p = OriginPolicy::same_origin();
    /// assert!(p.allows("https://mcp.example.com", "mcp.example.com"));
    /// assert!(!p.allows("https://other.example.com", "mcp.example.com"));
    /// ```
    pub fn same_origin() -> Self {
        Self::default()
    }

    /// Every origin.
    ///
    /// # ⚠️ Warning
    ///
    /// Disables the spec's required `Origin` validation: any web page a user visits can then
    /// talk to this server through the user's browser.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::OriginPolicy;
    ///
    /// let p = OriginPolicy::any();
    /// assert!(p.allows("https://evil.example.com", "localhost"));
    /// assert!(!OriginPolicy::same_origin().allows("https://evil.example.com", "localhost"));
    /// ```
    pub fn any() -> Self {
        Self {
            allowed: Vec::new(),
            any: true,
        }
    }

    /// Also accepts this exact origin (`scheme://host[:port]`, ASCII case ignored).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::OriginPolicy;
    ///
    /// let p = OriginPolicy::same_origin().allow("https://App.Example.com");
    /// assert!(p.allows("https://app.example.com", "mcp.example.com"));
    /// assert!(!p.allows("http://app.example.com", "mcp.example.com"));
    /// ```
    #[must_use]
    pub fn allow(mut self, origin: impl Into<String>) -> Self {
        self.allowed.push(origin.into().to_ascii_lowercase());
        self
    }

    /// Whether `origin` is allowed for a request whose `Host` is `host`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::OriginPolicy;
    ///
    /// let p = OriginPolicy::same_origin();
    /// assert!(p.allows("http://localhost:8080", "localhost:8080"));
    /// assert!(!p.allows("http://localhost:3000", "localhost:8080"));
    /// assert!(!p.allows("null", "localhost:8080"));
    /// ```
    pub fn allows(&self, origin: &str, host: &str) -> bool {
        if self.any {
            return true;
        }
        // Entries are stored lowercase; the request's origin is compared without a copy
        // (browsers send `Origin` on every POST).
        if self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return true;
        }
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        !authority.is_empty() && authority.eq_ignore_ascii_case(host)
    }
}

/// Extracts the principal (user) a session is bound to from a request, e.g. from an
/// authentication extension put there by an auth layer. Implemented for closures.
///
/// # Example
///
/// ```
/// use mcp_affinity::transport::PrincipalExtractor;
///
/// let from_header = |parts: &http::request::Parts| {
///     parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned)
/// };
/// let (parts, ()) = http::Request::builder().header("x-user", "ada").body(()).unwrap().into_parts();
/// assert_eq!(from_header.principal(&parts).as_deref(), Some("ada"));
/// ```
pub trait PrincipalExtractor: Send + Sync + 'static {
    /// The principal of this request, if authenticated.
    fn principal(&self, parts: &Parts) -> Option<String>;
}

impl<F> PrincipalExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn principal(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

pub use crate::config::ConfigError;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_sessions: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) init_timeout: Duration,
    pub(crate) log: LogLimits,
    pub(crate) replay_ttl: Duration,
    pub(crate) max_pending_requests: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) retry: Duration,
    pub(crate) busy_retry_after: u32,
    pub(crate) max_running: usize,
    pub(crate) max_running_per_session: usize,
    pub(crate) handler_timeout: Duration,
    pub(crate) session_lifetime: Duration,
    pub(crate) hosts: HostPolicy,
    pub(crate) origins: OriginPolicy,
    pub(crate) ids: Arc<dyn SessionIdGenerator>,
    pub(crate) principal: Option<Arc<dyn PrincipalExtractor>>,
    pub(crate) on_restore: Option<RestoreHook>,
    pub(crate) event_sink: Option<Arc<dyn crate::session::EventSink>>,
}

/// The hook run once per restored session, before the request that restored it reaches the
/// handler.
pub(crate) type RestoreHook = Arc<dyn Fn(&Session) + Send + Sync>;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_sessions", &self.max_sessions)
            .field("idle_timeout", &self.idle_timeout)
            .field("init_timeout", &self.init_timeout)
            .field("log", &self.log)
            .field("replay_ttl", &self.replay_ttl)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("retry", &self.retry)
            .field("max_running", &self.max_running)
            .field("max_running_per_session", &self.max_running_per_session)
            .field("handler_timeout", &self.handler_timeout)
            .field("session_lifetime", &self.session_lifetime)
            .field("hosts", &self.hosts)
            .field("origins", &self.origins)
            .field("principal", &self.principal.is_some())
            .field("on_restore", &self.on_restore.is_some())
            .field("event_sink", &self.event_sink)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_sessions: 10_000,
            idle_timeout: Duration::from_secs(30 * 60),
            init_timeout: Duration::from_secs(60),
            log: LogLimits {
                max_events: 256,
                max_bytes: 1024 * 1024,
            },
            replay_ttl: Duration::from_secs(60),
            max_pending_requests: 32,
            request_timeout: Duration::from_secs(60),
            keep_alive: Some(Duration::from_secs(15)),
            retry: Duration::from_secs(3),
            busy_retry_after: 5,
            max_running: 4096,
            max_running_per_session: 64,
            handler_timeout: Duration::from_secs(10 * 60),
            session_lifetime: Duration::from_secs(24 * 3600),
            hosts: HostPolicy::localhost(),
            origins: OriginPolicy::default(),
            ids: Arc::new(RandomIdGenerator),
            principal: None,
            on_restore: None,
            event_sink: None,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let c = crate::config::Checks("transport");
        c.positive(self.replay_ttl, "replay_ttl")?;
        c.at_least_one(self.max_body_bytes, "max_body_bytes")?;
        c.at_least_one(self.max_sessions, "max_sessions")?;
        c.positive(self.idle_timeout, "idle_timeout")?;
        c.positive(self.init_timeout, "init_timeout")?;
        c.at_least_one(self.log.max_events, "event_log_events")?;
        c.at_least_one(self.log.max_bytes, "event_log_bytes")?;
        c.positive(self.request_timeout, "request_timeout")?;
        if let Some(d) = self.keep_alive {
            c.positive(d, "keep_alive")?;
        }
        c.at_least_one(self.max_running, "max_running_handlers")?;
        c.at_least_one(
            self.max_running_per_session,
            "max_running_handlers_per_session",
        )?;
        c.positive(self.handler_timeout, "handler_timeout")?;
        c.positive(self.session_lifetime, "session_lifetime")?;
        // `retry:` is sent in whole milliseconds.
        c.require(
            self.retry.subsec_nanos().is_multiple_of(1_000_000),
            "retry",
            "must be a whole number of milliseconds",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_cuts_a_trailing_numeric_port_only() {
        for (h, want) in [
            ("localhost:3000", "localhost"),
            ("localhost:", "localhost"),
            ("localhost", "localhost"),
            ("a:b:80", "a:b"),
            (":80", ""),
            ("80", "80"),
            ("host:8x", "host:8x"),
            ("[::1]:3000", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(strip_port(h), want, "{h}");
        }
        assert!(has_port("example.com:443"));
        assert!(!has_port("[::1]"));
    }

    /// `SseTransportLayer::new` serves the defaults without validating them.
    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn host_entries_with_and_without_port() {
        let p = HostPolicy::list(["a.example", "B.example:8443"]);
        assert!(p.allows("A.EXAMPLE:1"));
        assert!(p.allows("b.example:8443"));
        assert!(!p.allows("b.example:8444"));
        assert!(!p.allows("b.example"));
        assert!(!p.allows("c.example"));
    }
}
