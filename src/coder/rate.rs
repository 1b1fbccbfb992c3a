//! A limit on the rate of Coder requests: the operator must never exceed
//! what a Coder deployment's operators allow it, whatever the number of
//! workspaces or the state they are in.
//!
//! Each share (one Coder URL with one token, see [`share_of`]) has a bucket
//! of its own. coderd limits each user on its own, so that is the unit its
//! operators budget; and a tenant's coderd that is slow, answers 429 or is
//! made to be asked a lot spends only its own share: requests to the
//! default coderd, or to another tenant's, never queue behind it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// A token bucket per share: `per_second` requests on average, bursts of up
/// to `burst`. Each caller reserves its slot under the lock and then waits
/// outside it, so callers are served in order and never spin.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: slots reserved by callers that are still waiting.
    tokens: f64,
    updated: Instant,
}

/// The share of requests to `base_url` with a token: a digest, so that the
/// limiter never holds the token.
pub fn share_of(base_url: &str, token: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    base_url.hash(&mut hasher);
    token.hash(&mut hasher);
    hasher.finish()
}

impl RateLimit {
    /// `per_second` must be positive; `burst` is at least one request.
    pub fn new(per_second: f64, burst: u32) -> Self {
        assert!(per_second > 0.0, "a rate limit needs a positive rate");
        let burst = f64::from(burst.max(1));
        Self { per_second, burst, buckets: Mutex::default() }
    }

    /// Waits until one more request is allowed, for the only share.
    pub async fn acquire(&self) {
        self.acquire_for(0).await;
    }

    /// Waits until one more request of `share` is allowed.
    pub async fn acquire_for(&self, share: u64) {
        let wait = self.reserve(share, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until one more observation request of `share` is allowed: only
    /// out of what the actions leave. An action reserves its slot at once,
    /// even ahead of the bucket (it waits its turn after that), so an
    /// observation waits while any action is queued and takes a slot only
    /// when one is free: observation slows down, actions never wait behind
    /// it. Returns how long it waited.
    pub async fn acquire_observation_for(&self, share: u64) -> Duration {
        let started = Instant::now();
        loop {
            match self.take_free(share, Instant::now()) {
                None => return started.elapsed(),
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Takes a slot of `share` at `now` if one is free (`None`), else says
    /// how long until one may be.
    fn take_free(&self, share: u64, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().expect("rate limit buckets");
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = buckets.entry(share).or_insert(Bucket { tokens: burst, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return None;
        }
        // At least a millisecond, so that a waiter never spins.
        Some(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second).max(Duration::from_millis(1)))
    }

    /// Takes a slot of `share` at `now`: how long its caller must wait.
    fn reserve(&self, share: u64, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().expect("rate limit buckets");
        let (per_second, burst) = (self.per_second, self.burst);
        let refilled = |bucket: &Bucket| {
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(burst)
        };
        // A bucket back at its full burst is the same as none: the map holds
        // only the shares that sent recently, however many credentials came
        // and went.
        buckets.retain(|key, bucket| *key == share || refilled(bucket) < burst);
        let bucket = buckets.entry(share).or_insert(Bucket { tokens: burst, updated: now });
        bucket.tokens = refilled(bucket) - 1.0;
        bucket.updated = now;
        if bucket.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-bucket.tokens / per_second) }
    }

    #[cfg(test)]
    fn shares(&self) -> usize {
        self.buckets.lock().expect("rate limit buckets").len()
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
    async fn observation_takes_only_what_the_actions_leave() {
        let limit = Arc::new(RateLimit::new(5.0, 1));
        let start = Instant::now();
        // Ten actions queue up (two seconds of the budget)...
        let mut actions = Vec::new();
        for _ in 0..10 {
            let limit = limit.clone();
            actions.push(tokio::spawn(async move {
                limit.acquire().await;
                Instant::now()
            }));
        }
        tokio::task::yield_now().await;
        // ...and an observation that asks after them goes after all of them.
        let observed = {
            let limit = limit.clone();
            tokio::spawn(async move {
                limit.acquire_observation_for(0).await;
                Instant::now()
            })
        };
        let mut last_action = start;
        for action in actions {
            last_action = last_action.max(action.await.unwrap());
        }
        let observed = observed.await.unwrap();
        assert!(observed > last_action, "the observation went before an action: {observed:?} <= {last_action:?}");
        // An action asked for while an observation waits goes first.
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move {
                limit.acquire_observation_for(0).await;
                Instant::now()
            })
        };
        tokio::task::yield_now().await;
        limit.acquire().await;
        let action_at = Instant::now();
        assert!(waiting.await.unwrap() > action_at);
    }

    #[tokio::test(start_paused = true)]
    async fn one_share_spending_its_budget_does_not_delay_another() {
        let limit = RateLimit::new(5.0, 2);
        let (tenant, default) = (share_of("https://tenant.example", "a"), share_of("https://coder.example", "b"));
        assert_ne!(tenant, share_of("https://tenant.example", "another token"));
        // The tenant's share is spent for the next 20 seconds...
        for _ in 0..100 {
            let _ = limit.reserve(tenant, Instant::now());
        }
        assert!(limit.reserve(tenant, Instant::now()) > Duration::from_secs(19));
        // ...and the default coderd's requests still go at once.
        let start = Instant::now();
        limit.acquire_for(default).await;
        limit.acquire_for(default).await;
        assert_eq!(Instant::now().duration_since(start), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn shares_that_went_quiet_are_forgotten() {
        let limit = RateLimit::new(10.0, 3);
        for share in 0..1000 {
            limit.acquire_for(share).await;
        }
        assert!(limit.shares() > 1, "recent shares are kept");
        // Refilled to the burst: each is the same as a new bucket.
        tokio::time::sleep(Duration::from_secs(1)).await;
        limit.acquire_for(5000).await;
        assert_eq!(limit.shares(), 1);
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
