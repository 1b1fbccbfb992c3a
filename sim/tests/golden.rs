//! Every endpoint's response has exactly the key set of its committed golden
//! file, and the golden files hold every key docs/coder-api.md names.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn workspace_build_and_agent_shapes() {
    let (sim, client) = start().await;
    let created = client
        .post(
            "/api/v2/users/me/workspaces",
            json!({
                "name": "golden",
                "template_id": DOCKER_DEV,
                "ttl_ms": 3_600_000,
                "autostart_schedule": "CRON_TZ=UTC 30 9 * * 1-5",
            }),
        )
        .await
        .expect(201);
    assert_golden("workspace_created.json", &created);
    let id = id_of(&created);

    client.wait_for_build(&id, "running").await;
    let agent_id = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&agent_id, "connected", Some("ready")).await;
    let ws = client.workspace(&id).await;
    assert_golden("workspace.json", &ws);
    assert_golden("workspace_build.json", &ws["latest_build"]);

    let builds = client.get(&format!("/api/v2/workspaces/{id}/builds")).await.expect(200);
    assert_golden("workspace_builds.json", &builds);
    let by_name = client.get("/api/v2/users/me/workspace/golden").await.expect(200);
    assert_eq!(key_paths(&by_name), key_paths(&ws));

    // All of an agent's timestamps are set once it has connected and dropped.
    sim.kill_agent(id.parse().unwrap());
    let agent = client.wait_for_agent(&agent_id, "disconnected", None).await;
    assert_golden("workspace_agent.json", &agent);
}

#[tokio::test]
async fn failed_and_canceled_build_shapes() {
    let (sim, client) = start().await;
    let ws = client.create_workspace("golden", DOCKER_DEV).await;
    let id = id_of(&ws);
    client.wait_for_build(&id, "running").await;

    sim.fail_next_build_with(
        Some(id.parse().unwrap()),
        Some("stop"),
        "terraform: boom",
        Some("REQUIRED_TEMPLATE_VARIABLES"),
    );
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    let ws = client.wait_for_build(&id, "failed").await;
    assert_golden("workspace_build_failed.json", &ws["latest_build"]);

    let build = client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    let build_id = id_of(&build);
    eventually("job running", Duration::from_secs(2), || async {
        let build = client.get(&format!("/api/v2/workspacebuilds/{build_id}")).await.expect(200);
        (build["job"]["status"] == "running").then_some(())
    })
    .await;
    let canceled = client.patch(&format!("/api/v2/workspacebuilds/{build_id}/cancel")).await.expect(200);
    assert_golden("cancel.json", &canceled);
    let ws = client.wait_for_build(&id, "canceled").await;
    assert_golden("workspace_build_canceled.json", &ws["latest_build"]);
}

#[tokio::test]
async fn template_user_and_list_shapes() {
    let (_sim, client) = start().await;
    let template = client.get("/api/v2/organizations/coder/templates/docker-dev").await.expect(200);
    assert_golden("template.json", &template);
    let by_id = client.get(&format!("/api/v2/templates/{DOCKER_DEV}")).await.expect(200);
    assert_eq!(key_paths(&by_id), key_paths(&template));

    let version = client.get(&format!("/api/v2/templateversions/{DOCKER_DEV_V2}")).await.expect(200);
    assert_golden("template_version.json", &version);
    let parameters = client.get(&format!("/api/v2/templateversions/{DOCKER_DEV_V2}/rich-parameters")).await.expect(200);
    assert_golden("rich_parameters.json", &parameters);
    let presets = client.get(&format!("/api/v2/templateversions/{DOCKER_DEV_V2}/presets")).await.expect(200);
    assert_golden("presets.json", &presets);

    assert_golden("user.json", &client.get("/api/v2/users/me").await.expect(200));
    assert_golden("organization.json", &client.get("/api/v2/organizations/coder").await.expect(200));
    assert_golden("organizations.json", &client.get("/api/v2/users/me/organizations").await.expect(200));

    let list = client.get("/api/v2/workspaces?q=owner:bob").await.expect(200);
    assert_golden("workspaces_list.json", &list);
}

#[tokio::test]
async fn error_and_probe_shapes() {
    let (sim, client) = start().await;
    let invalid =
        client.post("/api/v2/users/me/workspaces", json!({ "name": "gpu", "template_id": GPU_BOX })).await.expect(400);
    assert_golden("error_validation.json", &invalid);
    let unauthorized = client.with_token(None).get("/api/v2/users/me").await.expect(401);
    assert_golden("error_unauthorized.json", &unauthorized);

    let bob_ws = sim.workspace_id("bob", "existing-dev").unwrap().to_string();
    let agent_id = id_of(&client.agents(&bob_ws).await[0]);
    assert_golden("listening_ports.json", &client.probe(&agent_id).await.expect(200));
    let build_info = client.with_token(None).get("/api/v2/buildinfo").await.expect(200);
    assert_golden("buildinfo.json", &build_info);
}

// ----- the golden files themselves against docs/coder-api.md -----

fn golden_keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().flat_map(|name| key_paths(&read_golden(name))).collect()
}

#[track_caller]
fn assert_has_keys(names: &[&str], required: &[&str]) {
    let keys = golden_keys(names);
    let missing: Vec<_> = required.iter().filter(|key| !keys.contains(**key)).collect();
    assert!(missing.is_empty(), "{names:?} lack keys docs/coder-api.md names: {missing:?}");
}

const AGENT_KEYS: &[&str] = &[
    "id",
    "name",
    "parent_id",
    "status",
    "lifecycle_state",
    "created_at",
    "first_connected_at",
    "last_connected_at",
    "disconnected_at",
    "connection_timeout_seconds",
    "health",
    "health.healthy",
    "health.reason",
];

const BUILD_KEYS: &[&str] = &[
    "id",
    "build_number",
    "workspace_id",
    "workspace_name",
    "workspace_owner_name",
    "template_version_id",
    "transition",
    "status",
    "reason",
    "created_at",
    "updated_at",
    "job",
    "resources",
    "deadline",
];

const JOB_KEYS: &[&str] = &[
    "id",
    "status",
    "error",
    "error_code",
    "created_at",
    "started_at",
    "completed_at",
    "canceled_at",
    "queue_position",
];

const RESOURCE_KEYS: &[&str] = &["id", "name", "type", "agents"];

fn prefixed(prefix: &str, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| format!("{prefix}{key}")).collect()
}

#[test]
fn workspace_goldens_hold_the_documented_keys() {
    let workspace = [
        "id",
        "name",
        "owner_id",
        "owner_name",
        "organization_id",
        "template_id",
        "template_name",
        "template_active_version_id",
        "template_require_active_version",
        "latest_build",
        "outdated",
        "automatic_updates",
        "ttl_ms",
        "health",
        "health.healthy",
        "health.failing_agents",
        "deleting_at",
        "dormant_at",
    ];
    assert_has_keys(&["workspace.json"], &workspace);
    let mut nested = prefixed("latest_build.", BUILD_KEYS);
    nested.extend(prefixed("latest_build.resources[].", RESOURCE_KEYS));
    nested.extend(prefixed(
        "latest_build.resources[].agents[].",
        &["id", "name", "parent_id", "status", "lifecycle_state"],
    ));
    let nested: Vec<&str> = nested.iter().map(String::as_str).collect();
    assert_has_keys(&["workspace.json"], &nested);
    let listed: Vec<String> = prefixed("workspaces[].", &workspace);
    let mut listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    listed.push("count");
    assert_has_keys(&["workspaces_list.json"], &listed);
}

#[test]
fn build_goldens_hold_the_documented_keys() {
    assert_has_keys(&["workspace_build.json"], BUILD_KEYS);
    let resources = prefixed("resources[].", RESOURCE_KEYS);
    assert_has_keys(&["workspace_build.json"], &resources.iter().map(String::as_str).collect::<Vec<_>>());
    // Like codersdk, a job omits empty optional keys, so together the
    // succeeded, failed and canceled builds show them all.
    let job = prefixed("job.", JOB_KEYS);
    assert_has_keys(
        &["workspace_build.json", "workspace_build_failed.json", "workspace_build_canceled.json"],
        &job.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn agent_golden_holds_the_documented_keys() {
    assert_has_keys(&["workspace_agent.json"], AGENT_KEYS);
}

#[test]
fn template_and_preset_goldens_hold_the_documented_keys() {
    assert_has_keys(
        &["template.json"],
        &[
            "id",
            "name",
            "organization_id",
            "active_version_id",
            "require_active_version",
            "deprecated",
            "deprecation_message",
        ],
    );
    assert_has_keys(
        &["presets.json"],
        &[
            "[].ID",
            "[].Name",
            "[].Parameters",
            "[].Parameters[].Name",
            "[].Parameters[].Value",
            "[].Default",
            "[].DesiredPrebuildInstances",
            "[].Description",
            "[].Icon",
        ],
    );
    let presets = read_golden("presets.json");
    let snake_case = key_paths(&presets).into_iter().any(|key| key.contains('_'));
    assert!(!snake_case, "preset keys are PascalCase on the wire");
    assert_has_keys(&["template_version.json"], &["id", "template_id", "name", "job", "job.status"]);
    assert_has_keys(
        &["rich_parameters.json"],
        &["[].name", "[].type", "[].default_value", "[].required", "[].mutable", "[].options"],
    );
}

#[test]
fn user_error_and_probe_goldens_hold_the_documented_keys() {
    assert_has_keys(&["user.json"], &["id", "username"]);
    assert_has_keys(&["organization.json"], &["id", "name"]);
    assert_has_keys(&["organizations.json"], &["[].id", "[].name"]);
    assert_has_keys(
        // coderd v2.36.1 sends no detail with parameter validations.
        &["error_validation.json"],
        &["message", "validations", "validations[].field", "validations[].detail"],
    );
    assert_has_keys(&["error_unauthorized.json"], &["message"]);
    assert_has_keys(&["listening_ports.json"], &["err", "ports"]);
    let probe: Value = read_golden("listening_ports.json");
    assert_eq!(probe, json!({ "err": "", "ports": [] }));
}

#[test]
fn chat_goldens_hold_the_documented_keys() {
    let chat = [
        "id",
        "organization_id",
        "owner_id",
        "owner_username",
        "workspace_id",
        "build_id",
        "agent_id",
        "title",
        "status",
        "created_at",
        "updated_at",
        "archived",
        "labels",
        "context",
        "context.dirty",
        "context.resources",
        "context.resources[].source",
        "context.resources[].kind",
        "children",
        "children[].id",
        "children[].status",
        "children[].parent_chat_id",
        "children[].root_chat_id",
        "children[].children",
        "client_type",
    ];
    assert_has_keys(&["chat.json"], &chat);
    assert_has_keys(&["chat_dirty.json"], &["context.dirty", "context.dirty_since"]);
    assert_has_keys(&["chat_interrupted.json"], &["id", "status", "children"]);
}
