//! The Coder index observes Coder in the background and wakes only
//! the resources whose workspace changed; the resync is a safety net. Each
//! test here runs the operator with a resync far longer than the test, so
//! whatever it sees, it saw through the index.

mod support;

use std::time::Duration;

use chatworkspace_operator::coder::WorkspaceTransition;
use chatworkspace_operator::conditions::{READY, RECOVERING};
use chatworkspace_operator::controller::Settings;
use coder_sim::{Fault, FaultKind, SimConfig};
use serde_json::json;
use support::{Env, LONG};

/// Far longer than any test: a resource is reconciled only when the index
/// (or its own requeue) asks.
const NO_RESYNC: Duration = Duration::from_secs(3600);

fn without_resync(settings: &mut Settings) {
    settings.requeue.stable = NO_RESYNC;
}

async fn env(prefix: &str) -> Env {
    let mut env = Env::without_operator(prefix, SimConfig::fast()).await;
    env.tweak = Some(without_resync);
    env.start_operator();
    env
}

fn spec() -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "template": {"name": "docker-dev"},
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 3, "window": "1h"},
    })
}

#[tokio::test]
async fn an_agent_death_wakes_the_recovery_without_a_resync() {
    let env = env("wake-death").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    let killed_at = jiff::Timestamp::now();
    env.sim.kill_agent(id);
    env.wait_for_condition("chat-1", RECOVERING, "True", None, LONG).await;
    // Recovering is written down before the stop build is asked for.
    env.wait_for("chat-1", "past the recovery's stop build request", LONG, |_| {
        env.sim.builds(id).iter().any(|b| b.transition == "stop")
    })
    .await;
    let stop = env.sim.builds(id).into_iter().find(|b| b.transition == "stop").expect("the recovery's stop build");
    let reaction = stop.created_at.duration_since(killed_at);
    // The simulator's fast timings: an agent is disconnected 1 s after its
    // last heartbeat (every 0.5 s); then the 2 s threshold, a probe, and at
    // most one attention interval (0.3 s) to notice.
    let bound = jiff::SignedDuration::from_millis(1_000 + 500 + 2_000 + 1_000 + 300 + 2_000);
    println!("agent death to the recovery's stop build: {reaction:?} (bound {bound:?})");
    assert!(reaction < bound, "the stop build came {reaction:?} after the kill; the bound is {bound:?}");
    env.wait_for_condition("chat-1", RECOVERING, "False", Some("Recovered"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "start"]);
}

#[tokio::test]
async fn a_stop_made_in_coder_is_seen_without_a_resync() {
    let env = env("wake-stop").await;
    env.create("chat-1", spec()).await;
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let seen = ready.status.as_ref().and_then(|s| s.latest_build.as_ref()).map(|b| b.number).unwrap();
    let id = env.workspace_id("admin", "chat-1");

    // What a person's Stop button in Coder's dashboard sends.
    let stop = env.build_in_coder(id, WorkspaceTransition::Stop).await;
    assert!(stop.build_number > seen);
    let noticed = env
        .wait_for("chat-1", "updated with the outside stop", Duration::from_secs(10), |cws| {
            cws.status.as_ref().and_then(|s| s.latest_build.as_ref()).is_some_and(|b| b.number >= stop.build_number)
        })
        .await;
    assert!(noticed.status.is_some());
}

/// Neither the resync nor the index's backstop list within a test.
fn without_resync_or_backstop(settings: &mut Settings) {
    without_resync(settings);
    settings.index.full_interval = NO_RESYNC;
}

#[tokio::test]
async fn a_stop_made_in_coder_is_seen_while_its_build_runs_without_a_list_of_everything() {
    // Stop builds that outlast several attention intervals, as a real
    // template's do.
    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(3);
    let mut env = Env::without_operator("wake-stop-building", config).await;
    env.tweak = Some(without_resync_or_backstop);
    env.start_operator();
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");
    // Settled: no build followed any more, so the index reads the count.
    env.sim.clear_requests();
    env.wait_for("chat-1", "the running count read at rest", LONG, |_| {
        env.sim.requests().iter().any(|r| r.query.contains("status%3Arunning"))
    })
    .await;

    env.sim.clear_requests();
    let stop = env.build_in_coder(id, WorkspaceTransition::Stop).await;
    env.wait_for("chat-1", "updated with the outside stop", Duration::from_secs(10), |cws| {
        cws.status.as_ref().and_then(|s| s.latest_build.as_ref()).is_some_and(|b| b.number >= stop.build_number)
    })
    .await;
    let lists: Vec<String> =
        env.sim.requests().into_iter().filter(|r| r.path == "/api/v2/workspaces").map(|r| r.query).collect();
    assert!(lists.iter().any(|query| query.contains("status%3Astopping")), "the builds under way were read: {lists:?}");
    assert!(
        !lists.iter().any(|query| query.split('&').any(|pair| pair == "q=")),
        "a stop seen while its build runs costs no list of everything: {lists:?}"
    );
}

/// Attention ticks far enough apart that a build made in Coder right after
/// one (half a second, the simulator's fast timings) ends before the next.
fn slow_attention_without_resync_or_backstop(settings: &mut Settings) {
    without_resync_or_backstop(settings);
    settings.index.attention_interval = Duration::from_secs(3);
}

/// The workspace lists in the simulator's log, by their decoded query.
fn lists(env: &Env) -> Vec<String> {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v2/workspaces")
        .map(|r| r.query.replace("%3A", ":").replace('+', " "))
        .collect()
}

fn is_everything(query: &str) -> bool {
    query.split('&').any(|pair| pair == "q=")
}

fn is_running_count_by_id(query: &str) -> bool {
    query.contains("q=status:running id:")
}

/// Waits for an attention tick's running count (the last query of a tick)
/// that is not part of a count by id.
async fn after_a_tick(env: &Env) {
    env.sim.clear_requests();
    env.wait_for("chat-1", "an attention tick's running count", LONG, |_| {
        lists(env).iter().any(|q| q.contains("q=status:running&"))
    })
    .await;
}

#[tokio::test]
async fn a_stop_made_in_coder_that_ended_between_two_ticks_is_found_by_running_counts_not_a_list_of_everything() {
    let mut env = Env::without_operator("wake-stop-ended", SimConfig::fast()).await;
    // Workspaces no resource names, in the same counts.
    let others: Vec<uuid::Uuid> =
        (0..3).map(|n| env.sim.create_workspace("admin", &format!("ide-{n}"), "docker-dev")).collect();
    env.tweak = Some(slow_attention_without_resync_or_backstop);
    env.start_operator();
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");
    // Settled: the running count matches what the index holds.
    after_a_tick(&env).await;
    after_a_tick(&env).await;

    // Stopped in Coder right after a tick: over before the next one.
    let stop = env.build_in_coder(id, WorkspaceTransition::Stop).await;
    env.wait_for("chat-1", "updated with the outside stop", Duration::from_secs(10), |cws| {
        cws.status.as_ref().and_then(|s| s.latest_build.as_ref()).is_some_and(|b| b.number >= stop.build_number)
    })
    .await;
    let seen = lists(&env);
    assert!(seen.iter().any(|q| is_running_count_by_id(q)), "the named workspaces' running count was read: {seen:?}");
    assert!(
        !seen.iter().any(|q| is_everything(q)),
        "a stop that ended between ticks costs no list of everything: {seen:?}"
    );

    // A workspace no resource names stops the same way: the counts by id
    // find nothing of the named ones, and the count becomes the unnamed
    // workspaces' own, so the ticks after it read nothing more.
    after_a_tick(&env).await;
    env.build_in_coder(others[0], WorkspaceTransition::Stop).await;
    env.wait_for("chat-1", "the named workspaces counted by id", LONG, |_| {
        lists(&env).iter().any(|q| is_running_count_by_id(q))
    })
    .await;
    after_a_tick(&env).await;
    after_a_tick(&env).await;
    let seen = lists(&env);
    assert!(!seen.iter().any(|q| is_running_count_by_id(q)), "the unnamed stop was counted again: {seen:?}");
    assert!(!seen.iter().any(|q| is_everything(q)), "an unnamed stop costs no list of everything: {seen:?}");
}

/// Attention ticks far enough apart that the running count read halfway
/// between two of them is the only request to see a stop made in Coder.
fn attention_every_six_seconds_without_resync_or_backstop(settings: &mut Settings) {
    without_resync_or_backstop(settings);
    settings.index.attention_interval = Duration::from_secs(6);
}

#[tokio::test]
async fn a_stop_made_in_coder_right_after_an_attention_tick_is_seen_before_the_next_one() {
    let mut env = Env::without_operator("wake-stop-halfway", SimConfig::fast()).await;
    env.tweak = Some(attention_every_six_seconds_without_resync_or_backstop);
    env.start_operator();
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");
    let unhealthy_list = |q: &String| q.contains("q=healthy:false");
    for _ in 0..2 {
        env.sim.clear_requests();
        env.wait_for("chat-1", "an attention tick's unhealthy list", LONG, |_| lists(&env).iter().any(unhealthy_list))
            .await;
    }

    // Its build (half a second) ends long before the next tick.
    env.sim.clear_requests();
    let stop = env.build_in_coder(id, WorkspaceTransition::Stop).await;
    env.wait_for("chat-1", "updated with the outside stop", LONG, |cws| {
        cws.status.as_ref().and_then(|s| s.latest_build.as_ref()).is_some_and(|b| b.number >= stop.build_number)
    })
    .await;
    let seen = lists(&env);
    assert!(
        !seen.iter().any(unhealthy_list),
        "the stop waited for the next attention tick, not the running count read halfway to it: {seen:?}"
    );
}

#[tokio::test]
async fn a_workspace_deleted_in_coder_is_seen_without_a_resync() {
    let env = env("wake-delete").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.build_in_coder(id, WorkspaceTransition::Delete).await;
    // Desired Running: the operator creates it again, which it can only do
    // once it has seen the deletion.
    env.wait_for("chat-1", "on a new workspace", LONG, |cws| {
        cws.status.as_ref().and_then(|s| s.workspace.as_ref()).is_some_and(|w| w.id != id.to_string())
    })
    .await;
}

#[tokio::test]
async fn a_429_pauses_every_request_of_the_token_for_its_retry_after() {
    let env = env("ratelimited").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    // The index polls every few hundred milliseconds: without the pause,
    // a dozen requests would arrive in the next two seconds.
    env.sim.clear_requests();
    env.sim.inject_fault(Fault::new("/api/v2/workspaces", FaultKind::RateLimited(2)).method("GET").times(1));
    let deadline = std::time::Instant::now() + LONG;
    let limited = loop {
        if let Some(at) = env.sim.requests().iter().find(|r| r.status == 429).map(|r| r.at) {
            break at;
        }
        assert!(std::time::Instant::now() < deadline, "the operator never hit the injected 429");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = env.sim.requests();
    let after: Vec<_> = requests.iter().filter(|r| r.at > limited).collect();
    let too_soon: Vec<_> = after.iter().filter(|r| r.at.duration_since(limited).as_millis() < 1_900).collect();
    assert!(too_soon.is_empty(), "requests within Retry-After of the 429: {too_soon:?}");
    assert!(!after.is_empty(), "requests resume after Retry-After");
}

#[tokio::test]
async fn with_one_worker_no_resource_starves() {
    let mut env = Env::without_operator("fair", SimConfig::fast()).await;
    env.tweak = Some(|settings: &mut Settings| {
        settings.requeue.stable = NO_RESYNC;
        settings.concurrency = 1;
    });
    env.start_operator();
    let names: Vec<String> = (0..24).map(|i| format!("chat-{i}")).collect();
    for name in &names {
        env.create(name, spec()).await;
    }
    for name in &names {
        env.wait_for_condition(name, READY, "True", Some("Running"), Duration::from_secs(90)).await;
    }
}

#[tokio::test]
async fn a_workspace_renamed_in_coder_is_followed_by_id_not_duplicated() {
    let env = env("renamed").await;
    env.create("chat-1", spec()).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("admin", "chat-1");

    env.sim.rename(id, "chat-1-renamed");
    // A stop asked for after the rename reaches the renamed workspace.
    env.set_desired_state("chat-1", "Stopped").await;
    let stopped = env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    let workspace = stopped.status.as_ref().and_then(|s| s.workspace.clone()).unwrap();
    assert_eq!(workspace.id, id.to_string());
    assert_eq!(workspace.name, "chat-1-renamed", "status follows the rename");
    assert_eq!(env.transitions(id), ["start", "stop"]);
    assert!(env.sim.workspace_id("admin", "chat-1").is_none(), "no second workspace under the old name");
}

/// Issue: 10,000 resources observed soon after a start. Each resource's
/// first status already holds what the index completes a moment after
/// first sight (the agent's first probe, the chat lookup): one status write
/// per resource, not two or three.
#[tokio::test]
async fn a_resource_seen_for_the_first_time_is_written_once_with_the_whole_picture() {
    use chatworkspace_operator::conditions::{AGENT_REACHABLE, CHAT_CONTEXT_CURRENT};
    use chatworkspace_operator::crd::ChatWorkspace;
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let mut env = Env::without_operator("first-sight", SimConfig::fast()).await;
    env.tweak = Some(without_resync);
    // A running workspace with a ready agent before the operator sees it.
    let id = env.sim.create_workspace("admin", "chat-1", "docker-dev");
    let client = env.coder_client();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let workspace = client.workspace(&id.to_string()).await.expect("read the workspace");
        let ready = workspace.latest_build.agents().any(|a| a.lifecycle_state.as_str() == "ready");
        if ready {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the simulator's workspace never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut adopting = spec();
    adopting["adopt"] = json!(true);
    env.create("chat-1", adopting).await;
    // The chat lookup answers after the probe, so both must be waited for.
    let slow = Fault::new("/api/experimental/chats/by-workspace", FaultKind::Latency(Duration::from_millis(1500)));
    env.sim.inject_fault(slow.times(1));

    // Every status the apiserver stores for it, in order.
    let api: kube::Api<ChatWorkspace> = kube::Api::namespaced(env.client.clone(), &env.namespace);
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = statuses.clone();
    let watch = tokio::spawn(async move {
        let mut changes = watcher(api, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(cws)) = changes.next().await {
            let mut seen = seen.lock().unwrap();
            if support::written_by_operator(cws.status.as_ref()) && seen.last() != Some(&cws.status) {
                seen.push(cws.status);
            }
        }
    });
    env.start_operator();
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    watch.abort();

    let statuses = statuses.lock().unwrap().clone();
    let first = statuses.first().and_then(Option::as_ref).expect("a status was written");
    let reason = |type_| {
        chatworkspace_operator::conditions::find(&first.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(reason(READY), Some(("True".into(), "Running".into())), "the first status is already Ready");
    assert_eq!(reason(AGENT_REACHABLE), Some(("True".into(), "Reachable".into())), "with the first probe");
    assert_ne!(reason(CHAT_CONTEXT_CURRENT).map(|r| r.1), Some("NotObserved".into()), "and the chat lookup");
    assert_eq!(statuses.len(), 1, "one status write, not {}: {statuses:#?}", statuses.len());
}
