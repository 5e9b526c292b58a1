//! The forwarder's idle connections, per peer. A connection in use belongs to its exchange (the
//! request, then the response body) and comes back here when the body ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::Sender;

/// Connections by peer. The lock is never held across an await.
pub(super) struct Pool {
    max_idle: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    peers: HashMap<SocketAddr, Peer>,
    /// When every peer's connections were last settled (peers not asked for again included).
    last_sweep: Instant,
}

#[derive(Default)]
struct Peer {
    /// Handed back by an exchange that ended, oldest first, with when. Almost always ready for
    /// a request: a connection whose response body has just ended may take its connection task
    /// a moment more to get there.
    idle: Vec<(Sender, Instant)>,
}

impl Peer {
    /// Drops the connections idle for `idle_timeout` or longer: the oldest, at the front.
    fn expire(&mut self, now: Instant, idle_timeout: Duration) {
        let expired = self
            .idle
            .partition_point(|(_, since)| now.saturating_duration_since(*since) >= idle_timeout);
        self.idle.drain(..expired);
    }

    /// Drops the oldest idle connections past `max`.
    fn bound(&mut self, max: usize) {
        let surplus = self.idle.len().saturating_sub(max);
        self.idle.drain(..surplus);
    }
}

impl Pool {
    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            max_idle,
            idle_timeout,
            state: Mutex::new(State {
                peers: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    pub(super) fn max_idle(&self) -> usize {
        self.max_idle
    }

    pub(super) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// An idle connection to `peer` that is ready for a request (the most recently used one),
    /// if there is one. Closed ones met on the way are dropped; one not ready yet stays.
    pub(super) fn checkout(&self, peer: SocketAddr, now: Instant) -> Option<Sender> {
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let entry = state.peers.get_mut(&peer)?;
        entry.expire(now, self.idle_timeout);
        let mut found = None;
        let mut i = entry.idle.len();
        while i > 0 {
            i -= 1;
            let sender = &entry.idle[i].0;
            if sender.is_ready() {
                found = Some(entry.idle.remove(i).0);
                break;
            }
            if sender.is_closed() {
                entry.idle.remove(i);
            }
        }
        if entry.idle.is_empty() {
            state.peers.remove(&peer);
        }
        found
    }

    /// Takes back a connection to `peer` whose exchange ended.
    pub(super) fn put(&self, peer: SocketAddr, sender: Sender, now: Instant) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut state = self.lock();
        let entry = state.peers.entry(peer).or_default();
        entry.idle.push((sender, now));
        entry.bound(self.max_idle);
    }

    /// Settles every peer's connections once per idle timeout, so connections to a peer no
    /// request goes to any more are dropped too.
    fn sweep(&self, state: &mut State, now: Instant) {
        if now.saturating_duration_since(state.last_sweep) < self.idle_timeout {
            return;
        }
        state.last_sweep = now;
        state.peers.retain(|_, entry| {
            entry.expire(now, self.idle_timeout);
            entry.idle.retain(|(sender, _)| !sender.is_closed());
            !entry.idle.is_empty()
        });
    }

    /// See [`Forwarder::settle`](super::Forwarder::settle).
    #[cfg(test)]
    pub(super) fn settle(&self, peer: SocketAddr, now: Instant) -> usize {
        let mut state = self.lock();
        let Some(entry) = state.peers.get_mut(&peer) else {
            return 0;
        };
        entry.expire(now, self.idle_timeout);
        entry.idle.retain(|(sender, _)| !sender.is_closed());
        entry.idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
