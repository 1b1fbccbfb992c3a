//! The chat rules of the pure decision core: what `status.chat` and
//! `ChatContextCurrent` say, the interrupt before a recovery's stop and the
//! re-pin after the operator's own start (only once the agent is ready).

use chatworkspace_operator::coder::{Chat, ProbeOutcome, Workspace, WorkspaceTransition};
use chatworkspace_operator::conditions::{self, CHAT_CONTEXT_CURRENT};
use chatworkspace_operator::crd::{
    BuildRequestStatus, ChatSpec, ChatWorkspaceSpec, ChatWorkspaceStatus, ContextPolicy, RecoveryStage, TemplateRef,
};
use chatworkspace_operator::decision::{
    Action, BuildPlan, BuildReason, ChatPlan, Decision, Inputs, Observed, ObservedChat, Probe, Requeue, decide,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;

fn at(offset_seconds: i64) -> Timestamp {
    Timestamp::from_second(NOW + offset_seconds).unwrap()
}

fn spec(chat: ChatSpec) -> ChatWorkspaceSpec {
    serde_json::from_value::<ChatWorkspaceSpec>(json!({"template": {"name": "docker-dev"}}))
        .map(|spec| ChatWorkspaceSpec {
            chat,
            template: TemplateRef { name: Some("docker-dev".into()), ..spec.template },
            ..spec
        })
        .unwrap()
}

/// The latest build (`build-7`) of `ws-1`, a succeeded start whose agent
/// `agent-1` is `status`/`lifecycle`, disconnected for 100 s when not connected.
fn workspace(status: &str, lifecycle: &str) -> Workspace {
    let disconnected = (status == "disconnected").then(|| at(-100).to_string());
    serde_json::from_value(json!({
        "id": "ws-1", "name": "fix-login-bug", "owner_id": "user-1", "owner_name": "alice",
        "template_id": "tpl-1", "template_name": "docker-dev", "template_active_version_id": "v1",
        "latest_build": {
            "id": "build-7", "build_number": 7, "transition": "start", "template_version_id": "v1",
            "created_at": at(-700).to_string(), "updated_at": at(-650).to_string(),
            "job": {"id": "job-7", "status": "succeeded", "created_at": at(-700).to_string()},
            "resources": [{"id": "res-1", "name": "dev", "type": "docker_container", "agents": [{
                "id": "agent-1", "name": "main", "status": status, "lifecycle_state": lifecycle,
                "created_at": at(-600).to_string(), "first_connected_at": at(-590).to_string(),
                "last_connected_at": at(-101).to_string(), "disconnected_at": disconnected,
            }]}],
        },
    }))
    .unwrap()
}

fn chat_json(id: &str, status: &str, agent: &str, dirty: bool) -> Value {
    json!({
        "id": id, "title": id, "status": status, "workspace_id": "ws-1", "agent_id": agent,
        "context": {"dirty": dirty, "dirty_since": dirty.then(|| at(-30).to_string()),
                    "resources": [{"source": "AGENTS.md", "kind": "instruction_file", "status": "ok"}]},
        "children": [],
    })
}

/// A root chat `chat-1` with one sub-agent chat `sub-1`.
fn chat(status: &str, child_status: &str, agent: &str, dirty: bool) -> Chat {
    let mut root = chat_json("chat-1", status, agent, dirty);
    root["children"] = json!([chat_json("sub-1", child_status, agent, false)]);
    serde_json::from_value(root).unwrap()
}

fn ours(build_id: &str) -> ChatWorkspaceStatus {
    ChatWorkspaceStatus {
        last_build_request: Some(BuildRequestStatus {
            build_id: Some(build_id.into()),
            transition: WorkspaceTransition::Start,
            reason: BuildReason::Recovery,
            generation: 1,
            time: Time(at(-700)),
        }),
        ..Default::default()
    }
}

fn decide_on(
    spec: &ChatWorkspaceSpec,
    previous: &ChatWorkspaceStatus,
    workspace: &Workspace,
    probe: ProbeOutcome,
    chat: ObservedChat,
) -> Decision {
    let probe = Probe { failures: u32::from(!probe.is_reachable()), outcome: probe, fresh: true };
    decide(&Inputs {
        spec,
        policy: spec.recovery.policy().unwrap(),
        generation: 1,
        previous,
        observed: Observed::Workspace { workspace: Some(workspace), fresh: true, probe: Some(&probe) },
        chat,
        now: at(0),
        requeue: Requeue::default(),
        start_request: None,
        restart_request: None,
    })
}

fn context_current(decision: &Decision) -> (String, String) {
    let c = conditions::find(&decision.status.conditions, CHAT_CONTEXT_CURRENT).expect("ChatContextCurrent");
    (c.status.clone(), c.reason.clone())
}

fn recovery_stop() -> Action {
    Action::Build(BuildPlan {
        transition: WorkspaceTransition::Stop,
        template_version_id: None,
        reason: BuildReason::Recovery,
    })
}

#[test]
fn a_bound_chat_and_its_sub_agents_are_shown_with_their_context() {
    let ws = workspace("connected", "ready");
    let chat = chat("waiting", "running", "agent-1", false);
    let d = decide_on(
        &spec(ChatSpec::default()),
        &ours("build-7"),
        &ws,
        ProbeOutcome::Reachable,
        ObservedChat::Bound { chat: &chat, fresh: false },
    );
    let shown = d.status.chat.as_ref().unwrap();
    assert_eq!((shown.id.as_str(), shown.status.as_str(), shown.agent_stale), ("chat-1", "waiting", false));
    assert_eq!(shown.children.len(), 1);
    assert_eq!((shown.children[0].id.as_str(), shown.children[0].status.as_str()), ("sub-1", "running"));
    let context = shown.context.as_ref().unwrap();
    assert!(context.pinned && context.dirty_since.is_none());
    assert_eq!(context.resources, 1);
    assert_eq!(context_current(&d), ("True".into(), "Current".into()));
    assert_eq!(d.action, Action::None, "nothing to re-pin");
}

#[test]
fn unknown_status_values_are_kept() {
    let ws = workspace("connected", "ready");
    let chat = chat("pondering", "waiting", "agent-1", false);
    let d = decide_on(
        &spec(ChatSpec::default()),
        &Default::default(),
        &ws,
        ProbeOutcome::Reachable,
        ObservedChat::Bound { chat: &chat, fresh: false },
    );
    assert_eq!(d.status.chat.unwrap().status, "pondering");
}

#[test]
fn the_condition_says_why_the_context_is_not_current() {
    let ws = workspace("connected", "ready");
    let spec = spec(ChatSpec::default());
    let reason = |chat: ObservedChat| {
        context_current(&decide_on(&spec, &Default::default(), &ws, ProbeOutcome::Reachable, chat))
    };
    assert_eq!(reason(ObservedChat::None), ("False".into(), "NoChat".into()));
    let stale = chat("waiting", "waiting", "agent-0", false);
    assert_eq!(reason(ObservedChat::Bound { chat: &stale, fresh: false }), ("False".into(), "AgentStale".into()));
    let dirty = chat("waiting", "waiting", "agent-1", true);
    assert_eq!(reason(ObservedChat::Bound { chat: &dirty, fresh: false }), ("False".into(), "ContextDirty".into()));
    let mut unpinned = chat("waiting", "waiting", "agent-1", false);
    unpinned.context = None;
    assert_eq!(reason(ObservedChat::Bound { chat: &unpinned, fresh: false }), ("False".into(), "NotPinned".into()));
    let mut sub_stale = chat("waiting", "waiting", "agent-1", false);
    sub_stale.children[0].agent_id = Some("agent-0".into());
    assert_eq!(reason(ObservedChat::Bound { chat: &sub_stale, fresh: false }), ("False".into(), "AgentStale".into()));
    let stopped: Workspace = {
        let mut ws = ws.clone();
        ws.latest_build.transition = WorkspaceTransition::Stop;
        ws
    };
    let current = chat("waiting", "waiting", "agent-1", false);
    let d = decide_on(
        &spec,
        &Default::default(),
        &stopped,
        ProbeOutcome::Reachable,
        ObservedChat::Bound { chat: &current, fresh: false },
    );
    assert_eq!(context_current(&d), ("False".into(), "NoChatAgent".into()));
    assert!(d.status.chat.unwrap().agent_stale, "no agent runs, so the bound one is stale");
}

#[test]
fn a_turn_running_on_the_dead_agent_is_interrupted_before_the_recovery_stop() {
    let ws = workspace("disconnected", "ready");
    let spec = spec(ChatSpec::default());
    let running = chat("running", "running", "agent-1", false);
    let d = decide_on(
        &spec,
        &Default::default(),
        &ws,
        ProbeOutcome::TimedOut,
        ObservedChat::Bound { chat: &running, fresh: true },
    );
    assert_eq!(
        d.action,
        Action::InterruptChats(ChatPlan {
            chat_ids: vec!["chat-1".into(), "sub-1".into()],
            agent_id: "agent-1".into(),
            agent_name: "main".into()
        })
    );
    assert!(d.status.recovery.as_ref().is_none_or(|r| r.stage.is_none() && r.attempts == 0), "no recovery counted yet");

    // Once the turns ended, the stop follows.
    let interrupted = chat("interrupting", "waiting", "agent-1", false);
    let d = decide_on(
        &spec,
        &Default::default(),
        &ws,
        ProbeOutcome::TimedOut,
        ObservedChat::Bound { chat: &interrupted, fresh: true },
    );
    assert_eq!(d.action, recovery_stop());
    assert_eq!(d.status.recovery.unwrap().stage, Some(RecoveryStage::Stopping));
}

#[test]
fn the_chat_is_read_fresh_before_a_recovery_stop() {
    let ws = workspace("disconnected", "ready");
    let waiting = chat("waiting", "waiting", "agent-1", false);
    let d = decide_on(
        &spec(ChatSpec::default()),
        &Default::default(),
        &ws,
        ProbeOutcome::TimedOut,
        ObservedChat::Bound { chat: &waiting, fresh: false },
    );
    assert_eq!(d.action, Action::Refresh, "the index's copy may miss a turn that just started");
}

#[test]
fn without_the_policy_or_a_turn_on_the_dead_agent_the_stop_comes_at_once() {
    let ws = workspace("disconnected", "ready");
    let running = chat("running", "running", "agent-1", false);
    let off = spec(ChatSpec { interrupt_on_recovery: false, ..ChatSpec::default() });
    let d = decide_on(
        &off,
        &Default::default(),
        &ws,
        ProbeOutcome::TimedOut,
        ObservedChat::Bound { chat: &running, fresh: false },
    );
    assert_eq!(d.action, recovery_stop());

    let elsewhere = chat("running", "waiting", "agent-0", false);
    let d = decide_on(
        &spec(ChatSpec::default()),
        &Default::default(),
        &ws,
        ProbeOutcome::TimedOut,
        ObservedChat::Bound { chat: &elsewhere, fresh: true },
    );
    assert_eq!(d.action, recovery_stop(), "a turn on another agent does not race this stop");
}

#[test]
fn after_its_own_start_the_operator_re_pins_once_the_agent_is_ready_and_only_once() {
    let spec = spec(ChatSpec::default());
    let stale = chat("waiting", "waiting", "agent-0", false);
    let bound = ObservedChat::Bound { chat: &stale, fresh: false };

    // Not while the new agent starts, nor before its probe passed.
    let starting = workspace("connected", "starting");
    assert_eq!(decide_on(&spec, &ours("build-7"), &starting, ProbeOutcome::Reachable, bound).action, Action::None);
    let ready = workspace("connected", "ready");
    assert_eq!(decide_on(&spec, &ours("build-7"), &ready, ProbeOutcome::TimedOut, bound).action, Action::None);

    let d = decide_on(&spec, &ours("build-7"), &ready, ProbeOutcome::Reachable, bound);
    assert_eq!(
        d.action,
        Action::RefreshChatContext(ChatPlan {
            chat_ids: vec!["chat-1".into(), "sub-1".into()],
            agent_id: "agent-1".into(),
            agent_name: "main".into()
        })
    );
    assert_eq!(d.status.chat.as_ref().unwrap().refreshed_for_build.as_deref(), Some("build-7"));
    let again = decide_on(&spec, &d.status, &ready, ProbeOutcome::Reachable, bound);
    assert_eq!(again.action, Action::None, "once per build, even if the re-pin did not take");
}

#[test]
fn no_re_pin_after_someone_else_s_start_or_with_contextpolicy_leave() {
    let ready = workspace("connected", "ready");
    let stale = chat("waiting", "waiting", "agent-0", false);
    let bound = ObservedChat::Bound { chat: &stale, fresh: false };
    let d = decide_on(&spec(ChatSpec::default()), &ours("build-6"), &ready, ProbeOutcome::Reachable, bound);
    assert_eq!(d.action, Action::None);
    assert_eq!(context_current(&d), ("False".into(), "AgentStale".into()));
    let leave = spec(ChatSpec { context_policy: ContextPolicy::Leave, ..ChatSpec::default() });
    assert_eq!(decide_on(&leave, &ours("build-7"), &ready, ProbeOutcome::Reachable, bound).action, Action::None);

    // A dirty context on the current agent is re-pinned too.
    let dirty = chat("waiting", "waiting", "agent-1", true);
    let d = decide_on(
        &spec(ChatSpec::default()),
        &ours("build-7"),
        &ready,
        ProbeOutcome::Reachable,
        ObservedChat::Bound { chat: &dirty, fresh: false },
    );
    assert_eq!(
        d.action,
        Action::RefreshChatContext(ChatPlan {
            chat_ids: vec!["chat-1".into()],
            agent_id: "agent-1".into(),
            agent_name: "main".into()
        })
    );
}

#[test]
fn the_turns_on_a_dead_agent_are_interrupted_once_then_the_stop_comes_anyway() {
    let ws = workspace("disconnected", "ready");
    let spec = spec(ChatSpec::default());
    let running = chat("running", "waiting", "agent-1", false);
    let bound = ObservedChat::Bound { chat: &running, fresh: true };
    let first = decide_on(&spec, &Default::default(), &ws, ProbeOutcome::TimedOut, bound);
    assert!(matches!(first.action, Action::InterruptChats(_)));
    assert_eq!(first.status.chat.as_ref().unwrap().interrupted_for_agent.as_deref(), Some("agent-1"));
    // The interrupt failed; the chat still runs: the stop is not held up.
    let second = decide_on(&spec, &first.status, &ws, ProbeOutcome::TimedOut, bound);
    assert_eq!(second.action, recovery_stop());
}
