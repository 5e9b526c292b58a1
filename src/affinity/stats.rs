//! Counters of the affinity layer.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// A handle to the counters of one [`SessionAffinityLayer`](super::SessionAffinityLayer).
///
/// Every clone of the layer, every service it builds and every clone of this handle share the
/// same counters. They only grow (relaxed atomics; read them for metrics, not for
/// synchronization).
///
/// # Example
///
/// ```
/// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
///
/// let layer = SessionAffinityLayer::new(NodeTag::new("n1").unwrap());
/// let stats = layer.stats();
/// // ... serve with `layer` ...
/// let snap = stats.snapshot();
/// assert_eq!(snap.cookies_set, 0);
/// assert_eq!(snap.misroutes_session_id, 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct AffinityStats {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    cookies_set: AtomicU64,
    misroutes_cookie: AtomicU64,
    misroutes_session_id: AtomicU64,
    malformed_cookies: AtomicU64,
    enveloped: AtomicU64,
    strict_rejections: AtomicU64,
}

/// A point-in-time copy of [`AffinityStats`].
///
/// # Example
///
/// ```
/// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
///
/// let snap = SessionAffinityLayer::new(NodeTag::new("n1").unwrap()).stats().snapshot();
/// assert_eq!(snap, Default::default());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AffinityStatsSnapshot {
    /// Requests in the layer's scope, of both eras (what a drain watches to tell that the
    /// balancer stopped routing here).
    pub requests: u64,
    /// Responses that carried this node's affinity cookie (`Set-Cookie`).
    pub cookies_set: u64,
    /// Requests whose affinity cookie named another node (and whose session id did not name
    /// this one).
    pub misroutes_cookie: u64,
    /// Requests whose `Mcp-Session-Id` carried another node's tag.
    pub misroutes_session_id: u64,
    /// Affinity cookies ignored as malformed, forged or oversized (one per cookie, or per
    /// oversized or non-text `Cookie` header line that mentions the cookie's name).
    pub malformed_cookies: u64,
    /// Responses whose `Mcp-Session-Id` was wrapped in this node's envelope.
    pub enveloped: u64,
    /// Requests answered `404` at once by strict mode, without calling the inner service.
    pub strict_rejections: u64,
}

impl AffinityStats {
    /// Reads every counter.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::{SessionAffinity, session::NodeTag};
    /// use tower::ServiceExt;
    ///
    /// let inner = tower::service_fn(|_req: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let svc = SessionAffinity::new(inner, NodeTag::new("n1").unwrap());
    /// let stats = svc.stats();
    /// let req = http::Request::post("/mcp").header("mcp-session-id", "n1.abc").body(String::new()).unwrap();
    /// svc.oneshot(req).await.unwrap(); // this node's own session: no misroute
    /// let snap = stats.snapshot();
    /// assert_eq!(snap.requests, 1);
    /// assert_eq!((snap.misroutes_session_id, snap.misroutes_cookie), (0, 0));
    /// # }
    /// ```
    pub fn snapshot(&self) -> AffinityStatsSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AffinityStatsSnapshot {
            requests: get(&c.requests),
            cookies_set: get(&c.cookies_set),
            misroutes_cookie: get(&c.misroutes_cookie),
            misroutes_session_id: get(&c.misroutes_session_id),
            malformed_cookies: get(&c.malformed_cookies),
            enveloped: get(&c.enveloped),
            strict_rejections: get(&c.strict_rejections),
        }
    }

    pub(crate) fn request(&self) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cookie_set(&self) {
        self.counters.cookies_set.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn misroute_cookie(&self) {
        self.counters
            .misroutes_cookie
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::affinity_misroute(true);
    }

    pub(crate) fn misroute_session_id(&self) {
        self.counters
            .misroutes_session_id
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::affinity_misroute(false);
    }

    pub(crate) fn malformed_cookies(&self, n: u64) {
        if n > 0 {
            self.counters
                .malformed_cookies
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn enveloped(&self) {
        self.counters.enveloped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn strict_rejection(&self) {
        self.counters
            .strict_rejections
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::strict_rejection();
    }
}
