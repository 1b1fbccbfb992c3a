//! What the operator costs Coder: shared list observation instead of one
//! read per workspace, and a hard cap on the request rate.

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
async fn settled_workspaces_are_observed_through_shared_lists() {
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
    // Each resource is resynced every 2 s in tests: 18 reconciles in the
    // window, which one-read-per-object polling would pay with 18 reads.
    let reconciles = RESOURCES as f64 * window.as_secs_f64() / support::fast_requeue().stable.as_secs_f64();
    println!("{RESOURCES} settled workspaces, {window:?}: {lists} list requests, {single_reads} single reads");
    assert_eq!(builds, 0, "nothing to build at steady state");
    assert_eq!(single_reads, 0, "settled workspaces need no read of their own");
    assert!(lists >= 1, "the workspaces are still observed");
    assert!((lists as f64) < reconciles / 2.0, "{lists} lists for ~{reconciles} reconciles");
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
