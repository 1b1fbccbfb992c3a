//! The Argo CD health check for ChatWorkspaces
//! (`integrations/argocd/resource_customizations/chat.coder.com/ChatWorkspace/health.lua`),
//! run as Argo CD runs it: in gopher-lua (Lua 5.1), by the `argocd-health`
//! helper that `make tools` builds, with the object as `obj`. On live
//! resources of the test bed in each state, and on the cases of its
//! `health_test.yaml`, made from objects captured from the test bed
//! (`CWS_CAPTURE_ARGOCD=1` writes them again).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatworkspace_operator::coder::WorkspaceTransition;
use chatworkspace_operator::conditions::{self, DEGRADED, PROGRESSING, READY, RECONCILING};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{Fault, FaultKind, SimConfig};
use serde_json::json;
use support::{Env, LONG};

fn check_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integrations/argocd/resource_customizations/chat.coder.com/ChatWorkspace")
}

/// What the health check says of `object`: (status, message).
fn health(object: &serde_json::Value) -> (String, String) {
    let helper = testbed::tool("argocd-health").unwrap_or_else(|err| panic!("{err:#}"));
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(object).unwrap()).unwrap();
    let output = std::process::Command::new(helper)
        .arg(check_dir().join("health.lua"))
        .arg(file.path())
        .output()
        .expect("run argocd-health");
    assert!(output.status.success(), "argocd-health failed: {}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("argocd-health prints JSON");
    (answer["status"].as_str().unwrap().to_owned(), answer["message"].as_str().unwrap().to_owned())
}

/// Checks the health of the live `resource`, and keeps it as a test case
/// when asked to.
fn expect(resource: &ChatWorkspace, case: &str, status: &str) -> String {
    let mut object = serde_json::to_value(resource).unwrap();
    let metadata = object["metadata"].as_object_mut().unwrap();
    for volatile in ["managedFields", "uid", "resourceVersion", "creationTimestamp", "namespace"] {
        metadata.remove(volatile);
    }
    let (found, message) = health(&object);
    assert_eq!(found, status, "{case}: {message}\n{}", serde_json::to_string_pretty(&object).unwrap());
    if std::env::var_os("CWS_CAPTURE_ARGOCD").is_some() {
        let yaml = serde_yaml::to_string(&object).unwrap();
        std::fs::write(check_dir().join("testdata").join(format!("{case}.yaml")), yaml).unwrap();
    }
    message
}

#[tokio::test]
async fn each_state_of_a_live_resource_has_the_health_argo_cd_should_show() {
    // Builds slow enough to be seen under way.
    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(3);
    let mut env = Env::without_operator("argocd", config).await;
    env.create("chat", json!({"template": {"name": "docker-dev"}})).await;
    expect(&env.get("chat").await, "unobserved", "Progressing");

    env.start_operator();
    let building = env.wait_for_condition("chat", PROGRESSING, "True", None, LONG).await;
    expect(&building, "creating", "Progressing");
    let running = env.wait_for_condition("chat", READY, "True", Some("Running"), LONG).await;
    expect(&running, "running", "Healthy");

    env.set_desired_state("chat", "Stopped").await;
    let stopping = env.wait_for_condition("chat", PROGRESSING, "True", None, LONG).await;
    expect(&stopping, "stopping", "Progressing");
    let stopped = env.wait_for_condition("chat", READY, "True", Some("Stopped"), LONG).await;
    expect(&stopped, "stopped", "Suspended");

    // Coder's autostop, respected while Running is desired.
    env.set_desired_state("chat", "Running").await;
    env.wait_for_condition("chat", READY, "True", Some("Running"), LONG).await;
    env.sim.stop_by_coder(env.workspace_id("admin", "chat"), "autostop");
    let autostopped = env.wait_for_condition("chat", READY, "False", Some("StoppedByCoder"), LONG).await;
    expect(&autostopped, "stopped-by-coder", "Suspended");

    // A person must act.
    env.grant(Some("admin")).await;
    env.create("bobs", json!({"owner": "bob", "template": {"name": "docker-dev"}})).await;
    let refused = env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    let message = expect(&refused, "owner-not-granted", "Degraded");
    assert!(message.contains("kubectl annotate namespace"), "the message says what to do: {message}");

    // Coder unavailable while a stop is asked for: the operator retries on
    // its own (Reconciling), so Progressing; not Degraded, though Degraded
    // says what failed, and not Suspended, though Ready is still the
    // running workspace's.
    env.create("down", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("down", READY, "True", Some("Running"), LONG).await;
    env.sim.inject_fault(Fault::new("/api/v2/", FaultKind::Status(503)));
    env.set_desired_state("down", "Stopped").await;
    let retrying = env.wait_for_condition("down", RECONCILING, "True", Some("CoderUnavailable"), LONG).await;
    assert!(conditions::is_true(&retrying.status.as_ref().unwrap().conditions, DEGRADED));
    expect(&retrying, "coder-unavailable", "Progressing");
}

#[tokio::test]
async fn failed_stops_and_startups_and_workspaces_deleted_in_coder_have_the_health_argo_cd_should_show() {
    let mut env = Env::without_operator("argocd-failures", SimConfig::fast()).await;
    // A failed stop is retried after this long, which keeps its state long
    // enough to be read (the retry counts from the build's request, stamped
    // to the whole second).
    env.settings.requeue.retry = Duration::from_secs(4);
    env.start_operator();
    env.create("startup", json!({"template": {"name": "docker-dev"}, "desiredState": "Stopped"})).await;
    env.create("unstoppable", json!({"template": {"name": "docker-dev"}})).await;
    env.create("deleted", json!({"template": {"name": "docker-dev"}, "deletedInCoder": "Leave"})).await;
    env.wait_for_condition("startup", READY, "True", Some("NotCreated"), LONG).await;
    for name in ["unstoppable", "deleted"] {
        env.wait_for_condition(name, READY, "True", Some("Running"), LONG).await;
    }

    // A startup script that exits with an error: a person must look at the
    // template.
    env.sim.fail_startup_next_start(None);
    env.set_desired_state("startup", "Running").await;
    let failed = env.wait_for_condition("startup", DEGRADED, "True", Some("AgentStartupFailed"), LONG).await;
    let message = expect(&failed, "agent-startup-failed", "Degraded");
    assert!(message.contains("startup script"), "{message}");

    // A failed stop is retried on its own: Progressing, not Degraded.
    let unstoppable = env.workspace_id("admin", "unstoppable");
    env.sim.fail_next_build(Some(unstoppable), Some("stop"));
    env.set_desired_state("unstoppable", "Stopped").await;
    let retrying = env.wait_for_condition("unstoppable", READY, "False", Some("StopFailed"), LONG).await;
    expect(&retrying, "stop-failed", "Progressing");
    let stopped = env.wait_for_condition("unstoppable", READY, "True", Some("Stopped"), LONG).await;
    let (found, message) = health(&serde_json::to_value(&stopped).unwrap());
    assert_eq!(found, "Suspended", "stopped after failed stops: {message}");

    // Deleted in Coder and left so: Degraded while Running is desired
    // (the message says how to get a workspace again), Suspended once
    // Stopped is.
    env.build_in_coder(env.workspace_id("admin", "deleted"), WorkspaceTransition::Delete).await;
    let left = env.wait_for_condition("deleted", DEGRADED, "True", Some("DeletedInCoder"), LONG).await;
    let message = expect(&left, "deleted-in-coder", "Degraded");
    assert!(message.contains("spec.deletedInCoder to Recreate"), "{message}");
    env.set_desired_state("deleted", "Stopped").await;
    let stopped = env.wait_for_condition("deleted", READY, "True", Some("DeletedInCoder"), LONG).await;
    expect(&stopped, "deleted-in-coder-stopped", "Suspended");
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cases {
    tests: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    health_status: Expected,
    input_path: String,
}

#[derive(serde::Deserialize)]
struct Expected {
    status: String,
    #[serde(default)]
    message: Option<String>,
}

#[test]
fn the_committed_cases_of_health_test_yaml_hold() {
    let cases: Cases =
        serde_yaml::from_str(&std::fs::read_to_string(check_dir().join("health_test.yaml")).unwrap()).unwrap();
    let statuses: std::collections::BTreeSet<&str> =
        cases.tests.iter().map(|c| c.health_status.status.as_str()).collect();
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        ["Degraded", "Healthy", "Progressing", "Suspended"],
        "every health Argo CD knows for this kind is covered"
    );
    for case in &cases.tests {
        let object: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(check_dir().join(&case.input_path)).unwrap()).unwrap();
        let (status, message) = health(&object);
        assert_eq!(status, case.health_status.status, "{}: {message}", case.input_path);
        if let Some(expected) = &case.health_status.message {
            assert_eq!(&message, expected, "{}", case.input_path);
        }
    }
}
