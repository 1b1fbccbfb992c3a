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
//!
//! The planning is plain functions over plain data, unit-tested without a
//! server: whom to probe ([`priority`]), in which order ([`fair_order`]),
//! which start under the budget ([`grant`], [`Budget`]), how much of the
//! pool an owner may hold ([`owner_share`], [`beyond_share`]), and what a
//! result changes and whether it wakes anyone ([`next_record`]). `run`,
//! `due`, `start` and `finish` are the loop around them that holds the locks
//! and talks to coderd.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{IndexSettings, OwnerKey, ProbeTarget, Shared, upgrade};
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
        let (record, news) = next_record(agents.get(agent_id), outcome, asked, Instant::now());
        agents.insert(agent_id.to_owned(), record);
        news
    }
}

/// What a conclusive probe completed at `now` makes of the agent's record,
/// and whether it is news that wakes the agent's resources: the first
/// result, a change between reachable and not (or of how it failed), the
/// first two failures in a row (chatd's "retry once" counts them), or an
/// answer a reconcile asked for. A third failure like the second is not.
fn next_record(
    previous: Option<&ProbeRecord>,
    outcome: ProbeOutcome,
    asked: bool,
    now: Instant,
) -> (ProbeRecord, bool) {
    let failures = if outcome.is_reachable() { 0 } else { previous.map_or(0, |r| r.failures) + 1 };
    let news = asked || previous.is_none_or(|p| !p.outcome.same_kind(&outcome)) || (failures > 0 && failures <= 2);
    (ProbeRecord { outcome, at: now, failures }, news)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Priority {
    Asked,
    Needed,
    Healthy,
}

/// What a round knows of one watched agent: what [`priority`] judges.
#[derive(Clone, Copy, Debug)]
struct WatchedAgent<'a> {
    /// What coderd says of the agent.
    status: AgentStatus,
    /// A reconcile asked about it.
    asked: bool,
    /// Its latest conclusive probe.
    last: Option<&'a ProbeRecord>,
    /// When a probe of it was last inconclusive (or ended early).
    inconclusive_at: Option<Instant>,
}

/// Whether the agent is due for a probe at `now`, and how urgently:
/// asked about first; then never probed, a connected agent whose last probe
/// failed (after `probe_retry`), a disconnected one every attention interval;
/// a healthy one every `probe_interval`. After an inconclusive probe only a
/// reconcile's question probes it again within the attention interval.
fn priority(agent: WatchedAgent<'_>, settings: &IndexSettings, now: Instant) -> Option<Priority> {
    let since = |at: Instant| now.saturating_duration_since(at);
    if agent.asked {
        return Some(Priority::Asked);
    }
    if agent.inconclusive_at.is_some_and(|at| since(at) < settings.attention_interval) {
        return None;
    }
    let Some(last) = agent.last else { return Some(Priority::Needed) };
    let age = since(last.at);
    let failed = !last.outcome.is_reachable();
    match agent.status {
        AgentStatus::Connected if failed && age >= settings.probe_retry => Some(Priority::Needed),
        AgentStatus::Disconnected if age >= settings.attention_interval => Some(Priority::Needed),
        AgentStatus::Connected if age >= settings.probe_interval => Some(Priority::Healthy),
        _ => None,
    }
}

/// The probes of a round in [`fair_order`] that start: every asked and
/// needed one, and healthy ones while `take_healthy` grants them (they come
/// last, so the first refused ends the round).
fn grant<T>(ordered: Vec<Due<T>>, mut take_healthy: impl FnMut() -> bool) -> Vec<(Priority, T)> {
    let mut granted = Vec::with_capacity(ordered.len());
    for Due { priority, target, .. } in ordered {
        if priority == Priority::Healthy && !take_healthy() {
            break;
        }
        granted.push((priority, target));
    }
    granted
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
    let now = Instant::now();
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
            let record = records.get(credentials).and_then(|agents| agents.get(agent_id));
            let watched_agent = WatchedAgent {
                status: agent_status,
                asked: asked.contains(agent_id),
                last: record,
                inconclusive_at: inconclusive.get(credentials).and_then(|agents| agents.get(agent_id)).copied(),
            };
            if let Some(priority) = priority(watched_agent, &settings, now) {
                let target = ProbeTarget {
                    credentials: credentials.to_owned(),
                    agent_id: agent_id.to_owned(),
                    // A healthy agent's routine probe is observation; a
                    // probe something asked for, or of an agent in doubt,
                    // decides a recovery.
                    client: if priority == Priority::Healthy { client.for_observation() } else { client.clone() },
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
    grant(fair_order(due, |target| target.owner.clone()), || budget.take(settings.probe_budget_per_minute, now))
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
    if let Some(metrics) = &index.metrics {
        metrics.probed(&outcome);
    }
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

    /// One healthy probe at `now`, if the budget has one.
    fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        let rate = f64::from(per_minute) / 60.0;
        let cap = (f64::from(per_minute) / 10.0).max(1.0);
        self.tokens = (self.tokens + now.saturating_duration_since(self.updated).as_secs_f64() * rate).min(cap);
        self.updated = self.updated.max(now);
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

    fn record(outcome: ProbeOutcome, at: Instant, failures: u32) -> ProbeRecord {
        ProbeRecord { outcome, at, failures }
    }

    fn agent(status: AgentStatus, last: Option<&ProbeRecord>) -> WatchedAgent<'_> {
        WatchedAgent { status, asked: false, last, inconclusive_at: None }
    }

    #[test]
    fn asked_agents_go_first_then_the_never_probed_and_those_in_doubt_then_healthy_ones_on_their_interval() {
        let settings = IndexSettings::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let passed = record(ProbeOutcome::Reachable, start, 0);
        let failed = record(ProbeOutcome::TimedOut, start, 1);
        let judge = |agent: WatchedAgent<'_>, now| priority(agent, &settings, now);
        use AgentStatus::{Connected, Disconnected};

        assert_eq!(judge(agent(Connected, None), start), Some(Priority::Needed), "never probed");
        assert_eq!(judge(agent(Connected, Some(&passed)), at(1)), None, "healthy, probed a second ago");
        let interval = settings.probe_interval.as_secs();
        assert_eq!(judge(agent(Connected, Some(&passed)), at(interval - 1)), None);
        assert_eq!(judge(agent(Connected, Some(&passed)), at(interval)), Some(Priority::Healthy));
        // chatd's "retry once": a connected agent that failed, after probe_retry.
        assert_eq!(judge(agent(Connected, Some(&failed)), start), None, "not within probe_retry");
        assert_eq!(judge(agent(Connected, Some(&failed)), at(1)), Some(Priority::Needed));
        // A disconnected agent, the second signal of a recovery, every attention interval.
        let attention = settings.attention_interval.as_secs();
        assert_eq!(judge(agent(Disconnected, Some(&passed)), at(attention - 1)), None);
        assert_eq!(judge(agent(Disconnected, Some(&failed)), at(attention)), Some(Priority::Needed));
        // Connecting or timed-out agents are not probed on a cadence.
        assert_eq!(judge(agent(AgentStatus::Connecting, Some(&passed)), at(interval)), None);

        let asked = WatchedAgent { asked: true, ..agent(Connected, Some(&passed)) };
        assert_eq!(judge(asked, at(1)), Some(Priority::Asked), "a reconcile's question does not wait");
    }

    #[test]
    fn after_an_inconclusive_probe_only_a_question_probes_the_agent_within_the_attention_interval() {
        let settings = IndexSettings::default();
        let start = Instant::now();
        let inconclusive = WatchedAgent { inconclusive_at: Some(start), ..agent(AgentStatus::Connected, None) };
        assert_eq!(priority(inconclusive, &settings, start + Duration::from_secs(1)), None);
        let asked = WatchedAgent { asked: true, ..inconclusive };
        assert_eq!(priority(asked, &settings, start + Duration::from_secs(1)), Some(Priority::Asked));
        let later = start + settings.attention_interval;
        assert_eq!(priority(inconclusive, &settings, later), Some(Priority::Needed), "never probed, tried again");
    }

    #[test]
    fn a_result_wakes_the_resources_when_it_is_new_and_failures_count_in_a_row() {
        let now = Instant::now();
        let news = |previous: Option<&ProbeRecord>, outcome: ProbeOutcome| next_record(previous, outcome, false, now);

        let (first, woke) = news(None, ProbeOutcome::Reachable);
        assert!(woke, "the first result is news");
        assert_eq!((first.failures, first.at), (0, now));
        let (same, woke) = news(Some(&first), ProbeOutcome::Reachable);
        assert!(!woke, "a pass after a pass is not");
        assert_eq!(same.failures, 0);

        let (once, woke) = news(Some(&same), ProbeOutcome::TimedOut);
        assert!(woke && once.failures == 1, "reachable to not: {once:?}");
        let (twice, woke) = news(Some(&once), ProbeOutcome::TimedOut);
        assert!(woke && twice.failures == 2, "the second failure is chatd's dial timeout: {twice:?}");
        let (thrice, woke) = news(Some(&twice), ProbeOutcome::TimedOut);
        assert!(!woke && thrice.failures == 3, "a third failure like the second is not news: {thrice:?}");
        let (other, woke) = news(Some(&thrice), ProbeOutcome::Failed { message: "dial".into() });
        assert!(woke && other.failures == 4, "another kind of failure is: {other:?}");
        let (back, woke) = news(Some(&other), ProbeOutcome::Reachable);
        assert!(woke && back.failures == 0, "a pass resets the count: {back:?}");

        let (_, woke) = next_record(Some(&thrice), ProbeOutcome::TimedOut, true, now);
        assert!(woke, "an answer a reconcile asked for always wakes it");
    }

    #[test]
    fn healthy_probes_start_only_within_the_budget_and_the_others_always() {
        let ordered = vec![
            due(Priority::Asked, None, "a", "asked"),
            due(Priority::Needed, None, "a", "needed"),
            due(Priority::Healthy, None, "a", "h1"),
            due(Priority::Healthy, None, "b", "h2"),
            due(Priority::Healthy, None, "c", "h3"),
        ];
        let mut tokens = 1;
        let granted = grant(ordered, || {
            let granted = tokens > 0;
            tokens -= i32::from(granted);
            granted
        });
        let agents: Vec<_> = granted.iter().map(|(_, (_, agent))| *agent).collect();
        assert_eq!(agents, ["asked", "needed", "h1"]);
        assert!(grant(Vec::<Due<()>>::new(), || true).is_empty());
    }

    #[test]
    fn the_healthy_budget_fills_at_its_rate_and_holds_a_tenth_of_a_minute() {
        let start = Instant::now();
        let mut budget = Budget { tokens: 0.0, updated: start };
        assert!(!budget.take(60, start), "empty at first");
        assert!(budget.take(60, start + Duration::from_secs(1)), "one a second at 60 a minute");
        assert!(!budget.take(60, start + Duration::from_secs(1)));
        let idle = start + Duration::from_secs(3600);
        let burst = (0..100).filter(|_| budget.take(60, idle)).count();
        assert_eq!(burst, 6, "an idle hour saves a tenth of a minute's worth");
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
