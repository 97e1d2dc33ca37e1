//! Counters a blade keeps from boot for its metrics: how its outgoing migrations ended, and
//! the downtime of those that completed as a histogram (Prometheus buckets, cumulative).

use serde::{Deserialize, Serialize};

use crate::migration::{Ending, Outcome};

/// A histogram of seconds: for each upper bound, how many observations were at most it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// Downtime buckets: from what a small guest gets to what an operator would page for.
pub const DOWNTIME_BOUNDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bounds: DOWNTIME_BOUNDS.to_vec(), counts: vec![0; DOWNTIME_BOUNDS.len()], count: 0, sum: 0.0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Outgoing migrations since boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    pub completed: u64,
    pub failed: u64,
    pub in_doubt: u64,
    /// Downtime of the completed ones, in seconds.
    pub downtime: Histogram,
}

impl MigrationStats {
    pub fn is_empty(&self) -> bool {
        self.completed + self.failed + self.in_doubt == 0
    }

    pub fn record(&mut self, o: &Outcome) {
        match o.result {
            Ending::Completed => {
                self.completed += 1;
                self.downtime.observe(o.downtime_ms as f64 / 1000.0);
            }
            Ending::Failed => self.failed += 1,
            Ending::InDoubt => self.in_doubt += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::Phase;

    #[test]
    fn outcomes_are_counted_and_downtimes_bucketed() {
        let mut s = MigrationStats::default();
        let done = |ms| Outcome {
            result: Ending::Completed,
            error: None,
            downtime_ms: ms,
            ..Outcome::failed(Phase::Done, "", false)
        };
        s.record(&done(30));
        s.record(&done(700));
        s.record(&Outcome::failed(Phase::Streaming, "x", true));
        assert_eq!((s.completed, s.failed, s.in_doubt), (2, 1, 0));
        assert_eq!(s.downtime.count, 2);
        assert!((s.downtime.sum - 0.73).abs() < 1e-9);
        let at = |le: f64| s.downtime.counts[s.downtime.bounds.iter().position(|b| *b == le).unwrap()];
        assert_eq!((at(0.025), at(0.05), at(0.5), at(1.0), at(10.0)), (0, 1, 1, 2, 2));
    }
}
