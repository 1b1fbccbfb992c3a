//! The chat bound to a workspace, its sub-agent chats and its
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

/// When the sim's log saw `method path` first (status 2xx).
fn first_request(sim: &Simulator, method: &str, path: &str, transition: Option<&str>) -> Option<jiff::Timestamp> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path == path && (200..300).contains(&r.status))
        .filter(|r| transition.is_none_or(|t| r.body.as_ref().and_then(|b| b["transition"].as_str()) == Some(t)))
        .map(|r| r.at)
        .next()
}

/// `ready_at` of an agent, as coderd reports it.
async fn agent_ready_at(sim: &Simulator, agent: &str) -> jiff::Timestamp {
    let agent: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v2/workspaceagents/{agent}", sim.url()))
        .header("Coder-Session-Token", sim.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    agent["ready_at"].as_str().expect("ready_at").parse().unwrap()
}

#[tokio::test]
async fn a_recovery_interrupts_the_running_chat_before_the_stop_and_re_pins_it_after_the_new_agent_is_ready() {
    let env = Env::start("chat-recovery").await;
    env.create("chat-1", spec()).await;
    let before = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let old_agent = before.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()).unwrap();
    let ws = env.workspace_id("admin", "chat-1");
    let root = env.sim.create_chat(NewChat {
        title: "fix the login bug".into(),
        workspace_id: Some(ws),
        status: Some("running".into()),
        ..NewChat::default()
    });
    let child = env.sim.create_chat(NewChat {
        title: "run the tests".into(),
        parent_chat_id: Some(root),
        status: Some("running".into()),
        ..NewChat::default()
    });
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;

    env.sim.kill_agent(ws);
    env.wait_for_condition("chat-1", "Recovering", "False", Some("Recovered"), LONG).await;
    // As coderd v2.36.1: the re-pin keeps each chat on its stored, dead
    // agent; the chats' next turns move them to the new one.
    env.wait_for_events("chat-1", &["ChatContextRefreshed"]).await;
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "False", Some("AgentStale"), LONG).await;
    env.sim.run_chat_turn(root);
    env.sim.run_chat_turn(child);
    let after = env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;
    let new_agent = after.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()).unwrap();
    assert_ne!(new_agent, old_agent);
    let chat = chat_of(&after).unwrap();
    assert_eq!(chat.agent_id.as_deref(), Some(new_agent.as_str()));
    assert!(!chat.agent_stale);
    assert!(chat.children.iter().all(|c| !c.agent_stale), "{:?}", chat.children);
    assert_eq!(env.transitions(ws), ["start", "stop", "start"]);

    // Interrupted before the stop: both turns were running on the dead agent.
    let chats = "/api/experimental/chats";
    let stop = first_request(&env.sim, "POST", &format!("/api/v2/workspaces/{ws}/builds"), Some("stop")).expect("stop");
    for id in [root, child] {
        let interrupt = first_request(&env.sim, "POST", &format!("{chats}/{id}/interrupt"), None).expect("interrupted");
        assert!(interrupt < stop, "chat {id} interrupted at {interrupt}, the stop requested at {stop}");
    }
    assert_ne!(env.sim.chat_status(root).as_deref(), Some("running"));

    // Re-pinned after the new agent was ready, not before.
    let ready_at = agent_ready_at(&env.sim, &new_agent).await;
    for id in [root, child] {
        let repin = first_request(&env.sim, "PUT", &format!("{chats}/{id}/context"), None).expect("re-pinned");
        assert!(repin >= ready_at, "chat {id} re-pinned at {repin}, before the agent was ready at {ready_at}");
    }
    assert_eq!(env.sim.chat_agent(child).map(|a| a.to_string()), Some(new_agent));

    let events = env.wait_for_events("chat-1", &["ChatInterrupted", "RecoveryStarted", "ChatContextRefreshed"]).await;
    let order: Vec<&str> = events
        .iter()
        .map(|(reason, _)| reason.as_str())
        .filter(|r| ["ChatInterrupted", "RecoveryStarted", "ChatContextRefreshed"].contains(r))
        .collect();
    println!("events: {events:?}");
    assert_eq!(order.first(), Some(&"ChatInterrupted"), "{order:?}");
}

#[tokio::test]
async fn with_contextpolicy_leave_a_recovery_leaves_the_binding_stale_and_says_so() {
    let env = Env::start("chat-stale").await;
    let mut spec = spec();
    spec["chat"] = json!({"contextPolicy": "Leave", "interruptOnRecovery": false});
    env.create("chat-1", spec).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let ws = env.workspace_id("admin", "chat-1");
    let root = env.sim.create_chat(NewChat {
        title: "busy".into(),
        workspace_id: Some(ws),
        status: Some("running".into()),
        ..NewChat::default()
    });
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;

    env.sim.kill_agent(ws);
    env.wait_for_condition("chat-1", "Recovering", "False", Some("Recovered"), LONG).await;
    let stale = env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "False", Some("AgentStale"), LONG).await;
    let chat = chat_of(&stale).unwrap();
    assert!(chat.agent_stale, "{chat:?}");
    assert_ne!(chat.agent_id, stale.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()));
    let touched =
        env.sim.requests().into_iter().any(|r| r.path.ends_with("/context") || r.path.ends_with("/interrupt"));
    assert!(!touched, "Leave and interruptOnRecovery=false make no chat writes");
    assert_eq!(env.sim.chat_status(root).as_deref(), Some("running"));
}

/// The chat side's cost at steady state, with the intervals shortened: per
/// owner one by-workspace lookup per 25 watched workspaces every
/// `chat_interval`, and one read per chat every `chat_detail_interval`.
#[tokio::test]
async fn chat_requests_at_steady_state_are_one_lookup_per_25_workspaces_and_a_slow_detail_read() {
    const WORKSPACES: usize = 30;
    let mut env = Env::without_operator("chat-load", SimConfig::fast()).await;
    env.tweak = Some(|settings| {
        settings.index.chat_interval = Duration::from_secs(3);
        settings.index.chat_detail_interval = Duration::from_secs(12);
    });
    env.start_operator();
    for i in 0..WORKSPACES {
        env.create(&format!("chat-{i}"), json!({"template": {"name": "docker-dev"}})).await;
    }
    for i in 0..WORKSPACES {
        let name = format!("chat-{i}");
        env.wait_for_condition(&name, READY, "True", Some("Running"), Duration::from_secs(90)).await;
        let ws = env.workspace_id("admin", &name);
        env.sim.create_chat(NewChat { title: name.clone(), workspace_id: Some(ws), ..NewChat::default() });
    }
    for i in 0..WORKSPACES {
        env.wait_for_condition(&format!("chat-{i}"), CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;
    }
    env.sim.clear_requests();
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;

    let requests = env.sim.requests();
    let chats: Vec<_> = requests.iter().filter(|r| r.path.contains("/chats")).collect();
    let lookups = chats.iter().filter(|r| r.path.ends_with("/by-workspace")).count();
    let details = chats.len() - lookups;
    let writes = chats.iter().filter(|r| r.method != "GET").count();
    let rounds = window.as_secs_f64() / 3.0;
    let lookups_per_round = lookups as f64 / rounds;
    let reads_per_chat = details as f64 / WORKSPACES as f64 / (window.as_secs_f64() / 12.0);
    let per_workspace_minute = chats.len() as f64 / WORKSPACES as f64 / (window.as_secs_f64() / 60.0);
    // At the defaults (5 min, 1 h) the same counts give:
    let at_defaults = lookups_per_round / WORKSPACES as f64 / 5.0 + reads_per_chat / 60.0;
    println!(
        "{WORKSPACES} workspaces with a chat, {window:?}: {lookups} lookups ({lookups_per_round:.2} per round), \
         {details} detail reads ({reads_per_chat:.2} per chat per detail interval), {writes} writes; \
         {per_workspace_minute:.2} chat requests per workspace per minute at these intervals, \
         {at_defaults:.4} at the defaults"
    );
    assert_eq!(writes, 0, "nothing to interrupt or re-pin at steady state");
    assert!((1.5..=2.5).contains(&lookups_per_round), "30 workspaces take 2 lookups per round: {lookups_per_round:.2}");
    assert!(reads_per_chat <= 1.5, "a settled chat is read about once per detail interval: {reads_per_chat:.2}");
    assert!(
        chats.iter().all(|r| (r.path.contains("/by-workspace") && r.query.split(',').count() <= 25)
            || !r.path.contains("/by-workspace"))
    );
}

#[tokio::test]
async fn a_chat_that_cannot_be_interrupted_does_not_hold_up_the_recovery() {
    let env = Env::start("chat-unint").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let ws = env.workspace_id("admin", "chat-1");
    let root = env.sim.create_chat(NewChat {
        title: "busy".into(),
        workspace_id: Some(ws),
        status: Some("running".into()),
        ..NewChat::default()
    });
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;
    let interrupt = format!("/api/experimental/chats/{root}/interrupt");
    env.sim.inject_fault(coder_sim::Fault::new(interrupt.clone(), coder_sim::FaultKind::Status(503)));

    env.sim.kill_agent(ws);
    env.wait_for_condition("chat-1", "Recovering", "False", Some("Recovered"), LONG).await;
    env.wait_for_events("chat-1", &["ChatContextRefreshed"]).await;
    // The chat's next turn moves it to the new agent (coderd v2.36.1).
    env.sim.run_chat_turn(root);
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;
    assert_eq!(env.transitions(ws), ["start", "stop", "start"]);
    let attempts = env.sim.requests().into_iter().filter(|r| r.path == interrupt).count();
    assert_eq!(attempts, 1, "one attempt per dead agent");
    env.wait_for_events("chat-1", &["ChatInterruptFailed", "Recovered", "ChatContextRefreshed"]).await;
}

#[tokio::test]
async fn against_a_coderd_that_re_pins_to_the_stored_agent_the_re_pin_is_tried_once_and_the_binding_shown_stale() {
    let env = Env::start("chat-v2361").await;
    // The simulator's default, as v2.36.1.
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let ws = env.workspace_id("admin", "chat-1");
    let root = env.sim.create_chat(NewChat { title: "chat".into(), workspace_id: Some(ws), ..NewChat::default() });
    env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "True", Some("Current"), LONG).await;

    env.sim.kill_agent(ws);
    env.wait_for_condition("chat-1", "Recovering", "False", Some("Recovered"), LONG).await;
    let events = env.wait_for_events("chat-1", &["ChatContextRefreshed"]).await;
    let note =
        events.iter().find(|(reason, _)| reason == "ChatContextRefreshed").map(|(_, note)| note.clone()).unwrap();
    assert!(note.contains("next turn"), "{note}");
    let cws = env.wait_for_condition("chat-1", CHAT_CONTEXT_CURRENT, "False", Some("AgentStale"), LONG).await;
    assert!(chat_of(&cws).unwrap().agent_stale);
    // Settled: no second re-pin of the same build.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let put = format!("/api/experimental/chats/{root}/context");
    assert_eq!(env.sim.requests().iter().filter(|r| r.path == put).count(), 1);
}
