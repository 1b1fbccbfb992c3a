//! What the operator costs Coder: the index observes each owner with a few
//! list requests per attention interval, however many workspaces that owner
//! has, and a hard cap bounds the request rate.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatworkspace_operator::coder::RateLimit;
use chatworkspace_operator::conditions::READY;
use coder_sim::SimConfig;
use serde_json::json;
use support::{Env, LONG};

const RESOURCES: usize = 6;

async fn create_ready(env: &Env) {
    for i in 0..RESOURCES {
        env.create(&format!("chat-{i}"), json!({"template": {"name": "docker-dev"}})).await;
    }
    for i in 0..RESOURCES {
        env.wait_for_condition(&format!("chat-{i}"), READY, "True", Some("Running"), LONG).await;
    }
}

#[tokio::test]
async fn settled_workspaces_are_observed_per_owner_not_per_workspace() {
    let env = Env::start("lists").await;
    create_ready(&env).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.sim.clear_requests();
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;

    let requests = env.sim.requests();
    let single_reads = requests.iter().filter(|r| r.path.contains("/workspace/")).count();
    let lists = requests.iter().filter(|r| r.method == "GET" && r.path == "/api/v2/workspaces").count();
    let builds = requests.iter().filter(|r| r.method == "POST").count();
    // One owner: per attention interval, the unhealthy list and the count
    // of running workspaces; per full interval, the whole list (one page).
    let index = support::fast_index();
    let polls = window.as_secs_f64() / index.attention_interval.as_secs_f64();
    let full = window.as_secs_f64() / index.full_interval.as_secs_f64();
    let bound = (2.0 * polls + full).ceil() as usize + 2;
    println!(
        "{RESOURCES} settled workspaces of one owner, {window:?}: {lists} list requests (bound {bound}), {single_reads} single reads"
    );
    assert_eq!(builds, 0, "nothing to build at steady state");
    assert_eq!(single_reads, 0, "settled workspaces need no read of their own");
    assert!(lists >= 1, "the workspaces are still observed");
    assert!(lists <= bound, "{lists} list requests in {window:?}; the owner's polls allow {bound}");
    let unhealthy = requests.iter().filter(|r| r.query.contains("healthy")).count();
    assert!(unhealthy >= 1, "the index asks coderd for unhealthy agents, with its own search filter");
}

#[tokio::test]
async fn coder_requests_never_exceed_the_configured_rate() {
    let mut env = Env::without_operator("ratelimit", SimConfig::fast()).await;
    let (per_second, burst) = (4.0, 4u32);
    env.rate_limit = Some(Arc::new(RateLimit::new(per_second, burst)));
    env.start_operator();
    create_ready(&env).await;

    let mut times: Vec<_> = env.sim.requests().into_iter().map(|r| r.at).collect();
    times.sort();
    let most_in_a_second = (0..times.len())
        .map(|i| times[i..].iter().take_while(|t| t.duration_since(times[i]).as_secs_f64() < 1.0).count())
        .max()
        .unwrap_or(0);
    println!("{} requests; at most {most_in_a_second} within one second", times.len());
    assert!(times.len() > 8, "the test needs more requests than one burst");
    assert!(
        most_in_a_second <= burst as usize + per_second as usize,
        "{most_in_a_second} requests within one second (limit {per_second}/s, burst {burst})"
    );
}
