//! How an AI agent drives the operator: real kubectl against the real
//! apiserver, with the README's commands.

mod support;

use std::process::Output;

use support::Env;
use testbed::ControlPlane;

fn kubectl(env: &Env, args: &[&str]) -> Output {
    let output =
        ControlPlane::shared().kubectl().args(["-n", &env.namespace]).args(args).output().expect("run kubectl");
    assert!(output.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    output
}

fn jsonpath(env: &Env, path: &str) -> String {
    let out = kubectl(env, &["get", "cws", "fix-login-bug", "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn patch_and_wait_follow_the_desired_state() {
    let env = Env::start("agentflow").await;
    let example = testbed::repo_root().join("examples/chatworkspace.yaml");
    let flow = tokio::task::spawn_blocking(move || {
        kubectl(&env, &["apply", "-f", example.to_str().unwrap()]);
        kubectl(&env, &["wait", "cws/fix-login-bug", "--for=condition=Ready", "--timeout=60s"]);
        assert_eq!(jsonpath(&env, "{.status.phase}"), "Running");
        assert_eq!(jsonpath(&env, "{.status.agent.status}"), "connected");
        assert_eq!(jsonpath(&env, "{.status.template.presets[*].name}"), "small standard large");

        // Right after a patch, Ready is still True for the old generation:
        // kubectl wait must wait for the new one.
        kubectl(
            &env,
            &["patch", "cws", "fix-login-bug", "--type", "merge", "-p", r#"{"spec":{"desiredState":"Stopped"}}"#],
        );
        kubectl(&env, &["wait", "cws/fix-login-bug", "--for=condition=Ready", "--timeout=60s"]);
        assert_eq!(jsonpath(&env, "{.status.phase}"), "Stopped");

        kubectl(
            &env,
            &["patch", "cws", "fix-login-bug", "--type", "merge", "-p", r#"{"spec":{"desiredState":"Running"}}"#],
        );
        kubectl(&env, &["wait", "cws/fix-login-bug", "--for=condition=Ready", "--timeout=60s"]);
        assert_eq!(jsonpath(&env, "{.status.phase}"), "Running");

        let table = kubectl(&env, &["get", "cws"]);
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(table.contains("DESIRED") && table.contains("PHASE") && table.contains("AGENT"), "{table}");
        assert!(table.contains("fix-login-bug   Running   Running   True    connected"), "{table}");
        env
    });
    let env = flow.await.expect("the kubectl flow");
    let id = env.workspace_id("admin", "fix-login-bug");
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
}
