//! Chats as coderd's chat daemon keeps them (docs/coder-api.md, "Chats"): bound
//! to a workspace, a build and an agent; sub-agent chats under a root chat
//! (depth 1); a context pinned to an agent's snapshot of instruction files
//! and skills, dirty when the agent pushed a newer one. Each workspace's
//! agents share one snapshot sequence here, so a new agent starts from the
//! workspace's current files.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::{Deployment, Transition};
use crate::error::ApiError;

/// How long an interrupted turn stays `interrupting` before it is `waiting`.
const INTERRUPT_SETTLE: SignedDuration = SignedDuration::from_millis(200);

/// Where the chat routes are served: v2.36.x serves them under
/// `/api/experimental/chats`, v2.37 and later under `/api/v2/chats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChatApi {
    #[default]
    Experimental,
    V2,
}

/// Which agent `PUT /chats/{id}/context` re-pins a chat to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContextRefresh {
    /// The latest build's chat agent, rebinding the chat to it (no coderd
    /// release seen does this; for tests of an operator that expects it).
    LatestAgent,
    /// The agent the chat has stored, as v2.36.1's chatd does (seen in the
    /// real-coderd tests): after a stop/start outside chatd that is the old
    /// agent, until the chat's next turn rebinds it.
    #[default]
    StoredAgent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextResource {
    pub source: String,
    pub kind: String,
    pub size_bytes: i64,
    pub skill_name: Option<String>,
}

/// A workspace's context files as its agents push them.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bumped on every change of the files.
    pub generation: u64,
    pub pushed_at: Timestamp,
    pub error: String,
    pub resources: Vec<ContextResource>,
}

/// What a chat's prompt is built from: one agent's snapshot, copied.
#[derive(Debug, Clone)]
pub struct Pin {
    pub agent_id: Uuid,
    pub generation: u64,
    pub error: String,
    pub resources: Vec<ContextResource>,
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub owner_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub build_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub parent_chat_id: Option<Uuid>,
    pub title: String,
    /// `waiting | running | error | requires_action | interrupting`.
    pub status: String,
    pub interrupted_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub archived: bool,
    pub labels: BTreeMap<String, String>,
    pub pin: Option<Pin>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a test asks for when it makes a chat (a user cannot create
/// sub-agent chats or bind agents through the API; chatd's tools do).
#[derive(Debug, Clone, Default)]
pub struct NewChat {
    /// Default: the token's user.
    pub owner: Option<String>,
    pub title: String,
    pub workspace_id: Option<Uuid>,
    pub parent_chat_id: Option<Uuid>,
    /// Default `waiting`.
    pub status: Option<String>,
    /// Bind this agent instead of the latest build's chat agent.
    pub agent_id: Option<Uuid>,
    /// Leave the agent unbound (chatd binds it on the next turn).
    pub unbound: bool,
}

/// The default files of a workspace: an instruction file and a skill.
fn default_resources() -> Vec<ContextResource> {
    vec![
        ContextResource {
            source: "/home/coder/project/AGENTS.md".into(),
            kind: "instruction_file".into(),
            size_bytes: 1834,
            skill_name: None,
        },
        ContextResource {
            source: "/home/coder/.coder/skills/deploy".into(),
            kind: "skill".into(),
            size_bytes: 912,
            skill_name: Some("deploy".into()),
        },
    ]
}

impl Deployment {
    /// The chat agent of the workspace's latest build, once coderd has it:
    /// root agents; a single `*-coderd-chat` agent wins, else the first by name.
    pub fn latest_chat_agent(&self, workspace_id: Uuid, now: Timestamp) -> Option<(Uuid, Uuid)> {
        let workspace = self.workspaces.get(&workspace_id)?;
        let build = self.latest_build(workspace);
        let mut roots: Vec<_> =
            self.visible_agents(build, now).into_iter().filter(|agent| agent.parent_id.is_none()).collect();
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        let chat: Vec<_> = roots.iter().filter(|agent| agent.name.ends_with("-coderd-chat")).collect();
        let agent = if chat.len() == 1 { chat[0] } else { roots.first()? };
        Some((build.id, agent.id))
    }

    /// The workspace's context snapshot, made on first use.
    pub fn snapshot(&mut self, workspace_id: Uuid, now: Timestamp) -> &Snapshot {
        self.snapshots.entry(workspace_id).or_insert_with(|| Snapshot {
            generation: 1,
            pushed_at: now,
            error: String::new(),
            resources: default_resources(),
        })
    }

    /// A snapshot an agent can hand out right now: its workspace's, if it is
    /// the running chat agent of the latest build.
    fn pin_for(&mut self, agent_id: Uuid, now: Timestamp) -> Option<Pin> {
        let agent = self.agent(agent_id, now)?;
        let workspace_id = agent.workspace_id;
        if !self.agent_view(agent, now).alive {
            return None;
        }
        let snapshot = self.snapshot(workspace_id, now).clone();
        Some(Pin { agent_id, generation: snapshot.generation, error: snapshot.error, resources: snapshot.resources })
    }

    /// The latest snapshot an agent pushed while it ran: its workspace's
    /// current one if it is the workspace's latest start's agent, else the
    /// one it pinned last (kept as coderd keeps an old agent's rows).
    fn stored_pin(&mut self, agent_id: Uuid, now: Timestamp) -> Option<Pin> {
        if let Some(pin) = self.pin_for(agent_id, now) {
            return Some(pin);
        }
        self.chats.values().filter_map(|chat| chat.pin.clone()).find(|pin| pin.agent_id == agent_id)
    }

    pub fn create_chat(&mut self, request: &NewChat, now: Timestamp) -> Result<Uuid, String> {
        let owner_id = match &request.owner {
            Some(owner) => self.user(owner).ok_or_else(|| format!("no user {owner:?}"))?.id,
            None => self.me,
        };
        let mut workspace_id = request.workspace_id;
        if let Some(parent) = request.parent_chat_id {
            let parent = self.chats.get(&parent).ok_or_else(|| format!("no chat {parent}"))?;
            if parent.parent_chat_id.is_some() {
                return Err("a sub-agent chat cannot have sub-agents of its own".into());
            }
            // Sub-agents share the parent's workspace.
            workspace_id = parent.workspace_id;
        }
        let organization_id = match workspace_id {
            Some(id) => self.workspaces.get(&id).ok_or_else(|| format!("no workspace {id}"))?.organization_id,
            None => self.organizations.first().map(|org| org.id).unwrap_or_default(),
        };
        let (build_id, agent_id) = match (workspace_id, request.agent_id, request.unbound) {
            (_, _, true) | (None, _, _) => (None, None),
            (Some(ws), Some(agent), false) => {
                (self.agents.get(&agent).map(|a| a.build_id).or_else(|| self.latest_build_id(ws)), Some(agent))
            }
            (Some(ws), None, false) => match self.latest_chat_agent(ws, now) {
                Some((build, agent)) => (Some(build), Some(agent)),
                None => (self.latest_build_id(ws), None),
            },
        };
        let pin = agent_id.and_then(|agent| self.pin_for(agent, now));
        let id = Uuid::new_v4();
        self.chats.insert(
            id,
            Chat {
                id,
                organization_id,
                owner_id,
                workspace_id,
                build_id,
                agent_id,
                parent_chat_id: request.parent_chat_id,
                title: request.title.clone(),
                status: request.status.clone().unwrap_or_else(|| "waiting".into()),
                interrupted_at: None,
                last_error: None,
                archived: false,
                labels: BTreeMap::new(),
                pin,
                created_at: now,
                updated_at: now,
            },
        );
        Ok(id)
    }

    fn latest_build_id(&self, workspace_id: Uuid) -> Option<Uuid> {
        self.workspaces.get(&workspace_id).and_then(|ws| ws.builds.last().copied())
    }

    /// A chat the token's user may see.
    pub fn visible_chat(&self, id: Uuid) -> Option<&Chat> {
        self.chats.get(&id).filter(|chat| self.may_access(chat))
    }

    /// A user reaches their own chats; an Owner reaches every user's, as
    /// coderd's site-wide owner role grants every action on chats.
    fn may_access(&self, chat: &Chat) -> bool {
        chat.owner_id == self.me
            || self.users.iter().any(|user| user.id == self.me && user.roles.iter().any(|role| role == "owner"))
    }

    /// `GET /chats/by-workspace`: per workspace, the latest updated
    /// non-archived chat the caller can read, sub-agent chats included.
    pub fn chats_by_workspace(&self, workspace_ids: &[Uuid]) -> HashMap<Uuid, Uuid> {
        let mut latest: HashMap<Uuid, &Chat> = HashMap::new();
        for chat in self.chats.values().filter(|chat| self.may_access(chat) && !chat.archived) {
            let Some(workspace) = chat.workspace_id.filter(|ws| workspace_ids.contains(ws)) else { continue };
            let newer = latest.get(&workspace).is_none_or(|seen| chat.updated_at > seen.updated_at);
            if newer {
                latest.insert(workspace, chat);
            }
        }
        latest.into_iter().map(|(workspace, chat)| (workspace, chat.id)).collect()
    }

    /// The sub-agent chats of `id`, oldest first, with the parent's archive state.
    pub fn children_of(&self, id: Uuid) -> Vec<&Chat> {
        let archived = self.chats.get(&id).is_some_and(|chat| chat.archived);
        let mut children: Vec<&Chat> =
            self.chats.values().filter(|chat| chat.parent_chat_id == Some(id) && chat.archived == archived).collect();
        children.sort_by_key(|chat| chat.created_at);
        children
    }

    /// The chat's status at `now`: an interrupt settles into `waiting`.
    pub fn chat_status(chat: &Chat, now: Timestamp) -> &str {
        match chat.interrupted_at {
            Some(at) if chat.status == "interrupting" && at + INTERRUPT_SETTLE <= now => "waiting",
            _ => chat.status.as_str(),
        }
    }

    /// Whether the chat's pin lags its agent's latest snapshot, and since when.
    pub fn chat_dirty_since(&self, chat: &Chat) -> Option<Timestamp> {
        let pin = chat.pin.as_ref()?;
        let workspace = self.agents.get(&pin.agent_id)?.workspace_id;
        let snapshot = self.snapshots.get(&workspace)?;
        // Only a running agent pushes: an agent of an older build never does.
        let current = self.agents.get(&pin.agent_id).is_some_and(|agent| {
            self.workspaces
                .get(&workspace)
                .and_then(|ws| {
                    ws.builds
                        .iter()
                        .rev()
                        .filter_map(|b| self.builds.get(b))
                        .find(|b| b.transition == Transition::Start)
                })
                .is_some_and(|build| build.id == agent.build_id)
        });
        (current && snapshot.generation != pin.generation).then_some(snapshot.pushed_at)
    }

    /// `PUT /chats/{id}/context`: re-pins the chat to the latest build's
    /// chat agent's snapshot (or, as v2.36.1 does, to its stored agent's);
    /// with no agent to pin to, the pin is cleared.
    pub fn refresh_chat_context(&mut self, id: Uuid, now: Timestamp) -> Result<(), ApiError> {
        let chat = self.visible_chat(id).ok_or_else(ApiError::not_found)?;
        let (workspace_id, stored) = (chat.workspace_id, chat.agent_id);
        if self.context_refresh == ContextRefresh::StoredAgent {
            let pin = stored.and_then(|agent| self.stored_pin(agent, now));
            let chat = self.chats.get_mut(&id).ok_or_else(ApiError::not_found)?;
            chat.pin = pin;
            chat.updated_at = now;
            return Ok(());
        }
        let binding = workspace_id.and_then(|ws| self.latest_chat_agent(ws, now));
        let pin = binding.and_then(|(_, agent)| self.pin_for(agent, now));
        let chat = self.chats.get_mut(&id).ok_or_else(ApiError::not_found)?;
        if let Some((build, agent)) = binding.filter(|_| pin.is_some()) {
            chat.build_id = Some(build);
            chat.agent_id = Some(agent);
        }
        chat.pin = pin;
        chat.updated_at = now;
        Ok(())
    }

    /// `POST /chats/{id}/interrupt`: a running turn goes `interrupting`,
    /// then `waiting`; an idle chat cannot be interrupted (409).
    pub fn interrupt_chat(&mut self, id: Uuid, now: Timestamp) -> Result<(), ApiError> {
        let chat = self.visible_chat(id).ok_or_else(ApiError::not_found)?;
        if chat.archived {
            return Err(ApiError::bad_request("Cannot interrupt an archived chat."));
        }
        let status = Self::chat_status(chat, now).to_owned();
        let chat = self.chats.get_mut(&id).ok_or_else(ApiError::not_found)?;
        match status.as_str() {
            "running" => {
                chat.status = "interrupting".into();
                chat.interrupted_at = Some(now);
            }
            // Pending tool calls are cancelled and the turn goes on.
            "requires_action" => chat.status = "running".into(),
            _ => {
                return Err(ApiError::new(StatusCode::CONFLICT, "Chat is not in an interruptible state.")
                    .detail(format!("transition interrupt not allowed from status {status:?}")));
            }
        }
        chat.updated_at = now;
        Ok(())
    }

    /// The workspace's agent pushes changed context files: chats pinned to
    /// its current agent turn dirty.
    pub fn change_context_files(&mut self, workspace_id: Uuid, now: Timestamp) {
        let snapshot = self.snapshot(workspace_id, now).clone();
        let mut resources = snapshot.resources;
        resources.push(ContextResource {
            source: format!("/home/coder/project/docs/notes-{}.md", snapshot.generation + 1),
            kind: "instruction_file".into(),
            size_bytes: 256,
            skill_name: None,
        });
        self.snapshots.insert(
            workspace_id,
            Snapshot { generation: snapshot.generation + 1, pushed_at: now, error: snapshot.error, resources },
        );
    }

    /// A turn of the chat, as chatd runs one: the chat moves to the latest
    /// build's chat agent and its context is pinned there.
    pub fn run_chat_turn(&mut self, id: Uuid, now: Timestamp) -> Result<(), String> {
        let workspace_id = self.chats.get(&id).ok_or_else(|| format!("no chat {id}"))?.workspace_id;
        let binding = workspace_id.and_then(|ws| self.latest_chat_agent(ws, now));
        let pin = binding.and_then(|(_, agent)| self.pin_for(agent, now));
        let chat = self.chats.get_mut(&id).ok_or_else(|| format!("no chat {id}"))?;
        if let Some((build, agent)) = binding {
            chat.build_id = Some(build);
            chat.agent_id = Some(agent);
        }
        chat.pin = pin;
        chat.updated_at = now;
        Ok(())
    }

    pub fn set_chat_status(&mut self, id: Uuid, status: &str, now: Timestamp) -> Result<(), String> {
        let chat = self.chats.get_mut(&id).ok_or_else(|| format!("no chat {id}"))?;
        chat.status = status.to_owned();
        chat.interrupted_at = None;
        chat.updated_at = now;
        Ok(())
    }
}
