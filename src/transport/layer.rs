use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower_layer::Layer;

use super::{
    SseTransport,
    config::{Config, ConfigError, HostPolicy, OriginPolicy, PrincipalExtractor},
};
use crate::session::{CloseReason, Session, SessionConfig, SessionIdGenerator, SessionTable};

/// Adds the MCP Streamable HTTP transport (both eras) in front of a JSON-RPC handler.
///
/// See the [module docs](crate::transport) for the handler contract and an example.
///
/// Cloning the layer, and every service it builds, shares one session table: build the layer
/// once per node.
///
/// # Order
///
/// Innermost of this crate's layers: `SessionAffinityLayer` → `SessionRegistryLayer` →
/// `SseTransportLayer` → handler. Put authentication outside it if sessions are bound to a
/// principal ([`with_principal`](Self::with_principal)).
///
/// # Backpressure
///
/// `poll_ready` forwards the handler's readiness. Requests the transport answers itself
/// (rejections, `GET`, `DELETE`, client responses) do not use the handler's readiness.
/// Handler calls for requests run in their own task once they do not complete on the first
/// poll, so a slow handler does not hold the connection's future; the number of running
/// handlers is bounded by the number of open requests, which a `ConcurrencyLimitLayer` in
/// front of the transport can cap.
#[derive(Debug, Clone)]
#[must_use]
pub struct SseTransportLayer {
    config: Config,
    shared: Option<Arc<Shared>>,
}

impl Default for SseTransportLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// State shared by every clone of a built transport.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) sessions: SessionTable,
    pub(crate) epoch: Instant,
    pub(crate) draining: AtomicBool,
    sweeper: AtomicBool,
    pub(crate) counters: Counters,
}

/// Counters (for tests and metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) closed: AtomicU64,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        SessionConfig {
            log: self.config.log,
            max_pending_requests: self.config.max_pending_requests,
            request_timeout: self.config.request_timeout,
        }
    }

    /// Removes and closes a session; returns whether this call closed it.
    pub(crate) fn close(
        &self,
        session: &Session,
        reason: CloseReason,
        retry: Option<Duration>,
    ) -> bool {
        self.sessions.remove(session.id().as_str());
        let closed = session.close_with(reason, retry);
        if closed {
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(session = %session.id(), reason = %reason, "session closed");
        }
        closed
    }

    /// Starts the idle/initialization sweeper once (needs a Tokio runtime).
    pub(crate) fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = (self
            .config
            .idle_timeout
            .min(self.config.init_timeout)
            .min(self.config.replay_ttl)
            / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }

    /// Closes idle sessions and sessions that never finished initialization.
    pub(crate) fn sweep(&self) {
        let now = self.now_ms();
        let idle = self.config.idle_timeout.as_millis() as u64;
        let init = self.config.init_timeout.as_millis() as u64;
        for s in self.sessions.snapshot() {
            if s.is_closed() {
                self.sessions.remove(s.id().as_str());
            } else if !s.is_initialized()
                && s.last_activity() <= s.created_ms()
                && now.saturating_sub(s.created_ms()) >= init
                && !s.is_busy()
            {
                // Never initialized and never used since `initialize` (a probe, or a client
                // that went away): a session in use is left to the idle timeout.
                self.close(&s, CloseReason::InitTimeout, None);
            } else if now.saturating_sub(s.last_activity()) >= idle && !s.is_busy() {
                self.close(&s, CloseReason::Idle, None);
            } else {
                s.inner.log.prune(self.config.replay_ttl);
            }
        }
    }
}

impl SseTransportLayer {
    /// A transport with the documented defaults.
    pub fn new() -> Self {
        Self {
            config: Config::default(),
            shared: None,
        }
    }

    /// Largest accepted POST body; larger ones get `413` (default 4 MiB).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self.shared = None;
        self
    }

    /// Most sessions this node holds; `initialize` beyond it gets `503` with `Retry-After`
    /// (default 10,000).
    pub fn with_max_sessions(mut self, n: usize) -> Self {
        self.config.max_sessions = n;
        self.shared = None;
        self
    }

    /// A session with no request and no open stream for this long is closed (default 30 min).
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self.shared = None;
        self
    }

    /// A session whose client never sent `notifications/initialized` is closed after this long
    /// (default 60 s). Health probes that send `initialize` and go away cost nothing for long.
    pub fn with_init_timeout(mut self, d: Duration) -> Self {
        self.config.init_timeout = d;
        self.shared = None;
        self
    }

    /// Bounds of each session's event log (default 256 events and 1 MiB). The log holds the
    /// messages of all the session's streams for delivery and `Last-Event-ID` replay; the
    /// oldest are evicted first, so a client that never reads cannot grow memory beyond it.
    pub fn with_event_log(mut self, max_events: usize, max_bytes: usize) -> Self {
        self.config.log.max_events = max_events;
        self.config.log.max_bytes = max_bytes;
        self.shared = None;
        self
    }

    /// How long delivered events and the events of finished streams stay replayable with
    /// `Last-Event-ID` (default 60 s). Undelivered events stay until delivered or evicted by
    /// the event-log bounds.
    pub fn with_replay_ttl(mut self, d: Duration) -> Self {
        self.config.replay_ttl = d;
        self.shared = None;
        self
    }

    /// Most server→client requests awaiting an answer per session (default 32).
    pub fn with_max_pending_requests(mut self, n: usize) -> Self {
        self.config.max_pending_requests = n;
        self.shared = None;
        self
    }

    /// How long a server→client request waits for the client's answer (default 60 s).
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self.shared = None;
        self
    }

    /// Interval of keep-alive comments on open SSE streams (default 15 s); `None` disables them.
    pub fn with_keep_alive(mut self, d: Option<Duration>) -> Self {
        self.config.keep_alive = d;
        self.shared = None;
        self
    }

    /// The `retry:` hint sent with priming events and when the server ends a stream
    /// (default 3 s).
    pub fn with_retry(mut self, d: Duration) -> Self {
        self.config.retry = d;
        self.shared = None;
        self
    }

    /// Accepted `Host` headers (default [`HostPolicy::localhost`]). Deployments reachable under
    /// other names must list them.
    pub fn with_allowed_hosts(mut self, hosts: HostPolicy) -> Self {
        self.config.hosts = hosts;
        self.shared = None;
        self
    }

    /// Accepted `Origin` headers (default [`OriginPolicy::same_origin`]).
    pub fn with_allowed_origins(mut self, origins: OriginPolicy) -> Self {
        self.config.origins = origins;
        self.shared = None;
        self
    }

    /// The session id generator (default [`RandomIdGenerator`](crate::session::RandomIdGenerator)).
    /// The affinity layer provides one that embeds the node tag.
    pub fn with_id_generator(mut self, ids: impl SessionIdGenerator) -> Self {
        self.config.ids = Arc::new(ids);
        self.shared = None;
        self
    }

    /// Binds each session to the principal that created it: a request from another principal
    /// gets the same `404` as an unknown session.
    pub fn with_principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.config.principal = Some(Arc::new(extractor));
        self.shared = None;
        self
    }

    /// Validates the configuration and freezes it. Services built by [`Layer::layer`] from the
    /// returned layer (and its clones) share one session table.
    ///
    /// Calling `layer` on an unbuilt layer builds it implicitly, falling back to the defaults
    /// (with an error log) if the configuration is invalid; call `build` to see the error.
    pub fn build(self) -> Result<Self, ConfigError> {
        if self.shared.is_some() {
            return Ok(self);
        }
        self.config.validate()?;
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            sessions: SessionTable::new(),
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            sweeper: AtomicBool::new(false),
            counters: Counters::default(),
        });
        Ok(Self {
            config: self.config,
            shared: Some(shared),
        })
    }

    /// A handle for graceful shutdown and introspection of this transport's sessions.
    ///
    /// Builds the layer first; see [`build`](Self::build).
    pub fn handle(&mut self) -> Result<TransportHandle, ConfigError> {
        if self.shared.is_none() {
            *self = std::mem::take(self).build()?;
        }
        Ok(TransportHandle {
            shared: self.shared.clone().ok_or(ConfigError { field: "layer" })?,
        })
    }

    fn shared(&self) -> Arc<Shared> {
        if let Some(s) = &self.shared {
            return s.clone();
        }
        match self.clone().build() {
            Ok(built) => built
                .shared
                .unwrap_or_else(|| unreachable_shared(&Config::default())),
            Err(e) => {
                tracing::error!(error = %e, "invalid transport configuration; using defaults");
                unreachable_shared(&Config::default())
            }
        }
    }
}

fn unreachable_shared(config: &Config) -> Arc<Shared> {
    Arc::new(Shared {
        config: config.clone(),
        sessions: SessionTable::new(),
        epoch: Instant::now(),
        draining: AtomicBool::new(false),
        sweeper: AtomicBool::new(false),
        counters: Counters::default(),
    })
}

impl<S> Layer<S> for SseTransportLayer {
    type Service = SseTransport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SseTransport::from_shared(inner, self.shared())
    }
}

/// Controls a built transport: graceful shutdown and session counts.
///
/// # Example
///
/// ```
/// use mcp_affinity::SseTransportLayer;
///
/// # async fn run() {
/// let mut layer = SseTransportLayer::new();
/// let handle = layer.handle().unwrap();
/// // ... serve with `layer` ...
/// let closed = handle.shutdown().await;
/// assert_eq!(closed, 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl TransportHandle {
    /// Sessions currently held by this node.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Looks a session up by id (for tools and tests; requests get theirs in extensions).
    pub fn session(&self, id: &str) -> Option<crate::session::Session> {
        self.shared.sessions.get(id)
    }

    /// Sends one notification to every session's standalone stream (held for sessions without
    /// an open stream, like [`Session::notify`](crate::session::Session::notify)), e.g.
    /// `notifications/tools/list_changed`. The message is encoded once. Returns how many
    /// sessions took it.
    ///
    /// # Example
    ///
    /// ```
    /// # let handle = mcp_affinity::SseTransportLayer::new().handle().unwrap();
    /// let sent = handle.notify_all("notifications/tools/list_changed", None);
    /// assert_eq!(sent, 0);
    /// ```
    pub fn notify_all(&self, method: &str, params: Option<serde_json::Value>) -> usize {
        let data = crate::session::encode_message(method, None, params.as_ref());
        self.shared
            .sessions
            .snapshot()
            .iter()
            .filter(|s| s.notify_encoded(data.clone()).is_ok())
            .count()
    }

    /// Graceful shutdown: refuses new `initialize` requests (`503`), ends every stream with a
    /// `retry:` hint, and closes every session (their close hooks run, so the registry removes
    /// its records). Returns the number of sessions closed. Idempotent.
    pub async fn shutdown(&self) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        let retry = Some(self.shared.config.retry);
        let mut closed = 0;
        for s in self.shared.sessions.snapshot() {
            if self.shared.close(&s, CloseReason::Shutdown, retry) {
                closed += 1;
            }
        }
        tracing::info!(closed, "transport shut down");
        tokio::task::yield_now().await;
        closed
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Runs one idle/initialization sweep now (the transport also sweeps periodically).
    pub fn sweep(&self) {
        self.shared.sweep();
    }
}
