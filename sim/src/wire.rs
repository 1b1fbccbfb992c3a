//! The JSON shapes of Coder's API (codersdk), built from the model at one
//! moment. Keys follow docs/coder-api.md; optional keys are omitted or `null`
//! exactly where codersdk omits them (`omitempty`) or writes `null`, so a
//! client that only works when every key is present fails here as it would
//! against a real coderd.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{self, Deployment, JobStatus, Transition};

/// The agent version a real deployment of this API era would report.
const AGENT_VERSION: &str = "v2.24.0";
const AGENT_API_VERSION: &str = "2.6";

// ----- requests -----

#[derive(Debug, Clone, Deserialize)]
pub struct ParameterValue {
    pub name: String,
    pub value: String,
}

/// `CreateWorkspaceRequest`. Go clients send the nil UUID for unset ids, so
/// those count as absent. Other fields (`claim_prebuild_if_available`, ...)
/// are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateWorkspaceRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub template_id: Option<Uuid>,
    #[serde(default)]
    pub template_version_id: Option<Uuid>,
    #[serde(default)]
    pub template_version_preset_id: Option<Uuid>,
    #[serde(default)]
    pub rich_parameter_values: Option<Vec<ParameterValue>>,
    #[serde(default)]
    pub ttl_ms: Option<i64>,
    #[serde(default)]
    pub autostart_schedule: Option<String>,
    #[serde(default)]
    pub automatic_updates: Option<String>,
}

/// `CreateWorkspaceBuildRequest`. `orphan`, `dry_run` and `state` are
/// accepted and ignored: a simulated delete always succeeds.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateWorkspaceBuildRequest {
    #[serde(default)]
    pub transition: String,
    #[serde(default)]
    pub template_version_id: Option<Uuid>,
    #[serde(default)]
    pub template_version_preset_id: Option<Uuid>,
    #[serde(default)]
    pub rich_parameter_values: Option<Vec<ParameterValue>>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn set(id: Option<Uuid>) -> Option<Uuid> {
    id.filter(|id| !id.is_nil())
}

pub fn values(values: Option<Vec<ParameterValue>>) -> Vec<(String, String)> {
    values.unwrap_or_default().into_iter().map(|p| (p.name, p.value)).collect()
}

// ----- responses -----

#[derive(Debug, Serialize)]
pub struct Workspace {
    pub id: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub owner_id: Uuid,
    pub owner_name: String,
    pub owner_avatar_url: String,
    pub organization_id: Uuid,
    pub organization_name: String,
    pub template_id: Uuid,
    pub template_name: String,
    pub template_display_name: String,
    pub template_icon: String,
    pub template_allow_user_cancel_workspace_jobs: bool,
    pub template_active_version_id: Uuid,
    pub template_require_active_version: bool,
    pub latest_build: WorkspaceBuild,
    pub latest_app_status: Option<()>,
    pub outdated: bool,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostart_schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
    pub last_used_at: Timestamp,
    pub deleting_at: Option<Timestamp>,
    pub dormant_at: Option<Timestamp>,
    pub health: WorkspaceHealth,
    pub automatic_updates: String,
    pub allow_renames: bool,
    pub favorite: bool,
    pub next_start_at: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
pub struct WorkspaceHealth {
    pub healthy: bool,
    pub failing_agents: Vec<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct UsersResponse {
    pub users: Vec<User>,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct WorkspacesResponse {
    pub workspaces: Vec<Workspace>,
    pub count: usize,
}

impl Workspace {
    pub fn render(d: &Deployment, ws: &model::Workspace, now: Timestamp) -> Self {
        let owner = d.user_by_id(ws.owner_id);
        let organization = d.organization_by_id(ws.organization_id);
        let template = d.template(ws.template_id);
        let latest = d.latest_build(ws);
        let latest_build = WorkspaceBuild::render(d, latest, now);
        let failing_agents: Vec<Uuid> = latest_build
            .resources
            .iter()
            .flat_map(|resource| &resource.agents)
            .filter(|agent| !agent.health.healthy)
            .map(|agent| agent.id)
            .collect();
        Self {
            id: ws.id,
            created_at: ws.created_at,
            updated_at: latest.created_at,
            owner_id: ws.owner_id,
            owner_name: owner.map(|u| u.username.clone()).unwrap_or_default(),
            owner_avatar_url: String::new(),
            organization_id: ws.organization_id,
            organization_name: organization.map(|o| o.name.clone()).unwrap_or_default(),
            template_id: ws.template_id,
            template_name: template.map(|t| t.name.clone()).unwrap_or_default(),
            template_display_name: template.map(|t| t.display_name.clone()).unwrap_or_default(),
            template_icon: template.map(|t| t.icon.clone()).unwrap_or_default(),
            template_allow_user_cancel_workspace_jobs: true,
            template_active_version_id: template.map(|t| t.active_version_id).unwrap_or_default(),
            template_require_active_version: template.is_some_and(|t| t.require_active_version),
            latest_build,
            latest_app_status: None,
            outdated: d.is_outdated(ws),
            name: ws.name.clone(),
            autostart_schedule: ws.autostart_schedule.clone(),
            ttl_ms: ws.ttl_ms,
            last_used_at: latest.created_at,
            deleting_at: None,
            dormant_at: ws.dormant_at,
            health: WorkspaceHealth { healthy: failing_agents.is_empty(), failing_agents },
            automatic_updates: ws.automatic_updates.clone(),
            allow_renames: false,
            favorite: false,
            next_start_at: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkspaceBuild {
    pub id: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub workspace_id: Uuid,
    pub workspace_name: String,
    pub workspace_owner_id: Uuid,
    pub workspace_owner_name: String,
    pub workspace_owner_avatar_url: String,
    pub template_version_id: Uuid,
    pub template_version_name: String,
    pub build_number: i32,
    pub transition: &'static str,
    pub initiator_id: Uuid,
    pub initiator_name: String,
    pub job: ProvisionerJob,
    pub reason: String,
    pub resources: Vec<WorkspaceResource>,
    pub deadline: Option<Timestamp>,
    pub max_deadline: Option<Timestamp>,
    pub status: &'static str,
    pub daily_cost: i32,
    pub template_version_preset_id: Option<Uuid>,
}

impl WorkspaceBuild {
    pub fn render(d: &Deployment, build: &model::Build, now: Timestamp) -> Self {
        let ws = d.workspaces.get(&build.workspace_id);
        let owner = ws.and_then(|ws| d.user_by_id(ws.owner_id));
        let version = d.versions.get(&build.template_version_id);
        let job_status = build.job.status(now);
        let agents: Vec<WorkspaceAgent> =
            d.visible_agents(build, now).into_iter().map(|agent| WorkspaceAgent::render(d, agent, now)).collect();
        let resources = if agents.is_empty() {
            Vec::new()
        } else {
            let spec = version.map(|v| v.resource.clone()).unwrap_or_default();
            vec![WorkspaceResource {
                id: build.resource_id,
                created_at: build.job.completed_at,
                job_id: build.job.id,
                workspace_transition: build.transition.as_str(),
                kind: spec.kind,
                name: spec.name,
                hide: false,
                icon: String::new(),
                agents,
                daily_cost: 0,
            }]
        };
        // Autostop: a successful start with a TTL gets a deadline.
        let deadline = ws
            .and_then(|ws| ws.ttl_ms)
            .filter(|_| build.transition == Transition::Start && job_status == JobStatus::Succeeded)
            .and_then(|ttl| build.job.completed_at.checked_add(jiff::SignedDuration::from_millis(ttl)).ok());
        let initiator = d.user_by_id(build.initiator_id);
        Self {
            id: build.id,
            created_at: build.created_at,
            updated_at: build.job.view(now).completed_at.unwrap_or(build.created_at),
            workspace_id: build.workspace_id,
            workspace_name: ws.map(|ws| ws.name.clone()).unwrap_or_default(),
            workspace_owner_id: ws.map(|ws| ws.owner_id).unwrap_or_default(),
            workspace_owner_name: owner.map(|u| u.username.clone()).unwrap_or_default(),
            workspace_owner_avatar_url: String::new(),
            template_version_id: build.template_version_id,
            template_version_name: version.map(|v| v.name.clone()).unwrap_or_default(),
            build_number: build.number,
            transition: build.transition.as_str(),
            initiator_id: build.initiator_id,
            initiator_name: initiator.map(|u| u.username.clone()).unwrap_or_default(),
            job: ProvisionerJob::render(
                &build.job,
                ws.map(|ws| ws.organization_id).unwrap_or_default(),
                JobInput::Build(build.id),
                now,
            ),
            reason: build.reason.clone(),
            resources,
            deadline,
            max_deadline: None,
            status: job_status.build_status(build.transition),
            daily_cost: 0,
            template_version_preset_id: build.preset_id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkspaceResource {
    pub id: Uuid,
    pub created_at: Timestamp,
    pub job_id: Uuid,
    pub workspace_transition: &'static str,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub hide: bool,
    pub icon: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<WorkspaceAgent>,
    pub daily_cost: i32,
}

#[derive(Debug, Serialize)]
pub struct ProvisionerJob {
    pub id: Uuid,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canceled_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub status: &'static str,
    pub file_id: Uuid,
    pub tags: BTreeMap<&'static str, &'static str>,
    pub queue_position: i32,
    pub queue_size: i32,
    pub organization_id: Uuid,
    pub input: JobInputJson,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub logs_overflowed: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum JobInput {
    Build(Uuid),
    TemplateVersion(Uuid),
}

#[derive(Debug, Serialize)]
pub struct JobInputJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_build_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<Uuid>,
}

impl ProvisionerJob {
    pub fn render(job: &model::Job, organization_id: Uuid, input: JobInput, now: Timestamp) -> Self {
        let view = job.view(now);
        let queued = i32::from(view.status == JobStatus::Pending);
        let (kind, input) = match input {
            JobInput::Build(id) => {
                ("workspace_build", JobInputJson { workspace_build_id: Some(id), template_version_id: None })
            }
            JobInput::TemplateVersion(id) => {
                ("template_version_import", JobInputJson { workspace_build_id: None, template_version_id: Some(id) })
            }
        };
        let (error, error_code) = match view.failure {
            Some(failure) => (failure.error, failure.error_code),
            None => (String::new(), None),
        };
        Self {
            id: job.id,
            created_at: job.created_at,
            started_at: view.started_at,
            completed_at: view.completed_at,
            canceled_at: view.canceled_at,
            error,
            error_code,
            status: view.status.as_str(),
            file_id: job.file_id,
            tags: BTreeMap::from([("owner", ""), ("scope", "organization")]),
            queue_position: queued,
            queue_size: queued,
            organization_id,
            input,
            kind,
            logs_overflowed: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkspaceAgent {
    pub id: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_connected_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_connected_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    pub status: &'static str,
    pub lifecycle_state: &'static str,
    pub name: String,
    pub resource_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub architecture: &'static str,
    pub operating_system: &'static str,
    pub environment_variables: BTreeMap<String, String>,
    pub logs_length: i32,
    pub logs_overflowed: bool,
    pub version: &'static str,
    pub api_version: &'static str,
    pub apps: Vec<()>,
    pub connection_timeout_seconds: i32,
    pub troubleshooting_url: &'static str,
    pub subsystems: Vec<()>,
    pub health: AgentHealth,
    pub display_apps: [&'static str; 5],
    pub log_sources: Vec<()>,
    pub scripts: Vec<()>,
    pub startup_script_behavior: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AgentHealth {
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl WorkspaceAgent {
    pub fn render(d: &Deployment, agent: &model::Agent, now: Timestamp) -> Self {
        let view = d.agent_view(agent, now);
        let reason = view.health_reason();
        Self {
            id: agent.id,
            created_at: agent.created_at,
            updated_at: view.last_connected_at.unwrap_or(agent.created_at),
            first_connected_at: view.first_connected_at,
            last_connected_at: view.last_connected_at,
            disconnected_at: view.disconnected_at,
            started_at: view.started_at,
            ready_at: view.ready_at,
            status: view.status.as_str(),
            lifecycle_state: view.lifecycle.as_str(),
            name: agent.name.clone(),
            resource_id: agent.resource_id,
            parent_id: agent.parent_id,
            architecture: "amd64",
            operating_system: "linux",
            environment_variables: BTreeMap::new(),
            logs_length: 0,
            logs_overflowed: false,
            // An agent that never connected has not reported its version.
            version: if view.first_connected_at.is_some() { AGENT_VERSION } else { "" },
            api_version: if view.first_connected_at.is_some() { AGENT_API_VERSION } else { "" },
            apps: Vec::new(),
            connection_timeout_seconds: d.timings.connection_timeout_seconds,
            troubleshooting_url: "https://coder.com/docs/admin/templates/troubleshooting",
            subsystems: Vec::new(),
            // Like coderd, a still-connecting agent counts as healthy.
            health: AgentHealth { healthy: reason.is_none(), reason },
            display_apps: ["vscode", "vscode_insiders", "web_terminal", "ssh_helper", "port_forwarding_helper"],
            log_sources: Vec::new(),
            scripts: Vec::new(),
            startup_script_behavior: "non-blocking",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ListeningPorts {
    pub err: String,
    pub ports: Vec<()>,
}

#[derive(Debug, Serialize)]
pub struct Template {
    pub id: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub organization_id: Uuid,
    pub organization_name: String,
    pub organization_display_name: String,
    pub organization_icon: String,
    pub name: String,
    pub display_name: String,
    pub provisioner: &'static str,
    pub active_version_id: Uuid,
    pub active_user_count: i32,
    pub description: String,
    pub icon: String,
    pub default_ttl_ms: i64,
    pub activity_bump_ms: i64,
    pub deprecated: bool,
    pub deprecation_message: String,
    pub require_active_version: bool,
    pub created_by_id: Uuid,
    pub created_by_name: String,
    pub allow_user_autostart: bool,
    pub allow_user_autostop: bool,
    pub allow_user_cancel_workspace_jobs: bool,
    pub max_port_share_level: &'static str,
}

impl Template {
    pub fn render(d: &Deployment, template: &model::Template) -> Self {
        let organization = d.organization_by_id(template.organization_id);
        Self {
            id: template.id,
            created_at: template.created_at,
            updated_at: template.created_at,
            organization_id: template.organization_id,
            organization_name: organization.map(|o| o.name.clone()).unwrap_or_default(),
            organization_display_name: organization.map(|o| o.display_name.clone()).unwrap_or_default(),
            organization_icon: String::new(),
            name: template.name.clone(),
            display_name: template.display_name.clone(),
            provisioner: "terraform",
            active_version_id: template.active_version_id,
            active_user_count: 0,
            description: template.description.clone(),
            icon: template.icon.clone(),
            default_ttl_ms: template.default_ttl_ms,
            activity_bump_ms: 3_600_000,
            deprecated: template.deprecated,
            deprecation_message: template.deprecation_message.clone(),
            require_active_version: template.require_active_version,
            created_by_id: template.created_by,
            created_by_name: d.user_by_id(template.created_by).map(|u| u.username.clone()).unwrap_or_default(),
            allow_user_autostart: true,
            allow_user_autostop: true,
            allow_user_cancel_workspace_jobs: true,
            max_port_share_level: "owner",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TemplateVersion {
    pub id: Uuid,
    pub template_id: Uuid,
    pub organization_id: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub name: String,
    pub message: String,
    pub job: ProvisionerJob,
    pub readme: String,
    pub created_by: MinimalUser,
    pub archived: bool,
    pub warnings: Vec<()>,
}

#[derive(Debug, Serialize)]
pub struct MinimalUser {
    pub id: Uuid,
    pub username: String,
    pub avatar_url: String,
}

impl TemplateVersion {
    pub fn render(d: &Deployment, version: &model::TemplateVersion, now: Timestamp) -> Self {
        let organization_id = d.template(version.template_id).map(|t| t.organization_id).unwrap_or_default();
        Self {
            id: version.id,
            template_id: version.template_id,
            organization_id,
            created_at: version.created_at,
            updated_at: version.created_at,
            name: version.name.clone(),
            message: version.message.clone(),
            job: ProvisionerJob::render(&version.job, organization_id, JobInput::TemplateVersion(version.id), now),
            readme: String::new(),
            created_by: MinimalUser {
                id: version.created_by,
                username: d.user_by_id(version.created_by).map(|u| u.username.clone()).unwrap_or_default(),
                avatar_url: String::new(),
            },
            archived: false,
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TemplateVersionParameter {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub description_plaintext: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub form_type: &'static str,
    pub mutable: bool,
    pub default_value: String,
    pub icon: String,
    pub options: Vec<ParameterOption>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub validation_error: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub validation_regex: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_min: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_max: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub validation_monotonic: String,
    pub required: bool,
    pub ephemeral: bool,
}

#[derive(Debug, Serialize)]
pub struct ParameterOption {
    pub name: String,
    pub description: String,
    pub value: String,
    pub icon: String,
}

impl From<&crate::seed::Parameter> for TemplateVersionParameter {
    fn from(p: &crate::seed::Parameter) -> Self {
        let form_type = match p.kind.as_str() {
            _ if !p.options.is_empty() => "radio",
            "bool" => "checkbox",
            "list(string)" => "tag-select",
            _ => "input",
        };
        Self {
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            description_plaintext: p.description.clone(),
            kind: p.kind.clone(),
            form_type,
            mutable: p.mutable,
            default_value: p.default_value.clone(),
            icon: p.icon.clone(),
            options: p
                .options
                .iter()
                .map(|o| ParameterOption {
                    name: o.name.clone(),
                    description: o.description.clone(),
                    value: o.value.clone(),
                    icon: o.icon.clone(),
                })
                .collect(),
            validation_error: p.validation_error.clone(),
            validation_regex: p.validation_regex.clone(),
            validation_min: p.validation_min,
            validation_max: p.validation_max,
            validation_monotonic: p.validation_monotonic.clone(),
            required: p.required,
            ephemeral: p.ephemeral,
        }
    }
}

/// codersdk's `Preset` has no JSON tags, so its keys are Go field names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Preset {
    #[serde(rename = "ID")]
    pub id: Uuid,
    pub name: String,
    pub parameters: Vec<PresetParameter>,
    pub default: bool,
    pub desired_prebuild_instances: Option<i32>,
    pub description: String,
    pub icon: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PresetParameter {
    pub name: String,
    pub value: String,
}

impl From<&model::Preset> for Preset {
    fn from(p: &model::Preset) -> Self {
        Self {
            id: p.id,
            name: p.name.clone(),
            parameters: p
                .parameters
                .iter()
                .map(|(name, value)| PresetParameter { name: name.clone(), value: value.clone() })
                .collect(),
            default: p.default,
            desired_prebuild_instances: p.desired_prebuild_instances,
            description: p.description.clone(),
            icon: p.icon.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub name: String,
    pub avatar_url: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub status: &'static str,
    pub login_type: &'static str,
    pub theme_preference: String,
    pub organization_ids: Vec<Uuid>,
    pub roles: Vec<Role>,
}

#[derive(Debug, Serialize)]
pub struct Role {
    pub name: String,
    pub display_name: String,
}

impl User {
    pub fn render(d: &Deployment, user: &model::User) -> Self {
        Self {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            avatar_url: String::new(),
            created_at: user.created_at,
            updated_at: user.created_at,
            last_seen_at: user.created_at,
            status: "active",
            login_type: "password",
            theme_preference: String::new(),
            // Every seeded user is a member of every organization.
            organization_ids: d.organizations.iter().map(|o| o.id).collect(),
            roles: user.roles.iter().map(|role| Role { name: role.clone(), display_name: role.clone() }).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub icon: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub is_default: bool,
}

impl From<&model::Organization> for Organization {
    fn from(o: &model::Organization) -> Self {
        Self {
            id: o.id,
            name: o.name.clone(),
            display_name: o.display_name.clone(),
            description: String::new(),
            icon: String::new(),
            created_at: o.created_at,
            updated_at: o.created_at,
            is_default: o.is_default,
        }
    }
}

/// `{"message": ...}` answers such as the one to a cancel.
#[derive(Debug, Serialize)]
pub struct Message {
    pub message: String,
}

// ----- chats -----

/// codersdk's `Chat`. Optional ids are omitted when unset (`omitempty`);
/// `children` is always present, empty for a sub-agent chat.
#[derive(Debug, Serialize)]
pub struct Chat {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub owner_id: Uuid,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner_username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_chat_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_chat_id: Option<Uuid>,
    pub last_model_config_id: Uuid,
    pub title: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ChatError>,
    pub last_turn_summary: Option<String>,
    pub summary: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived: bool,
    pub shared: bool,
    pub pin_order: i32,
    pub mcp_server_ids: Vec<Uuid>,
    pub labels: BTreeMap<String, String>,
    pub has_unread: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ChatContext>,
    pub client_type: &'static str,
    /// On the sub-agent chats embedded in a chat's read: an empty one, as
    /// coderd gives a chat with no git changes tracked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_status: Option<ChatDiffStatus>,
    pub children: Vec<Chat>,
}

/// A chat's git changes; the simulator tracks none.
#[derive(Debug, Serialize)]
pub struct ChatDiffStatus {
    pub chat_id: Uuid,
    pub pull_request_title: String,
    pub pull_request_draft: bool,
    pub changes_requested: bool,
    pub additions: i32,
    pub deletions: i32,
    pub changed_files: i32,
}

impl ChatDiffStatus {
    fn none(chat_id: Uuid) -> Self {
        Self {
            chat_id,
            pull_request_title: String::new(),
            pull_request_draft: false,
            changes_requested: false,
            additions: 0,
            deletions: 0,
            changed_files: 0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatError {
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub retryable: bool,
}

#[derive(Debug, Serialize)]
pub struct ChatContext {
    pub dirty: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_since: Option<Timestamp>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Only on the single-chat read (and the refresh's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<ChatContextResource>>,
}

#[derive(Debug, Serialize)]
pub struct ChatContextResource {
    pub source: String,
    pub kind: String,
    pub size_bytes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skill_name: Option<String>,
    pub status: &'static str,
}

impl Chat {
    /// The chat as `GET /chats/{id}` shows it: children embedded for a root
    /// chat, an unbound agent filled in (in the answer only) with the latest
    /// build's chat agent, as coderd does.
    pub fn render(d: &Deployment, chat: &model::Chat, now: Timestamp) -> Self {
        let detailed = true;
        let mut rendered = Self::render_one(d, chat, now, detailed, true);
        if chat.parent_chat_id.is_none() {
            rendered.children = d
                .children_of(chat.id)
                .into_iter()
                .map(|c| Chat {
                    diff_status: Some(ChatDiffStatus::none(c.id)),
                    ..Self::render_one(d, c, now, false, true)
                })
                .collect();
        }
        rendered
    }

    /// The answer of a write (interrupt, refresh): the chat alone, as stored.
    pub fn render_write(d: &Deployment, chat: &model::Chat, now: Timestamp, detailed: bool) -> Self {
        Self::render_one(d, chat, now, detailed, false)
    }

    fn render_one(d: &Deployment, chat: &model::Chat, now: Timestamp, detailed: bool, enrich: bool) -> Self {
        let owner = d.user_by_id(chat.owner_id);
        let agent_id = chat.agent_id.or_else(|| {
            chat.workspace_id.filter(|_| enrich).and_then(|ws| d.latest_chat_agent(ws, now)).map(|(_, a)| a)
        });
        let context = chat.pin.as_ref().map(|pin| {
            let dirty_since = d.chat_dirty_since(chat);
            ChatContext {
                dirty: dirty_since.is_some(),
                dirty_since,
                error: pin.error.clone(),
                resources: detailed.then(|| {
                    pin.resources
                        .iter()
                        .map(|r| ChatContextResource {
                            source: r.source.clone(),
                            kind: r.kind.clone(),
                            size_bytes: r.size_bytes,
                            skill_name: r.skill_name.clone(),
                            status: "ok",
                        })
                        .collect()
                }),
            }
        });
        Self {
            id: chat.id,
            organization_id: chat.organization_id,
            owner_id: chat.owner_id,
            owner_username: owner.map(|u| u.username.clone()).unwrap_or_default(),
            owner_name: owner.map(|u| u.name.clone()).unwrap_or_default(),
            workspace_id: chat.workspace_id,
            build_id: chat.build_id,
            agent_id,
            parent_chat_id: chat.parent_chat_id,
            // A root chat is its own root.
            root_chat_id: Some(chat.parent_chat_id.unwrap_or(chat.id)),
            last_model_config_id: Uuid::nil(),
            title: chat.title.clone(),
            status: model::Deployment::chat_status(chat, now).to_owned(),
            last_error: chat.last_error.as_ref().map(|message| ChatError {
                message: message.clone(),
                kind: "generic".into(),
                retryable: false,
            }),
            last_turn_summary: None,
            summary: None,
            created_at: chat.created_at,
            updated_at: chat.updated_at,
            archived: chat.archived,
            shared: false,
            pin_order: 0,
            mcp_server_ids: Vec::new(),
            labels: chat.labels.clone(),
            has_unread: false,
            context,
            client_type: "api",
            diff_status: None,
            children: Vec::new(),
        }
    }
}
