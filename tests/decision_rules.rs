//! The rules of chatd's workspace tools, proven on the pure decision core:
//! no server, no clock, just spec + observation + previous status + now.

use std::time::Duration;

use chatworkspace_operator::backoff::Backoff;
use chatworkspace_operator::coder::{Chat, ProbeOutcome, Workspace, WorkspaceTransition};
use chatworkspace_operator::conditions::{self, AGENT_CONNECTED, DEGRADED, READY, RECONCILING, RECOVERING, STALLED};
use chatworkspace_operator::crd::{
    BuildRequestStatus, ChatWorkspaceSpec, ChatWorkspaceStatus, CleanupStatus, DeletedInCoder, DeletionPolicy,
    DesiredState, NeverConnected, RecoveryMode, RecoveryPolicy, RecoverySpec, RecoveryStage, RecoveryStatus,
    TemplateRef,
};
use chatworkspace_operator::decision::{
    Action, BuildPlan, BuildReason, CLEANUP_RETRY, Cleanup, CleanupDeadline, Decision, Inputs, Observed, ObservedChat,
    Probe, Requeue, cleanup_deadline, decide, decide_cleanup, needs_probe,
};
use chatworkspace_operator::events::EventReason;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;

fn at(offset_seconds: i64) -> Timestamp {
    Timestamp::from_second(NOW + offset_seconds).unwrap()
}

fn spec(desired: DesiredState) -> ChatWorkspaceSpec {
    ChatWorkspaceSpec {
        desired_state: desired,
        owner: None,
        organization: None,
        workspace_name: None,
        template: TemplateRef { name: Some("docker-dev".into()), ..Default::default() },
        preset: None,
        parameters: vec![],
        agent_name: None,
        recovery: RecoverySpec::default(),
        chat: Default::default(),
        deletion_policy: DeletionPolicy::Stop,
        outside_stops: Default::default(),
        deleted_in_coder: Default::default(),
        credentials_ref: None,
        adopt: false,
    }
}

fn policy() -> RecoveryPolicy {
    RecoverySpec::default().policy().unwrap()
}

/// An agent as coderd reports it; times are offsets from NOW in seconds.
#[derive(Clone, Copy, Debug)]
struct Agent {
    status: &'static str,
    lifecycle: &'static str,
    disconnected_since: Option<i64>,
}

const READY_AGENT: Agent = Agent { status: "connected", lifecycle: "ready", disconnected_since: None };

fn dead_for(seconds: i64) -> Agent {
    Agent { status: "disconnected", lifecycle: "ready", disconnected_since: Some(-seconds) }
}

fn agent_json(agent: Agent, id: &str) -> Value {
    let last = agent.disconnected_since.unwrap_or(-5);
    json!({
        "id": id, "name": "main", "parent_id": null, "status": agent.status,
        "lifecycle_state": agent.lifecycle, "created_at": at(-600).to_string(),
        "first_connected_at": if agent.status == "timeout" || agent.status == "connecting" { Value::Null } else { json!(at(-590).to_string()) },
        "last_connected_at": at(last).to_string(),
        "disconnected_at": agent.disconnected_since.map(|s| at(s).to_string()),
        "connection_timeout_seconds": 120, "display_order": 0,
    })
}

fn workspace(transition: &str, job: &str, agent: Option<Agent>) -> Workspace {
    workspace_with(transition, job, agent, false, "v1")
}

fn workspace_with(transition: &str, job: &str, agent: Option<Agent>, require_active: bool, version: &str) -> Workspace {
    let agents: Vec<Value> = agent.map(|a| agent_json(a, "agent-1")).into_iter().collect();
    let value = json!({
        "id": "ws-1", "name": "fix-login-bug", "owner_id": "user-1", "owner_name": "alice",
        "organization_id": "org-1", "template_id": "tpl-1", "template_name": "docker-dev",
        "template_active_version_id": "v2", "template_require_active_version": require_active,
        "outdated": version != "v2", "automatic_updates": "never", "ttl_ms": null,
        "health": {"healthy": true, "failing_agents": []}, "deleting_at": null, "dormant_at": null,
        "latest_build": {
            "id": "build-7", "build_number": 7, "workspace_id": "ws-1", "workspace_name": "fix-login-bug",
            "workspace_owner_name": "alice", "template_version_id": version, "transition": transition,
            "status": "irrelevant", "reason": "initiator", "created_at": at(-700).to_string(),
            "updated_at": at(-650).to_string(), "deadline": null,
            "job": {"id": "job-7", "status": job, "error": if job == "failed" { "boom" } else { "" },
                    "created_at": at(-700).to_string(), "queue_position": 0},
            "resources": [{"id": "res-1", "name": "dev", "type": "docker_container", "agents": agents}],
        },
    });
    serde_json::from_value(value).unwrap()
}

fn decide_with(
    spec: &ChatWorkspaceSpec,
    previous: &ChatWorkspaceStatus,
    workspace: Option<&Workspace>,
    probe: Option<&ProbeOutcome>,
) -> Decision {
    // Each call stands for a new probe: the index counts failures in a row.
    let failures_before = previous.recovery.as_ref().map_or(0, |r| r.probe_failures);
    let probe = probe.map(|outcome| Probe {
        outcome: outcome.clone(),
        failures: if outcome.is_reachable() { 0 } else { failures_before + 1 },
        fresh: true,
    });
    decide(&Inputs {
        spec,
        policy: spec.recovery.policy().unwrap(),
        generation: 1,
        previous,
        observed: Observed::Workspace { workspace, fresh: true, probe: probe.as_ref() },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    })
}

fn build(transition: WorkspaceTransition, reason: BuildReason) -> Action {
    Action::Build(BuildPlan { transition, template_version_id: None, reason })
}

fn condition(decision: &Decision, type_: &str) -> (String, String) {
    let c = conditions::find(&decision.status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone())
}

fn timed_out() -> ProbeOutcome {
    ProbeOutcome::TimedOut
}

fn refused() -> ProbeOutcome {
    ProbeOutcome::Refused {
        status: 400,
        message: r#"Agent state is "disconnected", it must be in the "connected" state."#.into(),
    }
}

// ---- start ----

#[test]
fn running_without_a_workspace_creates_one() {
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), None, None);
    assert_eq!(d.action, Action::CreateWorkspace);
    assert_eq!(condition(&d, READY).0, "False");
}

#[test]
fn a_workspace_deleted_in_coder_is_recreated_by_default_and_left_when_the_spec_says_leave() {
    let running = workspace("start", "succeeded", Some(READY_AGENT));
    let seen =
        decide_with(&spec(DesiredState::Running), &Default::default(), Some(&running), Some(&ProbeOutcome::Reachable));
    assert!(seen.status.workspace.is_some());

    // Default (Recreate): one Warning, and a create.
    let d = decide_with(&spec(DesiredState::Running), &seen.status, None, None);
    assert_eq!(d.action, Action::CreateWorkspace);
    assert_eq!(d.events.iter().map(|e| e.reason).collect::<Vec<_>>(), [EventReason::WorkspaceDeletedInCoder]);
    assert!(d.events[0].note.contains("alice/fix-login-bug (ws-1)"), "{}", d.events[0].note);

    // Leave: the same Warning, no create, and the condition says what to do.
    let mut leave = spec(DesiredState::Running);
    leave.deleted_in_coder = DeletedInCoder::Leave;
    let d = decide_with(&leave, &seen.status, None, None);
    assert_eq!(d.action, Action::None);
    assert_eq!(d.events.iter().map(|e| e.reason).collect::<Vec<_>>(), [EventReason::WorkspaceDeletedInCoder]);
    assert_eq!(condition(&d, READY), ("False".into(), "DeletedInCoder".into()));
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "DeletedInCoder".into()));
    let message = conditions::find(&d.status.conditions, READY).unwrap().message.clone();
    assert!(message.contains("ws-1") && message.contains("spec.deletedInCoder to Recreate"), "{message}");
    // It stays so on the next pass (status.workspace is gone by then), with no new Event.
    let again = decide_with(&leave, &d.status, None, None);
    assert_eq!((&again.action, again.events.len()), (&Action::None, 0));
    assert_eq!(condition(&again, READY), ("False".into(), "DeletedInCoder".into()));
    // Recreate asked for later: created again, and the record of the deleted one goes with the new one.
    let d = decide_with(&spec(DesiredState::Running), &again.status, None, None);
    assert_eq!(d.action, Action::CreateWorkspace);
    let created = decide_with(&spec(DesiredState::Running), &d.status, Some(&running), Some(&ProbeOutcome::Reachable));
    assert!(created.status.deleted_workspace.is_none());
}

#[test]
fn the_first_start_of_a_created_workspace_is_this_generations_own() {
    // A create is the workspace's first start build: when it fails, that is
    // a failed start of this spec, not one inherited to be tried again.
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), None, None);
    assert_eq!(d.action, Action::CreateWorkspace);
    let mut after_create = d.status.clone();
    let request = after_create.last_build_request.as_mut().expect("the create is recorded as a start request");
    assert_eq!((request.transition.as_str(), request.generation), ("start", 1));
    // The reconciler fills in the build id of the created workspace.
    request.build_id = Some("build-7".into());
    let d = decide_with(&spec(DesiredState::Running), &after_create, Some(&workspace("start", "failed", None)), None);
    assert_eq!(d.action, Action::None, "the failed first start is not retried");
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "StartFailed".into()));
}

#[test]
fn an_active_job_is_waited_for_never_stacked() {
    for job in ["pending", "running", "canceling"] {
        for transition in ["start", "stop", "delete"] {
            for desired in [DesiredState::Running, DesiredState::Stopped] {
                let ws = workspace(transition, job, None);
                let d = decide_with(&spec(desired), &Default::default(), Some(&ws), None);
                assert_eq!(d.action, Action::None, "{transition} {job} {desired:?}");
                assert!(d.requeue <= Requeue::default().active);
            }
        }
    }
}

#[test]
fn a_succeeded_start_with_a_ready_reachable_agent_is_ready_and_builds_nothing() {
    let ws = workspace("start", "succeeded", Some(READY_AGENT));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, READY), ("True".into(), "Running".into()));
    assert_eq!(condition(&d, AGENT_CONNECTED).0, "True");
    assert_eq!(d.requeue, Requeue::default().stable);
}

#[test]
fn stopped_failed_or_canceled_workspaces_are_started() {
    for (transition, job) in [("stop", "succeeded"), ("stop", "failed"), ("start", "canceled"), ("stop", "canceled")] {
        let ws = workspace(transition, job, None);
        let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
        assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::DesiredState), "{transition} {job}");
    }
}

#[test]
fn start_builds_the_active_version_only_when_the_template_requires_it() {
    let ws = workspace_with("stop", "succeeded", None, true, "v1");
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
    assert_eq!(
        d.action,
        Action::Build(BuildPlan {
            transition: WorkspaceTransition::Start,
            template_version_id: Some("v2".into()),
            reason: BuildReason::DesiredState
        })
    );
    assert!(d.events.iter().any(|e| e.reason == EventReason::ActiveVersionRequired));
    let message = &conditions::find(&d.status.conditions, "Progressing").unwrap().message;
    assert!(message.contains("active version"), "{message}");

    let ws = workspace_with("stop", "succeeded", None, false, "v1");
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::DesiredState));
}

#[test]
fn a_failed_start_of_this_generation_is_reported_not_retried() {
    let ws = workspace("start", "failed", None);
    let previous = ChatWorkspaceStatus {
        last_build_request: Some(BuildRequestStatus {
            build_id: Some("build-7".into()),
            transition: WorkspaceTransition::Start,
            reason: BuildReason::DesiredState,
            generation: 1,
            time: Time(at(-700)),
        }),
        ..Default::default()
    };
    let d = decide_with(&spec(DesiredState::Running), &previous, Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "StartFailed".into()));
    let message = &conditions::find(&d.status.conditions, READY).unwrap().message;
    assert!(message.contains("boom"), "the job error is shown: {message}");

    // From an older generation (or from outside the operator): one new try.
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::DesiredState));
}

// ---- stop ----

#[test]
fn stop_is_idempotent_only_after_a_succeeded_stop() {
    let ws = workspace("stop", "succeeded", None);
    let d = decide_with(&spec(DesiredState::Stopped), &Default::default(), Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, READY), ("True".into(), "Stopped".into()));

    for (transition, job) in [("start", "succeeded"), ("start", "failed"), ("stop", "failed"), ("stop", "canceled")] {
        let ws = workspace(transition, job, Some(READY_AGENT));
        let d = decide_with(&spec(DesiredState::Stopped), &Default::default(), Some(&ws), None);
        assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::DesiredState), "{transition} {job}");
        assert_eq!(condition(&d, READY).0, "False");
    }
}

#[test]
fn a_failed_stop_is_retried_after_a_pause() {
    let ws = workspace("stop", "failed", None);
    let previous = ChatWorkspaceStatus {
        last_build_request: Some(BuildRequestStatus {
            build_id: Some("build-7".into()),
            transition: WorkspaceTransition::Stop,
            reason: BuildReason::DesiredState,
            generation: 1,
            time: Time(at(-2)),
        }),
        ..Default::default()
    };
    let d = decide_with(&spec(DesiredState::Stopped), &previous, Some(&ws), None);
    assert_eq!(d.action, Action::None, "too soon after the failed stop");
    assert!(d.requeue <= Duration::from_secs(8));
    assert_eq!(condition(&d, READY).0, "False", "a failed stop is never reported as stopped");

    let mut later = previous.clone();
    later.last_build_request.as_mut().unwrap().time = Time(at(-60));
    let d = decide_with(&spec(DesiredState::Stopped), &later, Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::DesiredState));
}

#[test]
fn stopped_without_a_workspace_creates_nothing() {
    let d = decide_with(&spec(DesiredState::Stopped), &Default::default(), None, None);
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, READY).0, "True");
}

#[test]
fn a_conflict_builds_nothing() {
    let s = spec(DesiredState::Running);
    let d = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Conflict { other: "team-a/first".into() },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "Conflict".into()));
    assert!(conditions::find(&d.status.conditions, DEGRADED).unwrap().message.contains("team-a/first"));
}

// ---- recovery ----

#[test]
fn a_dead_agent_past_the_threshold_with_a_failed_probe_is_recovered() {
    for probe in [timed_out(), refused(), ProbeOutcome::Failed { message: "dial".into() }] {
        let ws = workspace("start", "succeeded", Some(dead_for(91)));
        let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&probe));
        assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery), "{probe:?}");
        let recovery = d.status.recovery.as_ref().unwrap();
        assert_eq!(recovery.stage, Some(RecoveryStage::Stopping));
        assert_eq!(recovery.attempts, 1);
        assert_eq!(condition(&d, RECOVERING), ("True".into(), "Stopping".into()));
        assert!(d.events.iter().any(|e| e.reason == EventReason::RecoveryStarted));
    }
}

#[test]
fn a_disconnect_shorter_than_the_threshold_waits_until_it_is_reached() {
    let ws = workspace("start", "succeeded", Some(dead_for(80)));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&refused()));
    assert_eq!(d.action, Action::None);
    assert_eq!(d.requeue, Duration::from_secs(10), "look again exactly when the threshold is reached");
}

#[test]
fn a_disconnected_agent_that_answers_the_probe_is_left_alone() {
    let ws = workspace("start", "succeeded", Some(dead_for(600)));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, READY).0, "False");
}

#[test]
fn a_cached_observation_is_refreshed_before_a_recovery() {
    let s = spec(DesiredState::Running);
    let ws = workspace("start", "succeeded", Some(dead_for(120)));
    let d = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Workspace {
            workspace: Some(&ws),
            fresh: false,
            probe: Some(&Probe::just_now(timed_out())),
        },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(d.action, Action::Refresh);
}

#[test]
fn a_stale_probe_is_not_enough_for_a_recovery_even_on_a_fresh_read() {
    let s = spec(DesiredState::Running);
    let ws = workspace("start", "succeeded", Some(dead_for(120)));
    let stale = Probe { outcome: refused(), failures: 3, fresh: false };
    let d = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Workspace { workspace: Some(&ws), fresh: true, probe: Some(&stale) },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(d.action, Action::Refresh, "both signals are checked fresh right before the stop");
    let fresh = Probe { fresh: true, ..stale };
    let d = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Workspace { workspace: Some(&ws), fresh: true, probe: Some(&fresh) },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
}

#[test]
fn the_same_failed_probe_seen_twice_counts_once() {
    // A reconcile woken for another reason sees the index's last probe again:
    // that is still one failure, not chatd's second.
    let ws = workspace("start", "succeeded", Some(READY_AGENT));
    let once = Probe::just_now(timed_out());
    let s = spec(DesiredState::Running);
    let mut previous = ChatWorkspaceStatus::default();
    for _ in 0..3 {
        let d = decide(&Inputs {
            spec: &s,
            policy: policy(),
            generation: 1,
            previous: &previous,
            observed: Observed::Workspace { workspace: Some(&ws), fresh: false, probe: Some(&once) },
            chat: ObservedChat::Unknown,
            now: at(0),
            requeue: Requeue::default(),
            start_request: None,
            restart_request: None,
        });
        assert_eq!(condition(&d, DEGRADED).0, "False");
        previous = d.status;
    }
}

#[test]
fn a_probe_timeout_while_connected_is_retried_once_then_degraded_without_builds() {
    let ws = workspace("start", "succeeded", Some(READY_AGENT));
    let first = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&timed_out()));
    assert_eq!(first.action, Action::None);
    assert!(first.requeue <= Requeue::default().probe_retry);
    assert_eq!(condition(&first, DEGRADED).0, "False", "one timeout is not yet a verdict");

    let second = decide_with(&spec(DesiredState::Running), &first.status, Some(&ws), Some(&timed_out()));
    assert_eq!(second.action, Action::None);
    assert_eq!(condition(&second, DEGRADED), ("True".into(), "DialTimeout".into()));

    let healed = decide_with(&spec(DesiredState::Running), &second.status, Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(condition(&healed, READY).0, "True");
    assert_eq!(condition(&healed, DEGRADED).0, "False");
}

const NEVER_CONNECTED: Agent = Agent { status: "timeout", lifecycle: "created", disconnected_since: None };

/// The workspace with its agent on a `coder_external_agent` resource.
fn external(mut ws: Workspace) -> Workspace {
    for resource in &mut ws.latest_build.resources {
        resource.resource_type = "coder_external_agent".into();
    }
    ws
}

fn message(d: &Decision, type_: &str) -> String {
    conditions::find(&d.status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition")).message.clone()
}

#[test]
fn an_agent_that_never_connected_is_recovered_with_a_stop_by_default() {
    let ws = workspace("start", "succeeded", Some(NEVER_CONNECTED));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(d.status.recovery.as_ref().unwrap().attempts, 1);
    assert_eq!(condition(&d, RECOVERING), ("True".into(), "Stopping".into()));
    assert_eq!(condition(&d, AGENT_CONNECTED), ("False".into(), "NeverConnected".into()));
    let recovering = message(&d, RECOVERING);
    assert!(recovering.contains("never connected within its connection timeout (2m)"), "{recovering}");
    assert!(d.events.iter().any(|e| e.reason == EventReason::RecoveryStarted && e.note.contains("never connected")));
}

#[test]
fn an_agent_that_never_connected_is_only_reported_when_the_spec_says_report_or_recovery_is_disabled() {
    let ws = workspace("start", "succeeded", Some(NEVER_CONNECTED));
    let mut report = spec(DesiredState::Running);
    report.recovery.never_connected = NeverConnected::Report;
    let mut disabled = spec(DesiredState::Running);
    disabled.recovery.mode = RecoveryMode::Disabled;
    for (s, why) in [(report, "neverConnected is Report"), (disabled, "mode is Disabled")] {
        let d = decide_with(&s, &Default::default(), Some(&ws), None);
        assert_eq!(d.action, Action::None);
        assert_eq!(condition(&d, DEGRADED), ("True".into(), "AgentNeverConnected".into()));
        assert_eq!(condition(&d, RECOVERING).0, "False");
        let degraded = message(&d, DEGRADED);
        assert!(degraded.contains("template") && degraded.contains(why), "{degraded}");
    }
}

#[test]
fn a_never_connected_agent_needs_no_probe_but_a_fresh_read_before_the_stop() {
    // coderd refuses to probe an agent it never saw connected: the probe
    // says nothing the status does not.
    let ws = workspace("start", "succeeded", Some(NEVER_CONNECTED));
    assert!(needs_probe(&ws, None).is_none());
    let s = spec(DesiredState::Running);
    let d = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Workspace { workspace: Some(&ws), fresh: false, probe: None },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(d.action, Action::Refresh);
    assert_eq!(d.status.recovery.as_ref().map_or(0, |r| r.attempts), 0, "nothing counted before the fresh read");
}

#[test]
fn an_agent_that_never_connects_after_the_recoverys_own_start_counts_against_the_same_budget() {
    let ws = workspace("start", "succeeded", Some(NEVER_CONNECTED));
    let after_start = |attempts| ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus {
            stage: Some(RecoveryStage::Starting),
            attempts,
            window_start: Some(Time(at(-600))),
            generation: Some(1),
            last_reason: Some("agent main never connected within its connection timeout (2m)".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Budget left: the next attempt.
    let d = decide_with(&spec(DesiredState::Running), &after_start(1), Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(d.status.recovery.as_ref().unwrap().attempts, 2);
    assert!(d.events.iter().any(|e| e.reason == EventReason::RecoveryFailed));
    // Budget spent: reported with the template hint, no more builds.
    let d = decide_with(&spec(DesiredState::Running), &after_start(3), Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(d.status.recovery.as_ref().unwrap().stage, None);
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "AgentNeverConnected".into()));
    assert_eq!(condition(&d, RECOVERING), ("False".into(), "RecoveryBudgetExhausted".into()));
    let degraded = message(&d, DEGRADED);
    assert!(degraded.contains("again after 3 automatic recoveries") && degraded.contains("template"), "{degraded}");
}

#[test]
fn a_turn_running_while_the_agent_never_connected_is_interrupted_before_the_recovery_stop() {
    // chatd tells the model to stop and start such a workspace too: its
    // turn must end before the operator's own stop.
    let ws = workspace("start", "succeeded", Some(NEVER_CONNECTED));
    let chat: Chat = serde_json::from_value(json!({
        "id": "chat-1", "title": "t", "status": "running", "workspace_id": "ws-1", "agent_id": null, "children": [],
    }))
    .unwrap();
    let s = spec(DesiredState::Running);
    let decide_with_chat = |fresh| {
        decide(&Inputs {
            spec: &s,
            policy: policy(),
            generation: 1,
            previous: &Default::default(),
            observed: Observed::Workspace { workspace: Some(&ws), fresh: true, probe: None },
            chat: ObservedChat::Bound { chat: &chat, fresh },
            now: at(0),
            requeue: Requeue::default(),
            start_request: None,
            restart_request: None,
        })
    };
    assert_eq!(decide_with_chat(false).action, Action::Refresh, "the chat is read fresh first");
    let d = decide_with_chat(true);
    assert!(
        matches!(&d.action, Action::InterruptChats(plan) if plan.chat_ids == ["chat-1"] && plan.agent_id == "agent-1"),
        "{:?}",
        d.action
    );
}

#[test]
fn an_external_agent_that_disconnects_is_reported_and_never_rebuilt() {
    let ws = external(workspace("start", "succeeded", Some(dead_for(600))));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&refused()));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, AGENT_CONNECTED), ("False".into(), "ExternalAgentDisconnected".into()));
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "ExternalAgentDisconnected".into()));
    assert_eq!(condition(&d, RECOVERING), ("False".into(), "NotRecovering".into()));
    let connected = message(&d, AGENT_CONNECTED);
    assert!(connected.contains("external agent") && connected.contains("where it runs"), "{connected}");
}

#[test]
fn an_external_agent_that_never_connected_is_reported_and_never_rebuilt() {
    let ws = external(workspace("start", "succeeded", Some(NEVER_CONNECTED)));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "ExternalAgentNotConnected".into()));
    assert_eq!(condition(&d, RECOVERING), ("False".into(), "NotRecovering".into()));
}

#[test]
fn an_external_agent_that_misses_heartbeats_but_answers_is_not_degraded() {
    let ws = external(workspace("start", "succeeded", Some(dead_for(20))));
    let d = decide_with(&spec(DesiredState::Running), &Default::default(), Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED).0, "False");
}

#[test]
fn recovery_disabled_only_reports() {
    let mut s = spec(DesiredState::Running);
    s.recovery.mode = RecoveryMode::Disabled;
    let ws = workspace("start", "succeeded", Some(dead_for(600)));
    let d = decide_with(&s, &Default::default(), Some(&ws), Some(&refused()));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED).0, "True");
}

#[test]
fn the_budget_stops_a_flapping_workspace_until_the_window_passes() {
    let ws = workspace("start", "succeeded", Some(dead_for(600)));
    let spent = ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus {
            attempts: 3,
            window_start: Some(Time(at(-1800))),
            generation: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let d = decide_with(&spec(DesiredState::Running), &spent, Some(&ws), Some(&refused()));
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, DEGRADED), ("True".into(), "RecoveryBudgetExhausted".into()));
    let message = &conditions::find(&d.status.conditions, DEGRADED).unwrap().message;
    assert!(message.contains(&format!("resumes at {}", at(1800))), "says when the window reopens: {message}");

    let mut old_window = spent.clone();
    old_window.recovery.as_mut().unwrap().window_start = Some(Time(at(-3700)));
    let d = decide_with(&spec(DesiredState::Running), &old_window, Some(&ws), Some(&refused()));
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(d.status.recovery.unwrap().attempts, 1);
}

#[test]
fn recovery_resumes_from_its_stage_without_a_second_stop() {
    let stopping = ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus { stage: Some(RecoveryStage::Stopping), attempts: 1, ..Default::default() }),
        ..Default::default()
    };
    // The stop is still running: wait.
    let ws = workspace("stop", "running", None);
    let d = decide_with(&spec(DesiredState::Running), &stopping, Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(condition(&d, RECOVERING).0, "True");
    // The stop succeeded: start.
    let ws = workspace("stop", "succeeded", None);
    let d = decide_with(&spec(DesiredState::Running), &stopping, Some(&ws), None);
    assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::Recovery));
    assert_eq!(d.status.recovery.as_ref().unwrap().stage, Some(RecoveryStage::Starting));
    // The new agent is ready: done.
    let ws = workspace("start", "succeeded", Some(READY_AGENT));
    let d2 = decide_with(&spec(DesiredState::Running), &d.status, Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(d2.action, Action::None);
    assert_eq!(d2.status.recovery.as_ref().unwrap().stage, None);
    assert_eq!(condition(&d2, RECOVERING), ("False".into(), "Recovered".into()));
    assert!(d2.events.iter().any(|e| e.reason == EventReason::Recovered));
}

#[test]
fn flipping_to_stopped_abandons_a_recovery() {
    let stopping = ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus { stage: Some(RecoveryStage::Starting), attempts: 1, ..Default::default() }),
        ..Default::default()
    };
    let ws = workspace("start", "running", None);
    let d = decide_with(&spec(DesiredState::Stopped), &stopping, Some(&ws), None);
    assert_eq!(d.action, Action::None);
    assert_eq!(d.status.recovery.unwrap().stage, None);
}

#[test]
fn probes_are_asked_for_only_for_a_judgeable_agent() {
    assert!(needs_probe(&workspace("start", "succeeded", Some(READY_AGENT)), None).is_some());
    assert!(needs_probe(&workspace("start", "succeeded", Some(dead_for(5))), None).is_some());
    let connecting = Agent { status: "connecting", lifecycle: "created", disconnected_since: None };
    assert!(needs_probe(&workspace("start", "succeeded", Some(connecting)), None).is_none());
    assert!(needs_probe(&workspace("start", "running", Some(READY_AGENT)), None).is_none());
    assert!(needs_probe(&workspace("stop", "succeeded", None), None).is_none());
}

fn cleanup(policy: DeletionPolicy, workspace: Option<&Workspace>) -> Cleanup {
    decide_cleanup(policy, workspace, &CleanupStatus::default(), CLEANUP_RETRY, at(0)).cleanup
}

/// A workspace whose latest build is a `transition` that failed `ago` seconds before NOW.
fn failed_at(transition: &str, ago: i64, id: &str) -> Workspace {
    let mut ws = workspace(transition, "failed", None);
    ws.latest_build.id = id.into();
    ws.latest_build.job.completed_at = Some(at(-ago));
    ws
}

#[test]
fn cleanup_follows_the_deletion_policy() {
    let running = workspace("start", "succeeded", Some(READY_AGENT));
    assert_eq!(cleanup(DeletionPolicy::Orphan, Some(&running)), Cleanup::Done);
    assert_eq!(cleanup(DeletionPolicy::Stop, Some(&running)), Cleanup::Build(WorkspaceTransition::Stop));
    assert_eq!(cleanup(DeletionPolicy::Delete, Some(&running)), Cleanup::Build(WorkspaceTransition::Delete));
    assert_eq!(cleanup(DeletionPolicy::Stop, Some(&workspace("start", "running", None))), Cleanup::Wait);
    assert_eq!(cleanup(DeletionPolicy::Stop, Some(&workspace("stop", "succeeded", None))), Cleanup::Done);
    // A failed start is no cleanup build: the stop is issued at once.
    assert_eq!(
        cleanup(DeletionPolicy::Stop, Some(&failed_at("start", 0, "b"))),
        Cleanup::Build(WorkspaceTransition::Stop)
    );
    assert_eq!(cleanup(DeletionPolicy::Delete, None), Cleanup::Done);
}

#[test]
fn a_failed_cleanup_build_is_counted_once_reported_once_and_retried_after_a_backoff() {
    let backoff = Backoff { first: Duration::from_secs(5), max: Duration::from_secs(60) };
    // Just failed: counted, reported with the job's error, retried in 5 s.
    let first = decide_cleanup(
        DeletionPolicy::Stop,
        Some(&failed_at("stop", 1, "b1")),
        &CleanupStatus::default(),
        backoff,
        at(0),
    );
    assert_eq!(first.cleanup, Cleanup::RetryIn(Duration::from_secs(4)));
    assert_eq!((first.status.failed_builds, first.status.last_failed_build.as_deref()), (1, Some("b1")));
    assert_eq!(first.status.last_error.as_deref(), Some("boom"));
    let event = first.event.expect("a Warning for the failed build");
    assert!(event.warning && event.reason == EventReason::CleanupBuildFailed, "{event:?}");
    assert!(event.note.contains("boom") && event.note.contains("5s"), "{}", event.note);
    // The same build seen again: no new count, no new Event.
    let again = decide_cleanup(DeletionPolicy::Stop, Some(&failed_at("stop", 3, "b1")), &first.status, backoff, at(0));
    assert_eq!(
        (again.cleanup, again.status.failed_builds, again.event),
        (Cleanup::RetryIn(Duration::from_secs(2)), 1, None)
    );
    // Once the wait is over, the stop is tried again.
    let due = decide_cleanup(DeletionPolicy::Stop, Some(&failed_at("stop", 5, "b1")), &first.status, backoff, at(0));
    assert_eq!(due.cleanup, Cleanup::Build(WorkspaceTransition::Stop));
    // The retry fails too: it waits twice as long.
    let second = decide_cleanup(DeletionPolicy::Stop, Some(&failed_at("stop", 9, "b2")), &first.status, backoff, at(0));
    assert_eq!((second.cleanup, second.status.failed_builds), (Cleanup::RetryIn(Duration::from_secs(1)), 2));
    // A delete policy backs off its failed deletes the same way.
    let delete = decide_cleanup(
        DeletionPolicy::Delete,
        Some(&failed_at("delete", 0, "d1")),
        &CleanupStatus::default(),
        backoff,
        at(0),
    );
    assert_eq!(delete.cleanup, Cleanup::RetryIn(Duration::from_secs(5)));
}

#[test]
fn a_blocked_deletion_waits_until_its_timeout_from_the_deletion_timestamp() {
    let five_minutes = Duration::from_secs(300);
    assert_eq!(
        cleanup_deadline(at(-60), five_minutes, at(0)),
        CleanupDeadline::WaitUntil { at: at(240), remaining: Duration::from_secs(240) }
    );
    assert_eq!(cleanup_deadline(at(-300), five_minutes, at(0)), CleanupDeadline::GiveUp);
    assert_eq!(cleanup_deadline(at(-301), five_minutes, at(0)), CleanupDeadline::GiveUp);
    assert!(matches!(cleanup_deadline(at(0), Duration::MAX, at(0)), CleanupDeadline::WaitUntil { .. }));
}

#[test]
fn the_cleanup_backoff_doubles_up_to_its_cap() {
    let backoff = Backoff { first: Duration::from_secs(5), max: Duration::from_secs(30) };
    let waits: Vec<u64> = (1..=6).map(|n| backoff.after(n).as_secs()).collect();
    assert_eq!(waits, [5, 10, 20, 30, 30, 30]);
    assert_eq!(backoff.after(u32::MAX), Duration::from_secs(30));
}

#[test]
fn condition_times_move_only_on_flips_across_decisions() {
    let ws = workspace("start", "succeeded", Some(READY_AGENT));
    let s = spec(DesiredState::Running);
    let first = decide_with(&s, &Default::default(), Some(&ws), Some(&ProbeOutcome::Reachable));
    let again = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &first.status,
        observed: Observed::Workspace {
            workspace: Some(&ws),
            fresh: true,
            probe: Some(&Probe::just_now(ProbeOutcome::Reachable)),
        },
        chat: ObservedChat::Unknown,
        now: at(100),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    assert_eq!(first.status, again.status, "nothing changed: the status is identical, so nothing is written");
}

// ---- properties ----

fn any_agent() -> impl Strategy<Value = Option<Agent>> {
    prop_oneof![
        Just(None),
        Just(Some(READY_AGENT)),
        Just(Some(Agent { status: "connected", lifecycle: "starting", disconnected_since: None })),
        Just(Some(Agent { status: "connecting", lifecycle: "created", disconnected_since: None })),
        Just(Some(Agent { status: "timeout", lifecycle: "created", disconnected_since: None })),
        (0i64..400).prop_map(|s| Some(dead_for(s))),
    ]
}

fn any_probe() -> impl Strategy<Value = Option<ProbeOutcome>> {
    prop_oneof![
        Just(None),
        Just(Some(ProbeOutcome::Reachable)),
        Just(Some(timed_out())),
        Just(Some(refused())),
        Just(Some(ProbeOutcome::Failed { message: "x".into() })),
    ]
}

fn any_stage() -> impl Strategy<Value = Option<RecoveryStage>> {
    prop_oneof![Just(None), Just(Some(RecoveryStage::Stopping)), Just(Some(RecoveryStage::Starting))]
}

proptest! {
    #[test]
    fn never_a_build_while_one_is_active_and_never_against_the_desired_state(
        desired in prop_oneof![Just(DesiredState::Running), Just(DesiredState::Stopped)],
        transition in prop_oneof![Just("start"), Just("stop"), Just("delete")],
        job in prop_oneof![Just("pending"), Just("running"), Just("succeeded"), Just("canceling"), Just("canceled"), Just("failed")],
        agent in any_agent(),
        probe in any_probe(),
        stage in any_stage(),
        attempts in 0u32..5,
        fresh in any::<bool>(),
        exists in any::<bool>(),
        unconfirmed_stop in any::<bool>(),
        generation in 1i64..3,
    ) {
        let ws = workspace(transition, job, agent);
        let s = spec(desired);
        // Conditions written for generation 1 by an earlier pass: the ones
        // this pass does not speak about must be restamped too.
        let earlier = decide_with(&s, &Default::default(), Some(&workspace("start", "succeeded", Some(READY_AGENT))), Some(&ProbeOutcome::Reachable));
        let previous = ChatWorkspaceStatus {
            recovery: Some(RecoveryStatus { stage, attempts, window_start: Some(Time(at(-10))), generation: Some(1), ..Default::default() }),
            conditions: earlier.status.conditions.clone(),
            last_build_request: unconfirmed_stop.then(|| BuildRequestStatus {
                build_id: None,
                transition: WorkspaceTransition::Stop,
                reason: BuildReason::Recovery,
                generation: 1,
                time: Time(at(-30)),
            }),
            ..Default::default()
        };
        prop_assert!(!previous.conditions.is_empty());
        let probe = probe.map(Probe::just_now);
        let d = decide(&Inputs {
            spec: &s,
            policy: policy(),
            generation,
            previous: &previous,
            observed: Observed::Workspace { workspace: exists.then_some(&ws), fresh, probe: probe.as_ref() },
            chat: ObservedChat::Unknown,
            now: at(0),
            requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
        });
        let active = matches!(job, "pending" | "running" | "canceling");
        if let Action::Build(plan) = &d.action {
            prop_assert!(exists, "a build needs a workspace");
            prop_assert!(!active, "a build while the latest job is {job}");
            match (desired, plan.transition) {
                (DesiredState::Stopped, WorkspaceTransition::Start) => prop_assert!(false, "a start while desired is Stopped"),
                (DesiredState::Running, WorkspaceTransition::Stop) => {
                    prop_assert_eq!(plan.reason, BuildReason::Recovery, "a stop while desired is Running outside recovery");
                }
                (_, WorkspaceTransition::Delete) => prop_assert!(false, "the lifecycle never deletes"),
                _ => {}
            }
            let starts_or_resumes = stage.is_none() || unconfirmed_stop;
            if plan.reason == BuildReason::Recovery && plan.transition == WorkspaceTransition::Stop && starts_or_resumes && transition == "start" {
                prop_assert!(fresh, "a recovery stop from a cached observation");
                // A never-connected agent cannot be probed: its status is the signal.
                let never_connected = agent.is_some_and(|a| a.status == "timeout");
                prop_assert!(never_connected || matches!(probe, Some(ref p) if !p.outcome.is_reachable()), "a recovery stop without a failed probe");
                let now = d.status.recovery.as_ref().unwrap().attempts;
                prop_assert!(attempts < 3 || generation != 1 || now == attempts, "over budget");
                // A stop recorded but never confirmed, in the Stopping stage, is
                // issued again as the same attempt. In the Starting stage the
                // recovery's own start made the agent, and a disconnect of it
                // is a new recovery, counted anew.
                if stage == Some(RecoveryStage::Stopping) {
                    prop_assert_eq!(now, attempts, "resuming an unconfirmed stop is the same attempt");
                }
            }
        }
        if d.action == Action::CreateWorkspace {
            prop_assert!(!exists && desired == DesiredState::Running);
        }
        // Every condition carries the generation it was computed for.
        for c in &d.status.conditions {
            prop_assert_eq!(c.observed_generation, Some(generation), "condition {} kept an old generation", c.type_);
        }
        prop_assert_eq!(d.status.observed_generation, Some(generation));
        prop_assert!(d.requeue > Duration::ZERO);
    }
}

#[test]
fn heartbeats_of_a_connected_agent_do_not_change_the_status() {
    // Otherwise every resync of every running workspace would be a status write.
    let s = spec(DesiredState::Running);
    let earlier = workspace("start", "succeeded", Some(READY_AGENT));
    let mut later = earlier.clone();
    for agent in later.latest_build.resources.iter_mut().flat_map(|r| r.agents.iter_mut()) {
        agent.last_connected_at = Some(at(10));
    }
    let first = decide_with(&s, &Default::default(), Some(&earlier), Some(&ProbeOutcome::Reachable));
    let second = decide_with(&s, &first.status, Some(&later), Some(&ProbeOutcome::Reachable));
    assert_eq!(first.status, second.status);
    assert_eq!(first.status.agent.as_ref().unwrap().last_connected_at, None);

    // A disconnected agent's last heartbeat is worth showing.
    let dead = workspace("start", "succeeded", Some(dead_for(30)));
    let d = decide_with(&s, &Default::default(), Some(&dead), Some(&refused()));
    assert_eq!(d.status.agent.unwrap().last_connected_at, Some(Time(at(-30))));
}

#[test]
fn status_times_survive_a_round_trip_through_the_apiserver() {
    // metav1.Time keeps whole seconds: a status with finer times would never
    // equal the one read back, and every resync would write it again.
    let s = spec(DesiredState::Running);
    let mut ws = workspace("start", "succeeded", Some(READY_AGENT));
    ws.latest_build.created_at = Timestamp::from_second(NOW - 700).unwrap() + jiff::SignedDuration::from_millis(123);
    let first = decide_with(&s, &Default::default(), Some(&ws), Some(&ProbeOutcome::Reachable));
    let read_back: ChatWorkspaceStatus = serde_json::from_value(serde_json::to_value(&first.status).unwrap()).unwrap();
    assert_eq!(read_back, first.status);
    let second = decide_with(&s, &read_back, Some(&ws), Some(&ProbeOutcome::Reachable));
    assert_eq!(second.status, read_back, "nothing to write on the next pass");
}

#[test]
fn an_unconfirmed_recovery_stop_is_issued_again_as_the_same_attempt() {
    // The recovery was written down (stage, attempt, request) but its stop
    // build never confirmed: the operator stopped in between.
    let ws = workspace("start", "succeeded", Some(dead_for(120)));
    let previous = ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus {
            stage: Some(RecoveryStage::Stopping),
            attempts: 1,
            window_start: Some(Time(at(-20))),
            generation: Some(1),
            ..Default::default()
        }),
        last_build_request: Some(BuildRequestStatus {
            build_id: None,
            transition: WorkspaceTransition::Stop,
            reason: BuildReason::Recovery,
            generation: 1,
            time: Time(at(-20)),
        }),
        ..Default::default()
    };
    let d = decide_with(&spec(DesiredState::Running), &previous, Some(&ws), Some(&refused()));
    assert_eq!(d.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(d.status.recovery.as_ref().unwrap().attempts, 1, "the same attempt, not a new one");

    // Once Coder confirmed the build (its id recorded), a disconnect of the
    // agent of a later start is a new recovery.
    let mut confirmed = previous.clone();
    confirmed.last_build_request.as_mut().unwrap().build_id = Some("build-8".into());
    let d = decide_with(&spec(DesiredState::Running), &confirmed, Some(&ws), Some(&refused()));
    assert_eq!(d.status.recovery.as_ref().unwrap().attempts, 2);
}

#[test]
fn a_stop_made_by_coder_or_a_person_is_never_taken_for_an_unconfirmed_recovery_stop() {
    // The recovery's stop was decided and written down, but Coder never
    // made it (it answered 409, or the operator stopped first); then
    // Coder's autostop stopped the workspace.
    let previous = ChatWorkspaceStatus {
        latest_build: Some(chatworkspace_operator::crd::BuildStatus {
            id: "build-6".into(),
            number: 6,
            transition: WorkspaceTransition::Start,
            status: chatworkspace_operator::coder::WorkspaceStatus::Running,
            job_status: chatworkspace_operator::coder::ProvisionerJobStatus::Succeeded,
            ..Default::default()
        }),
        recovery: Some(RecoveryStatus {
            stage: Some(RecoveryStage::Stopping),
            attempts: 1,
            window_start: Some(Time(at(-20))),
            generation: Some(1),
            ..Default::default()
        }),
        last_build_request: Some(BuildRequestStatus {
            build_id: None,
            transition: WorkspaceTransition::Stop,
            reason: BuildReason::Recovery,
            generation: 1,
            time: Time(at(-20)),
        }),
        ..Default::default()
    };
    let stopped_by = |reason: &str| {
        let mut ws = workspace("stop", "succeeded", None);
        ws.latest_build.reason = Some(chatworkspace_operator::coder::WorkspaceBuildReason::from_wire(reason));
        ws.latest_build.created_at = at(-10);
        ws
    };
    for reason in ["autostop", "dormancy", "dashboard"] {
        let d = decide_with(&spec(DesiredState::Running), &previous, Some(&stopped_by(reason)), None);
        assert_eq!(d.action, Action::None, "{reason}: the outside stop is respected");
        assert!(d.status.recovery.as_ref().is_none_or(|r| r.stage.is_none()), "{reason}: the recovery is over");
    }
    // A stop made through the API after the request is the recovery's own,
    // whose answer was lost: the recovery goes on with its start.
    let d = decide_with(&spec(DesiredState::Running), &previous, Some(&stopped_by("initiator")), None);
    assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::Recovery));
}

#[test]
fn a_stop_seen_while_stopped_is_desired_is_started_when_running_is_desired_again() {
    // The operator's record of its own stop was lost (its status write
    // failed): the stop it then saw while Stopped was desired is accounted
    // as the desired state's own, so a flip to Running starts it, and is
    // not taken for a stop made in Coder.
    let stopped = workspace("stop", "succeeded", None);
    let earlier = ChatWorkspaceStatus {
        last_build_request: Some(BuildRequestStatus {
            build_id: Some("build-6".into()),
            transition: WorkspaceTransition::Start,
            reason: BuildReason::DesiredState,
            generation: 1,
            time: Time(at(-900)),
        }),
        ..Default::default()
    };
    let seen = decide_with(&spec(DesiredState::Stopped), &earlier, Some(&stopped), None);
    assert_eq!(seen.action, Action::None);
    assert_eq!(seen.status.last_build_request.as_ref().and_then(|r| r.build_id.as_deref()), Some("build-7"));
    let d = decide_with(&spec(DesiredState::Running), &seen.status, Some(&stopped), None);
    assert_eq!(d.action, build(WorkspaceTransition::Start, BuildReason::DesiredState));
}

proptest! {
    #[test]
    fn a_failed_cleanup_build_is_never_retried_before_its_backoff(
        failed_before in 0u32..12,
        seen_already in any::<bool>(),
        ago in 0i64..700,
        delete in any::<bool>(),
    ) {
        let policy = if delete { DeletionPolicy::Delete } else { DeletionPolicy::Stop };
        let transition = if delete { "delete" } else { "stop" };
        let backoff = CLEANUP_RETRY;
        let previous = CleanupStatus {
            failed_builds: failed_before + u32::from(seen_already),
            last_failed_build: seen_already.then(|| "b".to_string()),
            last_error: None,
            waiting: None,
        };
        let d = decide_cleanup(policy, Some(&failed_at(transition, ago, "b")), &previous, backoff, at(0));
        // Counted exactly once, whatever the operator remembered.
        prop_assert_eq!(d.status.failed_builds, failed_before + 1);
        prop_assert_eq!(d.event.is_some(), !seen_already);
        let wait = backoff.after(d.status.failed_builds);
        prop_assert!(wait >= backoff.first && wait <= backoff.max);
        let since = Duration::from_secs(ago as u64);
        match d.cleanup {
            Cleanup::Build(_) => prop_assert!(since >= wait, "rebuilt {since:?} after a failure, backoff {wait:?}"),
            Cleanup::RetryIn(left) => prop_assert_eq!(left, wait - since),
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

proptest! {
    #[test]
    fn never_a_recovery_build_for_an_external_agent(
        agent in any_agent(),
        probe in any_probe(),
        stage in any_stage(),
        attempts in 0u32..5,
        fresh in any::<bool>(),
        unconfirmed_stop in any::<bool>(),
    ) {
        let ws = external(workspace("start", "succeeded", agent));
        let s = spec(DesiredState::Running);
        let previous = ChatWorkspaceStatus {
            recovery: Some(RecoveryStatus { stage, attempts, window_start: Some(Time(at(-10))), generation: Some(1), ..Default::default() }),
            last_build_request: unconfirmed_stop.then(|| BuildRequestStatus {
                build_id: None,
                transition: WorkspaceTransition::Stop,
                reason: BuildReason::Recovery,
                generation: 1,
                time: Time(at(-30)),
            }),
            ..Default::default()
        };
        let probe = probe.map(Probe::just_now);
        let d = decide(&Inputs {
            spec: &s,
            policy: policy(),
            generation: 1,
            previous: &previous,
            observed: Observed::Workspace { workspace: Some(&ws), fresh, probe: probe.as_ref() },
            chat: ObservedChat::Unknown,
            now: at(0),
            requeue: Requeue::default(),
            start_request: None,
            restart_request: None,
        });
        prop_assert!(!matches!(d.action, Action::Build(_) | Action::InterruptChats(_)), "{:?} for an external agent", d.action);
        if agent.is_some_and(|a| matches!(a.status, "disconnected" | "timeout")) {
            prop_assert_ne!(condition(&d, RECOVERING).0, "True", "an offline external agent shown as recovering");
        }
    }

    #[test]
    fn a_never_connected_agent_is_rebuilt_at_most_max_attempts_times_per_window(
        max_attempts in 1u32..5,
        window_minutes in 1u64..120,
        // Seconds between two looks, and whether the recovery's start makes
        // an agent that never connects again or one that connects.
        steps in proptest::collection::vec((1i64..900, prop::bool::weighted(0.8)), 1..60),
    ) {
        let mut s = spec(DesiredState::Running);
        s.recovery.max_attempts = max_attempts;
        s.recovery.window = format!("{window_minutes}m");
        let window = window_minutes as i64 * 60;
        let mut number = 7i32;
        let numbered = |transition: &str, agent: Option<Agent>, number: i32| {
            let mut ws = workspace(transition, "succeeded", agent);
            ws.latest_build.id = format!("build-{number}");
            ws.latest_build.build_number = number;
            for a in ws.latest_build.resources.iter_mut().flat_map(|r| r.agents.iter_mut()) {
                a.id = format!("agent-{number}");
            }
            ws
        };
        let mut ws = numbered("start", Some(NEVER_CONNECTED), number);
        let mut previous = ChatWorkspaceStatus::default();
        let mut now = 0i64;
        let mut stops: Vec<i64> = Vec::new();
        for (dt, again) in steps {
            now += dt;
            let d = decide(&Inputs {
                spec: &s,
                policy: s.recovery.policy().unwrap(),
                generation: 1,
                previous: &previous,
                observed: Observed::Workspace { workspace: Some(&ws), fresh: true, probe: None },
                chat: ObservedChat::Unknown,
                now: at(now),
                requeue: Requeue::default(),
                start_request: None,
                restart_request: None,
            });
            previous = d.status;
            if let Action::Build(plan) = d.action {
                // Coder accepts the build and it finishes before the next look.
                number += 1;
                if let Some(request) = previous.last_build_request.as_mut() {
                    request.build_id = Some(format!("build-{number}"));
                }
                ws = match plan.transition {
                    WorkspaceTransition::Stop => {
                        stops.push(now);
                        numbered("stop", None, number)
                    }
                    _ => numbered("start", Some(if again { NEVER_CONNECTED } else { READY_AGENT }), number),
                };
            }
        }
        // The budget's windows open at their first attempt.
        let mut window_start = None;
        let mut in_window = 0u32;
        for stop in stops {
            if window_start.is_none_or(|start| stop - start >= window) {
                window_start = Some(stop);
                in_window = 0;
            }
            in_window += 1;
            prop_assert!(in_window <= max_attempts, "{in_window} recoveries in one {window_minutes}m window");
        }
    }
}

// ---- kstatus: Stalled and Reconciling ----

/// (Ready, Stalled, Reconciling) statuses and the one True reason.
fn kstatus_of(d: &Decision) -> (&'static str, String) {
    let is_true = |type_| conditions::is_true(&d.status.conditions, type_);
    let which: Vec<&str> = [READY, STALLED, RECONCILING].into_iter().filter(|t| is_true(t)).collect();
    assert_eq!(which.len(), 1, "exactly one of Ready, Stalled, Reconciling is True: {:?}", d.status.conditions);
    (which[0], condition(d, which[0]).1)
}

#[test]
fn the_operator_at_work_is_reconciling_and_the_desired_state_reached_is_neither() {
    let running = spec(DesiredState::Running);
    let stopped = spec(DesiredState::Stopped);
    let ready = workspace("start", "succeeded", Some(READY_AGENT));
    let reachable = Some(&ProbeOutcome::Reachable);
    let cases: Vec<(&str, Decision, (&str, &str))> = vec![
        ("creating", decide_with(&running, &Default::default(), None, None), (RECONCILING, "Creating")),
        (
            "a build under way",
            decide_with(&running, &Default::default(), Some(&workspace("start", "running", None)), None),
            (RECONCILING, "BuildInProgress"),
        ),
        (
            "starting a stopped workspace",
            decide_with(&running, &Default::default(), Some(&workspace("stop", "succeeded", None)), None),
            (RECONCILING, "Starting"),
        ),
        ("stopping", decide_with(&stopped, &Default::default(), Some(&ready), None), (RECONCILING, "Stopping")),
        (
            "an agent connecting",
            decide_with(
                &running,
                &Default::default(),
                Some(&workspace(
                    "start",
                    "succeeded",
                    Some(Agent { status: "connecting", lifecycle: "created", disconnected_since: None }),
                )),
                None,
            ),
            (RECONCILING, "AgentConnecting"),
        ),
        (
            "an agent disconnected for less than the threshold",
            decide_with(
                &running,
                &Default::default(),
                Some(&workspace("start", "succeeded", Some(dead_for(10)))),
                Some(&refused()),
            ),
            (RECONCILING, "AgentDisconnected"),
        ),
        (
            "a recovery",
            decide_with(
                &running,
                &Default::default(),
                Some(&workspace("start", "succeeded", Some(dead_for(600)))),
                Some(&refused()),
            ),
            (RECONCILING, "Recovering"),
        ),
        ("running and ready", decide_with(&running, &Default::default(), Some(&ready), reachable), (READY, "Running")),
        (
            "stopped as desired",
            decide_with(&stopped, &Default::default(), Some(&workspace("stop", "succeeded", None)), None),
            (READY, "Stopped"),
        ),
        ("never created, stopped", decide_with(&stopped, &Default::default(), None, None), (READY, "NotCreated")),
    ];
    for (what, d, (type_, reason)) in cases {
        assert_eq!(kstatus_of(&d), (type_, reason.to_string()), "{what}");
        if type_ == RECONCILING {
            // kstatus shows its message: the Ready message, which says what happens.
            assert_eq!(message(&d, RECONCILING), message(&d, READY), "{what}");
            assert_eq!(condition(&d, STALLED).0, "False", "{what}");
        }
    }
}

#[test]
fn what_waits_for_a_person_is_stalled_with_the_reason_and_what_to_do() {
    let running = spec(DesiredState::Running);
    let failed_start = ChatWorkspaceStatus {
        last_build_request: Some(BuildRequestStatus {
            build_id: Some("build-7".into()),
            transition: WorkspaceTransition::Start,
            reason: BuildReason::DesiredState,
            generation: 1,
            time: Time(at(-700)),
        }),
        ..Default::default()
    };
    let spent = ChatWorkspaceStatus {
        recovery: Some(RecoveryStatus {
            attempts: 3,
            window_start: Some(Time(at(-1800))),
            generation: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen_running = ChatWorkspaceStatus {
        latest_build: Some(chatworkspace_operator::crd::BuildStatus {
            id: "build-6".into(),
            number: 6,
            transition: WorkspaceTransition::Start,
            status: chatworkspace_operator::coder::WorkspaceStatus::Running,
            job_status: chatworkspace_operator::coder::ProvisionerJobStatus::Succeeded,
            ..Default::default()
        }),
        ..Default::default()
    };
    let stopped_by = |reason: &str| {
        let mut ws = workspace("stop", "succeeded", None);
        ws.latest_build.reason = Some(chatworkspace_operator::coder::WorkspaceBuildReason::from_wire(reason));
        ws
    };
    let mut dormant = workspace("stop", "succeeded", None);
    dormant.dormant_at = Some(at(-60));
    let mut report = spec(DesiredState::Running);
    report.recovery.never_connected = NeverConnected::Report;
    let mut disabled = spec(DesiredState::Running);
    disabled.recovery.mode = RecoveryMode::Disabled;
    let dial_timeout = {
        let ws = workspace("start", "succeeded", Some(READY_AGENT));
        let first = decide_with(&running, &Default::default(), Some(&ws), Some(&timed_out()));
        decide_with(&running, &first.status, Some(&ws), Some(&timed_out()))
    };
    let conflict = decide(&Inputs {
        spec: &running,
        policy: policy(),
        generation: 1,
        previous: &Default::default(),
        observed: Observed::Conflict { other: "team-a/first".into() },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    });
    let cases: Vec<(&str, Decision, &str, &str)> = vec![
        (
            "a failed start",
            decide_with(&running, &failed_start, Some(&workspace("start", "failed", None)), None),
            "StartFailed",
            "change the spec",
        ),
        (
            "the recovery budget spent",
            decide_with(
                &running,
                &spent,
                Some(&workspace("start", "succeeded", Some(dead_for(600)))),
                Some(&refused()),
            ),
            "RecoveryBudgetExhausted",
            "resumes at",
        ),
        (
            "an agent that never connects, reported",
            decide_with(
                &report,
                &Default::default(),
                Some(&workspace("start", "succeeded", Some(NEVER_CONNECTED))),
                None,
            ),
            "AgentNeverConnected",
            "check the template",
        ),
        (
            "a dead agent with recovery disabled",
            decide_with(
                &disabled,
                &Default::default(),
                Some(&workspace("start", "succeeded", Some(dead_for(600)))),
                Some(&refused()),
            ),
            "AgentDead",
            "must restart",
        ),
        (
            "an external agent offline",
            decide_with(
                &running,
                &Default::default(),
                Some(&external(workspace("start", "succeeded", Some(dead_for(600))))),
                Some(&refused()),
            ),
            "ExternalAgentDisconnected",
            "where it runs",
        ),
        ("a heartbeating agent that never answers", dial_timeout, "DialTimeout", "should check"),
        (
            "a startup script that failed",
            decide_with(
                &running,
                &Default::default(),
                Some(&workspace(
                    "start",
                    "succeeded",
                    Some(Agent { status: "connected", lifecycle: "start_error", disconnected_since: None }),
                )),
                Some(&ProbeOutcome::Reachable),
            ),
            "AgentStartupFailed",
            "startup script",
        ),
        (
            "a build without an agent",
            decide_with(&running, &Default::default(), Some(&workspace("start", "succeeded", None)), None),
            "NoAgent",
            "fix the template",
        ),
        ("a dormant workspace", decide_with(&running, &seen_running, Some(&dormant), None), "Dormant", "activate it"),
        (
            "a stop by Coder's autostop",
            decide_with(&running, &seen_running, Some(&stopped_by("autostop")), None),
            "StoppedByCoder",
            "start-requested-at",
        ),
        (
            "a stop by a person in Coder",
            decide_with(&running, &seen_running, Some(&stopped_by("initiator")), None),
            "StoppedOutside",
            "start-requested-at",
        ),
        ("another resource owns the workspace", conflict, "Conflict", "Delete one of them"),
    ];
    for (what, d, reason, advice) in cases {
        assert_eq!(kstatus_of(&d), (STALLED, reason.to_string()), "{what}");
        assert_eq!(d.action, Action::None, "{what}: Stalled, yet the operator acts");
        assert_eq!(condition(&d, RECONCILING).0, "False", "{what}");
        let stalled = message(&d, STALLED);
        assert!(stalled.contains(advice), "{what}: the message says what to do: {stalled}");
    }
}

#[test]
fn stalled_and_reconciling_move_their_transition_time_only_on_a_flip() {
    let running = spec(DesiredState::Running);
    let building = decide_with(&running, &Default::default(), Some(&workspace("start", "running", None)), None);
    let since = conditions::find(&building.status.conditions, RECONCILING).unwrap().last_transition_time.clone();
    let connecting = workspace(
        "start",
        "succeeded",
        Some(Agent { status: "connecting", lifecycle: "created", disconnected_since: None }),
    );
    let mut later = decide_with(&running, &building.status, Some(&connecting), None);
    assert_eq!(kstatus_of(&later).0, RECONCILING);
    assert_eq!(conditions::find(&later.status.conditions, RECONCILING).unwrap().last_transition_time, since);
    // The same status again writes nothing new.
    let again = decide_with(&running, &later.status, Some(&connecting), None);
    later.status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let mut again_conditions = again.status.conditions.clone();
    again_conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    assert_eq!(again_conditions, later.status.conditions);
}

proptest! {
    /// kstatus reads Stalled=True as Failed and Reconciling=True as
    /// InProgress: exactly one of them or Ready is True after any decision,
    /// and a Stalled workspace is one the operator does nothing more for.
    #[test]
    fn exactly_one_of_ready_stalled_and_reconciling_and_stalled_means_no_action(
        desired in prop_oneof![Just(DesiredState::Running), Just(DesiredState::Stopped)],
        transition in prop_oneof![Just("start"), Just("stop"), Just("delete")],
        job in prop_oneof![Just("pending"), Just("running"), Just("succeeded"), Just("canceled"), Just("failed")],
        agent in any_agent(),
        probe in any_probe(),
        stage in any_stage(),
        attempts in 0u32..5,
        fresh in any::<bool>(),
        exists in any::<bool>(),
        external_agent in any::<bool>(),
        seen_before in any::<bool>(),
        outside_reason in prop_oneof![Just("initiator"), Just("autostop"), Just("dormancy")],
        conflict in any::<bool>(),
    ) {
        let mut ws = workspace(transition, job, agent);
        ws.latest_build.reason = Some(chatworkspace_operator::coder::WorkspaceBuildReason::from_wire(outside_reason));
        if external_agent {
            ws = external(ws);
        }
        let s = spec(desired);
        let previous = ChatWorkspaceStatus {
            recovery: Some(RecoveryStatus { stage, attempts, window_start: Some(Time(at(-10))), generation: Some(1), ..Default::default() }),
            latest_build: seen_before.then(|| chatworkspace_operator::crd::BuildStatus {
                id: "build-6".into(),
                number: 6,
                transition: WorkspaceTransition::Start,
                status: chatworkspace_operator::coder::WorkspaceStatus::Running,
                job_status: chatworkspace_operator::coder::ProvisionerJobStatus::Succeeded,
                ..Default::default()
            }),
            ..Default::default()
        };
        let probe = probe.map(Probe::just_now);
        let observed = if conflict {
            Observed::Conflict { other: "team-a/first".into() }
        } else {
            Observed::Workspace { workspace: exists.then_some(&ws), fresh, probe: probe.as_ref() }
        };
        let d = decide(&Inputs {
            spec: &s,
            policy: policy(),
            generation: 1,
            previous: &previous,
            observed,
            chat: ObservedChat::Unknown,
            now: at(0),
            requeue: Requeue::default(),
            start_request: None,
            restart_request: None,
        });
        let is_true = |type_| conditions::is_true(&d.status.conditions, type_);
        let trues = [READY, STALLED, RECONCILING].into_iter().filter(|t| is_true(t)).count();
        prop_assert_eq!(trues, 1, "{:?}", d.status.conditions);
        if is_true(STALLED) {
            prop_assert_eq!(&d.action, &Action::None);
            prop_assert!(!message(&d, STALLED).is_empty());
        }
        if matches!(d.action, Action::Build(_) | Action::CreateWorkspace | Action::Refresh) {
            prop_assert!(is_true(RECONCILING), "building, yet not Reconciling: {:?}", d.status.conditions);
        }
    }
}

// ---- a restart a person asks for ----

fn decide_restart(previous: &ChatWorkspaceStatus, workspace: &Workspace, value: &str) -> Decision {
    let s = spec(DesiredState::Running);
    let probe = Probe::just_now(ProbeOutcome::Reachable);
    decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous,
        observed: Observed::Workspace { workspace: Some(workspace), fresh: true, probe: Some(&probe) },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: Some(value),
    })
}

/// The build the operator asked for, as Coder records it.
fn confirmed(mut status: ChatWorkspaceStatus, ws: &Workspace) -> ChatWorkspaceStatus {
    if let Some(request) = status.last_build_request.as_mut() {
        request.build_id = Some(ws.latest_build.id.clone());
    }
    status
}

fn with_build(transition: &str, job: &str, agent: Option<Agent>, number: i32) -> Workspace {
    let mut ws = workspace(transition, job, agent);
    ws.latest_build.build_number = number;
    ws.latest_build.id = format!("build-{number}");
    ws
}

#[test]
fn a_restart_asked_for_is_one_stop_and_one_start_counted_against_the_budget_and_done_once() {
    const ASKED: &str = "2026-12-04T15:00:00Z";
    let running = with_build("start", "succeeded", Some(READY_AGENT), 7);
    let ready =
        decide_with(&spec(DesiredState::Running), &Default::default(), Some(&running), Some(&ProbeOutcome::Reachable));
    assert_eq!(condition(&ready, READY).0, "True");

    let asked = decide_restart(&ready.status, &running, ASKED);
    assert_eq!(asked.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    let restart = asked.status.restart.clone().expect("status.restart");
    assert!(restart.accepted && restart.request == ASKED, "{restart:?}");
    assert_eq!(asked.status.recovery.as_ref().unwrap().attempts, 1, "counted against the recovery budget");
    assert_eq!(condition(&asked, RECOVERING), ("True".into(), "Stopping".into()));
    assert!(message(&asked, RECOVERING).starts_with("A requested restart"), "{}", message(&asked, RECOVERING));
    assert!(asked.events.iter().any(|e| e.reason == EventReason::RestartRequested && !e.warning));
    assert_eq!(kstatus_of(&asked).0, RECONCILING);

    // The stop succeeds: the start follows, the annotation unchanged.
    let stopped = with_build("stop", "succeeded", None, 8);
    let starting = decide_restart(&confirmed(asked.status, &stopped), &stopped, ASKED);
    assert_eq!(starting.action, build(WorkspaceTransition::Start, BuildReason::Recovery));
    // The start succeeds and the agent is ready: recovered, nothing more.
    let back = with_build("start", "succeeded", Some(READY_AGENT), 9);
    let recovered = decide_restart(&confirmed(starting.status, &back), &back, ASKED);
    assert_eq!(recovered.action, Action::None);
    assert_eq!(condition(&recovered, READY).0, "True");
    assert_eq!(condition(&recovered, RECOVERING), ("False".into(), "Recovered".into()));
    // The same value, again and again: nothing.
    let again = decide_restart(&recovered.status, &back, ASKED);
    assert_eq!(again.action, Action::None);
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(again.status.recovery.as_ref().unwrap().attempts, 1);
    // A new value is a new restart.
    let second = decide_restart(&recovered.status, &back, "2026-12-04T15:05:00Z");
    assert_eq!(second.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(second.status.recovery.as_ref().unwrap().attempts, 2);
}

#[test]
fn a_restart_is_refused_with_the_reason_when_the_budget_is_spent_or_the_workspace_is_not_running() {
    let running = workspace("start", "succeeded", Some(READY_AGENT));
    let ready =
        decide_with(&spec(DesiredState::Running), &Default::default(), Some(&running), Some(&ProbeOutcome::Reachable));
    let mut spent = ready.status.clone();
    spent.recovery = Some(RecoveryStatus {
        attempts: 3,
        window_start: Some(Time(at(-1800))),
        generation: Some(1),
        ..Default::default()
    });
    let refused = decide_restart(&spent, &running, "late");
    assert_eq!(refused.action, Action::None);
    let restart = refused.status.restart.clone().unwrap();
    assert!(!restart.accepted && restart.request == "late");
    assert!(
        restart.message.contains("recovery budget is spent") && restart.message.contains("reopens at"),
        "{restart:?}"
    );
    assert!(
        refused
            .events
            .iter()
            .any(|e| e.reason == EventReason::RestartRefused && e.warning && e.note == restart.message)
    );
    // A refusal changes nothing else: the workspace is still Ready.
    assert_eq!(kstatus_of(&refused), (READY, "Running".into()));
    // Refused once, for good: the same value says nothing more.
    let again = decide_restart(&refused.status, &running, "late");
    assert!(again.events.is_empty() && again.action == Action::None);

    let stopped = workspace("stop", "succeeded", None);
    let mut seen = Default::default();
    for _ in 0..2 {
        let d = decide_with(&spec(DesiredState::Stopped), &seen, Some(&stopped), None);
        seen = d.status;
    }
    let s = spec(DesiredState::Stopped);
    let not_running = decide(&Inputs {
        spec: &s,
        policy: policy(),
        generation: 1,
        previous: &seen,
        observed: Observed::Workspace { workspace: Some(&stopped), fresh: true, probe: None },
        chat: ObservedChat::Unknown,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: Some("now"),
    });
    assert_eq!(not_running.action, Action::None);
    let restart = not_running.status.restart.unwrap();
    assert!(!restart.accepted && restart.message.contains("not running"), "{restart:?}");
}

#[test]
fn an_unconfirmed_restart_stop_is_issued_again_as_the_same_attempt() {
    let running = with_build("start", "succeeded", Some(READY_AGENT), 7);
    let ready =
        decide_with(&spec(DesiredState::Running), &Default::default(), Some(&running), Some(&ProbeOutcome::Reachable));
    let asked = decide_restart(&ready.status, &running, "x");
    // The stop's answer never arrived: the workspace still runs, healthy.
    let resumed = decide_restart(&asked.status, &running, "x");
    assert_eq!(resumed.action, build(WorkspaceTransition::Stop, BuildReason::Recovery));
    assert_eq!(resumed.status.recovery.as_ref().unwrap().attempts, 1, "the same attempt");
    assert!(resumed.events.iter().all(|e| e.reason != EventReason::RestartRequested));
}
