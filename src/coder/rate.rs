//! A limit on the rate of Coder requests: the operator must never exceed
//! what a Coder deployment's operators allow it, whatever the number of
//! workspaces or the state they are in.

use tokio::sync::Mutex;
use tokio::time::{Duration, Instant};

/// A token bucket: `per_second` requests on average, bursts of up to
/// `burst`. Each caller reserves its slot under the lock and then waits
/// outside it, so callers are served in order and never spin.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: slots reserved by callers that are still waiting.
    tokens: f64,
    updated: Instant,
}

impl RateLimit {
    /// `per_second` must be positive; `burst` is at least one request.
    pub fn new(per_second: f64, burst: u32) -> Self {
        assert!(per_second > 0.0, "a rate limit needs a positive rate");
        let burst = f64::from(burst.max(1));
        Self { per_second, burst, bucket: Mutex::new(Bucket { tokens: burst, updated: Instant::now() }) }
    }

    /// Waits until one more request is allowed.
    pub async fn acquire(&self) {
        let wait = {
            let mut bucket = self.bucket.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
            bucket.tokens = (bucket.tokens + refill).min(self.burst) - 1.0;
            bucket.updated = now;
            if bucket.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-bucket.tokens / self.per_second)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_rate_after_the_burst() {
        let limit = Arc::new(RateLimit::new(5.0, 2));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let limit = limit.clone();
            tasks.push(tokio::spawn(async move {
                limit.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap().duration_since(start));
        }
        times.sort();
        // Two at once (the burst), then one every 200 ms.
        assert_eq!(times[1], Duration::ZERO);
        assert!(times[2] >= Duration::from_millis(199), "{times:?}");
        let last = times[11].as_secs_f64();
        assert!((1.99..2.01).contains(&last), "12 requests at 5/s with a burst of 2 end at 2s, not {last}");
        // In any one-second window, at most burst + rate requests.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|u| **u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= 7, "{in_window} requests within 1s of {t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_only_up_to_the_burst() {
        let limit = RateLimit::new(10.0, 3);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..4 {
            limit.acquire().await;
        }
        assert_eq!(Instant::now().duration_since(start), Duration::from_millis(100));
    }
}
