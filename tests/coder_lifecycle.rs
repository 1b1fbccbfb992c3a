//! Coder acts on workspaces too (autostop, dormancy, a person's stop
//! from its dashboard). The operator shows who did it and does not fight
//! Coder's policies; a new value of the start-request annotation asks for
//! one start; a person's stop follows spec.outsideStops.

mod support;

use std::time::Duration;

use chatworkspace_operator::coder::{CreateWorkspaceBuildRequest, WorkspaceTransition};
use chatworkspace_operator::conditions::{self, DEGRADED, READY};
use chatworkspace_operator::crd::{ChatWorkspace, START_REQUESTED_AT};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{Env, LONG};

fn spec(outside_stops: &str) -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "template": {"name": "docker-dev"},
        "outsideStops": outside_stops,
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 2, "window": "1h"},
    })
}

async fn ready(env: &Env) -> ChatWorkspace {
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await
}

fn ready_message(cws: &ChatWorkspace) -> String {
    conditions::find(&cws.status.as_ref().unwrap().conditions, READY).unwrap().message.clone()
}

/// A person's Stop in Coder's dashboard: the API call with its reason.
async fn stop_from_dashboard(env: &Env, id: uuid::Uuid) {
    let mut request = CreateWorkspaceBuildRequest::new(WorkspaceTransition::Stop);
    request.reason = Some("dashboard".into());
    env.coder_client().create_build(&id.to_string(), &request).await.expect("a stop from the dashboard");
}

async fn request_start(env: &Env, value: &str) {
    let patch = json!({"metadata": {"annotations": {START_REQUESTED_AT: value}}});
    env.api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate");
}

/// Waits until the workspace has `count` builds and stays there.
async fn builds_settle(env: &Env, id: uuid::Uuid, count: usize) {
    let deadline = std::time::Instant::now() + LONG;
    while env.transitions(id).len() < count {
        assert!(std::time::Instant::now() < deadline, "expected {count} builds: {:?}", env.transitions(id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.transitions(id).len(), count, "no more builds: {:?}", env.transitions(id));
}

#[tokio::test]
async fn an_autostop_is_respected_until_a_start_is_asked_for() {
    let env = Env::start("autostop").await;
    env.create("chat-1", spec("Restart")).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.stop_by_coder(id, "autostop");
    let stopped = env.wait_for_condition("chat-1", READY, "False", Some("StoppedByCoder"), LONG).await;
    let build = stopped.status.as_ref().and_then(|s| s.latest_build.clone()).unwrap();
    assert_eq!(
        build.reason.as_ref().map(chatworkspace_operator::coder::WorkspaceBuildReason::as_str),
        Some("autostop"),
        "status shows who stopped it"
    );
    assert!(ready_message(&stopped).contains("autostop"), "{}", ready_message(&stopped));
    assert!(ready_message(&stopped).contains(START_REQUESTED_AT), "the message says how to start it");
    // Even with outsideStops: Restart: Coder's own policy is never fought.
    builds_settle(&env, id, 2).await;

    request_start(&env, "2026-12-01T10:00:00Z").await;
    ready(&env).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
    env.wait_for_events("chat-1", &["StartRequested"]).await;

    // The same value asks for nothing more: the next autostop holds.
    env.sim.stop_by_coder(id, "autostop");
    env.wait_for_condition("chat-1", READY, "False", Some("StoppedByCoder"), LONG).await;
    builds_settle(&env, id, 4).await;
}

#[tokio::test]
async fn a_persons_stop_is_respected_by_default_and_shows_who() {
    let env = Env::start("outside-respect").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    stop_from_dashboard(&env, id).await;
    let stopped = env.wait_for_condition("chat-1", READY, "False", Some("StoppedOutside"), LONG).await;
    let build = stopped.status.as_ref().and_then(|s| s.latest_build.clone()).unwrap();
    assert_eq!(
        build.reason.as_ref().map(chatworkspace_operator::coder::WorkspaceBuildReason::as_str),
        Some("dashboard")
    );
    assert_eq!(build.initiator.as_deref(), Some("admin"));
    assert!(ready_message(&stopped).contains("by admin"), "{}", ready_message(&stopped));
    builds_settle(&env, id, 2).await;
}

#[tokio::test]
async fn a_persons_stop_is_restarted_within_the_budget_then_the_person_wins() {
    let env = Env::start("outside-restart").await;
    env.create("chat-1", spec("Restart")).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    for restart in 1..=2 {
        stop_from_dashboard(&env, id).await;
        env.wait_for("chat-1", &format!("restarted {restart} time(s)"), LONG, |cws| {
            let status = cws.status.as_ref();
            status.and_then(|s| s.recovery.as_ref()).is_some_and(|r| r.attempts == restart)
                && status.is_some_and(|s| conditions::is_true(&s.conditions, READY))
        })
        .await;
    }
    assert_eq!(env.transitions(id), ["start", "stop", "start", "stop", "start"]);
    env.wait_for_events("chat-1", &["RestartingOutsideStop"]).await;

    stop_from_dashboard(&env, id).await;
    let spent = env.wait_for_condition("chat-1", DEGRADED, "True", Some("RecoveryBudgetExhausted"), LONG).await;
    let message = conditions::find(&spent.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("person stopping it wins"), "{message}");
    builds_settle(&env, id, 6).await;
}

#[tokio::test]
async fn a_dormant_workspace_is_reported_with_its_remedy_and_never_started() {
    let env = Env::start("dormant").await;
    env.create("chat-1", spec("Restart")).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.stop_by_coder(id, "dormancy");
    let dormant = env.wait_for_condition("chat-1", DEGRADED, "True", Some("Dormant"), LONG).await;
    let message = conditions::find(&dormant.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("/dormant"), "the remedy is named: {message}");
    // A start asked for while dormant is not tried (Coder would refuse it)…
    request_start(&env, "while-dormant").await;
    builds_settle(&env, id, 2).await;
    let refused = env.sim.requests().iter().filter(|r| r.method == "POST" && r.status == 403).count();
    assert_eq!(refused, 0, "no start sent to a dormant workspace");

    // …and is honoured once a person made it active again.
    env.sim.activate(id);
    ready(&env).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
}

fn workspace_of(cws: &ChatWorkspace) -> Option<String> {
    cws.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.clone())
}

#[tokio::test]
async fn a_workspace_deleted_in_coder_is_created_again_by_default_with_an_event() {
    let env = Env::start("deleted-recreate").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    env.build_in_coder(id, WorkspaceTransition::Delete).await;
    let again = env
        .wait_for("chat-1", "ready on a new workspace", LONG, |cws| {
            workspace_of(cws).is_some_and(|w| w != id.to_string())
                && cws.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, READY))
        })
        .await;
    assert!(again.status.as_ref().unwrap().deleted_workspace.is_none(), "replaced by the new workspace");
    let events = env.wait_for_events("chat-1", &["WorkspaceDeletedInCoder"]).await;
    let note = &events.iter().find(|(r, _)| r == "WorkspaceDeletedInCoder").unwrap().1;
    assert!(note.contains(&format!("admin/chat-1 ({id})")) && note.contains("creating it again"), "{note}");
}

#[tokio::test]
async fn a_workspace_deleted_in_coder_is_left_deleted_when_the_spec_says_leave() {
    let env = Env::start("deleted-leave").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}, "deletedInCoder": "Leave"})).await;
    ready(&env).await;
    let id = env.workspace_id("admin", "chat-1");

    env.build_in_coder(id, WorkspaceTransition::Delete).await;
    let left = env.wait_for_condition("chat-1", READY, "False", Some("DeletedInCoder"), LONG).await;
    let message = ready_message(&left);
    assert!(message.contains(&id.to_string()) && message.contains("spec.deletedInCoder to Recreate"), "{message}");
    let status = left.status.as_ref().unwrap();
    assert_eq!(status.deleted_workspace.as_ref().map(|w| w.id.clone()), Some(id.to_string()));
    assert!(conditions::is_true(&status.conditions, DEGRADED));
    let events = env.wait_for_events("chat-1", &["WorkspaceDeletedInCoder"]).await;
    assert!(events.iter().any(|(r, n)| r == "WorkspaceDeletedInCoder" && n.contains("Leave")), "{events:?}");
    // Nothing is created while it says Leave.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(env.sim.workspace_id("admin", "chat-1").is_none(), "no new workspace");
    let creates = env.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/workspaces")).count();
    assert_eq!(creates, 1, "only the first create");

    // Recreate asked for: a new workspace, from the spec.
    let patch = json!({"spec": {"deletedInCoder": "Recreate"}});
    env.api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch deletedInCoder");
    let again = ready(&env).await;
    assert!(workspace_of(&again).is_some_and(|w| w != id.to_string()), "a new workspace");
}
