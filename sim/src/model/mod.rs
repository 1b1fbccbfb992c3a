//! The simulated deployment's state and the rules coderd applies to it.
//! Everything time-dependent (job progress, heartbeats, agent status) is
//! computed from timestamps at read time, so reads are deterministic for a
//! given `now` and nothing runs in the background.

pub mod agent;
pub mod chats;
mod controls;
pub mod job;
pub mod params;
pub mod search;
mod seeding;
mod writes;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

pub use agent::{Agent, AgentView, Life, Shutdown};
pub use chats::{Chat, ChatApi, ContextRefresh, NewChat};
pub use job::{Job, JobFailure, JobStatus, Transition};
use params::Values;
use search::WorkspaceFilter;
pub use writes::{NewBuild, NewWorkspace, deleted_workspace};

use crate::Timings;
use crate::faults::FaultTable;
use crate::requests::RequestLog;
use crate::seed;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildRecord {
    pub id: Uuid,
    pub number: i32,
    pub transition: String,
    pub template_version_id: Uuid,
    pub preset_id: Option<Uuid>,
    /// The parameter values the build resolved (request, previous build or default).
    pub parameters: Vec<(String, String)>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: String,
    pub roles: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub is_default: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub icon: String,
    pub require_active_version: bool,
    pub deprecated: bool,
    pub deprecation_message: String,
    pub default_ttl_ms: i64,
    pub active_version_id: Uuid,
    pub created_by: Uuid,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct TemplateVersion {
    pub id: Uuid,
    pub template_id: Uuid,
    pub name: String,
    pub message: String,
    pub parameters: Vec<seed::Parameter>,
    pub presets: Vec<Preset>,
    pub agents: Vec<seed::Agent>,
    pub resource: seed::Resource,
    /// The (long finished) import job of the version.
    pub job: Job,
    pub created_by: Uuid,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Preset {
    pub id: Uuid,
    pub name: String,
    pub parameters: Values,
    pub default: bool,
    pub description: String,
    pub icon: String,
    pub desired_prebuild_instances: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub organization_id: Uuid,
    pub template_id: Uuid,
    pub created_at: Timestamp,
    pub ttl_ms: Option<i64>,
    pub autostart_schedule: Option<String>,
    pub automatic_updates: String,
    /// Build ids, oldest first.
    pub builds: Vec<Uuid>,
    /// Probes of its agents hang although heartbeats arrive.
    pub probe_partitioned: bool,
    /// Set while the workspace is dormant: coderd refuses to start it.
    pub dormant_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct Build {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub number: i32,
    pub transition: Transition,
    pub template_version_id: Uuid,
    pub preset_id: Option<Uuid>,
    pub parameters: Values,
    pub initiator_id: Uuid,
    /// coderd's `reason`: `initiator` for an API call without one, what the
    /// request said (`dashboard`, `cli`, ...), or what Coder itself did
    /// (`autostop`, `dormancy`, ...).
    pub reason: String,
    pub created_at: Timestamp,
    pub job: Job,
    pub resource_id: Uuid,
    /// Agents created by a start build; exposed once its job succeeded.
    pub agents: Vec<Uuid>,
}

pub struct Deployment {
    pub token: String,
    /// The user the token belongs to.
    pub me: Uuid,
    pub timings: Timings,
    pub users: Vec<User>,
    pub organizations: Vec<Organization>,
    pub templates: Vec<Template>,
    pub versions: HashMap<Uuid, TemplateVersion>,
    pub workspaces: HashMap<Uuid, Workspace>,
    pub builds: HashMap<Uuid, Build>,
    pub agents: HashMap<Uuid, Agent>,
    pub chats: HashMap<Uuid, Chat>,
    /// Workspace → its agents' latest context snapshot.
    pub snapshots: HashMap<Uuid, chats::Snapshot>,
    /// Where the chat routes are mounted.
    pub chat_api: ChatApi,
    pub context_refresh: ContextRefresh,
    rules: controls::Rules,
    pub faults: FaultTable,
    pub requests: RequestLog,
}

/// `ts + duration`, saturating instead of overflowing.
pub(crate) fn after(ts: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration).ok().and_then(|duration| ts.checked_add(duration).ok()).unwrap_or(Timestamp::MAX)
}

impl Deployment {
    /// A user by `me`, username (case-insensitive) or id, as in `/users/{user}`.
    pub fn user(&self, param: &str) -> Option<&User> {
        if param == "me" {
            return self.users.iter().find(|user| user.id == self.me);
        }
        match Uuid::parse_str(param) {
            Ok(id) => self.users.iter().find(|user| user.id == id),
            Err(_) => self.users.iter().find(|user| user.username.eq_ignore_ascii_case(param)),
        }
    }

    pub fn user_by_id(&self, id: Uuid) -> Option<&User> {
        self.users.iter().find(|user| user.id == id)
    }

    /// An organization by name or id.
    pub fn organization(&self, param: &str) -> Option<&Organization> {
        match Uuid::parse_str(param) {
            Ok(id) => self.organizations.iter().find(|org| org.id == id),
            Err(_) => self.organizations.iter().find(|org| org.name.eq_ignore_ascii_case(param)),
        }
    }

    pub fn organization_by_id(&self, id: Uuid) -> Option<&Organization> {
        self.organizations.iter().find(|org| org.id == id)
    }

    pub fn template(&self, id: Uuid) -> Option<&Template> {
        self.templates.iter().find(|template| template.id == id)
    }

    /// A template by name in any organization, for the simulator's controls.
    pub fn template_named_mut(&mut self, name: &str) -> Option<&mut Template> {
        self.templates.iter_mut().find(|template| template.name == name)
    }

    pub fn template_by_name(&self, organization_id: Uuid, name: &str) -> Option<&Template> {
        self.templates
            .iter()
            .find(|template| template.organization_id == organization_id && template.name.eq_ignore_ascii_case(name))
    }

    pub fn latest_build(&self, workspace: &Workspace) -> &Build {
        let id = workspace.builds.last().expect("every workspace has a first build");
        &self.builds[id]
    }

    /// A workspace whose delete build succeeded is gone.
    pub fn is_deleted(&self, workspace: &Workspace, now: Timestamp) -> bool {
        let build = self.latest_build(workspace);
        build.transition == Transition::Delete && build.job.status(now) == JobStatus::Succeeded
    }

    pub fn workspace_by_name(&self, owner_id: Uuid, name: &str, now: Timestamp) -> Option<&Workspace> {
        self.workspaces
            .values()
            .find(|ws| ws.owner_id == owner_id && ws.name.eq_ignore_ascii_case(name) && !self.is_deleted(ws, now))
    }

    /// The agents a client sees in a build: those of a start build whose job
    /// succeeded (coderd inserts them when the provisioner completes).
    pub fn visible_agents(&self, build: &Build, now: Timestamp) -> Vec<&Agent> {
        if build.transition != Transition::Start || build.job.status(now) != JobStatus::Succeeded {
            return Vec::new();
        }
        build.agents.iter().filter_map(|id| self.agents.get(id)).collect()
    }

    /// An agent readable by id: one its start build created.
    pub fn agent(&self, id: Uuid, now: Timestamp) -> Option<&Agent> {
        let agent = self.agents.get(&id)?;
        let build = self.builds.get(&agent.build_id)?;
        (build.job.status(now) == JobStatus::Succeeded).then_some(agent)
    }

    pub fn agent_view(&self, agent: &Agent, now: Timestamp) -> AgentView {
        agent.view(now, &self.timings, self.shutdown_of(agent, now))
    }

    /// What the builds after the agent's own do to it.
    fn shutdown_of(&self, agent: &Agent, now: Timestamp) -> Shutdown {
        let Some(workspace) = self.workspaces.get(&agent.workspace_id) else {
            return Shutdown::default();
        };
        let Some(own) = self.builds.get(&agent.build_id) else {
            return Shutdown::default();
        };
        let later =
            workspace.builds.iter().filter_map(|id| self.builds.get(id)).filter(|build| build.number > own.number);
        for build in later {
            match build.job.status(now) {
                JobStatus::Pending => break,
                JobStatus::Running => {
                    return Shutdown { shutting_down_since: build.job.started_at, off_at: None };
                }
                JobStatus::Succeeded => {
                    return Shutdown {
                        shutting_down_since: build.job.started_at,
                        off_at: Some(build.job.completed_at),
                    };
                }
                // A stop that failed or was canceled left the agent running.
                JobStatus::Failed | JobStatus::Canceling | JobStatus::Canceled => {}
            }
        }
        Shutdown::default()
    }

    /// Whether a dial through coderd would reach the agent right now.
    pub fn agent_reachable(&self, agent: &Agent, now: Timestamp) -> bool {
        let partitioned = self.workspaces.get(&agent.workspace_id).is_some_and(|ws| ws.probe_partitioned);
        !partitioned && self.agent_view(agent, now).alive
    }

    /// Whether the token's user may read every user's workspaces (coderd's
    /// `owner` site role); a member reads only their own.
    pub fn token_reads_all_workspaces(&self) -> bool {
        self.user_by_id(self.me).is_some_and(|user| user.roles.iter().any(|role| role == "owner"))
    }

    /// What coderd's search answers the token: the same rights decide it
    /// with or without `owner:` (a member asking for another user's gets
    /// nothing, and without `owner:` only their own).
    pub fn search_workspaces(&self, filter: &WorkspaceFilter, now: Timestamp) -> Vec<&Workspace> {
        let owner_id = filter.owner.as_deref().map(|owner| self.user(owner).map(|user| user.id));
        let name = filter.name.as_deref().map(str::to_lowercase);
        let reads_all = self.token_reads_all_workspaces();
        // An `id:` list is looked up by id, as coderd's query uses its
        // index, rather than every workspace being matched against it: the
        // index sends pages of a hundred ids over tens of thousands.
        let by_id: Option<HashSet<Uuid>> =
            filter.ids.as_ref().map(|ids| ids.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect());
        let candidates: Box<dyn Iterator<Item = &Workspace>> = match &by_id {
            Some(ids) => Box::new(ids.iter().filter_map(|id| self.workspaces.get(id))),
            None => Box::new(self.workspaces.values()),
        };
        let mut found: Vec<&Workspace> = candidates
            .filter(|ws| reads_all || ws.owner_id == self.me)
            .filter(|ws| !self.is_deleted(ws, now))
            .filter(|ws| owner_id.is_none_or(|owner| owner == Some(ws.owner_id)))
            .filter(|ws| name.as_deref().is_none_or(|name| ws.name.to_lowercase().contains(name)))
            .filter(|ws| {
                filter.template.as_deref().is_none_or(|wanted| {
                    self.template(ws.template_id).is_some_and(|template| template.name.eq_ignore_ascii_case(wanted))
                })
            })
            .filter(|ws| {
                filter.status.as_deref().is_none_or(|wanted| {
                    let build = self.latest_build(ws);
                    build.job.status(now).build_status(build.transition) == wanted
                })
            })
            .filter(|ws| filter.outdated.is_none_or(|outdated| self.is_outdated(ws) == outdated))
            .filter(|ws| {
                filter.agent_statuses.is_empty()
                    || self.visible_agents(self.latest_build(ws), now).into_iter().any(|agent| {
                        let status = self.agent_view(agent, now).status.as_str();
                        filter.agent_statuses.iter().any(|wanted| wanted == status)
                    })
            })
            .collect();
        // Thousands of users: their names looked up once a search, not once
        // a workspace.
        let usernames: HashMap<Uuid, String> =
            self.users.iter().map(|user| (user.id, user.username.to_lowercase())).collect();
        // coderd's order: the workspaces whose latest build is a start that
        // succeeded first, then by owner and name (so one that stops moves
        // back, and a paged list can pass over another).
        found.sort_by_cached_key(|ws| {
            let build = self.latest_build(ws);
            let started = build.transition == Transition::Start && build.job.status(now) == JobStatus::Succeeded;
            (!started, usernames.get(&ws.owner_id).cloned(), ws.name.to_lowercase())
        });
        found
    }

    pub fn is_outdated(&self, workspace: &Workspace) -> bool {
        self.template(workspace.template_id)
            .is_some_and(|template| template.active_version_id != self.latest_build(workspace).template_version_id)
    }

    pub fn build_records(&self, workspace_id: Uuid) -> Vec<BuildRecord> {
        let Some(workspace) = self.workspaces.get(&workspace_id) else {
            return Vec::new();
        };
        workspace
            .builds
            .iter()
            .filter_map(|id| self.builds.get(id))
            .map(|build| BuildRecord {
                id: build.id,
                number: build.number,
                transition: build.transition.as_str().to_owned(),
                template_version_id: build.template_version_id,
                preset_id: build.preset_id,
                parameters: build.parameters.clone(),
                created_at: build.created_at,
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::seed::Seed;

    pub fn deployment() -> (Deployment, Timestamp) {
        let now = Timestamp::now();
        let deployment = Deployment::from_seed(&Seed::default(), "t".to_owned(), Timings::fast(), now).unwrap();
        (deployment, now)
    }

    pub fn template_id(deployment: &Deployment, name: &str) -> Uuid {
        deployment.templates.iter().find(|t| t.name == name).unwrap().id
    }

    #[test]
    fn the_default_seed_loads_with_a_running_workspace() {
        let (deployment, now) = deployment();
        let bob = deployment.user("bob").unwrap().id;
        let ws = deployment.workspace_by_name(bob, "existing-dev", now).unwrap();
        let build = deployment.latest_build(ws);
        assert_eq!(build.job.status(now), JobStatus::Succeeded);
        let agents = deployment.visible_agents(build, now);
        assert_eq!(agents.len(), 1);
        assert_eq!(deployment.agent_view(agents[0], now).status, agent::AgentStatus::Connected);
        assert!(deployment.is_outdated(ws));
    }
}
