//! Failures of Coder (or of what stands in front of it) must not
//! cause destructive actions. Only real evidence counts toward a recovery
//! or a dial timeout: a probe's timeout, coderd's refusal, coderd's own
//! failed dial. A 429, 401, 403, a proxy's 502/503/504 and a transport
//! error say nothing about the agent.

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::{self, DEGRADED, READY, RECOVERING};
use coder_sim::{Fault, FaultKind};
use serde_json::json;
use support::{Env, LONG};

fn spec() -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "template": {"name": "docker-dev"},
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 3, "window": "1h"},
    })
}

const PROBES: &str = "/api/v2/workspaceagents/";

#[tokio::test]
async fn inconclusive_probes_never_start_a_recovery() {
    let env = Env::start("inconclusive").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    // A proxy in front of coderd fails every probe while the agent dies.
    for status in [502, 503] {
        env.sim.inject_fault(Fault::new(PROBES, FaultKind::Status(status)).method("GET"));
    }
    env.sim.kill_agent(id);
    // Well past the threshold: with real evidence this would have recovered.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(env.transitions(id), ["start"], "no build on inconclusive probes");
    let probes = env.sim.requests().iter().filter(|r| r.path.starts_with(PROBES) && r.status >= 500).count();
    assert!(probes >= 1, "the operator kept probing through the proxy failure");

    // The proxy is back: coderd's refusal is evidence, and recovery follows.
    env.sim.clear_faults();
    env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
}

#[tokio::test]
async fn a_rate_limited_probe_of_a_connected_agent_is_not_a_dial_timeout() {
    let env = Env::start("probe-429").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;

    env.sim.inject_fault(Fault::new(PROBES, FaultKind::Status(403)).method("GET"));
    env.sim.inject_fault(Fault::new(PROBES, FaultKind::RateLimited(1)).method("GET"));
    // Many probe intervals (0.5 s in tests) pass with no conclusive answer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cws = env.api.get("chat-1").await.unwrap();
    let status = cws.status.unwrap();
    assert!(
        conditions::find(&status.conditions, DEGRADED).is_none_or(|c| c.reason != "DialTimeout"),
        "inconclusive probes raised DialTimeout: {:?}",
        status.conditions
    );
    assert!(conditions::is_true(&status.conditions, READY), "the last conclusive probe still stands");
}

/// Watches `name` until Ready, and says whether Degraded was ever True.
async fn degraded_before_ready(env: &Env, name: &str) -> bool {
    let deadline = std::time::Instant::now() + LONG;
    let mut degraded = false;
    loop {
        let cws = env.api.get(name).await.unwrap();
        let conditions = cws.status.map(|s| s.conditions).unwrap_or_default();
        degraded |= conditions::is_true(&conditions, DEGRADED);
        if conditions::is_true(&conditions, READY) {
            return degraded;
        }
        assert!(std::time::Instant::now() < deadline, "{name} never became Ready: {conditions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_coder_blip_shorter_than_the_grace_marks_nothing_a_lasting_one_is_degraded() {
    let mut env = Env::without_operator("blip", coder_sim::SimConfig::fast()).await;
    env.tweak = Some(|settings| settings.transient_grace = Duration::from_secs(3));
    env.start_operator();
    // Two 503s on the create, then Coder answers: retried after 1 s and 2 s,
    // inside the grace.
    env.sim.inject_fault(Fault::new("/api/v2/users/", FaultKind::Status(503)).method("POST").times(2));
    env.create("chat-1", spec()).await;
    assert!(!degraded_before_ready(&env, "chat-1").await, "a blip was shown as Degraded");
    let refused = env.sim.requests().iter().filter(|r| r.method == "POST" && r.status == 503).count();
    assert_eq!(refused, 2, "the blip happened");

    // Coder keeps failing past the grace: Degraded, once, and it clears when Coder is back.
    env.sim.inject_fault(Fault::new("/api/v2/users/", FaultKind::Status(503)).method("POST"));
    env.create("chat-2", spec()).await;
    env.wait_for_condition("chat-2", DEGRADED, "True", Some("CoderUnavailable"), LONG).await;
    env.sim.clear_faults();
    env.wait_for_condition("chat-2", READY, "True", Some("Running"), LONG).await;
    env.wait_for_condition("chat-2", DEGRADED, "False", None, LONG).await;
}
