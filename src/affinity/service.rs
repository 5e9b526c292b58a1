use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use tower_service::Service;

use super::{
    AffinityStats, Misroute, MisrouteKind, ResponseBody, ResponseFuture, SessionAffinityLayer,
    cookies, layer::Shared,
};
use crate::{
    protocol::{Rejection, RejectionKind, codes, headers},
    session::{Fingerprint, Forwarded, NodeTag, SessionRestored},
};

/// The first modern-era revision: a request announcing it (or a later one) is stateless.
const MODERN_SINCE: &str = "2026-07-28";

/// Load-balancer affinity around an MCP service. Built by [`SessionAffinityLayer`]; see the
/// [module docs](crate::affinity) for what it does and for examples.
///
/// # Example
///
/// ```
/// use mcp_affinity::{SessionAffinity, session::NodeTag};
///
/// let inner = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let svc = SessionAffinity::new(inner, NodeTag::new("n1").unwrap());
/// assert_eq!(svc.stats().snapshot().cookies_set, 0);
/// ```
#[derive(Debug)]
pub struct SessionAffinity<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for SessionAffinity<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> SessionAffinity<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Affinity with the default settings (see [`SessionAffinityLayer::new`]) around `inner`.
    ///
    /// Every call creates new counters; build a [`SessionAffinityLayer`] to share them.
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
    /// // Another node's session id: the hint is put into the response extensions.
    /// let req = http::Request::post("/mcp").header("mcp-session-id", "n2.abc").body(String::new()).unwrap();
    /// let res = svc.oneshot(req).await.unwrap();
    /// let hint = res.extensions().get::<mcp_affinity::affinity::Misroute>().unwrap();
    /// assert_eq!(hint.owner_tag, "n2");
    /// # }
    /// ```
    pub fn new(inner: S, tag: NodeTag) -> Self {
        tower_layer::Layer::layer(&SessionAffinityLayer::new(tag), inner)
    }

    /// The layer with the default settings for this tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinity, session::NodeTag};
    ///
    /// let layer = SessionAffinity::<()>::layer(NodeTag::new("n1").unwrap());
    /// assert_eq!(layer.scope(), "/mcp");
    /// ```
    pub fn layer(tag: NodeTag) -> SessionAffinityLayer {
        SessionAffinityLayer::new(tag)
    }

    /// The counters this service shares with its layer.
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
    /// let req = http::Request::post("/mcp").header("mcp-session-id", "n2.abc").body(String::new()).unwrap();
    /// svc.oneshot(req).await.unwrap();
    /// assert_eq!(stats.snapshot().misroutes_session_id, 1);
    /// # }
    /// ```
    pub fn stats(&self) -> AffinityStats {
        self.shared.stats.clone()
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionAffinity<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Everything is decided from the request line and headers, before the inner call,
        // so the ready inner service is called right here: no clone is needed.
        match inspect(&self.shared, &mut req) {
            Decision::PassThrough => ResponseFuture::pass_through(self.inner.call(req)),
            Decision::Legacy(finish) => ResponseFuture::legacy(self.inner.call(req), finish),
            Decision::Reject(finish) => ResponseFuture::rejected(finish),
            Decision::Refuse(rejection) => ResponseFuture::refused(rejection),
        }
    }
}

/// What happens to a request.
pub(crate) enum Decision {
    /// Out of scope or modern era: untouched both ways.
    PassThrough,
    /// In scope, legacy era: call inner, then finish the response.
    Legacy(Finish),
    /// Strict mode: answer `404` without calling inner.
    Reject(Finish),
    /// A repeated singleton header: answer `400` without calling inner (no cookie).
    Refuse(Rejection),
}

/// What to do to a legacy response.
#[derive(Debug)]
pub(crate) struct Finish {
    shared: Arc<Shared>,
    set_cookie: bool,
    misroute: Option<Misroute>,
}

impl Finish {
    pub(crate) fn apply<B>(self, res: &mut Response<B>) {
        let Self {
            shared,
            set_cookie,
            misroute,
        } = self;
        // Another node's answer (a forwarded request) is that node's: its cookie and its
        // envelope, if any, pass through. An adopted session's id is already the client's.
        let forwarded = res.extensions().get::<Forwarded>().is_some();
        if shared.config.envelope
            && !forwarded
            && res.extensions().get::<SessionRestored>().is_none()
        {
            envelope(&shared, res.headers_mut());
        }
        if set_cookie
            && !forwarded
            && let Some(v) = &shared.set_cookie
        {
            res.headers_mut().append(header::SET_COOKIE, v.clone());
            shared.stats.cookie_set();
        }
        if let Some(m) = misroute {
            res.extensions_mut().insert(m);
        }
    }
}

/// The strict-mode answer.
pub(crate) fn misrouted_response() -> Rejection {
    Rejection::new(
        RejectionKind::Misrouted,
        codes::SESSION_NOT_FOUND,
        "session not found on this node: start a new session with initialize",
    )
}

fn inspect<B>(shared: &Arc<Shared>, req: &mut Request<B>) -> Decision {
    let cfg = &shared.config;
    if !in_scope(req.uri().path(), &cfg.scope) {
        return Decision::PassThrough;
    }
    shared.stats.request();
    // Before the era or the session id is read: with two copies, a balancer in front may
    // have routed on the other one.
    if let Err(r) = crate::protocol::single::check(req.headers(), &crate::protocol::single::ROUTING)
    {
        crate::metrics::duplicate_header(crate::metrics::Layer::Affinity);
        return Decision::Refuse(r);
    }
    if is_modern(req) {
        return Decision::PassThrough;
    }

    let cookie = cookies::read(req.headers(), &cfg.cookie_name, &cfg.tag);
    if cookie.malformed > 0 {
        shared.stats.malformed_cookies(cookie.malformed);
        // Never the cookie values: only how many were ignored.
        tracing::debug!(
            count = cookie.malformed,
            "ignored malformed or oversized affinity cookies"
        );
    }

    let misroute = match read_session_id(req.headers(), &cfg.tag, cfg.envelope) {
        // No session id: an `initialize` (or a request the transport refuses anyway). Never
        // a misroute, whatever the cookie says; it simply gets this node's cookie.
        SessionIdTag::Absent => {
            // The layers below learn the envelope, so that they can tell the id the client
            // will use (the registry keys its records by it).
            if let Some(envelope) = &shared.envelope {
                req.extensions_mut().insert(envelope.clone());
            }
            None
        }
        // Ours: the session id outranks a stale cookie.
        SessionIdTag::Here { stripped } => {
            if let Some(v) = stripped {
                let wire = req.headers_mut().insert(headers::MCP_SESSION_ID, v);
                if let (Some(envelope), Some(wire)) = (&shared.envelope, wire) {
                    req.extensions_mut()
                        .insert(envelope.clone().with_wire_id(wire));
                }
            }
            None
        }
        SessionIdTag::Other(owner) => Some(Misroute::new(MisrouteKind::SessionId, owner)),
        SessionIdTag::Untagged => cookie
            .other
            .filter(|_| !cookie.here)
            .map(|owner| Misroute::new(MisrouteKind::Cookie, owner)),
    };

    let set_cookie = !cookie.here;
    let Some(misroute) = misroute else {
        return Decision::Legacy(Finish {
            shared: shared.clone(),
            set_cookie,
            misroute: None,
        });
    };

    match misroute.kind {
        MisrouteKind::Cookie => shared.stats.misroute_cookie(),
        _ => shared.stats.misroute_session_id(),
    }
    tracing::debug!(
        kind = %misroute.kind,
        owner = %misroute.owner_tag,
        here = %cfg.tag,
        method = %req.method(),
        "request for a session of another node"
    );
    let strict =
        cfg.strict && misroute.kind == MisrouteKind::SessionId && req.method() != Method::DELETE;
    req.extensions_mut().insert(misroute.clone());
    let finish = Finish {
        shared: shared.clone(),
        set_cookie,
        misroute: Some(misroute),
    };
    if strict {
        shared.stats.strict_rejection();
        Decision::Reject(finish)
    } else {
        Decision::Legacy(finish)
    }
}

/// Whether `path` is `scope` or below it (`/mcp` covers `/mcp/x`, not `/mcpx`).
pub(crate) fn in_scope(path: &str, scope: &str) -> bool {
    scope == "/"
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A modern-era request, from headers only: a `POST` whose `MCP-Protocol-Version` is a
/// `YYYY-MM-DD` revision on or after `2026-07-28`. Everything else is legacy.
fn is_modern<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(headers::MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_modern_revision)
}

pub(crate) fn is_modern_revision(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        })
        && v >= MODERN_SINCE
}

enum SessionIdTag {
    Absent,
    /// Not `<tag>.<rest>` with a valid tag (or not text).
    Untagged,
    /// This node's tag; in envelope mode, the inner id to pass on instead.
    Here {
        stripped: Option<HeaderValue>,
    },
    /// Another node's tag.
    Other(String),
}

fn read_session_id(h: &HeaderMap, here: &NodeTag, envelope: bool) -> SessionIdTag {
    let Some(raw) = h.get(headers::MCP_SESSION_ID) else {
        return SessionIdTag::Absent;
    };
    let Some((tag, rest)) = raw.to_str().ok().and_then(|s| s.split_once('.')) else {
        return SessionIdTag::Untagged;
    };
    if !NodeTag::is_valid(tag) {
        SessionIdTag::Untagged
    } else if tag == here.as_str() {
        let stripped = if envelope && !rest.is_empty() {
            HeaderValue::from_str(rest).ok()
        } else {
            None
        };
        SessionIdTag::Here { stripped }
    } else {
        SessionIdTag::Other(tag.to_owned())
    }
}

/// Envelope mode, on the way out: `Mcp-Session-Id: X` becomes `<tag>.X`.
fn envelope(shared: &Shared, h: &mut HeaderMap) {
    let (Some(raw), Some(envelope)) = (h.get(headers::MCP_SESSION_ID), &shared.envelope) else {
        return;
    };
    let wrapped = raw
        .to_str()
        .ok()
        .and_then(|id| envelope.wrap(id))
        .and_then(|id| HeaderValue::try_from(id).ok());
    match wrapped {
        Some(v) => {
            h.insert(headers::MCP_SESSION_ID, v);
            shared.stats.enveloped();
        }
        None => {
            let fingerprint = raw.to_str().map(Fingerprint::of).ok();
            tracing::debug!(
                session = ?fingerprint,
                "inner session id not enveloped (not visible ASCII or too long)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matching() {
        assert!(in_scope("/mcp", "/mcp"));
        assert!(in_scope("/mcp/", "/mcp"));
        assert!(in_scope("/mcp/x/y", "/mcp"));
        assert!(!in_scope("/mcpx", "/mcp"));
        assert!(!in_scope("/", "/mcp"));
        assert!(!in_scope("/graphql", "/mcp"));
        assert!(!in_scope("/MCP", "/mcp"));
        assert!(in_scope("/anything", "/"));
        assert!(in_scope("/api/mcp", "/api/mcp"));
        assert!(!in_scope("/api", "/api/mcp"));
    }

    #[test]
    fn modern_revisions() {
        assert!(is_modern_revision("2026-07-28"));
        assert!(is_modern_revision("2027-01-01"));
        assert!(!is_modern_revision("2025-11-25"));
        assert!(!is_modern_revision("2026-07-27"));
        assert!(!is_modern_revision("2026-7-28"));
        assert!(!is_modern_revision("2026/07/28"));
        assert!(!is_modern_revision("9999999999"));
        assert!(!is_modern_revision(""));
    }

    #[test]
    fn session_id_tags() {
        let here = NodeTag::new("n1").unwrap();
        let read = |v: &'static str, envelope| {
            let mut h = HeaderMap::new();
            h.insert(headers::MCP_SESSION_ID, HeaderValue::from_static(v));
            read_session_id(&h, &here, envelope)
        };
        assert!(matches!(
            read_session_id(&HeaderMap::new(), &here, true),
            SessionIdTag::Absent
        ));
        assert!(matches!(read("abc", true), SessionIdTag::Untagged));
        assert!(matches!(read("a!b.c", true), SessionIdTag::Untagged));
        assert!(matches!(read(".c", true), SessionIdTag::Untagged));
        assert!(matches!(read("n2.c", false), SessionIdTag::Other(t) if t == "n2"));
        assert!(matches!(
            read("n1.c", false),
            SessionIdTag::Here { stripped: None }
        ));
        assert!(matches!(
            read("n1.", true),
            SessionIdTag::Here { stripped: None }
        ));
        assert!(
            matches!(read("n1.x.y", true), SessionIdTag::Here { stripped: Some(v) } if v == "x.y")
        );
    }
}
