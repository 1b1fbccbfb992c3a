//! Tenancy. A namespace drives only the Coder workspaces it was
//! granted (the Namespace annotation `chat.coder.com/coder-owners`), owners
//! are compared as Coder resolves them, a Secret's Coder URL must be on the
//! allow-list, an existing workspace is adopted (and deleted) only with
//! consent, and the default token file is picked up when it rotates.
//! Against the real kube-apiserver and the Coder simulator.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chatworkspace_operator::conditions::{self, DEGRADED, READY};
use chatworkspace_operator::crd::ChatWorkspace;
use chatworkspace_operator::tenancy::OWNERS_ANNOTATION;
use chatworkspace_operator::tenancy::installs::INSTALL_ANNOTATION;
use coder_sim::{Fault, FaultKind, SimConfig};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Env, LONG};

/// alice's id in the simulator's default seed.
const ALICE_ID: &str = "0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02";

fn message(resource: &ChatWorkspace, type_: &str) -> String {
    conditions::find(&resource.status.as_ref().unwrap().conditions, type_).unwrap().message.clone()
}

fn docker_dev(owner: &str) -> serde_json::Value {
    json!({"desiredState": "Running", "owner": owner, "template": {"name": "docker-dev"}})
}

#[tokio::test]
async fn an_ungranted_owner_gets_nothing_from_coder_until_the_namespace_is_granted() {
    let env = Env::start("grant").await;
    env.grant(None).await;
    env.create("bobs", docker_dev("bob")).await;
    let refused = env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    let text = message(&refused, DEGRADED);
    assert!(text.contains(OWNERS_ANNOTATION), "names the annotation: {text}");
    assert!(
        text.contains(&format!("kubectl annotate namespace {} {OWNERS_ANNOTATION}=bob --overwrite", env.namespace)),
        "gives the command: {text}"
    );
    assert_eq!(message(&refused, READY), text);
    env.wait_for_events("bobs", &["OwnerNotGranted"]).await;

    // A grant of someone else changes nothing.
    env.grant(Some("alice")).await;
    env.wait_for("bobs", "refused under alice's grant", LONG, |c| {
        c.status.as_ref().is_some_and(|s| {
            conditions::find(&s.conditions, DEGRADED).is_some_and(|d| d.message.contains("(namespace annotation"))
                && conditions::find(&s.conditions, DEGRADED).is_some_and(|d| d.message.contains("alice,bob"))
        })
    })
    .await;
    let requests = env.sim.requests();
    assert!(requests.is_empty(), "nothing was sent to Coder for an ungranted resource: {requests:?}");

    // Granting bob serves the same resource, without recreating it; the
    // refusal's retry is a minute away, so this is the namespace watch.
    let uid = refused.metadata.uid.clone();
    env.grant(Some("alice, Bob")).await;
    let ready = env.wait_for_condition("bobs", READY, "True", Some("Running"), LONG).await;
    assert_eq!(ready.metadata.uid, uid);
    let id = env.workspace_id("bob", "bobs");
    assert_eq!(env.transitions(id), ["start"]);

    // Revoking stops further builds: a stop asked for now is not built.
    env.grant(Some("alice")).await;
    env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    env.set_desired_state("bobs", "Stopped").await;
    env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    assert_eq!(env.transitions(id), ["start"], "no build after the grant was revoked");

    // Deleting it leaves the workspace as it is (deletionPolicy Stop is not applied).
    env.delete("bobs").await;
    env.wait_gone("bobs", LONG).await;
    assert_eq!(env.transitions(id), ["start"]);
    env.wait_for_events("bobs", &["WorkspaceLeftAsIs"]).await;
}

#[tokio::test]
async fn a_namespace_editor_cannot_drive_an_ungranted_owner_even_without_the_admission_policy() {
    // This control plane has no admission policy: the operator alone decides.
    let env = Env::start("editor").await;
    env.grant(Some("alice")).await;
    let editor = support::editor(testbed::ControlPlane::shared(), &env.namespace, "dev@example.com").await;

    // The editor cannot grant the namespace anything itself.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(editor.clone());
    let self_grant = json!({"metadata": {"annotations": {OWNERS_ANNOTATION: "*"}}});
    let refused = namespaces.patch(&env.namespace, &PatchParams::default(), &Patch::Merge(&self_grant)).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref status)) if status.code == 403), "{refused:?}");

    // Create, stop, delete: nothing reaches Coder.
    let api: Api<ChatWorkspace> = Api::namespaced(editor.clone(), &env.namespace);
    let object: ChatWorkspace = serde_json::from_value(json!({
        "apiVersion": "chat.coder.com/v1alpha1", "kind": "ChatWorkspace",
        "metadata": {"name": "bobs"},
        "spec": {"owner": "bob", "template": {"name": "docker-dev"}, "deletionPolicy": "Delete"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.expect("an editor creates ChatWorkspaces");
    env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    let stop = json!({"spec": {"desiredState": "Stopped"}});
    api.patch("bobs", &PatchParams::default(), &Patch::Merge(&stop)).await.expect("an editor patches");
    env.wait_for_condition("bobs", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    api.delete("bobs", &Default::default()).await.expect("an editor deletes");
    env.wait_gone("bobs", LONG).await;
    assert!(env.sim.requests().is_empty(), "nothing was sent to Coder: {:?}", env.sim.requests());
}

#[tokio::test]
async fn without_an_annotation_even_the_tokens_own_user_is_refused() {
    let env = Env::start("nogrant").await;
    env.grant(None).await;
    env.create("mine", json!({"template": {"name": "docker-dev"}})).await;
    let refused = env.wait_for_condition("mine", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    let text = message(&refused, DEGRADED);
    assert!(text.contains("the default token's own user"), "{text}");
    assert!(env.sim.requests().is_empty(), "no request at all: {:?}", env.sim.requests());

    // The token's user must be granted by name like anyone else.
    env.grant(Some("ADMIN")).await;
    env.wait_for_condition("mine", READY, "True", Some("Running"), LONG).await;
}

#[tokio::test]
async fn me_the_username_in_another_case_and_the_user_id_are_one_owner() {
    let env = Env::start("owners").await;
    env.grant(Some("alice")).await;

    // By id: granted as alice, and observed under her username.
    env.create("by-id", json!({"owner": ALICE_ID, "template": {"name": "docker-dev"}, "workspaceName": "shared"}))
        .await;
    let ready = env.wait_for_condition("by-id", READY, "True", Some("Running"), LONG).await;
    assert_eq!(ready.status.unwrap().workspace.unwrap().owner, "alice");
    let id = env.workspace_id("alice", "shared");

    // Another spelling of alice on the same workspace is the same actor.
    env.create(
        "by-name",
        json!({"owner": "ALICE", "desiredState": "Stopped", "template": {"name": "docker-dev"}, "workspaceName": "Shared"}),
    )
    .await;
    let second = env.wait_for_condition("by-name", DEGRADED, "True", Some("Conflict"), LONG).await;
    assert!(message(&second, DEGRADED).contains("by-id"), "{}", message(&second, DEGRADED));
    assert_eq!(env.transitions(id), ["start"], "the second spelling did not stop alice's workspace");

    // `me` is the token's user (admin), who is not granted; the refusal
    // does not tell the namespace who that is.
    env.create("by-me", docker_dev("me")).await;
    let refused = env.wait_for_condition("by-me", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;
    let text = message(&refused, DEGRADED);
    assert!(text.contains("the default token's own user") && !text.contains("\"admin\""), "{text}");
    assert!(env.sim.workspace_id("admin", "by-me").is_none());
}

#[tokio::test]
async fn a_resource_that_lost_the_claim_leaves_the_winners_workspace_alone_even_when_deleted() {
    // Two namespaces granted alice; the older resource drives alice/ws.
    let mut env = Env::without_operator("claim-a", SimConfig::fast()).await;
    let other = env.neighbour("claim-b").await;
    env.grant(Some("alice")).await;
    other.grant(Some("alice")).await;
    env.start_operator();
    env.create("winner", json!({"owner": "alice", "template": {"name": "docker-dev"}, "workspaceName": "ws"})).await;
    env.wait_for_condition("winner", READY, "True", Some("Running"), LONG).await;
    let id = env.workspace_id("alice", "ws");

    // The younger one names the same workspace by alice's user id, with
    // every consent to adopt and delete it.
    other
        .create(
            "loser",
            json!({"owner": ALICE_ID, "template": {"name": "docker-dev"}, "workspaceName": "ws",
                   "adopt": true, "deletionPolicy": "Delete", "desiredState": "Stopped"}),
        )
        .await;
    let lost = other.wait_for_condition("loser", DEGRADED, "True", Some("Conflict"), LONG).await;
    assert!(message(&lost, DEGRADED).contains("in another namespace"), "{}", message(&lost, DEGRADED));
    assert_eq!(env.transitions(id), ["start"], "the loser did not stop the winner's workspace");

    other.delete("loser").await;
    other.wait_gone("loser", LONG).await;
    let events = other.wait_for_events("loser", &["WorkspaceLeftAsIs"]).await;
    assert!(events.iter().any(|(_, note)| note.contains("another ChatWorkspace")), "{events:?}");
    assert_eq!(env.transitions(id), ["start"], "deleting the loser sent no build to the winner's workspace");
    assert!(env.sim.workspace_id("alice", "ws").is_some());
    env.wait_for_condition("winner", READY, "True", Some("Running"), LONG).await;
}

#[tokio::test]
async fn a_refused_resource_blocks_nobody() {
    // The older resource names alice/ws from a namespace granted only bob.
    let mut env = Env::without_operator("refused-a", SimConfig::fast()).await;
    let granted = env.neighbour("refused-b").await;
    env.grant(Some("bob")).await;
    granted.grant(Some("alice")).await;
    env.start_operator();
    env.create("squatter", json!({"owner": "alice", "template": {"name": "docker-dev"}, "workspaceName": "ws"})).await;
    env.wait_for_condition("squatter", DEGRADED, "True", Some("OwnerNotGranted"), LONG).await;

    granted
        .create("rightful", json!({"owner": "alice", "template": {"name": "docker-dev"}, "workspaceName": "ws"}))
        .await;
    granted.wait_for_condition("rightful", READY, "True", Some("Running"), LONG).await;
    assert_eq!(env.transitions(env.workspace_id("alice", "ws")), ["start"]);
}

#[tokio::test]
async fn a_create_that_coder_refused_does_not_adopt_a_workspace_made_later_under_its_name() {
    let env = Env::start("intent").await;
    env.sim.inject_fault(Fault::new("/api/v2/users/admin/workspaces", FaultKind::Status(403)).method("POST").times(1));
    env.create("late", json!({"template": {"name": "docker-dev"}, "deletionPolicy": "Delete"})).await;
    let refused = env.wait_for_condition("late", DEGRADED, "True", Some("Forbidden"), LONG).await;
    assert!(refused.status.unwrap().ownership.is_none(), "the refused create's intent is taken back");

    // Someone makes a workspace of that name through Coder's API, with the
    // operator's own token; the index sees it and wakes the resource.
    let id = env.sim.create_workspace("admin", "late", "docker-dev");
    let found = env.wait_for_condition("late", DEGRADED, "True", Some("AdoptionNotConsented"), LONG).await;
    assert!(found.status.unwrap().ownership.is_none(), "not recorded as created by this resource");

    env.delete("late").await;
    env.wait_gone("late", LONG).await;
    assert_eq!(env.transitions(id), ["start"], "neither driven nor deleted");
}

#[tokio::test]
async fn a_workspace_followed_by_id_is_not_driven_for_another_owner_after_the_credentials_change() {
    // The token's user is bob, who owns the seeded workspace `existing-dev`.
    let mut config = SimConfig::fast();
    config.seed.token_user = "bob".into();
    let mut env = Env::without_operator("switch", config).await;
    // Another Coder (with the same seed) whose token is alice's, where that
    // workspace id is bob's too.
    let mut config = SimConfig::fast();
    config.seed.token_user = "alice".into();
    config.token = "alices-token".into();
    let other = coder_sim::Simulator::start(config).await.unwrap();
    env.also_allowed_urls.push(other.url());
    env.start_operator();
    let spec = json!({"template": {"name": "docker-dev"}, "workspaceName": "existing-dev", "adopt": true,
                      "outsideStops": "Restart"});
    env.create("mine", spec).await;
    let ready = env.wait_for_condition("mine", READY, "True", Some("Running"), LONG).await;
    let id = ready.status.unwrap().workspace.unwrap().id;

    // There, bob's workspace is stopped: with the new credentials' owner
    // (alice) the resource would start it again.
    let seeded = other.workspace_id("bob", "existing-dev").unwrap();
    assert_eq!(seeded.to_string(), id);
    other.stop_by_coder(seeded, "initiator");
    other.clear_requests();
    env.credentials_secret("alices", &other.url(), &other.token()).await;
    let patch = json!({"spec": {"credentialsRef": {"name": "alices"}}});
    env.api.patch("mine", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();

    let refused = env.wait_for_condition("mine", DEGRADED, "True", Some("WorkspaceOfAnotherOwner"), LONG).await;
    assert!(message(&refused, DEGRADED).contains(&id), "{}", message(&refused, DEGRADED));
    let writes: Vec<_> = other.requests().into_iter().filter(|r| r.method != "GET").collect();
    assert!(writes.is_empty(), "nothing was sent to bob's workspace with alice's token: {writes:?}");
    assert_eq!(other.builds(seeded).len(), 2, "the seeded start and the stop only");
}

/// A loopback listener that counts the connections made to it.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_secret_naming_a_url_outside_the_allow_list_is_never_called() {
    let env = Env::start("urls").await;
    let (url, connections) = counting_listener().await;
    env.credentials_secret("elsewhere", &url, "some-token").await;
    env.credentials_secret("coder", &env.sim.url(), &env.sim.token()).await;

    env.create("outside", json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "elsewhere"}})).await;
    let refused = env.wait_for_condition("outside", DEGRADED, "True", Some("CoderUrlNotAllowed"), LONG).await;
    let text = message(&refused, DEGRADED);
    assert!(text.contains("allow-list") && text.contains(&env.sim.url()[7..]), "{text}");
    assert!(!text.contains("some-token"));

    // The default URL's origin is allowed by default.
    env.create("inside", json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "coder"}})).await;
    env.wait_for_condition("inside", READY, "True", Some("Running"), LONG).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "no connection to a URL outside the allow-list");
}

#[tokio::test]
async fn a_403_with_a_namespaces_own_token_is_reported_not_retried_in_a_storm() {
    let env = Env::start("forbidden").await;
    env.grant(None).await;
    env.credentials_secret("coder", &env.sim.url(), &env.sim.token()).await;
    env.sim.inject_fault(Fault::new("/api/v2/", FaultKind::Status(403)));
    env.create("mine", json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "coder"}})).await;
    env.wait_for_condition("mine", DEGRADED, "True", Some("Forbidden"), LONG).await;
    // Several resyncs of a settled resource (2 s in the tests). The
    // refusal may be read twice (the second read can land just after the
    // condition shows), never once more per resync.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = env.sim.requests();
    assert!(requests.len() <= 2, "no retry within seconds: {requests:?}");
}

#[tokio::test]
async fn an_existing_workspace_is_neither_adopted_nor_deleted_without_consent() {
    let env = Env::start("consent").await;
    let id = env.sim.create_workspace("admin", "someones", "docker-dev");
    env.create(
        "grabber",
        json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}, "workspaceName": "someones", "deletionPolicy": "Delete"}),
    )
    .await;
    let refused = env.wait_for_condition("grabber", DEGRADED, "True", Some("AdoptionNotConsented"), LONG).await;
    let text = message(&refused, DEGRADED);
    assert!(text.contains("spec.adopt: true") && text.contains("admin/someones"), "{text}");
    assert_eq!(env.transitions(id), ["start"], "not stopped");
    assert!(refused.status.unwrap().ownership.is_none());

    env.delete("grabber").await;
    env.wait_gone("grabber", LONG).await;
    assert_eq!(env.transitions(id), ["start"], "not deleted");
    assert!(env.sim.workspace_id("admin", "someones").is_some());
    env.wait_for_events("grabber", &["WorkspaceLeftAsIs"]).await;
}

#[tokio::test]
async fn a_workspace_adopted_with_consent_is_driven_and_deleted() {
    let env = Env::start("adopted").await;
    let id = env.sim.create_workspace("admin", "legacy", "docker-dev");
    env.create(
        "keeper",
        json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}, "workspaceName": "legacy",
               "deletionPolicy": "Delete", "adopt": true}),
    )
    .await;
    env.wait_for_condition("keeper", READY, "True", Some("Stopped"), LONG).await;
    env.delete("keeper").await;
    env.wait_gone("keeper", LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop", "delete"]);
}

#[tokio::test]
async fn a_rotated_default_token_file_is_used_without_a_restart() {
    let mut env = Env::without_operator("rotate", SimConfig::fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{}\n", env.sim.token())).unwrap();
    env.token_file = Some(path.clone());
    env.start_operator();
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;

    // Coder now accepts only the new token, and the mounted Secret changes
    // (the kubelet swaps in a new file).
    env.sim.set_token("rotated-token-2");
    let next = dir.path().join("token.next");
    std::fs::write(&next, "rotated-token-2\n").unwrap();
    std::fs::rename(&next, &path).unwrap();
    env.sim.clear_requests();
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    let rejected: Vec<_> = env.sim.requests().into_iter().filter(|r| r.status == 401).collect();
    assert!(rejected.is_empty(), "the old token was not sent after the rotation: {rejected:?}");
}

#[tokio::test]
async fn a_huge_job_error_is_cut_in_status_and_events() {
    let env = Env::start("joberror").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    env.sim.fail_next_build_with(None, Some("start"), &"terraform says no. ".repeat(2000), None);
    env.set_desired_state("chat-1", "Running").await;
    let failed = env.wait_for_condition("chat-1", DEGRADED, "True", Some("StartFailed"), LONG).await;
    let status = failed.status.unwrap();
    let error = status.latest_build.unwrap().error.unwrap();
    assert!(error.chars().count() <= 1025 && error.ends_with('…'), "{} characters", error.chars().count());
    let degraded = conditions::find(&status.conditions, DEGRADED).unwrap();
    assert!(degraded.message.chars().count() < 2048, "a condition of {} characters", degraded.message.chars().count());
    let events = env.wait_for_events("chat-1", &["StartFailed"]).await;
    for (_, note) in events {
        assert!(note.len() <= 1024, "an Event note of {} bytes", note.len());
    }
}

#[tokio::test]
async fn a_second_install_on_the_same_namespace_leaves_claimed_resources_alone() {
    let env = Env::start("installs").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    let ready = env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    assert_eq!(ready.metadata.annotations.unwrap()[INSTALL_ANNOTATION], "test", "claimed by the first install");
    let id = env.workspace_id("admin", "chat-1");

    let _other = env.start_other_install("ops/second");
    let events = env.wait_for_events("chat-1", &["ManagedByAnotherOperator"]).await;
    let (_, note) = events.iter().find(|(reason, _)| reason == "ManagedByAnotherOperator").unwrap();
    assert!(note.contains("\"test\"") && note.contains("ops/second"), "{note}");

    // A stop is built once, by the first install only.
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    assert_eq!(env.transitions(id), ["start", "stop"]);
    assert_eq!(env.stacked_builds(), 0, "the second install never requested a build");
}
