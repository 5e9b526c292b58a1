//! Bounds on the `404` path's store lookups: a short-lived cache of ids the store did not know,
//! and a token bucket for the lookups themselves.
//!
//! Every `404` for a well-formed session id would otherwise cost one store round trip, and
//! anyone can send such requests: a flood of random ids then becomes a flood of store lookups.
//! With these bounds a flood costs at most the bucket's rate; over it the answer degrades to
//! "unknown" (what the client must do is the same: re-initialize), and an id the store did not
//! know a moment ago is answered from memory.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher,
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

/// What to do with a `404`'s lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Ask the store.
    Lookup,
    /// The store did not know the id a moment ago.
    KnownMiss,
    /// Over the lookup rate.
    Limited,
}

#[derive(Debug)]
pub(crate) struct LookupLimits {
    /// Keyed hashes of the ids, so an attacker cannot aim at collisions; a collision would at
    /// worst answer "unknown" for a misrouted session for a few seconds.
    hasher: std::collections::hash_map::RandomState,
    state: Mutex<State>,
    /// Bucket size.
    burst: f64,
    /// Tokens per second.
    rate: f64,
    miss_capacity: usize,
    miss_ttl: Duration,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    /// Id hash → when its entry expires.
    misses: HashMap<u64, Instant>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<(u64, Instant)>,
}

impl LookupLimits {
    pub(crate) fn new(
        lookups: u32,
        per: Duration,
        miss_capacity: usize,
        miss_ttl: Duration,
    ) -> Self {
        let burst = f64::from(lookups.max(1));
        let rate = burst / per.as_secs_f64().max(1e-9);
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            state: Mutex::new(State {
                tokens: burst,
                refilled: Instant::now(),
                misses: HashMap::new(),
                order: VecDeque::new(),
            }),
            burst,
            rate,
            miss_capacity,
            miss_ttl,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the `404` for `id` may ask the store (taking a token if so).
    pub(crate) fn admit(&self, id: &str) -> Admit {
        let h = self.hasher.hash_one(id);
        let now = Instant::now();
        let mut s = self.state();
        if let Some(&expires) = s.misses.get(&h) {
            if now < expires {
                return Admit::KnownMiss;
            }
            s.misses.remove(&h);
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Admit::Lookup
        } else {
            Admit::Limited
        }
    }

    /// A lookup [`admit`](Self::admit) let through found the session's record: its token
    /// goes back. The rate then bounds the lookups of ids the store does not know (a flood of
    /// made-up ids), not those of sessions that exist, which continuity forwards or adopts (a
    /// drained node's sessions all at once included).
    pub(crate) fn refund(&self) {
        let mut s = self.state();
        s.tokens = (s.tokens + 1.0).min(self.burst);
    }

    /// The store did not know `id`: answer it from memory for a while.
    pub(crate) fn remember_miss(&self, id: &str) {
        if self.miss_capacity == 0 {
            return;
        }
        let h = self.hasher.hash_one(id);
        let now = Instant::now();
        let expires = now + self.miss_ttl;
        let mut s = self.state();
        // Expired entries first, then the oldest while full.
        while let Some(&(old, at)) = s.order.front() {
            if at > now && s.order.len() < self.miss_capacity {
                break;
            }
            s.order.pop_front();
            if s.misses.get(&old) == Some(&at) {
                s.misses.remove(&old);
            }
        }
        crate::session::shrink_when_sparse(&mut s.misses);
        s.misses.insert(h, expires);
        s.order.push_back((h, expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_its_rate_and_misses_expire() {
        let limits = LookupLimits::new(2, Duration::from_secs(1), 2, Duration::from_secs(5));
        assert_eq!(limits.admit("a"), Admit::Lookup);
        assert_eq!(limits.admit("b"), Admit::Lookup);
        assert_eq!(limits.admit("c"), Admit::Limited);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limits.admit("c"), Admit::Lookup);
        assert_eq!(limits.admit("d"), Admit::Limited);
        limits.remember_miss("a");
        limits.remember_miss("b");
        assert_eq!(limits.admit("a"), Admit::KnownMiss);
        // Bounded: a third miss evicts the oldest.
        limits.remember_miss("c");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limits.admit("x"), Admit::Lookup);
        assert_eq!(limits.admit("b"), Admit::Lookup, "expired");
        let s = limits.state();
        assert!(s.order.len() <= 2 && s.misses.len() <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_found_its_record_gives_its_token_back() {
        let limits = LookupLimits::new(2, Duration::from_secs(1), 2, Duration::from_secs(5));
        // Many more lookups than the bucket holds, every one finding its record.
        for i in 0..100 {
            assert_eq!(limits.admit(&format!("s{i}")), Admit::Lookup, "lookup {i}");
            limits.refund();
        }
        // Misses still drain it; refunds never fill it past its size.
        limits.refund();
        assert_eq!(limits.admit("x"), Admit::Lookup);
        assert_eq!(limits.admit("y"), Admit::Lookup);
        assert_eq!(limits.admit("z"), Admit::Limited);
    }
}
