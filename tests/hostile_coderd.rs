//! A tenant's own coderd (a `credentialsRef` URL on the allow-list) may be
//! broken or hostile: it must not make the operator page forever, hold what
//! it lists beyond what resources name, read a body of any size, or keep
//! the resources of other Coders and other owners waiting. And hanging
//! probes of one owner must not keep another owner's new agent unprobed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatworkspace_operator::admin::Readiness;
use chatworkspace_operator::coder::{RateLimit, SessionToken};
use chatworkspace_operator::conditions::READY;
use chatworkspace_operator::controller::{self, Context};
use chatworkspace_operator::credentials::Credentials;
use chatworkspace_operator::tenancy::urls::AllowedUrls;
use coder_sim::{Fault, FaultKind, SimConfig, Simulator};
use serde_json::json;
use support::{Env, LONG};

const PROBES: &str = "/api/v2/workspaceagents/";

/// The operator against the test's simulator (the default credentials),
/// with any URL allowed in a `credentialsRef` Secret and the production
/// request budget (5/s, bursts of 10).
fn start_operator_allowing_any_url(env: &Env) -> tokio::task::JoinHandle<()> {
    let credentials = Credentials::new(
        Some((env.sim.url(), SessionToken::new(env.sim.token()).unwrap())),
        env.request_timeout,
        Some(env.metrics.clone()),
        Some(Arc::new(RateLimit::new(5.0, 10))),
    )
    .unwrap()
    .with_allowed_urls(AllowedUrls::any());
    let context = Arc::new(Context::new(env.client.clone(), credentials, env.metrics.clone(), env.settings()));
    tokio::spawn(controller::run(context, Arc::new(Readiness::default()), std::future::pending::<()>()))
}

/// The `offset` a list request asked for.
fn offset(query: &str) -> u32 {
    query.split('&').find_map(|pair| pair.strip_prefix("offset=")).and_then(|o| o.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_hostile_coderd_neither_pages_forever_nor_holds_up_another_coderds_resource() {
    let env = Env::without_operator("hostile", SimConfig::fast()).await;
    let hostile = Simulator::start(SimConfig::fast()).await.expect("start the hostile simulator");
    hostile.create_workspace("alice", "listed-1", "docker-dev");
    // Every page starts over, claims a billion workspaces and carries 400
    // made-up ones beyond its limit; a read by name answers 64 MiB; the
    // rest answers slowly.
    hostile.inject_fault(
        Fault::new("/api/v2/workspaces?", FaultKind::HostileList { count: 1_000_000_000, padding: 400 }).method("GET"),
    );
    hostile.inject_fault(Fault::new("/api/v2/users/alice/workspace/", FaultKind::HugeBody(64 << 20)).method("GET"));
    hostile.inject_fault(Fault::new("/api/v2/", FaultKind::Latency(Duration::from_millis(500))));
    env.credentials_secret("tenant-coder", &hostile.url(), &hostile.token()).await;
    let operator = start_operator_allowing_any_url(&env);

    env.create(
        "on-hostile",
        json!({"owner": "alice", "template": {"name": "docker-dev"}, "credentialsRef": {"name": "tenant-coder"}}),
    )
    .await;
    // The hostile coderd is being listed...
    let deadline = Instant::now() + LONG;
    while !hostile.requests().iter().any(|r| r.path == "/api/v2/workspaces") {
        assert!(Instant::now() < deadline, "the hostile coderd was never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...while a resource on the well-behaved coderd comes up as usual.
    env.create("elsewhere", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("elsewhere", READY, "True", Some("Running"), LONG).await;

    // Each list took at most the two pages one named workspace can need,
    // whatever the count claimed and however long the pages were.
    let lists: Vec<u32> =
        hostile.requests().iter().filter(|r| r.path == "/api/v2/workspaces").map(|r| offset(&r.query)).collect();
    let firsts = lists.iter().filter(|o| **o == 0).count();
    let seconds = lists.iter().filter(|o| **o == 100).count();
    assert!(lists.iter().all(|o| *o == 0 || *o == 100), "offsets asked of the hostile coderd: {lists:?}");
    assert!(seconds <= firsts, "at most one page after each first: {lists:?}");

    // The hostile answer that no real one comes near is refused, and said so.
    env.wait_for("on-hostile", "told the answer is too large", LONG, |resource| {
        resource.status.as_ref().is_some_and(|status| {
            status.conditions.iter().any(|c| c.message.contains("larger than the 8 MiB the operator reads from Coder"))
        })
    })
    .await;
    operator.abort();
}

#[tokio::test]
async fn hanging_probes_of_other_owners_do_not_keep_a_new_agent_unprobed() {
    let mut config = SimConfig::fast();
    // A partitioned agent's probe hangs past the operator's probe timeout.
    config.timings.dial_limit = Duration::from_secs(120);
    let mut env = Env::without_operator("starved", config).await;
    env.start_operator();
    // Eight agents of alice and eight of bob, with the default probe
    // timeout (30 s): a hanging probe would hold its permit that long.
    let hanging: Vec<(&str, String)> =
        ["alice", "bob"].into_iter().flat_map(|owner| (0..8).map(move |i| (owner, format!("{owner}-{i}")))).collect();
    for (owner, name) in &hanging {
        env.create(name, json!({"owner": owner, "template": {"name": "docker-dev"}})).await;
    }
    for (_, name) in &hanging {
        env.wait_for_condition(name, READY, "True", Some("Running"), LONG).await;
    }
    for (owner, name) in &hanging {
        env.sim.partition_probe(env.workspace_id(owner, name), true);
    }
    // Their next probes hang and take the whole pool of eight.
    let deadline = Instant::now() + LONG;
    while env.sim.in_flight_under(PROBES) < 8 {
        assert!(Instant::now() < deadline, "the probes of alice's and bob's agents never hung");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A third owner's new resource is probed and Ready long before any of
    // those probes could time out and give its permit back (30 s): a
    // liveness bound, not a measure of speed.
    env.create("newcomer", json!({"owner": "admin", "template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("newcomer", READY, "True", Some("Running"), Duration::from_secs(20)).await;
    assert!(env.sim.in_flight_under(PROBES) >= 6, "alice's and bob's probes were still hanging meanwhile");
}

#[tokio::test]
async fn after_a_restart_resources_over_an_owners_many_other_workspaces_are_found_with_at_most_a_read_each() {
    let mut env = Env::without_operator("many", SimConfig::fast()).await;
    // alice has far more workspaces than resources name: a list takes only
    // the pages the named ones fill, plus one.
    for i in 0..300 {
        env.sim.create_workspace("alice", &format!("existing-{i:03}"), "docker-dev");
    }
    env.start_operator();
    let adopted: Vec<String> = (260..300).map(|i| format!("existing-{i:03}")).collect();
    for name in &adopted {
        let spec =
            json!({"owner": "alice", "desiredState": "Stopped", "template": {"name": "docker-dev"}, "adopt": true});
        env.create(name, spec).await;
    }
    for name in &adopted {
        env.wait_for_condition(name, READY, "True", Some("Stopped"), LONG).await;
    }

    // A restart: the new index's first list is cut short after two pages
    // (the 40 names fill one), and alice's 300 workspaces do not fit.
    env.stop_operator().await;
    env.sim.clear_requests();
    env.metrics = Arc::new(chatworkspace_operator::metrics::Metrics::default());
    env.start_operator();
    let deadline = Instant::now() + LONG;
    while env.metrics.observed_resources.get() < adopted.len() as i64 {
        assert!(Instant::now() < deadline, "not every resource was observed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The named workspaces the list did not reach are read on their own,
    // once each at most, and none is taken for absent and created again.
    let requests = env.sim.requests();
    let reads = requests
        .iter()
        .filter(|r| r.path.starts_with("/api/v2/users/alice/workspace/") || r.path.starts_with("/api/v2/workspaces/"))
        .count();
    let lists = requests.iter().filter(|r| r.path == "/api/v2/workspaces").count();
    let creates = requests.iter().filter(|r| r.method == "POST" && r.path.ends_with("/workspaces")).count();
    assert_eq!(creates, 0);
    assert!(reads <= adopted.len(), "{reads} reads of one workspace ({lists} lists) for {} resources", adopted.len());
    assert!(lists <= 4, "{lists} list requests");
}
