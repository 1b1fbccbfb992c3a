//! What the controller keeps of each `ChatWorkspace` it watches.
//!
//! The watch decodes each resource into a [`Watched`]: the metadata the
//! watch and the claims read, and the rest packed (the metadata the operator
//! keeps, the spec and the status, as deflated JSON), because at thousands
//! of resources the status (conditions with their messages, the template's
//! presets) is most of the cache and a reconcile needs it only for the one
//! resource it handles. The controller's store keeps less still, a
//! [`Stored`]: the resource's key and the packed rest, about 250 bytes where
//! kube-runtime's metadata alone is 360. A reconcile unpacks its resource
//! with [`Stored::expand`].

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::crd::{ChatWorkspace, ChatWorkspaceSpec, ChatWorkspaceStatus, Phase};
use crate::key::ResourceKey;

/// Annotations the operator reads; the cache drops the rest (kubectl's
/// last-applied copy is often the largest part of an object).
const KEPT_ANNOTATIONS: [&str; 3] =
    [crate::tenancy::installs::INSTALL_ANNOTATION, crate::crd::START_REQUESTED_AT, crate::crd::RESTART_REQUESTED_AT];

/// The cache's dictionary: learned from the first resource with conditions.
static PACKER: crate::pack::Packer = crate::pack::Packer::new();

#[derive(Clone, Debug)]
pub struct Watched {
    /// Without annotations: a map of one entry costs a whole tree node.
    pub metadata: ObjectMeta,
    /// The values of [`KEPT_ANNOTATIONS`], in that order.
    annotations: [Option<Box<str>>; KEPT_ANNOTATIONS.len()],
    /// `{"spec": …, "status": …}` as deflated JSON ([`crate::pack`]).
    packed: crate::pack::Packed,
    /// [`status_hash`] of the status (of an empty one if none).
    status_hash: u64,
    /// What the claims index files the resource under.
    claim_keys: crate::claims::ClaimKeys,
    /// `status.phase`, for the count of resources by phase.
    phase: Option<Phase>,
}

/// What is packed.
#[derive(serde::Serialize, Deserialize)]
struct Body {
    /// All but the name and namespace (the key has them), with only the
    /// kept annotations.
    #[serde(default)]
    metadata: ObjectMeta,
    spec: ChatWorkspaceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<ChatWorkspaceStatus>,
}

/// A hash of a status's JSON: what the controller compares to know whether
/// the cache holds a status it wrote.
pub fn status_hash(status: &ChatWorkspaceStatus) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(status).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

impl Watched {
    /// Keeps of `resource` what the operator reads.
    pub fn pack(resource: ChatWorkspace) -> Self {
        let ChatWorkspace { mut metadata, spec, status } = resource;
        metadata.managed_fields = None;
        metadata.labels = None;
        let mut all = metadata.annotations.take().unwrap_or_default();
        let annotations = KEPT_ANNOTATIONS.map(|key| all.remove(key).map(String::into_boxed_str));
        let status_hash = status_hash(status.as_ref().unwrap_or(&ChatWorkspaceStatus::default()));
        let workspace_id = status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.as_str());
        let claim_keys = crate::claims::ClaimKeys::of(&metadata, &spec, workspace_id);
        let phase = status.as_ref().and_then(|s| s.phase);
        // A resource with conditions is like the others to come; one with no
        // status yet would make a poor dictionary.
        let typical = status.as_ref().is_some_and(|s| !s.conditions.is_empty());
        let kept: std::collections::BTreeMap<String, String> = KEPT_ANNOTATIONS
            .iter()
            .zip(&annotations)
            .filter_map(|(key, value)| Some(((*key).to_owned(), value.as_deref()?.to_owned())))
            .collect();
        let packed_metadata = ObjectMeta {
            name: None,
            namespace: None,
            annotations: (!kept.is_empty()).then_some(kept),
            ..metadata.clone()
        };
        let json = serde_json::to_vec(&Body { metadata: packed_metadata, spec, status }).unwrap_or_default();
        let packed = PACKER.pack(&json, typical);
        Self { metadata, annotations, packed, status_hash, claim_keys, phase }
    }

    /// The resource as the reconcile reads it, unpacked.
    pub fn expand(&self) -> ChatWorkspace {
        expand(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
            &self.packed,
        )
    }

    /// The controller store's form of it.
    pub fn stored(self, trigger_hash: u64) -> Stored {
        let key = ResourceKey::new(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
        );
        let deleting = self.metadata.deletion_timestamp.is_some();
        Stored { key, deleting, phase: self.phase, trigger_hash, packed: self.packed }
    }

    /// A kept annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        let index = KEPT_ANNOTATIONS.iter().position(|kept| *kept == key)?;
        self.annotations[index].as_deref()
    }

    /// The size of the packed spec and status, in bytes (the benchmark
    /// reports it).
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// [`status_hash`] of the status (that of an empty status if none).
    pub fn status_hash(&self) -> u64 {
        self.status_hash
    }

    /// What the claims index files the resource under.
    pub fn claim_keys(&self) -> crate::claims::ClaimKeys {
        self.claim_keys
    }
}

fn expand(namespace: &str, name: &str, packed: &crate::pack::Packed) -> ChatWorkspace {
    let Body { mut metadata, spec, status } =
        serde_json::from_slice(&PACKER.unpack(packed)).expect("the cache unpacks only what it packed");
    metadata.name = Some(name.to_owned());
    metadata.namespace = Some(namespace.to_owned());
    ChatWorkspace { metadata, spec, status }
}

/// What the controller's store keeps of a resource: its key, whether it is
/// being deleted (the resync passes those by), a hash of what a reconcile
/// is triggered by (`trigger_hash`), and the rest packed.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    key: ResourceKey,
    deleting: bool,
    phase: Option<Phase>,
    trigger_hash: u64,
    packed: crate::pack::Packed,
}

impl Stored {
    pub fn key(&self) -> &ResourceKey {
        &self.key
    }

    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// `status.phase` as the watch delivered it.
    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }

    /// What the controller compares to know whether a change of the
    /// resource calls for a reconcile.
    pub fn trigger_hash(&self) -> u64 {
        self.trigger_hash
    }

    /// The resource as the reconcile reads it, unpacked.
    pub fn expand(&self) -> ChatWorkspace {
        expand(self.key.namespace(), self.key.name(), &self.packed)
    }
}

impl<'de> Deserialize<'de> for Watched {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ChatWorkspace::deserialize(deserializer).map(Watched::pack)
    }
}

impl Resource for Watched {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ChatWorkspace::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ChatWorkspace::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ChatWorkspace::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ChatWorkspace::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource() -> ChatWorkspace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {
                "name": "a", "namespace": "team", "resourceVersion": "7", "generation": 2,
                "labels": {"team": "blue"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": 1}",
                    crate::crd::START_REQUESTED_AT: "now",
                    crate::crd::RESTART_REQUESTED_AT: "later",
                    crate::tenancy::installs::INSTALL_ANNOTATION: "ops",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"desiredState": "Running", "template": {"name": "docker"}},
            "status": {
                "phase": "Running",
                "workspace": {"id": "w-1", "name": "a", "owner": "alice"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "Ready.",
                                "lastTransitionTime": "2026-12-01T10:00:00Z", "observedGeneration": 2}],
            },
        }))
        .expect("a ChatWorkspace")
    }

    #[test]
    fn the_cache_gives_back_the_spec_and_status_and_the_metadata_the_operator_reads() {
        let original = resource();
        let cached = Watched::pack(original.clone());
        let expanded = cached.expand();
        assert_eq!(expanded.spec, original.spec);
        assert_eq!(expanded.status, original.status);
        assert_eq!(expanded.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(expanded.metadata.generation, Some(2));
        let annotations = expanded.metadata.annotations.expect("kept annotations");
        assert_eq!(annotations.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut kept = KEPT_ANNOTATIONS.to_vec();
            kept.sort_unstable();
            kept
        });
        assert!(expanded.metadata.managed_fields.is_none());
        assert!(expanded.metadata.labels.is_none());
        let claim_keys = crate::claims::ClaimKeys::of(&original.metadata, &original.spec, Some("w-1"));
        assert_eq!(cached.claim_keys(), claim_keys);
        assert_eq!(cached.status_hash(), status_hash(original.status.as_ref().expect("status")));
    }

    #[test]
    fn a_resource_without_status_has_the_hash_of_an_empty_one() {
        let mut original = resource();
        original.status = None;
        let cached = Watched::pack(original.clone());
        assert!(cached.expand().status.is_none());
        assert_eq!(cached.status_hash(), status_hash(&ChatWorkspaceStatus::default()));
        assert_eq!(cached.claim_keys(), crate::claims::ClaimKeys::of(&original.metadata, &original.spec, None));
    }

    #[test]
    fn the_packed_spec_and_status_are_smaller_than_their_json() {
        let original = resource();
        let json = serde_json::to_vec(&(&original.spec, &original.status)).expect("json").len();
        let cached = Watched::pack(original);
        assert!(cached.packed.len() < json, "{} bytes packed for {json} of JSON", cached.packed.len());
        assert_eq!(cached.annotation(crate::crd::START_REQUESTED_AT), Some("now"));
        assert_eq!(cached.annotation(crate::crd::RESTART_REQUESTED_AT), Some("later"));
        assert_eq!(cached.annotation("kubectl.kubernetes.io/last-applied-configuration"), None);
    }
}
