//! The shape of a real deployment: many Coder owners with a few chat
//! workspaces each, one operator token for all of them, and workspaces in
//! Coder that no resource names. Observation costs what changes, not what
//! the number of owners is; actions never wait behind it; and a token that
//! reads only its own workspaces is served the same way.
//!
//! Each test runs the operator under a rate limit that one poll per owner
//! and attention tick would saturate many times over, with a resync far
//! longer than the test, so whatever it sees, it saw through the index.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatworkspace_operator::coder::RateLimit;
use chatworkspace_operator::conditions::{READY, RECOVERING};
use chatworkspace_operator::controller::Settings;
use coder_sim::{SimConfig, seed};
use futures::future::join_all;
use serde_json::json;
use support::{Env, LONG};

const OWNERS: usize = 100;
const PER_OWNER: usize = 2;

/// Requests per second the operator may send: a hundred owners polled one
/// by one would want several hundred at the fast attention interval.
const CAP: f64 = 25.0;

/// Far longer than any test: a resource is reconciled only when the index
/// (or its own requeue) asks.
const NO_RESYNC: Duration = Duration::from_secs(3600);

/// No resync, and healthy agents probed only when first seen: as with the
/// operator's defaults (a probe every five minutes), a death is noticed by
/// the attention poll, not by a routine probe that happens to come first.
fn observed_as_deployed(settings: &mut Settings) {
    settings.requeue.stable = NO_RESYNC;
    settings.index.probe_interval = NO_RESYNC;
}

fn owner(n: usize) -> String {
    format!("dev-{n:03}")
}

fn user(username: &str) -> seed::User {
    seed::User { id: None, username: username.to_owned(), name: String::new(), email: None, roles: Vec::new() }
}

/// A simulator whose deployment has `OWNERS` developers besides the seed's
/// users, and the operator (not started) under the cap.
async fn env(prefix: &str, mut config: SimConfig) -> Env {
    config.seed.users.extend((0..OWNERS).map(|n| user(&owner(n))));
    let mut env = Env::without_operator(prefix, config).await;
    env.tweak = Some(observed_as_deployed);
    env.rate_limit = Some(Arc::new(RateLimit::new(CAP, 5)));
    env
}

fn spec(owner: &str) -> serde_json::Value {
    json!({
        "desiredState": "Running",
        "owner": owner,
        "template": {"name": "docker-dev"},
        "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 3, "window": "1h"},
    })
}

fn resource(owner: usize, n: usize) -> String {
    format!("chat-{owner:03}-{n}")
}

/// Every owner's resources, applied at once, all Ready.
async fn many_owners_ready(env: &Env) {
    let all: Vec<(usize, usize)> = (0..OWNERS).flat_map(|o| (0..PER_OWNER).map(move |n| (o, n))).collect();
    let names: Vec<String> = all.iter().map(|&(o, n)| resource(o, n)).collect();
    join_all(all.iter().zip(&names).map(|(&(o, _), name)| env.create(name, spec(&owner(o))))).await;
    for &(o, n) in &all {
        env.wait_for_condition(&resource(o, n), READY, "True", Some("Running"), Duration::from_secs(180)).await;
    }
}

/// The simulator's fast timings: an agent is disconnected 1 s after its
/// last heartbeat (every 0.5 s); then the 2 s threshold, a probe (1 s), at
/// most one attention interval (0.3 s) to notice, and 2 s.
fn recovery_bound() -> jiff::SignedDuration {
    jiff::SignedDuration::from_millis(1_000 + 500 + 2_000 + 1_000 + 300 + 2_000)
}

/// Kills the agents of the workspaces `victims` (owner, resource) at once
/// and waits for each recovery's stop build: the longest time from the kill
/// to one.
async fn kill_and_await_the_stops(env: &Env, victims: &[(String, String)]) -> jiff::SignedDuration {
    let ids: Vec<uuid::Uuid> = victims.iter().map(|(owner, resource)| env.workspace_id(owner, resource)).collect();
    let killed_at = jiff::Timestamp::now();
    for id in &ids {
        env.sim.kill_agent(*id);
    }
    let mut slowest = jiff::SignedDuration::ZERO;
    for ((_, resource), id) in victims.iter().zip(&ids) {
        env.wait_for(resource, "past the recovery's stop build request", LONG, |_| {
            env.sim.builds(*id).iter().any(|b| b.transition == "stop")
        })
        .await;
        let stop = env.sim.builds(*id).into_iter().find(|b| b.transition == "stop").expect("the recovery's stop build");
        slowest = slowest.max(stop.created_at.duration_since(killed_at));
    }
    for ((_, resource), id) in victims.iter().zip(&ids) {
        env.wait_for_condition(resource, RECOVERING, "False", Some("Recovered"), LONG).await;
        assert_eq!(env.transitions(*id), ["start", "stop", "start"]);
    }
    slowest
}

#[tokio::test]
async fn an_agent_death_among_a_hundred_owners_is_recovered_within_the_bound() {
    let mut env = env("owners-death", SimConfig::fast()).await;
    env.start_operator();
    many_owners_ready(&env).await;

    // Ten owners' agents die at once: whichever owner is looked at last,
    // each death is seen within the attention interval.
    let victims: Vec<(String, String)> = (0..10).map(|n| (owner(n * 10 + 7), resource(n * 10 + 7, n % 2))).collect();
    let reaction = kill_and_await_the_stops(&env, &victims).await;
    let bound = recovery_bound();
    println!(
        "agent death to the recovery's stop build, the slowest of ten among {OWNERS} owners: {reaction:?} (bound {bound:?})"
    );
    assert!(reaction < bound, "the stop build came {reaction:?} after the kill; the bound is {bound:?}");
}

#[tokio::test]
async fn a_hundred_owners_are_resolved_from_one_read_of_coders_users_not_a_read_each() {
    let mut env = env("owners-directory", SimConfig::fast()).await;
    env.start_operator();
    many_owners_ready(&env).await;

    let requests = env.sim.requests();
    let directory = requests.iter().filter(|r| r.method == "GET" && r.path == "/api/v2/users").count();
    let one_by_one: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/api/v2/users/") && r.path.matches('/').count() == 4)
        .filter(|r| r.path != "/api/v2/users/me")
        .map(|r| r.path.as_str())
        .collect();
    println!(
        "{OWNERS} owners resolved with {directory} reads of the user directory and {} of one user",
        one_by_one.len()
    );
    // One read, and one more if the resources' reconciles outlast a
    // directory's minute.
    assert!((1..=2).contains(&directory), "{directory} reads of the user directory");
    assert!(one_by_one.is_empty(), "owners read one by one: {one_by_one:?}");
}

#[tokio::test]
async fn a_create_among_a_hundred_owners_is_not_delayed_by_observation() {
    let mut env = env("owners-create", SimConfig::fast()).await;
    env.start_operator();
    many_owners_ready(&env).await;

    // At rest the index keeps observing a hundred owners' workspaces; a new
    // resource's create must not queue behind that.
    let path = format!("/api/v2/users/{}/workspaces", owner(42));
    let is_the_create = |r: &coder_sim::RequestRecord| {
        r.method == "POST" && r.path == path && r.body.as_ref().is_some_and(|b| b["name"] == "late-arrival")
    };
    let applied_at = jiff::Timestamp::now();
    env.create("late-arrival", spec(&owner(42))).await;
    env.wait_for("late-arrival", "its create sent", LONG, |_| env.sim.requests().iter().any(is_the_create)).await;
    let create = env.sim.requests().into_iter().find(is_the_create).expect("the create");
    let delay = create.at.duration_since(applied_at);
    // The watch, one reconcile and its two requests (a fresh read by name,
    // then the create), with nothing in front of them.
    let bound = jiff::SignedDuration::from_millis(1_500);
    println!("resource applied to its create request among {OWNERS} owners at rest: {delay:?} (bound {bound:?})");
    assert!(delay < bound, "the create was sent {delay:?} after the resource was applied; the bound is {bound:?}");
    env.wait_for_condition("late-arrival", READY, "True", Some("Running"), LONG).await;
}

#[tokio::test]
async fn a_token_that_reads_only_its_own_workspaces_still_observes_and_recovers_them() {
    // The token is a member's, who reads only their own workspaces; the
    // others' (some of them with dead agents) are invisible to it.
    let mut config = SimConfig::fast();
    config.seed.token_user = owner(3);
    let mut env = env("owners-member", config).await;
    let others: Vec<uuid::Uuid> =
        (0..20).map(|n| env.sim.create_workspace(&owner(10 + n), &format!("ide-{n}"), "docker-dev")).collect();
    env.start_operator();
    for n in 0..PER_OWNER {
        env.create(&resource(3, n), json!({"desiredState": "Running", "template": {"name": "docker-dev"},
            "recovery": {"mode": "Automatic", "disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 3, "window": "1h"}}))
        .await;
    }
    for n in 0..PER_OWNER {
        env.wait_for_condition(&resource(3, n), READY, "True", Some("Running"), LONG).await;
    }
    for id in others.iter().take(5) {
        env.sim.kill_agent(*id);
    }

    let reaction = kill_and_await_the_stops(&env, &[(owner(3), resource(3, 0))]).await;
    let bound = recovery_bound();
    println!("agent death to the recovery's stop build with a member's token: {reaction:?} (bound {bound:?})");
    assert!(reaction < bound, "the stop build came {reaction:?} after the kill; the bound is {bound:?}");
    // Nobody else's workspace was built.
    for id in others {
        assert_eq!(env.transitions(id), ["start"]);
    }
}

#[tokio::test]
async fn resources_that_register_after_the_first_list_find_their_workspaces_by_id_a_hundred_per_request() {
    const LATE_OWNERS: usize = 20;
    let mut env = env("owners-late", SimConfig::fast()).await;
    // Workspaces in Coder before the operator starts: each owner's chats and
    // an IDE workspace that no resource names.
    for o in 0..=LATE_OWNERS {
        for n in 0..PER_OWNER {
            env.sim.create_workspace(&owner(o), &resource(o, n), "docker-dev");
        }
        env.sim.create_workspace(&owner(o), &format!("ide-{o}"), "docker-dev");
    }
    let adopting = |o: usize| {
        let mut spec = spec(&owner(o));
        spec["adopt"] = json!(true);
        spec
    };
    env.start_operator();
    // The first resource makes the index list everything.
    env.create(&resource(0, 0), adopting(0)).await;
    env.wait_for_condition(&resource(0, 0), READY, "True", None, LONG).await;
    env.sim.clear_requests();

    // The rest register after that list, which kept none of their
    // workspaces (no resource named them then).
    let late: Vec<(usize, usize)> = (1..=LATE_OWNERS).flat_map(|o| (0..PER_OWNER).map(move |n| (o, n))).collect();
    let names: Vec<String> = late.iter().map(|&(o, n)| resource(o, n)).collect();
    join_all(late.iter().zip(&names).map(|(&(o, _), name)| env.create(name, adopting(o)))).await;
    for &(o, n) in &late {
        env.wait_for_condition(&resource(o, n), READY, "True", None, LONG).await;
    }
    let requests = env.sim.requests();
    let lists = || requests.iter().filter(|r| r.method == "GET" && r.path == "/api/v2/workspaces");
    let reads = requests.iter().filter(|r| r.method == "GET" && r.path.contains("/workspace/")).count();
    let owner_lists = lists().filter(|r| r.query.contains("owner%3A") || r.query.contains("owner:")).count();
    let id_lists = lists().filter(|r| r.query.contains("id%3A") || r.query.contains("q=id:")).count();
    let builds = requests
        .iter()
        .filter(|r| r.method == "POST" && (r.path.ends_with("/builds") || r.path.ends_with("/workspaces")))
        .count();
    println!(
        "{} resources registered after the first list, over {LATE_OWNERS} owners: \
         {reads} reads by name, {owner_lists} lists of one owner, {id_lists} reads by id, {builds} builds or creates",
        late.len()
    );
    assert_eq!(reads, 0, "a read by name for a workspace a list had passed over");
    assert_eq!(owner_lists, 0, "an owner was listed again for the names that came late");
    // A page of ids per request, across owners: the names that register
    // within one poll tick (200 ms here) share a request, so the requests
    // are bounded by the ticks the registrations spread over (about a
    // second, reconciles included), never by the names.
    let bound = late.len().div_ceil(100) + 5;
    assert!(id_lists <= bound, "{id_lists} reads by id for {} names (bound {bound})", late.len());
    assert_eq!(builds, 0, "an existing workspace was built or created again");
}
