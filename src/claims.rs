//! One actor per workspace: when two `ChatWorkspace`s point at the same
//! Coder workspace, the older one drives it and the other reports a
//! conflict. Decided from an index kept up to date from the watch, with no
//! extra requests and without scanning every resource.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::cache::Cached;
use crate::crd::{ChatWorkspace, ChatWorkspaceSpec};

/// What identifies a workspace before it is observed: the credentials (the
/// default, or a Secret of the resource's namespace), the owner as written
/// and the workspace name.
type SpecKey = (Option<String>, String, String);

fn spec_key(resource: &ChatWorkspace) -> SpecKey {
    key_of(&resource.metadata, &resource.spec)
}

fn key_of(metadata: &ObjectMeta, spec: &ChatWorkspaceSpec) -> SpecKey {
    let namespace = metadata.namespace.as_deref().unwrap_or_default();
    let credentials = spec.credentials_ref.as_ref().map(|secret| format!("{namespace}/{}", secret.name));
    // Coder's usernames and workspace names are case-insensitive, and `me`
    // is the token's user as much as no owner is.
    let owner = match crate::tenancy::OwnerRef::from_spec(spec.owner.as_deref()) {
        crate::tenancy::OwnerRef::TokenUser => String::new(),
        other => other.path_param().to_owned(),
    };
    let name = spec.workspace_name.as_deref().or(metadata.name.as_deref()).unwrap_or_default();
    (credentials, owner, name.to_lowercase())
}

/// Creation time, then namespace and name: a total order, stable over
/// restarts, so every replica and every reconcile agrees on who is older.
type AgeKey = (Option<jiff::Timestamp>, String, String);

fn age_key(resource: &ChatWorkspace) -> AgeKey {
    age_of(&resource.metadata)
}

fn age_of(metadata: &ObjectMeta) -> AgeKey {
    (
        metadata.creation_timestamp.as_ref().map(|t| t.0),
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// The older resource that drives the same workspace as `me`, if any, as
/// `namespace/name`. `workspace_id` is the id `me` observed, which catches
/// two spellings of one workspace (e.g. owner `me` and the user's name).
pub fn conflicting<'a>(
    me: &ChatWorkspace,
    workspace_id: Option<&str>,
    others: impl IntoIterator<Item = &'a ChatWorkspace>,
) -> Option<String> {
    let my_key = spec_key(me);
    let my_age = age_key(me);
    others
        .into_iter()
        .filter(|other| other.uid() != me.uid())
        .filter(|other| {
            let same_id = workspace_id
                .is_some_and(|id| other.status.as_ref().and_then(|s| s.workspace.as_ref()).is_some_and(|w| w.id == id));
            same_id || spec_key(other) == my_key
        })
        .filter(|other| age_key(other) < my_age)
        .min_by_key(|other| age_key(other))
        .map(|other| {
            // Only a resource of the same namespace is named: the others'
            // names are not this namespace's users' business.
            if other.namespace() == me.namespace() {
                format!("{}/{}", other.namespace().unwrap_or_default(), other.name_any())
            } else {
                "in another namespace".to_owned()
            }
        })
}

/// What a resource's claims are filed under: its [`SpecKey`] and the
/// workspace id it observed, each hashed with this process's random key.
/// The index keeps no copy of the keys themselves; two keys that hash alike
/// (one chance in 2^64 for a pair) would be taken for one workspace, which
/// errs on the safe side: a conflict reported, never two actors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimKeys {
    key: u64,
    id: Option<u64>,
}

/// The hasher of [`ClaimKeys`]: random per process, so no resource can be
/// named to collide with another's on purpose.
static HASHER: std::sync::LazyLock<std::hash::RandomState> = std::sync::LazyLock::new(Default::default);

fn hashed(value: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    HASHER.hash_one(value)
}

impl ClaimKeys {
    /// The keys of a resource with this metadata and spec, that observed
    /// workspace `id`.
    pub fn of(metadata: &ObjectMeta, spec: &ChatWorkspaceSpec, id: Option<&str>) -> Self {
        Self { key: hashed(key_of(metadata, spec)), id: id.map(hashed) }
    }
}

/// One resource's claim, ordered by age.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    age: (Option<jiff::Timestamp>, Box<str>, Box<str>),
    uid: Arc<str>,
}

struct Held {
    keys: ClaimKeys,
    claim: Arc<Claim>,
}

/// Every resource's claim, by what identifies its workspace: the spec's
/// (credentials, owner, name) and the workspace id it observed.
#[derive(Default)]
pub struct ClaimsIndex {
    inner: Mutex<Claims>,
}

/// The claims on one workspace, oldest first: nearly always one, so a
/// vector of shared claims (a pointer each), not a tree whose every node
/// has room for eleven.
#[derive(Default)]
struct ClaimSet(Vec<Arc<Claim>>);

impl ClaimSet {
    fn insert(&mut self, claim: Arc<Claim>) {
        let at = self.0.binary_search(&claim).unwrap_or_else(|at| at);
        self.0.insert(at, claim);
    }

    /// Removes `claim`; whether the set is empty now.
    fn remove(&mut self, claim: &Claim) -> bool {
        self.0.retain(|held| **held != *claim);
        self.0.is_empty()
    }

    fn oldest(&self) -> Option<&Claim> {
        self.0.first().map(Arc::as_ref)
    }
}

#[derive(Default)]
struct Claims {
    by_key: HashMap<u64, ClaimSet>,
    by_id: HashMap<u64, ClaimSet>,
    /// uid → what it holds.
    held: HashMap<Arc<str>, Held>,
    /// A relist under way, per watched namespace (`None`: all): the uids
    /// it has seen so far.
    relists: HashMap<Option<String>, HashSet<Arc<str>>>,
}

impl Claims {
    fn remove(&mut self, uid: &str) {
        let Some(held) = self.held.remove(uid) else { return };
        if self.by_key.get_mut(&held.keys.key).is_some_and(|set| set.remove(&held.claim)) {
            self.by_key.remove(&held.keys.key);
        }
        if let Some(id) = held.keys.id
            && self.by_id.get_mut(&id).is_some_and(|set| set.remove(&held.claim))
        {
            self.by_id.remove(&id);
        }
    }
}

impl ClaimsIndex {
    /// A resource was added or changed.
    pub fn apply(&self, resource: &Cached) {
        let uid = resource.metadata.uid.as_deref().unwrap_or_default();
        let keys = resource.claim_keys();
        let (created, namespace, name) = age_of(&resource.metadata);
        let mut claims = self.inner.lock().expect("claims");
        let uid: Arc<str> = claims.held.get_key_value(uid).map_or_else(|| uid.into(), |(held, _)| held.clone());
        for seen in claims.relists.values_mut() {
            seen.insert(uid.clone());
        }
        // Most updates are status writes, which change no claim.
        let unchanged = claims.held.get(&uid).is_some_and(|held| {
            held.keys == keys
                && held.claim.age.0 == created
                && *held.claim.age.1 == namespace
                && *held.claim.age.2 == name
        });
        if unchanged {
            return;
        }
        claims.remove(&uid);
        let claim = Arc::new(Claim { age: (created, namespace.into(), name.into()), uid: uid.clone() });
        claims.by_key.entry(keys.key).or_default().insert(claim.clone());
        if let Some(id) = keys.id {
            claims.by_id.entry(id).or_default().insert(claim.clone());
        }
        claims.held.insert(uid, Held { keys, claim });
    }

    /// A resource is gone.
    pub fn delete(&self, resource: &Cached) {
        self.inner.lock().expect("claims").remove(resource.metadata.uid.as_deref().unwrap_or_default());
    }

    /// A watch of `namespace` (`None`: all) starts listing everything again.
    pub fn relist_started(&self, namespace: Option<&str>) {
        self.inner.lock().expect("claims").relists.insert(namespace.map(str::to_string), HashSet::new());
    }

    /// The relist is complete: resources of that scope it did not list are gone.
    pub fn relist_done(&self, namespace: Option<&str>) {
        let mut claims = self.inner.lock().expect("claims");
        let Some(seen) = claims.relists.remove(&namespace.map(str::to_string)) else { return };
        let gone: Vec<Arc<str>> = claims
            .held
            .iter()
            .filter(|(uid, held)| !seen.contains(*uid) && namespace.is_none_or(|ns| *held.claim.age.1 == *ns))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            claims.remove(&uid);
        }
    }

    /// Like [`conflicting`], from the index: the older resource that drives
    /// the same workspace as `me`, if any, as `namespace/name`.
    pub fn conflicting(&self, me: &ChatWorkspace, workspace_id: Option<&str>) -> Option<String> {
        let claims = self.inner.lock().expect("claims");
        let keys = ClaimKeys::of(&me.metadata, &me.spec, workspace_id);
        let (created, namespace, name) = age_key(me);
        let my_age = (created, namespace.into_boxed_str(), name.into_boxed_str());
        let my_uid = me.uid().unwrap_or_default();
        let by_key = claims.by_key.get(&keys.key).and_then(ClaimSet::oldest);
        let by_id = keys.id.and_then(|id| claims.by_id.get(&id)).and_then(ClaimSet::oldest);
        // The oldest claim of each set; the older of the two wins.
        [by_key, by_id].into_iter().flatten().filter(|claim| *claim.uid != *my_uid && claim.age < my_age).min().map(
            |claim| {
                // As `conflicting`: only a resource of the same namespace is named.
                if claim.age.1 == my_age.1 {
                    format!("{}/{}", claim.age.1, claim.age.2)
                } else {
                    "in another namespace".to_owned()
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ChatWorkspaceSpec, ChatWorkspaceStatus, TemplateRef, WorkspaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn resource(namespace: &str, name: &str, created: i64, workspace: Option<&str>) -> ChatWorkspace {
        let mut cws = ChatWorkspace::new(
            name,
            ChatWorkspaceSpec {
                desired_state: Default::default(),
                owner: None,
                organization: None,
                workspace_name: workspace.map(str::to_string),
                template: TemplateRef { name: Some("docker".into()), ..Default::default() },
                preset: None,
                parameters: vec![],
                agent_name: None,
                recovery: Default::default(),
                chat: Default::default(),
                deletion_policy: Default::default(),
                outside_stops: Default::default(),
                deleted_in_coder: Default::default(),
                credentials_ref: None,
                adopt: false,
            },
        );
        cws.metadata.namespace = Some(namespace.into());
        cws.metadata.uid = Some(format!("{namespace}-{name}"));
        cws.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        cws
    }

    #[test]
    fn the_older_resource_wins() {
        let old = resource("a", "one", 10, Some("ws"));
        let new = resource("b", "two", 20, Some("ws"));
        assert_eq!(conflicting(&new, None, [&old, &new]), Some("in another namespace".into()));
        assert_eq!(conflicting(&old, None, [&old, &new]), None);
        let same_namespace = resource("a", "three", 30, Some("ws"));
        assert_eq!(conflicting(&same_namespace, None, [&old, &same_namespace]), Some("a/one".into()));
    }

    #[test]
    fn different_workspaces_do_not_conflict() {
        let one = resource("a", "one", 10, None);
        let two = resource("a", "two", 20, None);
        assert_eq!(conflicting(&two, None, [&one, &two]), None);
    }

    #[test]
    fn the_same_observed_id_conflicts_across_spellings() {
        let mut old = resource("a", "one", 10, None);
        old.status = Some(ChatWorkspaceStatus {
            workspace: Some(WorkspaceStatus { id: "w-1".into(), ..Default::default() }),
            ..Default::default()
        });
        let new = resource("a", "two", 20, None);
        assert_eq!(conflicting(&new, Some("w-1"), [&old]), Some("a/one".into()));
        assert_eq!(conflicting(&new, Some("w-2"), [&old]), None);
    }

    #[test]
    fn a_resource_being_deleted_keeps_its_claim_until_it_is_gone() {
        // Its cleanup may still be stopping the workspace.
        let mut old = resource("a", "one", 10, Some("ws"));
        old.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(30).unwrap()));
        let new = resource("a", "two", 20, Some("ws"));
        assert_eq!(conflicting(&new, None, [&old]), Some("a/one".into()));
    }

    #[test]
    fn the_index_agrees_with_the_scan() {
        let index = ClaimsIndex::default();
        let mut old = resource("a", "one", 10, Some("ws"));
        let new = resource("b", "two", 20, Some("ws"));
        let other = resource("a", "three", 5, Some("elsewhere"));
        for r in [&old, &new, &other] {
            index.apply(&Cached::pack(r.clone()));
        }
        assert_eq!(index.conflicting(&new, None), conflicting(&new, None, [&old, &new, &other]));
        assert_eq!(index.conflicting(&new, None), Some("in another namespace".into()));
        assert_eq!(index.conflicting(&old, None), None);
        assert_eq!(index.conflicting(&other, None), None);

        // Two spellings of one workspace meet through its observed id.
        old.status = Some(ChatWorkspaceStatus {
            workspace: Some(WorkspaceStatus { id: "w-1".into(), ..Default::default() }),
            ..Default::default()
        });
        old.spec.workspace_name = Some("WS-spelled-otherwise".into());
        index.apply(&Cached::pack(old.clone()));
        assert_eq!(index.conflicting(&new, None), None, "the spec keys differ now");
        assert_eq!(index.conflicting(&new, Some("w-1")), Some("in another namespace".into()));
        let neighbour = resource("a", "four", 40, Some("elsewhere-too"));
        assert_eq!(index.conflicting(&neighbour, Some("w-1")), Some("a/one".into()), "same namespace: named");

        index.delete(&Cached::pack(old.clone()));
        assert_eq!(index.conflicting(&new, Some("w-1")), None);
    }

    #[test]
    fn a_relist_forgets_what_it_did_not_list_in_its_own_namespace_only() {
        let index = ClaimsIndex::default();
        let gone = resource("a", "one", 10, Some("ws"));
        let kept = resource("b", "two", 12, Some("ws"));
        let new = resource("a", "three", 20, Some("ws"));
        for r in [&gone, &kept, &new] {
            index.apply(&Cached::pack(r.clone()));
        }
        index.relist_started(Some("a"));
        index.apply(&Cached::pack(new.clone()));
        index.relist_done(Some("a"));
        // a/one was not listed again; b/two belongs to another watch.
        assert_eq!(index.conflicting(&new, None), Some("in another namespace".into()));
    }
}
