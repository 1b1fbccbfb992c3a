//! Chats: the by-workspace map and its 25-id limit, a chat with its
//! sub-agents and context, per-user visibility, re-pinning, interrupts, and
//! the versioned mounts.

mod support;

use coder_sim::{ChatApi, ContextRefresh, NewChat, Seed, SimConfig, Simulator};
use serde_json::Value;
use support::*;
use uuid::Uuid;

const EXP: &str = "/api/experimental/chats";

async fn running_workspace(client: &Client, name: &str) -> (Uuid, String) {
    let ws = client.create_workspace(name, DOCKER_DEV).await;
    let id = id_of(&ws);
    client.wait_for_build(&id, "running").await;
    let agent = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&agent, "connected", Some("ready")).await;
    (id.parse().unwrap(), agent)
}

fn chat(title: &str, workspace: Uuid) -> NewChat {
    NewChat { title: title.into(), workspace_id: Some(workspace), ..NewChat::default() }
}

#[tokio::test]
async fn by_workspace_maps_each_workspace_to_its_latest_visible_chat() {
    let (sim, client) = start().await;
    let (ws, _) = running_workspace(&client, "chatty").await;
    let (other, _) = running_workspace(&client, "quiet").await;
    let older = sim.create_chat(chat("older", ws));
    let newer = sim.create_chat(chat("newer", ws));

    let map = client.get(&format!("{EXP}/by-workspace?workspace_ids={ws},{other}")).await.expect(200);
    assert_eq!(map, serde_json::json!({ ws.to_string(): newer.to_string() }));
    assert_ne!(older, newer);
    // The token's user is an Owner: Alice's newer chat is the one shown.
    let alices = sim.create_chat(NewChat { owner: Some("alice".into()), ..chat("alice's", ws) });
    let map = client.get(&format!("{EXP}/by-workspace?workspace_ids={ws}")).await.expect(200);
    assert_eq!(map, serde_json::json!({ ws.to_string(): alices.to_string() }));
    let empty = client.get(&format!("{EXP}/by-workspace")).await.expect(200);
    assert_eq!(empty, serde_json::json!({}));

    let ids: Vec<String> = (0..26).map(|_| Uuid::new_v4().to_string()).collect();
    let too_many = client.get(&format!("{EXP}/by-workspace?workspace_ids={}", ids.join(","))).await.expect(400);
    assert_eq!(too_many["message"], "Too many workspace IDs, maximum is 25.");
    let just_enough = client.get(&format!("{EXP}/by-workspace?workspace_ids={}", ids[..25].join(","))).await;
    assert_eq!(just_enough.status, 200);
    client.get(&format!("{EXP}/by-workspace?workspace_ids=nope")).await.expect(400);
}

/// As coderd v2.36.1 answered the real-coderd tests: a member's token sees
/// only the member's chats, an Owner's every user's.
#[tokio::test]
async fn a_member_sees_only_their_own_chats_and_an_owner_sees_every_users() {
    let seed = Seed { token_user: "alice".into(), ..Seed::default() };
    let sim = Simulator::start(SimConfig { seed, ..SimConfig::fast() }).await.unwrap();
    let client = Client::new(&sim.url(), &sim.token());
    let (ws, _) = running_workspace(&client, "alices").await;
    let alices = sim.create_chat(chat("alice's", ws));
    let admins = sim.create_chat(NewChat { owner: Some("admin".into()), ..chat("the admin's", ws) });

    let map = client.get(&format!("{EXP}/by-workspace?workspace_ids={ws}")).await.expect(200);
    assert_eq!(map, serde_json::json!({ ws.to_string(): alices.to_string() }), "the admin's newer chat is hidden");
    let hidden = client.get(&format!("{EXP}/{admins}")).await.expect(404);
    assert_eq!(hidden["message"], "Resource not found or you do not have access to this resource");
    client.post(&format!("{EXP}/{admins}/interrupt"), serde_json::json!({})).await.expect(404);

    let (sim, client) = start().await;
    let (ws, _) = running_workspace(&client, "admins").await;
    let alices = sim.create_chat(NewChat { owner: Some("alice".into()), ..chat("alice's", ws) });
    let body = client.get(&format!("{EXP}/{alices}")).await.expect(200);
    assert_eq!(body["owner_username"], "alice");
}

#[tokio::test]
async fn a_chat_shows_its_binding_sub_agents_and_pinned_context() {
    let (sim, client) = start().await;
    let (ws, agent) = running_workspace(&client, "chatty").await;
    let root = sim.create_chat(chat("fix the login bug", ws));
    let child =
        sim.create_chat(NewChat { parent_chat_id: Some(root), status: Some("running".into()), ..chat("sub", ws) });

    let body = client.get(&format!("{EXP}/{root}")).await.expect(200);
    assert_golden("chat.json", &body);
    assert_eq!(body["workspace_id"], ws.to_string());
    assert_eq!(body["agent_id"], agent);
    assert_eq!(body["status"], "waiting");
    assert!(body.get("parent_chat_id").is_none());
    assert_eq!(body["context"]["dirty"], false);
    assert_eq!(body["context"]["resources"].as_array().unwrap().len(), 2);
    let children = body["children"].as_array().unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["id"], child.to_string());
    assert_eq!(children[0]["status"], "running");
    assert_eq!(children[0]["parent_chat_id"], root.to_string());
    assert_eq!(children[0]["root_chat_id"], root.to_string());
    assert_eq!(children[0]["children"], serde_json::json!([]));
    assert!(children[0]["context"].get("resources").is_none(), "resources only on the chat read itself");

    client.get(&format!("{EXP}/{}", Uuid::new_v4())).await.expect(404);
    client.with_token(None).get(&format!("{EXP}/{root}")).await.expect(401);

    // New files on the agent make the pin dirty; a refresh re-pins it.
    sim.change_context_files(ws);
    let dirty = client.get(&format!("{EXP}/{root}")).await.expect(200);
    assert_eq!(dirty["context"]["dirty"], true);
    assert!(dirty["context"]["dirty_since"].is_string());
    assert_golden("chat_dirty.json", &dirty);
    let refreshed = client.put(&format!("{EXP}/{root}/context")).await.expect(200);
    assert_eq!(refreshed["context"]["dirty"], false);
    assert_eq!(refreshed["context"]["resources"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_refresh_after_a_rebuild_rebinds_the_new_agent_and_clears_the_pin_without_one() {
    let (sim, client) = start().await;
    sim.set_context_refresh(ContextRefresh::LatestAgent);
    let (ws, old_agent) = running_workspace(&client, "chatty").await;
    let root = sim.create_chat(chat("chat", ws));
    let id = ws.to_string();

    client.build(&id, serde_json::json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    // Stopped: no agent to pin to, so the pin is cleared.
    let cleared = client.put(&format!("{EXP}/{root}/context")).await.expect(200);
    assert!(cleared.get("context").is_none(), "{cleared:#}");
    assert_eq!(cleared["agent_id"], old_agent, "the stored binding is kept");

    client.build(&id, serde_json::json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&id, "running").await;
    let new_agent = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&new_agent, "connected", Some("ready")).await;
    let stale = client.get(&format!("{EXP}/{root}")).await.expect(200);
    assert_eq!(stale["agent_id"], old_agent, "the stored agent is stale until chatd rebinds it");
    let repinned = client.put(&format!("{EXP}/{root}/context")).await.expect(200);
    assert_eq!(repinned["agent_id"], new_agent);
    assert_eq!(repinned["context"]["dirty"], false);
}

#[tokio::test]
async fn an_interrupt_stops_a_running_turn_and_refuses_an_idle_chat() {
    let (sim, client) = start().await;
    let (ws, _) = running_workspace(&client, "chatty").await;
    let root = sim.create_chat(NewChat { status: Some("running".into()), ..chat("busy", ws) });

    let interrupted = client.post(&format!("{EXP}/{root}/interrupt"), Value::Null).await.expect(200);
    assert_eq!(interrupted["status"], "interrupting");
    assert_golden("chat_interrupted.json", &interrupted);
    eventually("waiting", std::time::Duration::from_secs(2), || async {
        let chat = client.get(&format!("{EXP}/{root}")).await.expect(200);
        (chat["status"] == "waiting").then_some(())
    })
    .await;
    let idle = client.post(&format!("{EXP}/{root}/interrupt"), Value::Null).await.expect(409);
    assert_eq!(idle["message"], "Chat is not in an interruptible state.");
}

#[tokio::test]
async fn chats_are_served_on_one_mount_at_a_time() {
    let (sim, client) = start().await;
    let (ws, _) = running_workspace(&client, "chatty").await;
    let root = sim.create_chat(chat("chat", ws));

    let missing = client.get(&format!("/api/v2/chats/{root}")).await.expect(404);
    assert_eq!(missing["message"], "Route not found.");
    client.get(&format!("{EXP}/{root}")).await.expect(200);

    sim.set_chat_api(ChatApi::V2);
    client.get(&format!("/api/v2/chats/{root}")).await.expect(200);
    client.get(&format!("/api/v2/chats/by-workspace?workspace_ids={ws}")).await.expect(200);
    let gone = client.get(&format!("{EXP}/{root}")).await.expect(404);
    assert_eq!(gone["message"], "Route not found.");
}

#[tokio::test]
async fn like_v2_36_1_a_refresh_re_pins_to_the_stored_agent_only_and_the_next_turn_rebinds() {
    let (sim, client) = start().await;
    let (ws, old_agent) = running_workspace(&client, "chatty").await;
    let root = sim.create_chat(chat("chat", ws));
    let id = ws.to_string();
    client.build(&id, serde_json::json!({ "transition": "stop" })).await.expect(201);
    client.wait_for_build(&id, "stopped").await;
    client.build(&id, serde_json::json!({ "transition": "start" })).await.expect(201);
    client.wait_for_build(&id, "running").await;
    let new_agent = id_of(&client.agents(&id).await[0]);
    client.wait_for_agent(&new_agent, "connected", Some("ready")).await;

    let repinned = client.put(&format!("{EXP}/{root}/context")).await.expect(200);
    assert_eq!(repinned["agent_id"], old_agent, "the chat's next turn rebinds it, not the refresh");
    assert_eq!(repinned["context"]["dirty"], false);
    assert_eq!(repinned["context"]["resources"].as_array().unwrap().len(), 2, "the old agent's snapshot");

    sim.run_chat_turn(root);
    let rebound = client.get(&format!("{EXP}/{root}")).await.expect(200);
    assert_eq!(rebound["agent_id"], new_agent, "the next turn moved the chat to the new agent");
    assert_eq!(rebound["context"]["dirty"], false);
}
