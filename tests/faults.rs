//! Faults on the Coder side: after each, the operator converges with no
//! duplicate or concurrent builds. (The apiserver restart has a test binary
//! of its own, since it restarts the control plane every test here shares.)

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::{DEGRADED, READY};
use coder_sim::{Fault, FaultKind};
use serde_json::json;
use support::{Env, LONG};

#[tokio::test]
async fn a_hanging_coder_is_reported_and_the_operator_converges_once_it_answers() {
    let env = Env::start("hang").await;
    // A probe caught by the hang blocks this resource's reconcile for the
    // probe timeout (30 s by default); keep it short here.
    env.create("chat-1", json!({"template": {"name": "docker-dev"}, "recovery": {"probeTimeout": "2s"}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.inject_fault(Fault { method: None, path_prefix: "/api/v2/".into(), kind: FaultKind::Hang, times: None });
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", DEGRADED, "True", Some("CoderUnavailable"), LONG).await;
    env.sim.clear_faults();
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), Duration::from_secs(60)).await;
    assert_eq!(env.transitions(id), ["start", "stop"]);
    assert_eq!(env.stacked_builds(), 0);
}
