//! coderd's rules on the Coder endpoints: auth, conflicts, validation,
//! versions, presets, search, deletion and cancellation.

mod support;

use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

#[tokio::test]
async fn tokens_are_checked_and_can_rotate() {
    let (sim, client) = start().await;
    let missing = client.with_token(None).get("/api/v2/users/me").await.expect(401);
    assert!(missing["message"].as_str().unwrap().contains("signed out"));
    let wrong = client.with_token(Some("nope")).get("/api/v2/users/me").await.expect(401);
    assert_eq!(wrong["detail"], "API key is invalid.");
    assert_eq!(client.get("/api/v2/users/me").await.expect(200)["username"], "admin");

    sim.set_token("rotated");
    client.get("/api/v2/users/me").await.expect(401);
    let rotated = client.with_token(Some("rotated"));
    rotated.get("/api/v2/users/me").await.expect(200);
    assert_eq!(sim.token(), "rotated");
}

#[tokio::test]
async fn users_and_organizations() {
    let (_sim, client) = start().await;
    let me = client.get("/api/v2/users/me").await.expect(200);
    let alice = client.get("/api/v2/users/alice").await.expect(200);
    assert_eq!(alice["username"], "alice");
    let by_id = client.get(&format!("/api/v2/users/{}", alice["id"].as_str().unwrap())).await.expect(200);
    assert_eq!(by_id["id"], alice["id"]);
    assert_ne!(me["id"], alice["id"]);
    client.get("/api/v2/users/nobody").await.expect(404);

    let orgs = client.get("/api/v2/users/me/organizations").await.expect(200);
    assert_eq!(orgs[0]["name"], "coder");
    let org = client.get("/api/v2/organizations/coder").await.expect(200);
    let by_id = client.get(&format!("/api/v2/organizations/{}", org["id"].as_str().unwrap())).await.expect(200);
    assert_eq!(by_id["name"], "coder");
    client.get("/api/v2/organizations/elsewhere").await.expect(404);
    assert_eq!(client.get("/api/v2/nothing/here").await.expect(404)["message"], "Route not found.");
}

#[tokio::test]
async fn templates_versions_and_presets() {
    let (_sim, client) = start().await;
    let template = client.get("/api/v2/organizations/coder/templates/docker-dev").await.expect(200);
    assert_eq!(template["id"], DOCKER_DEV);
    assert_eq!(template["active_version_id"], DOCKER_DEV_V2);
    assert_eq!(template["require_active_version"], false);
    client.get("/api/v2/organizations/coder/templates/nope").await.expect(404);
    let chat = client.get(&format!("/api/v2/templates/{CHAT_DEV}")).await.expect(200);
    assert_eq!(chat["require_active_version"], true);
    let legacy = client.get(&format!("/api/v2/templates/{LEGACY_VM}")).await.expect(200);
    assert_eq!(legacy["deprecated"], true);
    assert_eq!(legacy["deprecation_message"], "Use docker-dev instead.");

    let presets = client.get(&format!("/api/v2/templateversions/{DOCKER_DEV_V2}/presets")).await.expect(200);
    let presets = presets.as_array().unwrap();
    let names: Vec<&str> = presets.iter().map(|p| p["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["small", "standard", "large"]);
    assert_eq!(presets[1]["Default"], true);
    assert_eq!(presets[2]["ID"], DOCKER_DEV_V2_LARGE);
    assert_eq!(presets[2]["DesiredPrebuildInstances"], 2);
    assert!(presets[0]["DesiredPrebuildInstances"].is_null());
    assert_eq!(presets[2]["Parameters"], json!([{"Name": "cpu", "Value": "8"}, {"Name": "memory", "Value": "16"}]));
    assert!(presets[0].get("id").is_none(), "no snake_case keys");

    let params = client.get(&format!("/api/v2/templateversions/{DOCKER_DEV_V2}/rich-parameters")).await.expect(200);
    let cpu = &params[0];
    assert_eq!(
        (cpu["name"].as_str(), cpu["validation_min"].as_i64(), cpu["validation_max"].as_i64()),
        (Some("cpu"), Some(1), Some(16))
    );
    assert_eq!(params[2]["mutable"], false);
}

#[tokio::test]
async fn create_validates_like_coderd() {
    let (_sim, client) = start().await;
    let create = |body: Value| {
        let client = client.clone();
        async move { client.post("/api/v2/users/me/workspaces", body).await }
    };

    let unknown = Uuid::new_v4();
    let err = create(json!({ "name": "x", "template_id": unknown })).await.expect(400);
    assert!(err["message"].as_str().unwrap().contains(&unknown.to_string()), "{err}");

    let err = create(json!({ "name": "Bad_Name", "template_id": DOCKER_DEV })).await.expect(400);
    assert_eq!(err["validations"][0]["field"], "name");

    let err = create(
        json!({ "name": "x", "template_id": DOCKER_DEV, "rich_parameter_values": [{"name": "cpu", "value": "17"}] }),
    )
    .await
    .expect(400);
    assert_eq!(err["validations"][0]["field"], "cpu");
    assert_eq!(
        err["validations"][0]["detail"],
        "Invalid parameter value according to 'validation' block; value 17 is more than the maximum 16"
    );

    let err = create(json!({
        "name": "x", "template_id": DOCKER_DEV,
        "rich_parameter_values": [{"name": "memory", "value": "3"}, {"name": "region", "value": "mars"}],
    }))
    .await
    .expect(400);
    let fields: Vec<&str> =
        err["validations"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["memory", "region"]);
    assert_eq!(err["message"], "Unable to validate parameters");

    let err = create(json!({ "name": "x", "template_id": GPU_BOX })).await.expect(400);
    assert_eq!(
        err["validations"],
        json!([{ "field": "gpu_type", "detail": "Required parameter not provided; parameter value is null" }])
    );

    let err =
        create(json!({ "name": "x", "template_id": DOCKER_DEV, "template_version_preset_id": DOCKER_DEV_V1_SMALL }))
            .await
            .expect(400);
    assert_eq!(err["validations"][0]["field"], "template_version_preset_id");

    let err = create(json!({ "name": "x", "template_id": LEGACY_VM })).await.expect(403);
    assert!(err["message"].as_str().unwrap().contains("deprecated"));

    let err =
        create(json!({ "name": "x", "template_id": CHAT_DEV, "template_version_id": CHAT_DEV_V1 })).await.expect(403);
    assert_eq!(err["message"], "cannot use non-active version");

    let err = create(json!({ "name": "x", "template_id": DOCKER_DEV, "ttl_ms": 5 })).await.expect(400);
    assert_eq!(err["validations"][0]["field"], "ttl_ms");

    create(json!({ "name": "taken", "template_id": DOCKER_DEV })).await.expect(201);
    let err = create(json!({ "name": "taken", "template_id": DOCKER_DEV })).await.expect(409);
    assert_eq!(err["message"], r#"Workspace "taken" already exists."#);
    // Another owner may use the name.
    client
        .post("/api/v2/users/alice/workspaces", json!({ "name": "taken", "template_id": DOCKER_DEV }))
        .await
        .expect(201);

    let bad_json = client.post("/api/v2/users/me/workspaces", json!("nope")).await.expect(400);
    assert_eq!(bad_json["message"], "Request body must be valid JSON.");
}

#[tokio::test]
async fn create_applies_versions_presets_and_parameters() {
    let (sim, client) = start().await;
    // Go clients send the nil UUID for ids they leave unset.
    let ws = client
        .post(
            "/api/v2/users/alice/workspaces",
            json!({
                "name": "preset",
                "template_id": DOCKER_DEV,
                "template_version_id": "00000000-0000-0000-0000-000000000000",
                "template_version_preset_id": DOCKER_DEV_V2_LARGE,
                "rich_parameter_values": [{"name": "cpu", "value": "2"}, {"name": "repo_url", "value": "https://git.example/x"}],
                "automatic_updates": "always",
            }),
        )
        .await
        .expect(201);
    assert_eq!(ws["owner_name"], "alice");
    assert_eq!(ws["template_active_version_id"], DOCKER_DEV_V2);
    assert_eq!(ws["latest_build"]["template_version_id"], DOCKER_DEV_V2);
    assert_eq!(ws["latest_build"]["transition"], "start");
    assert_eq!(ws["latest_build"]["build_number"], 1);
    assert_eq!(ws["automatic_updates"], "always");
    assert!(ws.get("ttl_ms").is_none(), "no TTL unless asked or the template has one");

    let builds = sim.builds(id_of(&ws).parse().unwrap());
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].preset_id.map(|id| id.to_string()).as_deref(), Some(DOCKER_DEV_V2_LARGE));
    let value = |name: &str| builds[0].parameters.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(value("cpu").as_deref(), Some("8"), "the preset wins over a given value");
    assert_eq!(value("repo_url").as_deref(), Some("https://git.example/x"));
    assert_eq!(value("region").as_deref(), Some("us-east"), "defaults fill the rest");

    // The deprecated route, with an explicit old version.
    let old = client
        .post(
            "/api/v2/organizations/coder/members/me/workspaces",
            json!({ "name": "old", "template_version_id": DOCKER_DEV_V1 }),
        )
        .await
        .expect(201);
    assert_eq!(old["template_id"], DOCKER_DEV);
    assert_eq!(old["outdated"], true);

    let gpu = client
        .post(
            "/api/v2/users/me/workspaces",
            json!({ "name": "gpu", "template_id": GPU_BOX, "rich_parameter_values": [{"name": "gpu_type", "value": "h100"}] }),
        )
        .await
        .expect(201);
    assert_eq!(gpu["ttl_ms"], 28_800_000, "the template's default TTL");
}

#[tokio::test]
async fn builds_conflict_while_one_is_active() {
    let (sim, client) = start().await;
    let id = id_of(&client.create_workspace("busy", DOCKER_DEV).await);
    let err = client.build(&id, json!({ "transition": "stop" })).await.expect(409);
    assert_eq!(err["message"], "A workspace build is already active.");

    client.wait_for_build(&id, "running").await;
    let stop = client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    assert_eq!(stop["build_number"], 2);
    assert_eq!(stop["status"], "pending");
    assert_eq!(stop["job"]["status"], "pending");
    assert_eq!(stop["template_version_id"], DOCKER_DEV_V2, "a build without a version keeps the current one");
    client.build(&id, json!({ "transition": "start" })).await.expect(409);
    let builds = sim.builds(id.parse().unwrap());
    let transitions: Vec<&str> = builds.iter().map(|b| b.transition.as_str()).collect();
    assert_eq!(transitions, ["start", "stop"], "refused builds are not recorded");

    let err = client.build(&id, json!({ "transition": "reboot" })).await.expect(400);
    assert_eq!(err["validations"][0]["field"], "transition");
    client.build(&Uuid::new_v4().to_string(), json!({ "transition": "stop" })).await.expect(404);
}

#[tokio::test]
async fn build_statuses_follow_the_job() {
    let (sim, client) = start().await;
    let id = id_of(&client.create_workspace("statuses", DOCKER_DEV).await);
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while seen.last().map(String::as_str) != Some("running") {
        assert!(std::time::Instant::now() < deadline, "the start build never finished: {seen:?}");
        let status = client.workspace(&id).await["latest_build"]["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ["pending", "starting", "running"]);

    sim.fail_next_build(Some(id.parse().unwrap()), Some("stop"));
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    let failed = client.wait_for_build(&id, "failed").await;
    assert_eq!(failed["latest_build"]["job"]["status"], "failed");
    assert!(failed["latest_build"]["job"]["error"].as_str().unwrap().contains("exit status 1"));
    // A failed stop leaves the agent running, so the stop is simply retried.
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;

    let listed = client.get(&format!("/api/v2/workspaces/{id}/builds")).await.expect(200);
    let numbers: Vec<i64> = listed.as_array().unwrap().iter().map(|b| b["build_number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1], "newest first");
    let limited = client.get(&format!("/api/v2/workspaces/{id}/builds?limit=1&offset=1")).await.expect(200);
    assert_eq!(limited[0]["build_number"], 2);
    let build_id = id_of(&listed[0]);
    let by_id = client.get(&format!("/api/v2/workspacebuilds/{build_id}")).await.expect(200);
    assert_eq!(by_id["status"], "stopped");
}

#[tokio::test]
async fn cancel_stops_an_active_job() {
    let (_sim, client) = start().await;
    let ws = client.create_workspace("cancel", DOCKER_DEV).await;
    let build_id = id_of(&ws["latest_build"]);
    client.patch(&format!("/api/v2/workspacebuilds/{build_id}/cancel")).await.expect(200);
    let build = client.get(&format!("/api/v2/workspacebuilds/{build_id}")).await.expect(200);
    assert_eq!(build["status"], "canceled", "a pending job ends at once");
    assert!(build["job"].get("started_at").is_none());
    let again = client.patch(&format!("/api/v2/workspacebuilds/{build_id}/cancel")).await.expect(400);
    assert_eq!(again["message"], "Job has already been marked as canceled!");
    // Nothing is active any more.
    client.build(&id_of(&ws), json!({ "transition": "start" })).await.expect(201);
}

#[tokio::test]
async fn require_active_version_gates_starts_but_not_stops() {
    let (_sim, client) = start().await;
    let id = id_of(&client.create_workspace("chat", CHAT_DEV).await);
    client.wait_for_build(&id, "running").await;
    let stop = client.build(&id, json!({ "transition": "stop", "template_version_id": CHAT_DEV_V1 })).await.expect(201);
    assert_eq!(stop["template_version_id"], CHAT_DEV_V1);
    client.wait_for_build(&id, "stopped").await;

    let err = client.build(&id, json!({ "transition": "start", "template_version_id": CHAT_DEV_V1 })).await.expect(403);
    assert!(err["detail"].as_str().unwrap().contains(CHAT_DEV_V2));
    // Without a version the start reuses the current (now old) one, which is refused too.
    client.build(&id, json!({ "transition": "start" })).await.expect(403);
    let start =
        client.build(&id, json!({ "transition": "start", "template_version_id": CHAT_DEV_V2 })).await.expect(201);
    assert_eq!(start["template_version_id"], CHAT_DEV_V2);

    client.wait_for_build(&id, "running").await;
    let err =
        client.build(&id, json!({ "transition": "stop", "template_version_id": DOCKER_DEV_V1 })).await.expect(400);
    assert_eq!(err["message"], "template version doesn't match template");
}

#[tokio::test]
async fn a_start_onto_a_version_that_adds_a_required_parameter_needs_its_value() {
    let (sim, client) = start().await;
    let id = id_of(&client.create_workspace("strict", STRICT_DEV).await);
    client.wait_for_build(&id, "running").await;
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    sim.set_active_version("strict-dev", "v2");

    // coderd v2.36.1's dynamic parameter flow: 400, one validation per parameter.
    let err =
        client.build(&id, json!({ "transition": "start", "template_version_id": STRICT_DEV_V2 })).await.expect(400);
    assert_eq!(err["message"], "Unable to validate parameters");
    assert_eq!(
        err["validations"],
        json!([{"field": "zone", "detail": "Required parameter not provided; parameter value is null"}])
    );
    // Its value alone is enough: the immutable region carries over.
    let start = client
        .build(
            &id,
            json!({ "transition": "start", "template_version_id": STRICT_DEV_V2,
                    "rich_parameter_values": [{"name": "zone", "value": "z1"}] }),
        )
        .await
        .expect(201);
    assert_eq!(start["template_version_id"], STRICT_DEV_V2);
}

#[tokio::test]
async fn immutable_parameters_cannot_change_on_a_rebuild() {
    let (_sim, client) = start().await;
    let id = id_of(&client.create_workspace("immutable", DOCKER_DEV).await);
    client.wait_for_build(&id, "running").await;
    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    let err = client
        .build(&id, json!({ "transition": "start", "rich_parameter_values": [{"name": "region", "value": "eu-west"}] }))
        .await
        .expect(400);
    assert_eq!(err["validations"][0]["field"], "region");
    assert!(err["validations"][0]["detail"].as_str().unwrap().contains("not mutable"));
}

#[tokio::test]
async fn search_filters_and_counts() {
    let (_sim, client) = start().await;
    for (owner, name) in [("alice", "fix-login"), ("alice", "Fix-Logout"), ("alice", "docs"), ("bob", "fix-cache")] {
        client
            .post(&format!("/api/v2/users/{owner}/workspaces"), json!({ "name": name, "template_id": DOCKER_DEV }))
            .await
            .expect(201);
    }
    let names = |reply: &Value| -> Vec<String> {
        reply["workspaces"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap().to_owned()).collect()
    };

    let alice = client.get("/api/v2/workspaces?q=owner:%22alice%22").await.expect(200);
    assert_eq!(alice["count"], 3);
    assert_eq!(names(&alice), ["docs", "fix-login", "Fix-Logout"]);

    let page = client.get("/api/v2/workspaces?q=owner:alice&limit=1&offset=1").await.expect(200);
    assert_eq!(page["count"], 3, "count is the total, not the page");
    assert_eq!(names(&page), ["fix-login"]);

    let fix = client.get("/api/v2/workspaces?q=name:%22FIX%22").await.expect(200);
    assert_eq!(fix["count"], 3, "name matches case-insensitive substrings");
    let both = client.get("/api/v2/workspaces?q=owner:bob%20name:fix").await.expect(200);
    assert_eq!(names(&both), ["fix-cache"]);
    let all = client.get("/api/v2/workspaces").await.expect(200);
    assert_eq!(all["count"], 5, "four created plus the seeded one");
    let by_template = client.get("/api/v2/workspaces?q=template:chat-dev").await.expect(200);
    assert_eq!(by_template["count"], 0);
    let mine = client.get("/api/v2/workspaces?q=owner:me").await.expect(200);
    assert_eq!(mine["count"], 0);
    let outdated = client.get("/api/v2/workspaces?q=outdated:true").await.expect(200);
    assert_eq!(names(&outdated), ["existing-dev"]);

    let bad = client.get("/api/v2/workspaces?q=colour:blue").await.expect(400);
    assert_eq!(bad["message"], "Invalid workspace search query.");
    assert_eq!(bad["validations"][0]["field"], "colour");
}

#[tokio::test]
async fn search_lists_the_started_workspaces_first_as_coderd_orders_them() {
    let (_sim, client) = start().await;
    let mut ids = Vec::new();
    for name in ["ws-a", "ws-b", "ws-c"] {
        let id = id_of(&client.create_workspace(name, DOCKER_DEV).await);
        client.wait_for_build(&id, "running").await;
        ids.push(id);
    }
    let names = |reply: Value| -> Vec<String> {
        reply["workspaces"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap().to_owned()).collect()
    };
    let listed = client.get("/api/v2/workspaces?q=name:ws-").await.expect(200);
    assert_eq!(names(listed), ["ws-a", "ws-b", "ws-c"]);

    // A workspace that stops moves behind those that run: an offset past
    // its old place now passes over the one that took it.
    client.build(&ids[0], json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&ids[0], "stopped").await;
    let listed = client.get("/api/v2/workspaces?q=name:ws-").await.expect(200);
    assert_eq!(names(listed), ["ws-b", "ws-c", "ws-a"]);
    let second_page = client.get("/api/v2/workspaces?q=name:ws-&limit=1&offset=1").await.expect(200);
    assert_eq!(names(second_page), ["ws-c"]);
}

#[tokio::test]
async fn the_user_list_is_paged_by_lower_cased_username_and_a_member_sees_only_themselves() {
    let (_sim, client) = start().await;
    let all = client.get("/api/v2/users").await.expect(200);
    let names = |reply: &Value| -> Vec<String> {
        reply["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_lowercase()).collect()
    };
    let everyone = names(&all);
    let mut sorted = everyone.clone();
    sorted.sort();
    assert_eq!(everyone, sorted, "ordered by lower-cased username");
    assert!(everyone.contains(&"admin".to_owned()) && everyone.contains(&"alice".to_owned()));
    assert_eq!(all["count"], everyone.len());
    let second = client.get("/api/v2/users?limit=1&offset=1").await.expect(200);
    assert_eq!(names(&second), [everyone[1].clone()]);
    assert_eq!(second["count"], everyone.len(), "the count is of every page");
    let alice = all["users"].as_array().unwrap().iter().find(|u| u["username"] == "alice").unwrap();
    assert_eq!(client.get("/api/v2/users/alice").await.expect(200)["id"], alice["id"]);

    // bob is a member: the list is him alone, as coderd's filter gives it.
    let mut config = coder_sim::SimConfig::fast();
    config.seed.token_user = "bob".into();
    let sim = coder_sim::Simulator::start(config).await.expect("simulator starts");
    let member = Client::new(&sim.url(), &sim.token());
    let own = member.get("/api/v2/users").await.expect(200);
    assert_eq!(names(&own), ["bob"]);
    assert_eq!(own["count"], 1);
}

#[tokio::test]
async fn search_answers_only_what_the_token_may_read_and_one_owner_per_query() {
    // bob is a member: coderd shows him his own workspaces, with or
    // without `owner:`, and nobody else's.
    let mut config = coder_sim::SimConfig::fast();
    config.seed.token_user = "bob".into();
    let sim = coder_sim::Simulator::start(config).await.expect("simulator starts");
    let client = Client::new(&sim.url(), &sim.token());
    for owner in ["alice", "bob"] {
        sim.create_workspace(owner, &format!("{owner}-ws"), "docker-dev");
    }
    let names = |reply: &Value| -> Vec<String> {
        reply["workspaces"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap().to_owned()).collect()
    };
    let everyone = client.get("/api/v2/workspaces").await.expect(200);
    // The one that runs (seeded) first, as coderd orders them.
    assert_eq!(names(&everyone), ["existing-dev", "bob-ws"]);
    let alices = client.get("/api/v2/workspaces?q=owner:alice").await.expect(200);
    assert_eq!(alices["count"], 0);
    let twice = client.get("/api/v2/workspaces?q=owner:bob%20owner:alice").await.expect(400);
    assert_eq!(twice["validations"][0]["field"], "owner");
    client.get("/api/v2/workspaces?q=status:running%20status:stopped").await.expect(400);
}

#[tokio::test]
async fn delete_removes_the_workspace() {
    let (sim, client) = start().await;
    let id = id_of(&client.create_workspace("doomed", DOCKER_DEV).await);
    client.wait_for_build(&id, "running").await;
    client.build(&id, json!({ "transition": "delete", "orphan": true })).await.expect(201);
    eventually("the delete to finish", std::time::Duration::from_secs(3), || async {
        let reply = client.get(&format!("/api/v2/workspaces/{id}")).await;
        (reply.status == 410).then_some(reply)
    })
    .await;
    let deleted = client.get(&format!("/api/v2/workspaces/{id}?include_deleted=true")).await.expect(200);
    assert_eq!(deleted["latest_build"]["status"], "deleted");
    client.get("/api/v2/users/me/workspace/doomed").await.expect(404);
    assert_eq!(client.get("/api/v2/workspaces?q=owner:me").await.expect(200)["count"], 0);
    assert_eq!(sim.workspace_id("admin", "doomed"), None);
    let again = client.create_workspace("doomed", DOCKER_DEV).await;
    assert_ne!(id_of(&again), id, "the name is free again");
}

#[tokio::test]
async fn adopted_workspaces_come_from_outside() {
    let (sim, client) = start().await;
    let id = sim.create_workspace("alice", "adopt-me", "docker-dev");
    assert_eq!(sim.workspace_id("alice", "adopt-me"), Some(id));
    let ws = client.get("/api/v2/users/alice/workspace/adopt-me").await.expect(200);
    assert_eq!(ws["id"], id.to_string());
    assert_eq!(ws["latest_build"]["transition"], "start");
    assert_eq!(sim.builds(id).len(), 1);
}

#[tokio::test]
async fn template_settings_can_change_under_a_workspace() {
    let (sim, client) = start().await;
    let id = id_of(
        &client
            .post("/api/v2/users/me/workspaces", json!({ "name": "pinned", "template_version_id": DOCKER_DEV_V1 }))
            .await
            .expect(201),
    );
    client.wait_for_build(&id, "running").await;
    assert_eq!(client.workspace(&id).await["outdated"], true);
    sim.set_active_version("docker-dev", "v1");
    let ws = client.workspace(&id).await;
    assert_eq!(
        (ws["outdated"].as_bool(), ws["template_active_version_id"].as_str()),
        (Some(false), Some(DOCKER_DEV_V1))
    );
    sim.set_active_version("docker-dev", "v2");

    client.build(&id, json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    sim.set_require_active_version("docker-dev", true);
    assert_eq!(client.workspace(&id).await["template_require_active_version"], true);
    client.build(&id, json!({ "transition": "start" })).await.expect(403);

    let control = client.with_token(None);
    control.post("/sim/templates/docker-dev/require-active-version", json!({ "required": false })).await.expect(204);
    control.post("/sim/templates/docker-dev/active-version", json!({ "version": "v9" })).await.expect(400);
    client.build(&id, json!({ "transition": "start" })).await.expect(201);
}
