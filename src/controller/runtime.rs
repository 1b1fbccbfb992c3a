//! The controller's own small runtime on kube-runtime's watcher: a slim
//! store of the watched resources and a fair queue of the reconciles due.
//!
//! kube-runtime's `Controller` keeps each resource whole in its store (its
//! `ObjectMeta` alone is 360 bytes), again in a predicate's map, and its
//! reference (96 bytes, with four strings) in the scheduler's and the
//! runner's maps. Here the store keeps a [`Stored`] per resource under a
//! 16-byte key, the predicate's hash inside it, and the queue one slot per
//! resource. The queue is first in, first out: every resource that becomes
//! due is reconciled in the order it became due, never two reconciles of one
//! resource at once, a reconcile asked for meanwhile runs once right after,
//! and a requeue waits on a timer of its own.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kube::runtime::watcher;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::cache::{Stored, Watched};
use crate::crd::Phase;
use crate::key::ResourceKey;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    requeue_after: Option<Duration>,
}

impl Next {
    /// Reconcile again after `delay` (sooner if something triggers it).
    pub const fn requeue(delay: Duration) -> Self {
        Self { requeue_after: Some(delay) }
    }

    /// Reconcile again only when something triggers it.
    pub const fn await_change() -> Self {
        Self { requeue_after: None }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// The watched resources of one scope, as the controller reads them.
pub struct Store {
    state: RwLock<StoreState>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct StoreState {
    objects: HashMap<ResourceKey, Arc<Stored>>,
    /// The keys a relist under way has delivered so far. The relist
    /// replaces resources one by one instead of building a second store:
    /// at its end, those it did not deliver are gone.
    relisted: Option<HashSet<ResourceKey>>,
}

/// What one watch event changed in the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The resource to reconcile: new, or changed in what triggers a
    /// reconcile.
    pub trigger: Option<ResourceKey>,
    /// Resources gone: deleted, or missing from a relist.
    pub gone: Vec<ResourceKey>,
    /// How the count of resources by phase moved: (phase, +1 or -1).
    pub phases: Vec<(Option<Phase>, i64)>,
}

impl Default for Store {
    fn default() -> Self {
        Self { state: RwLock::default(), ready: watch::Sender::new(false) }
    }
}

impl Store {
    pub fn get(&self, key: &ResourceKey) -> Option<Arc<Stored>> {
        self.state.read().expect("store").objects.get(key).cloned()
    }

    /// Every resource, in no particular order.
    pub fn state(&self) -> Vec<Arc<Stored>> {
        self.state.read().expect("store").objects.values().cloned().collect()
    }

    /// The keys of the resources in `namespace`.
    pub fn keys_in(&self, namespace: &str) -> Vec<ResourceKey> {
        let state = self.state.read().expect("store");
        state.objects.keys().filter(|key| key.namespace() == namespace).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.state.read().expect("store").objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first list has been delivered whole.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Applies one watch event; `trigger_hash` hashes what triggers a reconcile
    /// when it changes (the controller's predicate).
    pub fn apply(&self, event: watcher::Event<Watched>, trigger_hash: impl Fn(&Watched) -> u64) -> Applied {
        let mut state = self.state.write().expect("store");
        match event {
            watcher::Event::Init => {
                state.relisted = Some(HashSet::new());
                Applied::default()
            }
            watcher::Event::InitApply(resource) | watcher::Event::Apply(resource) => {
                let hash = trigger_hash(&resource);
                let stored = resource.stored(hash);
                let key = stored.key().clone();
                if let Some(relisted) = state.relisted.as_mut() {
                    relisted.insert(key.clone());
                }
                let (trigger, before) = match state.objects.get(&key) {
                    // A relist delivers mostly what the store has: the copy
                    // it has stays where it is in memory, and the new one
                    // goes, instead of leaving the old one's room empty
                    // among the new ones.
                    Some(held) if **held == stored => return Applied::default(),
                    Some(held) => (held.trigger_hash() != hash, Some(held.phase())),
                    None => (true, None),
                };
                let phases = match before {
                    Some(phase) if phase == stored.phase() => Vec::new(),
                    Some(phase) => vec![(phase, -1), (stored.phase(), 1)],
                    None => vec![(stored.phase(), 1)],
                };
                state.objects.insert(key.clone(), Arc::new(stored));
                Applied { trigger: trigger.then_some(key), gone: Vec::new(), phases }
            }
            watcher::Event::InitDone => {
                let mut phases = Vec::new();
                let gone = match state.relisted.take() {
                    Some(relisted) => {
                        let gone: Vec<ResourceKey> =
                            state.objects.keys().filter(|key| !relisted.contains(*key)).cloned().collect();
                        for key in &gone {
                            phases.extend(state.objects.remove(key).map(|held| (held.phase(), -1)));
                        }
                        gone
                    }
                    None => Vec::new(),
                };
                state.objects.shrink_to_fit();
                drop(state);
                self.ready.send_replace(true);
                Applied { trigger: None, gone, phases }
            }
            watcher::Event::Delete(resource) => {
                let key = ResourceKey::new(
                    resource.metadata.namespace.as_deref().unwrap_or_default(),
                    resource.metadata.name.as_deref().unwrap_or_default(),
                );
                let phases = state.objects.remove(&key).map(|held| (held.phase(), -1)).into_iter().collect();
                Applied { trigger: None, gone: vec![key], phases }
            }
        }
    }
}

/// The reconciles due, first in, first out.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    changed: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Due, in the order they became due. A key whose slot is no longer
    /// `Queued` is passed over.
    due: VecDeque<ResourceKey>,
    slots: HashMap<ResourceKey, Slot>,
    timers: BTreeSet<(Instant, ResourceKey)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Queued,
    /// Waiting for its timer.
    Delayed(Instant),
    /// Being reconciled; `again`: triggered meanwhile, so reconciled once
    /// more right after.
    Running {
        again: bool,
    },
}

impl Queue {
    /// `key` is due now. One already due keeps its place; one being
    /// reconciled is reconciled once more right after; one waiting for its
    /// timer is due now instead.
    pub fn push(&self, key: ResourceKey) {
        let mut state = self.state.lock().expect("queue");
        match state.slots.get(&key).copied() {
            Some(Slot::Queued) => return,
            Some(Slot::Running { .. }) => {
                state.slots.insert(key, Slot::Running { again: true });
                return;
            }
            Some(Slot::Delayed(at)) => {
                state.timers.remove(&(at, key.clone()));
            }
            None => {}
        }
        state.slots.insert(key.clone(), Slot::Queued);
        state.due.push_back(key);
        drop(state);
        self.changed.notify_one();
    }

    /// The next resource due, waiting for one (or for a timer) if none is.
    /// Meant for one caller at a time: the dispatcher.
    pub async fn next(&self) -> ResourceKey {
        loop {
            let timer = {
                let mut state = self.state.lock().expect("queue");
                let now = Instant::now();
                while let Some((at, _)) = state.timers.first()
                    && *at <= now
                {
                    let (_, key) = state.timers.pop_first().expect("a timer");
                    state.slots.insert(key.clone(), Slot::Queued);
                    state.due.push_back(key);
                }
                while let Some(key) = state.due.pop_front() {
                    if state.slots.get(&key) == Some(&Slot::Queued) {
                        state.slots.insert(key.clone(), Slot::Running { again: false });
                        return key;
                    }
                }
                state.timers.first().map(|(at, _)| *at)
            };
            match timer {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.changed.notified()).await;
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// The reconcile of `key` (taken with [`Queue::next`]) is over; `after`:
    /// when to reconcile it again if nothing triggers it sooner.
    pub fn done(&self, key: ResourceKey, after: Option<Duration>) {
        let mut state = self.state.lock().expect("queue");
        match state.slots.get(&key) {
            Some(Slot::Running { again: true }) => {
                state.slots.insert(key.clone(), Slot::Queued);
                state.due.push_back(key);
            }
            Some(Slot::Running { again: false }) => match after {
                Some(after) => {
                    let at = Instant::now() + after;
                    state.slots.insert(key.clone(), Slot::Delayed(at));
                    state.timers.insert((at, key));
                }
                None => {
                    state.slots.remove(&key);
                }
            },
            _ => return,
        }
        drop(state);
        self.changed.notify_one();
    }

    /// `key` is gone: nothing of it is kept but a reconcile under way,
    /// which ends as it would.
    pub fn forget(&self, key: &ResourceKey) {
        let mut state = self.state.lock().expect("queue");
        match state.slots.get(key).copied() {
            Some(Slot::Delayed(at)) => {
                state.timers.remove(&(at, key.clone()));
                state.slots.remove(key);
            }
            Some(Slot::Queued) => {
                // Its place in `due` is passed over.
                state.slots.remove(key);
            }
            Some(Slot::Running { .. }) => {
                state.slots.insert(key.clone(), Slot::Running { again: false });
            }
            None => {}
        }
    }

    /// Resources with a slot (due, waiting for a timer, or being
    /// reconciled).
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue").slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs `reconcile` for the store's resources as `queue` hands them over,
/// at most `concurrency` at once, once the store is ready, until `shutdown`
/// resolves; then waits for the reconciles under way. The reconciles are
/// the dispatcher's own tasks: dropping the dispatcher (leadership lost)
/// cancels every one of them.
pub async fn dispatch<F, Fut>(
    store: Arc<Store>,
    queue: Arc<Queue>,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    reconcile: F,
) where
    F: Fn(Arc<Stored>) -> Fut,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut reconciles = tokio::task::JoinSet::new();
    let work = async {
        store.ready().await;
        loop {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            // Those that ended hold no permit; at most `concurrency` wait
            // here to be reaped.
            while reconciles.try_join_next().is_some() {}
            let key = queue.next().await;
            let Some(resource) = store.get(&key) else {
                // Gone since it became due.
                queue.done(key, None);
                continue;
            };
            let queue = queue.clone();
            let run = reconcile(resource);
            reconciles.spawn(async move {
                let after = run.await;
                queue.done(key, after);
                drop(permit);
            });
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown => {}
    }
    while reconciles.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ResourceKey {
        ResourceKey::new("team", name)
    }

    /// Tells when it is dropped: a reconcile cancelled mid-way.
    struct Cancelled(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for Cancelled {
        fn drop(&mut self) {
            if let Some(told) = self.0.take() {
                let _ = told.send(());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_dispatcher_cancels_the_reconciles_in_flight() {
        let store = Arc::new(Store::default());
        for name in ["a", "b"] {
            store.apply(watcher::Event::InitApply(resource(name, 1)), generation);
        }
        store.apply(watcher::Event::InitDone, generation);
        let queue = Arc::new(Queue::default());
        queue.push(key("a"));
        queue.push(key("b"));
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let (cancelled, mut cancels) = tokio::sync::mpsc::unbounded_channel();
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dispatcher = dispatch(store, queue, 4, std::future::pending(), {
            let finished = finished.clone();
            move |resource: Arc<Stored>| {
                let (told, cancel) = tokio::sync::oneshot::channel();
                let _ = started.send(resource.key().clone());
                let cancelled = cancelled.clone();
                tokio::spawn(async move {
                    if cancel.await.is_ok() {
                        let _ = cancelled.send(());
                    }
                });
                let finished = finished.clone();
                async move {
                    let _guard = Cancelled(Some(told));
                    // A slow Coder request.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    None
                }
            }
        });
        let dispatcher = tokio::spawn(dispatcher);
        for _ in 0..2 {
            starts.recv().await.expect("both reconciles started");
        }
        dispatcher.abort();
        let _ = dispatcher.await;
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(1), cancels.recv())
                .await
                .expect("cancelled at once, not after the request")
                .expect("a cancel");
        }
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 0, "no reconcile went on after its dispatcher");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_waits_for_the_reconciles_in_flight() {
        let store = Arc::new(Store::default());
        store.apply(watcher::Event::InitApply(resource("a", 1)), generation);
        store.apply(watcher::Event::InitDone, generation);
        let queue = Arc::new(Queue::default());
        queue.push(key("a"));
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dispatcher = tokio::spawn(dispatch(
            store,
            queue,
            4,
            async {
                let _ = stopped.await;
            },
            {
                let finished = finished.clone();
                move |_| {
                    let _ = started.send(());
                    let finished = finished.clone();
                    async move {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        finished.store(true, std::sync::atomic::Ordering::SeqCst);
                        None
                    }
                }
            },
        ));
        starts.recv().await.expect("started");
        let _ = stop.send(());
        dispatcher.await.expect("the dispatcher ends");
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst), "the reconcile in flight finished first");
    }

    #[tokio::test(start_paused = true)]
    async fn due_resources_are_handed_over_first_in_first_out_once_each() {
        let queue = Queue::default();
        for name in ["a", "b", "c", "b", "a"] {
            queue.push(key(name));
        }
        let order = [queue.next().await, queue.next().await, queue.next().await];
        assert_eq!(order, [key("a"), key("b"), key("c")]);
        let none = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(none.is_err(), "each once: {none:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resource_triggered_while_it_is_reconciled_runs_once_more_after_not_alongside() {
        let queue = Queue::default();
        queue.push(key("a"));
        let running = queue.next().await;
        queue.push(key("a"));
        queue.push(key("a"));
        let alongside = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(alongside.is_err(), "never two reconciles of one resource at once");
        queue.done(running, Some(Duration::from_secs(3600)));
        let again = tokio::time::timeout(Duration::from_secs(1), queue.next()).await;
        assert_eq!(again.expect("once more, at once"), key("a"));
        queue.done(key("a"), None);
        assert!(queue.is_empty(), "nothing kept of a resource that awaits a change");
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_waits_for_its_timer_unless_triggered_sooner() {
        let queue = Queue::default();
        queue.push(key("a"));
        queue.push(key("b"));
        let start = Instant::now();
        let a = queue.next().await;
        queue.done(a, Some(Duration::from_secs(10)));
        let b = queue.next().await;
        queue.done(b, Some(Duration::from_secs(5)));
        assert_eq!(queue.next().await, key("b"));
        assert_eq!(start.elapsed(), Duration::from_secs(5), "b's timer first");
        queue.push(key("a"));
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(5), "a triggered before its timer runs at once");
        queue.done(key("a"), None);
        queue.done(key("b"), None);
        let none = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(none.is_err(), "a's old timer is gone: {none:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn under_overload_every_resource_is_reconciled_in_the_order_it_became_due() {
        // Many resources due at once and one slot: none starves, and none
        // is passed by another that became due later.
        let queue = Queue::default();
        for index in 0..1000 {
            queue.push(key(&format!("r-{index}")));
        }
        for index in 0..1000 {
            let next = queue.next().await;
            assert_eq!(next, key(&format!("r-{index}")));
            // Each asks to be looked at again soon: it goes to the back.
            queue.done(next, Some(Duration::from_millis(1)));
            if index % 10 == 0 {
                tokio::time::advance(Duration::from_millis(2)).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_resource_is_not_handed_over() {
        let queue = Queue::default();
        queue.push(key("a"));
        queue.push(key("b"));
        queue.forget(&key("a"));
        assert_eq!(queue.next().await, key("b"));
        queue.done(key("b"), Some(Duration::from_secs(1)));
        queue.forget(&key("b"));
        let none = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(none.is_err(), "{none:?}");
        assert!(queue.is_empty());
    }

    fn resource(name: &str, generation: i64) -> Watched {
        let resource: crate::crd::ChatWorkspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {"name": name, "namespace": "team", "generation": generation, "uid": format!("uid-{name}")},
            "spec": {"desiredState": "Running", "template": {"name": "docker"}},
        }))
        .expect("a ChatWorkspace");
        Watched::pack(resource)
    }

    fn generation(resource: &Watched) -> u64 {
        resource.metadata.generation.unwrap_or_default() as u64
    }

    #[tokio::test]
    async fn the_store_triggers_on_new_and_changed_resources_and_a_relist_drops_the_missing() {
        let store = Store::default();
        assert!(store.apply(watcher::Event::Init, generation).trigger.is_none());
        let first = store.apply(watcher::Event::InitApply(resource("a", 1)), generation);
        assert_eq!(first.trigger, Some(key("a")), "new");
        store.apply(watcher::Event::InitApply(resource("b", 1)), generation);
        assert!(!store.is_ready(), "not before the list is whole");
        store.apply(watcher::Event::InitDone, generation);
        store.ready().await;
        let held = store.get(&key("a")).expect("a");
        assert_eq!(store.apply(watcher::Event::Apply(resource("a", 1)), generation).trigger, None, "unchanged");
        assert!(Arc::ptr_eq(&held, &store.get(&key("a")).expect("a")), "the same copy kept");
        assert_eq!(store.apply(watcher::Event::Apply(resource("a", 2)), generation).trigger, Some(key("a")));
        let expanded = store.get(&key("a")).expect("a").expand();
        assert_eq!(expanded.metadata.generation, Some(2));
        assert_eq!(expanded.metadata.uid.as_deref(), Some("uid-a"));
        assert_eq!(expanded.metadata.name.as_deref(), Some("a"));
        assert_eq!(expanded.metadata.namespace.as_deref(), Some("team"));

        // A relist that no longer has b.
        store.apply(watcher::Event::Init, generation);
        assert_eq!(store.len(), 2, "the old copies serve until they are replaced");
        store.apply(watcher::Event::InitApply(resource("a", 2)), generation);
        let done = store.apply(watcher::Event::InitDone, generation);
        assert_eq!(done.gone, [key("b")]);
        assert_eq!(store.len(), 1);
        let deleted = store.apply(watcher::Event::Delete(resource("a", 2)), generation);
        assert_eq!(deleted.gone, [key("a")]);
        assert!(store.is_empty());
    }

    fn in_phase(name: &str, generation: i64, phase: Option<&str>) -> Watched {
        let resource = resource(name, generation).expand();
        let mut value = serde_json::to_value(resource).expect("json");
        if let Some(phase) = phase {
            value["status"] = serde_json::json!({"phase": phase});
        }
        Watched::pack(serde_json::from_value(value).expect("a ChatWorkspace"))
    }

    #[tokio::test]
    async fn the_count_by_phase_moves_with_each_change_and_each_resource_gone() {
        let store = Store::default();
        let mut counts: HashMap<String, i64> = HashMap::new();
        let mut apply = |event| {
            for (phase, delta) in store.apply(event, generation).phases {
                *counts.entry(format!("{phase:?}")).or_default() += delta;
            }
            let mut now: Vec<(String, i64)> =
                counts.iter().filter(|(_, n)| **n != 0).map(|(p, n)| (p.clone(), *n)).collect();
            now.sort();
            now
        };
        let counted = |pairs: &[(&str, i64)]| pairs.iter().map(|(p, n)| ((*p).to_string(), *n)).collect::<Vec<_>>();
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(in_phase("a", 1, None)));
        apply(watcher::Event::InitApply(in_phase("b", 1, Some("Running"))));
        let listed = apply(watcher::Event::InitDone);
        assert_eq!(listed, counted(&[("None", 1), ("Some(Running)", 1)]));
        let written = apply(watcher::Event::Apply(in_phase("a", 1, Some("Creating"))));
        assert_eq!(written, counted(&[("Some(Creating)", 1), ("Some(Running)", 1)]));
        let same = apply(watcher::Event::Apply(in_phase("a", 2, Some("Creating"))));
        assert_eq!(same, written, "a change within a phase moves nothing");
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(in_phase("a", 2, Some("Running"))));
        let relisted = apply(watcher::Event::InitDone);
        assert_eq!(relisted, counted(&[("Some(Running)", 1)]), "b is gone from the relist");
        let deleted = apply(watcher::Event::Delete(in_phase("a", 2, Some("Running"))));
        assert!(deleted.is_empty(), "{deleted:?}");
    }
}
