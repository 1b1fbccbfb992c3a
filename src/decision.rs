//! The operator's pure core: from the spec, what was just observed in Coder,
//! the previous status and the time, decide the one next action and the new
//! status. No I/O happens here, so every rule of chatd's workspace tools is a
//! plain unit or property test.
//!
//! The rules (README.md, "Behaviour (chatd's rules)"):
//! - never a build while the latest job is active;
//! - Running: create if absent, nothing after a succeeded start, else start
//!   (on the active version when the template requires it);
//! - Stopped: nothing after a succeeded stop, else stop (a failed stop is
//!   re-attempted);
//! - recovery (stop, then start) only when the chat agent is disconnected
//!   for at least the threshold *and* the reachability probe fails, both
//!   observed fresh, within a budget of attempts per window;
//! - an agent that never connected within its connection timeout is
//!   recovered the same way, within the same budget, unless the spec asks
//!   only to report it (chatd from coderd v2.36.1 on);
//! - an agent of an external resource is never stopped and started: it runs
//!   elsewhere, so only a person restarting it there brings it back.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::backoff::Backoff;
use crate::coder::{
    AgentLifecycle, AgentStatus, Chat, ProbeOutcome, ProvisionerJobStatus, Workspace, WorkspaceAgent, WorkspaceBuild,
    WorkspaceTransition, chat_agent,
};
use crate::conditions::{
    self, AGENT_CONNECTED, AGENT_REACHABLE, CHAT_CONTEXT_CURRENT, DEGRADED, PROGRESSING, READY, RECOVERING, Reason,
    Verdict,
};
use crate::crd::{
    self, BuildRequestStatus, ChatWorkspaceSpec, ChatWorkspaceStatus, ContextPolicy, DesiredState, NeverConnected,
    Phase, RecoveryPolicy, RecoveryStage, RecoveryStatus, RestartStatus,
};
use crate::events::EventReason;

/// How a recovery that a person asked for (the restart annotation) states
/// its reason in `status.recovery.lastReason`; the stage machinery is the
/// automatic recovery's.
const RESTART_REASON: &str = "a restart was asked for";

/// How soon to look again, by situation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requeue {
    /// While a build job is pending or running.
    pub active: Duration,
    /// While waiting for an agent to connect or become ready.
    pub agent: Duration,
    /// Between the two probes of chatd's "retry once" rule.
    pub probe_retry: Duration,
    /// Minimum time between a failed build and its retry.
    pub retry: Duration,
    /// When nothing is expected to change.
    pub stable: Duration,
}

impl Default for Requeue {
    fn default() -> Self {
        Self {
            active: Duration::from_secs(2),
            agent: Duration::from_secs(2),
            probe_retry: Duration::from_secs(1),
            retry: Duration::from_secs(10),
            stable: Duration::from_secs(30),
        }
    }
}

/// A reachability probe of the chat agent, as the Coder index holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub outcome: ProbeOutcome,
    /// Failed probes of this agent in a row, this one included (0 when it
    /// passed): chatd's "retry once" counts them.
    pub failures: u32,
    /// Recent enough for a destructive step to rely on.
    pub fresh: bool,
}

impl Probe {
    /// A probe that just completed, the first failure if it failed.
    pub fn just_now(outcome: ProbeOutcome) -> Self {
        let failures = u32::from(!outcome.is_reachable());
        Self { outcome, failures, fresh: true }
    }
}

/// What the reconciler saw in Coder for this resource.
#[derive(Clone, Debug)]
pub enum Observed<'a> {
    /// Another, older `ChatWorkspace` drives the same Coder workspace.
    Conflict { other: String },
    /// The workspace (or its absence), and the chat agent's probe result if
    /// `needs_probe` asked for one.
    Workspace {
        workspace: Option<&'a Workspace>,
        /// Read just now, one workspace at a time (not from a shared list).
        fresh: bool,
        probe: Option<&'a Probe>,
    },
}

/// The chat bound to the workspace, as the Coder index holds it.
#[derive(Clone, Copy, Debug)]
pub enum ObservedChat<'a> {
    /// Not looked for yet (or this Coder serves no chats): `status.chat`
    /// stays as it was.
    Unknown,
    /// No chat this token can read is bound to the workspace.
    None,
    Bound {
        chat: &'a Chat,
        /// Read just now, on its own.
        fresh: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub spec: &'a ChatWorkspaceSpec,
    pub policy: RecoveryPolicy,
    pub generation: i64,
    pub previous: &'a ChatWorkspaceStatus,
    pub observed: Observed<'a>,
    pub chat: ObservedChat<'a>,
    pub now: Timestamp,
    pub requeue: Requeue,
    /// The resource's `chat.coder.com/start-requested-at` annotation: a value
    /// other than `previous.start_request` asks for one start.
    pub start_request: Option<&'a str>,
    /// The resource's `chat.coder.com/restart-requested-at` annotation: a
    /// value other than `previous.restart`'s asks for one restart.
    pub restart_request: Option<&'a str>,
}

/// Why the operator asked for a build; it lives with the status that
/// records it.
pub use crate::crd::BuildReason;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildPlan {
    pub transition: WorkspaceTransition,
    /// `None`: Coder builds the workspace's current version.
    pub template_version_id: Option<String>,
    pub reason: BuildReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do now; look again after `requeue`.
    None,
    /// The observation came from a shared list; read this workspace fresh
    /// and probe again, then decide again, before a destructive step.
    Refresh,
    /// Create the workspace (from template, preset and parameters).
    CreateWorkspace,
    Build(BuildPlan),
    /// Before a recovery's stop: stop the turns of these chats, running on
    /// the dead agent (the root chat and its sub-agents).
    InterruptChats(ChatPlan),
    /// After the operator's own start, the new chat agent ready: re-pin
    /// these chats' context to it.
    RefreshChatContext(ChatPlan),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPlan {
    pub chat_ids: Vec<String>,
    /// The chat agent it is about (the dead one, or the new one).
    pub agent_id: String,
    pub agent_name: String,
}

/// A Kubernetes Event the reconciler should publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: EventReason,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub action: Action,
    pub status: ChatWorkspaceStatus,
    pub requeue: Duration,
    pub events: Vec<Event>,
}

/// Whether the chat agent must be probed before `decide` can judge it: only
/// for a succeeded start whose chosen agent coderd sees connected or
/// disconnected.
pub fn needs_probe<'w>(workspace: &'w Workspace, agent_name: Option<&str>) -> Option<&'w WorkspaceAgent> {
    let build = &workspace.latest_build;
    if build.transition != WorkspaceTransition::Start || build.job.status != ProvisionerJobStatus::Succeeded {
        return None;
    }
    chat_agent(build, agent_name).filter(|a| matches!(a.status, AgentStatus::Connected | AgentStatus::Disconnected))
}

/// The core decision. See the module documentation for the rules.
pub fn decide(inputs: &Inputs) -> Decision {
    let mut out = Outcome::new(inputs);
    match &inputs.observed {
        Observed::Conflict { other } => out.conflict(other),
        Observed::Workspace { workspace: None, .. } => out.absent(),
        Observed::Workspace { workspace: Some(workspace), fresh, probe } => {
            out.observe(workspace);
            out.present(workspace, *fresh, *probe);
        }
    }
    if !matches!(inputs.observed, Observed::Conflict { .. }) {
        out.chat();
    }
    out.finish()
}

/// What spent the `maxAttempts` per `window` budget.
#[derive(Clone, Copy)]
enum Spent<'s> {
    Recoveries,
    OutsideStops,
    /// Recoveries of an agent that never connected, this one.
    NeverConnected(&'s WorkspaceAgent),
}

/// A spent budget: how many attempts, and when it reopens.
struct SpentBudget {
    attempts: u32,
    reopens_at: String,
    reopens: Duration,
}

/// Builds one decision: the verdicts, action and status under construction.
struct Outcome<'a> {
    inputs: &'a Inputs<'a>,
    /// The chat agent of the latest build, when that is a succeeded start.
    current_agent: Option<&'a WorkspaceAgent>,
    latest_build: Option<&'a WorkspaceBuild>,
    /// The latest build is a succeeded start whose chat agent is connected,
    /// reachable and ready.
    agent_ready: bool,
    status: ChatWorkspaceStatus,
    verdicts: Vec<Verdict>,
    action: Action,
    requeue: Duration,
    events: Vec<Event>,
    phase: Phase,
}

impl<'a> Outcome<'a> {
    fn new(inputs: &'a Inputs<'a>) -> Self {
        let mut status = inputs.previous.clone();
        status.observed_generation = Some(inputs.generation);
        Self {
            inputs,
            current_agent: None,
            latest_build: None,
            agent_ready: false,
            status,
            verdicts: Vec::new(),
            action: Action::None,
            requeue: inputs.requeue.stable,
            events: Vec::new(),
            phase: Phase::Pending,
        }
    }

    fn desired(&self) -> DesiredState {
        self.inputs.spec.desired_state
    }

    fn say(&mut self, type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) {
        self.verdicts.retain(|v| v.type_ != type_);
        self.verdicts.push(Verdict::new(type_, status, reason, message));
    }

    fn requeue_within(&mut self, after: Duration) {
        self.requeue = self.requeue.min(after);
    }

    fn build(&mut self, transition: WorkspaceTransition, template_version_id: Option<String>, reason: BuildReason) {
        self.action = Action::Build(BuildPlan { transition, template_version_id, reason });
        self.record_build_request(transition, reason);
    }

    /// Remembers the build about to be requested (its id is filled in once
    /// Coder answers), so that its failure is known as this generation's own.
    fn record_build_request(&mut self, transition: WorkspaceTransition, reason: BuildReason) {
        self.status.last_build_request = Some(BuildRequestStatus {
            build_id: None,
            transition,
            reason,
            generation: self.inputs.generation,
            time: whole_seconds(self.inputs.now),
        });
        self.requeue_within(self.inputs.requeue.active);
    }

    fn recovery(&mut self) -> &mut RecoveryStatus {
        self.status.recovery.get_or_insert_with(RecoveryStatus::default)
    }

    fn recovery_stage(&self) -> Option<RecoveryStage> {
        self.status.recovery.as_ref().and_then(|r| r.stage)
    }

    fn end_recovery(&mut self) {
        if let Some(recovery) = self.status.recovery.as_mut() {
            recovery.stage = None;
        }
    }

    fn conflict(&mut self, other: &str) {
        self.phase = Phase::Failed;
        let message = format!(
            "Another ChatWorkspace ({other}) already manages this Coder workspace; this one will not build it. \
             Delete one of them, or give this one a different spec.workspaceName."
        );
        self.say(DEGRADED, true, Reason::Conflict, message.clone());
        self.say(READY, false, Reason::Conflict, message);
        self.say(PROGRESSING, false, Reason::Conflict, "No builds while another ChatWorkspace owns the workspace.");
    }

    fn absent(&mut self) {
        let leave = self.inputs.spec.deleted_in_coder == crd::DeletedInCoder::Leave;
        if let Some(gone) = &self.inputs.previous.workspace {
            let what = match (leave, self.desired()) {
                (true, _) => "spec.deletedInCoder is Leave, so the operator does not create it again",
                (false, DesiredState::Running) => "creating it again, since desiredState is Running",
                (false, DesiredState::Stopped) => "it is created again when desiredState becomes Running",
            };
            self.events.push(Event {
                warning: true,
                reason: EventReason::WorkspaceDeletedInCoder,
                note: format!("Workspace {}/{} ({}) was deleted in Coder; {what}.", gone.owner, gone.name, gone.id),
            });
            self.status.deleted_workspace = Some(gone.clone());
        }
        self.status.workspace = None;
        self.status.latest_build = None;
        self.status.agent = None;
        self.end_recovery();
        self.no_agent_conditions(Reason::NoWorkspace, "The workspace does not exist.");
        if leave && let Some(gone) = self.status.deleted_workspace.clone() {
            return self.left_deleted(&gone);
        }
        match self.desired() {
            DesiredState::Running => {
                self.phase = Phase::Creating;
                self.action = Action::CreateWorkspace;
                // A create is the workspace's first start build.
                self.record_build_request(WorkspaceTransition::Start, BuildReason::DesiredState);
                self.requeue_within(self.inputs.requeue.active);
                self.say(PROGRESSING, true, Reason::Creating, "Creating the Coder workspace.");
                self.say(READY, false, Reason::Creating, "The workspace is being created; wait for Ready.");
            }
            DesiredState::Stopped => {
                self.phase = Phase::Stopped;
                self.say(PROGRESSING, false, Reason::Stopped, "Nothing to do while desiredState is Stopped.");
                self.say(
                    READY,
                    true,
                    Reason::NotCreated,
                    "desiredState is Stopped and no workspace exists; it is created when desiredState becomes Running.",
                );
            }
        }
    }

    /// `spec.deletedInCoder: Leave` after the workspace was deleted in Coder.
    fn left_deleted(&mut self, gone: &crd::WorkspaceStatus) {
        let message = format!(
            "Workspace {}/{} ({}) was deleted in Coder, and spec.deletedInCoder is Leave, so the operator does not \
             create it again. To get a workspace again, set spec.deletedInCoder to Recreate (a new one is created \
             from spec.template, spec.preset and spec.parameters, which may be changed until then), or delete this \
             ChatWorkspace.",
            gone.owner, gone.name, gone.id
        );
        match self.desired() {
            DesiredState::Running => {
                self.phase = Phase::Failed;
                self.say(DEGRADED, true, Reason::DeletedInCoder, message.clone());
                self.say(READY, false, Reason::DeletedInCoder, message);
            }
            DesiredState::Stopped => {
                self.phase = Phase::Stopped;
                self.say(READY, true, Reason::DeletedInCoder, message);
            }
        }
        self.say(PROGRESSING, false, Reason::DeletedInCoder, "Nothing to do: the workspace was deleted in Coder.");
    }

    /// Copies the observed workspace, latest build and chat agent into status.
    fn observe(&mut self, workspace: &'a Workspace) {
        let build = &workspace.latest_build;
        self.latest_build = Some(build);
        if build.transition == WorkspaceTransition::Start && build.job.status == ProvisionerJobStatus::Succeeded {
            self.current_agent = chat_agent(build, self.inputs.spec.agent_name.as_deref());
        }
        self.status.deleted_workspace = None;
        self.status.workspace = Some(crd::WorkspaceStatus {
            id: workspace.id.clone(),
            name: workspace.name.clone(),
            owner: workspace.owner_name.clone(),
            owner_id: Some(workspace.owner_id.clone()),
            template_id: Some(workspace.template_id.clone()),
            template_version_id: Some(build.template_version_id.clone()),
        });
        self.status.latest_build = Some(crd::BuildStatus {
            id: build.id.clone(),
            number: build.build_number,
            transition: build.transition,
            status: build.status,
            job_status: build.job.status,
            reason: build.reason.clone(),
            initiator: Some(build.initiator_name.clone()).filter(|n| !n.is_empty()),
            error: build.job.error.clone().filter(|e| !e.is_empty()),
            created_at: Some(whole_seconds(build.created_at)),
        });
        self.status.agent = chat_agent(build, self.inputs.spec.agent_name.as_deref()).map(|agent| crd::AgentStatus {
            id: agent.id.clone(),
            name: agent.name.clone(),
            status: agent.status,
            lifecycle_state: agent.lifecycle_state,
            first_connected_at: agent.first_connected_at.map(whole_seconds),
            // While connected, the last heartbeat moves every 15 s: writing
            // it would cost one status write per workspace per resync, for
            // nothing a reader needs. It is kept for the other states, where
            // it says when the agent was last seen.
            last_connected_at: agent
                .last_connected_at
                .filter(|_| agent.status != AgentStatus::Connected)
                .map(whole_seconds),
            disconnected_at: agent.disconnected_at.map(whole_seconds),
        });
    }

    fn present(&mut self, workspace: &Workspace, fresh: bool, probe: Option<&Probe>) {
        let build = &workspace.latest_build;
        if build.job.status.is_active() {
            return self.wait_for_build(workspace);
        }
        if self.restart(workspace) || self.resume_restart(workspace) {
            return;
        }
        match self.desired() {
            DesiredState::Stopped => self.keep_stopped(build),
            DesiredState::Running => self.keep_running(workspace, fresh, probe),
        }
    }

    fn restart_requested(&self) -> Option<&'a str> {
        self.inputs.restart_request.filter(|v| self.inputs.previous.restart.as_ref().is_none_or(|r| r.request != *v))
    }

    /// A restart a person asked for: a stop, then a start, of a running
    /// workspace, as a recovery counted against its budget. Refused (and
    /// remembered, so never retried) when the workspace is not running, a
    /// recovery is under way, or the budget is spent. True when it decided
    /// this pass's action.
    fn restart(&mut self, workspace: &Workspace) -> bool {
        let Some(value) = self.restart_requested() else { return false };
        let build = &workspace.latest_build;
        let running = self.desired() == DesiredState::Running
            && build.transition == WorkspaceTransition::Start
            && build.job.status == ProvisionerJobStatus::Succeeded
            && workspace.dormant_at.is_none();
        let refusal = if !running {
            Some(format!(
                "the workspace is not running (desiredState {:?}, build #{} a {} that {}); a restart applies to a \
                 running workspace only: `kubectl cws start` starts a stopped one",
                self.desired(),
                build.build_number,
                build.transition.as_str(),
                build.job.status.as_str()
            ))
        } else if self.recovery_stage().is_some() {
            Some("a recovery (a stop, then a start) is already under way".to_string())
        } else if let Some(spent) = self.spent_budget() {
            Some(format!(
                "the recovery budget is spent ({} recoveries within {}), and a restart counts against it; it \
                 reopens at {} or when the spec changes",
                spent.attempts,
                human(self.inputs.policy.window),
                spent.reopens_at
            ))
        } else {
            None
        };
        let now = whole_seconds(self.inputs.now);
        if let Some(why) = refusal {
            let message = format!("Restart {value:?} refused: {why}.");
            self.events.push(Event { warning: true, reason: EventReason::RestartRefused, note: message.clone() });
            self.status.restart =
                Some(RestartStatus { request: value.to_string(), accepted: false, message, time: now });
            return false;
        }
        if let Some(agent) = self.current_agent {
            // Chat turns running on the agent end before its stop, as before
            // a recovery; the request is remembered only once acted on.
            let chat_stale = self.inputs.spec.chat.interrupt_on_recovery
                && matches!(self.inputs.chat, ObservedChat::Bound { fresh: false, .. });
            if chat_stale {
                self.action = Action::Refresh;
                self.requeue_within(self.inputs.requeue.probe_retry);
                return true;
            }
            if let Some(plan) = self.turns_to_interrupt(agent) {
                self.action = Action::InterruptChats(plan);
                self.requeue_within(Duration::from_millis(100));
                return true;
            }
        }
        let message = format!("Restart {value:?} accepted: stopping, then starting the workspace.");
        self.events.push(Event { warning: false, reason: EventReason::RestartRequested, note: message.clone() });
        self.status.restart = Some(RestartStatus { request: value.to_string(), accepted: true, message, time: now });
        self.start_recovery(format!("{RESTART_REASON} ({}={value})", crd::RESTART_REQUESTED_AT));
        true
    }

    /// A restart's stop that was decided and written down but never
    /// confirmed (the operator stopped in between, or Coder failed the
    /// request): issued again, as the same attempt. The automatic
    /// recovery's own paths do this for a dead agent; a restarted agent is
    /// alive, so nothing else would.
    fn resume_restart(&mut self, workspace: &Workspace) -> bool {
        let build = &workspace.latest_build;
        let restarting = self
            .status
            .recovery
            .as_ref()
            .is_some_and(|r| r.last_reason.as_deref().is_some_and(|why| why.starts_with(RESTART_REASON)));
        if !restarting
            || self.desired() != DesiredState::Running
            || self.recovery_stage() != Some(RecoveryStage::Stopping)
            || !self.stop_intent_unconfirmed()
            || build.transition != WorkspaceTransition::Start
            || build.job.status != ProvisionerJobStatus::Succeeded
        {
            return false;
        }
        self.build(WorkspaceTransition::Stop, None, BuildReason::Recovery);
        self.recovering_conditions();
        true
    }

    fn wait_for_build(&mut self, workspace: &Workspace) {
        let build = &workspace.latest_build;
        // A desiredState flip abandons a recovery; the build under way
        // finishes first either way.
        if self.desired() == DesiredState::Stopped {
            self.end_recovery();
        }
        self.phase = match build.transition {
            WorkspaceTransition::Stop => Phase::Stopping,
            WorkspaceTransition::Delete => Phase::Deleting,
            _ => Phase::Starting,
        };
        let mut message = format!(
            "Build #{} ({}) is {}; waiting for it to finish before deciding anything else.",
            build.build_number,
            build.transition.as_str(),
            build.job.status.as_str()
        );
        if build.transition == WorkspaceTransition::Start && workspace.template_require_active_version {
            message.push_str(&format!(
                " Template {} requires its active version, so this start builds version {}.",
                workspace.template_name, build.template_version_id
            ));
        }
        self.say(PROGRESSING, true, Reason::BuildInProgress, message.clone());
        self.say(READY, false, Reason::BuildInProgress, format!("{message} Wait for Ready."));
        if build.transition != WorkspaceTransition::Start {
            self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace is not running.");
        }
        self.requeue_within(self.inputs.requeue.active);
        self.recovering_conditions();
    }

    fn keep_stopped(&mut self, build: &WorkspaceBuild) {
        self.end_recovery();
        self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace is stopped or stopping.");
        let succeeded = build.job.status == ProvisionerJobStatus::Succeeded;
        if build.transition == WorkspaceTransition::Stop && succeeded {
            // A stop seen while Stopped is desired is the desired state's own,
            // whoever made it (the operator's record of its own build may
            // have been lost): a later flip to Running starts it.
            let recorded =
                self.status.last_build_request.as_ref().is_some_and(|r| r.build_id.as_deref() == Some(&build.id));
            if !recorded {
                self.status.last_build_request = Some(BuildRequestStatus {
                    build_id: Some(build.id.clone()),
                    transition: WorkspaceTransition::Stop,
                    reason: BuildReason::DesiredState,
                    generation: self.inputs.generation,
                    time: whole_seconds(build.created_at),
                });
            }
            self.phase = Phase::Stopped;
            self.say(PROGRESSING, false, Reason::Stopped, "The workspace is stopped.");
            self.say(
                READY,
                true,
                Reason::Stopped,
                "The workspace is stopped, as desired. Set desiredState to Running to start it.",
            );
            return;
        }
        self.phase = Phase::Stopping;
        if build.transition == WorkspaceTransition::Stop {
            let error = job_error(build);
            self.events.push(Event {
                warning: true,
                reason: EventReason::StopFailed,
                note: format!("Stop build #{} failed: {error}; stopping again.", build.build_number),
            });
            if self.wait_before_retry() {
                self.say(
                    PROGRESSING,
                    true,
                    Reason::StopFailed,
                    format!("Stop build #{} failed: {error}. Retrying shortly.", build.build_number),
                );
                self.say(
                    READY,
                    false,
                    Reason::StopFailed,
                    "The last stop failed; the operator retries it. Wait for Ready.",
                );
                return;
            }
        }
        self.build(WorkspaceTransition::Stop, None, BuildReason::DesiredState);
        self.say(PROGRESSING, true, Reason::Stopping, "Stopping the workspace.");
        self.say(READY, false, Reason::Stopping, "The workspace is stopping; wait for Ready.");
    }

    /// Whether a failed build must wait before it is tried again, so that a
    /// persistent failure is not retried in a tight loop.
    fn wait_before_retry(&mut self) -> bool {
        let Some(request) = &self.inputs.previous.last_build_request else { return false };
        let since = elapsed(request.time.0, self.inputs.now);
        if since < self.inputs.requeue.retry {
            self.requeue_within(self.inputs.requeue.retry - since);
            return true;
        }
        false
    }

    fn keep_running(&mut self, workspace: &Workspace, fresh: bool, probe: Option<&Probe>) {
        let build = &workspace.latest_build;
        let succeeded = build.job.status == ProvisionerJobStatus::Succeeded;
        match build.transition {
            WorkspaceTransition::Start if succeeded => self.judge_agent(workspace, fresh, probe),
            WorkspaceTransition::Start if build.job.status == ProvisionerJobStatus::Failed => {
                self.start_failed(workspace)
            }
            WorkspaceTransition::Stop
                if self.recovery_stage() == Some(RecoveryStage::Stopping) && self.recovery_stop(build) =>
            {
                if succeeded {
                    self.recovery().stage = Some(RecoveryStage::Starting);
                    self.start(workspace, BuildReason::Recovery);
                    self.events.push(Event {
                        warning: false,
                        reason: EventReason::RecoveryStarting,
                        note: "The recovery's stop build succeeded; starting the workspace again.".into(),
                    });
                } else if !self.wait_before_retry() {
                    self.build(WorkspaceTransition::Stop, None, BuildReason::Recovery);
                }
                self.recovering_conditions();
            }
            _ if workspace.dormant_at.is_some() => self.dormant(workspace),
            WorkspaceTransition::Stop if succeeded && self.stopped_outside(build) => self.outside_stop(workspace),
            _ => {
                self.end_recovery();
                self.start(workspace, BuildReason::DesiredState);
            }
        }
        if workspace.dormant_at.is_none() {
            // A start asked for while dormant still counts once it is active.
            self.note_start_request();
        }
    }

    /// A new value of the start-request annotation, once acted on (or found
    /// needless), is remembered so that it asks for one start only.
    fn note_start_request(&mut self) {
        if let Some(value) = self.inputs.start_request {
            self.status.start_request = Some(value.to_string());
        }
    }

    fn start_requested(&self) -> bool {
        self.inputs.start_request.is_some_and(|v| self.inputs.previous.start_request.as_deref() != Some(v))
    }

    /// A succeeded stop that this operator did not ask for, of a workspace
    /// this resource had already seen in an earlier build: Coder or a person
    /// stopped it. (A workspace adopted while stopped is simply started.)
    fn stopped_outside(&self, build: &WorkspaceBuild) -> bool {
        let seen_before =
            self.inputs.previous.latest_build.as_ref().is_some_and(|seen| seen.number <= build.build_number);
        !self.requested_by_us(build) && seen_before
    }

    /// Whether `build`, a stop seen while a recovery is stopping, is the
    /// recovery's own (see [`Self::requested_by_us`]). A stage recorded
    /// without its request (by an earlier version of the operator) takes
    /// any stop made through the API for it, and still none of Coder's.
    fn recovery_stop(&self, build: &WorkspaceBuild) -> bool {
        match &self.inputs.previous.last_build_request {
            Some(_) => self.requested_by_us(build),
            None => build.made_through_api(),
        }
    }

    /// Whether `build` is the one the operator last requested: the build
    /// whose id it recorded or, when the request's answer was never
    /// recorded (the operator stopped in between, or Coder refused it), a
    /// build of that transition made through the API (coderd's reason
    /// `initiator`) no earlier than the request. An autostop, a dormancy
    /// stop or a stop from the dashboard is never taken for the operator's.
    fn requested_by_us(&self, build: &WorkspaceBuild) -> bool {
        self.inputs.previous.last_build_request.as_ref().is_some_and(|request| match request.build_id.as_deref() {
            Some(id) => id == build.id,
            None => {
                request.transition == build.transition && build.made_through_api() && request.time.0 <= build.created_at
            }
        })
    }

    fn outside_stop(&mut self, workspace: &Workspace) {
        let build = &workspace.latest_build;
        let by_policy = build.made_by_coder_policy();
        let who = if build.initiator_name.is_empty() {
            format!("reason {:?}", build.reason_str())
        } else {
            format!("reason {:?}, by {}", build.reason_str(), build.initiator_name)
        };
        self.end_recovery();
        self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace was stopped in Coder.");
        if self.start_requested() {
            self.events.push(Event {
                warning: false,
                reason: EventReason::StartRequested,
                note: format!(
                    "Starting the workspace that Coder stopped (build #{}, {who}): the {} annotation has a new value.",
                    build.build_number,
                    crd::START_REQUESTED_AT
                ),
            });
            return self.start(workspace, BuildReason::DesiredState);
        }
        if !by_policy && self.inputs.spec.outside_stops == crd::OutsideStops::Restart {
            if self.budget_exhausted(Spent::OutsideStops) {
                return;
            }
            let now = whole_seconds(self.inputs.now);
            let recovery = self.recovery();
            recovery.attempts += 1;
            recovery.window_start.get_or_insert(now.clone());
            recovery.last_attempt_time = Some(now);
            recovery.last_reason = Some(format!("stopped in Coder ({who}); spec.outsideStops is Restart"));
            self.events.push(Event {
                warning: true,
                reason: EventReason::RestartingOutsideStop,
                note: format!(
                    "Build #{} stopped the workspace in Coder ({who}); starting it again (spec.outsideStops: Restart).",
                    build.build_number
                ),
            });
            return self.start(workspace, BuildReason::DesiredState);
        }
        self.phase = Phase::Stopped;
        let (reason, cause) = if by_policy {
            (Reason::StoppedByCoder, "Coder's own policy stopped it")
        } else {
            (Reason::StoppedOutside, "it was stopped from Coder")
        };
        let message = format!(
            "desiredState is Running, but {cause} (build #{}, {who}); the operator respects that. To start it \
             again, set a new value of the {} annotation (kubectl annotate --overwrite cws NAME {}=$(date -u \
             +%FT%TZ)){}.",
            build.build_number,
            crd::START_REQUESTED_AT,
            crd::START_REQUESTED_AT,
            if by_policy { "" } else { ", or set spec.outsideStops to Restart" }
        );
        self.say(READY, false, reason, message);
        self.say(PROGRESSING, false, reason, "Nothing to do until a start is asked for.");
    }

    fn dormant(&mut self, workspace: &Workspace) {
        self.end_recovery();
        self.phase = Phase::Stopped;
        let deletion = workspace
            .deleting_at
            .map(|at| format!(" Coder deletes it at {}.", at.round(jiff::Unit::Second).unwrap_or(at)))
            .unwrap_or_default();
        let message = format!(
            "The workspace is dormant in Coder, which refuses to start it until it is made active again: a \
             person must activate it in Coder's dashboard (or PUT /api/v2/workspaces/{}/dormant with \
             {{\"dormant\": false}}), then ask for a start with a new value of the {} annotation.{deletion}",
            workspace.id,
            crd::START_REQUESTED_AT
        );
        self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace is dormant.");
        self.say(DEGRADED, true, Reason::Dormant, message.clone());
        self.say(READY, false, Reason::Dormant, message);
        self.say(PROGRESSING, false, Reason::Dormant, "No builds while the workspace is dormant.");
    }

    fn start(&mut self, workspace: &Workspace, reason: BuildReason) {
        // Start never takes a preset, and builds the active version only when
        // the template requires it (chatd's start_workspace).
        let version = workspace.template_require_active_version.then(|| workspace.template_active_version_id.clone());
        if let Some(active) = &version
            && *active != workspace.latest_build.template_version_id
        {
            self.events.push(Event {
                warning: false,
                reason: EventReason::ActiveVersionRequired,
                note: format!(
                    "Template {} requires its active version: starting on version {active} instead of {}.",
                    workspace.template_name, workspace.latest_build.template_version_id
                ),
            });
        }
        self.phase = Phase::Starting;
        self.build(WorkspaceTransition::Start, version.clone(), reason);
        let mut message = "Starting the workspace.".to_string();
        if let Some(active) = version {
            message.push_str(&format!(" The template requires its active version, so version {active} is built."));
        }
        self.say(PROGRESSING, true, Reason::Starting, message);
        self.say(READY, false, Reason::Starting, "The workspace is starting; wait for Ready.");
        self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace is starting.");
    }

    fn start_failed(&mut self, workspace: &Workspace) {
        let build = &workspace.latest_build;
        let ours_this_generation = self.inputs.previous.last_build_request.as_ref().is_some_and(|r| {
            r.generation == self.inputs.generation
                && r.transition == WorkspaceTransition::Start
                && r.build_id.as_deref() == Some(&build.id)
        });
        if !ours_this_generation {
            // A failure inherited from before this spec (or from outside the
            // operator) gets one fresh attempt.
            self.end_recovery();
            return self.start(workspace, BuildReason::DesiredState);
        }
        self.end_recovery();
        self.phase = Phase::Failed;
        let message = format!(
            "Start build #{} failed: {}. The operator does not retry it on its own: fix the cause in Coder \
             (template, parameters, quota), then change the spec (e.g. set desiredState to Stopped and back \
             to Running) to try again.",
            build.build_number,
            job_error(build)
        );
        self.say(DEGRADED, true, Reason::StartFailed, message.clone());
        self.say(READY, false, Reason::StartFailed, message);
        self.say(PROGRESSING, false, Reason::StartFailed, "Waiting for a spec change.");
        self.no_agent_conditions(Reason::WorkspaceNotRunning, "The workspace's start failed.");
    }

    fn judge_agent(&mut self, workspace: &Workspace, fresh: bool, probe: Option<&Probe>) {
        let build = &workspace.latest_build;
        let Some(agent) = chat_agent(build, self.inputs.spec.agent_name.as_deref()) else {
            return self.no_agent(build);
        };
        self.phase = match agent.status {
            AgentStatus::Connecting | AgentStatus::Unknown => Phase::Starting,
            _ => Phase::Running,
        };
        self.say(PROGRESSING, false, Reason::BuildSucceeded, format!("Start build #{} succeeded.", build.build_number));
        let external = build.agent_is_external(&agent.id);
        match agent.status {
            AgentStatus::Connected => self.connected(agent, probe),
            AgentStatus::Disconnected | AgentStatus::Timeout if external => self.external_offline(agent, probe),
            AgentStatus::Disconnected => self.disconnected(agent, fresh, probe),
            AgentStatus::Timeout => self.never_connected(agent, fresh),
            AgentStatus::Connecting | AgentStatus::Unknown => {
                self.say(
                    AGENT_CONNECTED,
                    false,
                    Reason::Connecting,
                    format!("Agent {} has not connected yet.", agent.name),
                );
                self.say(AGENT_REACHABLE, false, Reason::NotProbed, "The agent is not connected yet.");
                self.say(
                    READY,
                    false,
                    Reason::AgentConnecting,
                    "The workspace is up; its agent is connecting. Wait for Ready.",
                );
                self.requeue_within(self.inputs.requeue.agent);
                self.recovering_conditions();
            }
        }
    }

    fn no_agent(&mut self, build: &WorkspaceBuild) {
        self.end_recovery();
        self.phase = Phase::Failed;
        let names: Vec<&str> = build.resources.iter().flat_map(|r| r.agents.iter()).map(|a| a.name.as_str()).collect();
        let message = match &self.inputs.spec.agent_name {
            Some(wanted) => format!(
                "The workspace has no agent named {wanted:?} (agents: {}). Fix spec.agentName or the template.",
                list_or_none(&names)
            ),
            None => "The workspace's build has no agent, so no chat can use it. A person must fix the template.".into(),
        };
        self.say(AGENT_CONNECTED, false, Reason::NoAgent, message.clone());
        self.say(AGENT_REACHABLE, false, Reason::NoAgent, "There is no agent to probe.");
        self.say(DEGRADED, true, Reason::NoAgent, message.clone());
        self.say(READY, false, Reason::NoAgent, message);
    }

    /// An agent that never connected within its connection timeout. chatd
    /// (v2.36.1) gives it the same stop-then-start guidance as a dead agent,
    /// on the agent's status alone: the probe is no second signal here, as
    /// coderd refuses to dial an agent it never saw connected. The waiting
    /// was the connection timeout itself; the fresh read right before the
    /// stop is the check that it still holds.
    fn never_connected(&mut self, agent: &WorkspaceAgent, fresh: bool) {
        let policy = self.inputs.policy;
        let timeout = connection_timeout(agent);
        self.say(AGENT_REACHABLE, false, Reason::NotProbed, "The agent never connected, so coderd cannot reach it.");
        if self.recovery_stage() == Some(RecoveryStage::Stopping) && self.stop_intent_unconfirmed() {
            // The recovery's stop was decided but never confirmed: issue it
            // again, as the same attempt.
            self.say(
                AGENT_CONNECTED,
                false,
                Reason::NeverConnected,
                format!("Agent {} never connected within its connection timeout ({timeout}).", agent.name),
            );
            if !fresh {
                self.action = Action::Refresh;
                self.requeue_within(self.inputs.requeue.probe_retry);
            } else {
                self.build(WorkspaceTransition::Stop, None, BuildReason::Recovery);
            }
            return self.recovering_conditions();
        }
        if self.recovery_stage().is_some() {
            // The recovery's own start made this agent, and it never
            // connected either: the attempt stays counted, so the budget
            // ends the loop.
            let attempt = self.status.recovery.as_ref().map_or(0, |r| r.attempts);
            self.events.push(Event {
                warning: true,
                reason: EventReason::RecoveryFailed,
                note: format!(
                    "After recovery attempt {attempt}'s start, agent {} never connected within its connection \
                     timeout ({timeout}).",
                    agent.name
                ),
            });
            self.end_recovery();
        }
        if !policy.automatic || policy.never_connected == NeverConnected::Report {
            return self.report_never_connected(agent, &timeout);
        }
        self.say(
            AGENT_CONNECTED,
            false,
            Reason::NeverConnected,
            format!(
                "Agent {} never connected within its connection timeout ({timeout}); the operator stops and starts \
                 the workspace to recover it, at most {} times per {}.",
                agent.name,
                policy.max_attempts,
                human(policy.window)
            ),
        );
        if self.budget_exhausted(Spent::NeverConnected(agent)) {
            return;
        }
        // The probe is no second signal here: coderd never dials an agent it
        // never saw connected.
        let reason = format!("agent {} never connected within its connection timeout ({timeout})", agent.name);
        self.recover(agent, fresh, reason);
    }

    /// The earlier chatd's rule (`spec.recovery.neverConnected: Report`, or
    /// recovery disabled): a template or startup failure, for a person.
    fn report_never_connected(&mut self, agent: &WorkspaceAgent, timeout: &str) {
        self.phase = Phase::Failed;
        let why = if self.inputs.policy.automatic {
            "spec.recovery.neverConnected is Report"
        } else {
            "spec.recovery.mode is Disabled"
        };
        let message = format!(
            "Agent {} never connected within its connection timeout ({timeout}): a template or startup failure, \
             not a dead agent, and {why}, so the operator does not rebuild. A person must check the template and \
             the workspace's build logs.",
            agent.name
        );
        self.say(AGENT_CONNECTED, false, Reason::NeverConnected, message.clone());
        self.say(DEGRADED, true, Reason::AgentNeverConnected, message.clone());
        self.say(READY, false, Reason::AgentNeverConnected, message);
    }

    /// An agent of an external resource, offline: it runs on a host of its
    /// own, so a stop and a start cannot bring it back (chatd reports it
    /// unavailable and never tells the model to restart the workspace).
    /// Only a person restarting it where it runs can.
    fn external_offline(&mut self, agent: &WorkspaceAgent, probe: Option<&Probe>) {
        self.end_recovery();
        if agent.status == AgentStatus::Disconnected && probe.is_some_and(|p| p.outcome.is_reachable()) {
            // Missed heartbeats, but it answers: not offline.
            self.say(AGENT_CONNECTED, false, Reason::Disconnected, format!("Agent {} missed heartbeats.", agent.name));
            self.say(
                AGENT_REACHABLE,
                true,
                Reason::Reachable,
                "coderd reached the agent despite the missed heartbeats.",
            );
            self.say(
                READY,
                false,
                Reason::AgentDisconnected,
                "The agent missed heartbeats but answers probes; wait for Ready.",
            );
            self.requeue_within(self.inputs.requeue.agent);
            return;
        }
        let (reason, what) = if agent.first_connected_at.is_some() {
            (Reason::ExternalAgentDisconnected, "is disconnected")
        } else {
            (Reason::ExternalAgentNotConnected, "has not connected yet")
        };
        let message = format!(
            "Agent {} {what}. It is an external agent (a coder_external_agent resource): it runs on a host of its \
             own, so stopping and starting the workspace cannot bring it back, and the operator does not. A person \
             must (re)start it where it runs.",
            agent.name
        );
        match probe {
            Some(probe) => self.say(
                AGENT_REACHABLE,
                false,
                probe_reason(&probe.outcome),
                probe_message(&probe.outcome, self.inputs.policy.probe_timeout),
            ),
            None => self.say(AGENT_REACHABLE, false, Reason::NotProbed, "The agent is not connected."),
        }
        self.phase = Phase::Failed;
        self.say(AGENT_CONNECTED, false, reason, message.clone());
        self.say(DEGRADED, true, reason, message.clone());
        self.say(READY, false, reason, message);
        // Nothing to act on: it comes back when its host runs it again,
        // which the index sees.
        self.requeue_within(self.inputs.requeue.stable);
    }

    fn connected(&mut self, agent: &WorkspaceAgent, probe: Option<&Probe>) {
        self.say(AGENT_CONNECTED, true, Reason::Connected, format!("Agent {} is connected.", agent.name));
        let Some(probe) = probe else {
            self.say(AGENT_REACHABLE, false, Reason::NotProbed, "The agent has not been probed yet.");
            self.say(READY, false, Reason::AgentNotProbed, "Checking that the agent is reachable; wait for Ready.");
            self.requeue_within(self.inputs.requeue.probe_retry);
            return;
        };
        if probe.outcome.is_reachable() {
            if let Some(recovery) = self.status.recovery.as_mut() {
                recovery.probe_failures = 0;
            }
            self.say(AGENT_REACHABLE, true, Reason::Reachable, "coderd reached the agent.");
            return self.agent_lifecycle(agent);
        }
        // chatd's dial timeout: retry once, then tell a person; never rebuild
        // an agent that coderd still sees heartbeating. The index counts the
        // probes, so a reconcile that sees the same probe twice counts it once.
        let failures = probe.failures.max(1);
        self.recovery().probe_failures = failures;
        let outcome = &probe.outcome;
        self.say(
            AGENT_REACHABLE,
            false,
            probe_reason(outcome),
            probe_message(outcome, self.inputs.policy.probe_timeout),
        );
        if failures < 2 {
            self.say(
                READY,
                false,
                Reason::ProbeRetry,
                "The agent did not answer a probe; retrying once. Wait for Ready.",
            );
            self.requeue_within(self.inputs.requeue.probe_retry);
            self.recovering_conditions();
            return;
        }
        self.phase = Phase::Running;
        let message = format!(
            "coderd sees agent {} connected but cannot reach it ({} failed probes in a row). The operator does \
             not rebuild a heartbeating agent: a person should check the workspace's network. If the agent \
             disconnects for {}, it is recovered automatically.",
            agent.name,
            failures,
            human(self.inputs.policy.disconnected_threshold)
        );
        self.say(DEGRADED, true, Reason::DialTimeout, message.clone());
        self.say(READY, false, Reason::AgentUnreachable, message);
        self.requeue_within(self.inputs.requeue.agent.max(self.inputs.requeue.probe_retry) * 5);
        self.recovering_conditions();
    }

    fn agent_lifecycle(&mut self, agent: &WorkspaceAgent) {
        match agent.lifecycle_state {
            AgentLifecycle::Ready => {
                if self.recovery_stage().is_some() {
                    self.events.push(Event {
                        warning: false,
                        reason: EventReason::Recovered,
                        note: format!("Agent {} is connected and reachable again; recovery finished.", agent.name),
                    });
                    self.say(RECOVERING, false, Reason::Recovered, "The last recovery finished: the agent is back.");
                }
                self.end_recovery();
                self.phase = Phase::Running;
                self.agent_ready = true;
                self.say(
                    READY,
                    true,
                    Reason::Running,
                    format!("The workspace is running and agent {} is ready.", agent.name),
                );
            }
            AgentLifecycle::StartError | AgentLifecycle::StartTimeout => {
                self.end_recovery();
                self.phase = Phase::Running;
                let message = format!(
                    "Agent {} is connected but its startup script ended in {}. A person should check the \
                     template's startup script; the operator does not rebuild for this.",
                    agent.name,
                    agent.lifecycle_state.as_str()
                );
                self.say(DEGRADED, true, Reason::AgentStartupFailed, message.clone());
                self.say(READY, false, Reason::AgentStartupFailed, message);
            }
            _ => {
                self.say(
                    READY,
                    false,
                    Reason::AgentStarting,
                    format!(
                        "Agent {} is connected and {}; wait for Ready.",
                        agent.name,
                        agent.lifecycle_state.as_str()
                    ),
                );
                self.requeue_within(self.inputs.requeue.agent);
                self.recovering_conditions();
            }
        }
    }

    fn disconnected(&mut self, agent: &WorkspaceAgent, fresh: bool, probe: Option<&Probe>) {
        let policy = self.inputs.policy;
        let since = agent.disconnected_at.or(agent.last_connected_at).unwrap_or(self.inputs.now);
        let for_how_long = elapsed(since, self.inputs.now);
        self.say(
            AGENT_CONNECTED,
            false,
            Reason::Disconnected,
            // A time, not a duration: the message stays the same from one
            // reconcile to the next, so it costs no status write.
            format!(
                "Agent {} has been disconnected since {}.",
                agent.name,
                since.round(jiff::Unit::Second).unwrap_or(since)
            ),
        );
        match probe {
            Some(probe) if probe.outcome.is_reachable() => {
                // The two-signal rule: a reachable agent is not dead, whatever
                // the heartbeat says (e.g. it is respawning).
                if let Some(recovery) = self.status.recovery.as_mut() {
                    recovery.probe_failures = 0;
                }
                self.say(
                    AGENT_REACHABLE,
                    true,
                    Reason::Reachable,
                    "coderd reached the agent despite the missed heartbeats.",
                );
                self.say(
                    READY,
                    false,
                    Reason::AgentDisconnected,
                    "The agent missed heartbeats but answers probes; wait for Ready.",
                );
                self.requeue_within(self.inputs.requeue.agent);
                return self.recovering_conditions();
            }
            Some(probe) => {
                let message = probe_message(&probe.outcome, policy.probe_timeout);
                self.say(AGENT_REACHABLE, false, probe_reason(&probe.outcome), message);
            }
            None => self.say(AGENT_REACHABLE, false, Reason::NotProbed, "The agent has not been probed yet."),
        }
        if self.recovery_stage() == Some(RecoveryStage::Stopping) && self.stop_intent_unconfirmed() {
            // The recovery was decided and written down, but its stop build
            // never confirmed (the operator stopped in between, or Coder
            // failed the request): issue it again, as the same attempt.
            if !fresh || !probe.is_some_and(|p| p.fresh) {
                self.action = Action::Refresh;
                self.requeue_within(self.inputs.requeue.probe_retry);
                return self.recovering_conditions();
            }
            self.build(WorkspaceTransition::Stop, None, BuildReason::Recovery);
            return self.recovering_conditions();
        }
        if self.recovery_stage().is_some() {
            // The recovery's own start made this agent; a fresh disconnect
            // after it is judged on its own merits from here.
            self.end_recovery();
        }
        if !policy.automatic {
            self.phase = Phase::Failed;
            let message = format!(
                "Agent {} is disconnected and unreachable, and spec.recovery.mode is Disabled. A person must \
                 restart the workspace (set desiredState to Stopped, then Running).",
                agent.name
            );
            self.say(DEGRADED, true, Reason::AgentDead, message.clone());
            self.say(READY, false, Reason::AgentDisconnected, message);
            return;
        }
        if for_how_long < policy.disconnected_threshold {
            let remaining = policy.disconnected_threshold - for_how_long;
            self.say(
                READY,
                false,
                Reason::AgentDisconnected,
                format!(
                    "Agent {} is disconnected; if it does not come back within {}, the workspace is restarted \
                     automatically. Wait for Ready.",
                    agent.name,
                    human(remaining)
                ),
            );
            self.requeue_within(remaining.max(Duration::from_millis(100)));
            return;
        }
        if self.budget_exhausted(Spent::Recoveries) {
            return;
        }
        // Both signals again, fresh, right before the stop.
        let reason =
            format!("agent {} disconnected for {} and unreachable through coderd", agent.name, human(for_how_long));
        self.recover(agent, fresh && probe.is_some_and(|p| p.fresh), reason);
    }

    /// The last steps before a recovery's stop, for a dead agent and one
    /// that never connected alike: what the agent is judged on
    /// (`judged_fresh`) and the chat are read again right before the stop,
    /// and a chat turn running on the agent ends first (the model must not
    /// race the operator with its own stop and start tools, which chatd
    /// tells it to use in both cases).
    fn recover(&mut self, agent: &WorkspaceAgent, judged_fresh: bool, reason: String) {
        let chat_stale = self.inputs.spec.chat.interrupt_on_recovery
            && matches!(self.inputs.chat, ObservedChat::Bound { fresh: false, .. });
        if !judged_fresh || chat_stale {
            self.action = Action::Refresh;
            self.requeue_within(self.inputs.requeue.probe_retry);
            return;
        }
        if let Some(plan) = self.turns_to_interrupt(agent) {
            self.action = Action::InterruptChats(plan);
            self.requeue_within(Duration::from_millis(100));
            return;
        }
        self.start_recovery(reason);
    }

    /// Whether the last build request is a recovery stop that Coder never
    /// confirmed (no build id was recorded for it).
    fn stop_intent_unconfirmed(&self) -> bool {
        self.inputs.previous.last_build_request.as_ref().is_some_and(|request| {
            request.reason == BuildReason::Recovery
                && request.transition == WorkspaceTransition::Stop
                && request.build_id.is_none()
        })
    }

    /// Applies the `maxAttempts` per `window` budget; true when it is spent.
    fn budget_exhausted(&mut self, spent: Spent<'_>) -> bool {
        let policy = self.inputs.policy;
        let Some(SpentBudget { attempts, reopens_at, reopens }) = self.spent_budget() else { return false };
        self.phase = Phase::Failed;
        let message = match spent {
            Spent::Recoveries => format!(
                "The agent died again after {attempts} automatic recoveries within {}; the operator stops \
                 rebuilding this workspace. A person should look at why it keeps dying. Recovery resumes at \
                 {reopens_at} (when the window ends) or when the spec changes.",
                human(policy.window),
            ),
            Spent::OutsideStops => format!(
                "The workspace was stopped in Coder again after {attempts} automatic starts within {}; the \
                 person stopping it wins and the operator leaves it stopped. Restarts resume at {reopens_at} \
                 (when the window ends) or when the spec changes.",
                human(policy.window),
            ),
            Spent::NeverConnected(agent) => format!(
                "Agent {} never connected within its connection timeout ({}), again after {attempts} automatic \
                 recoveries (stop, then start) within {}: a template or startup failure, not a dead agent. A \
                 person must check the template and the workspace's build logs. Recovery resumes at {reopens_at} \
                 (when the window ends) or when the spec changes.",
                agent.name,
                connection_timeout(agent),
                human(policy.window),
            ),
        };
        let (degraded, ready) = match spent {
            Spent::NeverConnected(_) => (Reason::AgentNeverConnected, Reason::AgentNeverConnected),
            _ => (Reason::RecoveryBudgetExhausted, Reason::AgentDisconnected),
        };
        self.say(DEGRADED, true, degraded, message.clone());
        self.say(READY, false, ready, message);
        self.say(RECOVERING, false, Reason::RecoveryBudgetExhausted, "No more automatic recoveries in this window.");
        self.requeue_within(reopens.max(Duration::from_secs(1)));
        true
    }

    /// Where the `maxAttempts` per `window` budget stands, its window and
    /// generation brought up to date: `None` while attempts are left.
    fn spent_budget(&mut self) -> Option<SpentBudget> {
        let policy = self.inputs.policy;
        let now = self.inputs.now;
        let generation = self.inputs.generation;
        let recovery = self.recovery();
        let window_over = recovery.window_start.as_ref().is_none_or(|start| elapsed(start.0, now) >= policy.window);
        if recovery.generation != Some(generation) || window_over {
            recovery.attempts = 0;
            recovery.window_start = None;
            recovery.generation = Some(generation);
        }
        if recovery.attempts < policy.max_attempts {
            return None;
        }
        let window_start = recovery.window_start.as_ref().map_or(now, |start| start.0);
        let reopens = policy.window.saturating_sub(elapsed(window_start, now));
        let reopens_at = SignedDuration::try_from(policy.window)
            .ok()
            .and_then(|window| window_start.checked_add(window).ok())
            .map_or_else(|| "later".to_string(), |t| t.round(jiff::Unit::Second).unwrap_or(t).to_string());
        Some(SpentBudget { attempts: recovery.attempts, reopens_at, reopens })
    }

    /// Starts a recovery: counts the attempt and issues its stop. `reason`
    /// says why, for status and the Event.
    fn start_recovery(&mut self, reason: String) {
        let now = self.inputs.now;
        let recovery = self.recovery();
        recovery.stage = Some(RecoveryStage::Stopping);
        recovery.attempts += 1;
        recovery.window_start.get_or_insert(whole_seconds(now));
        recovery.last_attempt_time = Some(whole_seconds(now));
        recovery.last_reason = Some(reason.clone());
        recovery.probe_failures = 0;
        let attempt = recovery.attempts;
        self.events.push(Event {
            warning: true,
            reason: EventReason::RecoveryStarted,
            note: format!("Recovery attempt {attempt}: {reason}; stopping, then starting the workspace."),
        });
        self.build(WorkspaceTransition::Stop, None, BuildReason::Recovery);
        self.recovering_conditions();
    }

    /// Sets `Recovering` (and the phase and `Ready`) from the recovery stage.
    fn recovering_conditions(&mut self) {
        let Some(stage) = self.recovery_stage() else { return };
        self.phase = Phase::Recovering;
        let attempt = self.status.recovery.as_ref().map_or(0, |r| r.attempts);
        let (reason, what) = match stage {
            RecoveryStage::Stopping => (Reason::Stopping, "stopping the workspace"),
            RecoveryStage::Starting => (Reason::Starting, "starting the workspace and waiting for its agent"),
        };
        let because = self
            .status
            .recovery
            .as_ref()
            .and_then(|r| r.last_reason.as_deref())
            .map_or_else(|| "the chat's agent is dead".to_string(), str::to_string);
        let kind = if because.starts_with(RESTART_REASON) { "A requested restart" } else { "Automatic recovery" };
        let message = format!(
            "{kind} (attempt {attempt}) is {what}, because {because}. Wait for Ready; do not start or stop the \
             workspace meanwhile."
        );
        self.say(RECOVERING, true, reason, message.clone());
        self.say(READY, false, Reason::Recovering, message);
        self.say(PROGRESSING, true, Reason::Recovering, format!("Recovery: {what}."));
    }

    /// Chats whose turn runs on `agent` (the root chat and its sub-agents),
    /// when the policy asks to interrupt them before a recovery's stop.
    fn turns_to_interrupt(&self, agent: &WorkspaceAgent) -> Option<ChatPlan> {
        if !self.inputs.spec.chat.interrupt_on_recovery {
            return None;
        }
        let ObservedChat::Bound { chat, .. } = self.inputs.chat else { return None };
        let done = self.inputs.previous.chat.as_ref().and_then(|c| c.interrupted_for_agent.as_deref());
        if done == Some(agent.id.as_str()) {
            // Tried once for this agent; the stop does not wait on a chat.
            return None;
        }
        let chat_ids: Vec<String> = std::iter::once(chat)
            .chain(chat.children.iter())
            .filter(|c| c.is_running() && c.agent_id.as_deref().is_none_or(|id| id == agent.id))
            .map(|c| c.id.clone())
            .collect();
        (!chat_ids.is_empty()).then(|| ChatPlan {
            chat_ids,
            agent_id: agent.id.clone(),
            agent_name: agent.name.clone(),
        })
    }

    /// `status.chat`, the `ChatContextCurrent` condition, and the re-pin
    /// after the operator's own start once the new agent is ready.
    fn chat(&mut self) {
        let current = self.current_agent.map(|a| a.id.as_str());
        let chat = match self.inputs.chat {
            ObservedChat::Unknown => {
                if conditions::find(&self.inputs.previous.conditions, CHAT_CONTEXT_CURRENT).is_none() {
                    self.say(
                        CHAT_CONTEXT_CURRENT,
                        false,
                        Reason::NotObserved,
                        "The operator has not read this workspace's chats yet.",
                    );
                }
                return;
            }
            ObservedChat::None => {
                self.status.chat = None;
                self.say(
                    CHAT_CONTEXT_CURRENT,
                    false,
                    Reason::NoChat,
                    "No chat that the operator's Coder user can read is bound to this workspace.",
                );
                return;
            }
            ObservedChat::Bound { chat, .. } => chat,
        };
        let stale = |c: &Chat| c.agent_id.is_some() && c.agent_id.as_deref() != current;
        let refreshed_for_build = self.status.chat.as_ref().and_then(|c| c.refreshed_for_build.clone());
        let interrupted_for_agent = match (&self.action, self.current_agent) {
            (Action::InterruptChats(_), Some(agent)) => Some(agent.id.clone()),
            _ => self.status.chat.as_ref().and_then(|c| c.interrupted_for_agent.clone()),
        };
        self.status.chat = Some(crd::ChatStatus {
            id: chat.id.clone(),
            title: chat.title.clone(),
            status: chat.status.clone(),
            agent_id: chat.agent_id.clone(),
            agent_stale: stale(chat),
            children: chat
                .children
                .iter()
                .map(|c| crd::ChildChatStatus { id: c.id.clone(), status: c.status.clone(), agent_stale: stale(c) })
                .collect(),
            context: Some(crd::ChatContextStatus {
                pinned: chat.context.is_some(),
                dirty_since: chat
                    .context
                    .as_ref()
                    .filter(|c| c.dirty)
                    .map(|c| c.dirty_since.map_or_else(|| whole_seconds(self.inputs.now), whole_seconds)),
                error: chat.context.as_ref().map(|c| c.error.clone()).filter(|e| !e.is_empty()),
                resources: chat.context.as_ref().map_or(0, |c| u32::try_from(c.resources.len()).unwrap_or(u32::MAX)),
            }),
            last_error: chat.last_error.as_ref().map(|e| e.message.clone()).filter(|m| !m.is_empty()),
            refreshed_for_build,
            interrupted_for_agent,
        });

        let dirty = |c: &Chat| c.context.as_ref().is_some_and(|ctx| ctx.dirty);
        let behind: Vec<&Chat> =
            std::iter::once(chat).chain(chat.children.iter()).filter(|c| stale(c) || dirty(c)).collect();
        let (agent_id, agent_name) =
            self.current_agent.map_or_else(Default::default, |a| (a.id.clone(), a.name.clone()));
        let (status, reason, message) = match (self.current_agent, chat.context.as_ref()) {
            (None, _) => (false, Reason::NoChatAgent, "The workspace has no running chat agent.".to_string()),
            (Some(_), None) => (
                false,
                Reason::NotPinned,
                "The chat has no pinned context yet; chatd pins it on the chat's next turn.".to_string(),
            ),
            (Some(agent), Some(_)) if !behind.is_empty() => {
                let which = |c: &Chat| if c.id == chat.id { "the chat" } else { "a sub-agent chat" };
                match behind.iter().find(|c| stale(c)) {
                    Some(stale) => (
                        false,
                        Reason::AgentStale,
                        format!(
                            "{} is still bound to an agent older than {} (the latest build's chat agent); its \
                             context refers to the old agent until a re-pin or its next turn.",
                            if stale.id == chat.id { "The chat" } else { "A sub-agent chat" },
                            agent.name
                        ),
                    ),
                    None => (
                        false,
                        Reason::ContextDirty,
                        format!(
                            "The files on agent {} changed after {} pinned them; a re-pin (PUT \
                             /chats/{{id}}/context) picks them up.",
                            agent.name,
                            which(behind[0])
                        ),
                    ),
                }
            }
            (Some(agent), Some(_)) => {
                (true, Reason::Current, format!("The chat's context is pinned to agent {} and current.", agent.name))
            }
        };
        self.say(CHAT_CONTEXT_CURRENT, status, reason, message);

        // Re-pin after the operator's own start, once, when the new chat
        // agent is ready (never before: with no agent, a re-pin clears it).
        let Some(build) = self.latest_build else { return };
        let ours = self
            .inputs
            .previous
            .last_build_request
            .as_ref()
            .is_some_and(|r| r.transition == WorkspaceTransition::Start && r.build_id.as_deref() == Some(build.id.as_str()))
            // A create's first build binds no chat yet: a chat made on it
            // pins its own context on its first turn.
            && build.build_number > 1;
        let done = self.status.chat.as_ref().and_then(|c| c.refreshed_for_build.as_deref()) == Some(build.id.as_str());
        if !self.agent_ready || !ours || done || behind.is_empty() || self.action != Action::None {
            return;
        }
        if self.inputs.spec.chat.context_policy == ContextPolicy::Leave {
            return;
        }
        let chat_ids = behind.iter().map(|c| c.id.clone()).collect();
        if let Some(status) = self.status.chat.as_mut() {
            status.refreshed_for_build = Some(build.id.clone());
        }
        self.action = Action::RefreshChatContext(ChatPlan { chat_ids, agent_id, agent_name });
        self.requeue_within(Duration::from_millis(100));
    }

    fn no_agent_conditions(&mut self, reason: Reason, message: &str) {
        self.say(AGENT_CONNECTED, false, reason, message);
        self.say(AGENT_REACHABLE, false, reason, message);
    }

    fn finish(mut self) -> Decision {
        // Defaults for whatever the path above did not speak about.
        let defaults = [
            (DEGRADED, false, Reason::AsExpected, "Nothing needs a person's attention."),
            (RECOVERING, false, Reason::NotRecovering, "No recovery is under way."),
        ];
        for (type_, status, reason, message) in defaults {
            if !self.verdicts.iter().any(|v| v.type_ == type_) {
                let kept = type_ == RECOVERING
                    && conditions::find(&self.inputs.previous.conditions, RECOVERING)
                        .is_some_and(|c| c.status == "False" && c.reason != Reason::NotRecovering.as_str());
                if !kept {
                    self.say(type_, status, reason, message);
                }
            }
        }
        if self.phase == Phase::Pending && self.action == Action::None {
            self.phase = Phase::Running;
        }
        self.status.phase = Some(self.phase);
        let now = whole_seconds(self.inputs.now);
        let merged = conditions::merge(&self.inputs.previous.conditions, &self.verdicts, self.inputs.generation, &now);
        self.status.conditions =
            conditions::merge(&merged, &conditions::kstatus(&merged), self.inputs.generation, &now);
        Decision { action: self.action, status: self.status, requeue: self.requeue, events: self.events }
    }
}

fn job_error(build: &WorkspaceBuild) -> String {
    build.job.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "no error message".into())
}

fn probe_reason(probe: &ProbeOutcome) -> Reason {
    match probe {
        ProbeOutcome::Reachable => Reason::Reachable,
        ProbeOutcome::Refused { .. } => Reason::ProbeRefused,
        ProbeOutcome::TimedOut => Reason::ProbeTimedOut,
        ProbeOutcome::Failed { .. } => Reason::ProbeFailed,
        ProbeOutcome::Inconclusive { .. } => Reason::ProbeInconclusive,
    }
}

fn probe_message(probe: &ProbeOutcome, timeout: Duration) -> String {
    match probe {
        ProbeOutcome::Reachable => "coderd reached the agent.".into(),
        ProbeOutcome::Refused { status, message } => {
            format!("coderd refused the probe ({status}): {message}")
        }
        ProbeOutcome::TimedOut => format!("coderd did not reach the agent within {}.", human(timeout)),
        ProbeOutcome::Failed { message } => format!("The probe through coderd failed: {message}"),
        ProbeOutcome::Inconclusive { message } => format!("The probe through coderd was inconclusive: {message}"),
    }
}

/// The agent's connection timeout, for messages.
fn connection_timeout(agent: &WorkspaceAgent) -> String {
    human(Duration::from_secs(u64::try_from(agent.connection_timeout_seconds).unwrap_or(0)))
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Time from `since` to `now`, zero if `since` is in the future (clock skew
/// between Coder and the operator must not make a duration negative).
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let span: SignedDuration = now.duration_since(since);
    Duration::try_from(span).unwrap_or(Duration::ZERO)
}

/// A Kubernetes time as it will read back: `metav1.Time` keeps whole
/// seconds, so a status holding finer times would never equal the one
/// written before it, and every resync would write it again.
pub fn whole_seconds(time: Timestamp) -> Time {
    Time(Timestamp::from_second(time.as_second()).unwrap_or(time))
}

/// A short human duration for condition messages, e.g. `1m30s`.
pub fn human(duration: Duration) -> String {
    let total = duration.as_secs();
    if total == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Where a deletion that cannot finish stands against `--cleanup-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupDeadline {
    /// Keep waiting until `at`, this long from now.
    WaitUntil { at: Timestamp, remaining: Duration },
    /// The time is up: leave the workspace in Coder.
    GiveUp,
}

/// The deadline of a blocked deletion: `timeout` after its
/// `deletionTimestamp` (Kubernetes' time, so a restarted operator waits no
/// longer). A timeout too large to add to it never runs out.
pub fn cleanup_deadline(deleted_at: Timestamp, timeout: Duration, now: Timestamp) -> CleanupDeadline {
    let at = SignedDuration::try_from(timeout)
        .ok()
        .and_then(|timeout| deleted_at.checked_add(timeout).ok())
        .unwrap_or(Timestamp::MAX);
    if now >= at {
        return CleanupDeadline::GiveUp;
    }
    CleanupDeadline::WaitUntil { at, remaining: elapsed(now, at) }
}

/// How long a failed cleanup build waits before it is tried again: 5 s,
/// then twice as long after each further failure, at most five minutes.
pub const CLEANUP_RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));

/// What deleting the resource still has to do to the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Nothing left: the finalizer can go.
    Done,
    /// A build is active; look again soon.
    Wait,
    /// Issue this build, then look again.
    Build(WorkspaceTransition),
    /// The last cleanup build failed: try again after this long.
    RetryIn(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupDecision {
    pub cleanup: Cleanup,
    /// `status.cleanup` with the latest failed build counted.
    pub status: crd::CleanupStatus,
    /// A Warning for a failed cleanup build seen for the first time.
    pub event: Option<Event>,
}

/// `deletionPolicy` applied to the observed workspace. Like a desired-state
/// stop, it waits for an active build and treats only a succeeded stop (or
/// delete) as done. A failed cleanup build is counted once, reported once,
/// and retried after `backoff`, measured from the end of its job (Coder's
/// time, so a restarted operator waits no less).
pub fn decide_cleanup(
    policy: crd::DeletionPolicy,
    workspace: Option<&Workspace>,
    previous: &crd::CleanupStatus,
    backoff: Backoff,
    now: Timestamp,
) -> CleanupDecision {
    let mut status = previous.clone();
    let decided = |cleanup, status| CleanupDecision { cleanup, status, event: None };
    let wanted = match policy {
        crd::DeletionPolicy::Orphan => return decided(Cleanup::Done, status),
        crd::DeletionPolicy::Stop => WorkspaceTransition::Stop,
        crd::DeletionPolicy::Delete => WorkspaceTransition::Delete,
    };
    let Some(workspace) = workspace else { return decided(Cleanup::Done, status) };
    let build = &workspace.latest_build;
    if build.job.status.is_active() {
        return decided(Cleanup::Wait, status);
    }
    if build.transition != wanted {
        return decided(Cleanup::Build(wanted), status);
    }
    match build.job.status {
        ProvisionerJobStatus::Succeeded => decided(Cleanup::Done, status),
        ProvisionerJobStatus::Failed => {
            let mut event = None;
            if status.last_failed_build.as_deref() != Some(build.id.as_str()) {
                status.failed_builds = status.failed_builds.saturating_add(1);
                status.last_failed_build = Some(build.id.clone());
                status.last_error = Some(job_error(build));
                event = Some(Event {
                    warning: true,
                    reason: EventReason::CleanupBuildFailed,
                    note: format!(
                        "The {} build #{} of deletionPolicy {policy:?} failed in Coder: {}. Retrying in {} \
                         (failure {} in a row).",
                        wanted.as_str(),
                        build.build_number,
                        job_error(build),
                        human(backoff.after(status.failed_builds)),
                        status.failed_builds
                    ),
                });
            }
            let wait = backoff.after(status.failed_builds.max(1));
            let since = elapsed(build.job.completed_at.unwrap_or(build.updated_at), now);
            let cleanup = if since < wait { Cleanup::RetryIn(wait - since) } else { Cleanup::Build(wanted) };
            CleanupDecision { cleanup, status, event }
        }
        _ => decided(Cleanup::Build(wanted), status),
    }
}
