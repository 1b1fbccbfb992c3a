//! Deletions that cannot finish at once. A cleanup build that keeps
//! failing in Coder is retried with backoff, each failure counted in status
//! (a restart keeps the count) and reported once; a deletion whose
//! credentials are gone, or whose namespace is being deleted, waits at most
//! `--cleanup-timeout` from its deletionTimestamp, saying why, then leaves
//! the workspace in Coder so that the namespace is not held forever.

mod support;

use std::time::{Duration, Instant};

use chatworkspace_operator::backoff::Backoff;
use chatworkspace_operator::conditions::READY;
use coder_sim::SimConfig;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use support::{Env, LONG};

async fn ready(env: &Env, name: &str) {
    env.wait_for_condition(name, READY, "True", Some("Running"), LONG).await;
}

fn notes(events: &[(String, String)], reason: &str) -> Vec<String> {
    events.iter().filter(|(r, _)| r == reason).map(|(_, note)| note.clone()).collect()
}

/// How often Events of `reason` were published for `name`: the operator
/// folds an Event repeated word for word into one Event's series.
/// Waits until `name`'s cleanup reports that it waits, and says why.
async fn cleanup_waiting(env: &Env, name: &str, what: &str) -> String {
    let waiting = env
        .wait_for(name, what, LONG, |cws| {
            cws.status.as_ref().and_then(|s| s.cleanup.as_ref()).is_some_and(|c| c.waiting.is_some())
        })
        .await;
    waiting.status.and_then(|s| s.cleanup).and_then(|c| c.waiting).expect("the cleanup waits")
}

async fn published(env: &Env, name: &str, reason: &str) -> i32 {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&Default::default()).await.expect("list events");
    list.items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

#[tokio::test]
async fn a_cleanup_stop_that_keeps_failing_is_retried_with_backoff_and_counted_across_a_restart() {
    let mut env = Env::without_operator("cleanup-backoff", SimConfig::fast()).await;
    env.settings.cleanup_backoff = Backoff { first: Duration::from_secs(2), max: Duration::from_secs(4) };
    env.start_operator();
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");
    for _ in 0..3 {
        env.sim.fail_next_build_with(Some(id), Some("stop"), "terraform destroy: state is locked", None);
    }

    env.delete("chat-1").await;
    // The first failure is counted in status before anything else happens.
    let counted = env
        .wait_for("chat-1", "one failed cleanup build counted", LONG, |cws| {
            cws.status.as_ref().and_then(|s| s.cleanup.as_ref()).is_some_and(|c| c.failed_builds == 1)
        })
        .await;
    let cleanup = counted.status.unwrap().cleanup.unwrap();
    assert_eq!(cleanup.last_error.as_deref(), Some("terraform destroy: state is locked"), "{cleanup:?}");
    // A restarted operator carries on from the count in status.
    env.kill_operator();
    env.start_operator();
    env.wait_gone("chat-1", Duration::from_secs(60)).await;

    let builds = env.sim.builds(id);
    let transitions: Vec<&str> = builds.iter().map(|b| b.transition.as_str()).collect();
    assert_eq!(transitions, ["start", "stop", "stop", "stop", "stop"], "three failed stops, then one that succeeded");
    // Each retry waited its backoff (2 s, 4 s, then the 4 s cap) after the
    // failed job: never the 200 ms of a build under way.
    let gaps: Vec<f64> = builds[1..]
        .windows(2)
        .map(|pair| pair[1].created_at.duration_since(pair[0].created_at).as_secs_f64())
        .collect();
    eprintln!("seconds between the failed cleanup stops and their retries: {gaps:.1?}");
    for (gap, wait) in gaps.iter().zip([2.0, 4.0, 4.0]) {
        assert!(*gap >= wait, "a retry came {gap:.1}s after the failed stop before it, not after {wait}s: {gaps:?}");
    }

    let events = env.events("chat-1").await;
    let failed = notes(&events, "CleanupBuildFailed");
    assert_eq!(published(&env, "chat-1", "CleanupBuildFailed").await, 3, "one Warning per failed build: {failed:?}");
    // Each says which build failed and how many in a row: the count went on
    // across the restart.
    assert_eq!(failed.len(), 3, "{failed:?}");
    for (number, attempt) in [(2, 1), (3, 2), (4, 3)] {
        let note = failed.iter().find(|n| n.contains(&format!("#{number} "))).unwrap_or_else(|| panic!("{failed:?}"));
        assert!(note.contains("state is locked"), "the job's error is shown: {note}");
        assert!(note.contains(&format!("failure {attempt} in a row")), "counted across the restart: {note}");
    }
}

#[tokio::test]
async fn a_deletion_whose_credentials_are_gone_waits_then_leaves_the_workspace_in_coder() {
    let timeout = Duration::from_secs(5);
    let mut env = Env::without_operator("cleanup-nocreds", SimConfig::fast()).await;
    env.settings.cleanup_timeout = timeout;
    env.start_operator();
    env.credentials_secret("team-coder", &env.sim.url(), &env.sim.token()).await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "team-coder"}})).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");

    // The Secret goes first, as when its namespace is deleted.
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .delete("team-coder", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    env.delete("chat-1").await;
    let message = cleanup_waiting(&env, "chat-1", "waiting for its credentials").await;
    assert!(message.contains("team-coder") && message.contains("credentials are gone"), "{message}");
    assert!(message.contains(&format!("admin/chat-1 (id {id})")), "the message names the workspace: {message}");
    env.wait_for_events("chat-1", &["DeletionBlocked"]).await;

    env.wait_gone("chat-1", LONG).await;
    let waited = deleted.elapsed();
    eprintln!("gave up on the deletion {waited:?} after it began (timeout {timeout:?})");
    // deletionTimestamp has whole seconds: the deadline may come up to 1 s early.
    assert!(waited >= timeout - Duration::from_secs(1), "gave up after {waited:?}, before {timeout:?}");
    let events = env.wait_for_events("chat-1", &["WorkspaceOrphaned"]).await;
    let orphaned = notes(&events, "WorkspaceOrphaned");
    assert_eq!(orphaned.len(), 1, "{orphaned:?}");
    let note = &orphaned[0];
    assert!(note.contains(&format!("admin/chat-1 (id {id})")), "which workspace: {note}");
    assert!(note.contains("team-coder") && note.contains("deletionPolicy Stop"), "and why: {note}");
    assert!(!note.contains(&env.sim.token()), "never the token: {note}");
    assert_eq!(published(&env, "chat-1", "DeletionBlocked").await, 1, "the wait is said once: {events:?}");
    assert_eq!(env.transitions(id), ["start"], "the workspace was left in Coder as it was");
}

#[tokio::test]
async fn a_deletion_in_a_terminating_namespace_gives_up_after_the_timeout() {
    let timeout = Duration::from_secs(4);
    let mut env = Env::without_operator("cleanup-nsgone", SimConfig::fast()).await;
    env.settings.cleanup_timeout = timeout;
    env.start_operator();
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    ready(&env, "chat-1").await;
    let id = env.workspace_id("admin", "chat-1");
    // Coder keeps failing the stop, so the policy cannot be applied.
    for _ in 0..20 {
        env.sim.fail_next_build_with(Some(id), Some("stop"), "provisioner unavailable", None);
    }

    // Without a controller-manager the namespace stays Terminating, as it
    // would while its last finalizers are pending.
    Api::<Namespace>::all(env.client.clone()).delete(&env.namespace, &DeleteParams::default()).await.unwrap();
    let deleted = Instant::now();
    env.delete("chat-1").await;
    let message = cleanup_waiting(&env, "chat-1", "waiting in a terminating namespace").await;
    assert!(message.contains("is being deleted") && message.contains(&env.namespace), "{message}");
    env.wait_gone("chat-1", LONG).await;
    let waited = deleted.elapsed();
    assert!(waited >= timeout - Duration::from_secs(1), "gave up after {waited:?}, before {timeout:?}");
    let transitions = env.transitions(id);
    assert_eq!(transitions[0], "start");
    assert!(transitions[1..].iter().all(|t| t == "stop"), "only the policy's stop was tried: {transitions:?}");
    assert!(env.sim.workspace_id("admin", "chat-1").is_some(), "the workspace is left in Coder");
}
