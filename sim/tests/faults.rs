//! Injected faults, the request log, the `/sim` control endpoints and the binary.

mod support;

use std::time::{Duration, Instant};

use coder_sim::{Fault, FaultKind, Seed};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn status_faults_answer_then_wear_off_and_are_logged() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/workspaces", FaultKind::Status(503)).method("GET").times(2));
    for _ in 0..2 {
        let err = client.get("/api/v2/workspaces").await.expect(503);
        assert!(err["message"].as_str().is_some(), "a Coder error body");
    }
    client.get("/api/v2/workspaces").await.expect(200);
    // A POST does not match a GET-only fault.
    sim.inject_fault(Fault::new("/api/v2/users/me/workspaces", FaultKind::Status(500)).method("GET"));
    client.create_workspace("fine", DOCKER_DEV).await;

    let statuses: Vec<(String, u16)> =
        sim.requests().into_iter().map(|r| (format!("{} {}", r.method, r.path), r.status)).collect();
    assert_eq!(
        statuses,
        [
            ("GET /api/v2/workspaces".to_owned(), 503),
            ("GET /api/v2/workspaces".to_owned(), 503),
            ("GET /api/v2/workspaces".to_owned(), 200),
            ("POST /api/v2/users/me/workspaces".to_owned(), 201),
        ]
    );
}

#[tokio::test]
async fn faults_apply_before_authentication() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/users", FaultKind::Status(502)));
    client.with_token(Some("wrong")).get("/api/v2/users/me").await.expect(502);
    sim.clear_faults();
    client.with_token(Some("wrong")).get("/api/v2/users/me").await.expect(401);
}

#[tokio::test]
async fn latency_delays_then_serves() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/users/me", FaultKind::Latency(Duration::from_millis(300))).times(1));
    let started = Instant::now();
    client.get("/api/v2/users/me").await.expect(200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    client.get("/api/v2/users/me").await.expect(200);
    assert!(started.elapsed() < Duration::from_millis(300), "used up");
}

#[tokio::test]
async fn hangs_last_until_cleared() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/workspaces", FaultKind::Hang));
    let impatient = client.with_timeout(Duration::from_millis(300));
    let outcome = impatient.try_get("/api/v2/workspaces").await;
    assert!(outcome.is_err_and(|err| err.is_timeout()), "the request hangs");

    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.get("/api/v2/workspaces").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    sim.clear_faults();
    let reply = tokio::time::timeout(Duration::from_secs(2), waiting).await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "served normally once released");

    // The request whose client gave up is logged as 499 once the server notices.
    let logged = eventually("both hung requests in the log", Duration::from_secs(2), || async {
        let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        (statuses.len() == 2).then_some(statuses)
    })
    .await;
    assert!(logged.contains(&200) && logged.contains(&499), "{logged:?}");
}

#[tokio::test]
async fn the_log_records_queries_and_bodies_but_never_the_token() {
    let (sim, client) = start().await;
    client.get("/api/v2/workspaces?q=owner:me&limit=5").await.expect(200);
    client.create_workspace("logged", DOCKER_DEV).await;
    client.get("/sim/requests").await.expect(200);

    let log = sim.requests();
    assert_eq!(log.len(), 2, "control endpoints are not logged");
    assert_eq!(log[0].query, "q=owner:me&limit=5");
    assert_eq!(log[0].body, None);
    assert_eq!(log[1].body, Some(json!({ "name": "logged", "template_id": DOCKER_DEV })));
    assert!(log[0].at <= log[1].at);
    let serialized = serde_json::to_string(&log).unwrap();
    assert!(!serialized.contains(&sim.token()));

    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn control_endpoints_drive_the_simulator() {
    let (sim, client) = start().await;
    let control = client.with_token(None);
    let ws = control.get("/sim/lookup/bob/existing-dev").await.expect(200);
    let ws_id = ws["id"].as_str().unwrap().to_owned();
    assert_eq!(Some(ws_id.parse().unwrap()), sim.workspace_id("bob", "existing-dev"));
    let agent_id = id_of(&client.agents(&ws_id).await[0]);

    assert_eq!(control.post(&format!("/sim/workspaces/{ws_id}/kill-agent"), json!({})).await.expect(200)["agents"], 1);
    client.wait_for_agent(&agent_id, "disconnected", None).await;
    control.post(&format!("/sim/workspaces/{ws_id}/revive-agent"), json!({})).await.expect(200);
    client.wait_for_agent(&agent_id, "connected", None).await;

    control.post(&format!("/sim/workspaces/{ws_id}/partition-probe"), json!({ "partitioned": true })).await.expect(204);
    let impatient = client.with_timeout(Duration::from_millis(300));
    assert!(impatient.try_get(&format!("/api/v2/workspaceagents/{agent_id}/listening-ports")).await.is_err());
    control
        .post(&format!("/sim/workspaces/{ws_id}/partition-probe"), json!({ "partitioned": false }))
        .await
        .expect(204);
    client.probe(&agent_id).await.expect(200);

    let fault = control
        .post("/sim/faults", json!({ "path_prefix": "/api/v2/users", "kind": { "status": 500 }, "times": 1 }))
        .await
        .expect(201);
    assert!(fault["id"].as_u64().is_some());
    client.get("/api/v2/users/me").await.expect(500);
    client.get("/api/v2/users/me").await.expect(200);
    control.post("/sim/faults", json!({ "path_prefix": "/api/v2/users", "kind": "hang" })).await.expect(201);
    control.delete("/sim/faults").await.expect(204);
    client.get("/api/v2/users/me").await.expect(200);

    control.post("/sim/fail-next-build", json!({ "workspace_id": ws_id, "transition": "stop" })).await.expect(204);
    client.build(&ws_id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&ws_id, "failed").await;
    control.post(&format!("/sim/workspaces/{ws_id}/never-connect"), json!({})).await.expect(204);
    client.build(&ws_id, json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&ws_id, "running").await;
    let stuck = id_of(&client.agents(&ws_id).await[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.agent(&stuck).await["status"], "connecting");

    let builds = control.get(&format!("/sim/workspaces/{ws_id}/builds")).await.expect(200);
    let transitions: Vec<&str> = builds.as_array().unwrap().iter().map(|b| b["transition"].as_str().unwrap()).collect();
    assert_eq!(transitions, ["start", "stop", "start"]);

    let created = control
        .post("/sim/workspaces", json!({ "owner": "alice", "name": "outside", "template": "docker-dev" }))
        .await
        .expect(201);
    assert_eq!(Some(created["id"].as_str().unwrap().parse().unwrap()), sim.workspace_id("alice", "outside"));

    let log: Value = control.get("/sim/requests").await.expect(200);
    assert!(log.as_array().unwrap().iter().all(|r| r["path"].as_str().unwrap().starts_with("/api/")));
    control.delete("/sim/requests").await.expect(204);
    assert!(sim.requests().is_empty());

    control.post("/sim/token", json!({ "token": "next" })).await.expect(204);
    client.get("/api/v2/users/me").await.expect(401);
    control.post("/sim/workspaces/not-a-uuid/kill-agent", json!({})).await.expect(400);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let (sim, client) = start().await;
    let other = sim.clone();
    drop(sim);
    client.get("/api/v2/users/me").await.expect(200);
    drop(other);
    eventually("the server to stop", Duration::from_secs(2), || async {
        client.try_get("/api/v2/users/me").await.is_err().then_some(())
    })
    .await;
}

#[test]
fn seeds_load_from_json_and_yaml() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/default.json");
    let from_file = Seed::from_file(&path).unwrap();
    assert_eq!(from_file, Seed::default());
    assert_eq!(from_file.token_user, "admin");

    let yaml = r#"
token_user: me
users: [{username: me}]
organizations: [{name: acme, is_default: true}]
templates:
  - name: tiny
    organization: acme
    active_version: v1
    versions:
      - name: v1
        agents: [{name: main}, {name: box-coderd-chat}]
"#;
    let dir = std::env::temp_dir().join(format!("coder-sim-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("seed.yaml");
    std::fs::write(&file, yaml).unwrap();
    let seed = Seed::from_file(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(seed.templates[0].versions[0].agents[1].name, "box-coderd-chat");
    assert_eq!(seed.templates[0].versions[0].resource.kind, "docker_container");
}

#[test]
fn the_readme_seed_example_is_a_valid_seed() {
    let readme = include_str!("../README.md");
    let start = readme.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let seed: Seed = serde_yaml::from_str(&readme[start..end]).unwrap();
    assert_eq!(seed.templates[0].versions[0].agents[2].parent.as_deref(), Some("main"));
}

#[tokio::test]
async fn a_seed_with_a_broken_reference_is_refused() {
    let mut seed = Seed::default();
    seed.templates[0].active_version = "v9".to_owned();
    let config = coder_sim::SimConfig { seed, ..coder_sim::SimConfig::fast() };
    let err = coder_sim::Simulator::start(config).await.expect_err("a bad seed fails");
    assert!(format!("{err:#}").contains("v9"), "{err:#}");
}

#[tokio::test]
async fn the_binary_prints_its_url_and_serves() {
    use tokio::io::AsyncBufReadExt as _;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coder-sim"))
        .args(["--listen", "127.0.0.1:0", "--token", "bin-token", "--fast"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the binary prints its URL")
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");
    let client = Client::new(&url, "bin-token");
    assert_eq!(client.get("/api/v2/users/me").await.expect(200)["username"], "admin");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_hostile_list_claims_a_count_and_pads_every_page() {
    let (sim, client) = start().await;
    client.create_workspace("real", DOCKER_DEV).await;
    sim.inject_fault(
        Fault::new("/api/v2/workspaces?", FaultKind::HostileList { count: 1_000_000_000, padding: 3 }).method("GET"),
    );
    // Every page starts over, whatever its offset.
    let page = client.get("/api/v2/workspaces?limit=1&offset=500").await.expect(200);
    assert_eq!(page["count"], 1_000_000_000);
    let workspaces = page["workspaces"].as_array().unwrap();
    assert_eq!(workspaces.len(), 4, "a real one and three made up, whatever the limit");
    // A real one first (the seeded one runs, so it comes first).
    assert_eq!(workspaces[0]["name"], "existing-dev");
    assert!(
        workspaces[1..].iter().all(|w| w["id"] != workspaces[0]["id"] && w["latest_build"]["workspace_id"] == w["id"])
    );
}

#[tokio::test]
async fn requests_in_flight_are_counted_until_answered() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/users/me", FaultKind::Hang));
    let hanging = tokio::spawn({
        let client = client.clone();
        async move { client.get("/api/v2/users/me").await.status }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.in_flight_under("/api/v2/users/") == 0 {
        assert!(Instant::now() < deadline, "the hanging request is counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.in_flight_under("/api/v2/workspaces"), 0);
    sim.clear_faults();
    assert_eq!(hanging.await.unwrap(), 200);
    assert_eq!(sim.in_flight_under("/api/v2/"), 0);
}

#[tokio::test]
async fn a_huge_body_is_streamed_as_long_as_asked() {
    let (sim, client) = start().await;
    sim.inject_fault(Fault::new("/api/v2/workspaces", FaultKind::HugeBody(3 << 20)).method("GET").times(1));
    let reply = client.get("/api/v2/workspaces").await;
    assert_eq!(reply.status, 200);
    let text = reply.body.as_str().expect("a JSON string");
    assert_eq!(text.len() + 2, 3 << 20);
}
