//! Agents: status computed from heartbeats as coderd does, deaths, respawns,
//! agents that never connect or whose startup fails, and the three
//! behaviours of the probe.

mod support;

use std::time::{Duration, Instant};

use coder_sim::Timings;
use serde_json::json;
use support::*;
use uuid::Uuid;

/// Wide windows between states, so polling cannot miss one on a busy machine.
fn observable() -> Timings {
    Timings {
        agent_connect_delay: Duration::from_millis(800),
        agent_startup: Duration::from_millis(600),
        ..Timings::fast()
    }
}

fn ts(value: &serde_json::Value) -> jiff::Timestamp {
    value.as_str().expect("a timestamp").parse().expect("RFC 3339")
}

#[tokio::test]
async fn agent_connects_dies_and_respawns() {
    let (sim, client) = start_with(observable()).await;
    let ws = client.create_workspace("life", DOCKER_DEV).await;
    let id = id_of(&ws);
    assert_eq!(ws["latest_build"]["status"], "pending");
    assert!(agents_of(&ws["latest_build"]).is_empty(), "no agents before the job completes");

    let ws = client.wait_for_build(&id, "running").await;
    let agents = agents_of(&ws["latest_build"]);
    assert_eq!(agents.len(), 1);
    let agent_id = id_of(&agents[0]);
    assert_eq!(agents[0]["name"], "main");

    let connecting = client.wait_for_agent(&agent_id, "connecting", None).await;
    assert_eq!(connecting["lifecycle_state"], "created");
    assert!(connecting.get("first_connected_at").is_none(), "omitted until it connects");
    assert_eq!(connecting["health"]["healthy"], true, "coderd counts a connecting agent healthy");

    let starting = client.wait_for_agent(&agent_id, "connected", Some("starting")).await;
    assert!(ts(&starting["first_connected_at"]) >= ts(&starting["created_at"]));
    let ready = client.wait_for_agent(&agent_id, "connected", Some("ready")).await;
    assert!(ready.get("disconnected_at").is_none());
    assert_eq!(client.probe(&agent_id).await.expect(200), json!({ "err": "", "ports": [] }));

    // Heartbeats advance last_connected_at while the agent lives.
    let before = ts(&client.agent(&agent_id).await["last_connected_at"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = ts(&client.agent(&agent_id).await["last_connected_at"]);
    assert!(after > before, "heartbeats advance last_connected_at");

    sim.kill_agent(id.parse().unwrap());
    let just_killed = client.agent(&agent_id).await;
    assert_eq!(just_killed["status"], "connected", "coderd has not noticed yet");
    let frozen = ts(&just_killed["last_connected_at"]);

    let dead = client.wait_for_agent(&agent_id, "disconnected", None).await;
    assert_eq!(ts(&dead["last_connected_at"]), frozen, "no heartbeats after death");
    assert_eq!(dead["disconnected_at"], dead["last_connected_at"]);
    assert_eq!(dead["health"], json!({ "healthy": false, "reason": "agent has lost connection" }));
    let ws = client.workspace(&id).await;
    assert_eq!(ws["health"]["healthy"], false);
    assert_eq!(ws["health"]["failing_agents"], json!([agent_id]));

    sim.revive_agent(id.parse().unwrap());
    let back = client.wait_for_agent(&agent_id, "connected", None).await;
    assert_eq!(id_of(&back), agent_id, "a respawned agent keeps its id");
    assert_eq!(back["first_connected_at"], dead["first_connected_at"]);
    assert!(ts(&back["last_connected_at"]) > frozen);
    assert_eq!(back["disconnected_at"], dead["disconnected_at"], "the outage stays on record");
    client.wait_for_agent(&agent_id, "connected", Some("ready")).await;
}

#[tokio::test]
async fn never_connecting_agent_times_out() {
    let timings = Timings { connection_timeout_seconds: 1, ..Timings::fast() };
    let (sim, client) = start_with(timings).await;
    sim.never_connect_next_start(None);
    let ws = client.create_workspace("stuck", DOCKER_DEV).await;
    let id = id_of(&ws);
    client.wait_for_build(&id, "running").await;
    let agent_id = id_of(&client.agents(&id).await[0]);
    assert_eq!(client.agent(&agent_id).await["status"], "connecting");

    let timed_out = client.wait_for_agent(&agent_id, "timeout", None).await;
    assert_eq!(timed_out["lifecycle_state"], "created");
    assert_eq!(timed_out["health"]["reason"], "agent is taking too long to connect");
    let elapsed = jiff::Timestamp::now().duration_since(ts(&timed_out["created_at"]));
    assert!(elapsed >= jiff::SignedDuration::from_secs(1), "timeout only after connection_timeout_seconds");

    let refused = client.probe(&agent_id).await.expect(400);
    assert_eq!(refused["message"], r#"Agent state is "timeout", it must be in the "connected" state."#);

    // The rule is used up: the next start connects normally.
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    client.build(&id, json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&id, "running").await;
    let fresh = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&fresh, "connected", None).await;
}

#[tokio::test]
async fn never_connect_can_target_one_workspace() {
    let (sim, client) = start().await;
    let a = id_of(&client.create_workspace("a", DOCKER_DEV).await);
    let b = id_of(&client.create_workspace("b", DOCKER_DEV).await);
    for ws in [&a, &b] {
        client.wait_for_build(ws, "running").await;
        client.build(ws, json!({ "transition": "stop" })).await.expect(201);
        client.wait_for_build(ws, "stopped").await;
    }
    sim.never_connect_next_start(Some(b.parse().unwrap()));
    for ws in [&a, &b] {
        client.build(ws, json!({ "transition": "start" })).await.expect(201);
        client.wait_for_build(ws, "running").await;
    }
    let agent_a = id_of(&client.agents(&a).await[0]);
    let agent_b = id_of(&client.agents(&b).await[0]);
    client.wait_for_agent(&agent_a, "connected", None).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.agent(&agent_b).await["status"], "connecting");
}

#[tokio::test]
async fn a_failing_startup_script_ends_in_start_error_for_the_workspace_asked_for() {
    let (_sim, client) = start_with(observable()).await;
    let control = client.with_token(None);
    let a = id_of(&client.create_workspace("a", DOCKER_DEV).await);
    let b = id_of(&client.create_workspace("b", DOCKER_DEV).await);
    for ws in [&a, &b] {
        client.wait_for_build(ws, "running").await;
        client.build(ws, json!({ "transition": "stop" })).await.expect(201);
        client.wait_for_build(ws, "stopped").await;
    }
    control.post(&format!("/sim/workspaces/{b}/fail-startup"), json!({})).await.expect(204);
    for ws in [&a, &b] {
        client.build(ws, json!({ "transition": "start" })).await.expect(201);
        client.wait_for_build(ws, "running").await;
    }
    let agent_a = id_of(&client.agents(&a).await[0]);
    let agent_b = id_of(&client.agents(&b).await[0]);
    client.wait_for_agent(&agent_b, "connected", Some("starting")).await;
    let failed = client.wait_for_agent(&agent_b, "connected", Some("start_error")).await;
    assert_eq!(failed["health"]["reason"], "agent startup script exited with an error");
    assert_eq!(failed["health"]["healthy"], false);
    assert!(failed["ready_at"].is_string(), "coderd stamps ready_at when the startup ends: {failed}");
    client.wait_for_agent(&agent_a, "connected", Some("ready")).await;

    // The rule is used up: the next start's startup succeeds.
    client.build(&b, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&b, "stopped").await;
    client.build(&b, json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&b, "running").await;
    let fresh = id_of(&client.agents(&b).await[0]);
    client.wait_for_agent(&fresh, "connected", Some("ready")).await;
}

#[tokio::test]
async fn partitioned_probe_hangs_then_fails_while_status_stays_connected() {
    let timings = Timings { dial_limit: Duration::from_millis(1200), ..Timings::fast() };
    let (sim, client) = start_with(timings).await;
    let ws = sim.workspace_id("bob", "existing-dev").unwrap();
    let agent_id = id_of(&client.agents(&ws.to_string()).await[0]);

    sim.partition_probe(ws, true);
    let started = Instant::now();
    let failed = client.probe(&agent_id).await.expect(500);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1200), "hangs for the dial limit, took {waited:?}");
    assert!(waited < Duration::from_secs(3), "then answers, took {waited:?}");
    assert_eq!(failed["message"], "Internal error dialing workspace agent.");
    assert!(failed["detail"].as_str().is_some_and(|detail| !detail.is_empty()));
    assert_eq!(client.agent(&agent_id).await["status"], "connected", "heartbeats still arrive");

    // A client that gives up first just sees a timeout.
    let impatient = client.with_timeout(Duration::from_millis(200));
    let outcome = impatient.try_get(&format!("/api/v2/workspaceagents/{agent_id}/listening-ports")).await;
    assert!(matches!(&outcome, Err(err) if err.is_timeout()), "{outcome:?}");

    sim.partition_probe(ws, false);
    let started = Instant::now();
    client.probe(&agent_id).await.expect(200);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn dead_agent_probe_hangs_first_then_is_refused_fast() {
    let timings = Timings {
        dial_limit: Duration::from_millis(500),
        inactive_timeout: Duration::from_millis(1500),
        ..Timings::fast()
    };
    let (sim, client) = start_with(timings).await;
    let ws = sim.workspace_id("bob", "existing-dev").unwrap();
    let agent_id = id_of(&client.agents(&ws.to_string()).await[0]);
    sim.kill_agent(ws);
    let killed_at = Instant::now();

    // Within the inactive timeout coderd still sees it connected and dials.
    let started = Instant::now();
    let failed = client.probe(&agent_id).await.expect(500);
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(failed["message"], "Internal error dialing workspace agent.");

    client.wait_for_agent(&agent_id, "disconnected", None).await;
    // coderd notices after the inactive timeout since the last heartbeat,
    // which came at most one heartbeat interval before the kill.
    let noticed = killed_at.elapsed();
    assert!(noticed >= Duration::from_millis(1500 - 250), "noticed too early: {noticed:?}");
    assert!(noticed < Duration::from_millis(1500 + 500), "noticed too late: {noticed:?}");
    let started = Instant::now();
    let refused = client.probe(&agent_id).await.expect(400);
    assert!(started.elapsed() < Duration::from_millis(300), "refused without dialing");
    assert_eq!(refused["message"], r#"Agent state is "disconnected", it must be in the "connected" state."#);
}

#[tokio::test]
async fn a_stop_retires_the_agents_and_a_start_makes_new_ones() {
    let (_sim, client) = start().await;
    let id = id_of(&client.create_workspace("cycle", DOCKER_DEV).await);
    client.wait_for_build(&id, "running").await;
    let old = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&old, "connected", Some("ready")).await;

    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    let stopped = client.wait_for_build(&id, "stopped").await;
    assert_eq!(stopped["latest_build"]["resources"], json!([]), "stop builds have no agents");
    assert_eq!(stopped["health"], json!({ "healthy": true, "failing_agents": [] }));
    let retired = client.agent(&old).await;
    assert_eq!(retired["status"], "disconnected");
    assert_eq!(retired["lifecycle_state"], "off");
    assert_eq!(retired["health"]["reason"], "agent is not running");

    client.build(&id, json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&id, "running").await;
    let new = id_of(&client.agents(&id).await[0]);
    assert_ne!(new, old, "every start build makes new agents");
    client.wait_for_agent(&new, "connected", None).await;
}

#[tokio::test]
async fn a_template_can_lay_out_several_agents() {
    let (_sim, client) = start().await;
    let id = id_of(&client.create_workspace("chat", CHAT_DEV).await);
    client.wait_for_build(&id, "running").await;
    let agents = client.agents(&id).await;
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["main", "dev-coderd-chat", "devcontainer"]);
    assert!(agents[0]["parent_id"].is_null());
    assert!(agents[1]["parent_id"].is_null());
    assert_eq!(agents[2]["parent_id"], agents[0]["id"], "the dev container is a sub-agent of main");
}

#[tokio::test]
async fn unknown_agents_are_not_found() {
    let (_sim, client) = start().await;
    let missing = Uuid::new_v4();
    client.get(&format!("/api/v2/workspaceagents/{missing}")).await.expect(404);
    client.probe(&missing.to_string()).await.expect(404);
    let bad = client.get("/api/v2/workspaceagents/not-a-uuid").await.expect(400);
    assert_eq!(bad["message"], r#"Invalid UUID "not-a-uuid"."#);
}

#[tokio::test]
async fn an_external_templates_agent_is_on_a_coder_external_agent_resource() {
    let (_sim, client) = start().await;
    let ws = client.create_workspace("laptop", EXTERNAL_DEV).await;
    let ws = client.wait_for_build(&id_of(&ws), "running").await;
    let resources = ws["latest_build"]["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0]["type"], "coder_external_agent", "coderd's type for an agent run elsewhere");
    assert_eq!(resources[0]["agents"][0]["name"], "main");
    let normal = client.create_workspace("box", DOCKER_DEV).await;
    let normal = client.wait_for_build(&id_of(&normal), "running").await;
    assert_eq!(normal["latest_build"]["resources"][0]["type"], "docker_container");
}
