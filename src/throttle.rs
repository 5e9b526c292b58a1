//! A warning logged at most once a second: under overload, a warning per operation would cost
//! more than the operations.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

/// Lets one caller through per second; lock-free.
#[derive(Debug)]
pub(crate) struct Throttle {
    epoch: Instant,
    /// Milliseconds from `epoch` before which nobody passes.
    next: AtomicU64,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
        }
    }

    /// Whether the caller may log now (true at most once a second, for one caller).
    pub(crate) fn ready(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(1000),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_passes_per_second() {
        let t = Throttle::new();
        assert!(t.ready());
        assert!(!t.ready(), "a second caller within the second");
        t.next.store(0, Ordering::Relaxed); // as if a second had passed
        assert!(t.ready());
    }
}
