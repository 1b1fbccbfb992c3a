//! The one backoff of the operator: a wait that doubles with each failure
//! in a row, from `first`, capped at `max`.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The wait after `failures` failures in a row (at least one).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max.max(self.first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_first_and_stops_at_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        let waits: Vec<u64> = [0, 1, 2, 3, 4, 5, 40].iter().map(|n| backoff.after(*n).as_secs()).collect();
        assert_eq!(waits, [5, 5, 10, 20, 40, 60, 60]);
        let capped_below_first = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(capped_below_first.after(3), Duration::from_secs(5), "never below the first wait");
    }
}
