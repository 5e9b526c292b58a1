//! The forwarder's connections, per peer: busy ones (a response body may still be streaming)
//! and idle ones (ready for a request).

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
    /// Ready for a request, oldest first, with when they were first seen ready.
    idle: Vec<(Sender, Instant)>,
    /// Handed a request whose response head arrived; HTTP/1.1 makes a connection ready again
    /// only once that response's body ended.
    busy: Vec<Sender>,
}

impl Peer {
    /// Moves the busy connections that became ready to `idle`, drops the closed ones and those
    /// idle for `idle_timeout` or longer.
    fn prune(&mut self, now: Instant, idle_timeout: Duration) {
        let mut i = 0;
        while i < self.busy.len() {
            if self.busy[i].is_closed() {
                self.busy.swap_remove(i);
            } else if self.busy[i].is_ready() {
                let sender = self.busy.swap_remove(i);
                self.idle.push((sender, now));
            } else {
                i += 1;
            }
        }
        self.idle.retain(|(sender, since)| {
            !sender.is_closed() && now.saturating_duration_since(*since) < idle_timeout
        });
    }

    /// Drops the oldest idle connections past `max`.
    fn bound(&mut self, max: usize) {
        let surplus = self.idle.len().saturating_sub(max);
        self.idle.drain(..surplus);
    }

    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.busy.is_empty()
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
    /// if there is one.
    pub(super) fn checkout(&self, peer: SocketAddr, now: Instant) -> Option<Sender> {
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let entry = state.peers.get_mut(&peer)?;
        entry.prune(now, self.idle_timeout);
        let mut found = None;
        while let Some((sender, _)) = entry.idle.pop() {
            // Ready: it was when it became idle, and nothing sent on it since.
            if sender.is_ready() {
                found = Some(sender);
                break;
            }
        }
        entry.bound(self.max_idle);
        if entry.is_empty() {
            state.peers.remove(&peer);
        }
        found
    }

    /// Takes back a connection to `peer` whose response head arrived: busy until the response
    /// body ends.
    pub(super) fn put(&self, peer: SocketAddr, sender: Sender, now: Instant) {
        let mut state = self.lock();
        let entry = state.peers.entry(peer).or_default();
        entry.busy.push(sender);
        entry.prune(now, self.idle_timeout);
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
            entry.prune(now, self.idle_timeout);
            entry.bound(self.max_idle);
            !entry.is_empty()
        });
    }

    /// See [`Forwarder::settle`](super::Forwarder::settle).
    #[cfg(test)]
    pub(super) fn settle(&self, peer: SocketAddr, now: Instant) -> usize {
        let mut state = self.lock();
        let Some(entry) = state.peers.get_mut(&peer) else {
            return 0;
        };
        entry.prune(now, self.idle_timeout);
        entry.bound(self.max_idle);
        entry.idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
