//! Agent connectivity, conditions and automatic stop-then-start
//! recovery, against the real kube-apiserver and the Coder simulator, with
//! timings shortened through the spec. Builds are counted in the
//! simulator's log.

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::{self, AGENT_CONNECTED, AGENT_REACHABLE, DEGRADED, READY, RECOVERING};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{Fault, FaultKind};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{Env, LONG};

const THRESHOLD: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A workspace whose recovery acts within seconds: the simulator marks a
/// silent agent disconnected after 1 s, the operator waits 2 s more.
fn fast_recovery(max_attempts: u32) -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "template": {"name": "docker-dev"},
        "recovery": {
            "mode": "Automatic",
            "disconnectedThreshold": "2s",
            "probeTimeout": "1s",
            "maxAttempts": max_attempts,
            "window": "1h",
        },
    })
}

async fn ready(env: &Env, name: &str) -> ChatWorkspace {
    env.wait_for_condition(name, READY, "True", Some("Running"), LONG).await
}

fn agent_id(cws: &ChatWorkspace) -> String {
    cws.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()).expect("status.agent")
}

#[tokio::test]
async fn a_killed_agent_is_recovered_with_exactly_one_stop_and_one_start() {
    let env = Env::start("recover").await;
    env.create("chat-1", fast_recovery(3)).await;
    let before = ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    let killed_at = jiff::Timestamp::now();
    env.sim.kill_agent(id);
    env.wait_for_condition("chat-1", RECOVERING, "True", None, LONG).await;
    let after = env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert!(conditions::is_true(&after.status.as_ref().unwrap().conditions, READY));
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "exactly one stop and one start");
    assert_ne!(agent_id(&after), agent_id(&before), "the rebuild made a new agent");
    assert_eq!(env.stacked_builds(), 0);

    let stop = &env.sim.builds(id)[1];
    let reaction = stop.created_at.duration_since(killed_at);
    println!(
        "agent death to recovery stop build: {:.2}s (threshold {:?} + probe timeout {:?})",
        reaction.as_secs_f64(),
        THRESHOLD,
        PROBE_TIMEOUT
    );
    // coderd dates the disconnect from the last heartbeat, up to one
    // heartbeat interval before the kill.
    let heartbeat = coder_sim::SimConfig::fast().timings.heartbeat_interval;
    assert!(
        reaction.as_secs_f64() >= (THRESHOLD - heartbeat).as_secs_f64(),
        "recovery started before the threshold: {reaction:?}"
    );
    assert!(
        reaction.as_secs_f64() <= (THRESHOLD + PROBE_TIMEOUT + Duration::from_secs(3)).as_secs_f64(),
        "recovery started late: {reaction:?}"
    );

    env.wait_for_events("chat-1", &["RecoveryStarted", "RecoveryStarting", "Recovered"]).await;
}

#[tokio::test]
async fn a_heartbeat_gap_shorter_than_the_threshold_builds_nothing() {
    let env = Env::start("blip").await;
    let mut spec = fast_recovery(3);
    spec["recovery"]["disconnectedThreshold"] = json!("4s");
    env.create("chat-1", spec).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.kill_agent(id);
    // The operator sees the agent disconnected (coderd's 1 s inactive timeout)...
    env.wait_for_condition("chat-1", AGENT_CONNECTED, "False", Some("Disconnected"), LONG).await;
    // ...and it respawns before the threshold.
    env.sim.revive_agent(id);
    ready(&env, "chat-1").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.transitions(id), ["start"], "a respawn blip must not trigger a stop/start");
}

#[tokio::test]
async fn a_disconnected_agent_that_is_back_on_the_fresh_read_builds_nothing() {
    // The index says disconnected past the threshold and the probes fail,
    // but the fresh read right before acting finds the agent back.
    let env = Env::start("fresh").await;
    env.create("chat-1", fast_recovery(3)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    // Probes hang (they time out: a failed probe) and the agent dies.
    env.sim.partition_probe(id, true);
    env.sim.kill_agent(id);
    env.wait_for_condition("chat-1", AGENT_CONNECTED, "False", Some("Disconnected"), LONG).await;
    env.wait_for_condition("chat-1", AGENT_REACHABLE, "False", None, LONG).await;
    // Freeze the index on that view: its lists hang from now on (the reads
    // of one workspace do not).
    env.sim.inject_fault(Fault::new("/api/v2/workspaces?", FaultKind::Hang).method("GET"));
    env.sim.clear_requests();
    env.sim.revive_agent(id);
    // Past the threshold: the reconcile reads the workspace fresh, and finds
    // the agent connected again.
    let deadline = std::time::Instant::now() + LONG;
    let fresh_read = format!("/api/v2/workspaces/{id}");
    while !env.sim.requests().iter().any(|r| r.path == fresh_read) {
        assert!(std::time::Instant::now() < deadline, "the reconcile never read the workspace fresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(THRESHOLD).await;
    assert_eq!(env.transitions(id), ["start"], "no recovery for an agent back on the fresh read");

    env.sim.clear_faults();
    env.sim.partition_probe(id, false);
    ready(&env, "chat-1").await;
    assert_eq!(env.transitions(id), ["start"]);
}

#[tokio::test]
async fn a_probe_that_hangs_while_the_agent_is_connected_is_retried_once_then_degraded() {
    let env = Env::start("dial").await;
    env.create("chat-1", fast_recovery(3)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");
    env.sim.clear_requests();

    env.sim.partition_probe(id, true);
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("DialTimeout"), LONG).await;
    let status = degraded.status.unwrap();
    assert!(conditions::is_true(&status.conditions, AGENT_CONNECTED), "the agent still heartbeats");
    let probes = env.sim.requests().iter().filter(|r| r.path.ends_with("/listening-ports")).count();
    assert!(probes >= 2, "the probe was retried once before the verdict ({probes} probes)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.transitions(id), ["start"], "a heartbeating agent is never rebuilt");

    env.sim.partition_probe(id, false);
    ready(&env, "chat-1").await;
    let healed = env.get("chat-1").await;
    assert!(!conditions::is_true(&healed.status.unwrap().conditions, DEGRADED));
}

#[tokio::test]
async fn an_agent_that_never_connects_is_recovered_with_one_stop_and_one_start() {
    let env = Env::start("never").await;
    // Only the first start's agent never connects (the simulator's
    // connection timeout is 3 s); the recovery's start makes a good one.
    env.sim.never_connect_next_start(None);
    env.create("chat-1", fast_recovery(3)).await;
    let recovering = env.wait_for_condition("chat-1", RECOVERING, "True", None, LONG).await;
    let message = conditions::find(&recovering.status.unwrap().conditions, RECOVERING).unwrap().message.clone();
    assert!(message.contains("never connected within its connection timeout"), "says why: {message}");
    let after = env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    let status = after.status.unwrap();
    assert!(conditions::is_true(&status.conditions, READY));
    let id = env.workspace_id("admin", "chat-1");
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "exactly one stop and one start");
    assert_eq!(status.recovery.unwrap().attempts, 1);
    assert_eq!(env.stacked_builds(), 0);
    env.wait_for_events("chat-1", &["RecoveryStarted", "RecoveryStarting", "Recovered"]).await;
}

#[tokio::test]
async fn an_agent_that_never_connects_after_its_recoveries_is_degraded_once_the_budget_is_spent() {
    let env = Env::start("neveragain").await;
    // The first start and both recoveries' starts: none of their agents
    // ever connects.
    for _ in 0..3 {
        env.sim.never_connect_next_start(None);
    }
    env.create("chat-1", fast_recovery(2)).await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("AgentNeverConnected"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("after 2 automatic recoveries") && message.contains("template"), "{message}");
    let id = env.workspace_id("admin", "chat-1");
    let expected = ["start", "stop", "start", "stop", "start"];
    assert_eq!(env.transitions(id), expected, "two recoveries, the budget, then none");
    // Longer than the simulator's connection timeout: no further attempt.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.transitions(id), expected, "no loop past the budget");
    env.wait_for_events("chat-1", &["RecoveryFailed"]).await;
}

#[tokio::test]
async fn with_never_connected_report_an_agent_that_never_connects_is_degraded_not_rebuilt() {
    let env = Env::start("never-report").await;
    env.sim.never_connect_next_start(None);
    let mut spec = fast_recovery(3);
    spec["recovery"]["neverConnected"] = json!("Report");
    env.create("chat-1", spec).await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("AgentNeverConnected"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("template"), "tells a person where to look: {message}");
    let id = env.workspace_id("admin", "chat-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.transitions(id), ["start"]);
}

#[tokio::test]
async fn a_turn_running_while_the_agent_never_connected_is_interrupted_before_the_recovery_stop() {
    let env = Env::start("never-chat").await;
    env.sim.never_connect_next_start(None);
    // Reported first, so that the chat is known before recovery is allowed.
    let mut spec = fast_recovery(3);
    spec["recovery"]["mode"] = json!("Disabled");
    env.create("chat-1", spec).await;
    env.wait_for_condition("chat-1", DEGRADED, "True", Some("AgentNeverConnected"), LONG).await;
    let ws = env.workspace_id("admin", "chat-1");
    let chat = env.sim.create_chat(coder_sim::NewChat {
        title: "stuck".into(),
        workspace_id: Some(ws),
        status: Some("running".into()),
        ..Default::default()
    });
    let chat_id = chat.to_string();
    env.wait_for("chat-1", "the chat in status", LONG, |cws| {
        cws.status.as_ref().and_then(|s| s.chat.as_ref()).is_some_and(|c| c.id == chat_id)
    })
    .await;

    let patch = json!({"spec": {"recovery": {"mode": "Automatic"}}});
    env.api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("enable recovery");
    env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert_eq!(env.transitions(ws), ["start", "stop", "start"]);
    let requests = env.sim.requests();
    let served = |method: &str, path: &str, transition: Option<&str>| {
        requests
            .iter()
            .filter(|r| r.method == method && r.path == path && (200..300).contains(&r.status))
            .filter(|r| transition.is_none_or(|t| r.body.as_ref().and_then(|b| b["transition"].as_str()) == Some(t)))
            .map(|r| r.at)
            .next()
    };
    let interrupt = served("POST", &format!("/api/experimental/chats/{chat}/interrupt"), None).expect("interrupted");
    let stop = served("POST", &format!("/api/v2/workspaces/{ws}/builds"), Some("stop")).expect("stopped");
    assert!(interrupt < stop, "interrupted at {interrupt}, the stop requested at {stop}");
}

#[tokio::test]
async fn an_external_agent_that_disconnects_is_reported_and_nothing_is_built() {
    let env = Env::start("external").await;
    let mut spec = fast_recovery(3);
    spec["template"]["name"] = json!("external-dev");
    env.create("chat-1", spec).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.kill_agent(id);
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("ExternalAgentDisconnected"), LONG).await;
    let status = degraded.status.unwrap();
    let connected = conditions::find(&status.conditions, AGENT_CONNECTED).unwrap();
    assert_eq!((connected.status.as_str(), connected.reason.as_str()), ("False", "ExternalAgentDisconnected"));
    assert!(connected.message.contains("external agent") && connected.message.contains("where it runs"));
    // Past the threshold and a probe timeout: still no build, never Recovering.
    tokio::time::sleep(THRESHOLD + PROBE_TIMEOUT + Duration::from_secs(2)).await;
    let later = env.get("chat-1").await.status.unwrap();
    assert!(!conditions::is_true(&later.conditions, RECOVERING));
    assert!(conditions::is_true(&later.conditions, DEGRADED));
    assert_eq!(env.transitions(id), ["start"], "an external agent is never stopped and started");

    // Restarted where it runs: back to Ready, nothing built.
    env.sim.revive_agent(id);
    ready(&env, "chat-1").await;
    assert_eq!(env.transitions(id), ["start"]);
}

#[tokio::test]
async fn classification_follows_the_new_agent_after_a_rebuild() {
    let env = Env::start("rebuild").await;
    env.create("chat-1", fast_recovery(3)).await;
    let first = ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    env.set_desired_state("chat-1", "Running").await;
    let second = ready(&env, "chat-1").await;
    assert_ne!(agent_id(&first), agent_id(&second), "status follows the new build's agent");

    // The old agent's death is history; the new one's is what counts.
    env.sim.kill_agent(id);
    env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start", "stop", "start"]);
}

#[tokio::test]
async fn an_operator_killed_after_the_recovery_stop_resumes_without_a_second_stop() {
    let mut env = Env::start("crash").await;
    env.create("chat-1", fast_recovery(3)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.kill_agent(id);
    // Kill the operator the moment the recovery's stop build exists.
    wait_for_recovery_stop(&env, id).await;
    env.kill_operator();
    assert_eq!(env.transitions(id), ["start", "stop"]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    env.start_operator();
    let after = ready(&env, "chat-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "the recovery finished with no second stop");
    assert_eq!(env.stacked_builds(), 0);
    assert_eq!(attempts(&env).await, 1, "the attempt was written down before the stop: {:?}", after.status);
}

/// Returns the moment the recovery's stop build exists in Coder.
async fn wait_for_recovery_stop(env: &Env, id: uuid::Uuid) {
    let deadline = std::time::Instant::now() + LONG;
    while env.transitions(id).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no recovery stop build");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn attempts(env: &Env) -> u32 {
    let cws = env.get("chat-1").await;
    cws.status.and_then(|s| s.recovery).map_or(0, |r| r.attempts)
}

#[tokio::test]
async fn an_operator_stopped_before_it_learned_of_its_recovery_stop_resumes_the_same_attempt() {
    let mut env = Env::start("intent").await;
    env.create("chat-1", fast_recovery(3)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    // The stop build takes effect in Coder, but its answer comes late: the
    // operator is killed before it hears of the build.
    env.sim.inject_fault(
        Fault::new(format!("/api/v2/workspaces/{id}/builds"), FaultKind::AnswerLate(Duration::from_secs(5)))
            .method("POST")
            .times(1),
    );
    env.sim.kill_agent(id);
    wait_for_recovery_stop(&env, id).await;
    env.kill_operator();
    let written = env.get("chat-1").await.status.and_then(|s| s.recovery).expect("status.recovery before the stop");
    assert_eq!(written.attempts, 1, "the attempt is written down before the build is requested");
    assert!(written.stage.is_some(), "and so is the stage");

    env.start_operator();
    ready(&env, "chat-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "resumed, with no second stop");
    assert_eq!(attempts(&env).await, 1, "one recovery counts once against the budget");
}

#[tokio::test]
async fn a_flapping_agent_exhausts_the_budget_and_is_left_for_a_person() {
    let env = Env::start("flap").await;
    env.create("chat-1", fast_recovery(2)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    for attempt in 1..=2 {
        env.sim.kill_agent(id);
        env.wait_for("chat-1", &format!("recovery {attempt} done"), LONG, |c| {
            c.status
                .as_ref()
                .and_then(|s| s.recovery.as_ref())
                .is_some_and(|r| r.attempts == attempt && r.stage.is_none())
                && conditions::is_true(&c.status.as_ref().unwrap().conditions, READY)
        })
        .await;
    }
    env.sim.kill_agent(id);
    let spent = env.wait_for_condition("chat-1", DEGRADED, "True", Some("RecoveryBudgetExhausted"), LONG).await;
    let message = conditions::find(&spent.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("2 automatic recoveries"), "{message}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start", "stop", "start"], "no builds past the budget");
}

#[tokio::test]
async fn recovery_disabled_reports_and_never_builds() {
    let env = Env::start("disabled").await;
    let mut spec = fast_recovery(3);
    spec["recovery"]["mode"] = json!("Disabled");
    env.create("chat-1", spec).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");
    env.sim.kill_agent(id);
    env.wait_for_condition("chat-1", DEGRADED, "True", Some("AgentDead"), LONG).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.transitions(id), ["start"]);
}

#[tokio::test]
async fn a_recovery_stop_refused_with_409_does_not_take_a_later_autostop_for_its_own() {
    let env = Env::start("phantom").await;
    env.create("chat-1", fast_recovery(3)).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    // Coder refuses every build with 409 (a build became active), so the
    // recovery's stop, once decided and written down, is never made.
    env.sim.inject_fault(Fault::new(format!("/api/v2/workspaces/{id}/builds"), FaultKind::Status(409)).method("POST"));
    env.sim.kill_agent(id);
    env.wait_for("chat-1", "refused its recovery's stop with 409", LONG, |_| {
        env.sim.requests().iter().any(|r| r.method == "POST" && r.path.ends_with("/builds") && r.status == 409)
    })
    .await;

    // Then Coder's own autostop stops the workspace.
    env.sim.stop_by_coder(id, "autostop");
    env.sim.clear_faults();
    let stopped = env.wait_for_condition("chat-1", READY, "False", Some("StoppedByCoder"), LONG).await;
    let status = stopped.status.unwrap();
    assert!(
        status.recovery.as_ref().is_none_or(|r| r.stage.is_none()),
        "no recovery stage left: {:?}",
        status.recovery
    );
    assert_eq!(env.transitions(id), ["start", "stop"], "the autostop is respected: no start");
    let builds: Vec<_> =
        env.sim.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/builds")).collect();
    assert!(builds.iter().all(|r| r.status == 409), "the operator made no build: {builds:?}");
}
