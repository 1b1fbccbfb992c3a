//! The `ChatWorkspace` custom resource: the desired state of one Coder
//! workspace, how to create it, and what the operator observed of it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::coder::{self, AgentLifecycle, ProvisionerJobStatus, WorkspaceBuildReason, WorkspaceTransition};

/// Finalizer that lets the operator apply `deletionPolicy` before the
/// resource disappears.
pub const FINALIZER: &str = "chat.coder.com/workspace";

/// Field manager for everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "chatworkspace-operator";

/// A new value of this annotation (any value; a time, as `kubectl rollout
/// restart` stamps one) asks for one start of a workspace that Coder or a
/// person stopped.
pub const START_REQUESTED_AT: &str = "chat.coder.com/start-requested-at";
/// A new value of this annotation asks for one restart of a running
/// workspace (a stop, then a start), counted against the recovery budget,
/// as `kubectl rollout restart` does for a Deployment; `kubectl cws restart`
/// writes it. `status.restart` records the value acted on.
pub const RESTART_REQUESTED_AT: &str = "chat.coder.com/restart-requested-at";

/// A Coder workspace used by an AI chat, kept in the state its users ask for.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chat.coder.com",
    version = "v1alpha1",
    kind = "ChatWorkspace",
    namespaced,
    shortname = "cws",
    status = "ChatWorkspaceStatus",
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".spec.desiredState"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agent.status"}"#,
    printcolumn = r#"{"name":"Workspace","type":"string","priority":1,"jsonPath":".status.workspace.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("has(self.spec.workspaceName) || (size(self.metadata.name) <= 32 && self.metadata.name.matches('^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$') && !(self.metadata.name in ['new', 'create']))").message("metadata.name cannot be a Coder workspace name (1 to 32 letters, digits and single hyphens, not new or create): set spec.workspaceName"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.workspace) || self.spec.template == oldSelf.spec.template").message("spec.template is a creation-time choice and cannot change once the workspace exists; create a new ChatWorkspace instead"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.workspace) || (has(self.spec.preset) == has(oldSelf.spec.preset) && (!has(self.spec.preset) || self.spec.preset == oldSelf.spec.preset))").message("spec.preset is a creation-time choice and cannot change once the workspace exists; create a new ChatWorkspace instead"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.workspace) || oldSelf.spec.parameters.all(p, self.spec.parameters.exists(q, q.name == p.name && q.value == p.value))").message("spec.parameters are creation-time values and cannot change or go once the workspace exists (values may only be added, for parameters that a new template version adds); create a new ChatWorkspace instead"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.workspace) || (has(self.spec.workspaceName) == has(oldSelf.spec.workspaceName) && (!has(self.spec.workspaceName) || self.spec.workspaceName == oldSelf.spec.workspaceName))").message("spec.workspaceName is immutable once the workspace exists")
)]
#[x_kube(
    validation = Rule::new("has(self.owner) == has(oldSelf.owner) && (!has(self.owner) || self.owner == oldSelf.owner)").message("spec.owner is immutable"),
    validation = Rule::new("has(self.organization) == has(oldSelf.organization) && (!has(self.organization) || self.organization == oldSelf.organization)").message("spec.organization is immutable")
)]
#[serde(rename_all = "camelCase")]
pub struct ChatWorkspaceSpec {
    /// The state to keep the workspace in. AI agents patch this field.
    #[serde(default)]
    pub desired_state: DesiredState,

    /// Coder user that owns the workspace, by username (at most 32
    /// characters, as coderd allows) or user id (a UUID in any form coderd
    /// reads as one: 36 characters, 32 hex digits, in braces, or with a
    /// `urn:uuid:` prefix, at most 45 characters); default: the token's
    /// own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.owner must not be empty"))]
    pub owner: Option<String>,

    /// Coder organization of the template, by name (at most 32 characters,
    /// as coderd allows) or id (a UUID); default: `coder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 36))]
    pub organization: Option<String>,

    /// Name of the Coder workspace; default: `metadata.name`. An existing
    /// workspace of that name and owner is adopted only with `adopt: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9](-?[a-zA-Z0-9])*$"), length(max = 32))]
    pub workspace_name: Option<String>,

    /// The template to create the workspace from (creation time only: it may
    /// change until the workspace exists).
    pub template: TemplateRef,

    /// A preset of the template version, applied when the workspace is
    /// created (never on start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetRef>,

    /// Rich parameter values used when the workspace is created; each name
    /// at most once (a list keyed by name, so the API server rejects repeats).
    /// Once the workspace exists they cannot change, but values may be added
    /// for parameters that a new template version adds: a start onto that
    /// version (the template requires its active version) sends them.
    /// Coder sets no limits here; these leave room for real templates (a
    /// few dozen parameters, values such as a repository URL or a short
    /// JSON list) while bounding what one resource costs: at most 64
    /// parameters, names of at most 128 characters, values of at most 4096.
    #[serde(default)]
    #[schemars(length(max = 64), schema_with = "parameters_schema")]
    pub parameters: Vec<Parameter>,

    /// The agent whose health counts; default: Coder's chat-agent rule
    /// (root agents; a single `*-coderd-chat` agent wins, else the first).
    /// A Coder agent name: letters, digits and single hyphens; at most 64
    /// characters (it is a DNS label in the agent's hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9](-?[a-zA-Z0-9])*$"), length(max = 64))]
    pub agent_name: Option<String>,

    /// Automatic stop-then-start recovery of a workspace whose agent died.
    #[serde(default)]
    pub recovery: RecoverySpec,

    /// What the operator does for the chat bound to the workspace around
    /// its own builds.
    #[serde(default)]
    pub chat: ChatSpec,

    /// What deleting this resource does to the workspace.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What a person's stop in Coder does while desiredState is Running
    /// (Respect: it stays stopped; Restart: started again, budgeted).
    #[serde(default)]
    pub outside_stops: OutsideStops,
    /// What the operator does once the workspace it drove was deleted in
    /// Coder (Recreate: create it again while desiredState is Running;
    /// Leave: report it and create nothing).
    #[serde(default)]
    pub deleted_in_coder: DeletedInCoder,

    /// A Secret in this namespace with keys `url` and `token`; default: the
    /// operator's own Coder credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretRef>,

    /// Consent to drive (and, with `deletionPolicy: Delete`, delete) a
    /// workspace of this owner and name that exists before this resource
    /// creates one. Without it such a workspace is left alone and the
    /// resource reports `Degraded` (`AdoptionNotConsented`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// What a stop made by a person in Coder (the dashboard, the CLI, the API)
/// does while `desiredState` is `Running`. A stop by Coder's own policies
/// (autostop, dormancy, task pause) is always respected.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OutsideStops {
    /// Leave it stopped until `desiredState` changes or the
    /// `chat.coder.com/start-requested-at` annotation gets a new value.
    #[default]
    Respect,
    /// Start it again, within the recovery budget (`recovery.maxAttempts`
    /// per `recovery.window`), so a person who keeps stopping it wins.
    Restart,
}

/// What happens after the workspace this resource drove was deleted in
/// Coder (by a person, or by Coder's dormancy auto-deletion).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletedInCoder {
    /// Create it again (a new workspace, from the spec) while `desiredState`
    /// is `Running`, with a Warning Event.
    #[default]
    Recreate,
    /// Report it (`Ready=False`, `DeletedInCoder`) and create nothing until
    /// this field becomes `Recreate`.
    Leave,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatSpec {
    /// Before a recovery's stop, interrupt a chat turn running on the dead
    /// agent, so that the model does not race the operator with its own
    /// stop and start tools.
    #[serde(default = "default_true")]
    pub interrupt_on_recovery: bool,
    /// After the operator's own start, once the new chat agent is ready:
    /// `Refresh` re-pins a stale or dirty chat context to it, `Leave` waits
    /// for the chat's next turn to do so.
    #[serde(default)]
    pub context_policy: ContextPolicy,
}

fn default_true() -> bool {
    true
}

impl Default for ChatSpec {
    fn default() -> Self {
        Self { interrupt_on_recovery: true, context_policy: ContextPolicy::default() }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ContextPolicy {
    /// Re-pin the context to the new agent (`PUT /chats/{id}/context`).
    #[default]
    Refresh,
    /// Leave it to the chat's next turn.
    Leave,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Stop the workspace, keep it in Coder.
    #[default]
    Stop,
    /// Delete the workspace in Coder.
    Delete,
    /// Leave the workspace as it is.
    Orphan,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.id)").message("set exactly one of template.name and template.id"))]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// A Coder template name: 1 to 32 letters, digits and single hyphens,
    /// as coderd allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$"), length(min = 1, max = 32))]
    pub name: Option<String>,
    /// A template id (a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 36))]
    pub id: Option<String>,
    /// Build this template version (its id, a UUID) at creation instead of
    /// the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 36))]
    pub version_id: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.id)").message("set exactly one of preset.name and preset.id"))]
pub struct PresetRef {
    /// A preset name. Coder only asks that it is not empty; 128 characters
    /// is far more than a name shown in its dashboard uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,
    /// A preset id (a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 36))]
    pub id: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Parameter {
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// A Secret name (a DNS subdomain: at most 253 characters).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Go-style duration strings such as `90s`, `1m30s` or `1h`.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// The shortest probe timeout: a probe through coderd takes a round trip to
/// the agent over its tunnel, which a shorter timeout would fail on a
/// healthy agent.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest probe timeout: coderd gives up dialling an agent after 30 s
/// itself, and a longer one would only hold a probe permit longer.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySpec {
    #[serde(default)]
    pub mode: RecoveryMode,
    /// How long the agent must stay disconnected before a stop/start.
    #[serde(default = "default_disconnected_threshold")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub disconnected_threshold: String,
    /// How long the reachability probe through coderd may take: 1s to 30s
    /// (coderd's own limit on dialling an agent).
    #[serde(default = "default_probe_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('30s')").message("spec.recovery.probeTimeout must be between 1s and 30s (coderd gives up dialling an agent after 30s)"))]
    pub probe_timeout: String,
    /// Automatic recoveries allowed per `window`.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub window: String,
    /// What to do with an agent that never connected within its connection
    /// timeout (coderd's `timeout` status).
    #[serde(default)]
    pub never_connected: NeverConnected,
}

fn default_disconnected_threshold() -> String {
    "90s".into()
}
fn default_probe_timeout() -> String {
    "30s".into()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_window() -> String {
    "1h".into()
}

impl Default for RecoverySpec {
    fn default() -> Self {
        Self {
            mode: RecoveryMode::default(),
            disconnected_threshold: default_disconnected_threshold(),
            probe_timeout: default_probe_timeout(),
            max_attempts: default_max_attempts(),
            window: default_window(),
            never_connected: NeverConnected::default(),
        }
    }
}

/// An agent that never connected within its connection timeout.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NeverConnected {
    /// Stop and start the workspace, within the same budget as a dead
    /// agent (chatd from coderd v2.36.1 on).
    #[default]
    Recover,
    /// Report it as a template or startup failure (`Degraded`); never build.
    Report,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecoveryMode {
    /// Stop and start the workspace when its agent is dead.
    #[default]
    Automatic,
    /// Observe and report only; never build.
    Disabled,
}

/// Recovery settings with their durations parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPolicy {
    pub automatic: bool,
    pub disconnected_threshold: Duration,
    pub probe_timeout: Duration,
    pub max_attempts: u32,
    pub window: Duration,
    pub never_connected: NeverConnected,
}

impl RecoverySpec {
    /// The schema's pattern admits only valid durations, so a parse error
    /// here means the object bypassed validation; it is reported, not
    /// guessed around.
    pub fn policy(&self) -> Result<RecoveryPolicy, String> {
        let field = |name: &str, value: &str| {
            parse_duration(value)
                .ok_or_else(|| format!("spec.recovery.{name}: {value:?} is not a duration like 90s, 1m30s or 1h"))
        };
        let probe_timeout = field("probeTimeout", &self.probe_timeout)?;
        // The schema bounds it too; this holds for an object stored before.
        if !(MIN_PROBE_TIMEOUT..=MAX_PROBE_TIMEOUT).contains(&probe_timeout) {
            return Err(format!(
                "spec.recovery.probeTimeout: {:?} is outside 1s to 30s (coderd gives up dialling an agent after 30s)",
                self.probe_timeout
            ));
        }
        Ok(RecoveryPolicy {
            automatic: self.mode == RecoveryMode::Automatic,
            disconnected_threshold: field("disconnectedThreshold", &self.disconnected_threshold)?,
            probe_timeout,
            max_attempts: self.max_attempts,
            window: field("window", &self.window)?,
            never_connected: self.never_connected,
        })
    }
}

/// Parses `DURATION_PATTERN` durations (`90s`, `1m30s`, `500ms`, `1h`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(number).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// What the operator observed and concluded. Decisions are made from fresh
/// Coder reads and the conditions; `phase` is a human summary only.
///
/// A resource the operator has not written yet reads back (apiserver
/// defaulting) with `observedGeneration: 0`, so that kstatus, which takes an
/// object without status or conditions for Current, sees it InProgress.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"observedGeneration": 0}))]
pub struct ChatWorkspaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceStatus>,
    /// The workspace this resource drove until it was deleted in Coder,
    /// while no other has replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_workspace: Option<WorkspaceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_build: Option<BuildStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// The workspace this resource may drive, and why: it created it, or
    /// adopted it with `spec.adopt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<OwnershipStatus>,
    /// The chat bound to the workspace (the latest one this token can read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatStatus>,
    /// The last build this operator requested, so that a failed start is
    /// retried once per spec change rather than in a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build_request: Option<BuildRequestStatus>,
    /// What deleting the resource met so far, while `deletionPolicy` cannot
    /// be applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupStatus>,
    /// The value of the `chat.coder.com/start-requested-at` annotation the
    /// operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_request: Option<String>,
    /// The last restart asked for with the `chat.coder.com/restart-requested-at`
    /// annotation, and what the operator made of it: the same value is
    /// never acted on twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartStatus>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

fn parameters_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Parameter>>();
    schema.insert("maxItems".into(), 64.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
    schema
}

fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Recovering,
    Deleting,
    Failed,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    pub id: String,
    pub name: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<String>,
}

/// The latest build as Coder reported it. Its values are Coder's: one a
/// newer coderd adds reads back as `unknown` (or, for `reason`, as
/// spelled) rather than failing to read the stored object.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    pub id: String,
    pub number: i32,
    pub transition: WorkspaceTransition,
    pub status: coder::WorkspaceStatus,
    pub job_status: ProvisionerJobStatus,
    /// Who or what made the build, as Coder records it (`initiator`,
    /// `autostop`, `dormancy`, `dashboard`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<WorkspaceBuildReason>,
    /// The user who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub id: String,
    pub name: String,
    /// As Coder reported it; a value a newer coderd adds reads as `unknown`.
    pub status: coder::AgentStatus,
    pub lifecycle_state: AgentLifecycle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_connected_at: Option<Time>,
    /// The agent's last heartbeat, while it is not connected (while it is,
    /// this would change every few seconds; see the AgentConnected
    /// condition instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    pub id: String,
    pub name: String,
    pub active_version_id: String,
    pub require_active_version: bool,
    #[serde(default)]
    pub deprecated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_message: Option<String>,
    /// The template version the presets belong to: the one a create builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default)]
    pub presets: Vec<PresetStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresetStatus {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_prebuild_instances: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipStatus {
    /// The Coder workspace id; empty while this resource's create is under
    /// way (recorded before the request, so that a lost answer is still
    /// known as this resource's own create).
    pub workspace_id: String,
    pub origin: WorkspaceOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkspaceOrigin {
    /// This resource created the workspace.
    Created,
    /// The workspace existed first; `spec.adopt: true` consented to drive it.
    Adopted,
    /// The resource drove the workspace before consent was recorded (an
    /// older operator): it keeps driving it, but `deletionPolicy: Delete`
    /// stops it instead of deleting it unless `spec.adopt` is true.
    Inherited,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecoveryStage {
    /// The recovery's stop build was issued; waiting for it.
    Stopping,
    /// The recovery's start build was issued; waiting for it and the agent.
    Starting,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<RecoveryStage>,
    /// Recoveries started in the current budget window.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// The spec generation the budget counts for: a spec change resets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// Consecutive failed probes while the agent said connected.
    #[serde(default)]
    pub probe_failures: u32,
}

/// A restart asked for through the annotation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// The annotation's value this is about.
    pub request: String,
    /// True: a stop, then a start, were begun for it (a recovery, counted
    /// against its budget); false: it was refused, and `message` says why.
    pub accepted: bool,
    pub message: String,
    pub time: Time,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatStatus {
    pub id: String,
    #[serde(default)]
    pub title: String,
    /// As Coder reports it: `waiting`, `running`, `error`,
    /// `requires_action`, `interrupting` (or a newer value, kept as is).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The chat is bound to an agent that is not the latest build's chat
    /// agent (e.g. after a stop/start), until its next turn or a re-pin.
    #[serde(default)]
    pub agent_stale: bool,
    /// Sub-agent chats spawned by this one; they share its workspace and agent.
    #[serde(default)]
    pub children: Vec<ChildChatStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ChatContextStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The start build after which the operator last re-pinned the context,
    /// so that it does so once per build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_for_build: Option<String>,
    /// The dead agent whose running turns the operator interrupted before a
    /// recovery's stop, so that it does so once per dead agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_for_agent: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildChatStatus {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub agent_stale: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatContextStatus {
    /// The chat's prompt is built from a pinned snapshot of the agent's
    /// instruction files and skills.
    pub pinned: bool,
    /// When the agent's files changed after the pin (a refresh re-pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pinned resources (instruction files, skills, MCP configs).
    #[serde(default)]
    pub resources: u32,
}

/// Progress of a deletion that could not finish at once. Kept in status so
/// that a restarted operator keeps counting (and backing off) where it was.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupStatus {
    /// Cleanup builds (the stop or delete of `deletionPolicy`) that failed
    /// in Coder so far; each retry waits twice as long as the one before.
    #[serde(default)]
    pub failed_builds: u32,
    /// The id of the last of them, so that each failed build counts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_build: Option<String>,
    /// The job error of the last of them, as Coder reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the deletion waits, and when the operator gives up and leaves the
    /// workspace in Coder (`--cleanup-timeout` after the deletion began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Only the operator writes it, and only `start` or `stop`.
    #[schemars(schema_with = "requested_transition_schema")]
    pub transition: WorkspaceTransition,
    /// Only `DesiredState` or `Recovery` (a create is a `DesiredState`
    /// start; a deletion's builds are not recorded here).
    pub reason: BuildReason,
    pub generation: i64,
    pub time: Time,
}

/// The transitions a build request can name. Every value any version
/// wrote is listed (`start`, `stop`), so every stored object still passes.
fn requested_transition_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let transitions = [WorkspaceTransition::Start, WorkspaceTransition::Stop, WorkspaceTransition::Delete];
    schemars::json_schema!({"type": "string", "enum": transitions.map(WorkspaceTransition::as_str)})
}

crate::conditions::vocabulary! {
    /// Why the operator asked for a build: `status.lastBuildRequest.reason`
    /// (`DesiredState` or `Recovery`) and the builds metric's label.
    pub enum BuildReason {
        /// `spec.desiredState` asks for it.
        DesiredState,
        /// Automatic stop-then-start of a workspace whose agent is dead.
        Recovery,
        /// `deletionPolicy`, while the resource is being deleted.
        Deletion,
        /// A create: the workspace's first start build, counted apart in the
        /// metric (status records it as `DesiredState`).
        Create,
    }
}

/// A reference to `resource` for the operator's long-lived maps: name and
/// namespace only. kube-runtime's `ObjectRef::from_obj` also copies the
/// resourceVersion and uid, which its equality and hash ignore, so they
/// would only cost memory (about 100 bytes per resource per map).
pub fn reference(resource: &ChatWorkspace) -> kube::runtime::reflector::ObjectRef<ChatWorkspace> {
    use kube::ResourceExt;
    let reference = kube::runtime::reflector::ObjectRef::new(&resource.name_any());
    match resource.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    }
}

impl ChatWorkspace {
    /// The Coder workspace name: `spec.workspaceName`, else the object's name.
    pub fn workspace_name(&self) -> String {
        self.spec.workspace_name.clone().unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a newer coderd could put in `status.latestBuild` and
    /// `status.agent`: a transition, build status, job status and agent
    /// states this version does not know, and a new build reason.
    const LATEST_BUILD_FROM_A_NEWER_CODERD: &str = r#"{
        "observedGeneration": 3,
        "latestBuild": {
            "id": "b1", "number": 4, "transition": "hibernate", "status": "hibernating",
            "jobStatus": "suspended", "reason": "task_snooze"
        },
        "agent": {"id": "a1", "name": "main", "status": "sleeping", "lifecycleState": "hibernated"}
    }"#;

    #[test]
    fn a_stored_build_with_values_a_newer_coderd_added_still_reads() {
        let status: ChatWorkspaceStatus =
            serde_json::from_str(LATEST_BUILD_FROM_A_NEWER_CODERD).expect("the stored object reads");
        let agent = status.agent.expect("agent");
        assert_eq!((agent.status, agent.lifecycle_state), (coder::AgentStatus::Unknown, AgentLifecycle::Unknown));
        let build = status.latest_build.expect("latestBuild");
        assert_eq!(build.transition, WorkspaceTransition::Unknown);
        assert_eq!(build.status, coder::WorkspaceStatus::Unknown);
        assert_eq!(build.job_status, ProvisionerJobStatus::Unknown);
        assert!(!build.job_status.is_active(), "an unknown job does not hold the workspace forever");
        assert_eq!(build.reason, Some(WorkspaceBuildReason::Other("task_snooze".into())));
        let written = serde_json::to_value(&build).expect("serializes");
        assert_eq!(written["reason"], "task_snooze", "a reason Coder gave is shown as Coder spelled it");
        assert_eq!(written["jobStatus"], "unknown");
    }

    #[test]
    fn typed_build_fields_are_written_as_coder_and_earlier_versions_spelled_them() {
        let status = ChatWorkspaceStatus {
            latest_build: Some(BuildStatus {
                id: "b1".into(),
                number: 2,
                transition: WorkspaceTransition::Start,
                status: coder::WorkspaceStatus::Running,
                job_status: ProvisionerJobStatus::Succeeded,
                reason: Some(WorkspaceBuildReason::Initiator),
                ..BuildStatus::default()
            }),
            last_build_request: Some(BuildRequestStatus {
                build_id: Some("b1".into()),
                transition: WorkspaceTransition::Stop,
                reason: BuildReason::Recovery,
                generation: 3,
                time: Time("2026-01-02T03:04:05Z".parse().expect("a time")),
            }),
            ..ChatWorkspaceStatus::default()
        };
        let written = serde_json::to_string(&status).expect("serializes");
        assert_eq!(
            written,
            concat!(
                r#"{"latestBuild":{"id":"b1","number":2,"transition":"start","status":"running","#,
                r#""jobStatus":"succeeded","reason":"initiator"},"lastBuildRequest":{"buildId":"b1","#,
                r#""transition":"stop","reason":"Recovery","generation":3,"time":"2026-01-02T03:04:05Z"},"#,
                r#""conditions":[]}"#
            )
        );
        let read: ChatWorkspaceStatus = serde_json::from_str(&written).expect("reads back");
        assert_eq!(read, status);
    }

    /// Every value any version wrote to `status.lastBuildRequest` (it only
    /// ever recorded starts and stops, for the desired state or a
    /// recovery): the schema's `enum:` must keep accepting each, or a
    /// status write to an object stored by an older version is refused.
    #[test]
    fn the_build_request_schema_accepts_every_value_any_version_wrote() {
        let crd = serde_json::to_value(<ChatWorkspace as kube::CustomResourceExt>::crd()).expect("the CRD");
        let request = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["lastBuildRequest"]
            ["properties"];
        let allowed = |field: &str| -> Vec<String> {
            serde_json::from_value(request[field]["enum"].clone()).unwrap_or_else(|_| panic!("{field} has an enum"))
        };
        for transition in ["start", "stop"] {
            assert!(allowed("transition").iter().any(|t| t == transition), "{transition}");
        }
        for reason in ["DesiredState", "Recovery"] {
            assert!(allowed("reason").iter().any(|r| r == reason), "{reason}");
        }
        assert_eq!(
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["latestBuild"]
                ["properties"]["jobStatus"],
            serde_json::json!({"type": "string"}),
            "what Coder says is not held to the values this version knows"
        );
    }

    #[test]
    fn the_operations_guide_lists_exactly_the_build_reasons() {
        use crate::conditions::{documented, undocumented_or_unknown};
        let documented = documented(include_str!("../docs/operations.md"), "| `reason` | The build is |");
        let names: Vec<&str> = BuildReason::ALL.iter().map(|r| r.as_str()).collect();
        if let Err(difference) = undocumented_or_unknown(&documented, &names) {
            panic!("{difference}");
        }
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "s", "90", "1.5s", "-1s", "1d", "10 s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_defaults_match_chatd() {
        let policy = RecoverySpec::default().policy().unwrap();
        assert!(policy.automatic);
        assert_eq!(policy.disconnected_threshold, Duration::from_secs(90));
        assert_eq!(policy.probe_timeout, Duration::from_secs(30));
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.window, Duration::from_secs(3600));
        assert_eq!(policy.never_connected, NeverConnected::Recover);
    }

    #[test]
    fn a_probe_timeout_outside_one_to_thirty_seconds_is_an_invalid_spec() {
        let with = |timeout: &str| RecoverySpec { probe_timeout: timeout.into(), ..RecoverySpec::default() }.policy();
        for inside in ["1s", "1000ms", "2s500ms", "30s", "29s999ms"] {
            assert!(with(inside).is_ok(), "{inside}");
        }
        for outside in ["999ms", "0s", "30s1ms", "31s", "1m", "1h"] {
            let error = with(outside).expect_err(outside);
            assert!(error.contains("probeTimeout") && error.contains("1s to 30s"), "{outside}: {error}");
        }
    }
}
