//! The periodic resync: the safety net under the Coder index's wakes.
//!
//! A settled resource is not requeued on its own timer: 10,000 timers would
//! be kept for nothing but the safety net. Instead one sweep per watched scope goes
//! through the cache once every interval, spread evenly over it, so that
//! 10,000 resources under a 5-minute resync are about 33 reconciles a second,
//! never a burst.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::runtime::Store;
use crate::cache::Stored;
use crate::key::ResourceKey;

/// How often the sweep hands over its next share of a round.
const TICK: Duration = Duration::from_millis(100);

/// Every resource in `store` that `wanted` lets through, once per
/// `interval`: the first round begins one interval after the start (the
/// first list reconciles everything).
pub fn sweep(
    store: Arc<Store>,
    interval: Duration,
    wanted: impl Fn(&Stored) -> bool + Send + 'static,
) -> impl Stream<Item = ResourceKey> + Send {
    let interval = interval.max(Duration::from_secs(1));
    let tick = TICK.min(interval / 10).max(Duration::from_millis(1));
    let ticks = usize::try_from(interval.as_nanos() / tick.as_nanos().max(1)).unwrap_or(usize::MAX).max(1);
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let wanted: Box<dyn Fn(&Stored) -> bool + Send> = Box::new(wanted);
    let state = Sweep { store, wanted, ticker, ticks, round: Vec::new(), total: 0, ticks_left: ticks };
    stream::unfold(state, |mut state| async move {
        let batch = state.next_batch().await;
        Some((stream::iter(batch), state))
    })
    .flatten()
}

struct Sweep {
    store: Arc<Store>,
    wanted: Box<dyn Fn(&Stored) -> bool + Send>,
    ticker: Interval,
    /// Ticks per round.
    ticks: usize,
    /// What this round has still to hand over, last first. Shared pointers
    /// into the cache, not references: a round holds 8 bytes per resource.
    round: Vec<Arc<Stored>>,
    /// How many this round began with.
    total: usize,
    ticks_left: usize,
}

impl Sweep {
    /// The next non-empty share of a round, waiting for its tick.
    async fn next_batch(&mut self) -> Vec<ResourceKey> {
        loop {
            self.ticker.tick().await;
            if self.ticks_left == 0 {
                self.round = self.store.state();
                self.round.reverse();
                self.total = self.round.len();
                self.ticks_left = self.ticks;
            }
            self.ticks_left -= 1;
            // By the end of this tick, the round's share of the ticks so far.
            let ticks_done = self.ticks - self.ticks_left;
            let due = (self.total as u128 * ticks_done as u128 / self.ticks as u128) as usize;
            let handed_over = self.total - self.round.len();
            let keep = self.round.len().saturating_sub(due.saturating_sub(handed_over));
            let batch: Vec<ResourceKey> =
                self.round.drain(keep..).rev().filter(|r| (self.wanted)(r)).map(|r| r.key().clone()).collect();
            if !batch.is_empty() {
                return batch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Watched;
    use kube::runtime::watcher;

    fn resource(name: &str) -> Watched {
        let resource: crate::crd::ChatWorkspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"desiredState": "Running", "template": {"name": "docker"}},
        }))
        .expect("a ChatWorkspace");
        Watched::pack(resource)
    }

    #[tokio::test(start_paused = true)]
    async fn every_resource_not_passed_by_is_handed_over_once_per_interval_spread_over_it() {
        let reader = Arc::new(Store::default());
        reader.apply(watcher::Event::Init, |_| 0);
        for index in 0..50 {
            reader.apply(watcher::Event::InitApply(resource(&format!("r-{index}"))), |_| 0);
        }
        reader.apply(watcher::Event::InitDone, |_| 0);
        let interval = Duration::from_secs(10);
        let start = Instant::now();
        let mut sweep = Box::pin(sweep(reader, interval, |resource| resource.key().name() != "r-7"));

        let mut first_round = Vec::new();
        for _ in 0..49 {
            let next = tokio::time::timeout(interval * 3, sweep.next()).await;
            let reference = next.expect("a reference within a round").expect("a reference");
            first_round.push((reference.name().to_owned(), start.elapsed()));
        }
        let mut names: Vec<&str> = first_round.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 49, "each resource once: {first_round:?}");
        assert!(!names.contains(&"r-7"), "but the one passed by");
        let (first, last) = (first_round[0].1, first_round[48].1);
        assert!(first >= interval, "the first round waits one interval: {first:?}");
        assert!(last - first >= interval * 8 / 10, "spread over the interval: {first:?} .. {last:?}");
        assert!(last <= interval * 2, "within it: {last:?}");

        let next = tokio::time::timeout(interval * 2, sweep.next()).await;
        let next = next.expect("a next round").expect("a reference");
        assert!(start.elapsed() >= interval * 2, "one round per interval: {:?}", start.elapsed());
        assert!(names.contains(&next.name()));
    }
}
