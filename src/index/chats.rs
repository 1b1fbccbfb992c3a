//! The chats bound to the watched workspaces, per owner, read with few
//! requests: one `by-workspace` lookup serves 25 workspaces and says which
//! chat each is bound to; a chat's details (status, sub-agents, context)
//! are read only when that binding changes, once the operator's own build
//! of the workspace is over, and otherwise every `chat_detail_interval`.
//! The owner's poller runs this after its workspace poll, so an owner still
//! has at most one request in flight, under the token's shared rate limit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{OwnerKey, Shared};
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
    fn take(&mut self, per_minute: u32, wanted: usize) -> usize {
        let rate = f64::from(per_minute) / 60.0;
        self.tokens = (self.tokens + self.filled_at.elapsed().as_secs_f64() * rate).min(f64::from(per_minute));
        self.filled_at = Instant::now();
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

/// One round for one owner; problems are logged, never the poller's error.
pub(super) async fn poll(index: &Shared, key: &OwnerKey, client: &CoderClient) {
    let Some(plan) = plan(index, key) else { return };
    if let Err(error) = run(index, key, client, plan).await {
        if matches!(error, CoderError::NotFound { .. } | CoderError::Forbidden { .. }) {
            // No chat routes here (an older coderd), or not for this token.
            warn!(owner = %key.owner, %error, "cannot read chats; trying again in 5 minutes");
            if let Some(state) = index.owners.lock().expect("index owners").get_mut(key) {
                state.chats.unavailable_until = Some(Instant::now() + UNAVAILABLE_PAUSE);
            }
        } else {
            debug!(owner = %key.owner, %error, "chat poll failed; trying again next round");
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
    state.chats.planned_at = Some(Instant::now());
    // Borrowed, not copied: this runs every second over every workspace.
    let super::OwnerState { interested, workspaces, chats, .. } = state;
    let watched: Vec<(&str, &str, bool)> = interested
        .keys()
        .filter_map(|name| {
            let entry = workspaces.get(name)?;
            Some((&*entry.id, name.as_str(), entry.in_transition))
        })
        .collect();
    let ids: HashSet<&str> = watched.iter().map(|(id, _, _)| *id).collect();
    chats.entries.retain(|id, _| ids.contains(id.as_str()));
    chats.after_build.retain(|id| ids.contains(id.as_str()));
    let round_due = chats.looked_up_at.is_none_or(|at| at.elapsed() >= settings.chat_interval);
    if round_due && chats.round_left.is_empty() {
        // A new round, spread over half the interval at one plan a second.
        chats.round_left = watched.iter().map(|(id, _, _)| (*id).to_owned()).collect();
        let plans = (settings.chat_interval.as_secs_f64() / 2.0 / PLAN_EVERY.as_secs_f64()).max(1.0);
        let lookups = chats.round_left.len().div_ceil(MAX_WORKSPACES_PER_CHAT_LOOKUP) as f64;
        chats.round_pace = (lookups / plans).ceil().max(1.0) as usize;
        chats.looked_up_at = Some(Instant::now());
    }
    let mut details = Vec::new();
    let mut slow = Vec::new();
    for &(id, name, busy) in &watched {
        let settled_after_build = !busy && chats.after_build.contains(id);
        let Some(entry) = chats.entries.get_mut(id) else { continue };
        let Some(chat_id) = entry.looked_up.clone() else { continue };
        let read = (id.to_owned(), name.to_owned(), entry.chat.as_ref().map_or(chat_id, |c| c.id.clone()));
        if entry.chat.is_none() || entry.details_due || settled_after_build {
            chats.after_build.remove(id);
            details.push(read);
        } else if entry.read_at.is_none_or(|at| at.elapsed() >= settings.chat_detail_interval) {
            slow.push((entry.read_at, read));
        }
    }
    // The slow cadence, oldest first, within the shared budget.
    slow.sort_by_key(|(read_at, _)| *read_at);
    let granted =
        index.chat_budget.lock().expect("chat budget").take(settings.chat_detail_budget_per_minute, slow.len());
    details.extend(slow.into_iter().take(granted).map(|(_, read)| read));

    // This plan's share of the round, and the workspaces never looked up
    // (new resources) at once: a thousand resources created together cost
    // forty lookups, not forty a second.
    let take = (chats.round_pace * MAX_WORKSPACES_PER_CHAT_LOOKUP).min(chats.round_left.len());
    let mut wanted: HashSet<String> = chats.round_left.drain(..take).collect();
    wanted.extend(
        watched.iter().filter(|(id, _, _)| !chats.entries.contains_key(*id)).map(|(id, _, _)| (*id).to_owned()),
    );
    let lookup: Vec<(String, String)> = watched
        .into_iter()
        .filter(|(id, _, _)| wanted.contains(*id))
        .map(|(id, name, _)| (id.to_owned(), name.to_owned()))
        .collect();
    if lookup.is_empty() && details.is_empty() {
        return None;
    }
    Some(Plan { lookup, details })
}

async fn run(index: &Shared, key: &OwnerKey, client: &CoderClient, plan: Plan) -> Result<(), CoderError> {
    let mut details = plan.details;
    let mut to_wake = Vec::new();
    for chunk in plan.lookup.chunks(MAX_WORKSPACES_PER_CHAT_LOOKUP) {
        let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let bound = client.chats_by_workspace(&ids).await?;
        let mut owners = index.owners.lock().expect("index owners");
        let Some(state) = owners.get_mut(key) else { return Ok(()) };
        for (id, name) in chunk {
            let answer = bound.get(id).cloned();
            let first = !state.chats.entries.contains_key(id);
            let entry = state.chats.entries.entry(id.clone()).or_default();
            match &answer {
                None if entry.looked_up.is_some() || first => {
                    entry.looked_up = None;
                    entry.chat = None;
                    to_wake.push(name.clone());
                }
                None => {}
                Some(chat_id) if entry.holds(chat_id) => {}
                Some(chat_id) => {
                    entry.looked_up = Some(chat_id.clone());
                    entry.chat = None;
                    if !details.iter().any(|(ws, _, _)| ws == id) {
                        details.push((id.clone(), name.clone(), chat_id.clone()));
                    }
                }
            }
        }
    }
    for (workspace_id, name, chat_id) in details {
        let started = Instant::now();
        let chat = match read_root(client, &chat_id).await {
            Ok(chat) => Some(chat),
            // Deleted, or no longer the caller's to read: look it up again.
            Err(CoderError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let mut owners = index.owners.lock().expect("index owners");
        let Some(state) = owners.get_mut(key) else { return Ok(()) };
        let entry = state.chats.entries.entry(workspace_id.clone()).or_default();
        if entry.recorded_at.is_some_and(|at| at > started) {
            // The operator interrupted or re-pinned it meanwhile: what it
            // recorded is newer than this read.
            continue;
        }
        let Some(chat) = chat else {
            // Forget it, so that the next plan looks the workspace up again.
            state.chats.entries.remove(&workspace_id);
            to_wake.push(name);
            continue;
        };
        let before = entry.chat.clone();
        entry.chat = Some(Arc::new(chat));
        entry.read_at = Some(Instant::now());
        entry.details_due = false;
        if before != entry.chat {
            to_wake.push(name);
        }
    }
    let resources: Vec<_> = to_wake.iter().flat_map(|name| index.interested_in(key, name)).collect();
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
        let mut budget = DetailBudget { tokens: 0.0, filled_at: Instant::now() - Duration::from_secs(3600) };
        assert_eq!(budget.take(60, 1000), 60, "an idle hour saves one minute's worth");
        assert_eq!(budget.take(60, 1000), 0);
        let mut budget = DetailBudget { tokens: 0.0, filled_at: Instant::now() - Duration::from_secs(10) };
        assert_eq!(budget.take(60, 3), 3);
        assert_eq!(budget.take(60, 100), 7);
    }
}
