//! The bounds on request handlers: how many run at once, per session and per node, and for
//! how long.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use super::layer::Shared;
use crate::{
    protocol::{Rejection, RejectionKind, codes},
    session::Session,
};

/// A place held by one running request handler, given back when dropped (the handler
/// finished, was cancelled, or its session closed and its task was aborted).
pub(super) struct Permit {
    shared: Arc<Shared>,
    session: Option<Session>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = &self.session {
            s.inner.running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Takes `n` places of `counter` if all `n` fit under `max`; all or nothing.
fn take(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
            c.checked_add(n).filter(|&after| after <= max)
        })
        .is_ok()
}

impl Permit {
    /// One place for a request handler on this node and, in the legacy era, in `session`.
    /// Never waits: a full bound is a `503` (the node's) or a `429` (the session's), with
    /// `Retry-After`.
    pub(super) fn acquire(
        shared: &Arc<Shared>,
        session: Option<&Session>,
    ) -> Result<Self, Rejection> {
        reserve(shared, session, 1)?;
        Ok(Self {
            shared: shared.clone(),
            session: session.cloned(),
        })
    }

    /// `n` places at once (a batch's requests), all or nothing. A batch that could never fit
    /// is a `400`: retrying it would not help.
    pub(super) fn acquire_many(
        shared: &Arc<Shared>,
        session: &Session,
        n: usize,
    ) -> Result<Vec<Self>, Rejection> {
        let cfg = &shared.config;
        if n > cfg.max_running.min(cfg.max_running_per_session) {
            return Err(Rejection::new(
                RejectionKind::BatchTooLarge,
                codes::INVALID_REQUEST,
                "batch has more requests than may run at once on a session",
            )
            .with_data(
                serde_json::json!({ "max": cfg.max_running.min(cfg.max_running_per_session) }),
            ));
        }
        reserve(shared, Some(session), n)?;
        Ok((0..n)
            .map(|_| Self {
                shared: shared.clone(),
                session: Some(session.clone()),
            })
            .collect())
    }
}

/// Takes `n` places on the node and in `session`, all or nothing.
fn reserve(shared: &Shared, session: Option<&Session>, n: usize) -> Result<(), Rejection> {
    let cfg = &shared.config;
    if !take(&shared.running, n, cfg.max_running) {
        // Once a second at most: this happens when the node is overloaded already.
        if shared.busy_warning.ready() {
            tracing::warn!(
                max = cfg.max_running,
                "request handler limit of the node reached (logged once a second)"
            );
        }
        return Err(shared.retry_later(
            RejectionKind::NodeBusy,
            "too many requests running on this node: retry later",
        ));
    }
    if let Some(s) = session
        && !take(&s.inner.running, n, cfg.max_running_per_session)
    {
        shared.running.fetch_sub(n, Ordering::AcqRel);
        tracing::debug!(
            session = %s.id(),
            max = cfg.max_running_per_session,
            "request handler limit of the session reached"
        );
        // The client's own doing, not the node's state: `429`, so a balancer that retries or
        // marks a server down on `503` does neither for one busy session.
        return Err(shared.retry_later(
            RejectionKind::SessionBusy,
            "too many requests running on this session: retry later",
        ));
    }
    Ok(())
}

pin_project_lite::pin_project! {
    /// A request handler's future with the transport's handler timeout: `None` once it has
    /// run for `after` (then the caller drops it). The timer is armed only when the handler
    /// does not finish on its first poll, so a handler that answers at once costs no timer.
    pub(super) struct Deadline<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        after: Duration,
    }
}

impl<F> Deadline<F> {
    pub(super) fn new(fut: F, after: Duration) -> Self {
        Self {
            fut,
            sleep: None,
            after,
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.after)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}
