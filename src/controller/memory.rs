//! What the controller remembers of each resource between its reconciles,
//! in one record per resource ([`Memory`]), forgotten in one step when the
//! resource goes: failures in a row (for the backoff), a status held back
//! for the index, a rest the resync's sweep must respect, a claim in
//! flight. Status writes in flight are `record::Written`'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::key::ResourceKey;

/// The retries of a reconcile that failed: 1 s, 2 s, 4 s … capped at five
/// minutes, so it converges soon after a blip and never hammers a Coder
/// that is down.
pub(super) const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

/// One resource's record. An entry with nothing in it is removed.
#[derive(Default)]
struct Remembered {
    /// Failed reconciles in a row, and when the first of them failed.
    failures: Option<(u32, Instant)>,
    /// Since when the status has been held back for the index's first
    /// probe or chat lookup.
    held: Option<Instant>,
    /// Not to be looked at before this time (`Some(None)`: before a change
    /// of its own).
    resting: Option<Option<Instant>>,
    /// The finalizer and claim were patched, and the watch has not
    /// delivered the result yet.
    claiming: bool,
}

impl Remembered {
    fn is_empty(&self) -> bool {
        self.failures.is_none() && self.held.is_none() && self.resting.is_none() && !self.claiming
    }
}

#[derive(Default)]
pub(super) struct Memory {
    by_resource: Mutex<HashMap<ResourceKey, Remembered>>,
}

impl Memory {
    /// Changes `key`'s record, dropping it once nothing is left in it.
    fn with<T>(&self, key: &ResourceKey, change: impl FnOnce(&mut Remembered) -> T) -> T {
        let mut by_resource = self.by_resource.lock().expect("resource memory");
        let record = by_resource.entry(key.clone()).or_default();
        let result = change(record);
        if record.is_empty() {
            by_resource.remove(key);
        }
        result
    }

    /// Changes `key`'s record if it has one (most resources have none).
    fn update(&self, key: &ResourceKey, change: impl FnOnce(&mut Remembered)) {
        let mut by_resource = self.by_resource.lock().expect("resource memory");
        if let Some(record) = by_resource.get_mut(key) {
            change(record);
            if record.is_empty() {
                by_resource.remove(key);
            }
        }
    }

    fn read<T>(&self, key: &ResourceKey, look: impl FnOnce(&Remembered) -> T, default: T) -> T {
        self.by_resource.lock().expect("resource memory").get(key).map_or(default, look)
    }

    /// A reconcile failed: how long to wait before the next.
    pub fn failed(&self, key: &ResourceKey) -> Duration {
        let count = self.with(key, |record| {
            let (count, _) = record.failures.get_or_insert((0, Instant::now()));
            *count = count.saturating_add(1);
            *count
        });
        RETRY.after(count)
    }

    /// A reconcile succeeded: the failures in a row are over.
    pub fn succeeded(&self, key: &ResourceKey) {
        self.update(key, |record| record.failures = None);
    }

    /// Whether `key`'s reconciles have failed without a success for at
    /// least `grace`.
    pub fn failing_for(&self, key: &ResourceKey, grace: Duration) -> bool {
        self.read(key, |record| record.failures.is_some_and(|(_, since)| since.elapsed() >= grace), false)
    }

    /// Look at `key` again not before `until` (`None`: only when it
    /// changes), whatever the resync's sweep does meanwhile.
    pub fn rest(&self, key: &ResourceKey, until: Option<Instant>) {
        self.with(key, |record| record.resting = Some(until));
    }

    /// A reconcile of `key` began: its rest is over.
    pub fn woken(&self, key: &ResourceKey) {
        self.update(key, |record| record.resting = None);
    }

    /// Whether the resync's sweep passes `key` by: it backs off after
    /// failures on its own timer, or rests.
    pub fn resync_skips(&self, key: &ResourceKey) -> bool {
        self.read(
            key,
            |record| {
                record.failures.is_some()
                    || record.resting.is_some_and(|until| until.is_none_or(|at| at > Instant::now()))
            },
            false,
        )
    }

    /// How much longer `key`'s status waits for the index, at most `wait`
    /// from the first time it was `incomplete`; `None` once it is complete
    /// or has waited long enough.
    pub fn hold(&self, key: &ResourceKey, incomplete: bool, wait: Duration) -> Option<Duration> {
        self.with(key, |record| {
            if !incomplete {
                record.held = None;
                return None;
            }
            let since = *record.held.get_or_insert_with(Instant::now);
            wait.checked_sub(since.elapsed()).filter(|left| !left.is_zero())
        })
    }

    /// Marks `key`'s finalizer and claim as being patched; `false` when a
    /// patch is already in flight (a reconcile from the cache's older copy
    /// must not patch again: conditional on that copy, it would only
    /// conflict).
    pub fn claiming(&self, key: &ResourceKey) -> bool {
        self.with(key, |record| !std::mem::replace(&mut record.claiming, true))
    }

    /// The claim's patch failed, or the watch delivered it.
    pub fn claimed(&self, key: &ResourceKey) {
        self.update(key, |record| record.claiming = false);
    }

    /// `key` is gone: nothing is kept of it.
    pub fn forget(&self, key: &ResourceKey) {
        self.by_resource.lock().expect("resource memory").remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_resource.lock().expect("resource memory").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ResourceKey {
        ResourceKey::new("team", "chat-1")
    }

    #[test]
    fn failures_in_a_row_back_off_and_a_success_ends_them() {
        let memory = Memory::default();
        let delays: Vec<u64> = (0..11).map(|_| memory.failed(&key()).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert!(memory.resync_skips(&key()), "a resource backing off is on its own timer");
        assert!(memory.failing_for(&key(), Duration::ZERO));
        assert!(!memory.failing_for(&key(), Duration::from_secs(3600)));
        memory.succeeded(&key());
        assert!(!memory.resync_skips(&key()));
        assert_eq!(memory.failed(&key()), Duration::from_secs(1), "a new run of failures starts again");
    }

    #[test]
    fn a_rest_holds_off_the_sweep_until_its_time_or_a_change() {
        let memory = Memory::default();
        memory.rest(&key(), Some(Instant::now() + Duration::from_secs(60)));
        assert!(memory.resync_skips(&key()));
        memory.rest(&key(), Some(Instant::now()));
        assert!(!memory.resync_skips(&key()), "a rest that has passed");
        memory.rest(&key(), None);
        assert!(memory.resync_skips(&key()), "until a change of its own");
        memory.woken(&key());
        assert!(!memory.resync_skips(&key()));
        assert_eq!(memory.len(), 0, "nothing left: nothing kept");
    }

    #[test]
    fn a_status_is_held_back_at_most_the_wait_from_the_first_time_it_was_incomplete() {
        let memory = Memory::default();
        let wait = Duration::from_secs(5);
        let left = memory.hold(&key(), true, wait).expect("held");
        assert!(left <= wait && left > Duration::from_secs(4));
        assert!(memory.hold(&key(), true, wait).expect("still held") <= left, "counted from the first time");
        assert_eq!(memory.hold(&key(), false, wait), None, "complete");
        assert_eq!(memory.len(), 0);
        assert_eq!(memory.hold(&key(), true, Duration::ZERO), None, "waited long enough");
    }

    #[test]
    fn one_claim_patch_in_flight_per_resource() {
        let memory = Memory::default();
        assert!(memory.claiming(&key()));
        assert!(!memory.claiming(&key()), "a second reconcile does not patch again");
        memory.claimed(&key());
        assert!(memory.claiming(&key()));
        memory.forget(&key());
        assert_eq!(memory.len(), 0);
    }
}
