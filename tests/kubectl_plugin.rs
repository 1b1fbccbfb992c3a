//! `kubectl cws`, the kubectl plugin for people: found by a real kubectl on
//! PATH as plugins are, run as its own process with a kubeconfig, against
//! the test bed and the operator driving the Coder simulator.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use chatworkspace_operator::conditions::READY;
use serde_json::json;
use support::{Env, LONG};

/// Runs `kubectl cws ARGS -n NAMESPACE` as a person would (without blocking
/// the test's runtime, where the operator runs).
async fn cws(env: &Env, args: &[&str]) -> Output {
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-cws"));
    let path = format!("{}:{}", plugin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let kubectl = testbed::tool("kubectl").unwrap_or_else(|err| panic!("{err:#}"));
    tokio::process::Command::new(kubectl)
        .arg("cws")
        .args(args)
        .args(["-n", &env.namespace])
        .env("PATH", path)
        .env("KUBECONFIG", testbed::ControlPlane::shared().kubeconfig_path())
        .output()
        .await
        .expect("run kubectl cws")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kubectl cws failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_person_drives_a_workspace_through_its_lifecycle_with_kubectl_cws() {
    let env = Env::start("plugin").await;
    env.create("chat", json!({"template": {"name": "docker-dev"}})).await;
    let waited = stdout(&cws(&env, &["wait", "chat", "--for", "ready", "--timeout", "30s"]).await);
    assert!(waited.contains("is running"), "{waited}");

    env.wait_for_events("chat", &["WorkspaceCreated"]).await;
    let status = stdout(&cws(&env, &["status", "chat"]).await);
    for expected in ["Running (desired Running)", "Workspace:  admin/chat", "Agent:      main connected", "Conditions:"]
    {
        assert!(status.contains(expected), "status shows {expected:?}:\n{status}");
    }
    assert!(status.contains("Recent events:") && status.contains("WorkspaceCreated"), "{status}");
    assert!(status.contains("Next: nothing: the desired state is reached."), "{status}");
    let id = env.workspace_id("admin", "chat");

    stdout(&cws(&env, &["stop", "chat"]).await);
    stdout(&cws(&env, &["wait", "chat", "--for", "stopped", "--timeout", "30s"]).await);
    assert_eq!(env.transitions(id), ["start", "stop"]);
    stdout(&cws(&env, &["start", "chat"]).await);
    stdout(&cws(&env, &["wait", "chat", "--for", "ready", "--timeout", "30s"]).await);
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);

    // Coder's autostop is respected; status says how to start it again,
    // and `start` asks for that one start.
    env.sim.stop_by_coder(id, "autostop");
    env.wait_for_condition("chat", READY, "False", Some("StoppedByCoder"), LONG).await;
    let status = stdout(&cws(&env, &["status", "chat"]).await);
    assert!(status.contains("Next: `kubectl cws start chat`"), "{status}");
    let started = stdout(&cws(&env, &["start", "chat"]).await);
    assert!(started.contains("asked for a start"), "{started}");
    stdout(&cws(&env, &["wait", "chat", "--for", "ready", "--timeout", "30s"]).await);
    assert_eq!(env.transitions(id), ["start", "stop", "start", "stop", "start"]);
}

#[tokio::test]
async fn waiting_on_a_workspace_that_needs_a_person_fails_at_once_with_the_reason() {
    let env = Env::start("plugin-stuck").await;
    env.grant(Some("admin")).await;
    env.create("bobs", json!({"owner": "bob", "template": {"name": "docker-dev"}})).await;
    let began = Instant::now();
    let output = cws(&env, &["wait", "bobs", "--for", "ready", "--timeout", "2m"]).await;
    assert!(!output.status.success(), "{output:?}");
    assert!(began.elapsed() < Duration::from_secs(60), "failed fast, not at the timeout: {:?}", began.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs a person") && stderr.contains("OwnerNotGranted"), "{stderr}");
    assert!(stderr.contains("kubectl annotate namespace"), "says what to do: {stderr}");

    let status = stdout(&cws(&env, &["status", "bobs"]).await);
    assert!(status.contains("Failed (desired Running)") && status.contains("Next: namespace"), "{status}");
}
