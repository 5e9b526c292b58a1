// The module's documentation is `docs/metrics.md` (included where `lib.rs` declares it).
//
// Every event is emitted through one of the small functions below, called where the layers'
// stats count the same event. Each builds its key in a `static` (name and labels are
// `&'static str`), so a call allocates nothing and takes no lock of this crate's; with the
// feature off the functions are empty and the calls compile away.

// Without the feature a key is `()`: the choices between keys are then all alike.
#![cfg_attr(
    not(feature = "metrics"),
    allow(
        clippy::let_unit_value,
        clippy::if_same_then_else,
        clippy::match_same_arms,
        clippy::unit_arg,
        clippy::needless_pass_by_value
    )
)]

use std::time::Duration;

use crate::protocol::{Era, Refusal, Rejection, RejectionKind};
use crate::session::CloseReason;

/// Gauge: legacy sessions this node holds now.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::metrics::SESSIONS, "mcp_affinity_sessions");
/// ```
pub const SESSIONS: &str = "mcp_affinity_sessions";

/// Counter: sessions opened on this node; label `how`: `initialize` or `restored`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::SESSIONS_OPENED.ends_with("_total"));
/// ```
pub const SESSIONS_OPENED: &str = "mcp_affinity_sessions_opened_total";

/// Counter: sessions closed on this node; label `reason` (`deleted`, `idle`, `shutdown`, …).
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::SESSIONS_CLOSED.ends_with("_total"));
/// ```
pub const SESSIONS_CLOSED: &str = "mcp_affinity_sessions_closed_total";

/// Gauge: SSE streams open now (GET streams and streamed answers); label `era`.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::metrics::STREAMS, "mcp_affinity_streams");
/// ```
pub const STREAMS: &str = "mcp_affinity_streams";

/// Counter: requests a layer answered with a refusal of its own; labels `layer`, `kind`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::REJECTIONS.ends_with("_total"));
/// ```
pub const REJECTIONS: &str = "mcp_affinity_rejections_total";

/// Counter: requests for a session this node does not hold; labels `layer`, `reason`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::MISROUTES.ends_with("_total"));
/// ```
pub const MISROUTES: &str = "mcp_affinity_misroutes_total";

/// Gauge: the registry's store operations queued or being retried.
///
/// # Example
///
/// ```
/// assert_eq!(mcp_affinity::metrics::REGISTRY_QUEUE, "mcp_affinity_registry_queue_depth");
/// ```
pub const REGISTRY_QUEUE: &str = "mcp_affinity_registry_queue_depth";

/// Counter: the registry's queued writes that landed; label `op`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::REGISTRY_WRITES.ends_with("_total"));
/// ```
pub const REGISTRY_WRITES: &str = "mcp_affinity_registry_writes_total";

/// Counter: the registry's operations dropped because their queue was full.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::REGISTRY_DROPPED.ends_with("_total"));
/// ```
pub const REGISTRY_DROPPED: &str = "mcp_affinity_registry_dropped_total";

/// Counter: failed or timed-out calls to the registry's store (Redis); label `op`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::STORE_ERRORS.ends_with("_total"));
/// ```
pub const STORE_ERRORS: &str = "mcp_affinity_registry_store_errors_total";

/// Counter: orphaned session records removed.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::ORPHANS_REMOVED.ends_with("_total"));
/// ```
pub const ORPHANS_REMOVED: &str = "mcp_affinity_registry_orphans_removed_total";

/// Counter: adoptions of another node's session; label `outcome`: `won` or `lost`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::ADOPTIONS.ends_with("_total"));
/// ```
pub const ADOPTIONS: &str = "mcp_affinity_adoptions_total";

/// Histogram (seconds): from the claim of a session to the answer of the request that
/// restored it.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::ADOPTION_SECONDS.ends_with("_seconds"));
/// ```
pub const ADOPTION_SECONDS: &str = "mcp_affinity_adoption_seconds";

/// Counter: requests forwarded to the node that owns their session; label `outcome`.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::FORWARDS.ends_with("_total"));
/// ```
pub const FORWARDS: &str = "mcp_affinity_forwards_total";

/// Histogram (seconds): from sending a forwarded request to the owner's response head.
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::FORWARD_SECONDS.ends_with("_seconds"));
/// ```
pub const FORWARD_SECONDS: &str = "mcp_affinity_forward_seconds";

/// Counter: cluster bus messages; labels `direction` (`out`, `in`) and `outcome` (`ok`;
/// for `out` also `failed`, lost for the other nodes, and `backlogged`, refused because the
/// outgoing queue was full).
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::BUS_MESSAGES.ends_with("_total"));
/// ```
pub const BUS_MESSAGES: &str = "mcp_affinity_bus_messages_total";

/// Counter: received bus messages dropped; label `reason` (`malformed`, `oversized`,
/// `unknown_session`, `overflow`).
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::BUS_DROPPED.ends_with("_total"));
/// ```
pub const BUS_DROPPED: &str = "mcp_affinity_bus_dropped_total";

/// Counter: times the bus's connection to Redis was lost (it reconnects and resubscribes).
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::BUS_DISCONNECTS.ends_with("_total"));
/// ```
pub const BUS_DISCONNECTS: &str = "mcp_affinity_bus_disconnects_total";

/// Counter: events of the shared event log, by `outcome`: `written` to the store, or
/// `dropped` (the queue was full, or the store failed every attempt).
///
/// # Example
///
/// ```
/// assert!(mcp_affinity::metrics::EVENT_LOG_EVENTS.ends_with("_total"));
/// ```
pub const EVENT_LOG_EVENTS: &str = "mcp_affinity_event_log_events_total";

/// Every metric this crate emits: name, type (`counter`, `gauge` or `histogram`) and what it
/// counts, as `docs/metrics.md` lists them.
///
/// # Example
///
/// ```
/// use mcp_affinity::metrics;
///
/// assert!(metrics::ALL.iter().any(|m| m.0 == metrics::SESSIONS && m.1 == "gauge"));
/// assert!(metrics::ALL.iter().all(|m| m.0.starts_with("mcp_affinity_")));
/// ```
pub const ALL: &[(&str, &str, &str)] = &[
    (SESSIONS, "gauge", "Legacy sessions this node holds."),
    (SESSIONS_OPENED, "counter", "Sessions opened on this node."),
    (SESSIONS_CLOSED, "counter", "Sessions closed on this node."),
    (STREAMS, "gauge", "SSE streams open on this node."),
    (
        REJECTIONS,
        "counter",
        "Requests a layer refused with an answer of its own.",
    ),
    (
        MISROUTES,
        "counter",
        "Requests for a session this node does not hold.",
    ),
    (
        REGISTRY_QUEUE,
        "gauge",
        "Registry store operations queued or being retried.",
    ),
    (
        REGISTRY_WRITES,
        "counter",
        "Registry writes that landed in the store.",
    ),
    (
        REGISTRY_DROPPED,
        "counter",
        "Registry operations dropped because their queue was full.",
    ),
    (
        STORE_ERRORS,
        "counter",
        "Failed or timed-out calls to the registry store.",
    ),
    (
        ORPHANS_REMOVED,
        "counter",
        "Orphaned session records removed.",
    ),
    (
        ADOPTIONS,
        "counter",
        "Adoptions of sessions from gone, draining or restarted owners.",
    ),
    (
        ADOPTION_SECONDS,
        "histogram",
        "Time from claiming a session to the answer that restored it.",
    ),
    (
        FORWARDS,
        "counter",
        "Requests forwarded to the node that owns their session.",
    ),
    (
        FORWARD_SECONDS,
        "histogram",
        "Time from sending a forwarded request to the owner's response head.",
    ),
    (
        BUS_MESSAGES,
        "counter",
        "Cluster bus messages sent and received.",
    ),
    (
        BUS_DROPPED,
        "counter",
        "Received cluster bus messages dropped.",
    ),
    (
        BUS_DISCONNECTS,
        "counter",
        "Times the cluster bus lost its connection to Redis.",
    ),
    (
        EVENT_LOG_EVENTS,
        "counter",
        "Events of the shared event log written to the store, or dropped.",
    ),
];

/// Registers the description (and the unit) of every metric with the installed recorder, so
/// an exporter can show them (Prometheus' `# HELP`). Optional: call it once, after the
/// recorder is installed. Without the `metrics` feature it does nothing.
///
/// # Example
///
/// ```
/// // With no recorder installed this is a no-op; it never fails.
/// mcp_affinity::metrics::describe();
/// assert_eq!(mcp_affinity::metrics::ALL.len(), 19);
/// ```
pub fn describe() {
    #[cfg(feature = "metrics")]
    for &(name, kind, text) in ALL {
        let unit = name
            .ends_with("_seconds")
            .then_some(::metrics::Unit::Seconds);
        ::metrics::with_recorder(|r| {
            let key = ::metrics::KeyName::from_const_str(name);
            let text = ::metrics::SharedString::const_str(text);
            match kind {
                "counter" => r.describe_counter(key, unit, text),
                "gauge" => r.describe_gauge(key, unit, text),
                _ => r.describe_histogram(key, unit, text),
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Emission

/// A metric's key, made once: `key!(NAME)` or `key!(NAME, "label" => "value", …)`. `()`
/// without the feature.
#[cfg(feature = "metrics")]
macro_rules! key {
    ($name:expr) => {{
        static KEY: ::metrics::Key = ::metrics::Key::from_static_name($name);
        &KEY
    }};
    ($name:expr, $($k:literal => $v:literal),+) => {{
        static LABELS: [::metrics::Label; [$($k),+].len()] =
            [$(::metrics::Label::from_static_parts($k, $v)),+];
        static KEY: ::metrics::Key = ::metrics::Key::from_static_parts($name, &LABELS);
        &KEY
    }};
}

#[cfg(not(feature = "metrics"))]
macro_rules! key {
    ($($t:tt)*) => {
        ()
    };
}

#[cfg(feature = "metrics")]
type Key = &'static ::metrics::Key;
#[cfg(not(feature = "metrics"))]
type Key = ();

#[cfg(feature = "metrics")]
static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
fn count(key: Key, n: u64) {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(n));
}

#[cfg(feature = "metrics")]
fn gauge(key: Key, delta: f64) {
    ::metrics::with_recorder(|r| r.register_gauge(key, &METADATA).increment(delta));
}

#[cfg(feature = "metrics")]
fn record(key: Key, d: Duration) {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(d.as_secs_f64()));
}

#[cfg(not(feature = "metrics"))]
fn count(_: Key, _: u64) {}

#[cfg(not(feature = "metrics"))]
fn gauge(_: Key, _: f64) {}

#[cfg(not(feature = "metrics"))]
fn record(_: Key, _: Duration) {}

/// When something started, for a histogram (nothing without the feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl Timer {
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    fn elapsed(self) -> Duration {
        self.start.elapsed()
    }

    #[cfg(not(feature = "metrics"))]
    fn elapsed(self) -> Duration {
        Duration::ZERO
    }
}

/// The layer that counted an event (the `layer` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layer {
    Affinity,
    Registry,
}

// Sessions and streams (transport) -------------------------------------------------------------

/// A session entered (`+1`) or left (`-1`) a node's session table.
pub(crate) fn sessions_held(delta: i8) {
    gauge(key!(SESSIONS), f64::from(delta));
}

/// A session opened: by `initialize`, or restored from another node's record.
pub(crate) fn session_opened(restored: bool) {
    let key = if restored {
        key!(SESSIONS_OPENED, "how" => "restored")
    } else {
        key!(SESSIONS_OPENED, "how" => "initialize")
    };
    count(key, 1);
}

/// A session closed, for `reason`.
pub(crate) fn session_closed(reason: CloseReason) {
    let key = match reason {
        CloseReason::Deleted => key!(SESSIONS_CLOSED, "reason" => "deleted"),
        CloseReason::Idle => key!(SESSIONS_CLOSED, "reason" => "idle"),
        CloseReason::InitTimeout => key!(SESSIONS_CLOSED, "reason" => "init_timeout"),
        CloseReason::Shutdown => key!(SESSIONS_CLOSED, "reason" => "shutdown"),
        CloseReason::InitializeFailed => key!(SESSIONS_CLOSED, "reason" => "initialize_failed"),
        CloseReason::Lifetime => key!(SESSIONS_CLOSED, "reason" => "lifetime"),
        _ => key!(SESSIONS_CLOSED, "reason" => "closed"),
    };
    count(key, 1);
}

/// An SSE stream of `era` opened (`+1`) or ended (`-1`).
pub(crate) fn streams_open(era: Era, delta: i8) {
    let key = match era {
        Era::Legacy => key!(STREAMS, "era" => "legacy"),
        Era::Modern => key!(STREAMS, "era" => "modern"),
    };
    gauge(key, f64::from(delta));
}

// Rejections -----------------------------------------------------------------------------------

/// The transport answered `r` instead of serving the request.
pub(crate) fn transport_rejected(r: &Rejection) {
    count(transport_rejection(r), 1);
}

/// The `kind` of a transport's rejection: its [`RejectionKind`]'s label, and `principal` for
/// a session of another principal (answered like an unknown one).
fn transport_rejection(r: &Rejection) -> Key {
    if r.refusal() == Some(Refusal::Principal) {
        return key!(REJECTIONS, "layer" => "transport", "kind" => "principal");
    }
    // One static key per kind (no allocation, no lock); `kinds_match_their_labels` checks
    // each literal against `RejectionKind::as_str`.
    match r.kind() {
        RejectionKind::HostNotAllowed => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "host_not_allowed")
        }
        RejectionKind::OriginNotAllowed => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "origin_not_allowed")
        }
        RejectionKind::NotAcceptable => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "not_acceptable")
        }
        RejectionKind::UnsupportedMediaType => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "unsupported_media_type")
        }
        RejectionKind::BodyTooLarge => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "body_too_large")
        }
        RejectionKind::UnreadableBody => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "unreadable_body")
        }
        RejectionKind::ParseError => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "parse_error")
        }
        RejectionKind::InvalidMessage => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "invalid_message")
        }
        RejectionKind::MethodNotAllowed => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "method_not_allowed")
        }
        RejectionKind::RepeatedHeader => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "repeated_header")
        }
        RejectionKind::InvalidVersionHeader => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "invalid_version_header")
        }
        RejectionKind::UnsupportedVersion => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "unsupported_version")
        }
        RejectionKind::HeaderMismatch => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "header_mismatch")
        }
        RejectionKind::InvalidMeta => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "invalid_meta")
        }
        RejectionKind::MethodRemoved => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "method_removed")
        }
        RejectionKind::BatchNotAllowed => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "batch_not_allowed")
        }
        RejectionKind::BatchTooLarge => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "batch_too_large")
        }
        RejectionKind::MissingSessionId => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "missing_session_id")
        }
        RejectionKind::SessionNotFound => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "session_not_found")
        }
        RejectionKind::Misrouted => key!(REJECTIONS, "layer" => "transport", "kind" => "misrouted"),
        RejectionKind::StreamConflict => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "stream_conflict")
        }
        RejectionKind::InvalidInitialize => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "invalid_initialize")
        }
        RejectionKind::AlreadyInitialized => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "already_initialized")
        }
        RejectionKind::NodeBusy => key!(REJECTIONS, "layer" => "transport", "kind" => "node_busy"),
        RejectionKind::SessionBusy => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "session_busy")
        }
        RejectionKind::TooManySessions => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "too_many_sessions")
        }
        RejectionKind::ShuttingDown => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "shutting_down")
        }
        RejectionKind::NoSessionId => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "no_session_id")
        }
        RejectionKind::InvalidGeneratedId => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "invalid_generated_id")
        }
        RejectionKind::RestoreFailed => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "restore_failed")
        }
        RejectionKind::RegistryUnavailable => {
            key!(REJECTIONS, "layer" => "transport", "kind" => "registry_unavailable")
        }
    }
}

/// The affinity layer answered `404` at once (strict mode).
pub(crate) fn strict_rejection() {
    count(
        key!(REJECTIONS, "layer" => "affinity", "kind" => "strict_misroute"),
        1,
    );
}

/// A layer answered `400` for a repeated routing header (`Mcp-Session-Id`, `Cookie`, …).
pub(crate) fn duplicate_header(layer: Layer) {
    let key = match layer {
        Layer::Affinity => key!(REJECTIONS, "layer" => "affinity", "kind" => "duplicate_header"),
        Layer::Registry => key!(REJECTIONS, "layer" => "registry", "kind" => "duplicate_header"),
    };
    count(key, 1);
}

/// The registry refused an `initialize` (`503`, fail-closed and the store down).
pub(crate) fn registry_unavailable() {
    count(
        key!(REJECTIONS, "layer" => "registry", "kind" => "registry_unavailable"),
        1,
    );
}

/// A draining node refused to take a session over (`503`).
pub(crate) fn registry_draining() {
    count(
        key!(REJECTIONS, "layer" => "registry", "kind" => "draining"),
        1,
    );
}

/// The owner of a forwarded request failed during the exchange (`502`).
pub(crate) fn owner_failed() {
    count(
        key!(REJECTIONS, "layer" => "registry", "kind" => "owner_failed"),
        1,
    );
}

// Misroutes ------------------------------------------------------------------------------------

/// The affinity layer saw a request for another node's session, named by its cookie or by the
/// tag in its session id.
pub(crate) fn affinity_misroute(by_cookie: bool) {
    let key = if by_cookie {
        key!(MISROUTES, "layer" => "affinity", "reason" => "cookie")
    } else {
        key!(MISROUTES, "layer" => "affinity", "reason" => "session_id")
    };
    count(key, 1);
}

/// The registry answered `404` for a session this node does not hold, with `reason` (the
/// `reason` of the answer's body).
pub(crate) fn registry_not_found(reason: &'static str) {
    let key = match reason {
        "misrouted" => key!(MISROUTES, "layer" => "registry", "reason" => "misrouted"),
        "node_restarted" => key!(MISROUTES, "layer" => "registry", "reason" => "node_restarted"),
        _ => key!(MISROUTES, "layer" => "registry", "reason" => "unknown"),
    };
    count(key, 1);
}

// Registry -------------------------------------------------------------------------------------

/// An operation entered (`+1`) or left (`-1`) the registry's queues.
pub(crate) fn registry_queue(delta: i8) {
    gauge(key!(REGISTRY_QUEUE), f64::from(delta));
}

/// What a queued registry write did.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Write {
    Register,
    Remove,
    Refresh,
}

/// A queued registry write landed.
pub(crate) fn registry_write(op: Write) {
    let key = match op {
        Write::Register => key!(REGISTRY_WRITES, "op" => "register"),
        Write::Remove => key!(REGISTRY_WRITES, "op" => "remove"),
        Write::Refresh => key!(REGISTRY_WRITES, "op" => "refresh"),
    };
    count(key, 1);
}

/// A registry operation was dropped (its queue was full).
pub(crate) fn registry_dropped() {
    count(key!(REGISTRY_DROPPED), 1);
}

/// What a failed store call was for (the `op` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreOp {
    /// A session record read.
    Lookup,
    /// A session record written or removed.
    Write,
    /// An adoption's compare-and-set.
    Claim,
    /// A liveness record read or written.
    Liveness,
    /// A sweep of stale or orphaned records.
    Sweep,
}

/// A store call failed or timed out.
pub(crate) fn store_error(op: StoreOp) {
    let key = match op {
        StoreOp::Lookup => key!(STORE_ERRORS, "op" => "lookup"),
        StoreOp::Write => key!(STORE_ERRORS, "op" => "write"),
        StoreOp::Claim => key!(STORE_ERRORS, "op" => "claim"),
        StoreOp::Liveness => key!(STORE_ERRORS, "op" => "liveness"),
        StoreOp::Sweep => key!(STORE_ERRORS, "op" => "sweep"),
    };
    count(key, 1);
}

/// `n` orphaned records were removed.
pub(crate) fn orphans_removed(n: u64) {
    count(key!(ORPHANS_REMOVED), n);
}

/// This node adopted a session.
pub(crate) fn adopted() {
    count(key!(ADOPTIONS, "outcome" => "won"), 1);
}

/// Another node adopted the session first.
pub(crate) fn adoption_lost() {
    count(key!(ADOPTIONS, "outcome" => "lost"), 1);
}

/// A won claim's request was answered, `since` the claim started.
pub(crate) fn adoption_time(since: Timer) {
    record(key!(ADOPTION_SECONDS), since.elapsed());
}

/// How a forward ended (the `outcome` label).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "forward"), allow(dead_code))]
pub(crate) enum Forward {
    /// The owner answered (the response head arrived).
    Ok,
    /// Nobody was listening at the owner: the request was not sent.
    NotSent,
    /// The exchange failed after the request went out.
    Failed,
}

/// A forward ended; `since` it started.
#[cfg_attr(not(feature = "forward"), allow(dead_code))]
pub(crate) fn forwarded(outcome: Forward, since: Timer) {
    let key = match outcome {
        Forward::Ok => key!(FORWARDS, "outcome" => "ok"),
        Forward::NotSent => key!(FORWARDS, "outcome" => "not_sent"),
        Forward::Failed => key!(FORWARDS, "outcome" => "failed"),
    };
    count(key, 1);
    if let Forward::Ok = outcome {
        record(key!(FORWARD_SECONDS), since.elapsed());
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use crate::protocol::codes;

    fn kind(r: &Rejection) -> String {
        let key = transport_rejection(r);
        let label = key.labels().find(|l| l.key() == "kind").expect("kind");
        label.value().to_owned()
    }

    #[test]
    fn kinds_match_their_labels() {
        use crate::protocol::RejectionKind as K;
        let all = [
            K::HostNotAllowed,
            K::OriginNotAllowed,
            K::NotAcceptable,
            K::UnsupportedMediaType,
            K::BodyTooLarge,
            K::UnreadableBody,
            K::ParseError,
            K::InvalidMessage,
            K::MethodNotAllowed,
            K::RepeatedHeader,
            K::InvalidVersionHeader,
            K::UnsupportedVersion,
            K::HeaderMismatch,
            K::InvalidMeta,
            K::MethodRemoved,
            K::BatchNotAllowed,
            K::BatchTooLarge,
            K::MissingSessionId,
            K::SessionNotFound,
            K::Misrouted,
            K::StreamConflict,
            K::InvalidInitialize,
            K::AlreadyInitialized,
            K::NodeBusy,
            K::SessionBusy,
            K::TooManySessions,
            K::ShuttingDown,
            K::NoSessionId,
            K::InvalidGeneratedId,
            K::RestoreFailed,
            K::RegistryUnavailable,
        ];
        for k in all {
            let r = Rejection::new(k, codes::INVALID_REQUEST, "x");
            assert_eq!(kind(&r), k.as_str());
        }
        let r = Rejection::new(K::SessionNotFound, codes::SESSION_NOT_FOUND, "x")
            .with_refusal(Refusal::Principal);
        assert_eq!(kind(&r), "principal");
    }

    #[test]
    fn keys_are_static_and_named_once() {
        let names: Vec<&str> = ALL.iter().map(|m| m.0).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(key!(SESSIONS).name(), SESSIONS);
        let k = key!(MISROUTES, "layer" => "affinity", "reason" => "cookie");
        assert_eq!(k.labels().count(), 2);
    }
}

// Cluster bus --------------------------------------------------------------------------------

/// What became of published bus messages (the `outcome` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum BusOut {
    /// Sent to Redis (or the in-process hub).
    Ok,
    /// Redis refused or did not answer: lost for the other nodes.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Failed,
    /// The outgoing queue was full: refused.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Backlogged,
}

/// `n` messages published, failed or refused.
pub(crate) fn bus_out(outcome: BusOut, n: u64) {
    let key = match outcome {
        BusOut::Ok => key!(BUS_MESSAGES, "direction" => "out", "outcome" => "ok"),
        BusOut::Failed => key!(BUS_MESSAGES, "direction" => "out", "outcome" => "failed"),
        BusOut::Backlogged => key!(BUS_MESSAGES, "direction" => "out", "outcome" => "backlogged"),
    };
    count(key, n);
}

/// One message received from another node.
pub(crate) fn bus_in() {
    count(
        key!(BUS_MESSAGES, "direction" => "in", "outcome" => "ok"),
        1,
    );
}

/// Received messages dropped, by reason.
pub(crate) fn bus_dropped(reason: BusDrop, n: u64) {
    let key = match reason {
        BusDrop::Malformed => key!(BUS_DROPPED, "reason" => "malformed"),
        BusDrop::Oversized => key!(BUS_DROPPED, "reason" => "oversized"),
        BusDrop::UnknownSession => key!(BUS_DROPPED, "reason" => "unknown_session"),
        BusDrop::Overflow => key!(BUS_DROPPED, "reason" => "overflow"),
    };
    count(key, n);
}

/// Why a received bus message was dropped (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum BusDrop {
    Malformed,
    Oversized,
    UnknownSession,
    Overflow,
}

/// The bus lost its connection.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn bus_disconnected() {
    count(key!(BUS_DISCONNECTS), 1);
}

/// Events of the shared event log written to the store.
pub(crate) fn event_log_written(n: u64) {
    count(key!(EVENT_LOG_EVENTS, "outcome" => "written"), n);
}

/// Events of the shared event log dropped (queue full, or the store failed every attempt).
pub(crate) fn event_log_dropped(n: u64) {
    count(key!(EVENT_LOG_EVENTS, "outcome" => "dropped"), n);
}
