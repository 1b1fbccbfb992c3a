//! Issue 13: the chat bound to a workspace, its sub-agent chats and its
//! context, in status, and kept right through a recovery; against the real
//! kube-apiserver and the Coder simulator.

mod support;

use std::time::Duration;

use chatworkspace_operator::coder::{ChatApi, CoderClient, SessionToken};
use chatworkspace_operator::conditions::{CHAT_CONTEXT_CURRENT, READY};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{NewChat, SimConfig, Simulator};
use serde_json::json;
use support::{Env, LONG};

fn spec() -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "template": {"name": "docker-dev"},
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 3, "window": "1h"},
    })
}

fn chat_of(cws: &ChatWorkspace) -> Option<&chatworkspace_operator::crd::ChatStatus> {
    cws.status.as_ref().and_then(|s| s.chat.as_ref())
}

#[tokio::test]
async fn the_bound_chat_and_its_sub_agents_appear_in_status() {
    let env = Env::start("chat-status").await;
    env.create("chat-1", spec()).await;
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let agent = ready.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()).unwrap();
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "False", Some("NoChat"), LONG).await;

    let ws = env.workspace_id("admin", "chat-1");
    let root = env.sim.create_chat(NewChat {
        title: "fix the login bug".into(),
        workspace_id: Some(ws),
        ..NewChat::default()
    });
    let child = env.sim.create_chat(NewChat {
        title: "run the tests".into(),
        parent_chat_id: Some(root),
        status: Some("running".into()),
        ..NewChat::default()
    });
    // Another user's chat on the same workspace stays invisible to the operator.
    env.sim.create_chat(NewChat { owner: Some("alice".into()), workspace_id: Some(ws), ..NewChat::default() });

    let cws = env
        .wait_for("chat-1", "showing the chat with its sub-agent", LONG, |cws| {
            chat_of(cws).is_some_and(|c| c.id == root.to_string() && c.children.len() == 1)
        })
        .await;
    let chat = chat_of(&cws).unwrap();
    assert_eq!(chat.title, "fix the login bug");
    assert_eq!(chat.status, "waiting");
    assert_eq!(chat.agent_id.as_deref(), Some(agent.as_str()));
    assert!(!chat.agent_stale);
    assert_eq!(chat.children[0].id, child.to_string());
    assert_eq!(chat.children[0].status, "running");
    let context = chat.context.as_ref().unwrap();
    assert!(context.pinned);
    assert_eq!(context.resources, 2);
    assert!(context.dirty_since.is_none());
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;

    // The agent's files change: the chat's context is dirty.
    env.sim.change_context_files(ws);
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "False", Some("ContextDirty"), LONG).await;
}

/// A client that does not know where the chat routes are.
fn client(sim: &Simulator) -> CoderClient {
    CoderClient::new(&sim.url(), SessionToken::new(sim.token()).unwrap(), Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn a_404_on_the_v2_chat_path_falls_back_to_the_experimental_one_and_is_remembered() {
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let ws = sim.workspace_id("bob", "existing-dev").unwrap();
    let coder = client(&sim);
    coder.chats_by_workspace(&[ws.to_string()]).await.unwrap();
    coder.chats_by_workspace(&[ws.to_string()]).await.unwrap();
    assert_eq!(coder.chat_api(), Some(ChatApi::Experimental));
    let paths: Vec<(String, u16)> = sim.requests().into_iter().map(|r| (r.path, r.status)).collect();
    assert_eq!(
        paths,
        [
            ("/api/v2/chats/by-workspace".to_string(), 404),
            ("/api/experimental/chats/by-workspace".to_string(), 200),
            ("/api/experimental/chats/by-workspace".to_string(), 200),
        ]
    );

    // A chat that does not exist is a 404 too, but not a missing route.
    sim.clear_requests();
    let missing = client(&sim).chat(&uuid::Uuid::new_v4().to_string()).await;
    assert!(matches!(missing, Err(chatworkspace_operator::coder::CoderError::NotFound { .. })), "{missing:?}");
}

#[tokio::test]
async fn a_v2_server_is_asked_on_the_v2_path_only() {
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    sim.set_chat_api(coder_sim::ChatApi::V2);
    let ws = sim.workspace_id("bob", "existing-dev").unwrap();
    let coder = client(&sim);
    coder.chats_by_workspace(&[ws.to_string()]).await.unwrap();
    assert_eq!(coder.chat_api(), Some(ChatApi::V2));
    let too_many: Vec<String> = (0..26).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    assert!(coder.chats_by_workspace(&too_many).await.is_err(), "more than 25 ids are refused before sending");
    let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/v2/chats/by-workspace"]);
}
