//! Restoring a session this node does not hold, when the session registry asks for it with a
//! [`RestoreSession`] in the request's extensions (it has taken ownership of the session).

use std::{
    collections::HashMap,
    fmt,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
};

use http::{Response, request::Parts};
use tokio::sync::watch;

use super::{ResponseBody, body::parse_event_id, layer::Shared, log::STANDALONE, service::respond};
use crate::{
    protocol::{Refusal, Rejection, RejectionKind, codes, headers},
    session::{CloseReason, Fingerprint, InsertNew, RestoreSession, Session, digest_hex},
};

/// The restores in progress on this node, by session id: while one runs, other requests for
/// its id wait for it, so exactly one session is created and nobody meets it before it is
/// complete (and its restore hook has run).
#[derive(Default)]
pub(crate) struct Restoring {
    gates: Mutex<HashMap<Box<str>, watch::Receiver<()>>>,
}

impl fmt::Debug for Restoring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the ids.
        f.debug_struct("Restoring")
            .field("in_progress", &self.lock().len())
            .finish()
    }
}

impl Restoring {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, watch::Receiver<()>>> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One restore in progress: dropped (done, failed or unwound), it lets the requests waiting
/// for its id go on.
struct Gate<'a> {
    restoring: &'a Restoring,
    id: &'a str,
    _open: watch::Sender<()>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        // Removed before the sender drops (after this body): a waiter that finds no gate
        // finds the session in the table, or restores it itself.
        self.restoring.lock().remove(self.id);
    }
}

/// The session a request that asked for a restore goes on with.
pub(super) struct Restored {
    pub(super) session: Session,
    /// This request restored it (rather than finding it restored by a concurrent one): its
    /// handler's request carries [`SessionRestored`](crate::session::SessionRestored) and its
    /// response the [`Session`].
    pub(super) here: bool,
}

/// The [`RestoreSession`] a request carries for exactly the session id `id` it names.
pub(super) fn requested<'a>(parts: &'a Parts, id: &str) -> Option<&'a RestoreSession> {
    parts
        .extensions
        .get::<RestoreSession>()
        .filter(|r| r.id.as_str() == id)
}

fn not_found() -> Rejection {
    super::lookup::not_found()
}

/// The response to a request that asked for a restore: the one that restored its session
/// carries the [`Session`] in its extensions, whatever its status (as a successful
/// `initialize`'s does), so outer layers attach their close hooks.
pub(super) fn with_restored(
    out: Result<Response<ResponseBody>, Rejection>,
    r: Restored,
) -> Response<ResponseBody> {
    let mut res = respond(out);
    if r.here {
        res.extensions_mut().insert(r.session);
    }
    res
}

/// Restores the session the request names from its [`RestoreSession`], or waits for a
/// concurrent restore of it and goes on with that session.
///
/// Refused like an unknown session (`404`, marked [`Refusal::Principal`]) when the request's
/// principal is not the one the session is bound to; with `503` and `Retry-After` when this
/// node drains or holds its maximum of sessions.
pub(super) async fn restore(shared: &Arc<Shared>, parts: &Parts) -> Result<Restored, Rejection> {
    let id = parts
        .headers
        .get(headers::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(not_found)?;
    let restore = requested(parts, id).ok_or_else(not_found)?;
    if shared.draining.load(Ordering::Acquire) {
        return Err(shared.retry_later(
            RejectionKind::ShuttingDown,
            "server shutting down: retry on another node",
        ));
    }
    let principal = shared
        .config
        .principal
        .as_ref()
        .and_then(|ex| ex.principal(parts));
    // Bound on both sides to the same principal, or unbound on both: a transport that binds
    // sessions cannot restore an unbound one, and one that does not cannot keep a binding.
    let bound = match (&shared.config.principal, &restore.principal) {
        (None, None) => true,
        (Some(_), Some(digest)) => principal
            .as_deref()
            .is_some_and(|p| digest_hex(p)[..] == *digest.as_bytes()),
        _ => false,
    };
    if !bound {
        tracing::warn!(session = %Fingerprint::of(id), "restore refused: another principal's session");
        return Err(not_found().with_refusal(Refusal::Principal));
    }
    loop {
        let waiting = {
            let mut gates = shared.restoring.lock();
            if let Some(session) = shared.sessions.get(id) {
                drop(gates);
                return held(shared, session, principal.as_deref());
            }
            match gates.get(id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(());
                    gates.insert(id.into(), rx);
                    drop(gates);
                    let gate = Gate {
                        restoring: &shared.restoring,
                        id,
                        _open: tx,
                    };
                    // Nothing below awaits: the gate cannot be dropped half-way by a
                    // cancelled request.
                    let out = create(shared, restore, parts, principal.as_deref());
                    drop(gate);
                    return out;
                }
            }
        };
        let mut waiting = waiting;
        // Ends when the restoring request drops its gate (the sender).
        let _ = waiting.changed().await;
    }
}

/// A session the table holds already (restored by a concurrent request): checked as any
/// request's session is.
fn held(shared: &Shared, session: Session, principal: Option<&str>) -> Result<Restored, Rejection> {
    if session.is_closed() {
        shared.sessions.remove(session.id().as_str());
        return Err(not_found());
    }
    if shared.config.principal.is_some() && !session.principal_matches(principal) {
        tracing::warn!(session = %session.id(), "session used by another principal");
        return Err(not_found().with_refusal(Refusal::Principal));
    }
    session.touch(shared.now_ms());
    Ok(Restored {
        session,
        here: false,
    })
}

/// Creates the session, complete, runs the restore hook on it, and only then makes it
/// visible in the table.
fn create(
    shared: &Arc<Shared>,
    restore: &RestoreSession,
    parts: &Parts,
    principal: Option<&str>,
) -> Result<Restored, Rejection> {
    let max = shared.config.max_sessions;
    let full = || {
        tracing::warn!(max, "session limit reached; restore refused");
        shared.retry_later(
            RejectionKind::TooManySessions,
            "too many sessions on this node",
        )
    };
    if shared.sessions.len() >= max {
        return Err(full());
    }
    // A client resuming the standalone stream (`Last-Event-ID: 0-N`) gets the new stream's
    // events numbered after N.
    let standalone_after = parts
        .headers
        .get(headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id)
        .and_then(|(stream, seq)| (stream == STANDALONE).then_some(seq));
    let session = Session::restored(
        restore,
        shared.session_config(),
        shared.now_ms(),
        standalone_after,
    );
    if let Some(hook) = &shared.config.on_restore
        && std::panic::catch_unwind(AssertUnwindSafe(|| hook(&session))).is_err()
    {
        tracing::error!(session = %session.id(), "restore hook panicked; session not restored");
        session.close_with(CloseReason::InitializeFailed, None);
        return Err(Rejection::new(
            RejectionKind::RestoreFailed,
            codes::INTERNAL_ERROR,
            "the session could not be restored",
        ));
    }
    match shared.sessions.insert_new(session.clone(), max) {
        InsertNew::Inserted => {}
        InsertNew::Full => {
            session.close_with(CloseReason::InitializeFailed, None);
            return Err(full());
        }
        // Only an `initialize` minting this very id could have put it there meanwhile.
        InsertNew::Held(other) => {
            session.close_with(CloseReason::InitializeFailed, None);
            return held(shared, other, principal);
        }
    }
    shared.untrack_on_close(&session);
    shared.ensure_sweeper();
    shared.counters.restored.fetch_add(1, Ordering::Relaxed);
    crate::metrics::session_opened(true);
    tracing::debug!(session = %session.id(), version = %restore.protocol_version, "session restored");
    Ok(Restored {
        session,
        here: true,
    })
}
