//! Chats on a real coderd (the pinned release): chats made through coderd's
//! API on workspaces the operator drives, their turns run by the fake
//! model on loopback (`coder_sim::fake_model`), real `coder agent`
//! processes, the real kube-apiserver. The operator runs with the
//! production defaults but for the chat intervals: it looks chats up every
//! [`CHAT_INTERVAL`] instead of every 5 minutes, and reads a known chat's
//! details as often instead of hourly, so that the tests run in seconds.

mod support;

use std::time::{Duration, Instant};

use chatworkspace_operator::conditions::{self, CHAT_CONTEXT_CURRENT, DEGRADED, READY, RECOVERING};
use chatworkspace_operator::controller::Settings;
use chatworkspace_operator::crd::{ChatStatus, ChatWorkspace};
use coder_sim::fake_model::{Answer, HOLD_MARKER, TOOL_MARKER};
use serde_json::{Value, json};
use support::Operated;
use support::coderd::{Coderd, Template, transitions};
use support::coderd_chats::{Chats, fake_model};
use support::process::parse_exposition;

const CONVERGE: Duration = Duration::from_secs(90);
/// The chat lookup and detail intervals of these tests' operator.
const CHAT_INTERVAL: Duration = Duration::from_secs(5);

fn short_chat_intervals(settings: &mut Settings) {
    settings.index.chat_interval = CHAT_INTERVAL;
    settings.index.chat_detail_interval = CHAT_INTERVAL;
}

/// Lookups every [`CHAT_INTERVAL`], a known chat's details read hourly
/// (the production default).
fn short_lookup_interval(settings: &mut Settings) {
    settings.index.chat_interval = CHAT_INTERVAL;
}

/// A namespace and an operator (running) with the admin's token.
async fn operator(prefix: &str) -> (&'static Coderd, Operated) {
    operator_with(prefix, short_chat_intervals).await
}

async fn operator_with(prefix: &str, tweak: fn(&mut Settings)) -> (&'static Coderd, Operated) {
    let coderd = Coderd::shared();
    let mut env = Operated::without_operator(prefix, coderd.url(), &coderd.admin.token).await;
    env.tweak = Some(tweak);
    env.start_operator();
    (coderd, env)
}

fn spec(workspace: &str, template: &Template) -> Value {
    json!({
        "desiredState": "Running",
        "workspaceName": workspace,
        "template": {"name": template.name},
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "5s", "probeTimeout": "10s", "maxAttempts": 3,
                     "window": "1h"},
    })
}

fn chat_of(cws: &ChatWorkspace) -> Option<&ChatStatus> {
    cws.status.as_ref().and_then(|s| s.chat.as_ref())
}

fn ids(cws: &ChatWorkspace) -> (String, String) {
    let status = cws.status.as_ref().expect("status");
    (
        status.workspace.as_ref().map(|w| w.id.clone()).expect("status.workspace"),
        status.agent.as_ref().map(|a| a.id.clone()).expect("status.agent"),
    )
}

fn condition(cws: &ChatWorkspace, type_: &str) -> (String, String, String) {
    let found = cws.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_));
    found.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())).unwrap_or_default()
}

/// The `eventTime` of the first Event with `reason` about `name`.
async fn event_time(env: &Operated, name: &str, reason: &str) -> jiff::Timestamp {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&Default::default()).await.expect("list events");
    list.items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.event_time.as_ref().map(|t| t.0))
        .min()
        .unwrap_or_else(|| panic!("no {reason} Event for {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_made_on_a_workspace_appears_in_status_with_its_sub_agent_chat_within_the_chat_interval() {
    let (coderd, env) = operator("real-chat-status").await;
    let (template, spec_, workspace) = coderd.agent_template("chat").await;
    let _provisioner = coderd.provisioner("admin", &workspace, spec_.token());
    env.create("chat", spec(&workspace, &template)).await;
    let ready = env.wait_for_condition("chat", READY, "True", Some("Running"), CONVERGE).await;
    let (workspace_id, agent_id) = ids(&ready);
    env.wait_for_condition("chat", CHAT_CONTEXT_CURRENT, "False", Some("NoChat"), CONVERGE).await;

    // The chat's first turn starts a sub-agent chat (chatd's own
    // spawn_agent tool, the only way to make one), whose turn is held.
    let chats = Chats::with(coderd, &coderd.admin_api()).await;
    let sub_prompt = format!("{HOLD_MARKER} sub-agent of {workspace}");
    let arguments = json!({"type": "general", "prompt": sub_prompt, "title": "run the tests"});
    let created = chats
        .create(&workspace_id, &format!("fix the login bug\n{TOOL_MARKER} spawn_agent {arguments}"))
        .await
        .expect("create a chat");
    let made = Instant::now();
    let root_id = created["id"].as_str().expect("a chat id").to_owned();
    let root = chats
        .wait(&root_id, "waiting with a running sub-agent", CONVERGE, |chat| {
            chat["status"] == "waiting" && chat["children"][0]["status"] == "running"
        })
        .await;
    let child_id = root["children"][0]["id"].as_str().expect("a sub-agent chat id").to_owned();
    assert_same_keys_as_the_simulators_golden(&root);

    let shown = env
        .wait_for("chat", "showing the chat and its sub-agent", CONVERGE, |cws| {
            chat_of(cws).is_some_and(|c| c.id == root_id && c.children.len() == 1 && c.status == "waiting")
        })
        .await;
    let elapsed = made.elapsed();
    println!("a new chat to status.chat: {:.1}s (chat interval {CHAT_INTERVAL:?})", elapsed.as_secs_f64());
    // A round of lookups is spread over half the interval; the details are
    // read at once for a new binding.
    assert!(elapsed <= CHAT_INTERVAL * 2 + Duration::from_secs(5), "shown after {elapsed:?}");
    let chat = chat_of(&shown).unwrap();
    assert_eq!(chat.title, root["title"].as_str().unwrap(), "the title as coderd has it");
    assert_eq!(chat.agent_id.as_deref(), Some(agent_id.as_str()), "chatd bound the chat to the running agent");
    assert!(!chat.agent_stale);
    assert_eq!(chat.children[0].id, child_id);
    assert_eq!(chat.children[0].status, "running");
    assert!(chat.context.as_ref().is_some_and(|c| c.pinned && c.dirty_since.is_none()));
    let (status, reason, _) = condition(&shown, CHAT_CONTEXT_CURRENT);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Current"), "{:?}", shown.status);

    // The sub-agent's turn ends: shown within the detail interval.
    fake_model().release_matching(&sub_prompt);
    env.wait_for("chat", "showing the sub-agent's turn ended", CONVERGE, |cws| {
        chat_of(cws).is_some_and(|c| c.children.first().is_some_and(|child| child.status == "waiting"))
    })
    .await;
    let asked = fake_model().completions();
    assert!(
        asked.iter().any(|c| c.answer == Answer::ToolCall("spawn_agent".into())),
        "the root's turn called spawn_agent"
    );
}

/// The keys of a real chat (with a sub-agent chat) and of its sub-agent are
/// the ones the simulator's golden chat has: the simulator answers what
/// coderd v2.36.1 answers.
fn assert_same_keys_as_the_simulators_golden(real: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sim/tests/golden/chat.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("the golden chat")).unwrap();
    let keys =
        |chat: &Value| -> Vec<String> { chat.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default() };
    assert_eq!(keys(real), keys(&golden), "a root chat's keys, real and simulated");
    assert_eq!(keys(&real["children"][0]), keys(&golden["children"][0]), "a sub-agent chat's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_interrupts_the_running_turn_before_the_stop_and_the_chats_next_turn_makes_the_context_current() {
    // Details hourly, as in production: the chat's next turn must still show
    // within a lookup interval.
    let (coderd, env) = operator_with("real-chat-recovery", short_lookup_interval).await;
    let (template, spec_, workspace) = coderd.agent_template("chatrec").await;
    let provisioner = coderd.provisioner("admin", &workspace, spec_.token());
    env.create("chat", spec(&workspace, &template)).await;
    let ready = env.wait_for_condition("chat", READY, "True", Some("Running"), CONVERGE).await;
    let (workspace_id, old_agent) = ids(&ready);

    let chats = Chats::with(coderd, &coderd.admin_api()).await;
    let held = format!("{HOLD_MARKER} turn of {workspace}");
    let chat_id =
        chats.create(&workspace_id, &held).await.expect("create a chat")["id"].as_str().expect("a chat id").to_owned();
    env.wait_for("chat", "showing the running turn", CONVERGE, |cws| {
        chat_of(cws).is_some_and(|c| c.id == chat_id && c.status == "running")
    })
    .await;

    provisioner.signal("KILL").expect("an agent runs");
    env.wait_for_condition("chat", RECOVERING, "True", None, CONVERGE).await;
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), CONVERGE).await;
    let builds = coderd.builds(&workspace_id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"], "one stop and one start");
    let (_, new_agent) = ids(&after);
    assert_ne!(new_agent, old_agent);

    // The interrupt went out before the stop build, and ended the turn the
    // model was streaming.
    let interrupted = event_time(&env, "chat", "ChatInterrupted").await;
    assert!(interrupted < builds[1].created_at, "interrupted at {interrupted}, stop build at {}", builds[1].created_at);
    assert_eq!(chat_of(&after).and_then(|c| c.interrupted_for_agent.as_deref()), Some(old_agent.as_str()));
    let turn = fake_model().completions().into_iter().find(|c| c.answer == Answer::Held && c.last_user == held);
    assert!(turn.is_some_and(|t| t.cancelled), "the held turn was cancelled by the interrupt");

    // v2.36.1 re-pins to the agent stored on the chat: the operator's
    // re-pin after its start finds the dead agent, which pushed no context
    // snapshot, and clears the pin. The chat stays bound to the dead agent.
    env.wait_for_events("chat", &["ChatInterrupted", "ChatContextRefreshed"]).await;
    let unpinned = env.wait_for_condition("chat", CHAT_CONTEXT_CURRENT, "False", Some("NotPinned"), CONVERGE).await;
    assert!(chat_of(&unpinned).is_some_and(|c| c.agent_stale && c.agent_id.as_deref() == Some(old_agent.as_str())));
    let read = chats.get(&chat_id).await.expect("read the chat");
    assert_eq!(read["status"], "waiting", "the interrupted turn ended");
    assert_eq!(read["agent_id"], json!(old_agent), "coderd keeps the chat on the old agent until its next turn");
    assert_eq!(read["context"], Value::Null, "the re-pin to the old agent cleared the pin");

    // The chat's next turn rebinds it to the new agent and re-pins there;
    // the operator, which built the workspace, reads the chat again within a
    // lookup interval until then, not only at the hourly detail read.
    chats.send(&chat_id, &format!("carry on, {workspace}")).await.expect("send the next turn");
    let rebound = chats
        .wait(&chat_id, "rebound to the new agent", CONVERGE, |chat| {
            chat["status"] == "waiting" && chat["agent_id"] == json!(new_agent)
        })
        .await;
    assert_eq!(rebound["context"]["dirty"], false);
    let rebound_at = Instant::now();
    let current =
        env.wait_for_condition("chat", CHAT_CONTEXT_CURRENT, "True", Some("Current"), CHAT_INTERVAL * 4).await;
    println!("the next turn's rebind to ChatContextCurrent=True: {:.1}s", rebound_at.elapsed().as_secs_f64());
    assert!(chat_of(&current).is_some_and(|c| !c.agent_stale && c.agent_id.as_deref() == Some(new_agent.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_the_operators_token_cannot_see_is_not_shown_and_never_degrades() {
    // The member's token drives the member's workspace; the admin's chat on
    // it is the admin's own, which coderd does not show a member (an Owner,
    // though, is shown every user's chats).
    let (coderd, env) = operator("real-chat-hidden").await;
    let (template, spec_, workspace) = coderd.agent_template("hidden").await;
    let _provisioner = coderd.provisioner("member", &workspace, spec_.token());
    let member_token = coderd.new_token(&coderd.member, "chats").await;
    env.credentials_secret("member", coderd.url(), &member_token).await;
    let mut owned = spec(&workspace, &template);
    owned["owner"] = json!("member");
    owned["credentialsRef"] = json!({"name": "member"});
    env.create("chat", owned).await;
    let ready = env.wait_for_condition("chat", READY, "True", Some("Running"), CONVERGE).await;
    let (workspace_id, _) = ids(&ready);
    assert_eq!(ready.status.as_ref().unwrap().workspace.as_ref().unwrap().owner, "member");

    let admin = Chats::with(coderd, &coderd.admin_api()).await;
    let chat_id = admin.create(&workspace_id, &format!("the admin's chat on {workspace}")).await;
    let chat_id = chat_id.expect("the admin creates a chat")["id"].as_str().expect("a chat id").to_owned();
    admin.wait(&chat_id, "answered", CONVERGE, |chat| chat["status"] == "waiting").await;
    let seen_by_admin = admin.by_workspace(&[&workspace_id]).await.expect("the admin's lookup");
    assert_eq!(seen_by_admin[&workspace_id], json!(chat_id), "the chat is bound to the workspace");
    let member = Chats::with(coderd, &coderd.api_as(&member_token)).await;
    assert_eq!(member.by_workspace(&[&workspace_id]).await.expect("the member's lookup"), json!({}));
    let hidden = member.get(&chat_id).await.expect_err("the member cannot read the admin's chat");
    assert_eq!(hidden.status, 404, "{hidden}");

    // Several lookups later: no chat shown, never Degraded.
    let deadline = Instant::now() + CHAT_INTERVAL * 3;
    while Instant::now() < deadline {
        let cws = env.get("chat").await;
        assert!(chat_of(&cws).is_none(), "a chat the token cannot see is shown: {:?}", chat_of(&cws));
        let (degraded, reason, message) = condition(&cws, DEGRADED);
        assert_ne!(degraded, "True", "Degraded by a hidden chat: {reason}: {message}");
        assert!(conditions::is_true(&cws.status.as_ref().unwrap().conditions, READY));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cws = env.wait_for_condition("chat", CHAT_CONTEXT_CURRENT, "False", Some("NoChat"), CONVERGE).await;
    assert!(chat_of(&cws).is_none());

    // The same resource with the admin's token: the chat was hidden by the
    // token's view, not missed by the operator.
    env.credentials_secret("admin", coderd.url(), &coderd.admin.token).await;
    let patch = json!({"spec": {"credentialsRef": {"name": "admin"}}});
    env.api.patch("chat", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("patch");
    env.wait_for("chat", "showing the admin's chat", CONVERGE, |cws| chat_of(cws).is_some_and(|c| c.id == chat_id))
        .await;
}

/// The operator's chat requests so far, by endpoint, from its metrics.
fn chat_requests(env: &Operated) -> std::collections::BTreeMap<String, f64> {
    let exposition = parse_exposition(&env.metrics.render()).expect("the operator's metrics parse");
    exposition
        .samples
        .iter()
        .filter(|s| s.name == "chatworkspace_coder_requests_total")
        .filter(|s| s.labels.get("endpoint").is_some_and(|e| e.contains("/chats")))
        .fold(std::collections::BTreeMap::new(), |mut counts, s| {
            *counts.entry(s.labels["endpoint"].clone()).or_default() += s.value;
            counts
        })
}

/// The chat side's cost at steady state against the real coderd, counted
/// in the operator's metrics: one by-workspace lookup per owner (for up to
/// 25 workspaces) per chat interval, one read per chat per detail interval,
/// nothing else. `CWS_CHAT_STEADY_DEFAULTS=1` runs it with the production
/// intervals (5 min, 1 h) instead, and `CWS_CHAT_STEADY_WINDOW=<seconds>`
/// sets the window (default 30 s), for the figures in docs/performance.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_at_steady_state_are_one_lookup_per_owner_and_one_read_per_chat_per_interval() {
    const WORKSPACES: usize = 3;
    let defaults = std::env::var("CWS_CHAT_STEADY_DEFAULTS").is_ok_and(|v| v == "1");
    let window =
        Duration::from_secs(std::env::var("CWS_CHAT_STEADY_WINDOW").ok().and_then(|s| s.parse().ok()).unwrap_or(30));
    let coderd = Coderd::shared();
    let mut env = Operated::without_operator("real-chat-steady", coderd.url(), &coderd.admin.token).await;
    if !defaults {
        env.tweak = Some(short_chat_intervals);
    }
    env.start_operator();
    let chats = Chats::with(coderd, &coderd.admin_api()).await;
    let mut provisioners = Vec::new();
    let mut chat_ids = Vec::new();
    for i in 0..WORKSPACES {
        let (template, spec_, workspace) = coderd.agent_template("steady").await;
        provisioners.push(coderd.provisioner("admin", &workspace, spec_.token()));
        env.create(&format!("chat-{i}"), spec(&workspace, &template)).await;
    }
    for i in 0..WORKSPACES {
        let name = format!("chat-{i}");
        let ready = env.wait_for_condition(&name, READY, "True", Some("Running"), CONVERGE).await;
        let (workspace_id, _) = ids(&ready);
        let created = chats.create(&workspace_id, &format!("steady state of {name}")).await.expect("create a chat");
        let id = created["id"].as_str().expect("a chat id").to_owned();
        chats.wait(&id, "answered", CONVERGE, |chat| chat["status"] == "waiting").await;
        chat_ids.push(id);
    }
    // A new chat is found at the next round of lookups: up to one interval.
    let found_within = if defaults { Duration::from_secs(330) } else { CONVERGE };
    for (i, id) in chat_ids.iter().enumerate() {
        env.wait_for(&format!("chat-{i}"), "showing its chat", found_within, |cws| {
            chat_of(cws).is_some_and(|c| &c.id == id && c.status == "waiting")
        })
        .await;
    }

    let before = chat_requests(&env);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = chat_requests(&env);
    let delta =
        |endpoint: &str| after.get(endpoint).copied().unwrap_or(0.0) - before.get(endpoint).copied().unwrap_or(0.0);
    let lookups = delta("GET /chats/by-workspace");
    let reads = delta("GET /chats/{id}");
    let total: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
    let per_workspace_minute = total / WORKSPACES as f64 / (elapsed / 60.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{WORKSPACES} workspaces with a chat on coderd v2.36.1, {} intervals, {elapsed:.0}s: {lookups} lookups, \
         {reads} chat reads, {total} chat requests in all: {per_workspace_minute:.3} per workspace per minute \
         (load average {})",
        if defaults { "production" } else { "the tests' 5 s" },
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    assert_eq!(total, lookups + reads, "nothing but lookups and reads at steady state: {after:?}");
    if !defaults {
        let rounds = elapsed / CHAT_INTERVAL.as_secs_f64();
        // Three workspaces of one owner fit one lookup.
        assert!(lookups <= rounds + 1.0, "{lookups} lookups in {rounds:.1} rounds");
        assert!(reads <= (rounds + 1.0) * WORKSPACES as f64, "{reads} reads in {rounds:.1} detail intervals");
    }
}
