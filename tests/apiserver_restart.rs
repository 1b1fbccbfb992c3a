//! The apiserver restarting under the operator: no desired state lost, no
//! duplicate builds. Alone in its test binary, because it restarts the
//! control plane the binary's tests share.

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::READY;
use serde_json::json;
use support::{Env, LONG};
use testbed::ControlPlane;

#[tokio::test]
async fn an_apiserver_restart_loses_no_desired_state() {
    let env = Env::start("restart").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.set_desired_state("chat-1", "Stopped").await;
    tokio::task::spawn_blocking(|| ControlPlane::shared().restart_apiserver()).await.unwrap().expect("restart");
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), Duration::from_secs(60)).await;

    // And the watch still works after the restart: a new desired state is acted on.
    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), Duration::from_secs(60)).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
    assert_eq!(env.stacked_builds(), 0);
}
