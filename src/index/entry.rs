//! One workspace as the index keeps it: the workspace packed (its JSON,
//! deflated), and beside it the little that the index reads of it often.
//!
//! At 10,000 workspaces a decoded `Workspace` is about 2 KB of structs and
//! strings, mostly ids and values every workspace shares, and the index
//! reads it whole only for the one resource a reconcile handles. The poller,
//! the prober and the chat lookups read only the fields kept unpacked here,
//! each derived from the workspace by the same functions that would read
//! the whole of it.

use std::sync::Arc;
use std::time::Instant;

use crate::coder::{AgentStatus, ProvisionerJobStatus, Workspace, WorkspaceTransition};

/// The index's dictionary: learned from the first workspace it keeps.
static PACKER: crate::pack::Packer = crate::pack::Packer::new();

pub(super) struct Entry {
    /// [`slim`]'s workspace as deflated JSON ([`crate::pack`]).
    packed: crate::pack::Packed,
    pub id: Box<str>,
    /// [`digest`] of the workspace: what the decision core reads of it.
    pub digest: u64,
    /// A build or an agent start is under way ([`in_transition`]).
    pub in_transition: bool,
    /// The latest build is a start that succeeded: counted as running by
    /// coderd's `status:running`.
    pub running: bool,
    /// The latest build's agents, when it is a start that succeeded (only
    /// then may a probe be due).
    agents: Box<[ProbeAgent]>,
    /// When what it holds was read from Coder.
    pub read_at: Instant,
}

/// An agent as the prober chooses it.
struct ProbeAgent {
    id: Box<str>,
    name: Box<str>,
    status: AgentStatus,
    /// The agent a resource that names none talks to ([`crate::coder::chat_agent`]).
    default: bool,
}

impl Entry {
    pub fn new(workspace: Workspace) -> Self {
        let workspace = slim(workspace);
        let build = &workspace.latest_build;
        let running = running(&workspace);
        let default = crate::coder::chat_agent(build, None).map(|agent| agent.id.clone());
        let agents = if running {
            build
                .agents()
                .map(|agent| ProbeAgent {
                    id: agent.id.as_str().into(),
                    name: agent.name.as_str().into(),
                    status: agent.status,
                    default: default.as_ref() == Some(&agent.id),
                })
                .collect()
        } else {
            Box::default()
        };
        let json = serde_json::to_vec(&workspace).unwrap_or_default();
        Self {
            // Any workspace is like the others of its owner.
            packed: PACKER.pack(&json, true),
            id: workspace.id.as_str().into(),
            digest: digest(&workspace),
            in_transition: in_transition(&workspace),
            running,
            agents,
            read_at: Instant::now(),
        }
    }

    /// The workspace, unpacked.
    pub fn workspace(&self) -> Arc<Workspace> {
        let workspace =
            serde_json::from_slice(&PACKER.unpack(&self.packed)).expect("the index unpacks only what it packed");
        Arc::new(workspace)
    }

    /// The chat agent to keep probed, with its status, for a resource that
    /// names `agent_name` (or none): what [`crate::decision::needs_probe`]
    /// says of the whole workspace.
    pub fn needs_probe(&self, agent_name: Option<&str>) -> Option<(&str, AgentStatus)> {
        let agent = match agent_name {
            Some(name) => self.agents.iter().find(|agent| &*agent.name == name),
            None => self.agents.iter().find(|agent| agent.default),
        }?;
        matches!(agent.status, AgentStatus::Connected | AgentStatus::Disconnected).then_some((&agent.id, agent.status))
    }

    /// The running workspace's chat agent, as chatd picks it.
    pub fn chat_agent_id(&self) -> Option<&str> {
        self.agents.iter().find(|agent| agent.default).map(|agent| &*agent.id)
    }

    #[cfg(test)]
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }
}

/// The latest build is a start that succeeded: what coderd's
/// `status:running` counts.
pub(super) fn running(workspace: &Workspace) -> bool {
    let build = &workspace.latest_build;
    build.transition == WorkspaceTransition::Start && build.job.status == ProvisionerJobStatus::Succeeded
}

/// A build under way, or an agent still coming up: the workspace is read
/// again at the active interval until it settles.
pub(super) fn in_transition(workspace: &Workspace) -> bool {
    let build = &workspace.latest_build;
    if build.job.status.is_active() {
        return true;
    }
    build.transition == WorkspaceTransition::Start
        && build.job.status == ProvisionerJobStatus::Succeeded
        && build.agents().any(|agent| {
            agent.status == AgentStatus::Connecting
                || (agent.status == AgentStatus::Connected && !agent.lifecycle_state.is_settled())
        })
}

/// What the decision core reads of a workspace, hashed: a change of any of
/// it wakes the workspace's resources; a heartbeat (`last_connected_at` of
/// a connected agent) does not.
fn digest(workspace: &Workspace) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    workspace.id.hash(&mut hasher);
    workspace.name.hash(&mut hasher);
    workspace.template_active_version_id.hash(&mut hasher);
    workspace.template_require_active_version.hash(&mut hasher);
    workspace.dormant_at.map(|t| t.as_second()).hash(&mut hasher);
    workspace.deleting_at.map(|t| t.as_second()).hash(&mut hasher);
    let build = &workspace.latest_build;
    build.id.hash(&mut hasher);
    build.transition.as_str().hash(&mut hasher);
    build.job.status.as_str().hash(&mut hasher);
    build.template_version_id.hash(&mut hasher);
    for agent in build.agents() {
        agent.id.hash(&mut hasher);
        agent.status.as_str().hash(&mut hasher);
        agent.lifecycle_state.as_str().hash(&mut hasher);
        agent.disconnected_at.map(|t| t.as_second()).hash(&mut hasher);
        if agent.status != AgentStatus::Connected {
            agent.last_connected_at.map(|t| t.as_second()).hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// The workspace without what the operator never reads.
fn slim(mut workspace: Workspace) -> Workspace {
    workspace.health.failing_agents = Vec::new();
    workspace.organization_id = String::new();
    let build = &mut workspace.latest_build;
    build.workspace_name = String::new();
    build.workspace_owner_name = String::new();
    for resource in &mut build.resources {
        resource.id = String::new();
        resource.name = String::new();
        // The one type the decision core reads: an external agent is never
        // rebuilt.
        if !resource.is_external() {
            resource.resource_type = String::new();
        }
        for agent in &mut resource.agents {
            agent.health.reason = String::new();
        }
    }
    build.resources.retain(|resource| !resource.agents.is_empty());
    workspace
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn workspace(transition: &str, job: &str, agents: serde_json::Value) -> Workspace {
        serde_json::from_value(serde_json::json!({
            "id": "0b7c5d1e-6a4f-4c1b-9d2e-3f4a5b6c7d8e",
            "created_at": "2026-12-01T10:00:00Z",
            "name": "chat-1",
            "owner_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            "owner_name": "alice",
            "organization_id": "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a",
            "template_id": "3e4f5a6b-7c8d-4e9f-0a1b-2c3d4e5f6a7b",
            "template_name": "docker",
            "template_active_version_id": "4f5a6b7c-8d9e-4f0a-1b2c-3d4e5f6a7b8c",
            "template_require_active_version": false,
            "outdated": false,
            "automatic_updates": "never",
            "ttl_ms": 3_600_000,
            "health": {"healthy": true, "failing_agents": []},
            "dormant_at": null,
            "deleting_at": null,
            "latest_build": {
                "id": "5a6b7c8d-9e0f-4a1b-2c3d-4e5f6a7b8c9d",
                "build_number": 3,
                "workspace_id": "0b7c5d1e-6a4f-4c1b-9d2e-3f4a5b6c7d8e",
                "workspace_name": "chat-1",
                "workspace_owner_name": "alice",
                "template_version_id": "4f5a6b7c-8d9e-4f0a-1b2c-3d4e5f6a7b8c",
                "transition": transition,
                "status": "running",
                "reason": "initiator",
                "initiator_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                "initiator_name": "alice",
                "created_at": "2026-12-01T10:00:00Z",
                "updated_at": "2026-12-01T10:00:06Z",
                "deadline": "2026-12-01T11:00:06Z",
                "job": {
                    "id": "6b7c8d9e-0f1a-4b2c-3d4e-5f6a7b8c9d0e",
                    "status": job,
                    "error": "",
                    "error_code": "",
                    "created_at": "2026-12-01T10:00:00Z",
                    "started_at": "2026-12-01T10:00:01Z",
                    "completed_at": "2026-12-01T10:00:06Z",
                    "queue_position": 0,
                },
                "resources": [
                    {"id": "7c8d9e0f-1a2b-4c3d-4e5f-6a7b8c9d0e1f", "name": "main", "type": "docker_container",
                     "agents": agents},
                    {"id": "8d9e0f1a-2b3c-4d4e-5f6a-7b8c9d0e1f2a", "name": "home", "type": "docker_volume",
                     "agents": null},
                ],
            },
        }))
        .expect("a workspace")
    }

    pub(crate) fn agent(id: &str, name: &str, status: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": name, "status": status, "lifecycle_state": "ready",
            "created_at": "2026-12-01T10:00:02Z", "first_connected_at": "2026-12-01T10:00:04Z",
            "last_connected_at": "2026-12-01T10:00:20Z", "disconnected_at": null,
            "connection_timeout_seconds": 120, "display_order": 0,
            "health": {"healthy": status == "connected", "reason": "agent is not connected"},
        })
    }

    #[test]
    fn the_index_gives_back_the_workspace_without_only_what_the_operator_never_reads() {
        let original = workspace("start", "succeeded", serde_json::json!([agent("a-1", "main", "connected")]));
        let entry = Entry::new(original.clone());
        assert_eq!(*entry.workspace(), slim(original.clone()));
        assert_eq!(&*entry.id, original.id);
        assert!(entry.running);
        assert!(!entry.in_transition);
        // The decoded workspace, its strings included, is several times larger.
        assert!(entry.packed_len() < 700, "packed into {} bytes", entry.packed_len());
    }

    #[test]
    fn the_index_keeps_which_agents_are_external() {
        let mut original = workspace("start", "succeeded", serde_json::json!([agent("a-1", "main", "disconnected")]));
        let entry = Entry::new(original.clone());
        assert!(!entry.workspace().latest_build.agent_is_external("a-1"));
        original.latest_build.resources[0].resource_type = "coder_external_agent".into();
        let entry = Entry::new(original);
        assert!(entry.workspace().latest_build.agent_is_external("a-1"), "an external agent is never rebuilt");
    }

    #[test]
    fn the_agent_to_probe_is_the_one_the_decision_core_would_choose() {
        let cases = [
            ("start", "succeeded", "connected"),
            ("start", "succeeded", "disconnected"),
            ("start", "succeeded", "connecting"),
            ("start", "running", "connected"),
            ("stop", "succeeded", "disconnected"),
        ];
        for (transition, job, status) in cases {
            let whole = workspace(
                transition,
                job,
                serde_json::json!([agent("a-1", "main", status), agent("a-2", "dev-coderd-chat", status)]),
            );
            let entry = Entry::new(whole.clone());
            for name in [None, Some("main"), Some("dev-coderd-chat"), Some("absent")] {
                let expected = crate::decision::needs_probe(&whole, name).map(|a| (a.id.as_str(), a.status));
                assert_eq!(entry.needs_probe(name), expected, "{transition}/{job}/{status}, agent {name:?}");
            }
        }
    }

    #[test]
    fn a_heartbeat_is_no_change_but_a_new_agent_status_is() {
        let before = workspace("start", "succeeded", serde_json::json!([agent("a-1", "main", "connected")]));
        let mut heartbeat = before.clone();
        heartbeat.latest_build.resources[0].agents[0].last_connected_at = Some("2026-12-01T10:00:35Z".parse().unwrap());
        let mut dead = before.clone();
        dead.latest_build.resources[0].agents[0].status = AgentStatus::Disconnected;
        assert_eq!(Entry::new(before.clone()).digest, Entry::new(heartbeat).digest);
        assert_ne!(Entry::new(before).digest, Entry::new(dead).digest);
    }
}
