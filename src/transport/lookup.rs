//! Finding the session a request names (held here, missing, or to be restored).

use http::request::Parts;

use super::{layer::Shared, restore, security::principal_allowed};
use crate::{
    protocol::{Refusal, Rejection, RejectionKind, codes, headers},
    session::Session,
};

pub(super) enum Lookup {
    Missing,
    Found(Session),
    /// Not held here, and the request carries a [`RestoreSession`](crate::session::RestoreSession)
    /// for its id: [`restore::restore`] it.
    Restore,
}

pub(super) fn not_found() -> Rejection {
    Rejection::new(
        RejectionKind::SessionNotFound,
        codes::SESSION_NOT_FOUND,
        "session not found: start a new session with initialize",
    )
}

pub(super) fn lookup(shared: &Shared, parts: &Parts) -> Result<Lookup, Rejection> {
    let Some(raw) = parts.headers.get(headers::MCP_SESSION_ID) else {
        return Ok(Lookup::Missing);
    };
    let id = raw.to_str().map_err(|_| not_found())?;
    let Some(session) = shared.sessions.get(id) else {
        // Only a request for a session this node does not hold reads the extensions.
        return match restore::requested(parts, id) {
            Some(_) => Ok(Lookup::Restore),
            None => Err(not_found()),
        };
    };
    if session.is_closed() {
        shared.sessions.remove(id);
        return Err(not_found());
    }
    if !principal_allowed(shared, parts, &session) {
        tracing::warn!(session = %session.id(), "session used by another principal");
        return Err(not_found().with_refusal(Refusal::Principal));
    }
    session.touch(shared.now_ms());
    Ok(Lookup::Found(session))
}
