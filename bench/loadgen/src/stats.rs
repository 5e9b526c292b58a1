//! Latency samples and their summary.

use serde_json::{Value, json};

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub struct Samples(pub Vec<u32>);

impl Samples {
    pub fn push_us(&mut self, us: u128) {
        self.0.push(us.min(u32::MAX as u128) as u32);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// p50/p90/p99/max in milliseconds (nearest rank).
    pub fn summary(&mut self) -> Value {
        self.0.sort_unstable();
        let pct = |p: f64| -> Value {
            if self.0.is_empty() {
                return Value::Null;
            }
            let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
            let v = self.0[rank.clamp(1, self.0.len()) - 1];
            json!(round3(v as f64 / 1000.0))
        };
        json!({
            "p50_ms": pct(50.0),
            "p90_ms": pct(90.0),
            "p99_ms": pct(99.0),
            "max_ms": pct(100.0),
        })
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s = Samples((1..=100).map(|v| v * 1000).collect());
        let v = s.summary();
        assert_eq!(v["p50_ms"], 50.0);
        assert_eq!(v["p99_ms"], 99.0);
        assert_eq!(v["max_ms"], 100.0);
    }
}
