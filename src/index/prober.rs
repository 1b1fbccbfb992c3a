//! Reachability probes of chat agents, off the reconcile path.
//!
//! One scheduler looks at every watched chat agent about once a second (and
//! at once when asked) and probes, in a bounded pool:
//! 1. agents a reconcile asked about (before a destructive step);
//! 2. agents never probed (a new agent cannot be Ready before its probe),
//!    a connected agent whose last probe failed (chatd's "retry once"), and
//!    disconnected agents every attention interval (the second signal of
//!    a recovery);
//! 3. healthy agents, each at most every `probe_interval`, within a budget
//!    of probes per minute shared by all of them.
//!
//! The pool is shared fairly: within each of those, owners (a credentials
//! and a username) take turns, an agent never probed before the others of
//! its owner; no owner starts more than its share of the pool, never all of
//! it; and when the pool is full and an owner waits, a probe of the owner
//! furthest beyond its share is ended early (and tried again later, as an
//! inconclusive one). So probes that hang (dead agents, a hostile coderd)
//! cannot keep another owner's new agent waiting beyond the next round.
//!
//! Results are kept per credentials: an agent id is only what one coderd
//! says, and another coderd cannot answer for it.
//!
//! A result wakes the agent's resources when it says something new: the
//! first result, a change between reachable and not, the first failures
//! that chatd's dial-timeout rule counts, or an answer someone asked for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{OwnerKey, ProbeTarget, Shared, upgrade};
use crate::coder::{AgentStatus, ProbeOutcome};

/// The latest probe of one agent.
#[derive(Clone, Debug)]
pub struct ProbeRecord {
    pub outcome: ProbeOutcome,
    /// When it completed.
    pub at: Instant,
    /// Failed probes in a row, this one included.
    pub failures: u32,
}

/// An agent as one credentials knows it: (credentials key, agent id).
type AgentKey = (String, String);

#[derive(Default)]
pub(super) struct Probes {
    /// Credentials key → agent id → the latest conclusive probe.
    records: Mutex<HashMap<String, HashMap<String, ProbeRecord>>>,
    /// When a probe of the agent was last inconclusive (a 429, a proxy's
    /// 502, coderd out of reach): tried again only after the attention
    /// interval, and never counted.
    inconclusive: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Agent ids a reconcile asked about.
    urgent: Mutex<HashSet<String>>,
    /// The probes in flight: as many as the pool's permits.
    in_flight: Mutex<HashMap<AgentKey, InFlight>>,
    notify: Arc<Notify>,
}

/// A probe in flight.
struct InFlight {
    owner: Arc<OwnerKey>,
    /// Set once its task is spawned: to end it early when its owner holds
    /// more than its share and another owner waits.
    abort: Option<tokio::task::AbortHandle>,
}

impl Probes {
    pub(super) fn get(&self, credentials: &str, agent_id: &str) -> Option<ProbeRecord> {
        self.records.lock().expect("probe records").get(credentials)?.get(agent_id).cloned()
    }

    pub(super) fn request(&self, agent_id: &str) {
        self.urgent.lock().expect("urgent probes").insert(agent_id.to_string());
        self.notify.notify_one();
    }

    /// Records a conclusive probe of `agent_id` through `credentials`,
    /// saying whether it is news for the agent's resources.
    pub(super) fn record(&self, credentials: &str, agent_id: &str, outcome: ProbeOutcome, asked: bool) -> bool {
        let mut records = self.records.lock().expect("probe records");
        let agents = match records.get_mut(credentials) {
            Some(agents) => agents,
            None => records.entry(credentials.to_owned()).or_default(),
        };
        let previous = agents.get(agent_id);
        let failures = if outcome.is_reachable() { 0 } else { previous.map_or(0, |r| r.failures) + 1 };
        let news = asked || previous.is_none_or(|p| !p.outcome.same_kind(&outcome)) || (failures > 0 && failures <= 2);
        agents.insert(agent_id.to_owned(), ProbeRecord { outcome, at: Instant::now(), failures });
        news
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Priority {
    Asked,
    Needed,
    Healthy,
}

pub(super) fn spawn(shared: Weak<Shared>) {
    tokio::spawn(async move { run(shared).await });
}

async fn run(shared: Weak<Shared>) {
    let concurrency = match upgrade(&shared) {
        Some(index) => index.settings.probe_concurrency.max(1),
        None => return,
    };
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut budget = Budget::new();
    loop {
        let Some(index) = upgrade(&shared) else { return };
        // Going through every agent costs O(agents): done once a round,
        // not once a probe, and the round's probes then start as permits
        // free up. A round ends after a second, or as soon as a reconcile
        // asks for a probe, which then goes first.
        let round = Instant::now() + Duration::from_secs(1);
        let granted = due(&index, &mut budget);
        let owners = {
            let in_flight = index.probes.in_flight.lock().expect("probes in flight");
            let running = in_flight.values().map(|probe| &probe.owner);
            granted.iter().map(|(_, target)| &target.owner).chain(running).collect::<HashSet<_>>().len()
        };
        let share = owner_share(concurrency, owners);
        for (priority, target) in granted {
            if in_flight_of(&index, &target.owner) >= share {
                continue;
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // The pool is full: an owner beyond its share (its
                    // probes hanging, say) gives one back at once.
                    preempt(&index, share);
                    tokio::select! {
                        permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                        () = tokio::time::sleep_until(round.into()) => break,
                    }
                }
            };
            if priority != Priority::Asked && !index.probes.urgent.lock().expect("urgent probes").is_empty() {
                break;
            }
            // The wait for a permit may have let this owner's earlier probes
            // start; look again.
            if in_flight_of(&index, &target.owner) >= share {
                continue;
            }
            start(&index, permit, priority, target);
        }
        let notify = index.probes.notify.clone();
        drop(index);
        let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
    }
}

fn in_flight_of(index: &Shared, owner: &Arc<OwnerKey>) -> usize {
    index.probes.in_flight.lock().expect("probes in flight").values().filter(|probe| probe.owner == *owner).count()
}

/// Ends one probe of the owner furthest beyond `share`, if any: its permit
/// is free again, and the agent is tried again after the attention
/// interval, as after an inconclusive probe (it says nothing of the agent).
fn preempt(index: &Shared, share: usize) {
    let mut in_flight = index.probes.in_flight.lock().expect("probes in flight");
    let Some(owner) = beyond_share(in_flight.values().map(|probe| probe.owner.clone()), share) else { return };
    let Some(agent) = in_flight
        .iter()
        .find(|(_, probe)| probe.owner == owner && probe.abort.is_some())
        .map(|(agent, _)| agent.clone())
    else {
        return;
    };
    if let Some(InFlight { abort: Some(abort), .. }) = in_flight.remove(&agent) {
        abort.abort();
        tracing::debug!(agent = %agent.1, owner = %owner.owner, "a probe beyond its owner's share is ended early");
        let (credentials, agent_id) = agent;
        index
            .probes
            .inconclusive
            .lock()
            .expect("inconclusive probes")
            .entry(credentials)
            .or_default()
            .insert(agent_id, Instant::now());
    }
}

/// The owner with the most probes in flight (one per item of `owners`),
/// when that is more than `share`.
fn beyond_share<K: Eq + std::hash::Hash + Clone>(owners: impl Iterator<Item = K>, share: usize) -> Option<K> {
    let mut counts: HashMap<K, usize> = HashMap::new();
    for owner in owners {
        *counts.entry(owner).or_insert(0) += 1;
    }
    counts.into_iter().filter(|(_, count)| *count > share).max_by_key(|(_, count)| *count).map(|(owner, _)| owner)
}

/// How many of the `concurrency` probes one owner may have in flight while
/// `owners` owners want some: an equal share, and never the whole pool, so
/// that an owner whose probes all hang leaves room for the next one.
fn owner_share(concurrency: usize, owners: usize) -> usize {
    match owners {
        0 | 1 => concurrency.saturating_sub(1).max(1),
        owners => (concurrency / owners).max(1),
    }
}

/// One agent due for a probe, before the fair order is set.
struct Due<T> {
    priority: Priority,
    /// The last conclusive probe; `None` (never probed) goes first.
    since: Option<Instant>,
    target: T,
}

/// The round's probes in the order they start: most urgent first; within
/// a priority, owners take turns (by `owner_of`), and each owner's agents
/// go never probed first, then the one probed longest ago.
fn fair_order<T, K: Eq + std::hash::Hash + Clone>(mut due: Vec<Due<T>>, owner_of: impl Fn(&T) -> K) -> Vec<Due<T>> {
    due.sort_by_key(|d| (d.priority, d.since));
    // Each agent's turn among its owner's at its priority: the first of
    // every owner, then the second of every owner, and so on.
    let mut turns: HashMap<(Priority, K), usize> = HashMap::new();
    let mut keyed: Vec<(Priority, usize, usize, Due<T>)> = due
        .into_iter()
        .enumerate()
        .map(|(place, d)| {
            let turn = turns.entry((d.priority, owner_of(&d.target))).or_insert(0);
            *turn += 1;
            (d.priority, *turn, place, d)
        })
        .collect();
    keyed.sort_by_key(|(priority, turn, place, _)| (*priority, *turn, *place));
    keyed.into_iter().map(|(_, _, _, d)| d).collect()
}

/// The agents to probe now, in [`fair_order`]; healthy ones only within
/// the budget. Goes through every watched agent under the index's locks
/// and copies out only those that are due.
fn due(index: &Arc<Shared>, budget: &mut Budget) -> Vec<(Priority, ProbeTarget)> {
    let settings = index.settings;
    let asked: HashSet<String> = std::mem::take(&mut *index.probes.urgent.lock().expect("urgent probes"));
    let mut due: Vec<Due<ProbeTarget>> = Vec::new();
    {
        let interests = index.interests.lock().expect("index interests");
        let owners = index.owners.lock().expect("index owners");
        let mut records = index.probes.records.lock().expect("probe records");
        let in_flight = index.probes.in_flight.lock().expect("probes in flight");
        let mut inconclusive = index.probes.inconclusive.lock().expect("inconclusive probes");
        let mut watched: HashSet<(&str, &str)> = HashSet::new();
        for interest in interests.values() {
            let Some(state) = owners.get(&interest.owner) else { continue };
            let (Some(entry), Some(client)) = (state.workspaces.get(&*interest.name), state.client.as_ref()) else {
                continue;
            };
            let Some((agent_id, agent_status)) = entry.needs_probe(interest.agent_name.as_deref()) else {
                continue;
            };
            let credentials = interest.owner.credentials.as_str();
            if !watched.insert((credentials, agent_id))
                || in_flight.keys().any(|(c, a)| c == credentials && a == agent_id)
            {
                continue;
            }
            let recently_inconclusive = inconclusive
                .get(credentials)
                .and_then(|agents| agents.get(agent_id))
                .is_some_and(|at| at.elapsed() < settings.attention_interval);
            if recently_inconclusive && !asked.contains(agent_id) {
                continue;
            }
            let record = records.get(credentials).and_then(|agents| agents.get(agent_id));
            let age = record.map(|r| r.at.elapsed());
            let failed = record.is_some_and(|r| !r.outcome.is_reachable());
            let priority = if asked.contains(agent_id) {
                Some(Priority::Asked)
            } else {
                match (agent_status, age) {
                    (_, None) => Some(Priority::Needed),
                    (AgentStatus::Connected, Some(age)) if failed && age >= settings.probe_retry => {
                        Some(Priority::Needed)
                    }
                    (AgentStatus::Disconnected, Some(age)) if age >= settings.attention_interval => {
                        Some(Priority::Needed)
                    }
                    (AgentStatus::Connected, Some(age)) if age >= settings.probe_interval => Some(Priority::Healthy),
                    _ => None,
                }
            };
            if let Some(priority) = priority {
                let target = ProbeTarget {
                    credentials: credentials.to_owned(),
                    agent_id: agent_id.to_owned(),
                    client: client.clone(),
                    timeout: interest.probe_timeout,
                    owner: interest.owner.clone(),
                    name: interest.name.clone(),
                };
                due.push(Due { priority, since: record.map(|r| r.at), target });
            }
        }
        // Agents of old builds, or no longer watched, are never asked about again.
        records.retain(|credentials, agents| {
            agents.retain(|id, _| watched.contains(&(credentials.as_str(), id.as_str())));
            !agents.is_empty()
        });
        inconclusive.retain(|credentials, agents| {
            agents.retain(|id, at| {
                watched.contains(&(credentials.as_str(), id.as_str())) && at.elapsed() < settings.attention_interval
            });
            !agents.is_empty()
        });
    }
    let mut granted = Vec::with_capacity(due.len());
    for Due { priority, target, .. } in fair_order(due, |target| target.owner.clone()) {
        if priority == Priority::Healthy && !budget.take(settings.probe_budget_per_minute) {
            break;
        }
        granted.push((priority, target));
    }
    granted
}

fn start(index: &Arc<Shared>, permit: OwnedSemaphorePermit, priority: Priority, target: ProbeTarget) {
    let agent = target.agent();
    let in_flight = InFlight { owner: target.owner.clone(), abort: None };
    index.probes.in_flight.lock().expect("probes in flight").insert(agent.clone(), in_flight);
    let shared = Arc::downgrade(index);
    let asked = priority == Priority::Asked;
    let task = tokio::spawn(async move {
        let outcome = target.client.probe_agent(&target.agent_id, target.timeout).await;
        drop(permit);
        if let Some(index) = upgrade(&shared) {
            finish(&index, &target, outcome, asked);
        }
    });
    // Unless it is over already.
    if let Some(probe) = index.probes.in_flight.lock().expect("probes in flight").get_mut(&agent) {
        probe.abort = Some(task.abort_handle());
    }
}

fn finish(index: &Shared, target: &ProbeTarget, outcome: ProbeOutcome, asked: bool) {
    if !outcome.is_conclusive() {
        tracing::debug!(agent = %target.agent_id, %outcome, "inconclusive probe; trying again later");
        index
            .probes
            .inconclusive
            .lock()
            .expect("inconclusive probes")
            .entry(target.credentials.clone())
            .or_default()
            .insert(target.agent_id.clone(), Instant::now());
        index.probes.in_flight.lock().expect("probes in flight").remove(&target.agent());
        return;
    }
    let news = index.probes.record(&target.credentials, &target.agent_id, outcome, asked);
    index.probes.in_flight.lock().expect("probes in flight").remove(&target.agent());
    if let Some(metrics) = &index.metrics {
        metrics.index_probes.inc();
    }
    if news {
        index.wake(index.interested_in(&target.owner, &target.name));
    }
    index.probes.notify.notify_one();
}

/// Healthy probes per minute: a token bucket that holds at most a tenth of
/// a minute's worth, so that a quiet spell does not turn into a burst.
struct Budget {
    tokens: f64,
    updated: Instant,
}

impl Budget {
    fn new() -> Self {
        Self { tokens: 0.0, updated: Instant::now() }
    }

    fn take(&mut self, per_minute: u32) -> bool {
        let rate = f64::from(per_minute) / 60.0;
        let cap = (f64::from(per_minute) / 10.0).max(1.0);
        self.tokens = (self.tokens + self.updated.elapsed().as_secs_f64() * rate).min(cap);
        self.updated = Instant::now();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(
        priority: Priority,
        since: Option<Instant>,
        owner: &'static str,
        agent: &'static str,
    ) -> Due<(&'static str, &'static str)> {
        Due { priority, since, target: (owner, agent) }
    }

    fn order(due: Vec<Due<(&'static str, &'static str)>>) -> Vec<&'static str> {
        fair_order(due, |target| target.0).into_iter().map(|d| d.target.1).collect()
    }

    #[test]
    fn owners_take_turns_and_a_new_agent_is_not_behind_failing_ones() {
        let earlier = Instant::now();
        let later = earlier + Duration::from_secs(5);
        // Eight agents of one owner retried every second, probed long ago...
        let mut round: Vec<_> = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8"]
            .into_iter()
            .map(|agent| due(Priority::Needed, Some(earlier), "hostile", agent))
            .collect();
        // ...another owner's agent retried too, and a third's never probed.
        round.push(due(Priority::Needed, Some(later), "bob", "b1"));
        round.push(due(Priority::Needed, None, "carol", "c1"));
        round.push(due(Priority::Healthy, Some(earlier), "carol", "c2"));
        round.push(due(Priority::Asked, Some(later), "hostile", "h9"));
        let order = order(round);
        assert_eq!(order[0], "h9", "asked first");
        assert_eq!(&order[1..4], ["c1", "h1", "b1"], "one of each owner, the never probed first: {order:?}");
        assert_eq!(&order[4..11], ["h2", "h3", "h4", "h5", "h6", "h7", "h8"]);
        assert_eq!(order[11], "c2", "healthy last");
    }

    #[test]
    fn the_owner_furthest_beyond_its_share_gives_a_probe_back() {
        let in_flight = ["alice", "alice", "alice", "alice", "alice", "bob", "bob", "bob"];
        assert_eq!(beyond_share(in_flight.into_iter(), 2), Some("alice"));
        assert_eq!(beyond_share(in_flight.into_iter(), 5), None, "nobody beyond a share of five");
        assert_eq!(beyond_share(std::iter::empty::<&str>(), 0), None);
    }

    #[test]
    fn an_owner_never_holds_the_whole_pool() {
        assert_eq!(owner_share(8, 1), 7);
        assert_eq!(owner_share(8, 2), 4);
        assert_eq!(owner_share(8, 3), 2);
        assert_eq!(owner_share(8, 100), 1);
        assert_eq!(owner_share(1, 1), 1, "a pool of one still probes");
    }
}
