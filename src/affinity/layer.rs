use std::{sync::Arc, time::Duration};

use http::HeaderValue;
use tower_layer::Layer;

use super::{
    AffinityStats, ConfigError, SameSite, SessionAffinity,
    config::{Config, parse_cookie_name, parse_cookie_path, parse_scope},
};
use crate::session::{NodeTag, SessionIdEnvelope, TaggedIdGenerator};

/// Adds load-balancer affinity to an MCP endpoint: the sticky cookie of ADR-0066, this node's
/// tag in session ids, and early misroute detection.
///
/// See the [module docs](crate::affinity) for what it does to each request and for examples.
///
/// Cloning the layer, and every service it builds, shares one set of
/// [counters](Self::stats). Build it once per node, from the node's tag: [`new`](Self::new)
/// or [`for_node`](Self::for_node) with the defaults, or [`builder`](Self::builder) for other
/// settings (validated by [`SessionAffinityBuilder::build`]).
///
/// # Example
///
/// ```
/// use mcp_affinity::{SessionAffinityLayer, SseTransportLayer};
///
/// let affinity = SessionAffinityLayer::for_node("node-a");
/// // The transport mints `<tag>.<random>` ids, so a balancer can pin on the header alone.
/// let transport = SseTransportLayer::builder().with_id_generator(affinity.id_generator()).build().unwrap();
/// # let _ = (affinity, transport);
/// ```
///
/// # Order
///
/// Outermost of this crate's layers: `SessionAffinityLayer` → `SessionRegistryLayer` →
/// `SseTransportLayer` → handler (with `ServiceBuilder`, layers added first see the request
/// first). Affinity must see the client's `Mcp-Session-Id` before anything else does: in
/// envelope mode the layers below it only ever see the inner service's own ids in
/// `Mcp-Session-Id`; the id the client uses travels beside it in the request's
/// [`SessionIdEnvelope`] extension (on an `initialize`, the envelope alone, so a layer below can
/// tell the id the client will get). The session registry keys its records by that client-side
/// id, the one every node sees. It must also
/// see the final response, so that its cookie and its envelope are the last word. Put it
/// inside authentication, CORS and tracing layers if you like; they do not look at session
/// ids.
///
/// # Backpressure
///
/// `poll_ready` forwards the inner service's readiness; the layer itself holds no resource.
/// A strict-mode `404` ([`with_strict`](SessionAffinityBuilder::with_strict)) is answered without calling the
/// inner service, so the capacity the inner service reserved in `poll_ready` stays reserved
/// for the next call on the same service (tower has no way to give it back, see
/// [tower#408](https://github.com/tower-rs/tower/issues/408)). With a `ConcurrencyLimit`
/// below this layer that is one permit held by an idle service clone, not a leak. Note that
/// axum treats every service as always ready.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionAffinityLayer {
    config: Config,
    stats: AffinityStats,
}

/// What every service built by one layer shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The precomputed `Set-Cookie` value.
    pub(crate) set_cookie: Option<HeaderValue>,
    pub(crate) stats: AffinityStats,
    /// This node's envelope, in envelope mode.
    pub(crate) envelope: Option<SessionIdEnvelope>,
}

impl SessionAffinityLayer {
    /// A layer for the node with this tag, with the ADR's defaults: scope `/mcp`, cookie
    /// `_mcp_backend=<tag>; Path=/mcp; HttpOnly; Secure; SameSite=Strict` (a browser-session
    /// cookie), no envelope, no strict mode.
    ///
    /// The tag is what clients and load balancers see: keep it opaque (never a hostname or an
    /// address) and unique per node. [`for_node`](Self::for_node) derives one.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
    ///
    /// let layer = SessionAffinityLayer::new(NodeTag::new("n1").unwrap());
    /// assert_eq!(layer.tag().as_str(), "n1");
    /// ```
    pub fn new(tag: NodeTag) -> Self {
        Self {
            config: Config::new(tag),
            stats: AffinityStats::default(),
        }
    }

    /// A layer for the node with this name; its tag is [derived](NodeTag::derive) from the
    /// name (8 hex digits), so the name itself never reaches clients.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
    ///
    /// let layer = SessionAffinityLayer::for_node("node-a.internal");
    /// assert_eq!(layer.tag(), &NodeTag::derive("node-a.internal"));
    /// assert_eq!(layer.tag().as_str().len(), 8);
    /// ```
    pub fn for_node(name: &str) -> Self {
        Self::new(NodeTag::derive(name))
    }

    /// A builder for a layer with another scope, other cookie attributes, envelope or strict
    /// mode; [`build`](SessionAffinityBuilder::build) validates them.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
    ///
    /// let layer = SessionAffinityLayer::builder(NodeTag::derive("node-a")).with_cookie_secure(false).build().unwrap();
    /// assert!(!layer.set_cookie_value().contains("Secure"));
    /// ```
    pub fn builder(tag: NodeTag) -> SessionAffinityBuilder {
        SessionAffinityBuilder::new(tag)
    }

    /// This node's tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
    ///
    /// let tag = NodeTag::new("n1").unwrap();
    /// assert_eq!(SessionAffinityLayer::new(tag.clone()).tag(), &tag);
    /// ```
    pub fn tag(&self) -> &NodeTag {
        &self.config.tag
    }

    /// The scope (path prefix) the layer acts on.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SessionAffinityLayer;
    ///
    /// assert_eq!(SessionAffinityLayer::for_node("a").scope(), "/mcp");
    /// ```
    pub fn scope(&self) -> &str {
        &self.config.scope
    }

    /// The `Set-Cookie` header value the layer adds.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::NodeTag};
    ///
    /// let layer = SessionAffinityLayer::new(NodeTag::new("n1").unwrap());
    /// assert_eq!(
    ///     layer.set_cookie_value(),
    ///     "_mcp_backend=n1; Path=/mcp; HttpOnly; Secure; SameSite=Strict"
    /// );
    /// ```
    pub fn set_cookie_value(&self) -> String {
        self.config.set_cookie_string()
    }

    /// A session id generator for this node: `<tag>.<24 random base64url characters>` (144
    /// bits from the operating system's generator). Give it to the transport with
    /// [`SseTransportBuilder::with_id_generator`](crate::transport::SseTransportBuilder::with_id_generator);
    /// its ids then pass through this layer unchanged.
    ///
    /// Ids are visible ASCII, `tag + 25` characters long: 33 for a derived tag, at most 57.
    /// A load balancer that pins on `Mcp-Session-Id` must keep keys that long: HAProxy
    /// truncates stick-table string keys to 32 characters by default, so declare
    /// `stick-table type string len 64`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, session::{NodeTag, SessionIdGenerator}};
    ///
    /// let layer = SessionAffinityLayer::new(NodeTag::new("n1").unwrap());
    /// let id = layer.id_generator().generate();
    /// assert!(id.as_str().starts_with("n1."));
    /// assert_eq!(id.node_tag(), Some("n1"));
    /// assert_eq!(id.as_str().len(), 2 + 1 + 24);
    /// ```
    pub fn id_generator(&self) -> TaggedIdGenerator {
        TaggedIdGenerator::new(self.config.tag.clone())
    }

    /// The counters shared by this layer, its clones and every service they build.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SessionAffinityLayer;
    ///
    /// let layer = SessionAffinityLayer::for_node("a");
    /// let stats = layer.stats();
    /// assert_eq!(stats.snapshot().strict_rejections, 0);
    /// ```
    pub fn stats(&self) -> AffinityStats {
        self.stats.clone()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        let set_cookie = self.config.set_cookie_header();
        if set_cookie.is_none() {
            // Unreachable: every part of the cookie was validated by the setters.
            tracing::error!("affinity cookie is not a valid header value; no cookie will be set");
        }
        Arc::new(Shared {
            config: self.config.clone(),
            set_cookie,
            stats: self.stats.clone(),
            envelope: self
                .config
                .envelope
                .then(|| SessionIdEnvelope::new(&self.config.tag)),
        })
    }
}

/// The configuration of a [`SessionAffinityLayer`]: scope, cookie attributes, envelope and
/// strict mode, validated by [`build`](Self::build).
///
/// # Example
///
/// ```
/// use mcp_affinity::{SessionAffinityLayer, affinity::SameSite, session::NodeTag};
///
/// let layer = SessionAffinityLayer::builder(NodeTag::new("n1").unwrap())
///     .with_scope("/api/mcp")
///     .with_cookie_same_site(SameSite::Lax)
///     .build()
///     .unwrap();
/// assert_eq!(layer.scope(), "/api/mcp");
/// let err = SessionAffinityLayer::builder(NodeTag::new("n1").unwrap()).with_cookie_name("").build().unwrap_err();
/// assert_eq!(err.field(), "cookie_name");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionAffinityBuilder {
    config: Config,
    scope: String,
    cookie_name: String,
    cookie_path: Option<String>,
}

impl SessionAffinityBuilder {
    /// A builder for the node with this tag, holding the defaults of
    /// [`SessionAffinityLayer::new`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{affinity::SessionAffinityBuilder, session::NodeTag};
    ///
    /// let layer = SessionAffinityBuilder::new(NodeTag::new("n1").unwrap()).build().unwrap();
    /// assert_eq!(layer.tag().as_str(), "n1");
    /// ```
    pub fn new(tag: NodeTag) -> Self {
        Self {
            config: Config::new(tag),
            scope: super::config::DEFAULT_SCOPE.into(),
            cookie_name: super::config::DEFAULT_COOKIE_NAME.into(),
            cookie_path: None,
        }
    }

    /// A builder for the node with this name; its tag is [derived](NodeTag::derive) from it,
    /// as [`SessionAffinityLayer::for_node`] does.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{affinity::SessionAffinityBuilder, session::NodeTag};
    ///
    /// let layer = SessionAffinityBuilder::for_node("node-a").build().unwrap();
    /// assert_eq!(layer.tag(), &NodeTag::derive("node-a"));
    /// ```
    pub fn for_node(name: &str) -> Self {
        Self::new(NodeTag::derive(name))
    }

    /// Sets the path prefix the layer acts on (default `/mcp`). `/mcp` covers `/mcp` and
    /// `/mcp/...` but not `/mcpx`; `/` covers every path. A trailing `/` is ignored.
    ///
    /// Requests outside the scope pass through untouched and never get the cookie, so other
    /// traffic keeps its round-robin. Unless [`with_cookie_path`](Self::with_cookie_path) was
    /// called, the cookie path follows the scope.
    ///
    /// # Errors (from [`build`](Self::build))
    ///
    /// A prefix that does not start with `/`, or contains anything but visible ASCII (no
    /// spaces, `;`, `,`, `?` or `#`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_scope("/api/mcp/").build()?;
    /// assert_eq!(layer.scope(), "/api/mcp");
    /// let err = SessionAffinityBuilder::for_node("a").with_scope("/a b").build().unwrap_err();
    /// assert_eq!(err.field(), "scope");
    /// # Ok::<(), mcp_affinity::affinity::ConfigError>(())
    /// ```
    pub fn with_scope(mut self, prefix: impl Into<String>) -> Self {
        self.scope = prefix.into();
        self
    }

    /// Sets the cookie name (default `_mcp_backend`).
    ///
    /// Cookie name prefixes carry browser rules: `__Host-` needs `Path=/` and `Secure`,
    /// `__Secure-` needs `Secure`.
    ///
    /// # Errors (from [`build`](Self::build))
    ///
    /// A name that is empty, longer than 64 bytes, or has characters outside the HTTP token
    /// set (letters, digits and ``!#$%&'*+-.^_`|~``).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_cookie_name("mcp_node").build()?;
    /// assert!(layer.set_cookie_value().starts_with("mcp_node="));
    /// let err = SessionAffinityBuilder::for_node("a").with_cookie_name("a=b").build().unwrap_err();
    /// assert_eq!(err.field(), "cookie_name");
    /// # Ok::<(), mcp_affinity::affinity::ConfigError>(())
    /// ```
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Sets the cookie's `Path` attribute (default: the scope, `/mcp`).
    ///
    /// # ⚠️ Warning
    ///
    /// A broader path (such as `/`) makes browsers send the affinity cookie with every request
    /// to the site, so a cookie-routing balancer pins all of the client's traffic, not only
    /// MCP, to one node (the ADR keeps other traffic round-robin), and the cookie travels
    /// where it is not needed.
    ///
    /// # Errors (from [`build`](Self::build))
    ///
    /// A path that does not start with `/`, or contains anything but visible ASCII (no spaces,
    /// `;`, `,`, `?` or `#`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// // Behind `axum::Router::nest_service("/mcp", ..)` the layer sees paths without `/mcp`.
    /// let layer = SessionAffinityBuilder::for_node("a").with_scope("/").with_cookie_path("/mcp").build()?;
    /// assert!(layer.set_cookie_value().contains("; Path=/mcp;"));
    /// # Ok::<(), mcp_affinity::affinity::ConfigError>(())
    /// ```
    pub fn with_cookie_path(mut self, path: impl Into<String>) -> Self {
        self.cookie_path = Some(path.into());
        self
    }

    /// Sets the cookie's `Secure` attribute (default `true`).
    ///
    /// # ⚠️ Warning
    ///
    /// Without `Secure` the cookie is also sent over plain HTTP, where anyone on the path can
    /// read and change it. Turn it off only for local development over `http://`, where some
    /// clients (the Python SDK, browsers) drop or never send `Secure` cookies.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let dev = SessionAffinityBuilder::for_node("a").with_cookie_secure(false).build().unwrap();
    /// assert!(!dev.set_cookie_value().contains("Secure"));
    /// ```
    pub fn with_cookie_secure(mut self, secure: bool) -> Self {
        self.config.cookie_secure = secure;
        self
    }

    /// Sets the cookie's `HttpOnly` attribute (default `true`).
    ///
    /// # ⚠️ Warning
    ///
    /// Without `HttpOnly`, scripts in the page can read the cookie (and so learn which node
    /// serves the client) and change it. Nothing in MCP needs script access to it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_cookie_http_only(false).build().unwrap();
    /// assert!(!layer.set_cookie_value().contains("HttpOnly"));
    /// ```
    pub fn with_cookie_http_only(mut self, http_only: bool) -> Self {
        self.config.cookie_http_only = http_only;
        self
    }

    /// Sets the cookie's `SameSite` attribute (default [`SameSite::Strict`]).
    ///
    /// # ⚠️ Warning
    ///
    /// [`Lax`](SameSite::Lax) and [`None`](SameSite::None) let other sites' requests carry
    /// the cookie, and so steer a client's requests to a node of their choice.
    ///
    /// # Errors (from [`build`](Self::build))
    ///
    /// `SameSite=None` without `Secure`, which browsers reject.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::{SameSite, SessionAffinityBuilder};
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_cookie_same_site(SameSite::Lax).build().unwrap();
    /// assert!(layer.set_cookie_value().ends_with("SameSite=Lax"));
    /// let err = SessionAffinityBuilder::for_node("a")
    ///     .with_cookie_same_site(SameSite::None)
    ///     .with_cookie_secure(false)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "cookie_same_site");
    /// ```
    pub fn with_cookie_same_site(mut self, same_site: SameSite) -> Self {
        self.config.cookie_same_site = same_site;
        self
    }

    /// Sets the cookie's `Max-Age` in whole seconds (default `None`: a browser-session cookie,
    /// dropped when the browser closes).
    ///
    /// # ⚠️ Warning
    ///
    /// A persistent cookie outlives the MCP session it was set for and pins the browser to a
    /// node long after that session (and maybe that node) is gone. MCP sessions are
    /// ephemeral; keep the cookie short-lived.
    ///
    /// # Errors (from [`build`](Self::build))
    ///
    /// A duration under one second or not a whole number of seconds (`Max-Age=0` would delete
    /// the cookie at once, and the attribute has no fractions).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a")
    ///     .with_cookie_max_age(Some(Duration::from_secs(8 * 3600)))
    ///     .build()
    ///     .unwrap();
    /// assert!(layer.set_cookie_value().ends_with("; Max-Age=28800"));
    /// let err = SessionAffinityBuilder::for_node("a")
    ///     .with_cookie_max_age(Some(Duration::from_millis(1500)))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "cookie_max_age");
    /// ```
    pub fn with_cookie_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.config.cookie_max_age = max_age;
        self
    }

    /// Envelope mode (default off), for inner services that mint their own session ids (rmcp
    /// mints UUIDs) instead of using [`id_generator`](SessionAffinityLayer::id_generator).
    ///
    /// On the way out, a response's `Mcp-Session-Id: X` becomes `<tag>.X`; on the way in, an
    /// `Mcp-Session-Id: <tag>.X` carrying this node's tag becomes `X` before the inner service
    /// sees it, so the inner service only ever sees its own ids. An id carrying another node's
    /// tag is a misroute and passes unchanged (the inner service answers `404`); an id without
    /// a tag passes unchanged too.
    ///
    /// An enveloped id is `tag + 1 + inner id` characters: 45 for a UUID under a derived
    /// 8-character tag. A load balancer that pins on the header must keep keys that long
    /// (HAProxy: `stick-table type string len 64`, or more for long tags). An inner id that is
    /// not visible ASCII, or would exceed 256 characters once enveloped, is left as is (and
    /// so is not pinned by tag).
    ///
    /// Do not combine it with [`id_generator`](SessionAffinityLayer::id_generator) ids: they already carry the
    /// tag (enveloping them again works, but only lengthens them).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_envelope(true).build().unwrap();
    /// # let _ = layer;
    /// ```
    pub fn with_envelope(mut self, envelope: bool) -> Self {
        self.config.envelope = envelope;
        self
    }

    /// Strict mode (default off): a `POST` or `GET` whose `Mcp-Session-Id` carries another
    /// node's tag is answered `404` at once (JSON-RPC error `-32001`, "re-initialize"),
    /// without calling the inner service.
    ///
    /// Only the session-id tag counts: a stale cookie never makes a strict `404`, and a
    /// request without `Mcp-Session-Id` (an `initialize`) is never a misroute. A `DELETE` is
    /// always passed on, so a session registry below can still remove the session's record
    /// whichever node owned it.
    ///
    /// # ⚠️ Warning
    ///
    /// Strict mode trusts that every id of the form `<tag>.<rest>` was minted by this crate:
    /// use it only with [`id_generator`](SessionAffinityLayer::id_generator) ids or in
    /// [envelope mode](Self::with_envelope), never over an inner service that mints ids
    /// containing a `.` itself. Without strict mode, the registry's `404` says more (it can
    /// tell a misroute from a restart or an unknown id).
    ///
    /// # Strict mode excludes forwarding and adoption
    ///
    /// A session id keeps the tag of the node that created it after another node adopted it,
    /// and a forwarded request reaches the owner only if the node it landed on passes it to
    /// the session registry. Strict mode answers both with `404` first, so the session
    /// registry's continuity (forwarding to a live owner, adopting from a gone one) never
    /// runs: a client whose node went away must re-initialize. Leave strict mode off in a
    /// cluster whose sessions should outlive their node; without it, an adopted session's
    /// other-node tag is only noted (the misroute hint) and the adopter sets its own cookie.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let layer = SessionAffinityBuilder::for_node("a").with_strict(true).build().unwrap();
    /// # let _ = layer;
    /// ```
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.config.strict = strict;
        self
    }

    /// Replaces the tag given to [`new`](Self::new).
    pub(crate) fn set_tag(&mut self, tag: NodeTag) {
        self.config.tag = tag;
    }

    /// Whether strict mode is on.
    pub(crate) fn is_strict(&self) -> bool {
        self.config.strict
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// The first invalid setting, named by [`ConfigError::field`]: `scope`, `cookie_name`,
    /// `cookie_path` (see their setters), `cookie_max_age` (under a second or fractional),
    /// `cookie_same_site` (`None` without `Secure`), or a `__Secure-`/`__Host-` cookie name
    /// whose rules the other attributes break (`cookie_name`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SessionAffinityBuilder;
    ///
    /// let err = SessionAffinityBuilder::for_node("a").with_cookie_name("__Host-mcp").build().unwrap_err();
    /// assert_eq!(err.field(), "cookie_name");
    /// let ok = SessionAffinityBuilder::for_node("a").with_cookie_name("__Host-mcp").with_scope("/").build();
    /// assert!(ok.is_ok());
    /// ```
    pub fn build(self) -> Result<SessionAffinityLayer, ConfigError> {
        let mut config = self.config;
        config.scope = parse_scope(&self.scope)?;
        config.cookie_name = parse_cookie_name(&self.cookie_name)?;
        config.cookie_path = self
            .cookie_path
            .as_deref()
            .map(parse_cookie_path)
            .transpose()?;
        config.validate()?;
        Ok(SessionAffinityLayer {
            config,
            stats: AffinityStats::default(),
        })
    }
}

impl<S> Layer<S> for SessionAffinityLayer {
    type Service = SessionAffinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionAffinity::from_shared(inner, self.shared())
    }
}
