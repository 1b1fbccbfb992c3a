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
//! A result wakes the agent's resources when it says something new: the
//! first result, a change between reachable and not, the first failures
//! that chatd's dial-timeout rule counts, or an answer someone asked for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{ProbeTarget, Shared, upgrade};
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

#[derive(Default)]
pub(super) struct Probes {
    /// The latest conclusive probe of each agent.
    records: Mutex<HashMap<String, ProbeRecord>>,
    /// When a probe of the agent was last inconclusive (a 429, a proxy's
    /// 502, coderd out of reach): tried again only after the attention
    /// interval, and never counted.
    inconclusive: Mutex<HashMap<String, Instant>>,
    urgent: Mutex<HashSet<String>>,
    in_flight: Mutex<HashSet<String>>,
    notify: Arc<Notify>,
}

impl Probes {
    pub(super) fn get(&self, agent_id: &str) -> Option<ProbeRecord> {
        self.records.lock().expect("probe records").get(agent_id).cloned()
    }

    pub(super) fn request(&self, agent_id: &str) {
        self.urgent.lock().expect("urgent probes").insert(agent_id.to_string());
        self.notify.notify_one();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
        for (priority, target) in due(&index, &mut budget) {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = tokio::time::sleep_until(round.into()) => break,
            };
            if priority != Priority::Asked && !index.probes.urgent.lock().expect("urgent probes").is_empty() {
                break;
            }
            start(&index, permit, priority, target);
        }
        let notify = index.probes.notify.clone();
        drop(index);
        let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
    }
}

/// The agents to probe now, most urgent first; healthy ones only within
/// the budget. Goes through every watched agent under the index's locks
/// and copies out only those that are due.
fn due(index: &Arc<Shared>, budget: &mut Budget) -> Vec<(Priority, ProbeTarget)> {
    let settings = index.settings;
    let asked: HashSet<String> = std::mem::take(&mut *index.probes.urgent.lock().expect("urgent probes"));
    let mut due: Vec<(Priority, Instant, ProbeTarget)> = Vec::new();
    {
        let interests = index.interests.lock().expect("index interests");
        let owners = index.owners.lock().expect("index owners");
        let mut records = index.probes.records.lock().expect("probe records");
        let in_flight = index.probes.in_flight.lock().expect("probes in flight");
        let mut inconclusive = index.probes.inconclusive.lock().expect("inconclusive probes");
        let mut watched: HashSet<&str> = HashSet::with_capacity(records.len());
        for interest in interests.values() {
            let Some(state) = owners.get(&interest.owner) else { continue };
            let (Some(entry), Some(client)) = (state.workspaces.get(&*interest.name), state.client.as_ref()) else {
                continue;
            };
            let Some((agent_id, agent_status)) = entry.needs_probe(interest.agent_name.as_deref()) else {
                continue;
            };
            if !watched.insert(agent_id) || in_flight.contains(agent_id) {
                continue;
            }
            let recently_inconclusive =
                inconclusive.get(agent_id).is_some_and(|at| at.elapsed() < settings.attention_interval);
            if recently_inconclusive && !asked.contains(agent_id) {
                continue;
            }
            let record = records.get(agent_id);
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
                let since = record.map_or_else(Instant::now, |r| r.at);
                let target = ProbeTarget {
                    agent_id: agent_id.to_owned(),
                    client: client.clone(),
                    timeout: interest.probe_timeout,
                    owner: interest.owner.clone(),
                    name: interest.name.clone(),
                };
                due.push((priority, since, target));
            }
        }
        // Agents of old builds, or no longer watched, are never asked about again.
        records.retain(|id, _| watched.contains(id.as_str()));
        inconclusive.retain(|id, at| watched.contains(id.as_str()) && at.elapsed() < settings.attention_interval);
    }
    // Most urgent first; among equals, the one probed longest ago.
    due.sort_by_key(|a| (a.0, a.1));
    let mut granted = Vec::with_capacity(due.len());
    for (priority, _, target) in due {
        if priority == Priority::Healthy && !budget.take(settings.probe_budget_per_minute) {
            break;
        }
        granted.push((priority, target));
    }
    granted
}

fn start(index: &Arc<Shared>, permit: OwnedSemaphorePermit, priority: Priority, target: ProbeTarget) {
    index.probes.in_flight.lock().expect("probes in flight").insert(target.agent_id.clone());
    let index = Arc::downgrade(index);
    let asked = priority == Priority::Asked;
    tokio::spawn(async move {
        let outcome = target.client.probe_agent(&target.agent_id, target.timeout).await;
        drop(permit);
        if let Some(index) = upgrade(&index) {
            finish(&index, &target, outcome, asked);
        }
    });
}

fn finish(index: &Shared, target: &ProbeTarget, outcome: ProbeOutcome, asked: bool) {
    if !outcome.is_conclusive() {
        tracing::debug!(agent = %target.agent_id, %outcome, "inconclusive probe; trying again later");
        index.probes.inconclusive.lock().expect("inconclusive probes").insert(target.agent_id.clone(), Instant::now());
        index.probes.in_flight.lock().expect("probes in flight").remove(&target.agent_id);
        return;
    }
    let news = {
        let mut records = index.probes.records.lock().expect("probe records");
        let previous = records.get(&target.agent_id);
        let failures = if outcome.is_reachable() { 0 } else { previous.map_or(0, |r| r.failures) + 1 };
        let news = asked || previous.is_none_or(|p| !p.outcome.same_kind(&outcome)) || (failures > 0 && failures <= 2);
        records.insert(target.agent_id.clone(), ProbeRecord { outcome, at: Instant::now(), failures });
        news
    };
    index.probes.in_flight.lock().expect("probes in flight").remove(&target.agent_id);
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
