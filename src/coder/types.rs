//! The JSON shapes of docs/coder-api.md.
//!
//! Responses are read leniently so that other Coder releases still decode:
//! unknown keys are ignored, keys that may be missing or `null` default, and
//! an enum value this operator does not know becomes `Unknown` instead of
//! failing the whole response. Only ids (and the objects a type is useless
//! without) are required.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares an enum of Coder's wire strings with an `Unknown` fallback (also
/// the default when the key is missing), its `as_str`/`Display`, and serde
/// impls, so each wire string is written exactly once.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $wire:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
            /// A value this operator does not know (e.g. from a newer Coder),
            /// or no value at all.
            #[default]
            Unknown,
        }

        impl $name {
            /// The value as Coder spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Unknown => "unknown",
                }
            }

            /// Reads a wire value; anything unrecognised is `Unknown`.
            pub fn from_wire(value: &str) -> Self {
                match value {
                    $($wire => Self::$variant,)+
                    _ => Self::Unknown,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = Option::<String>::deserialize(deserializer)?;
                Ok(value.map_or(Self::Unknown, |value| Self::from_wire(&value)))
            }
        }

        /// A plain string in the CRD, with no `enum:`: status copies what
        /// Coder said, and a newer Coder may say something else.
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string"})
            }
        }
    };
}

wire_enum! {
    /// What a build does to its workspace.
    pub enum WorkspaceTransition {
        Start => "start",
        Stop => "stop",
        Delete => "delete",
    }
}

wire_enum! {
    /// A build's status, derived by coderd from its job status and transition.
    pub enum WorkspaceStatus {
        Pending => "pending",
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Failed => "failed",
        Canceling => "canceling",
        Canceled => "canceled",
        Deleting => "deleting",
        Deleted => "deleted",
    }
}

wire_enum! {
    /// Status of a provisioner job. Coder's own `unknown` maps to `Unknown`.
    pub enum ProvisionerJobStatus {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Canceling => "canceling",
        Canceled => "canceled",
        Failed => "failed",
    }
}

impl ProvisionerJobStatus {
    /// Whether the job still holds the workspace: a new build must wait.
    /// `Unknown` is not active; if it were, coderd answers a new build with a
    /// conflict rather than running two at once.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Canceling)
    }
}

wire_enum! {
    /// Connectivity of an agent, as coderd computes it at read time.
    pub enum AgentStatus {
        Connecting => "connecting",
        Connected => "connected",
        Disconnected => "disconnected",
        /// Never connected within its connection timeout: a template or
        /// startup failure, not a dead agent.
        Timeout => "timeout",
    }
}

wire_enum! {
    /// What the agent reports about its own startup and shutdown.
    pub enum AgentLifecycle {
        Created => "created",
        Starting => "starting",
        StartTimeout => "start_timeout",
        StartError => "start_error",
        Ready => "ready",
        ShuttingDown => "shutting_down",
        ShutdownTimeout => "shutdown_timeout",
        ShutdownError => "shutdown_error",
        Off => "off",
    }
}

impl AgentLifecycle {
    /// Whether the agent's startup is over, one way or the other: nothing
    /// more is expected to change without a new event.
    pub fn is_settled(self) -> bool {
        !matches!(self, Self::Created | Self::Starting)
    }
}

wire_enum! {
    /// Whether a workspace is moved to the template's active version on start.
    pub enum AutomaticUpdates {
        Always => "always",
        Never => "never",
    }
}

/// `null` and a missing key both become the default (Go encodes a nil slice
/// as `null`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `null`, a missing key and `""` all become `None` (Go often encodes "no
/// value" as an empty string).
fn empty_as_none<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(deserializer)?.filter(|value| !value.is_empty()))
}

/// Longest job error kept: a provisioner's error can be a whole Terraform
/// log, and it ends up in a condition message and an Event.
pub const MAX_JOB_ERROR_CHARS: usize = 1024;

fn job_error<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(empty_as_none(deserializer)?.map(|error| crate::tenancy::cut(&error, MAX_JOB_ERROR_CHARS)))
}

/// The `{user}` path parameter by which coderd names the session token's
/// own user.
pub const TOKEN_USER: &str = "me";

/// `GET /users/me`, `GET /users/{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub username: String,
}

/// `GET /users`: a page of the users the token may read, ordered by
/// lower-cased username.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UsersResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub users: Vec<User>,
    /// Matches across all pages, not only this one.
    #[serde(default)]
    pub count: i64,
}

/// `GET /organizations/{organization}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Organization {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// `GET /organizations/{organization}/templates/{name}`, `GET /templates/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Template {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub organization_id: String,
    #[serde(default)]
    pub active_version_id: String,
    /// A start must then build `active_version_id`.
    #[serde(default)]
    pub require_active_version: bool,
    #[serde(default)]
    pub deprecated: bool,
    #[serde(default)]
    pub deprecation_message: String,
}

/// `GET /templateversions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TemplateVersion {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `None` for a version not (yet) attached to a template.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub template_id: Option<String>,
    #[serde(default)]
    pub organization_id: String,
}

/// A named set of parameter values, chosen when a workspace is created.
///
/// The Go type has no json tags, so its wire keys are PascalCase.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Preset {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: Vec<PresetParameter>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub desired_prebuild_instances: Option<i32>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub icon: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PresetParameter {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A rich parameter of a template version
/// (`GET /templateversions/{id}/rich-parameters`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TemplateVersionParameter {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    /// `string`, `number`, `bool` or `list(string)`.
    #[serde(rename = "type", default)]
    pub parameter_type: String,
    /// Whether the value may change after creation.
    #[serde(default)]
    pub mutable: bool,
    #[serde(default)]
    pub default_value: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub options: Vec<ParameterOption>,
    #[serde(default)]
    pub validation_regex: String,
    #[serde(default)]
    pub validation_error: String,
    #[serde(default)]
    pub validation_min: Option<i32>,
    #[serde(default)]
    pub validation_max: Option<i32>,
}

/// One allowed value of a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParameterOption {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub value: String,
}

/// `GET /workspaces/{id}`, `GET /users/{user}/workspace/{name}`, and the
/// items of `GET /workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Workspace {
    pub id: String,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub owner_id: String,
    #[serde(default)]
    pub owner_name: String,
    #[serde(default)]
    pub organization_id: String,
    #[serde(default)]
    pub template_id: String,
    #[serde(default)]
    pub template_name: String,
    #[serde(default)]
    pub template_active_version_id: String,
    #[serde(default)]
    pub template_require_active_version: bool,
    pub latest_build: WorkspaceBuild,
    /// The latest build does not use the template's active version.
    #[serde(default)]
    pub outdated: bool,
    #[serde(default)]
    pub automatic_updates: AutomaticUpdates,
    #[serde(default)]
    pub ttl_ms: Option<i64>,
    #[serde(default)]
    pub health: WorkspaceHealth,
    /// Set when a dormant workspace is scheduled for deletion.
    #[serde(default)]
    pub deleting_at: Option<Timestamp>,
    #[serde(default)]
    pub dormant_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct WorkspaceHealth {
    #[serde(default)]
    pub healthy: bool,
    /// Ids of the agents that are not healthy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub failing_agents: Vec<String>,
}

/// `GET /workspaces?q=...`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkspacesResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub workspaces: Vec<Workspace>,
    /// Matches across all pages, not only this one.
    #[serde(default)]
    pub count: i64,
}

/// Who or what made a build: coderd's build `reason`. A reason this
/// operator does not know (a newer coderd's) is kept as Coder spelled it, so
/// that status still shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkspaceBuildReason {
    /// Requested through the API without a reason of its own, as the
    /// operator's builds are.
    Initiator,
    Autostart,
    Autostop,
    Dormancy,
    Dashboard,
    Cli,
    SshConnection,
    VscodeConnection,
    JetbrainsConnection,
    TaskAutoPause,
    TaskManualPause,
    TaskResume,
    Other(String),
}

impl WorkspaceBuildReason {
    const KNOWN: [(Self, &'static str); 12] = [
        (Self::Initiator, "initiator"),
        (Self::Autostart, "autostart"),
        (Self::Autostop, "autostop"),
        (Self::Dormancy, "dormancy"),
        (Self::Dashboard, "dashboard"),
        (Self::Cli, "cli"),
        (Self::SshConnection, "ssh_connection"),
        (Self::VscodeConnection, "vscode_connection"),
        (Self::JetbrainsConnection, "jetbrains_connection"),
        (Self::TaskAutoPause, "task_auto_pause"),
        (Self::TaskManualPause, "task_manual_pause"),
        (Self::TaskResume, "task_resume"),
    ];

    /// The reason as Coder spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(spelling) => spelling,
            known => Self::KNOWN.iter().find(|(reason, _)| reason == known).map_or("", |(_, wire)| wire),
        }
    }

    /// Reads a wire value; one this operator does not know is kept as is.
    pub fn from_wire(value: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(_, wire)| *wire == value)
            .map_or_else(|| Self::Other(value.to_string()), |(reason, _)| reason.clone())
    }

    /// Whether one of Coder's own policies made the build (autostop,
    /// dormancy, a task's auto-pause), not a person or a client.
    pub fn is_coder_policy(&self) -> bool {
        matches!(self, Self::Autostop | Self::Dormancy | Self::TaskAutoPause)
    }
}

impl std::fmt::Display for WorkspaceBuildReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for WorkspaceBuildReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WorkspaceBuildReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from_wire(&String::deserialize(deserializer)?))
    }
}

/// A plain string in the CRD: any reason Coder gives is kept.
impl schemars::JsonSchema for WorkspaceBuildReason {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkspaceBuildReason".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string"})
    }
}

/// `null`, a missing key and `""` are no reason.
fn build_reason<'de, D>(deserializer: D) -> Result<Option<WorkspaceBuildReason>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(empty_as_none(deserializer)?.map(|reason| WorkspaceBuildReason::from_wire(&reason)))
}

/// One build of a workspace, with the resources and agents it made.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WorkspaceBuild {
    pub id: String,
    #[serde(default)]
    pub build_number: i32,
    #[serde(default)]
    pub workspace_id: String,
    #[serde(default)]
    pub workspace_name: String,
    #[serde(default)]
    pub workspace_owner_name: String,
    #[serde(default)]
    pub template_version_id: String,
    #[serde(default)]
    pub transition: WorkspaceTransition,
    #[serde(default)]
    pub status: WorkspaceStatus,
    /// Who or what asked for the build; `None` when coderd gave none.
    #[serde(default, deserialize_with = "build_reason")]
    pub reason: Option<WorkspaceBuildReason>,
    /// The user whose request made the build.
    #[serde(default)]
    pub initiator_id: String,
    #[serde(default)]
    pub initiator_name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub job: ProvisionerJob,
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<WorkspaceResource>,
    /// When autostop stops the workspace, if it will.
    #[serde(default)]
    pub deadline: Option<Timestamp>,
}

impl WorkspaceBuild {
    /// Whether the build was requested through the API without a reason of
    /// its own, as the operator's builds are.
    pub fn made_through_api(&self) -> bool {
        self.reason == Some(WorkspaceBuildReason::Initiator)
    }

    /// Whether one of Coder's own policies made the build (autostop,
    /// dormancy, a task's auto-pause), not a person or a client.
    pub fn made_by_coder_policy(&self) -> bool {
        self.reason.as_ref().is_some_and(WorkspaceBuildReason::is_coder_policy)
    }

    /// The build's reason as Coder spelled it, `""` for none.
    pub fn reason_str(&self) -> &str {
        self.reason.as_ref().map_or("", WorkspaceBuildReason::as_str)
    }

    /// Every agent of every resource of this build.
    pub fn agents(&self) -> impl Iterator<Item = &WorkspaceAgent> {
        self.resources.iter().flat_map(|resource| resource.agents.iter())
    }

    /// Whether the agent of this id belongs to an external resource: one
    /// that runs outside the workspace's builds, so a stop and a start
    /// cannot bring it back.
    pub fn agent_is_external(&self, agent_id: &str) -> bool {
        self.resources.iter().any(|resource| resource.is_external() && resource.agents.iter().any(|a| a.id == agent_id))
    }
}

/// The provisioner job that carries out a build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProvisionerJob {
    pub id: String,
    #[serde(default)]
    pub status: ProvisionerJobStatus,
    /// Cut to [`MAX_JOB_ERROR_CHARS`]: it is copied into status and Events.
    #[serde(default, deserialize_with = "job_error")]
    pub error: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub error_code: Option<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub completed_at: Option<Timestamp>,
    #[serde(default)]
    pub canceled_at: Option<Timestamp>,
    #[serde(default)]
    pub queue_position: i32,
}

/// Something a build provisioned (a container, a VM); may host agents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WorkspaceResource {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub resource_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub agents: Vec<WorkspaceAgent>,
}

/// The Terraform resource type of an agent that a person runs on a host of
/// their own (`coder_external_agent`), not one the provisioner starts.
pub const EXTERNAL_AGENT_RESOURCE_TYPE: &str = "coder_external_agent";

impl WorkspaceResource {
    pub fn is_external(&self) -> bool {
        self.resource_type == EXTERNAL_AGENT_RESOURCE_TYPE
    }
}

/// `GET /workspaceagents/{id}`, and the agents of a build's resources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WorkspaceAgent {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `None` for a root agent; set for a sub-agent (e.g. a devcontainer).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub status: AgentStatus,
    #[serde(default)]
    pub lifecycle_state: AgentLifecycle,
    pub created_at: Timestamp,
    #[serde(default)]
    pub first_connected_at: Option<Timestamp>,
    #[serde(default)]
    pub last_connected_at: Option<Timestamp>,
    #[serde(default)]
    pub disconnected_at: Option<Timestamp>,
    /// 0: no connection timeout, the agent is never reported as `timeout`.
    #[serde(default)]
    pub connection_timeout_seconds: i32,
    /// The template's `order` for the agent; absent from older releases, where
    /// it reads as 0 and agents sort by name alone.
    #[serde(default)]
    pub display_order: i32,
    #[serde(default)]
    pub health: AgentHealth,
}

impl WorkspaceAgent {
    pub fn is_root(&self) -> bool {
        self.parent_id.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AgentHealth {
    #[serde(default)]
    pub healthy: bool,
    /// Why it is unhealthy; empty when healthy.
    #[serde(default)]
    pub reason: String,
}

/// `GET /workspaceagents/{id}/listening-ports`: only its status matters to the
/// reachability probe, the body is here for completeness.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ListeningPorts {
    /// Present in older releases only.
    #[serde(default)]
    pub err: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<ListeningPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListeningPort {
    #[serde(default)]
    pub process_name: String,
    #[serde(default)]
    pub network: String,
    pub port: u16,
}

/// A rich parameter value sent with a create or build request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterValue {
    pub name: String,
    pub value: String,
}

/// `POST /users/{user}/workspaces`. Set exactly one of `template_id` and
/// `template_version_id`; unset options are left out of the body so coderd
/// applies its own defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateWorkspaceRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_preset_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rich_parameter_values: Vec<ParameterValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostart_schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_updates: Option<AutomaticUpdates>,
    /// Only understood by newer releases; older ones ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_prebuild_if_available: Option<bool>,
}

/// `POST /workspaces/{id}/builds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateWorkspaceBuildRequest {
    pub transition: WorkspaceTransition,
    /// Unset: coderd builds the workspace's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rich_parameter_values: Vec<ParameterValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_preset_id: Option<String>,
    /// Delete only: forget the workspace without destroying its resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan: Option<bool>,
    /// Why the build is made, as a client may say (`dashboard`, `cli`, ...);
    /// unset: coderd records `initiator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CreateWorkspaceBuildRequest {
    /// A build of `transition` with every option left to coderd.
    pub fn new(transition: WorkspaceTransition) -> Self {
        Self {
            transition,
            template_version_id: None,
            rich_parameter_values: Vec::new(),
            template_version_preset_id: None,
            orphan: None,
            reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A workspace as coderd returns it: extra keys, nulls, a sub-agent.
    const WORKSPACE: &str = r#"{
        "id": "0b6e1f5e-2f1d-4a77-9c1a-1f0d2b9a6c01",
        "created_at": "2025-03-01T09:00:00.123456Z",
        "updated_at": "2025-03-01T09:05:00Z",
        "owner_id": "7d2f7a8e-6c55-4d7e-a9b0-8d1e5c3f2a10",
        "owner_name": "alice",
        "owner_avatar_url": "",
        "organization_id": "1e5a3c2b-9d8f-4a7b-8c6d-5e4f3a2b1c0d",
        "organization_name": "coder",
        "template_id": "c3b2a1d0-e9f8-4a7b-9c6d-5e4f3a2b1c0e",
        "template_name": "docker-dev",
        "template_icon": "/icon/docker.png",
        "template_active_version_id": "a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5",
        "template_require_active_version": true,
        "latest_build": {
            "id": "b0b0b0b0-1111-4222-8333-444444444444",
            "created_at": "2025-03-01T09:01:00Z",
            "updated_at": "2025-03-01T09:02:30+02:00",
            "workspace_id": "0b6e1f5e-2f1d-4a77-9c1a-1f0d2b9a6c01",
            "workspace_name": "fix-login-bug",
            "workspace_owner_id": "7d2f7a8e-6c55-4d7e-a9b0-8d1e5c3f2a10",
            "workspace_owner_name": "alice",
            "template_version_id": "a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5",
            "template_version_name": "v3",
            "build_number": 7,
            "transition": "start",
            "initiator_id": "7d2f7a8e-6c55-4d7e-a9b0-8d1e5c3f2a10",
            "initiator_name": "alice",
            "job": {
                "id": "j0b0j0b0-1111-4222-8333-444444444444",
                "created_at": "2025-03-01T09:01:00Z",
                "started_at": "2025-03-01T09:01:02Z",
                "completed_at": "2025-03-01T09:02:30Z",
                "error": "",
                "status": "succeeded",
                "worker_id": "w1",
                "file_id": "f1",
                "tags": {"scope": "organization"},
                "queue_position": 0,
                "queue_size": 0
            },
            "reason": "initiator",
            "resources": [
                {
                    "id": "r1r1r1r1-1111-4222-8333-444444444444",
                    "created_at": "2025-03-01T09:02:00Z",
                    "job_id": "j0b0j0b0-1111-4222-8333-444444444444",
                    "workspace_transition": "start",
                    "type": "docker_container",
                    "name": "workspace",
                    "hide": false,
                    "agents": [
                        {
                            "id": "a9a9a9a9-1111-4222-8333-444444444444",
                            "parent_id": null,
                            "created_at": "2025-03-01T09:02:00Z",
                            "updated_at": "2025-03-01T09:04:00Z",
                            "first_connected_at": "2025-03-01T09:02:10Z",
                            "last_connected_at": "2025-03-01T09:04:00Z",
                            "status": "connected",
                            "lifecycle_state": "ready",
                            "name": "dev-coderd-chat",
                            "resource_id": "r1r1r1r1-1111-4222-8333-444444444444",
                            "architecture": "amd64",
                            "apps": [],
                            "connection_timeout_seconds": 120,
                            "troubleshooting_url": "",
                            "subsystems": null,
                            "health": {"healthy": true},
                            "display_apps": [],
                            "log_sources": [],
                            "scripts": []
                        },
                        {
                            "id": "b8b8b8b8-1111-4222-8333-444444444444",
                            "parent_id": "a9a9a9a9-1111-4222-8333-444444444444",
                            "created_at": "2025-03-01T09:02:00Z",
                            "status": "disconnected",
                            "lifecycle_state": "off",
                            "name": "devcontainer",
                            "connection_timeout_seconds": 0,
                            "health": {"healthy": false, "reason": "agent has lost connection"}
                        }
                    ]
                },
                {
                    "id": "r2r2r2r2-1111-4222-8333-444444444444",
                    "type": "docker_volume",
                    "name": "home",
                    "agents": null
                }
            ],
            "deadline": null,
            "max_deadline": null,
            "status": "running",
            "daily_cost": 0
        },
        "latest_app_status": null,
        "outdated": false,
        "name": "fix-login-bug",
        "autostart_schedule": null,
        "ttl_ms": 3600000,
        "last_used_at": "2025-03-01T09:04:00Z",
        "deleting_at": null,
        "dormant_at": null,
        "health": {"healthy": false, "failing_agents": ["b8b8b8b8-1111-4222-8333-444444444444"]},
        "automatic_updates": "never",
        "allow_renames": false,
        "favorite": false,
        "next_start_at": null
    }"#;

    fn timestamp(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn build_reasons_are_read_as_coder_spells_them_and_a_new_one_is_kept() {
        for (reason, wire) in WorkspaceBuildReason::KNOWN {
            assert_eq!(WorkspaceBuildReason::from_wire(wire), reason);
            assert_eq!(reason.as_str(), wire);
        }
        let newer = WorkspaceBuildReason::from_wire("task_snooze");
        assert_eq!(newer, WorkspaceBuildReason::Other("task_snooze".into()));
        assert_eq!(newer.as_str(), "task_snooze");
        let build = |reason: serde_json::Value| {
            let mut build: serde_json::Value = serde_json::from_str(WORKSPACE).expect("workspace");
            build["latest_build"]["reason"] = reason;
            serde_json::from_value::<Workspace>(build).expect("reads").latest_build
        };
        assert!(build(json!("initiator")).made_through_api());
        assert!(build(json!("autostop")).made_by_coder_policy());
        assert!(!build(json!("dashboard")).made_by_coder_policy() && !build(json!("dashboard")).made_through_api());
        for none in [json!(""), json!(null)] {
            assert_eq!(build(none).reason, None);
        }
    }

    #[test]
    fn decodes_a_full_workspace() {
        let workspace: Workspace = serde_json::from_str(WORKSPACE).unwrap();
        assert_eq!(workspace.name, "fix-login-bug");
        assert_eq!(workspace.owner_name, "alice");
        assert!(workspace.template_require_active_version);
        assert_eq!(workspace.automatic_updates, AutomaticUpdates::Never);
        assert_eq!(workspace.ttl_ms, Some(3_600_000));
        assert_eq!(workspace.deleting_at, None);
        assert_eq!(workspace.health.failing_agents.len(), 1);

        let build = &workspace.latest_build;
        assert_eq!(build.build_number, 7);
        assert_eq!(build.transition, WorkspaceTransition::Start);
        assert_eq!(build.status, WorkspaceStatus::Running);
        assert_eq!(build.updated_at, timestamp("2025-03-01T07:02:30Z"));
        assert_eq!(build.deadline, None);
        assert_eq!(build.job.status, ProvisionerJobStatus::Succeeded);
        assert_eq!(build.job.error, None, "an empty error means no error");
        assert_eq!(build.job.completed_at, Some(timestamp("2025-03-01T09:02:30Z")));
        assert_eq!(build.resources.len(), 2);
        assert_eq!(build.resources[0].resource_type, "docker_container");
        assert!(build.resources[1].agents.is_empty(), "null agents");

        let agents: Vec<_> = build.agents().collect();
        assert_eq!(agents.len(), 2);
        let chat = agents[0];
        assert!(chat.is_root());
        assert_eq!(chat.status, AgentStatus::Connected);
        assert_eq!(chat.lifecycle_state, AgentLifecycle::Ready);
        assert_eq!(chat.connection_timeout_seconds, 120);
        assert_eq!(chat.disconnected_at, None, "missing key");
        assert!(chat.health.healthy);
        assert_eq!(chat.display_order, 0, "missing key");
        let sub = agents[1];
        assert_eq!(sub.parent_id.as_deref(), Some("a9a9a9a9-1111-4222-8333-444444444444"));
        assert_eq!(sub.health.reason, "agent has lost connection");
    }

    #[test]
    fn decodes_a_failed_build_with_job_error() {
        let build: WorkspaceBuild = serde_json::from_value(json!({
            "id": "b1",
            "build_number": 2,
            "transition": "stop",
            "status": "failed",
            "created_at": "2025-03-01T09:00:00Z",
            "updated_at": "2025-03-01T09:00:05Z",
            "job": {
                "id": "j1",
                "status": "failed",
                "error": "terraform apply: exit status 1",
                "error_code": "REQUIRED_TEMPLATE_VARIABLES",
                "created_at": "2025-03-01T09:00:00Z",
                "started_at": null,
                "canceled_at": null
            },
            "resources": null,
            "deadline": "2025-03-01T17:00:00Z"
        }))
        .unwrap();
        assert_eq!(build.status, WorkspaceStatus::Failed);
        assert_eq!(build.job.error.as_deref(), Some("terraform apply: exit status 1"));

        let long = "e".repeat(100_000);
        let job: ProvisionerJob =
            serde_json::from_value(json!({"id": "j", "created_at": "2025-03-01T09:00:00Z", "error": long})).unwrap();
        let cut = job.error.unwrap();
        assert_eq!(cut.chars().count(), MAX_JOB_ERROR_CHARS + 1, "cut, with a mark");
        assert!(cut.ends_with('…'));
        assert_eq!(build.job.error_code.as_deref(), Some("REQUIRED_TEMPLATE_VARIABLES"));
        assert_eq!(build.job.started_at, None);
        assert!(build.resources.is_empty());
        assert_eq!(build.deadline, Some(timestamp("2025-03-01T17:00:00Z")));
    }

    #[test]
    fn decodes_a_workspace_list() {
        let workspace: serde_json::Value = serde_json::from_str(WORKSPACE).unwrap();
        let list: WorkspacesResponse = serde_json::from_value(json!({"workspaces": [workspace], "count": 41})).unwrap();
        assert_eq!(list.workspaces.len(), 1);
        assert_eq!(list.count, 41);

        let empty: WorkspacesResponse = serde_json::from_value(json!({"workspaces": null, "count": 0})).unwrap();
        assert!(empty.workspaces.is_empty());
    }

    #[test]
    fn decodes_presets_with_pascal_case_keys() {
        let presets: Vec<Preset> = serde_json::from_value(json!([
            {
                "ID": "p1",
                "Name": "large",
                "Parameters": [{"Name": "cpu", "Value": "8"}, {"Name": "memory", "Value": "16"}],
                "Default": true,
                "DesiredPrebuildInstances": 2,
                "Description": "For big builds",
                "Icon": "/emojis/1f680.png"
            },
            {
                "ID": "p2",
                "Name": "small",
                "Parameters": null,
                "Default": false,
                "DesiredPrebuildInstances": null
            }
        ]))
        .unwrap();
        assert_eq!(presets[0].name, "large");
        assert!(presets[0].default);
        assert_eq!(presets[0].desired_prebuild_instances, Some(2));
        assert_eq!(presets[0].parameters[0], PresetParameter { name: "cpu".into(), value: "8".into() });
        assert_eq!(presets[0].icon, "/emojis/1f680.png");
        assert!(presets[1].parameters.is_empty());
        assert_eq!(presets[1].desired_prebuild_instances, None);
        assert_eq!(presets[1].description, "");
    }

    #[test]
    fn decodes_templates_and_versions() {
        let template: Template = serde_json::from_value(json!({
            "id": "t1",
            "name": "docker-dev",
            "display_name": "Docker",
            "organization_id": "o1",
            "active_version_id": "v9",
            "require_active_version": true,
            "deprecated": true,
            "deprecation_message": "use docker-dev-2",
            "build_time_stats": {"start": {"P50": 1000, "P95": null}}
        }))
        .unwrap();
        assert_eq!(template.active_version_id, "v9");
        assert!(template.require_active_version);
        assert_eq!(template.deprecation_message, "use docker-dev-2");

        let version: TemplateVersion = serde_json::from_value(json!({
            "id": "v9", "name": "v9-name", "template_id": "t1", "organization_id": "o1",
            "job": {"id": "j", "status": "succeeded"}
        }))
        .unwrap();
        assert_eq!(version.template_id.as_deref(), Some("t1"));
        let detached: TemplateVersion =
            serde_json::from_value(json!({"id": "v1", "name": "x", "template_id": null})).unwrap();
        assert_eq!(detached.template_id, None);
    }

    #[test]
    fn decodes_rich_parameters() {
        let parameters: Vec<TemplateVersionParameter> = serde_json::from_value(json!([
            {
                "name": "cpu",
                "display_name": "CPU cores",
                "description": "",
                "type": "number",
                "form_type": "slider",
                "mutable": true,
                "default_value": "2",
                "icon": "",
                "options": [],
                "validation_min": 1,
                "validation_max": 16,
                "validation_monotonic": "",
                "required": false,
                "ephemeral": false
            },
            {
                "name": "region",
                "type": "string",
                "default_value": "",
                "required": true,
                "options": [{"name": "EU", "description": "Frankfurt", "value": "eu", "icon": ""}],
                "validation_min": null,
                "validation_max": null
            }
        ]))
        .unwrap();
        assert_eq!(parameters[0].parameter_type, "number");
        assert_eq!(parameters[0].validation_max, Some(16));
        assert!(parameters[0].mutable);
        assert!(parameters[1].required);
        assert_eq!(parameters[1].options[0].value, "eu");
        assert_eq!(parameters[1].validation_min, None);
    }

    #[test]
    fn decodes_users_and_organizations() {
        let user: User = serde_json::from_value(json!({
            "id": "u1", "username": "alice", "email": "alice@example.com",
            "roles": [{"name": "owner"}], "organization_ids": ["o1"]
        }))
        .unwrap();
        assert_eq!(user.username, "alice");
        let organization: Organization = serde_json::from_value(json!({
            "id": "o1", "name": "coder", "display_name": "Coder", "is_default": true
        }))
        .unwrap();
        assert_eq!(organization.name, "coder");
    }

    #[test]
    fn decodes_listening_ports_old_and_new() {
        let old: ListeningPorts = serde_json::from_value(json!({"err": "", "ports": null})).unwrap();
        assert!(old.ports.is_empty());
        let new: ListeningPorts = serde_json::from_value(json!({
            "ports": [{"process_name": "node", "network": "tcp", "port": 3000}]
        }))
        .unwrap();
        assert_eq!(new.ports[0].port, 3000);
    }

    #[test]
    fn unknown_enum_values_fall_back() {
        let agent: WorkspaceAgent = serde_json::from_value(json!({
            "id": "a1",
            "name": "main",
            "created_at": "2025-03-01T09:00:00Z",
            "status": "hibernating",
            "lifecycle_state": "dreaming"
        }))
        .unwrap();
        assert_eq!(agent.status, AgentStatus::Unknown);
        assert_eq!(agent.lifecycle_state, AgentLifecycle::Unknown);

        assert_eq!(ProvisionerJobStatus::from_wire("unknown"), ProvisionerJobStatus::Unknown);
        assert_eq!(WorkspaceStatus::from_wire("paused"), WorkspaceStatus::Unknown);
        assert_eq!(WorkspaceTransition::from_wire("hibernate"), WorkspaceTransition::Unknown);
        assert_eq!(serde_json::from_value::<AutomaticUpdates>(json!(null)).unwrap(), AutomaticUpdates::Unknown);
    }

    #[test]
    fn missing_enum_keys_default_to_unknown() {
        let job: ProvisionerJob =
            serde_json::from_value(json!({"id": "j", "created_at": "2025-03-01T09:00:00Z"})).unwrap();
        assert_eq!(job.status, ProvisionerJobStatus::Unknown);
        assert!(!job.status.is_active());
    }

    #[test]
    fn wire_strings_round_trip() {
        use AgentLifecycle as L;
        for state in [
            L::Created,
            L::Starting,
            L::StartTimeout,
            L::StartError,
            L::Ready,
            L::ShuttingDown,
            L::ShutdownTimeout,
            L::ShutdownError,
            L::Off,
        ] {
            assert_eq!(L::from_wire(state.as_str()), state);
            assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        }
        assert_eq!(L::StartTimeout.as_str(), "start_timeout");
        assert_eq!(AgentStatus::Timeout.to_string(), "timeout");
        assert_eq!(WorkspaceStatus::Canceling.as_str(), "canceling");
    }

    #[test]
    fn active_job_statuses() {
        use ProvisionerJobStatus as S;
        let active: Vec<_> = [S::Pending, S::Running, S::Succeeded, S::Canceling, S::Canceled, S::Failed, S::Unknown]
            .into_iter()
            .filter(|status| status.is_active())
            .collect();
        assert_eq!(active, [S::Pending, S::Running, S::Canceling]);
    }

    #[test]
    fn a_missing_id_is_an_error() {
        assert!(serde_json::from_value::<User>(json!({"username": "alice"})).is_err());
    }

    #[test]
    fn create_workspace_request_leaves_out_unset_options() {
        let request = CreateWorkspaceRequest {
            name: "fix-login-bug".into(),
            template_id: Some("t1".into()),
            template_version_preset_id: Some("p1".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({
                "name": "fix-login-bug",
                "template_id": "t1",
                "template_version_preset_id": "p1"
            })
        );

        let request = CreateWorkspaceRequest {
            name: "ws".into(),
            template_version_id: Some("v1".into()),
            rich_parameter_values: vec![ParameterValue { name: "cpu".into(), value: "4".into() }],
            automatic_updates: Some(AutomaticUpdates::Always),
            claim_prebuild_if_available: Some(true),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({
                "name": "ws",
                "template_version_id": "v1",
                "rich_parameter_values": [{"name": "cpu", "value": "4"}],
                "automatic_updates": "always",
                "claim_prebuild_if_available": true
            })
        );
    }

    #[test]
    fn build_request_leaves_out_unset_options() {
        let stop = CreateWorkspaceBuildRequest::new(WorkspaceTransition::Stop);
        assert_eq!(serde_json::to_value(&stop).unwrap(), json!({"transition": "stop"}));

        let start = CreateWorkspaceBuildRequest {
            template_version_id: Some("v9".into()),
            ..CreateWorkspaceBuildRequest::new(WorkspaceTransition::Start)
        };
        assert_eq!(serde_json::to_value(&start).unwrap(), json!({"transition": "start", "template_version_id": "v9"}));

        let orphan = CreateWorkspaceBuildRequest {
            orphan: Some(true),
            ..CreateWorkspaceBuildRequest::new(WorkspaceTransition::Delete)
        };
        assert_eq!(serde_json::to_value(&orphan).unwrap(), json!({"transition": "delete", "orphan": true}));
    }
}

/// `GET /chats/{id}` (docs/coder-api.md, "Chats"): a chat and, for a root chat,
/// its sub-agent chats.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chat {
    pub id: String,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub workspace_id: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub build_id: Option<String>,
    /// The agent the chat is bound to; stale after a stop/start made outside
    /// chatd until the chat's next turn rebinds it.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub agent_id: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub parent_chat_id: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub root_chat_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub title: String,
    /// `waiting | running | error | requires_action | interrupting`, kept as
    /// sent so that a value from a newer release is shown, not lost.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub last_error: Option<ChatError>,
    /// `None` while the chat has no pinned context.
    #[serde(default)]
    pub context: Option<ChatContext>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub children: Vec<Chat>,
}

impl Chat {
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ChatError {
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
}

/// A chat's pinned context and whether it lags the agent's latest snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ChatContext {
    #[serde(default)]
    pub dirty: bool,
    #[serde(default)]
    pub dirty_since: Option<Timestamp>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub error: String,
    /// Only on the single-chat read: instruction files, skills, MCP configs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<ChatContextResource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ChatContextResource {
    #[serde(default, deserialize_with = "null_as_default")]
    pub source: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
}
