//! The Coder index: what the operator knows about the Coder workspaces that
//! `ChatWorkspace`s name, kept up to date in the background, so a reconcile
//! reads it synchronously instead of asking Coder.
//!
//! One poller per (credentials, owner) looks at Coder with coderd's own
//! search filters (`poller`): often at what needs attention (agents that are
//! not healthy, builds under way, a change in how many workspaces run), and
//! rarely at everything (the full paged list, as a backstop). A prober
//! (`prober`) probes chat agents off the reconcile path, in a bounded pool.
//! When what the decision core would see of a workspace changes, only the
//! resources that name it are woken.
//!
//! The index never decides anything, and what it holds is never acted on as
//! it is: before a build or a create the reconcile reads the one workspace
//! again (the decision core insists on it).

mod chats;
mod entry;
mod poller;
mod prober;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, mpsc};

use crate::key::ResourceKey;

use crate::coder::{Chat, CoderClient, CoderError, ProbeOutcome, Workspace};
use crate::crd::ChatWorkspace;
use crate::credentials::Resolved;
use crate::metrics::Metrics;

pub use chats::ChatLookup;
use entry::Entry;
pub use prober::ProbeRecord;

#[derive(Clone, Copy, Debug)]
pub struct IndexSettings {
    /// How often each owner's workspaces that need attention are looked at
    /// (unhealthy agents, builds under way, the count of running ones).
    pub attention_interval: Duration,
    /// How often a workspace with a build or an agent start under way is
    /// read again, by id.
    pub active_interval: Duration,
    /// How often every workspace of an owner is listed, as a backstop.
    pub full_interval: Duration,
    /// Workspaces per list page.
    pub page_size: u32,
    /// How often a healthy chat agent is probed, at most.
    pub probe_interval: Duration,
    /// Probes of healthy agents per minute, across all of them: they share
    /// Coder's budget with everything else.
    pub probe_budget_per_minute: u32,
    /// Probes in flight at once.
    pub probe_concurrency: usize,
    /// How soon a failed probe of a connected agent is tried again (chatd's
    /// "retry once").
    pub probe_retry: Duration,
    /// How recent a probe must be for a destructive step to rely on it.
    pub probe_fresh: Duration,
    /// How often the chats bound to the watched workspaces are looked up
    /// (`by-workspace`, 25 workspaces per request).
    pub chat_interval: Duration,
    /// How often a bound chat's details are read again when nothing else
    /// asked for them (a new binding and the operator's own builds do).
    pub chat_detail_interval: Duration,
    /// Those slow-cadence detail reads per minute, across all chats: they
    /// share Coder's budget with everything else.
    pub chat_detail_budget_per_minute: u32,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            attention_interval: Duration::from_secs(10),
            active_interval: Duration::from_secs(2),
            full_interval: Duration::from_secs(300),
            page_size: 100,
            probe_interval: Duration::from_secs(300),
            probe_budget_per_minute: 120,
            probe_concurrency: 8,
            probe_retry: Duration::from_secs(1),
            probe_fresh: Duration::from_secs(5),
            chat_interval: Duration::from_secs(300),
            chat_detail_interval: Duration::from_secs(3600),
            chat_detail_budget_per_minute: 60,
        }
    }
}

/// The bounds of a probe's timeout, whatever a resource asks.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which poller serves a workspace: the credentials (never the token) and
/// the owner, lowercased as Coder compares usernames.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    pub credentials: String,
    pub owner: String,
}

impl OwnerKey {
    pub fn new(credentials: &Resolved, owner: &str) -> Self {
        Self { credentials: credentials.key.clone(), owner: owner.to_lowercase() }
    }
}

/// What a resource asks the index to watch: one per resource, so its owner
/// is shared with the owner's state rather than copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    pub owner: Arc<OwnerKey>,
    /// The workspace name, lowercased (Coder's names are case-insensitive).
    pub name: Box<str>,
    pub agent_name: Option<Box<str>>,
    pub probe_timeout: Duration,
    /// The resource was decided on with the whole picture since this
    /// process started ([`CoderIndex::observed`]).
    pub observed: bool,
}

/// What the index knows of one workspace, for a reconcile.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// The owner's workspaces have not been listed yet; the resource is
    /// woken when they are.
    Unknown,
    /// The last list did not have it.
    Absent,
    Present(Arc<Workspace>),
    /// The owner's poller cannot read Coder: before its first list, or with
    /// an error that waiting does not fix (a rejected token).
    Failing(CoderError),
}

#[derive(Default)]
struct OwnerState {
    /// The client the poller uses: the latest one a resource brought (a
    /// rotated token replaces it).
    client: Option<CoderClient>,
    /// The owner as resources spell it, for queries.
    query_owner: String,
    /// Name (lowercase) → workspace, for the workspaces of the owner that a
    /// resource names ([`OwnerState::keeps`]): what a coderd lists beyond
    /// them is never held.
    workspaces: HashMap<String, Entry>,
    /// Name (lowercase) → the resources that name it.
    interested: HashMap<String, Vec<ResourceKey>>,
    listed_at: Option<Instant>,
    /// Running workspaces of the owner that no resource names, as of the
    /// last complete list: part of what coderd's `status:running` counts.
    unnamed_running: usize,
    /// The last list was cut short: the next `status:running` count is
    /// taken as it is, since the list could not say how many run.
    running_baseline_due: bool,
    /// Set when the next poll must list everything.
    full_list_due: bool,
    /// Workspace ids the next poll reads on their own (the operator just
    /// built them, or they just left the unhealthy list).
    read_soon: HashSet<String>,
    /// Workspaces the last attention poll found unhealthy.
    unhealthy: HashSet<String>,
    poller_running: bool,
    wake_poller: Arc<Notify>,
    /// Why the latest poll failed, until one succeeds.
    last_error: Option<CoderError>,
    /// The chats bound to the watched workspaces.
    chats: chats::OwnerChats,
}

/// The shared index. Cheap to clone.
#[derive(Clone)]
pub struct CoderIndex {
    shared: Arc<Shared>,
}

struct Shared {
    settings: IndexSettings,
    owners: Mutex<HashMap<Arc<OwnerKey>, OwnerState>>,
    /// Resource → what it watches.
    interests: Mutex<HashMap<ResourceKey, Interest>>,
    probes: prober::Probes,
    chat_budget: Mutex<chats::DetailBudget>,
    wakers: Mutex<Vec<Waker>>,
    /// Resource → when it was first woken since its last reconcile began.
    woken: Mutex<HashMap<ResourceKey, Instant>>,
    metrics: Option<Arc<Metrics>>,
}

/// Where wakes for resources of one namespace (or all) go.
struct Waker {
    namespace: Option<String>,
    sender: mpsc::UnboundedSender<ResourceKey>,
}

impl CoderIndex {
    pub fn new(settings: IndexSettings, metrics: Option<Arc<Metrics>>) -> Self {
        let shared = Arc::new(Shared {
            settings,
            owners: Mutex::default(),
            interests: Mutex::default(),
            probes: prober::Probes::default(),
            chat_budget: Mutex::default(),
            wakers: Mutex::default(),
            woken: Mutex::default(),
            metrics,
        });
        prober::spawn(Arc::downgrade(&shared));
        Self { shared }
    }

    pub fn settings(&self) -> &IndexSettings {
        &self.shared.settings
    }

    /// A stream of the resources to reconcile because what the index holds
    /// for them changed; for the controller of `namespace` (`None`: all).
    pub fn wakes(&self, namespace: Option<String>) -> mpsc::UnboundedReceiver<ResourceKey> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.shared.wakers.lock().expect("index wakers").push(Waker { namespace, sender });
        receiver
    }

    /// Registers what `resource` watches (moving it if its spec changed) and
    /// says what the index knows of its workspace.
    pub fn observe(&self, resource: &ChatWorkspace, credentials: &Resolved, owner: &str, name: &str) -> Lookup {
        let text = ResourceKey::text(
            resource.metadata.namespace.as_deref().unwrap_or_default(),
            resource.metadata.name.as_deref().unwrap_or_default(),
        );
        let policy = resource.spec.recovery.policy().ok();
        let owner_key = OwnerKey::new(credentials, owner);
        let name = name.to_lowercase();
        // Locked in the prober's order: interests, then owners.
        let mut interests = self.shared.interests.lock().expect("index interests");
        let mut owners = self.shared.owners.lock().expect("index owners");
        let owner_key = match owners.get_key_value(&owner_key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(owner_key),
        };
        let (reference, previous) = match interests.get_key_value(text.as_str()) {
            Some((reference, held)) => (reference.clone(), Some(held.clone())),
            None => (ResourceKey::from_text(text), None),
        };
        // coderd itself gives up dialing after 30 s; a longer timeout would
        // only let a hanging probe hold its share of the pool for longer.
        let probe_timeout =
            policy.map_or(MAX_PROBE_TIMEOUT, |p| p.probe_timeout).clamp(MIN_PROBE_TIMEOUT, MAX_PROBE_TIMEOUT);
        let agent_name = resource.spec.agent_name.as_deref();
        let unchanged = previous.as_ref().is_some_and(|p| {
            p.owner == owner_key
                && *p.name == *name
                && p.agent_name.as_deref() == agent_name
                && p.probe_timeout == probe_timeout
        });
        if !unchanged {
            let interest = Interest {
                owner: owner_key.clone(),
                name: name.as_str().into(),
                agent_name: agent_name.map(Into::into),
                probe_timeout,
                observed: previous.as_ref().is_some_and(|held| held.observed),
            };
            interests.insert(reference.clone(), interest);
        }
        drop(interests);
        if let Some(previous) = previous.filter(|p| p.owner != owner_key || *p.name != *name)
            && let Some(state) = owners.get_mut(&previous.owner)
        {
            unregister(state, &previous.name, &reference);
        }
        let state = owners.entry(owner_key.clone()).or_default();
        state.client = Some(credentials.client.clone());
        if state.query_owner.is_empty() {
            state.query_owner = owner.to_string();
        }
        // Nearly always the only one: a vector of exactly one, not a hash
        // set's buckets (nor a vector's first growth, which makes room for four).
        let interested = state.interested.entry(name.clone()).or_insert_with(|| Vec::with_capacity(1));
        if !interested.contains(&reference) {
            interested.push(reference);
        }
        if !state.poller_running {
            state.poller_running = true;
            poller::spawn(Arc::downgrade(&self.shared), OwnerKey::clone(&owner_key), state.wake_poller.clone());
        }
        if let Some(error) = &state.last_error
            && (state.listed_at.is_none() || !error.is_retryable())
        {
            // A resource brings the credentials it resolved now (a rotated
            // token, say): let the poller try them at once.
            state.wake_poller.notify_one();
            return Lookup::Failing(error.clone());
        }
        if state.listed_at.is_none() {
            return Lookup::Unknown;
        }
        match state.workspaces.get(&name) {
            Some(entry) => Lookup::Present(entry.workspace()),
            None => Lookup::Absent,
        }
    }

    /// The workspace with this id among `owner`'s, whatever its name now (a
    /// workspace renamed in Coder is followed by id).
    pub fn by_id(&self, credentials: &Resolved, owner: &str, id: &str) -> Option<Arc<Workspace>> {
        let owners = self.shared.owners.lock().expect("index owners");
        let state = owners.get(&OwnerKey::new(credentials, owner))?;
        state.workspaces.values().find(|entry| &*entry.id == id).map(Entry::workspace)
    }

    /// `resource` was decided on with the whole picture of its workspace:
    /// counted once in the `observed_resources` gauge.
    pub fn observed(&self, resource: &ObjectRef<ChatWorkspace>) {
        let mut interests = self.shared.interests.lock().expect("index interests");
        if let Some(interest) = interests.get_mut(ResourceKey::text_of(resource).as_str())
            && !interest.observed
        {
            interest.observed = true;
            if let Some(metrics) = &self.shared.metrics {
                metrics.observed_resources.inc();
            }
        }
    }

    /// The resource is gone: stop watching for it.
    pub fn forget(&self, resource: &ObjectRef<ChatWorkspace>) {
        let text = ResourceKey::text_of(resource);
        let Some((key, interest)) = self.shared.interests.lock().expect("index interests").remove_entry(text.as_str())
        else {
            return;
        };
        if interest.observed
            && let Some(metrics) = &self.shared.metrics
        {
            metrics.observed_resources.dec();
        }
        if let Some(state) = self.shared.owners.lock().expect("index owners").get_mut(&interest.owner) {
            unregister(state, &interest.name, &key);
        }
    }

    /// Records what the operator knows to be newer than the index: a fresh
    /// read of `name` (`None`: it does not exist), or the workspace as its
    /// own build or create left it. A workspace with a build under way is
    /// read again soon, so its end is seen without waiting for a list.
    pub fn record(&self, credentials: &Resolved, owner: &str, name: &str, workspace: Option<Workspace>) {
        let key = OwnerKey::new(credentials, owner);
        let mut owners = self.shared.owners.lock().expect("index owners");
        let state = owners.entry(Arc::new(key)).or_default();
        let name = name.to_lowercase();
        match workspace {
            Some(workspace) => {
                let entry = Entry::new(workspace);
                if entry.in_transition {
                    state.read_soon.insert(entry.id.to_string());
                    // The chat's binding and context are read again once
                    // the build (and its agent's start) is over.
                    state.chats.after_build(&entry.id);
                    state.wake_poller.notify_one();
                }
                state.workspaces.insert(name, entry);
            }
            None => {
                state.workspaces.remove(&name);
            }
        }
    }

    /// What the index knows of the chat bound to workspace `workspace_id`.
    pub fn chat(&self, credentials: &Resolved, owner: &str, workspace_id: &str) -> ChatLookup {
        let owners = self.shared.owners.lock().expect("index owners");
        owners.get(&OwnerKey::new(credentials, owner)).map_or(ChatLookup::Unknown, |s| s.chats.lookup(workspace_id))
    }

    /// Records a chat the operator just read (`full`) or changed (the
    /// answer of an interrupt or a re-pin, which has no sub-agents).
    pub fn record_chat(&self, credentials: &Resolved, owner: &str, workspace_id: &str, chat: Chat, full: bool) {
        let mut owners = self.shared.owners.lock().expect("index owners");
        if let Some(state) = owners.get_mut(&OwnerKey::new(credentials, owner)) {
            state.chats.record(workspace_id, chat, full);
        }
    }

    /// The latest probe of `agent_id` as seen through `credentials`, if any:
    /// another coderd's answer for the same id is not this agent's.
    pub fn probe(&self, credentials: &Resolved, agent_id: &str) -> Option<ProbeRecord> {
        self.shared.probes.get(&credentials.key, agent_id)
    }

    /// Asks for a probe of `agent_id` now; the resources that watch it are
    /// woken when it completes.
    pub fn request_probe(&self, agent_id: &str) {
        self.shared.probes.request(agent_id);
    }

    /// A reconcile of `resource` begins: how long ago the index woke it, if
    /// it did (the queue's wait, for the metric).
    pub fn reconcile_started(&self, resource: &ObjectRef<ChatWorkspace>) -> Option<Duration> {
        let text = ResourceKey::text_of(resource);
        self.shared.woken.lock().expect("index woken").remove(text.as_str()).map(|at| at.elapsed())
    }

    /// Every interest, for tests and the benchmark's report.
    pub fn watched(&self) -> usize {
        self.shared.interests.lock().expect("index interests").len()
    }
}

fn unregister(state: &mut OwnerState, name: &str, resource: &ResourceKey) {
    if let Some(set) = state.interested.get_mut(name) {
        set.retain(|held| held != resource);
        if set.is_empty() {
            state.interested.remove(name);
        }
    }
}

impl Shared {
    /// Wakes every resource in `resources`.
    fn wake(&self, resources: impl IntoIterator<Item = ResourceKey>) {
        let mut wakers = self.wakers.lock().expect("index wakers");
        wakers.retain(|waker| !waker.sender.is_closed());
        let mut woken = 0u64;
        let mut since = self.woken.lock().expect("index woken");
        let now = Instant::now();
        for resource in resources {
            since.entry(resource.clone()).or_insert(now);
            for waker in wakers.iter() {
                if waker.namespace.as_deref().is_none_or(|namespace| namespace == resource.namespace()) {
                    let _ = waker.sender.send(resource.clone());
                    woken += 1;
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.index_wakes.inc_by(woken);
        }
    }

    /// Merges workspaces read from Coder into an owner's state, waking the
    /// resources whose workspace changed in a way the decision core sees.
    /// Entries recorded after `read_started` are newer than this read and
    /// are kept. Of a coderd a tenant's Secret names, only the workspaces
    /// resources name are kept; of the operator's own, every one listed.
    fn merge(&self, key: &OwnerKey, read: Vec<Workspace>, read_started: Instant) -> Merged {
        let mut to_wake = Vec::new();
        let mut merged = Merged::default();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let Some(state) = owners.get_mut(key) else { return merged };
            let keeps = if crate::credentials::is_operators_own(&key.credentials) {
                vec![true; read.len()]
            } else {
                state.keeps(&read)
            };
            for (workspace, kept) in read.into_iter().zip(keeps) {
                let name = workspace.name.to_lowercase();
                if !kept {
                    merged.unnamed_running += usize::from(entry::running(&workspace));
                    continue;
                }
                merged.kept_ids.push(workspace.id.clone());
                if let Some(existing) = state.workspaces.get(&name)
                    && existing.read_at > read_started
                {
                    continue;
                }
                let entry = Entry::new(workspace);
                let changed = state.workspaces.get(&name).is_none_or(|old| old.digest != entry.digest);
                if entry.in_transition {
                    state.read_soon.insert(entry.id.to_string());
                }
                state.workspaces.insert(name.clone(), entry);
                // Before the first complete list, the resources wait for
                // its end ([`Shared::listed`]), not for each of its pages.
                if changed
                    && state.listed_at.is_some()
                    && let Some(resources) = state.interested.get(&name)
                {
                    to_wake.extend(resources.iter().cloned());
                }
            }
        }
        self.wake(to_wake);
        merged
    }

    /// A list of everything (merged page by page) has ended. When it was
    /// complete (`unnamed_running` is then what it counted), the workspaces
    /// it did not have (`seen`: their lowercase names) and that were not
    /// read since it began are gone, deleted or renamed. When it was cut
    /// short, nothing is concluded from what it lacks: the workspaces held
    /// are read again by id (and the names without any were read one by
    /// one first, [`Shared::unread_names`]).
    fn listed(&self, key: &OwnerKey, seen: &HashSet<String>, read_started: Instant, unnamed_running: Option<usize>) {
        let mut to_wake = Vec::new();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let Some(state) = owners.get_mut(key) else { return };
            let unseen = |(name, entry): (&String, &Entry)| !seen.contains(name) && entry.read_at <= read_started;
            if let Some(unnamed_running) = unnamed_running {
                let gone: Vec<String> =
                    state.workspaces.iter().filter(|e| unseen(*e)).map(|(n, _)| n.clone()).collect();
                for name in gone {
                    state.workspaces.remove(&name);
                    if let Some(resources) = state.interested.get(&name) {
                        to_wake.extend(resources.iter().cloned());
                    }
                }
                state.unnamed_running = unnamed_running;
                state.running_baseline_due = false;
            } else {
                let held: Vec<String> =
                    state.workspaces.iter().filter(|e| unseen(*e)).map(|(_, entry)| entry.id.to_string()).collect();
                state.read_soon.extend(held);
                state.running_baseline_due = true;
            }
            let first = state.listed_at.is_none();
            state.listed_at = Some(Instant::now());
            state.full_list_due = false;
            if first {
                // Everything that registered before the first list waits
                // for it.
                to_wake = state.interested.values().flatten().cloned().collect();
            }
        }
        self.wake(to_wake);
    }

    /// The names resources give that a list cut short did not have (`seen`)
    /// and that the index holds nothing of.
    fn unread_names(&self, key: &OwnerKey, seen: &HashSet<String>) -> Vec<String> {
        let owners = self.owners.lock().expect("index owners");
        let Some(state) = owners.get(key) else { return Vec::new() };
        state
            .interested
            .keys()
            .filter(|name| !seen.contains(*name) && !state.workspaces.contains_key(*name))
            .cloned()
            .collect()
    }

    /// coderd counts `running` workspaces of the owner: whether that differs
    /// from what the index knows (then everything is listed again). After a
    /// list cut short the count is taken as the new baseline instead.
    fn running_count_differs(&self, key: &OwnerKey, count: i64) -> bool {
        let mut owners = self.owners.lock().expect("index owners");
        let Some(state) = owners.get_mut(key) else { return false };
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let named_running = state.workspaces.values().filter(|e| e.running).count();
        if state.running_baseline_due {
            state.running_baseline_due = false;
            state.unnamed_running = count.saturating_sub(named_running);
            return false;
        }
        count != named_running + state.unnamed_running
    }

    /// Drops what the index knows of workspace `id` (read by id and not
    /// found: deleted), waking its resources.
    fn remove_id(&self, key: &OwnerKey, id: &str) {
        let mut to_wake = Vec::new();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let Some(state) = owners.get_mut(key) else { return };
            let names: Vec<String> =
                state.workspaces.iter().filter(|(_, e)| &*e.id == id).map(|(n, _)| n.clone()).collect();
            for name in names {
                state.workspaces.remove(&name);
                if let Some(resources) = state.interested.get(&name) {
                    to_wake.extend(resources.iter().cloned());
                }
            }
        }
        self.wake(to_wake);
    }
}

impl Shared {
    /// Records how the owner's latest poll ended; a change of that wakes the
    /// owner's resources, so that they report it (or stop reporting it).
    fn poll_ended(&self, key: &OwnerKey, error: Option<&CoderError>) {
        let to_wake = {
            let mut owners = self.owners.lock().expect("index owners");
            let Some(state) = owners.get_mut(key) else { return };
            let changed = state.last_error.as_ref().map(CoderError::reason) != error.map(CoderError::reason);
            state.last_error = error.cloned();
            if !changed {
                return;
            }
            state.interested.values().flatten().cloned().collect::<Vec<_>>()
        };
        self.wake(to_wake);
    }
}

/// The owner state's poll inputs, taken under the lock.
struct PollPlan {
    client: CoderClient,
    query_owner: String,
    full: bool,
    read_ids: Vec<String>,
    /// How many workspace names the owner's resources give: what bounds
    /// the pages of a list.
    named: usize,
    /// The operator's own default credentials: its admin's coderd, whose
    /// lists are read whole and kept whole, as they are needed when
    /// thousands of resources register after a list (a start). A coderd a
    /// tenant's Secret names gets the bounds.
    trusted: bool,
    wake_poller: Arc<Notify>,
}

/// What [`Shared::merge`] did with a read.
#[derive(Default)]
struct Merged {
    /// Running workspaces that no resource names (not kept).
    unnamed_running: usize,
    /// The ids of the workspaces kept.
    kept_ids: Vec<String>,
}

impl OwnerState {
    /// Which of the workspaces read from Coder the index holds: only those a
    /// resource names, by name or (renamed in Coder since) by the id held.
    /// Whatever else a coderd lists costs the operator nothing to keep.
    fn keeps(&self, read: &[Workspace]) -> Vec<bool> {
        // The ids held, gathered once a read and only if some workspace in
        // it is not named.
        let mut held: Option<HashSet<&str>> = None;
        read.iter()
            .map(|workspace| {
                self.interested.contains_key(&workspace.name.to_lowercase())
                    || held
                        .get_or_insert_with(|| self.workspaces.values().map(|entry| &*entry.id).collect())
                        .contains(workspace.id.as_str())
            })
            .collect()
    }
}

impl Shared {
    /// What the owner's next poll must do; `None` when no resource watches
    /// the owner any more (the poller ends).
    fn plan(&self, key: &OwnerKey, full_due: bool) -> Option<PollPlan> {
        let mut owners = self.owners.lock().expect("index owners");
        let state = owners.get_mut(key)?;
        if state.interested.is_empty() {
            state.poller_running = false;
            // Keep nothing of an owner no resource names.
            owners.remove(key);
            return None;
        }
        let client = state.client.clone()?;
        let full = full_due || state.full_list_due || state.listed_at.is_none();
        let read_ids: Vec<String> = state.read_soon.drain().collect();
        Some(PollPlan {
            client,
            query_owner: state.query_owner.clone(),
            full,
            read_ids,
            named: state.interested.len(),
            trusted: crate::credentials::is_operators_own(&key.credentials),
            wake_poller: state.wake_poller.clone(),
        })
    }
}

/// `Weak` upgrade for background tasks: they end with the index.
fn upgrade(shared: &Weak<Shared>) -> Option<Arc<Shared>> {
    shared.upgrade()
}

/// The resources that watch workspace `name` of `key`.
impl Shared {
    fn interested_in(&self, key: &OwnerKey, name: &str) -> Vec<ResourceKey> {
        let owners = self.owners.lock().expect("index owners");
        owners
            .get(key)
            .and_then(|state| state.interested.get(&name.to_lowercase()))
            .map(|set| set.to_vec())
            .unwrap_or_default()
    }
}

/// For the prober: the chat agents to keep probed, with the client, the
/// probe timeout and the resources to wake.
pub(crate) struct ProbeTarget {
    /// The key of the credentials the agent was seen through.
    pub credentials: String,
    pub agent_id: String,
    pub client: CoderClient,
    pub timeout: Duration,
    pub owner: Arc<OwnerKey>,
    pub name: Box<str>,
}

impl ProbeTarget {
    fn agent(&self) -> (String, String) {
        (self.credentials.clone(), self.agent_id.clone())
    }
}

impl ProbeOutcome {
    /// Whether two outcomes mean the same to the decision core.
    fn same_kind(&self, other: &ProbeOutcome) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[cfg(test)]
mod tests {
    use super::entry::tests::{agent, workspace};
    use super::*;
    use crate::coder::SessionToken;

    fn credentials(key: &str) -> Resolved {
        let client =
            CoderClient::new("https://coder.example.com", SessionToken::new("t").unwrap(), Duration::from_secs(1))
                .expect("a client");
        Resolved { client, key: key.to_owned() }
    }

    fn named(id: &str, name: &str, running: bool) -> Workspace {
        let mut workspace = workspace(
            if running { "start" } else { "stop" },
            "succeeded",
            serde_json::json!([agent("a-1", "main", "connected")]),
        );
        workspace.id = id.to_owned();
        workspace.name = name.to_owned();
        workspace
    }

    /// An index whose owner `alice` (default credentials) has resources
    /// naming `names`.
    fn watching(names: &[&str]) -> (CoderIndex, Arc<OwnerKey>) {
        let index = CoderIndex::new(IndexSettings::default(), None);
        let key = Arc::new(OwnerKey::new(&credentials("default"), "alice"));
        let mut owners = index.shared.owners.lock().unwrap();
        let state = owners.entry(key.clone()).or_default();
        for name in names {
            state.interested.insert((*name).to_owned(), vec![ResourceKey::from_text(format!("ns/{name}"))]);
        }
        drop(owners);
        (index, key)
    }

    #[tokio::test]
    async fn only_the_workspaces_resources_name_are_kept() {
        let (index, key) = watching(&["chat-1"]);
        let listed = vec![
            named("id-1", "Chat-1", true),
            named("id-2", "someone-elses", true),
            named("id-3", "stopped-one", false),
        ];
        let merged = index.shared.merge(&key, listed, Instant::now());
        assert_eq!(merged.kept_ids, ["id-1"]);
        // Not kept, but counted where coderd's `status:running` counts it.
        assert_eq!(merged.unnamed_running, 1);
        let owners = index.shared.owners.lock().unwrap();
        let held: Vec<&String> = owners[&key].workspaces.keys().collect();
        assert_eq!(held, ["chat-1"]);
    }

    #[tokio::test]
    async fn a_workspace_renamed_in_coder_is_still_kept_by_its_id() {
        let (index, key) = watching(&["chat-1"]);
        index.shared.merge(&key, vec![named("id-1", "chat-1", true)], Instant::now());
        let started = Instant::now();
        let listed = vec![named("id-1", "renamed", true), named("id-9", "other", true)];
        let merged = index.shared.merge(&key, listed, started);
        assert_eq!(merged.kept_ids, ["id-1"]);
        let seen = HashSet::from(["renamed".to_owned(), "other".to_owned()]);
        index.shared.listed(&key, &seen, started, Some(merged.unnamed_running));
        let owners = index.shared.owners.lock().unwrap();
        let held: Vec<&String> = owners[&key].workspaces.keys().collect();
        assert_eq!(held, ["renamed"]);
        assert_eq!(owners[&key].unnamed_running, 1);
    }

    #[tokio::test]
    async fn a_probe_answered_by_one_coderd_is_not_anothers() {
        let index = CoderIndex::new(IndexSettings::default(), None);
        let (tenant, default) = (credentials("secret:team/coder@https://tenant.example"), credentials("default"));
        // The tenant's coderd says the agent with this id answers...
        index.shared.probes.record(&tenant.key, "agent-of-default", ProbeOutcome::Reachable, false);
        assert!(index.probe(&tenant, "agent-of-default").is_some());
        // ...which says nothing of the default coderd's agent of that id.
        assert!(index.probe(&default, "agent-of-default").is_none());
        index.shared.probes.record(&default.key, "agent-of-default", ProbeOutcome::TimedOut, false);
        let record = index.probe(&default, "agent-of-default").expect("its own probe");
        assert_eq!(record.outcome, ProbeOutcome::TimedOut);
        assert!(index.probe(&tenant, "agent-of-default").is_some_and(|r| r.outcome.is_reachable()));
    }
}
