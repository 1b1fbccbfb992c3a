//! The Coder index: what the operator knows about the Coder workspaces that
//! `ChatWorkspace`s name, kept up to date in the background, so a reconcile
//! reads it synchronously instead of asking Coder.
//!
//! One poller per credentials (a coderd and a token) looks at Coder with
//! coderd's own search filters, across every owner at once (`poller`):
//! often at what needs attention (agents that are not healthy, builds under
//! way, a change in how many workspaces run), and rarely at everything (the
//! full paged list, as a backstop). What it reads is kept per owner, and
//! only for the workspaces resources name: of the rest, only a hash of the
//! owner and name and the workspace's id, so that a resource registering
//! after a list knows whether its workspace exists without a read of its
//! own (the names that came late are read by id, a hundred per request,
//! across owners). Neither the number of owners nor the workspaces no
//! resource names drive the cost. A prober
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
    /// The client the prober uses: the latest one a resource brought (a
    /// rotated token replaces it).
    client: Option<CoderClient>,
    /// When the state was made: a list that began before then may have
    /// passed over this owner's workspaces without keeping them.
    since: Option<Instant>,
    /// The owner as resources spell it, for queries.
    query_owner: String,
    /// Name (lowercase) → workspace, for the workspaces of the owner that a
    /// resource names ([`OwnerState::keeps`]): what a coderd lists beyond
    /// them is never held.
    workspaces: HashMap<String, Entry>,
    /// Name (lowercase) → the resources that name it.
    interested: HashMap<String, Vec<ResourceKey>>,
    /// Names resources gave after a list passed over their workspace
    /// without keeping it: the workspace existed ([`Source::unkept`]), and
    /// it is read by its id before they are answered.
    pending: HashSet<Box<str>>,
    listed_at: Option<Instant>,
    /// The owner's user id as the latest read of one of its workspaces
    /// said, and when: it vouches for a username's resolution
    /// ([`CoderIndex::owner_seen`]).
    seen_as: Option<(Box<str>, Instant)>,
    /// The chats bound to the watched workspaces.
    chats: chats::OwnerChats,
}

/// What one credentials' poller needs across all the owners it serves.
#[derive(Default)]
struct Source {
    /// The client the poller uses ([`CoderClient::for_observation`]): the
    /// latest one a resource brought.
    client: Option<CoderClient>,
    /// When the first list of everything (across owners) ended.
    listed_at: Option<Instant>,
    /// Running workspaces that no kept entry holds, as of the last complete
    /// list: part of what coderd's `status:running` counts.
    unnamed_running: usize,
    /// The last list was cut short: the next `status:running` count is
    /// taken as it is, since the list could not say how many run.
    running_baseline_due: bool,
    /// Workspace ids the next poll reads on their own (the operator just
    /// built them, or they just left the unhealthy list).
    read_soon: HashSet<String>,
    /// Workspaces the last attention poll found unhealthy.
    unhealthy: HashSet<String>,
    /// [`name_hash`] of each workspace the lists read and did not keep (no
    /// resource named it then) → its id, as of the last list of
    /// everything: 24 bytes each instead of the workspace, so that a name
    /// given later is known to exist (it is read by that id, with the other
    /// late names) or not (absent, no read).
    unkept: HashMap<u64, WorkspaceId>,
    poller_running: bool,
    wake_poller: Arc<Notify>,
    /// Why the latest poll failed, until one succeeds.
    last_error: Option<CoderError>,
}

/// The shared index. Cheap to clone.
#[derive(Clone)]
pub struct CoderIndex {
    shared: Arc<Shared>,
}

struct Shared {
    settings: IndexSettings,
    owners: Mutex<HashMap<Arc<OwnerKey>, OwnerState>>,
    /// Credentials key → its poller's state. Locked after `owners`, never
    /// before.
    sources: Mutex<HashMap<String, Source>>,
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
            sources: Mutex::default(),
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
        let mut sources = self.shared.sources.lock().expect("index sources");
        let source = sources.entry(credentials.key.clone()).or_default();
        let state = owners
            .entry(owner_key.clone())
            .or_insert_with(|| OwnerState::new(source, crate::credentials::is_operators_own(&credentials.key)));
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
        source.client = Some(credentials.client.for_observation());
        if !source.poller_running {
            source.poller_running = true;
            poller::spawn(Arc::downgrade(&self.shared), credentials.key.clone(), source.wake_poller.clone());
        }
        if state.listed_at.is_none() && source.listed_at.is_some() {
            // A first list of this owner alone (a tenant's coderd, whose
            // lists keep only the names resources gave).
            source.wake_poller.notify_one();
        }
        if let Some(error) = &source.last_error
            && (state.listed_at.is_none() || !error.is_retryable())
        {
            // A resource brings the credentials it resolved now (a rotated
            // token, say): let the poller try them at once.
            source.wake_poller.notify_one();
            return Lookup::Failing(error.clone());
        }
        if state.listed_at.is_none() || state.pending.contains(name.as_str()) {
            return Lookup::Unknown;
        }
        match state.workspaces.get(&name) {
            Some(entry) => Lookup::Present(entry.workspace()),
            None if source.unkept.contains_key(&name_hash(&owner_key.owner, &name)) => {
                // A list passed over it before this resource named it: the
                // poller's next tick reads it by id, with every name that
                // came late meanwhile (the poller is not woken for each).
                state.pending.insert(name.into());
                Lookup::Unknown
            }
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

    /// The user id that Coder, through `credentials_key`, last gave the
    /// owner named `username` on one of its workspaces, and when it was
    /// read: what a username's resolution can be kept alive by, without
    /// reading the user again (thousands of owners would otherwise each
    /// cost a read every few minutes).
    pub fn owner_seen(&self, credentials_key: &str, username: &str) -> Option<(String, Instant)> {
        let key = OwnerKey { credentials: credentials_key.to_owned(), owner: username.to_lowercase() };
        let owners = self.shared.owners.lock().expect("index owners");
        owners.get(&key)?.seen_as.as_ref().map(|(id, at)| (id.to_string(), *at))
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
        let mut sources = self.shared.sources.lock().expect("index sources");
        let source = sources.entry(credentials.key.clone()).or_default();
        let state = owners
            .entry(Arc::new(key))
            .or_insert_with(|| OwnerState::new(source, crate::credentials::is_operators_own(&credentials.key)));
        let name = name.to_lowercase();
        match workspace {
            Some(workspace) => {
                let entry = Entry::new(workspace);
                if entry.in_transition {
                    source.read_soon.insert(entry.id.to_string());
                    // The chat's binding and context are read again once
                    // the build (and its agent's start) is over.
                    state.chats.after_build(&entry.id);
                    source.wake_poller.notify_one();
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

    /// Merges workspaces read from Coder (of any owners) into their owners'
    /// states, waking the resources whose workspace changed in a way the
    /// decision core sees. Entries recorded after `read_started` are newer
    /// than this read and are kept. Only the workspaces resources name are
    /// kept: of the others (an owner no resource names costs nothing), a
    /// hash ([`Merged::unkept`]).
    fn merge(&self, credentials: &str, read: Vec<Workspace>, read_started: Instant) -> Merged {
        let mut to_wake = Vec::new();
        let mut merged = Merged::default();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let mut sources = self.sources.lock().expect("index sources");
            let Some(source) = sources.get_mut(credentials) else { return merged };
            // One owner's workspaces at a time: coderd lists them together.
            let mut by_owner: Vec<(String, Vec<Workspace>)> = Vec::new();
            for workspace in read {
                let owner = workspace.owner_name.to_lowercase();
                match by_owner.last_mut() {
                    Some((last, group)) if *last == owner => group.push(workspace),
                    _ => by_owner.push((owner, vec![workspace])),
                }
            }
            for (owner, read) in by_owner {
                let key = OwnerKey { credentials: credentials.to_owned(), owner };
                let Some(state) = owners.get_mut(&key) else {
                    for workspace in &read {
                        merged.pass_over(&key.owner, workspace);
                    }
                    continue;
                };
                if let Some(first) = read.first() {
                    state.seen_as = Some((first.owner_id.to_lowercase().into(), read_started));
                }
                let keeps = state.keeps(&read);
                for (workspace, kept) in read.into_iter().zip(keeps) {
                    if !kept {
                        merged.pass_over(&key.owner, &workspace);
                        continue;
                    }
                    let name = workspace.name.to_lowercase();
                    merged.kept_ids.push(workspace.id.clone());
                    if let Some(existing) = state.workspaces.get(&name)
                        && existing.read_at > read_started
                    {
                        continue;
                    }
                    let entry = Entry::new(workspace);
                    let changed = state.workspaces.get(&name).is_none_or(|old| old.digest != entry.digest);
                    let resources = state.interested.get(&name);
                    // Only a named workspace is followed (one kept by its
                    // id, renamed in Coder, is not named any more).
                    if entry.in_transition && resources.is_some() {
                        source.read_soon.insert(entry.id.to_string());
                    }
                    // Before the owner's first complete list, the resources
                    // wait for its end ([`Shared::listed`]), not for each of
                    // its pages.
                    if changed
                        && state.listed_at.is_some()
                        && let Some(resources) = resources
                    {
                        to_wake.extend(resources.iter().cloned());
                    }
                    state.workspaces.insert(name, entry);
                }
            }
        }
        self.wake(to_wake);
        merged
    }

    /// A list of everything (merged page by page) has ended: across owners
    /// (`owner` `None`) or of one owner. When it was complete
    /// (`unnamed_running` is then what it counted), the workspaces it did
    /// not have (`seen`: lowercase owner and name) and that were not read
    /// since it began were renamed (dropped under the old name) or are read
    /// by id before anything is concluded (a paged list can pass over one
    /// that moved in coderd's order meanwhile). When it was cut short,
    /// nothing is concluded from what it lacks: the workspaces held are read
    /// again by id (and the names without any were read one by one first,
    /// [`Shared::unread_names`]). `unkept`: what the list passed over
    /// ([`Merged::unkept`]); the names resources gave since its pages
    /// passed over their workspace wait for a read by id.
    fn listed(
        &self,
        credentials: &str,
        owner: Option<&OwnerKey>,
        seen: &HashSet<(String, String)>,
        read_started: Instant,
        unnamed_running: Option<usize>,
        unkept: Vec<(u64, WorkspaceId)>,
    ) {
        let mut to_wake = Vec::new();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let mut sources = self.sources.lock().expect("index sources");
            let Some(source) = sources.get_mut(credentials) else { return };
            let trusted = crate::credentials::is_operators_own(credentials);
            if owner.is_none() && unnamed_running.is_some() {
                // A complete list of everything: what it passed over is all
                // there is to know of.
                source.unkept = unkept.into_iter().collect();
            } else {
                source.unkept.extend(unkept);
            }
            for (key, state) in owners.iter_mut() {
                if key.credentials != credentials || owner.is_some_and(|owner| **key != *owner) {
                    continue;
                }
                // A tenant's list kept only the owners known when it began.
                if owner.is_none() && !trusted && state.since.is_some_and(|since| since > read_started) {
                    continue;
                }
                let unseen = |(name, entry): (&String, &Entry)| {
                    !seen.contains(&(key.owner.clone(), name.clone())) && entry.read_at <= read_started
                };
                if unnamed_running.is_some() {
                    // Held under a name the list did not have: renamed, when
                    // the list had its id under another name; else gone, or
                    // only skipped (a workspace that stops or is deleted
                    // during a list moves the later ones a place up in
                    // coderd's order, so an offset can pass over one), which
                    // a read by id tells apart before anything is dropped.
                    let unseen: Vec<(String, Box<str>)> = state
                        .workspaces
                        .iter()
                        .filter(|e| unseen(*e))
                        .map(|(n, e)| (n.clone(), e.id.clone()))
                        .collect();
                    for (name, id) in unseen {
                        let renamed = state.workspaces.iter().any(|(other, entry)| *other != name && entry.id == id);
                        if !renamed {
                            source.read_soon.insert(id.to_string());
                            continue;
                        }
                        state.workspaces.remove(&name);
                        if let Some(resources) = state.interested.get(&name) {
                            to_wake.extend(resources.iter().cloned());
                        }
                    }
                    // A name the list did not have does not exist (or not
                    // any more): it waits for no list.
                    for name in state.interested.keys() {
                        if !seen.contains(&(key.owner.clone(), name.clone())) {
                            source.unkept.remove(&name_hash(&key.owner, name));
                        }
                    }
                } else {
                    let held = state.workspaces.iter().filter(|e| unseen(*e)).map(|(_, entry)| entry.id.to_string());
                    source.read_soon.extend(held);
                }
                let was_pending = std::mem::take(&mut state.pending);
                state.pending = late_names(&key.owner, state, &source.unkept);
                for name in was_pending.difference(&state.pending) {
                    to_wake.extend(state.interested.get(&**name).into_iter().flatten().cloned());
                }
                if state.listed_at.is_none() {
                    // Everything that registered before the owner's first
                    // list waits for it.
                    to_wake.extend(state.interested.values().flatten().cloned());
                }
                state.listed_at = Some(Instant::now());
            }
            match (owner, unnamed_running) {
                (None, Some(unnamed_running)) => {
                    source.unnamed_running = unnamed_running;
                    source.running_baseline_due = false;
                }
                // One owner's list, or a list cut short, cannot say how many
                // run: the next count is the baseline.
                _ => source.running_baseline_due = true,
            }
            if owner.is_none() {
                source.listed_at = Some(Instant::now());
            }
        }
        self.wake(to_wake);
    }

    /// The workspaces with the ids `asked` were read (late names' ids,
    /// [`PollPlan::late_ids`]), and merged: what the read passed over
    /// (`unkept`, renamed since the list) is recorded, and each pending name
    /// that stood for one of these ids is answered, present if the read kept
    /// it under that name, absent if not (deleted, or renamed since).
    fn late_read(&self, credentials: &str, asked: &[String], unkept: Vec<(u64, WorkspaceId)>) {
        let asked: HashSet<WorkspaceId> = asked.iter().filter_map(|id| WorkspaceId::parse(id)).collect();
        let mut to_wake = Vec::new();
        {
            let mut owners = self.owners.lock().expect("index owners");
            let mut sources = self.sources.lock().expect("index sources");
            let Some(source) = sources.get_mut(credentials) else { return };
            source.unkept.extend(unkept);
            for (key, state) in owners.iter_mut().filter(|(key, _)| key.credentials == credentials) {
                let answered: Vec<Box<str>> = state
                    .pending
                    .iter()
                    .filter(|name| source.unkept.get(&name_hash(&key.owner, name)).is_none_or(|id| asked.contains(id)))
                    .cloned()
                    .collect();
                for name in answered {
                    state.pending.remove(&name);
                    if !state.workspaces.contains_key(&*name) {
                        source.unkept.remove(&name_hash(&key.owner, &name));
                    }
                    to_wake.extend(state.interested.get(&*name).into_iter().flatten().cloned());
                }
            }
            // What the read kept was counted among the running workspaces
            // no resource names: the next count is the baseline, as after
            // one owner's list.
            source.running_baseline_due = true;
        }
        self.wake(to_wake);
    }

    /// The names resources give that a list cut short did not have (`seen`)
    /// and that the index holds nothing of: (owner as resources spell it,
    /// name).
    fn unread_names(&self, credentials: &str, seen: &HashSet<(String, String)>) -> Vec<(String, String)> {
        let owners = self.owners.lock().expect("index owners");
        let mut names = Vec::new();
        for (key, state) in owners.iter().filter(|(key, _)| key.credentials == credentials) {
            for name in state.interested.keys() {
                if !seen.contains(&(key.owner.clone(), name.clone())) && !state.workspaces.contains_key(name) {
                    names.push((state.query_owner.clone(), name.clone()));
                }
            }
        }
        names
    }

    /// coderd counts the `running` workspaces this token sees: whether that
    /// differs from what the index knows (then everything is listed again).
    /// After a list cut short the count is taken as the new baseline
    /// instead.
    fn running_count_differs(&self, credentials: &str, count: i64) -> bool {
        let owners = self.owners.lock().expect("index owners");
        let mut sources = self.sources.lock().expect("index sources");
        let Some(source) = sources.get_mut(credentials) else { return false };
        let kept_running: usize = owners
            .iter()
            .filter(|(key, _)| key.credentials == credentials)
            .map(|(_, state)| state.workspaces.values().filter(|e| e.running).count())
            .sum();
        match running_count(count, kept_running, source.unnamed_running, source.running_baseline_due) {
            RunningCount::Baseline(unnamed_running) => {
                source.running_baseline_due = false;
                source.unnamed_running = unnamed_running;
                false
            }
            RunningCount::Same => false,
            RunningCount::Differs => true,
        }
    }

    /// The ids of the workspaces the index holds for these credentials, in
    /// one order (sorted), so that pages of them are the same from one
    /// count to the next.
    fn held_ids(&self, credentials: &str) -> Vec<String> {
        let owners = self.owners.lock().expect("index owners");
        let mut ids: Vec<String> = owners
            .iter()
            .filter(|(key, _)| key.credentials == credentials)
            .flat_map(|(_, state)| state.workspaces.values().map(|entry| entry.id.to_string()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// How many of the workspaces with these ids the index holds as
    /// running.
    fn running_among(&self, credentials: &str, ids: &[String]) -> usize {
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let owners = self.owners.lock().expect("index owners");
        let running: HashSet<&str> = owners
            .iter()
            .filter(|(key, _)| key.credentials == credentials)
            .flat_map(|(_, state)| state.workspaces.values())
            .filter(|entry| entry.running && ids.contains(&*entry.id))
            .map(|entry| &*entry.id)
            .collect();
        running.len()
    }

    /// Every workspace the index holds agrees with coderd, yet coderd
    /// counts `count` running: the difference is among the workspaces no
    /// resource names, whose count this becomes.
    fn unnamed_running_is(&self, credentials: &str, count: i64) {
        if let Some(source) = self.sources.lock().expect("index sources").get_mut(credentials) {
            source.running_baseline_due = true;
        }
        // Taken as the baseline, as after a list cut short.
        self.running_count_differs(credentials, count);
    }

    /// Drops what the index knows of workspace `id` (read by id and not
    /// found: deleted), waking its resources.
    fn remove_id(&self, credentials: &str, id: &str) {
        let mut to_wake = Vec::new();
        {
            let mut owners = self.owners.lock().expect("index owners");
            for (_, state) in owners.iter_mut().filter(|(key, _)| key.credentials == credentials) {
                let names: Vec<String> =
                    state.workspaces.iter().filter(|(_, e)| &*e.id == id).map(|(n, _)| n.clone()).collect();
                for name in names {
                    state.workspaces.remove(&name);
                    if let Some(resources) = state.interested.get(&name) {
                        to_wake.extend(resources.iter().cloned());
                    }
                }
            }
        }
        self.wake(to_wake);
    }

    /// The ids of the workspaces found unhealthy now (`now_unhealthy`):
    /// those that left the list since the last poll (healthy again, or
    /// stopped, or gone) are read by id.
    fn unhealthy_now(&self, credentials: &str, now_unhealthy: HashSet<String>) {
        let mut sources = self.sources.lock().expect("index sources");
        if let Some(source) = sources.get_mut(credentials) {
            let recovered: Vec<String> = source.unhealthy.difference(&now_unhealthy).cloned().collect();
            source.read_soon.extend(recovered);
            source.unhealthy = now_unhealthy;
        }
    }

    fn requeue_reads(&self, credentials: &str, ids: Vec<String>) {
        if let Some(source) = self.sources.lock().expect("index sources").get_mut(credentials) {
            source.read_soon.extend(ids);
        }
    }
}

impl Shared {
    /// Records how the latest poll of these credentials ended; a change of
    /// that wakes their resources, so that they report it (or stop
    /// reporting it).
    fn poll_ended(&self, credentials: &str, error: Option<&CoderError>) {
        let to_wake = {
            let owners = self.owners.lock().expect("index owners");
            let mut sources = self.sources.lock().expect("index sources");
            let Some(source) = sources.get_mut(credentials) else { return };
            let changed = source.last_error.as_ref().map(CoderError::reason) != error.map(CoderError::reason);
            source.last_error = error.cloned();
            if !changed {
                return;
            }
            owners
                .iter()
                .filter(|(key, _)| key.credentials == credentials)
                .flat_map(|(_, state)| state.interested.values().flatten().cloned())
                .collect::<Vec<_>>()
        };
        self.wake(to_wake);
    }
}

/// What coderd's count of running workspaces says against the index.
#[derive(Debug, PartialEq, Eq)]
enum RunningCount {
    /// As many as the index holds and passed over: nothing started or
    /// stopped outside its view.
    Same,
    /// Something started or stopped outside the index's view.
    Differs,
    /// The count after a list cut short, which could not count what it
    /// did not reach: the running workspaces no resource names, from now on.
    Baseline(usize),
}

/// `count` running workspaces in coderd, against the `kept_running` the
/// index holds and the `unnamed_running` it passed over.
fn running_count(count: i64, kept_running: usize, unnamed_running: usize, baseline_due: bool) -> RunningCount {
    // A count below zero is no count a coderd gives: it differs.
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if baseline_due {
        RunningCount::Baseline(count.saturating_sub(kept_running))
    } else if count == kept_running.saturating_add(unnamed_running) {
        RunningCount::Same
    } else {
        RunningCount::Differs
    }
}

/// One credentials' poll inputs, taken under the lock.
struct PollPlan {
    client: CoderClient,
    full: bool,
    /// The list of everything is the periodic backstop, not the first one
    /// (which resources wait for): its pages are spread out.
    backstop: bool,
    read_ids: Vec<String>,
    /// Owners that need a list of their own: of a tenant's coderd,
    /// registered after its list began.
    unlisted: Vec<Arc<OwnerKey>>,
    /// The ids of the workspaces that names given after a list passed over
    /// them stand for ([`OwnerState::pending`]), of every owner: read
    /// together, a page of ids per request.
    late_ids: Vec<String>,
    /// The owners with resources, for their chats.
    owners: Vec<Arc<OwnerKey>>,
    /// How many workspace names the resources give: what bounds the pages
    /// of a list.
    named: usize,
    /// The operator's own default credentials: its admin's coderd, whose
    /// lists are read whole, so that what they pass over is known
    /// ([`Source::unkept`]) when thousands of resources register after a
    /// list (a start). A coderd a tenant's Secret names gets the bounds.
    trusted: bool,
}

/// What [`Shared::merge`] did with a read.
#[derive(Default)]
struct Merged {
    /// Running workspaces that no resource names (not kept).
    unnamed_running: usize,
    /// The ids of the workspaces kept.
    kept_ids: Vec<String>,
    /// [`name_hash`] and id of each workspace not kept.
    unkept: Vec<(u64, WorkspaceId)>,
}

impl Merged {
    /// A workspace read and not kept: counted, and known to exist. coderd's
    /// ids are UUIDs; one that is not could not be read by id, and is not
    /// recorded (a name given later for it is absent, and a create of it is
    /// refused by coderd as a name taken).
    fn pass_over(&mut self, owner: &str, workspace: &Workspace) {
        self.unnamed_running += usize::from(entry::running(workspace));
        if let Some(id) = WorkspaceId::parse(&workspace.id) {
            self.unkept.push((name_hash(owner, &workspace.name.to_lowercase()), id));
        }
    }
}

/// A workspace's id as coderd gives it (a UUID), in 16 bytes rather than
/// a string's 36 and its allocation: what the index keeps of the
/// workspaces no resource names, to read them by id when one is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct WorkspaceId([u8; 16]);

impl WorkspaceId {
    fn parse(text: &str) -> Option<Self> {
        let groups: Vec<&str> = text.split('-').collect();
        if !groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12]) {
            return None;
        }
        let digits = groups.concat();
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(&digits, 16).ok().map(|value| Self(value.to_be_bytes()))
    }
}

impl std::fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = u128::from_be_bytes(self.0);
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            value >> 96,
            (value >> 80) & 0xffff,
            (value >> 64) & 0xffff,
            (value >> 48) & 0xffff,
            value & 0xffff_ffff_ffff
        )
    }
}

/// A workspace's owner and name (both lowercase), hashed: what the index
/// keeps of a workspace that no resource names. The hasher's keys are
/// fixed, so the same workspace hashes the same in every list; two that
/// collide cost an id read too many, never a wrong answer (the read says
/// which owner and name the id has).
fn name_hash(owner: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (owner, name).hash(&mut hasher);
    hasher.finish()
}

/// The names resources give of `owner` whose workspace a list passed over
/// without keeping (it exists, and is not held).
fn late_names(owner: &str, state: &OwnerState, unkept: &HashMap<u64, WorkspaceId>) -> HashSet<Box<str>> {
    state
        .interested
        .keys()
        .filter(|name| !state.workspaces.contains_key(*name) && unkept.contains_key(&name_hash(owner, name)))
        .map(|name| name.as_str().into())
        .collect()
}

impl OwnerState {
    /// A new owner's state, for `source`'s credentials. An owner of the
    /// operator's own coderd counts as listed by the latest list: what it
    /// passed over of the owner is known ([`Source::unkept`]), and only the
    /// names that need it wait for a read by id. A tenant's coderd,
    /// whose lists may be cut short, lists a new owner on its own.
    fn new(source: &Source, trusted: bool) -> Self {
        Self { since: Some(Instant::now()), listed_at: source.listed_at.filter(|_| trusted), ..Self::default() }
    }

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
    /// What the next poll of `credentials` must do; `None` when no resource
    /// uses them any more (the poller ends).
    fn plan(&self, credentials: &str, full_due: bool) -> Option<PollPlan> {
        let mut owners = self.owners.lock().expect("index owners");
        let mut sources = self.sources.lock().expect("index sources");
        let trusted = crate::credentials::is_operators_own(credentials);
        // Keep nothing of an owner no resource names any more: what was
        // held of it counts as passed over.
        let (mut dropped_running, mut dropped) = (0, Vec::new());
        owners.retain(|key, state| {
            let keep = key.credentials != credentials || !state.interested.is_empty();
            if !keep {
                dropped_running += state.workspaces.values().filter(|entry| entry.running).count();
                dropped.extend(
                    state.workspaces.iter().filter_map(|(name, entry)| {
                        Some((name_hash(&key.owner, name), WorkspaceId::parse(&entry.id)?))
                    }),
                );
            }
            keep
        });
        if let Some(source) = sources.get_mut(credentials) {
            source.unnamed_running += dropped_running;
            source.unkept.extend(dropped);
        }
        let mut named = 0;
        let mut with_resources = Vec::new();
        let mut unlisted = Vec::new();
        let mut late_ids = HashSet::new();
        let unkept = sources.get(credentials).map(|source| &source.unkept);
        for (key, state) in owners.iter().filter(|(key, _)| key.credentials == credentials) {
            if state.interested.is_empty() {
                continue;
            }
            named += state.interested.len();
            with_resources.push(key.clone());
            if state.listed_at.is_none() {
                unlisted.push(key.clone());
            }
            let ids = state.pending.iter().filter_map(|name| unkept?.get(&name_hash(&key.owner, name)));
            late_ids.extend(ids.copied());
        }
        let source = sources.get_mut(credentials)?;
        if with_resources.is_empty() {
            source.poller_running = false;
            sources.remove(credentials);
            owners.retain(|key, _| key.credentials != credentials);
            return None;
        }
        let client = source.client.clone()?;
        let full = full_due || source.listed_at.is_none();
        if full {
            unlisted.clear();
        }
        Some(PollPlan {
            client,
            full,
            backstop: full && source.listed_at.is_some(),
            read_ids: source.read_soon.drain().collect(),
            unlisted,
            late_ids: late_ids.iter().map(WorkspaceId::to_string).collect(),
            owners: with_resources,
            named,
            trusted,
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
        workspace.owner_name = "alice".to_owned();
        workspace
    }

    fn owned_by(owner: &str, workspace: Workspace) -> Workspace {
        Workspace { owner_name: owner.to_owned(), ..workspace }
    }

    /// An index whose owner `alice` (of a tenant's credentials `tenant`)
    /// has resources naming `names`.
    fn watching(names: &[&str]) -> (CoderIndex, Arc<OwnerKey>) {
        watching_through("tenant", "alice", names)
    }

    fn watching_through(credentials_key: &str, owner: &str, names: &[&str]) -> (CoderIndex, Arc<OwnerKey>) {
        let index = CoderIndex::new(IndexSettings::default(), None);
        let key = Arc::new(OwnerKey::new(&credentials(credentials_key), owner));
        index.shared.sources.lock().unwrap().entry(key.credentials.clone()).or_default();
        let mut owners = index.shared.owners.lock().unwrap();
        let state = owners.entry(key.clone()).or_default();
        for name in names {
            state.interested.insert((*name).to_owned(), vec![ResourceKey::from_text(format!("ns/{name}"))]);
        }
        drop(owners);
        (index, key)
    }

    #[test]
    fn a_running_count_other_than_what_the_index_holds_and_passed_over_differs() {
        assert_eq!(running_count(5, 3, 2, false), RunningCount::Same);
        assert_eq!(running_count(6, 3, 2, false), RunningCount::Differs, "one started outside the index");
        assert_eq!(running_count(4, 3, 2, false), RunningCount::Differs, "one stopped outside the index");
        assert_eq!(running_count(-1, 3, 2, false), RunningCount::Differs);
        assert_eq!(running_count(0, 0, 0, false), RunningCount::Same);
    }

    #[test]
    fn after_a_list_cut_short_the_running_count_is_the_new_baseline_not_a_change() {
        assert_eq!(running_count(50, 3, 0, true), RunningCount::Baseline(47));
        // Fewer than the index holds (they stopped since): none unnamed.
        assert_eq!(running_count(2, 3, 9, true), RunningCount::Baseline(0));
    }

    #[tokio::test]
    async fn a_stop_made_in_coder_seen_while_its_build_runs_explains_the_running_count() {
        let (index, key) = watching(&["chat-1"]);
        let started = Instant::now();
        let merged = index.shared.merge(&key.credentials, vec![named("id-1", "chat-1", true)], started);
        index.shared.listed(&key.credentials, None, &seen(&["chat-1"]), started, Some(merged.unnamed_running), vec![]);
        assert!(!index.shared.running_count_differs(&key.credentials, 1));
        // Stopped in Coder: one fewer running than the index holds.
        assert!(index.shared.running_count_differs(&key.credentials, 0));
        // `status:stopping` shows it with its build under way.
        let mut stopping = workspace("stop", "running", serde_json::json!([]));
        stopping.id = "id-1".to_owned();
        stopping.name = "chat-1".to_owned();
        stopping.owner_name = "alice".to_owned();
        index.shared.merge(&key.credentials, vec![stopping], Instant::now());
        assert!(!index.shared.running_count_differs(&key.credentials, 0), "explained without a list of everything");
        let sources = index.shared.sources.lock().unwrap();
        assert!(sources[&key.credentials].read_soon.contains("id-1"), "followed until its build ends");
    }

    fn seen(names: &[&str]) -> HashSet<(String, String)> {
        names.iter().map(|name| ("alice".to_owned(), (*name).to_owned())).collect()
    }

    #[tokio::test]
    async fn only_the_workspaces_resources_name_are_kept() {
        let (index, key) = watching(&["chat-1"]);
        let listed = vec![
            named("id-1", "Chat-1", true),
            named("id-2", "someone-elses", true),
            named("id-3", "stopped-one", false),
        ];
        let merged = index.shared.merge(&key.credentials, listed, Instant::now());
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
        index.shared.merge(&key.credentials, vec![named("id-1", "chat-1", true)], Instant::now());
        let started = Instant::now();
        let listed = vec![named("id-1", "renamed", true), named("id-9", "other", true)];
        let merged = index.shared.merge(&key.credentials, listed, started);
        assert_eq!(merged.kept_ids, ["id-1"]);
        index.shared.listed(
            &key.credentials,
            None,
            &seen(&["renamed", "other"]),
            started,
            Some(merged.unnamed_running),
            merged.unkept,
        );
        let owners = index.shared.owners.lock().unwrap();
        let held: Vec<&String> = owners[&key].workspaces.keys().collect();
        assert_eq!(held, ["renamed"]);
        assert_eq!(index.shared.sources.lock().unwrap()[&key.credentials].unnamed_running, 1);
    }

    #[tokio::test]
    async fn a_named_workspace_a_complete_list_passed_over_is_read_by_id_before_it_is_dropped() {
        let (index, key) = watching(&["chat-1", "chat-2"]);
        let started = Instant::now();
        let listed = vec![named("id-1", "chat-1", true), named("id-2", "chat-2", true)];
        let merged = index.shared.merge(&key.credentials, listed, started);
        index.shared.listed(
            &key.credentials,
            None,
            &seen(&["chat-1", "chat-2"]),
            started,
            Some(merged.unnamed_running),
            vec![],
        );
        index.shared.sources.lock().unwrap().get_mut(&key.credentials).unwrap().read_soon.clear();

        // A later list whose offsets passed over chat-2 (or it is gone).
        let started = Instant::now();
        let merged = index.shared.merge(&key.credentials, vec![named("id-1", "chat-1", true)], started);
        index.shared.listed(&key.credentials, None, &seen(&["chat-1"]), started, Some(merged.unnamed_running), vec![]);
        let held: HashSet<String> = index.shared.owners.lock().unwrap()[&key].workspaces.keys().cloned().collect();
        assert!(held.contains("chat-2"), "not dropped on the list's word alone: {held:?}");
        assert!(index.shared.sources.lock().unwrap()[&key.credentials].read_soon.contains("id-2"), "read by id next");

        // The read by id finds nothing: gone.
        index.shared.remove_id(&key.credentials, "id-2");
        let owners = index.shared.owners.lock().unwrap();
        let held: Vec<&String> = owners[&key].workspaces.keys().collect();
        assert_eq!(held, ["chat-1"]);
    }

    #[tokio::test]
    async fn one_list_across_owners_is_kept_by_owner_and_owners_no_resource_names_are_dropped() {
        let (index, alice) = watching(&["chat-1"]);
        let bob = Arc::new(OwnerKey { credentials: alice.credentials.clone(), owner: "bob".to_owned() });
        index
            .shared
            .owners
            .lock()
            .unwrap()
            .entry(bob.clone())
            .or_default()
            .interested
            .insert("chat-1".to_owned(), vec![ResourceKey::from_text("ns/bob-chat".to_owned())]);
        // coderd lists owners together, in order of username.
        let listed = vec![
            named("id-a", "chat-1", true),
            owned_by("Bob", named("id-b", "chat-1", true)),
            owned_by("carol", named("id-c", "chat-1", true)),
            owned_by("carol", named("id-d", "ide", false)),
        ];
        let merged = index.shared.merge(&alice.credentials, listed, Instant::now());
        assert_eq!(merged.kept_ids, ["id-a", "id-b"]);
        // Carol's running workspace is counted, never kept.
        assert_eq!(merged.unnamed_running, 1);
        let owners = index.shared.owners.lock().unwrap();
        assert_eq!(&*owners[&alice].workspaces["chat-1"].id, "id-a");
        assert_eq!(&*owners[&bob].workspaces["chat-1"].id, "id-b");
        assert_eq!(owners.len(), 2, "no state for an owner no resource names");
    }

    /// A resource named `name`, for [`CoderIndex::observe`].
    fn resource(name: &str) -> ChatWorkspace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"template": {"name": "docker"}},
        }))
        .expect("a resource")
    }

    fn seen_in(read: &[Workspace]) -> HashSet<(String, String)> {
        read.iter().map(|w| (w.owner_name.to_lowercase(), w.name.to_lowercase())).collect()
    }

    /// Lists `read` as a complete list (of everything, or of `owner`).
    fn list(index: &CoderIndex, credentials: &str, owner: Option<&OwnerKey>, read: Vec<Workspace>) -> Merged {
        let started = Instant::now();
        let seen = seen_in(&read);
        let mut merged = index.shared.merge(credentials, read, started);
        let unkept = std::mem::take(&mut merged.unkept);
        index.shared.listed(credentials, owner, &seen, started, Some(merged.unnamed_running), unkept);
        merged
    }

    /// The owners the next poll lists on their own, and the ids it reads
    /// for the names that came late.
    fn planned(index: &CoderIndex, credentials: &str) -> (Vec<String>, Vec<String>) {
        let plan = index.shared.plan(credentials, false).expect("a plan");
        assert!(!plan.full);
        let mut owners: Vec<String> = plan.unlisted.iter().map(|key| key.owner.clone()).collect();
        owners.sort();
        let mut ids = plan.late_ids;
        ids.sort();
        (owners, ids)
    }

    /// The poller's read of late names' ids (`asked`), which found `found`.
    fn read_late(index: &CoderIndex, credentials: &str, asked: &[String], found: Vec<Workspace>) {
        let merged = index.shared.merge(credentials, found, Instant::now());
        index.shared.late_read(credentials, asked, merged.unkept);
    }

    const IDE: &str = "00000000-0000-4000-8000-00000000000a";
    const CHAT_9: &str = "00000000-0000-4000-8000-00000000000c";
    const CAROLS_IDE: &str = "00000000-0000-4000-8000-00000000000d";
    const GONE: &str = "00000000-0000-4000-8000-00000000000e";

    #[tokio::test]
    async fn the_operators_own_coderd_keeps_only_what_resources_name_and_reads_late_names_by_id() {
        let default = credentials("default@https://coder.example.com");
        let (index, alice) = watching_through(&default.key, "alice", &["chat-1"]);
        // Registrations in this test start no poller.
        index.shared.sources.lock().unwrap().get_mut(&default.key).unwrap().poller_running = true;
        let merged = list(
            &index,
            &default.key,
            None,
            vec![
                named("id-a", "chat-1", true),
                named(IDE, "ide", true),
                named(GONE, "gone", false),
                owned_by("carol", named(CHAT_9, "chat-9", true)),
                owned_by("carol", named(CAROLS_IDE, "ide", false)),
            ],
        );
        assert_eq!(merged.kept_ids, ["id-a"]);
        assert_eq!(merged.unnamed_running, 2, "counted where coderd's `status:running` counts them");
        {
            let owners = index.shared.owners.lock().unwrap();
            assert_eq!(owners.len(), 1, "no state for an owner no resource names");
            assert_eq!(owners[&alice].workspaces.keys().collect::<Vec<_>>(), ["chat-1"]);
        }
        // Resources that register after the list: a workspace it passed
        // over waits for a read by its id; a name it did not have is
        // absent at once, without a read.
        for (owner, name) in [("alice", "ide"), ("alice", "gone"), ("carol", "chat-9")] {
            assert!(matches!(index.observe(&resource(name), &default, owner, name), Lookup::Unknown), "{name}");
        }
        assert!(matches!(index.observe(&resource("new"), &default, "carol", "new"), Lookup::Absent));
        assert!(matches!(index.observe(&resource("chat-1"), &default, "alice", "chat-1"), Lookup::Present(_)));
        // One read of their ids, across owners; no owner is listed. Until it
        // answers (a failed poll), they are asked for again.
        let expected = vec![IDE.to_owned(), CHAT_9.to_owned(), GONE.to_owned()];
        let (owners, ids) = planned(&index, &default.key);
        assert!(owners.is_empty(), "an owner listed for a late name: {owners:?}");
        assert_eq!(ids, expected);
        assert_eq!(planned(&index, &default.key).1, expected);
        // Meanwhile alice's `ide` was renamed and `gone` deleted: the read by
        // id says so, and only carol's `chat-9` is there.
        let found = vec![owned_by("carol", named(CHAT_9, "chat-9", true)), named(IDE, "ide-old", true)];
        read_late(&index, &default.key, &ids, found);
        assert!(matches!(index.observe(&resource("chat-9"), &default, "carol", "chat-9"), Lookup::Present(_)));
        assert!(matches!(index.observe(&resource("ide"), &default, "alice", "ide"), Lookup::Absent));
        assert!(matches!(index.observe(&resource("gone"), &default, "alice", "gone"), Lookup::Absent));
        assert_eq!(planned(&index, &default.key), (vec![], vec![]), "nothing more to read");
        // The renamed workspace is known under its new name.
        assert!(matches!(index.observe(&resource("ide-old"), &default, "alice", "ide-old"), Lookup::Unknown));
        assert_eq!(planned(&index, &default.key).1, [IDE]);
    }

    #[test]
    fn a_workspace_id_is_kept_in_sixteen_bytes_and_given_back_as_coderd_spells_it() {
        let id = WorkspaceId::parse("0b6a2c1e-9f3d-4e57-a1b2-c3d4e5f60789").expect("a UUID");
        assert_eq!(id.to_string(), "0b6a2c1e-9f3d-4e57-a1b2-c3d4e5f60789");
        assert_eq!(WorkspaceId::parse("0B6A2C1E-9F3D-4E57-A1B2-C3D4E5F60789"), Some(id));
        assert_eq!(std::mem::size_of::<(u64, WorkspaceId)>(), 24);
        for not_an_id in ["id-a", "", "0b6a2c1e9f3d4e57a1b2c3d4e5f60789", "+b6a2c1e-9f3d-4e57-a1b2-c3d4e5f60789"] {
            assert_eq!(WorkspaceId::parse(not_an_id), None, "{not_an_id}");
        }
    }

    #[tokio::test]
    async fn an_owner_no_resource_names_any_more_is_dropped_and_its_workspaces_known_to_exist() {
        let default = credentials("default@https://coder.example.com");
        let (index, alice) = watching_through(&default.key, "alice", &["chat-1"]);
        index.shared.sources.lock().unwrap().get_mut(&default.key).unwrap().poller_running = true;
        let bob = credentials(&default.key);
        assert!(matches!(index.observe(&resource("bobs"), &bob, "bob", "bobs"), Lookup::Unknown));
        list(
            &index,
            &default.key,
            None,
            vec![named("id-a", "chat-1", true), owned_by("bob", named(CHAT_9, "bobs", true))],
        );
        assert!(matches!(index.observe(&resource("bobs"), &bob, "bob", "bobs"), Lookup::Present(_)));
        index.forget(&ObjectRef::new("bobs").within("ns"));
        index.shared.plan(&default.key, false).expect("a plan");
        assert_eq!(index.shared.owners.lock().unwrap().len(), 1);
        let sources = index.shared.sources.lock().unwrap();
        assert_eq!(sources[&alice.credentials].unnamed_running, 1, "bob's running workspace is still counted");
        let unkept = &sources[&alice.credentials].unkept;
        assert_eq!(unkept.get(&name_hash("bob", "bobs")), WorkspaceId::parse(CHAT_9).as_ref());
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
