//! The grants of the served namespaces, kept current by a metadata watch of
//! their Namespace objects, and the reconciles a changed grant triggers: a
//! namespace granted an owner later serves its waiting resources at once,
//! and a revoked grant stops them at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{Grant, OWNERS_ANNOTATION};
use crate::error::Result;

/// The grants the watch has seen: plain data, so what counts as a change is
/// a unit test.
#[derive(Default)]
struct GrantTable {
    grants: HashMap<String, Grant>,
}

impl GrantTable {
    fn get(&self, namespace: &str) -> Option<&Grant> {
        self.grants.get(namespace)
    }

    /// Records a namespace's grant; whether a known namespace's grant changed.
    /// A namespace seen for the first time is no change: its resources are
    /// reconciled on the controller's first list anyway.
    fn seen(&mut self, namespace: &str, grant: Grant) -> bool {
        let previous = self.grants.insert(namespace.to_owned(), grant.clone());
        previous.is_some_and(|previous| previous != grant)
    }

    fn gone(&mut self, namespace: &str) {
        self.grants.remove(namespace);
    }
}

pub struct NamespaceGrants {
    kube: kube::Client,
    /// Namespace → its grant, as last seen by the watch.
    grants: RwLock<GrantTable>,
    /// Names of namespaces whose grant changed.
    changes: broadcast::Sender<String>,
}

impl NamespaceGrants {
    pub fn new(kube: kube::Client) -> Self {
        Self { kube, grants: RwLock::default(), changes: broadcast::channel(1024).0 }
    }

    /// The grant of `namespace`: the watch's view, or (before the watch has
    /// seen the namespace) a direct read of its metadata.
    pub async fn grant(&self, namespace: &str) -> Result<Grant> {
        if let Some(grant) = self.grants.read().expect("namespace grants").get(namespace) {
            return Ok(grant.clone());
        }
        let api: Api<Namespace> = Api::all(self.kube.clone());
        let metadata = api.get_metadata_opt(namespace).await?;
        Ok(Grant::parse(metadata.as_ref().and_then(|m| m.annotations().get(OWNERS_ANNOTATION)).map(String::as_str)))
    }

    /// Records what the watch saw; tells the controllers when a known
    /// namespace's grant changed.
    fn seen(&self, namespace: &str, grant: Grant) {
        let changed = self.grants.write().expect("namespace grants").seen(namespace, grant.clone());
        if changed {
            info!(namespace, %grant, "namespace grant changed; reconciling its resources");
            let _ = self.changes.send(namespace.to_owned());
        }
    }

    fn gone(&self, namespace: &str) {
        self.grants.write().expect("namespace grants").gone(namespace);
    }

    /// Watches the Namespaces `names` (empty: all) until the stream ends or
    /// the task is dropped. Needs `list` and `watch` on those namespaces.
    pub async fn watch(self: Arc<Self>, names: Vec<String>) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(self.kube.clone());
        let configs: Vec<watcher::Config> = if names.is_empty() {
            vec![watcher::Config::default()]
        } else {
            names.iter().map(|name| watcher::Config::default().fields(&format!("metadata.name={name}"))).collect()
        };
        let streams = configs.into_iter().map(|config| watcher(api.clone(), config).default_backoff().boxed());
        let mut events = futures::stream::select_all(streams);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(namespace) | watcher::Event::InitApply(namespace)) => {
                    let grant = Grant::parse(namespace.annotations().get(OWNERS_ANNOTATION).map(String::as_str));
                    self.seen(&namespace.name_any(), grant);
                }
                Ok(watcher::Event::Delete(namespace)) => self.gone(&namespace.name_any()),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(error) => warn!(%error, "watching namespaces for their grants (needs get, list and watch on them)"),
            }
        }
    }

    /// The namespaces whose grant changed, as they change: their
    /// ChatWorkspaces are reconciled then.
    pub fn changes(&self) -> impl Stream<Item = String> + Send + 'static {
        let changes = self.changes.subscribe();
        futures::stream::unfold(changes, |mut changes| async move {
            loop {
                match changes.recv().await {
                    Ok(namespace) => return Some((namespace, changes)),
                    // Missed changes are caught by the next resync.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changed_grant_of_a_known_namespace_is_a_change() {
        let mut table = GrantTable::default();
        assert!(!table.seen("a", Grant::Nothing), "first sight");
        assert!(!table.seen("a", Grant::Nothing), "unchanged (a resync, another annotation)");
        assert!(table.seen("a", Grant::parse(Some("alice"))), "granted");
        assert!(!table.seen("a", Grant::parse(Some(" Alice "))), "the same grant spelled otherwise");
        assert!(table.seen("a", Grant::parse(Some("alice,bob"))), "widened");
        assert!(table.seen("a", Grant::Nothing), "revoked");
        assert_eq!(table.get("a"), Some(&Grant::Nothing));
        table.gone("a");
        assert_eq!(table.get("a"), None);
        assert!(!table.seen("a", Grant::Anyone), "a new namespace of the same name");
    }
}
