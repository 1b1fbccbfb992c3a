//! Restarting kube-apiserver (the fault the operator must ride out) keeps
//! every object, and existing clients and watchers carry on afterwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use testbed::ControlPlane;
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(60);

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
        ..ConfigMap::default()
    }
}

/// Retries `attempt` until it succeeds: the first request on a connection
/// that died with the old apiserver may fail once before the client
/// reconnects, exactly as in a real cluster.
async fn eventually<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut last = None;
    for _ in 0..20 {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} kept failing: {last:?}");
}

/// What the watcher has reported so far: the latest value of each object.
#[derive(Default)]
struct Seen(BTreeMap<String, String>);

impl Seen {
    /// Waits until the watcher has reported every `(name, value)` in `want`
    /// as the object's latest value.
    async fn wait_for(&mut self, reports: &mut mpsc::UnboundedReceiver<(String, String)>, want: &[(&str, &str)]) {
        let done = |seen: &BTreeMap<String, String>| {
            want.iter().all(|(name, value)| seen.get(*name).is_some_and(|v| v == value))
        };
        let waited = tokio::time::timeout(TIMEOUT, async {
            while !done(&self.0) {
                let (name, value) = reports.recv().await.expect("the watcher stopped");
                self.0.insert(name, value);
            }
        })
        .await;
        assert!(waited.is_ok(), "the watcher reported {:?}, not {want:?}", self.0);
    }
}

// Multi-threaded so the watcher task keeps running while this test blocks on
// the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_apiserver_keeps_data_and_clients_reconnect() {
    let control_plane = Arc::new(ControlPlane::start().unwrap());
    let namespace = control_plane.namespace("restart").await;
    let api = Api::<ConfigMap>::namespaced(control_plane.client().await, &namespace);
    api.create(&PostParams::default(), &config_map("before", "1")).await.unwrap();

    let (tx, mut reports) = mpsc::unbounded_channel();
    let mut seen = Seen::default();
    let watch = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            // Errors while the apiserver is away are expected: the watcher
            // reports them, backs off and reconnects by itself.
            .for_each(move |event| {
                if let Ok(cm) = event {
                    let value = cm.data.unwrap_or_default().remove("value").unwrap_or_default();
                    let _ = tx.send((cm.metadata.name.unwrap_or_default(), value));
                }
                future::ready(())
            }),
    );
    seen.wait_for(&mut reports, &[("before", "1")]).await;

    let [etcd_before, apiserver_before] = control_plane.server_pids()[..] else { panic!("two servers") };
    let url_before = control_plane.server_url();
    let restarting = Arc::clone(&control_plane);
    tokio::task::spawn_blocking(move || restarting.restart_apiserver()).await.unwrap().unwrap();
    let [etcd_after, apiserver_after] = control_plane.server_pids()[..] else { panic!("two servers") };
    assert_ne!(apiserver_after, apiserver_before, "a new kube-apiserver");
    assert_eq!(etcd_after, etcd_before, "the same etcd");
    assert_eq!(control_plane.server_url(), url_before, "the same address");

    // The client created before the restart still works, and sees the data.
    let before = eventually("reading through the old client", || api.get("before")).await;
    assert_eq!(before.data.unwrap()["value"], "1");
    let params = PatchParams::default();
    let patch = Patch::Merge(json!({"data": {"value": "2"}}));
    eventually("patching through the old client", || api.patch("before", &params, &patch)).await;
    let fresh = Api::<ConfigMap>::namespaced(control_plane.client().await, &namespace);
    fresh.create(&PostParams::default(), &config_map("after", "3")).await.unwrap();

    // The watcher reconnected on its own and saw both changes.
    seen.wait_for(&mut reports, &[("before", "2"), ("after", "3")]).await;
    watch.abort();
}
