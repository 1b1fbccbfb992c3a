//! What kstatus (sigs.k8s.io/cli-utils `pkg/kstatus`, the status computation
//! of Flux's health checks and many CD tools) makes of live ChatWorkspaces:
//! run by the `kstatus` helper that `make tools` builds, on objects as
//! `kubectl get -o json` prints them from the test bed, in each phase of the
//! lifecycle, of a recovery, of failed builds and startups, and in each
//! state that waits for a person. The expected answers are the README's
//! table ("kstatus").

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chatworkspace_operator::coder::WorkspaceTransition;
use chatworkspace_operator::conditions::{self, DEGRADED, READY, RECONCILING, RECOVERING, STALLED};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{Fault, FaultKind, SimConfig};
use serde_json::json;
use support::{Env, LONG};
use tokio::io::AsyncWriteExt;

/// kstatus's answer for one object.
#[derive(Debug, serde::Deserialize)]
struct Computed {
    status: String,
    reason: String,
    message: String,
}

/// Runs the kstatus helper on `json` (one object or a List).
async fn compute(json: Vec<u8>) -> Vec<Computed> {
    let helper = testbed::tool("kstatus").unwrap_or_else(|err| panic!("{err:#}"));
    let mut child = tokio::process::Command::new(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kstatus");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&json).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "kstatus failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("kstatus prints JSON lines"))
        .collect()
}

/// kstatus on the live resource, read with `kubectl get -o json` as a CD
/// tool reads it.
async fn live(env: &Env, name: &str) -> Computed {
    let kubectl = testbed::tool("kubectl").unwrap_or_else(|err| panic!("{err:#}"));
    let output = tokio::process::Command::new(kubectl)
        .args(["get", "chatworkspace", name, "-n", &env.namespace, "-o", "json"])
        .env("KUBECONFIG", testbed::ControlPlane::shared().kubeconfig_path())
        .output()
        .await
        .expect("run kubectl get");
    assert!(output.status.success(), "kubectl get: {}", String::from_utf8_lossy(&output.stderr));
    compute(output.stdout).await.pop().expect("one object")
}

/// kstatus on an object the test just read (a state too short-lived to be
/// read again with kubectl).
async fn seen(object: &ChatWorkspace) -> Computed {
    compute(serde_json::to_vec(object).unwrap()).await.pop().expect("one object")
}

fn check(what: &str, found: Computed, status: &str, reason: Option<&str>) -> Computed {
    assert_eq!(found.status, status, "{what}: {found:?}");
    if let Some(reason) = reason {
        assert_eq!(found.reason, reason, "{what}: {found:?}");
    }
    found
}

/// A Flux-style health wait: kstatus on the resource until it is Current
/// (success) or Failed (failure, at once), or the timeout.
async fn wait_like_flux(env: &Env, name: &str, timeout: Duration) -> (Computed, Duration) {
    let began = Instant::now();
    loop {
        let found = live(env, name).await;
        if found.status == "Current" || found.status == "Failed" || began.elapsed() > timeout {
            return (found, began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fast_recovery(max_attempts: u32) -> serde_json::Value {
    json!({
        "template": {"name": "docker-dev"},
        "recovery": {"disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": max_attempts, "window": "1h"},
    })
}

fn ready(cws: &ChatWorkspace) -> bool {
    cws.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, READY))
        && cws.status.as_ref().and_then(|s| s.observed_generation) == cws.metadata.generation
}

#[tokio::test]
async fn each_phase_of_the_lifecycle_and_of_a_recovery_reads_as_documented() {
    // Builds slow enough to be seen under way.
    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(2);
    let mut env = Env::without_operator("kstatus-life", config).await;
    env.create("chat", fast_recovery(1)).await;
    // Not written by the operator yet: the CRD's default observedGeneration
    // (0) keeps kstatus from taking it for Current.
    let unobserved = check("unobserved", live(&env, "chat").await, "InProgress", Some("LatestGenerationNotObserved"));
    assert!(unobserved.message.contains("observed generation is 0"), "{unobserved:?}");

    env.start_operator();
    let creating = env.wait_for_condition("chat", RECONCILING, "True", None, LONG).await;
    check("creating", seen(&creating).await, "InProgress", None);
    env.wait_for("chat", "Ready", LONG, ready).await;
    check("running", live(&env, "chat").await, "Current", None);

    env.set_desired_state("chat", "Stopped").await;
    let stopping = env.wait_for_condition("chat", RECONCILING, "True", Some("BuildInProgress"), LONG).await;
    check("stopping", seen(&stopping).await, "InProgress", Some("BuildInProgress"));
    env.wait_for_condition("chat", READY, "True", Some("Stopped"), LONG).await;
    check("stopped", live(&env, "chat").await, "Current", None);

    // A spec the operator has not seen yet is InProgress, whatever the
    // conditions of the previous generation say.
    env.stop_operator().await;
    env.set_desired_state("chat", "Running").await;
    check("a new generation, unobserved", live(&env, "chat").await, "InProgress", Some("LatestGenerationNotObserved"));
    env.start_operator();
    let starting = env.wait_for_condition("chat", RECONCILING, "True", None, LONG).await;
    check("starting", seen(&starting).await, "InProgress", None);
    env.wait_for("chat", "Ready", LONG, ready).await;
    check("running again", live(&env, "chat").await, "Current", None);

    // A dead agent: waiting out the threshold, then the recovery.
    let id = env.workspace_id("admin", "chat");
    env.sim.kill_agent(id);
    let waiting = env.wait_for_condition("chat", READY, "False", Some("AgentDisconnected"), LONG).await;
    check("an agent disconnected, within the threshold", seen(&waiting).await, "InProgress", Some("AgentDisconnected"));
    let recovering = env.wait_for_condition("chat", RECOVERING, "True", None, LONG).await;
    check("recovering", seen(&recovering).await, "InProgress", Some("Recovering"));
    env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), LONG).await;
    env.wait_for("chat", "Ready", LONG, ready).await;
    check("recovered", live(&env, "chat").await, "Current", None);

    // The budget (one attempt) is spent: Failed, saying when it reopens.
    env.sim.kill_agent(id);
    env.wait_for_condition("chat", DEGRADED, "True", Some("RecoveryBudgetExhausted"), LONG).await;
    let spent = check("budget spent", live(&env, "chat").await, "Failed", Some("RecoveryBudgetExhausted"));
    assert!(spent.message.contains("Recovery resumes at"), "{spent:?}");
}

#[tokio::test]
async fn what_waits_for_a_person_is_failed_with_the_reason_and_a_flux_style_wait_fails_fast() {
    let env = Env::start("kstatus-person").await;
    // The namespace may drive only admin's workspaces.
    env.grant(Some("admin")).await;
    env.sim.create_workspace("admin", "made-outside", "docker-dev");
    env.create("ready", json!({"template": {"name": "docker-dev"}})).await;
    env.create("bobs", json!({"owner": "bob", "template": {"name": "docker-dev"}})).await;
    env.create("no-template", json!({"template": {"name": "no-such-template"}})).await;
    env.create("no-secret", json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "missing"}})).await;
    env.create("made-outside", json!({"template": {"name": "docker-dev"}})).await;
    env.create("no-agent", json!({"template": {"name": "docker-dev"}, "agentName": "nope"})).await;
    env.create("external", json!({"template": {"name": "external-dev"}})).await;
    let mut disabled = fast_recovery(3);
    disabled["recovery"]["mode"] = json!("Disabled");
    env.create("disabled", disabled).await;
    env.create("dial", fast_recovery(3)).await;
    env.create("dormant", json!({"template": {"name": "docker-dev"}})).await;
    env.create("autostopped", json!({"template": {"name": "docker-dev"}})).await;

    // Flux's wait: success for Ready, failure at once, with the reason,
    // for a workspace that waits for a person.
    let (found, took) = wait_like_flux(&env, "ready", LONG).await;
    check("ready, waited on", found, "Current", None);
    assert!(took < LONG, "{took:?}");
    let (found, took) = wait_like_flux(&env, "bobs", Duration::from_secs(120)).await;
    let found = check("owner not granted, waited on", found, "Failed", Some("OwnerNotGranted"));
    assert!(took < Duration::from_secs(20), "failed fast, not at the timeout: {took:?}");
    assert!(found.message.contains("kubectl annotate namespace"), "says what to do: {found:?}");

    for (name, reason) in [
        ("no-template", "TemplateNotFound"),
        ("no-secret", "CredentialsInvalid"),
        ("made-outside", "AdoptionNotConsented"),
        ("no-agent", "NoAgent"),
    ] {
        env.wait_for_condition(name, STALLED, "True", Some(reason), LONG).await;
        check(name, live(&env, name).await, "Failed", Some(reason));
    }

    // Agents that are gone, and what the operator does not do about them.
    for name in ["external", "disabled", "dial", "dormant", "autostopped"] {
        env.wait_for(name, "Ready", LONG, ready).await;
    }
    env.sim.kill_agent(env.workspace_id("admin", "external"));
    env.sim.kill_agent(env.workspace_id("admin", "disabled"));
    env.sim.partition_probe(env.workspace_id("admin", "dial"), true);
    env.sim.stop_by_coder(env.workspace_id("admin", "dormant"), "dormancy");
    env.sim.stop_by_coder(env.workspace_id("admin", "autostopped"), "autostop");
    for (name, reason) in [
        ("external", "ExternalAgentDisconnected"),
        ("disabled", "AgentDead"),
        ("dial", "DialTimeout"),
        ("dormant", "Dormant"),
        ("autostopped", "StoppedByCoder"),
    ] {
        env.wait_for_condition(name, STALLED, "True", Some(reason), LONG).await;
        check(name, live(&env, name).await, "Failed", Some(reason));
    }

    // Two resources for one workspace: the later one is the conflict.
    env.create("twin", json!({"template": {"name": "docker-dev"}, "workspaceName": "ready"})).await;
    env.wait_for_condition("twin", STALLED, "True", Some("Conflict"), LONG).await;
    check("twin", live(&env, "twin").await, "Failed", Some("Conflict"));

    // A person acts: the start the autostop waits for.
    let patch = json!({"metadata": {"annotations": {"chat.coder.com/start-requested-at": "2030-01-01T00:00:00Z"}}});
    env.api.patch("autostopped", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let (found, _) = wait_like_flux(&env, "autostopped", LONG).await;
    check("autostopped, then asked to start", found, "Current", None);
}

#[tokio::test]
async fn failed_builds_and_startups_agents_that_never_connect_deletions_and_coders_errors_read_as_documented() {
    let mut env = Env::without_operator("kstatus-builds", SimConfig::fast()).await;
    // A failed stop is retried after this long, which keeps its state long
    // enough to be read (the retry counts from the build's request, stamped
    // to the whole second).
    env.settings.requeue.retry = Duration::from_secs(4);
    env.start_operator();
    let mut report = fast_recovery(3);
    report["recovery"]["neverConnected"] = json!("Report");
    env.create("broken", json!({"template": {"name": "docker-dev"}})).await;
    env.create("silent", report).await;
    env.create("startup", json!({"template": {"name": "docker-dev"}})).await;
    env.create("unstoppable", json!({"template": {"name": "docker-dev"}})).await;
    env.create("deleted", json!({"template": {"name": "docker-dev"}, "deletedInCoder": "Leave"})).await;
    for name in ["broken", "silent", "startup", "unstoppable", "deleted"] {
        env.wait_for(name, "Ready", LONG, ready).await;
    }
    for name in ["broken", "silent", "startup"] {
        env.set_desired_state(name, "Stopped").await;
        env.wait_for_condition(name, READY, "True", Some("Stopped"), LONG).await;
    }

    env.sim.fail_next_build(Some(env.workspace_id("admin", "broken")), Some("start"));
    env.sim.never_connect_next_start(Some(env.workspace_id("admin", "silent")));
    env.sim.fail_startup_next_start(Some(env.workspace_id("admin", "startup")));
    for name in ["broken", "silent", "startup"] {
        env.set_desired_state(name, "Running").await;
    }
    env.wait_for_condition("broken", STALLED, "True", Some("StartFailed"), LONG).await;
    check("a failed start", live(&env, "broken").await, "Failed", Some("StartFailed"));
    env.wait_for_condition("silent", STALLED, "True", Some("AgentNeverConnected"), LONG).await;
    check("an agent that never connected", live(&env, "silent").await, "Failed", Some("AgentNeverConnected"));
    env.wait_for_condition("startup", DEGRADED, "True", Some("AgentStartupFailed"), LONG).await;
    let failed =
        check("a startup script that failed", live(&env, "startup").await, "Failed", Some("AgentStartupFailed"));
    assert!(failed.message.contains("start_error"), "{failed:?}");

    // A failed stop is retried by the operator on its own: InProgress, and
    // Current once the retry stops it.
    let unstoppable = env.workspace_id("admin", "unstoppable");
    env.sim.fail_next_build(Some(unstoppable), Some("stop"));
    env.set_desired_state("unstoppable", "Stopped").await;
    let retrying = env.wait_for_condition("unstoppable", READY, "False", Some("StopFailed"), LONG).await;
    check("a failed stop, retried", seen(&retrying).await, "InProgress", Some("StopFailed"));
    env.wait_for_condition("unstoppable", READY, "True", Some("Stopped"), LONG).await;
    check("stopped after failed stops", live(&env, "unstoppable").await, "Current", None);

    // Deleted in Coder with `deletedInCoder: Leave`: Failed while Running is
    // desired; a desired Stopped is reached by it (Current).
    env.build_in_coder(env.workspace_id("admin", "deleted"), WorkspaceTransition::Delete).await;
    env.wait_for_condition("deleted", DEGRADED, "True", Some("DeletedInCoder"), LONG).await;
    let left = check("deleted in Coder, left", live(&env, "deleted").await, "Failed", Some("DeletedInCoder"));
    assert!(left.message.contains("spec.deletedInCoder to Recreate"), "says what to do: {left:?}");
    env.set_desired_state("deleted", "Stopped").await;
    env.wait_for_condition("deleted", READY, "True", Some("DeletedInCoder"), LONG).await;
    check("deleted in Coder, Stopped desired", live(&env, "deleted").await, "Current", None);

    // Coder unavailable: the operator retries on its own, so InProgress.
    env.sim.inject_fault(Fault::new("/api/v2/", FaultKind::Status(503)));
    env.create("unavailable", json!({"template": {"name": "docker-dev"}})).await;
    let retrying = env.wait_for_condition("unavailable", RECONCILING, "True", Some("CoderUnavailable"), LONG).await;
    assert!(!conditions::is_true(&retrying.status.as_ref().unwrap().conditions, STALLED));
    check("Coder unavailable", live(&env, "unavailable").await, "InProgress", Some("CoderUnavailable"));
    env.sim.clear_faults();
    let (found, _) = wait_like_flux(&env, "unavailable", LONG).await;
    check("Coder back", found, "Current", None);
}
