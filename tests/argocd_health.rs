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

use chatworkspace_operator::conditions::{DEGRADED, PROGRESSING, READY};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::SimConfig;
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
