//! Create, start and stop with chatd's rules, against the real
//! kube-apiserver and the Coder simulator; builds are counted in the
//! simulator's request log.

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::{self, DEGRADED, READY};
use chatworkspace_operator::crd::Phase;
use coder_sim::{Fault, FaultKind, SimConfig};
use serde_json::json;
use support::{Env, LONG};

fn docker_dev() -> serde_json::Value {
    json!({"desiredState": "Running", "template": {"name": "docker-dev"}})
}

fn phase(env_cws: &chatworkspace_operator::crd::ChatWorkspace) -> Option<Phase> {
    env_cws.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn create_stop_and_start_again() {
    let env = Env::start("lifecycle").await;
    env.create("chat-1", docker_dev()).await;
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    assert_eq!(phase(&ready), Some(Phase::Running));
    let status = ready.status.unwrap();
    let workspace = status.workspace.expect("status.workspace");
    assert_eq!((workspace.name.as_str(), workspace.owner.as_str()), ("chat-1", "admin"));
    assert_eq!(status.agent.expect("status.agent").status, chatworkspace_operator::coder::AgentStatus::Connected);
    let id = env.workspace_id("admin", "chat-1");
    assert_eq!(env.transitions(id), ["start"], "creating starts the workspace once");

    env.set_desired_state("chat-1", "Stopped").await;
    let stopped = env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    assert_eq!(phase(&stopped), Some(Phase::Stopped));
    assert_eq!(env.transitions(id), ["start", "stop"], "exactly one stop build");

    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
    assert_eq!(env.stacked_builds(), 0, "no build was ever requested while another was active");

    env.wait_for_events("chat-1", &["WorkspaceCreated", "BuildRequested", "Running", "Stopped"]).await;
}

#[tokio::test]
async fn a_flip_during_an_active_build_yields_exactly_one_follow_up_build() {
    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(2);
    let env = Env::start_with("flip", config).await;
    env.create("chat-1", docker_dev()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for("chat-1", "stopping", LONG, |c| {
        c.status
            .as_ref()
            .and_then(|s| s.latest_build.as_ref())
            .is_some_and(|b| b.transition == chatworkspace_operator::coder::WorkspaceTransition::Stop)
    })
    .await;
    // The stop is still running: ask for Running again.
    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "one follow-up start after the stop ended");
    assert_eq!(env.stacked_builds(), 0);
}

#[tokio::test]
async fn rapid_patches_converge_on_the_last_value_without_concurrent_builds() {
    let env = Env::start("rapid").await;
    env.create("chat-1", docker_dev()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    for i in 0..10 {
        let state = if i % 2 == 0 { "Stopped" } else { "Running" };
        env.set_desired_state("chat-1", state).await;
        tokio::time::sleep(Duration::from_millis(90)).await;
    }
    // The last patch asked for Running.
    let done = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    assert_eq!(done.spec.desired_state, chatworkspace_operator::crd::DesiredState::Running);
    // Settle, and make sure nothing else is issued afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let transitions = env.transitions(id);
    assert_eq!(transitions.last().map(String::as_str), Some("start"), "{transitions:?}");
    assert_eq!(env.stacked_builds(), 0, "a build was requested while another was active: {transitions:?}");
    // Each build waited for the previous one, so builds alternate.
    for pair in transitions.windows(2) {
        assert_ne!(pair[0], pair[1], "two builds of one kind in a row: {transitions:?}");
    }
}

#[tokio::test]
async fn a_failed_stop_is_re_attempted_and_never_reported_as_stopped() {
    let env = Env::start("failstop").await;
    env.create("chat-1", docker_dev()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.fail_next_build(Some(id), Some("stop"));
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "stop"], "the failed stop was issued again");
    let statuses: Vec<_> = env.sim.builds(id).into_iter().map(|b| b.transition).collect();
    assert_eq!(statuses.len(), 3);
    env.wait_for_events("chat-1", &["StopFailed"]).await;
}

#[tokio::test]
async fn a_failed_start_is_reported_with_the_job_error_and_not_retried() {
    let env = Env::start("failstart").await;
    env.create("chat-1", docker_dev()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;

    env.sim.fail_next_build(Some(id), Some("start"));
    env.set_desired_state("chat-1", "Running").await;
    let failed = env.wait_for_condition("chat-1", DEGRADED, "True", Some("StartFailed"), LONG).await;
    let message = &conditions::find(&failed.status.as_ref().unwrap().conditions, READY).unwrap().message;
    assert!(message.contains("failed"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "no automatic retry of a failed start");

    // A spec change (Stopped, then Running) is the way to try again.
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
}

#[tokio::test]
async fn an_existing_workspace_is_adopted_not_duplicated() {
    let env = Env::start("adopt").await;
    let id = env.sim.create_workspace("admin", "existing", "docker-dev");
    env.create(
        "chat-1",
        json!({"desiredState": "Running", "template": {"name": "docker-dev"}, "workspaceName": "existing", "adopt": true}),
    )
    .await;
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let status = ready.status.unwrap();
    assert_eq!(status.workspace.unwrap().id, id.to_string());
    let ownership = status.ownership.expect("status.ownership");
    assert_eq!(ownership.workspace_id, id.to_string());
    assert_eq!(ownership.origin, chatworkspace_operator::crd::WorkspaceOrigin::Adopted, "recorded as adopted");
    let creates = env.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/workspaces")).count();
    assert_eq!(creates, 0, "no create request for an existing workspace");
    assert_eq!(env.transitions(id), ["start"], "only the start its creation made");
}

#[tokio::test]
async fn two_resources_on_one_workspace_the_second_is_degraded_and_builds_nothing() {
    let env = Env::start("conflict").await;
    env.create("first", json!({"template": {"name": "docker-dev"}, "workspaceName": "shared"})).await;
    env.wait_for_condition("first", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "shared");

    env.create(
        "second",
        json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}, "workspaceName": "shared"}),
    )
    .await;
    let second = env.wait_for_condition("second", DEGRADED, "True", Some("Conflict"), LONG).await;
    let message = conditions::find(&second.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("first"), "the message names the other resource: {message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.transitions(id), ["start"], "the second resource did not stop the workspace");

    // Deleting the loser leaves the workspace alone.
    env.delete("second").await;
    env.wait_gone("second", LONG).await;
    assert_eq!(env.transitions(id), ["start"]);
}

#[tokio::test]
async fn deletion_policies() {
    let env = Env::start("deletion").await;
    for (name, policy) in [("stop-me", "Stop"), ("delete-me", "Delete"), ("orphan-me", "Orphan")] {
        env.create(name, json!({"template": {"name": "docker-dev"}, "deletionPolicy": policy})).await;
    }
    for name in ["stop-me", "delete-me", "orphan-me"] {
        env.wait_for_condition(name, READY, "True", Some("Running"), LONG).await;
    }
    let stop_id = env.workspace_id("admin", "stop-me");
    let delete_id = env.workspace_id("admin", "delete-me");
    let orphan_id = env.workspace_id("admin", "orphan-me");
    for name in ["stop-me", "delete-me", "orphan-me"] {
        env.delete(name).await;
    }
    for name in ["stop-me", "delete-me", "orphan-me"] {
        env.wait_gone(name, LONG).await;
    }
    assert_eq!(env.transitions(stop_id), ["start", "stop"]);
    assert_eq!(env.transitions(delete_id), ["start", "delete"]);
    assert!(env.sim.workspace_id("admin", "delete-me").is_none(), "the workspace was deleted in Coder");
    assert_eq!(env.transitions(orphan_id), ["start"], "an orphaned workspace is left running");
}

#[tokio::test]
async fn a_bad_token_is_reported_and_retried_slowly() {
    let env = Env::start("badtoken").await;
    // The operator keeps sending the token it was given: the secret to protect.
    let token = env.sim.token();
    env.sim.set_token("rotated-elsewhere");
    env.create("chat-1", docker_dev()).await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("Unauthorized"), LONG).await;
    let status = serde_json::to_string(&degraded.status).unwrap();
    assert!(!status.contains(&token), "the token never appears in status");
    let events = env.wait_for_events("chat-1", &["Unauthorized"]).await;
    assert!(events.iter().all(|(_, note)| !note.contains(&token)), "the token never appears in events");
    env.sim.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = env.sim.requests().len();
    assert!(requests <= 2, "no request storm on a bad token: {requests} requests in 5s");
}

#[tokio::test]
async fn an_unknown_template_is_named_in_the_condition() {
    let env = Env::start("notemplate").await;
    env.create("chat-1", json!({"template": {"name": "no-such-template"}})).await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("TemplateNotFound"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("no-such-template"), "{message}");
    assert_eq!(env.sim.requests().iter().filter(|r| r.method == "POST").count(), 0);
}

#[tokio::test]
async fn coder_5xx_then_recovery_converges() {
    let env = Env::start("fivexx").await;
    env.sim.inject_fault(Fault {
        method: None,
        path_prefix: "/api/v2/".into(),
        kind: FaultKind::Status(503),
        times: None,
    });
    env.create("chat-1", docker_dev()).await;
    env.wait_for_condition("chat-1", DEGRADED, "True", Some("CoderUnavailable"), LONG).await;
    env.sim.clear_faults();
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");
    assert_eq!(env.transitions(id), ["start"]);
}

/// A status holding values this version does not know, as a newer coderd
/// (through a newer operator) would leave it: the apiserver stores them, the
/// operator still reads the object and converges it. A build request naming
/// a reason no version ever wrote is refused by the schema.
#[tokio::test]
async fn a_status_with_values_a_newer_coderd_added_is_still_read_and_converged() {
    use chatworkspace_operator::coder::{AgentStatus, ProvisionerJobStatus, WorkspaceBuildReason};
    use kube::api::{Patch, PatchParams};

    let mut env = Env::without_operator("newer-coderd", SimConfig::fast()).await;
    env.create("chat-1", docker_dev()).await;
    let newer = json!({"status": {
        "observedGeneration": 1,
        "latestBuild": {"id": "b0", "number": 1, "transition": "hibernate", "status": "hibernating",
                        "jobStatus": "suspended", "reason": "task_snooze"},
        "agent": {"id": "a0", "name": "main", "status": "sleeping", "lifecycleState": "hibernated"},
    }});
    let stored = env
        .api
        .patch_status("chat-1", &PatchParams::default(), &Patch::Merge(&newer))
        .await
        .expect("stored, and read back by this version");
    let status = stored.status.expect("status");
    let build = status.latest_build.expect("latestBuild");
    assert_eq!(build.job_status, ProvisionerJobStatus::Unknown);
    assert_eq!(build.reason, Some(WorkspaceBuildReason::Other("task_snooze".into())));
    assert_eq!(status.agent.expect("agent").status, AgentStatus::Unknown);

    let whim = json!({"status": {"lastBuildRequest": {
        "transition": "start", "reason": "Whim", "generation": 1, "time": "2026-01-01T00:00:00Z"}}});
    let refused = env.api.patch_status("chat-1", &PatchParams::default(), &Patch::Merge(&whim)).await;
    assert!(matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422), "{refused:?}");

    env.start_operator();
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let build = ready.status.and_then(|s| s.latest_build).expect("latestBuild");
    assert_eq!(build.job_status, ProvisionerJobStatus::Succeeded, "the operator wrote what Coder says now");
}
