//! A resource another operator install claimed (annotation
//! `chat.coder.com/operator`) is left to that install, in its deletion too;
//! but if that install is gone, the shared finalizer must not hold a
//! namespace that is being deleted forever: after `--cleanup-timeout` from
//! the resource's deletionTimestamp this install removes it, without
//! touching Coder. Against the real kube-apiserver and the Coder simulator.

mod support;

use std::time::{Duration, Instant};

use chatworkspace_operator::crd::{ChatWorkspace, FINALIZER};
use chatworkspace_operator::tenancy::installs::INSTALL_ANNOTATION;
use coder_sim::SimConfig;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::{Env, LONG};

const TIMEOUT: Duration = Duration::from_secs(4);

/// An operator with a short cleanup timeout, and a resource claimed by an
/// install that no longer runs: its annotation and the shared finalizer,
/// as it left them. Returns once this install has seen the resource.
async fn claimed_by_a_gone_install(prefix: &str) -> Env {
    let mut env = Env::without_operator(prefix, SimConfig::fast()).await;
    env.settings.cleanup_timeout = TIMEOUT;
    env.start_operator();
    let object: ChatWorkspace = serde_json::from_value(json!({
        "apiVersion": "chat.coder.com/v1alpha1",
        "kind": "ChatWorkspace",
        "metadata": {
            "name": "chat-1",
            "namespace": env.namespace,
            "annotations": {INSTALL_ANNOTATION: "ops/uninstalled"},
            "finalizers": [FINALIZER],
        },
        "spec": {"desiredState": "Running", "template": {"name": "docker-dev"}},
    }))
    .unwrap();
    env.api.create(&PostParams::default(), &object).await.expect("create ChatWorkspace");
    env.wait_for_events("chat-1", &["ManagedByAnotherOperator"]).await;
    env
}

#[tokio::test]
async fn a_gone_installs_claim_is_released_after_the_cleanup_timeout_when_the_namespace_is_deleted() {
    let env = claimed_by_a_gone_install("foreign-nsgone").await;
    // Without a controller-manager the namespace stays Terminating, as it
    // would while its last finalizers are pending.
    Api::<Namespace>::all(env.client.clone()).delete(&env.namespace, &DeleteParams::default()).await.unwrap();
    let deleted = Instant::now();
    env.delete("chat-1").await;
    env.wait_gone("chat-1", LONG).await;
    let waited = deleted.elapsed();
    assert!(waited >= TIMEOUT - Duration::from_secs(1), "released after {waited:?}, before {TIMEOUT:?}");
    assert!(env.sim.workspace_id("admin", "chat-1").is_none(), "nothing was sent to Coder");
    assert_eq!(env.stacked_builds(), 0);
}

#[tokio::test]
async fn a_claimed_resource_deleted_in_a_live_namespace_is_left_to_its_install() {
    let env = claimed_by_a_gone_install("foreign-nslive").await;
    env.delete("chat-1").await;
    // Checked over twice the timeout: the other install may still be
    // applying its deletionPolicy, and only a namespace deletion may cut it short.
    let until = Instant::now() + 2 * TIMEOUT;
    while Instant::now() < until {
        let resource = env.get("chat-1").await;
        assert!(resource.metadata.finalizers.unwrap_or_default().iter().any(|f| f == FINALIZER), "finalizer removed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(env.sim.workspace_id("admin", "chat-1").is_none(), "nothing was sent to Coder");
}
