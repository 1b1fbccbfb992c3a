//! `kubectl cws`, the kubectl plugin for people: found by a real kubectl on
//! PATH as plugins are, run as its own process with a kubeconfig, against
//! the test bed and the operator driving the Coder simulator.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use chatworkspace_operator::conditions::{self, READY, RECOVERING, STALLED};
use chatworkspace_operator::crd::RESTART_REQUESTED_AT;
use kube::api::{Patch, PatchParams};
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

    // A heartbeating agent that no probe reaches: the operator reports it
    // and builds nothing (Stalled), though its phase stays Running.
    env.create("dial", json!({"template": {"name": "docker-dev"}, "recovery": {"probeTimeout": "1s"}})).await;
    stdout(&cws(&env, &["wait", "dial", "--for", "ready", "--timeout", "30s"]).await);
    env.sim.partition_probe(env.workspace_id("admin", "dial"), true);
    env.wait_for_condition("dial", STALLED, "True", Some("DialTimeout"), LONG).await;
    let began = Instant::now();
    let output = cws(&env, &["wait", "dial", "--for", "ready", "--timeout", "2m"]).await;
    assert!(!output.status.success(), "{output:?}");
    assert!(began.elapsed() < Duration::from_secs(60), "failed fast: {:?}", began.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs a person") && stderr.contains("DialTimeout"), "{stderr}");
}

/// The restart request the operator last answered, and whether it accepted it.
fn restart_answer(env_resource: &chatworkspace_operator::crd::ChatWorkspace) -> Option<(String, bool)> {
    let restart = env_resource.status.as_ref()?.restart.as_ref()?;
    Some((restart.request.clone(), restart.accepted))
}

#[tokio::test]
async fn a_restart_is_one_stop_and_one_start_done_once_and_refused_when_the_budget_is_spent() {
    let mut env = Env::start("plugin-restart").await;
    // One recovery per hour: the restart uses it up.
    env.create("chat", json!({"template": {"name": "docker-dev"}, "recovery": {"maxAttempts": 1, "window": "1h"}}))
        .await;
    stdout(&cws(&env, &["wait", "chat", "--for", "ready", "--timeout", "30s"]).await);
    let id = env.workspace_id("admin", "chat");
    let agent_before = env.get("chat").await.status.unwrap().agent.unwrap().id;

    let restarted = stdout(&cws(&env, &["restart", "chat"]).await);
    assert!(restarted.contains("accepted"), "{restarted}");
    stdout(&cws(&env, &["wait", "chat", "--for", "ready", "--timeout", "30s"]).await);
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "exactly one stop and one start");
    assert_ne!(after.status.as_ref().unwrap().agent.as_ref().unwrap().id, agent_before, "a new agent");
    let (value, accepted) = restart_answer(&after).expect("status.restart");
    assert!(accepted);
    assert_eq!(after.status.as_ref().unwrap().recovery.as_ref().unwrap().attempts, 1, "counted against the budget");
    let events = env.wait_for_events("chat", &["RestartRequested", "Recovered"]).await;
    assert!(events.iter().any(|(reason, note)| reason == "RestartRequested" && note.contains(&value)), "{events:?}");

    // The same value applied again (with another change, so the resource is
    // reconciled), and seen by a restarted operator: nothing.
    let patch = json!({"metadata": {"labels": {"touched": "yes"}, "annotations": {RESTART_REQUESTED_AT: value}}});
    env.api.patch("chat", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.stop_operator().await;
    env.start_operator();
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        assert_eq!(env.transitions(id), ["start", "stop", "start"], "the same value restarted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new request past the budget: refused, with the reason, no build.
    let output = cws(&env, &["restart", "chat"]).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused") && stderr.contains("recovery budget is spent"), "{stderr}");
    env.wait_for_events("chat", &["RestartRefused"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"], "a refused restart builds nothing");
    assert!(conditions::is_true(&env.get("chat").await.status.unwrap().conditions, READY), "still Ready");
}

/// The krew manifest (`integrations/krew/cws.yaml`) against the rules krew
/// applies when it loads a plugin manifest, and against the real binary.
#[test]
fn the_krew_manifest_has_what_krew_requires_and_names_every_verb() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/krew/cws.yaml");
    let manifest: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(manifest["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(manifest["kind"], "Plugin");
    let name = manifest["metadata"]["name"].as_str().unwrap();
    assert!(
        !name.is_empty()
            && name
                .split('-')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())),
        "a safe plugin name: {name}"
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_kubectl-cws")).file_name().unwrap().to_str().unwrap();
    assert_eq!(binary, format!("kubectl-{name}"), "kubectl finds the binary under the plugin's name");

    let spec = &manifest["spec"];
    assert_eq!(spec["version"], format!("v{}", env!("CARGO_PKG_VERSION")), "a semantic version, the crate's");
    assert!(spec["homepage"].as_str().unwrap().starts_with("https://"));
    let short = spec["shortDescription"].as_str().unwrap();
    assert!(!short.is_empty() && short.len() <= 50, "krew-index wants a short description: {short:?}");
    let description = spec["description"].as_str().unwrap();

    let platforms = spec["platforms"].as_array().unwrap();
    assert!(!platforms.is_empty());
    let mut selectors = std::collections::BTreeSet::new();
    for platform in platforms {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (labels["os"].as_str().unwrap(), labels["arch"].as_str().unwrap());
        assert!(["linux", "darwin", "windows"].contains(&os) && ["amd64", "arm64"].contains(&arch), "{labels}");
        assert!(selectors.insert((os, arch)), "one entry per platform: {os}/{arch}");
        let uri = platform["uri"].as_str().unwrap();
        assert!(
            uri.starts_with("https://") && uri.ends_with(".tar.gz") && uri.contains(spec["version"].as_str().unwrap()),
            "{uri}"
        );
        let sha256 = platform["sha256"].as_str().unwrap();
        assert!(
            sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{sha256}"
        );
        let bin = platform["bin"].as_str().unwrap();
        assert_eq!(bin, binary);
        let files = platform["files"].as_array().unwrap();
        assert!(
            files.iter().any(|f| f["from"] == bin && f["to"] == "."),
            "the archive's binary is installed where `bin` names it: {files:?}"
        );
    }

    // Every verb of the real binary is in the description.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-cws")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let verbs: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("the help lists commands")
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|verb| *verb != "help")
        .collect();
    assert!(verbs.contains(&"restart"), "{help}");
    for verb in verbs {
        assert!(description.contains(&format!("kubectl cws {verb} ")), "the description names {verb}");
    }
}
