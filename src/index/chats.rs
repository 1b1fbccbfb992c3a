//! The chats bound to the watched workspaces, per owner, read with few
//! requests: one `by-workspace` lookup serves 25 workspaces and says which
//! chat each is bound to; a chat's details (status, sub-agents, context)
//! are read only when that binding changes, once the operator's own build
//! of the workspace is over, and otherwise every `chat_detail_interval`.
//! The credentials' poller runs this after its workspace poll, for all the
//! owners it serves at once: a lookup takes workspaces of any owners, so a
//! thousand owners with a few workspaces each cost what one owner with all
//! of them would. One request at a time, under the token's shared rate
//! limit.
//!
//! The planning is plain functions over plain data, unit-tested without a
//! server: how a round is paced ([`round_pace`], [`lookups_now`]), how the
//! owners' lookups are batched ([`merge`]), when a chat's details are read
//! ([`detail_read`], [`DetailBudget`]), and what a lookup answer and a read
//! change and whom they wake ([`take_lookup`], [`take_read`]). `plan` and
//! `run` are the loop around them that holds the index's lock and talks to
//! coderd.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{IndexSettings, OwnerKey, Shared};
use crate::coder::{Chat, CoderClient, CoderError, MAX_WORKSPACES_PER_CHAT_LOOKUP};

/// How long a Coder without chat routes (or that refuses them) is left
/// alone before they are tried again.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(300);

/// What the index knows of a workspace's chat, for a reconcile.
#[derive(Clone, Debug)]
pub enum ChatLookup {
    /// Not looked up yet, or its details are not read yet.
    Unknown,
    /// No chat this token can read is bound to the workspace.
    None,
    /// The chat (the root one, with its sub-agent chats).
    Bound(Arc<Chat>),
}

#[derive(Default)]
pub(super) struct OwnerChats {
    /// Workspace id → its chat.
    entries: HashMap<String, ChatEntry>,
    looked_up_at: Option<Instant>,
    /// Workspaces the operator just built: their chat is read again once
    /// the build and the agent's start are over.
    after_build: HashSet<String>,
    unavailable_until: Option<Instant>,
    /// When the watched workspaces were last gone through, which the poller
    /// does at most every `PLAN_EVERY`, not at every one of its turns.
    planned_at: Option<Instant>,
    /// The workspaces this round has still to look up: a round is spread
    /// over the interval rather than sent at once.
    round_left: Vec<String>,
    /// Lookups (of 25) per plan in the current round.
    round_pace: usize,
}

/// Detail reads on the slow cadence, shared by every owner: a token bucket
/// filled at `chat_detail_budget_per_minute`, holding at most a minute's
/// worth. Reads that something asked for (a new binding, the operator's
/// build) do not wait for it.
#[derive(Debug)]
pub(super) struct DetailBudget {
    tokens: f64,
    filled_at: Instant,
}

impl Default for DetailBudget {
    fn default() -> Self {
        Self { tokens: 0.0, filled_at: Instant::now() }
    }
}

impl DetailBudget {
    /// Up to `wanted` slow-cadence reads at `now`, as many as the budget has.
    fn take(&mut self, per_minute: u32, wanted: usize, now: Instant) -> usize {
        let rate = f64::from(per_minute) / 60.0;
        let filled = now.saturating_duration_since(self.filled_at).as_secs_f64() * rate;
        self.tokens = (self.tokens + filled).min(f64::from(per_minute));
        self.filled_at = self.filled_at.max(now);
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

/// How often the watched workspaces are gone through for what is due.
const PLAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct ChatEntry {
    /// What the last lookup said: `None` for no chat.
    looked_up: Option<String>,
    chat: Option<Arc<Chat>>,
    read_at: Option<Instant>,
    /// When the operator last recorded a chat it read or changed itself: a
    /// poll that began before then holds an older view.
    recorded_at: Option<Instant>,
    details_due: bool,
    /// When the operator's build of the workspace settled. coderd v2.36.1
    /// rebinds a chat to the new agent only on the chat's next turn, so for
    /// one detail interval after it a chat still bound to another agent is
    /// read at the lookup cadence, not at the slow one.
    built_at: Option<Instant>,
}

impl ChatEntry {
    /// Whether `id` is the chat already held: the root or one of its
    /// sub-agent chats (the lookup answers the latest updated of them).
    fn holds(&self, id: &str) -> bool {
        self.chat.as_ref().is_some_and(|chat| chat.id == id || chat.children.iter().any(|c| c.id == id))
    }
}

impl OwnerChats {
    pub(super) fn after_build(&mut self, workspace_id: &str) {
        self.after_build.insert(workspace_id.to_string());
    }

    pub(super) fn lookup(&self, workspace_id: &str) -> ChatLookup {
        match self.entries.get(workspace_id) {
            None => ChatLookup::Unknown,
            Some(entry) => match (&entry.looked_up, &entry.chat) {
                (None, _) => ChatLookup::None,
                (Some(_), Some(chat)) => ChatLookup::Bound(chat.clone()),
                (Some(_), None) => ChatLookup::Unknown,
            },
        }
    }

    /// Takes in what a chat request answered: a full read replaces the
    /// chat; the answer of a write (which carries no sub-agents) updates
    /// the root or the sub-agent it is.
    pub(super) fn record(&mut self, workspace_id: &str, chat: Chat, full: bool) {
        let entry = self.entries.entry(workspace_id.to_string()).or_default();
        entry.recorded_at = Some(Instant::now());
        if full {
            entry.looked_up = Some(chat.id.clone());
            entry.chat = Some(Arc::new(chat));
            entry.read_at = Some(Instant::now());
            entry.details_due = false;
            return;
        }
        let Some(held) = entry.chat.as_ref() else {
            entry.details_due = true;
            return;
        };
        let mut updated = Chat::clone(held);
        if updated.id == chat.id {
            let children = std::mem::take(&mut updated.children);
            updated = Chat { children, ..chat };
        } else if let Some(child) = updated.children.iter_mut().find(|c| c.id == chat.id) {
            *child = chat;
        } else {
            entry.details_due = true;
            return;
        }
        entry.chat = Some(Arc::new(updated));
    }
}

/// One round for the owners of one credentials; problems are logged, never
/// the poller's error.
pub(super) async fn poll(index: &Shared, owners: &[Arc<OwnerKey>], client: &CoderClient) {
    let plans: Vec<(Arc<OwnerKey>, Plan)> =
        owners.iter().filter_map(|key| plan(index, key).map(|plan| (key.clone(), plan))).collect();
    if plans.is_empty() {
        return;
    }
    if let Err(error) = run(index, client, plans).await {
        if matches!(error, CoderError::NotFound { .. } | CoderError::Forbidden { .. }) {
            // No chat routes here (an older coderd), or not for this token.
            warn!(%error, "cannot read chats; trying again in 5 minutes");
            let mut states = index.owners.lock().expect("index owners");
            for key in owners {
                if let Some(state) = states.get_mut(key) {
                    state.chats.unavailable_until = Some(Instant::now() + UNAVAILABLE_PAUSE);
                }
            }
        } else {
            debug!(%error, "chat poll failed; trying again next round");
        }
    }
}

struct Plan {
    /// Every watched workspace (id, name) when a lookup is due.
    lookup: Vec<(String, String)>,
    /// (workspace id, name, chat id) whose details to read.
    details: Vec<(String, String, String)>,
}

fn plan(index: &Shared, key: &OwnerKey) -> Option<Plan> {
    let settings = index.settings;
    let mut owners = index.owners.lock().expect("index owners");
    let state = owners.get_mut(key)?;
    if state.chats.unavailable_until.is_some_and(|until| until > Instant::now()) {
        return None;
    }
    let gap = PLAN_EVERY.min(settings.chat_interval);
    if state.chats.planned_at.is_some_and(|at| at.elapsed() < gap) {
        return None;
    }
    let now = Instant::now();
    state.chats.planned_at = Some(now);
    // Borrowed, not copied: this runs every second over every workspace.
    let super::OwnerState { interested, workspaces, chats, .. } = state;
    // (id, name, a build or agent start under way, the chat agent now)
    let watched: Vec<(&str, &str, bool, Option<&str>)> = interested
        .keys()
        .filter_map(|name| {
            let entry = workspaces.get(name)?;
            Some((&*entry.id, name.as_str(), entry.in_transition, entry.chat_agent_id()))
        })
        .collect();
    let ids: HashSet<&str> = watched.iter().map(|(id, ..)| *id).collect();
    chats.entries.retain(|id, _| ids.contains(id.as_str()));
    chats.after_build.retain(|id| ids.contains(id.as_str()));
    let round_due = chats.looked_up_at.is_none_or(|at| at.elapsed() >= settings.chat_interval);
    if round_due && chats.round_left.is_empty() {
        chats.round_left = watched.iter().map(|(id, ..)| (*id).to_owned()).collect();
        chats.round_pace = round_pace(settings.chat_interval, chats.round_left.len());
        // The first round sets the owner's phase: its next rounds come at
        // the point of the interval its name picks.
        let phase =
            if chats.looked_up_at.is_none() { round_phase(&key.owner, settings.chat_interval) } else { Duration::ZERO };
        chats.looked_up_at = Some(now.checked_sub(phase).unwrap_or(now));
    }
    let mut details = Vec::new();
    let mut slow = Vec::new();
    for &(id, name, busy, chat_agent) in &watched {
        let settled_after_build = !busy && chats.after_build.contains(id);
        let Some(entry) = chats.entries.get_mut(id) else { continue };
        let Some(chat_id) = entry.looked_up.clone() else { continue };
        let read = (id.to_owned(), name.to_owned(), entry.chat.as_ref().map_or(chat_id, |c| c.id.clone()));
        if settled_after_build {
            entry.built_at = Some(now);
        }
        match detail_read(entry, settled_after_build, chat_agent, &settings, now) {
            DetailRead::Now => {
                chats.after_build.remove(id);
                details.push(read);
            }
            DetailRead::Slow => slow.push((entry.read_at, read)),
            DetailRead::NotDue => {}
        }
    }
    // The slow cadence, oldest first, within the shared budget.
    slow.sort_by_key(|(read_at, _)| *read_at);
    let granted =
        index.chat_budget.lock().expect("chat budget").take(settings.chat_detail_budget_per_minute, slow.len(), now);
    details.extend(slow.into_iter().take(granted).map(|(_, read)| read));

    let never_looked_up = watched.iter().map(|(id, ..)| *id).filter(|id| !chats.entries.contains_key(*id));
    let wanted = lookups_now(&mut chats.round_left, chats.round_pace, never_looked_up);
    let lookup: Vec<(String, String)> = watched
        .into_iter()
        .filter(|(id, ..)| wanted.contains(*id))
        .map(|(id, name, ..)| (id.to_owned(), name.to_owned()))
        .collect();
    if lookup.is_empty() && details.is_empty() {
        return None;
    }
    Some(Plan { lookup, details })
}

/// How many lookups (of 25 workspaces) each plan of a round sends: the
/// round is spread over half the lookup interval at one plan a second, so a
/// thousand resources cost forty lookups over minutes, not at once.
fn round_pace(chat_interval: Duration, workspaces: usize) -> usize {
    let plans = (chat_interval.as_secs_f64() / 2.0 / PLAN_EVERY.as_secs_f64()).max(1.0);
    let lookups = workspaces.div_ceil(MAX_WORKSPACES_PER_CHAT_LOOKUP) as f64;
    (lookups / plans).ceil().max(1.0) as usize
}

/// Points of the chat interval an owner's rounds may come at.
const PHASES: u32 = 30;

/// How far into the chat interval an owner's rounds come, picked by its
/// name: one of [`PHASES`] points. Thousands of owners whose first rounds
/// came together (the operator's start) would otherwise look up at the same
/// moment every interval, hundreds of lookups within a minute; owners of
/// one phase still share their lookups (25 workspaces a request).
fn round_phase(owner: &str, chat_interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same phase in every process.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut hasher);
    let point = u32::try_from(hasher.finish() % u64::from(PHASES)).unwrap_or(0);
    chat_interval / PHASES * point
}

/// The workspaces this plan looks up: its share (`pace` lookups) of what
/// the round has left, and every workspace never looked up (a new
/// resource) at once.
fn lookups_now<'a>(
    round_left: &mut Vec<String>,
    pace: usize,
    never_looked_up: impl Iterator<Item = &'a str>,
) -> HashSet<String> {
    let take = (pace * MAX_WORKSPACES_PER_CHAT_LOOKUP).min(round_left.len());
    let mut wanted: HashSet<String> = round_left.drain(..take).collect();
    wanted.extend(never_looked_up.map(str::to_owned));
    wanted
}

/// When a bound chat's details are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DetailRead {
    /// In this plan: never read, asked for, or the operator's build settled.
    Now,
    /// On the slow cadence, within the shared budget.
    Slow,
    NotDue,
}

/// Whether the details of `entry`'s chat are read at `now`. After the
/// operator's build, for one detail interval, a chat still bound to another
/// agent than `chat_agent` (coderd rebinds it on its next turn only) is read
/// at the lookup cadence; otherwise every detail interval.
fn detail_read(
    entry: &ChatEntry,
    settled_after_build: bool,
    chat_agent: Option<&str>,
    settings: &IndexSettings,
    now: Instant,
) -> DetailRead {
    let since = |at: Instant| now.saturating_duration_since(at);
    let on_other_agent = chat_agent.is_some_and(|current| {
        entry.chat.as_ref().is_some_and(|c| {
            std::iter::once(&**c)
                .chain(c.children.iter())
                .any(|c| c.agent_id.as_deref().is_some_and(|agent| agent != current))
        })
    });
    let rebind_read_due = on_other_agent
        && entry.built_at.is_some_and(|at| since(at) < settings.chat_detail_interval)
        && entry.read_at.is_none_or(|at| since(at) >= settings.chat_interval);
    if entry.chat.is_none() || entry.details_due || settled_after_build || rebind_read_due {
        DetailRead::Now
    } else if entry.read_at.is_none_or(|at| since(at) >= settings.chat_detail_interval) {
        DetailRead::Slow
    } else {
        DetailRead::NotDue
    }
}

/// What one workspace's answer in a `by-workspace` lookup changed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Looked {
    /// No chat is bound (any more, or on the first lookup): its resources
    /// learn it.
    Unbound,
    /// The chat already held (or still none).
    Unchanged,
    /// A new binding: its details are read next.
    Bound(String),
}

/// Takes one workspace's lookup answer (`first`: never looked up before).
fn take_lookup(entry: &mut ChatEntry, first: bool, answer: Option<&str>) -> Looked {
    match answer {
        None if entry.looked_up.is_some() || first => {
            entry.looked_up = None;
            entry.chat = None;
            Looked::Unbound
        }
        None => Looked::Unchanged,
        Some(chat_id) if entry.holds(chat_id) => Looked::Unchanged,
        Some(chat_id) => {
            entry.looked_up = Some(chat_id.to_owned());
            entry.chat = None;
            Looked::Bound(chat_id.to_owned())
        }
    }
}

/// What a read of a chat's details, begun at `started`, changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// The operator recorded the chat after the read began (an interrupt,
    /// a re-pin): the read is older, and dropped.
    Older,
    /// The chat is gone (deleted, or no longer the token's to read): the
    /// workspace is forgotten, looked up again, and its resources woken.
    Gone,
    /// Its resources are woken.
    Changed,
    Unchanged,
}

/// Takes a read of the chat's details (`None`: gone) completed at `now`.
fn take_read(entry: &mut ChatEntry, chat: Option<Chat>, started: Instant, now: Instant) -> Read {
    if entry.recorded_at.is_some_and(|at| at > started) {
        return Read::Older;
    }
    let Some(chat) = chat else { return Read::Gone };
    let before = entry.chat.replace(Arc::new(chat));
    entry.read_at = Some(now);
    entry.details_due = false;
    if before == entry.chat { Read::Unchanged } else { Read::Changed }
}

/// A workspace to look up: (owner, workspace id, workspace name).
type WorkspaceOf<K> = (K, String, String);
/// A chat to read: (owner, workspace id, workspace name, chat id).
type ChatOf<K> = (K, String, String, String);

/// Lookups and reads of every owner's plan together: a lookup takes
/// workspaces of any owners, so the lookups are sent in batches of 25 across
/// owners.
fn merge<K: Clone>(plans: Vec<(K, Plan)>) -> (Vec<WorkspaceOf<K>>, Vec<ChatOf<K>>) {
    let mut lookup = Vec::new();
    let mut details = Vec::new();
    for (key, plan) in plans {
        details.extend(plan.details.into_iter().map(|(id, name, chat)| (key.clone(), id, name, chat)));
        lookup.extend(plan.lookup.into_iter().map(|(id, name)| (key.clone(), id, name)));
    }
    (lookup, details)
}

async fn run(index: &Shared, client: &CoderClient, plans: Vec<(Arc<OwnerKey>, Plan)>) -> Result<(), CoderError> {
    let (lookup, mut details) = merge(plans);
    let mut to_wake: Vec<(Arc<OwnerKey>, String)> = Vec::new();
    for batch in lookup.chunks(MAX_WORKSPACES_PER_CHAT_LOOKUP) {
        let ids: Vec<String> = batch.iter().map(|(_, id, _)| id.clone()).collect();
        let bound = client.chats_by_workspace(&ids).await?;
        let mut owners = index.owners.lock().expect("index owners");
        for (key, id, name) in batch {
            let Some(state) = owners.get_mut(key) else { continue };
            let first = !state.chats.entries.contains_key(id);
            let entry = state.chats.entries.entry(id.clone()).or_default();
            match take_lookup(entry, first, bound.get(id).map(String::as_str)) {
                Looked::Unbound => to_wake.push((key.clone(), name.clone())),
                Looked::Unchanged => {}
                Looked::Bound(chat_id) => {
                    if !details.iter().any(|(_, ws, _, _)| ws == id) {
                        details.push((key.clone(), id.clone(), name.clone(), chat_id));
                    }
                }
            }
        }
    }
    for (key, workspace_id, name, chat_id) in details {
        let started = Instant::now();
        let chat = match read_root(client, &chat_id).await {
            Ok(chat) => Some(chat),
            // Deleted, or no longer the caller's to read: look it up again.
            Err(CoderError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let mut owners = index.owners.lock().expect("index owners");
        let Some(state) = owners.get_mut(&key) else { continue };
        let entry = state.chats.entries.entry(workspace_id.clone()).or_default();
        match take_read(entry, chat, started, Instant::now()) {
            Read::Older => continue,
            Read::Gone => {
                state.chats.entries.remove(&workspace_id);
                to_wake.push((key.clone(), name));
                continue;
            }
            Read::Changed => to_wake.push((key.clone(), name.clone())),
            Read::Unchanged => {}
        }
        // A read once the operator's build has settled is the read that
        // build asked for (a chat bound after it was read right here).
        if state.workspaces.get(&name).is_some_and(|workspace| !workspace.in_transition)
            && state.chats.after_build.remove(&workspace_id)
        {
            let entry = state.chats.entries.entry(workspace_id).or_default();
            entry.built_at = Some(Instant::now());
        }
    }
    let resources: Vec<_> = to_wake.iter().flat_map(|(key, name)| index.interested_in(key, name)).collect();
    index.wake(resources);
    Ok(())
}

/// The chat, or its root when the lookup answered a sub-agent chat.
async fn read_root(client: &CoderClient, id: &str) -> Result<Chat, CoderError> {
    let chat = client.chat(id).await?;
    match chat.root_chat_id.clone().or_else(|| chat.parent_chat_id.clone()) {
        Some(root) if root != chat.id => client.chat(&root).await,
        _ => Ok(chat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: &str, status: &str, agent: &str, children: Vec<Chat>) -> Chat {
        serde_json::from_value(serde_json::json!({
            "id": id, "status": status, "agent_id": agent, "children": [],
        }))
        .map(|chat: Chat| Chat { children, ..chat })
        .unwrap()
    }

    #[test]
    fn a_lookup_is_unknown_until_the_details_are_read() {
        let mut chats = OwnerChats::default();
        assert!(matches!(chats.lookup("ws-1"), ChatLookup::Unknown));
        chats.entries.insert("ws-1".into(), ChatEntry { looked_up: Some("chat-1".into()), ..ChatEntry::default() });
        assert!(matches!(chats.lookup("ws-1"), ChatLookup::Unknown));
        chats.entries.insert("ws-2".into(), ChatEntry::default());
        assert!(matches!(chats.lookup("ws-2"), ChatLookup::None));
        chats.record("ws-1", chat("chat-1", "waiting", "a1", vec![]), true);
        assert!(matches!(chats.lookup("ws-1"), ChatLookup::Bound(c) if c.id == "chat-1"));
    }

    #[test]
    fn the_answer_of_a_write_updates_the_root_or_its_sub_agent_and_keeps_the_rest() {
        let mut chats = OwnerChats::default();
        let sub = chat("sub-1", "running", "a0", vec![]);
        chats.record("ws-1", chat("chat-1", "running", "a0", vec![sub]), true);

        // A write's answer carries no children.
        chats.record("ws-1", chat("chat-1", "interrupting", "a1", vec![]), false);
        chats.record("ws-1", chat("sub-1", "interrupting", "a1", vec![]), false);
        let ChatLookup::Bound(held) = chats.lookup("ws-1") else { panic!("bound") };
        assert_eq!((held.status.as_str(), held.agent_id.as_deref()), ("interrupting", Some("a1")));
        assert_eq!(held.children.len(), 1);
        assert_eq!(held.children[0].status, "interrupting");
        assert!(chats.entries["ws-1"].holds("sub-1"), "a lookup answering the sub-agent chat is no new binding");

        // An answer about a chat it does not hold asks for a read instead.
        chats.record("ws-1", chat("other", "waiting", "a1", vec![]), false);
        assert!(chats.entries["ws-1"].details_due);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_detail_budget_grants_at_most_its_rate_and_a_minute_of_savings() {
        let start = Instant::now();
        let hour_later = start + Duration::from_secs(3600);
        let mut budget = DetailBudget { tokens: 0.0, filled_at: start };
        assert_eq!(budget.take(60, 1000, hour_later), 60, "an idle hour saves one minute's worth");
        assert_eq!(budget.take(60, 1000, hour_later), 0);
        let mut budget = DetailBudget { tokens: 0.0, filled_at: start };
        let ten_seconds = start + Duration::from_secs(10);
        assert_eq!(budget.take(60, 3, ten_seconds), 3);
        assert_eq!(budget.take(60, 100, ten_seconds), 7);
    }
}

#[cfg(test)]
mod planning_tests {
    use super::*;

    fn chat(id: &str, agent: &str, children: Vec<Chat>) -> Chat {
        serde_json::from_value(serde_json::json!({"id": id, "status": "waiting", "agent_id": agent}))
            .map(|chat: Chat| Chat { children, ..chat })
            .expect("a chat")
    }

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|n| format!("ws-{n}")).collect()
    }

    #[test]
    fn owners_rounds_are_spread_over_the_interval_by_name() {
        let interval = Duration::from_secs(300);
        let mut per_phase = HashMap::new();
        for n in 0..2000 {
            let phase = round_phase(&format!("dev-{n:05}"), interval);
            assert!(phase < interval);
            assert_eq!(phase, round_phase(&format!("dev-{n:05}"), interval), "the same owner, the same phase");
            *per_phase.entry(phase).or_insert(0) += 1;
        }
        // 2,000 owners over 30 points: about 67 each, none of them empty
        // or holding a crowd.
        assert_eq!(per_phase.len(), PHASES as usize);
        assert!(per_phase.values().all(|&owners| (30..=110).contains(&owners)), "{per_phase:?}");
    }

    #[tokio::test]
    async fn an_owners_first_round_sets_its_phase_and_its_next_round_comes_that_much_sooner() {
        let interval = Duration::from_secs(300);
        let index =
            super::super::CoderIndex::new(IndexSettings { chat_interval: interval, ..IndexSettings::default() }, None);
        // An owner whose name picks a phase other than the interval's start.
        let owner = (0..).map(|n| format!("dev-{n:05}")).find(|o| round_phase(o, interval) > Duration::ZERO).unwrap();
        let phase = round_phase(&owner, interval);
        let key = Arc::new(OwnerKey { credentials: "default@coder".to_owned(), owner });
        {
            let mut owners = index.shared.owners.lock().unwrap();
            let state = owners.entry(key.clone()).or_default();
            let resource = crate::key::ResourceKey::from_text("ns/chat-1".to_owned());
            state.interested.insert("chat-1".to_owned(), vec![resource]);
            let mut workspace = super::super::entry::tests::workspace("start", "succeeded", serde_json::json!([]));
            workspace.id = "ws-1".to_owned();
            workspace.name = "chat-1".to_owned();
            state.workspaces.insert("chat-1".to_owned(), super::super::entry::Entry::new(workspace));
        }
        let before = Instant::now();
        let first = plan(&index.shared, &key).expect("the first round");
        let after = Instant::now();
        assert_eq!(first.lookup.len(), 1, "looked up at once");
        let looked_up_at = index.shared.owners.lock().unwrap()[&key].chats.looked_up_at.expect("a round");
        assert!(looked_up_at + phase >= before && looked_up_at + phase <= after, "set back by its phase, {phase:?}");
    }

    #[test]
    fn a_round_is_spread_over_half_the_interval_and_new_workspaces_are_looked_up_at_once() {
        let interval = Duration::from_secs(300);
        assert_eq!(round_pace(interval, 0), 1);
        assert_eq!(round_pace(interval, 25 * 150), 1, "150 lookups over 150 plans: one each");
        assert_eq!(round_pace(interval, 25 * 151), 2);
        assert_eq!(round_pace(Duration::from_secs(1), 1000), 40, "an interval under two plans: all at once");

        let mut round_left = ids(0..60);
        let wanted = lookups_now(&mut round_left, 2, std::iter::empty());
        assert_eq!(wanted.len(), 50, "two lookups of 25");
        assert_eq!(round_left, ids(50..60), "the rest waits for the next plans");
        let wanted = lookups_now(&mut round_left, 2, ["new-1", "new-2"].into_iter());
        assert_eq!(wanted.len(), 12, "the round's last ten and two never looked up");
        assert!(wanted.contains("new-1") && round_left.is_empty());
    }

    #[test]
    fn lookups_of_many_owners_are_batched_together() {
        let plan = |first: usize| Plan {
            lookup: ids(first..first + 10).into_iter().map(|id| (id.clone(), id)).collect(),
            details: vec![],
        };
        let (lookup, details) = merge(vec![("alice", plan(0)), ("bob", plan(10)), ("carol", plan(20))]);
        let batches: Vec<usize> = lookup.chunks(MAX_WORKSPACES_PER_CHAT_LOOKUP).map(<[_]>::len).collect();
        assert_eq!(batches, [25, 5], "thirty workspaces of three owners in two lookups");
        assert_eq!(lookup[10].0, "bob");
        assert!(details.is_empty());
    }

    #[test]
    fn a_chat_is_read_when_new_asked_for_or_after_the_operators_build_and_else_on_the_slow_cadence() {
        let settings = IndexSettings::default();
        let start = Instant::now();
        let read = |entry: &ChatEntry, settled, now| detail_read(entry, settled, Some("a1"), &settings, now);
        let mut entry = ChatEntry { looked_up: Some("chat-1".into()), ..ChatEntry::default() };
        assert_eq!(read(&entry, false, start), DetailRead::Now, "bound, never read");

        entry.chat = Some(Arc::new(chat("chat-1", "a1", vec![])));
        entry.read_at = Some(start);
        assert_eq!(read(&entry, false, start), DetailRead::NotDue);
        assert_eq!(read(&entry, true, start), DetailRead::Now, "the operator's build settled");
        assert_eq!(read(&entry, false, start + settings.chat_detail_interval), DetailRead::Slow);
        entry.details_due = true;
        assert_eq!(read(&entry, false, start), DetailRead::Now, "a write answered about another chat");
    }

    #[test]
    fn after_the_operators_build_a_chat_on_another_agent_is_read_at_the_lookup_cadence_for_a_while() {
        let settings = IndexSettings::default();
        let start = Instant::now();
        let sub = chat("sub-1", "old-agent", vec![]);
        let entry = ChatEntry {
            looked_up: Some("chat-1".into()),
            chat: Some(Arc::new(chat("chat-1", "a1", vec![sub]))),
            read_at: Some(start),
            built_at: Some(start),
            ..ChatEntry::default()
        };
        let read = |now| detail_read(&entry, false, Some("a1"), &settings, now);
        assert_eq!(read(start + Duration::from_secs(1)), DetailRead::NotDue, "read just now");
        assert_eq!(read(start + settings.chat_interval), DetailRead::Now, "a sub-agent still on the old agent");
        let no_chat_agent = detail_read(&entry, false, None, &settings, start + settings.chat_interval);
        assert_eq!(no_chat_agent, DetailRead::NotDue, "no chat agent to be rebound to");
        let long_after = start + settings.chat_detail_interval;
        assert_eq!(read(long_after), DetailRead::Slow, "after a detail interval, the slow cadence");
    }

    #[test]
    fn a_lookup_answer_unbinds_binds_anew_or_changes_nothing() {
        let mut entry = ChatEntry::default();
        assert_eq!(take_lookup(&mut entry, true, None), Looked::Unbound, "the first lookup tells of no chat");
        assert_eq!(take_lookup(&mut entry, false, None), Looked::Unchanged, "still none");
        assert_eq!(take_lookup(&mut entry, false, Some("chat-1")), Looked::Bound("chat-1".into()));
        assert_eq!(entry.looked_up.as_deref(), Some("chat-1"));

        entry.chat = Some(Arc::new(chat("chat-1", "a1", vec![chat("sub-1", "a1", vec![])])));
        assert_eq!(take_lookup(&mut entry, false, Some("chat-1")), Looked::Unchanged);
        assert_eq!(take_lookup(&mut entry, false, Some("sub-1")), Looked::Unchanged, "its sub-agent is no new binding");
        assert_eq!(take_lookup(&mut entry, false, Some("chat-2")), Looked::Bound("chat-2".into()));
        assert!(entry.chat.is_none(), "the old chat is not the workspace's any more");
        assert_eq!(take_lookup(&mut entry, false, None), Looked::Unbound);
        assert_eq!(entry.looked_up, None);
    }

    #[test]
    fn a_read_wakes_on_a_change_drops_what_the_operator_recorded_since_and_forgets_a_gone_chat() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut entry = ChatEntry { looked_up: Some("chat-1".into()), details_due: true, ..ChatEntry::default() };
        assert_eq!(take_read(&mut entry, Some(chat("chat-1", "a1", vec![])), start, later), Read::Changed);
        assert_eq!((entry.read_at, entry.details_due), (Some(later), false));
        assert_eq!(take_read(&mut entry, Some(chat("chat-1", "a1", vec![])), start, later), Read::Unchanged);
        assert_eq!(take_read(&mut entry, Some(chat("chat-1", "a2", vec![])), start, later), Read::Changed);

        entry.recorded_at = Some(later);
        assert_eq!(take_read(&mut entry, Some(chat("chat-1", "a3", vec![])), start, later), Read::Older);
        assert_eq!(entry.chat.as_ref().and_then(|c| c.agent_id.as_deref()), Some("a2"), "what was recorded stays");
        assert_eq!(take_read(&mut entry, None, later + Duration::from_secs(1), later), Read::Gone);
    }
}
