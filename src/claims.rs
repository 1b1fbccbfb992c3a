//! One actor per workspace: when two `ChatWorkspace`s point at the same
//! Coder workspace, the older one drives it and the others report a
//! conflict, in their reconcile and in their deletion alike. Decided from an
//! index kept from the watch and from each resource's admission, with no
//! extra requests and without scanning every resource.
//!
//! The watch files each resource under the workspace name its spec names and
//! the workspace id its status records. Only a reconcile knows which
//! workspace that name is (Coder resolves the owner: `alice`, `ALICE`, `me`
//! and alice's user id are one user) and whether the resource may drive it
//! at all (tenancy). So a resource's [`Standing`] starts pending, and its
//! reconcile settles it: admitted, for a [`WorkspaceKey`] of the resolved
//! owner's id, or idle (refused, or not this install's), which claims
//! nothing and blocks nobody. A younger resource that may name the same
//! workspace as an older pending one waits until the older is settled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::cache::Watched;
use crate::crd::{ChatWorkspace, ChatWorkspaceSpec};

/// What a resource's spec names, as written: its credentials (the default,
/// or a Secret of its namespace), its owner as spelled and the workspace
/// name. Two resources that agree on all three name one workspace.
fn spelled(metadata: &ObjectMeta, spec: &ChatWorkspaceSpec) -> (Option<String>, String, String) {
    let namespace = metadata.namespace.as_deref().unwrap_or_default();
    let credentials = spec.credentials_ref.as_ref().map(|secret| format!("{namespace}/{}", secret.name));
    // Coder's usernames and workspace names are case-insensitive, and `me`
    // is the token's user as much as no owner is.
    let owner = match crate::tenancy::OwnerRef::from_spec(spec.owner.as_deref()) {
        crate::tenancy::OwnerRef::TokenUser => String::new(),
        other => other.path_param().to_owned(),
    };
    (credentials, owner, workspace_name(metadata, spec))
}

fn workspace_name(metadata: &ObjectMeta, spec: &ChatWorkspaceSpec) -> String {
    spec.workspace_name.as_deref().or(metadata.name.as_deref()).unwrap_or_default().to_lowercase()
}

/// Creation time, then namespace and name: a total order, stable over
/// restarts, so every replica and every reconcile agrees on who is older.
fn age_of(metadata: &ObjectMeta) -> (Option<jiff::Timestamp>, String, String) {
    (
        metadata.creation_timestamp.as_ref().map(|t| t.0),
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// The hasher of the claims' keys: random per process, so no resource can
/// be named to collide with another's on purpose. The index keeps no copy
/// of the keys themselves; two keys that hash alike (one chance in 2^64 for
/// a pair) would be taken for one workspace, which errs on the safe side: a
/// conflict reported, never two actors.
static HASHER: std::sync::LazyLock<std::hash::RandomState> = std::sync::LazyLock::new(Default::default);

fn hashed(value: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    HASHER.hash_one(value)
}

/// What the watch files a resource under, computed as it decodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimKeys {
    /// The spec as written (see [`spelled`]): when it changes, the
    /// resource's standing must be settled again.
    spelled: u64,
    /// The workspace name alone: every workspace it may be.
    name: u64,
    /// The workspace id its status records.
    id: Option<u64>,
}

impl ClaimKeys {
    /// The keys of a resource with this metadata and spec, whose status
    /// records workspace `id`.
    pub fn of(metadata: &ObjectMeta, spec: &ChatWorkspaceSpec, id: Option<&str>) -> Self {
        Self {
            spelled: hashed(spelled(metadata, spec)),
            name: hashed(workspace_name(metadata, spec)),
            id: id.map(|id| hashed(id.to_lowercase())),
        }
    }
}

/// One workspace as Coder knows it: its deployment, its owner's user id
/// and its name, whatever the spec's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceKey(u64);

impl WorkspaceKey {
    pub fn new(coder_url: &str, owner_id: &str, name: &str) -> Self {
        Self(hashed((coder_url.trim_end_matches('/').to_lowercase(), owner_id.to_lowercase(), name.to_lowercase())))
    }
}

/// What a resource claims, as its latest reconcile settled it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Standing {
    /// Not settled since the watch saw its spec: it may drive the
    /// workspace its spec names.
    #[default]
    Pending,
    /// Admitted to drive this workspace.
    Admitted(WorkspaceKey),
    /// Drives nothing: tenancy refused it, its spec or credentials cannot
    /// be used, or another install drives it.
    Idle,
}

/// The one-actor rule's answer for one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No older resource drives the workspace: this one may.
    Drives,
    /// An older resource that may name the same workspace is not settled
    /// yet: look again shortly, touching nothing meanwhile.
    Waits,
    /// An older resource drives it, named `namespace/name` when it is in
    /// the same namespace (the others' names are not this namespace's
    /// users' business).
    Conflict(String),
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
    standing: Standing,
}

/// Every resource's claim, by the workspace name it names and the
/// workspace id it observed.
#[derive(Default)]
pub struct ClaimsIndex {
    inner: Mutex<Claims>,
}

/// The claims on one name or id, oldest first: nearly always one, so a
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
}

#[derive(Default)]
struct Claims {
    by_name: HashMap<u64, ClaimSet>,
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
        if self.by_name.get_mut(&held.keys.name).is_some_and(|set| set.remove(&held.claim)) {
            self.by_name.remove(&held.keys.name);
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
    pub fn apply(&self, resource: &Watched) {
        let uid = resource.metadata.uid.as_deref().unwrap_or_default();
        let keys = resource.claim_keys();
        let (created, namespace, name) = age_of(&resource.metadata);
        let mut claims = self.inner.lock().expect("claims");
        let uid: Arc<str> = claims.held.get_key_value(uid).map_or_else(|| uid.into(), |(held, _)| held.clone());
        for seen in claims.relists.values_mut() {
            seen.insert(uid.clone());
        }
        let (unchanged, standing) = match claims.held.get(&uid) {
            Some(held) => (
                held.keys == keys
                    && held.claim.age.0 == created
                    && *held.claim.age.1 == namespace
                    && *held.claim.age.2 == name,
                // A new spelling is a new question for tenancy.
                if held.keys.spelled == keys.spelled { held.standing } else { Standing::Pending },
            ),
            None => (false, Standing::Pending),
        };
        // Most updates are status writes, which change no claim.
        if unchanged {
            return;
        }
        claims.remove(&uid);
        let claim = Arc::new(Claim { age: (created, namespace.into(), name.into()), uid: uid.clone() });
        claims.by_name.entry(keys.name).or_default().insert(claim.clone());
        if let Some(id) = keys.id {
            claims.by_id.entry(id).or_default().insert(claim.clone());
        }
        claims.held.insert(uid, Held { keys, claim, standing });
    }

    /// A resource is gone.
    pub fn delete(&self, resource: &Watched) {
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

    /// Records what `resource`'s reconcile settled: the workspace it was
    /// admitted to drive, or that it drives nothing.
    pub fn settle(&self, resource: &ChatWorkspace, standing: Standing) {
        let mut claims = self.inner.lock().expect("claims");
        if let Some(held) = claims.held.get_mut(resource.uid().unwrap_or_default().as_str()) {
            held.standing = standing;
        }
    }

    /// The one-actor rule for `me`, admitted to drive workspace `key`,
    /// which it observed as `workspace_id` (if it did): the oldest resource
    /// that drives the same workspace wins.
    pub fn verdict(&self, me: &ChatWorkspace, key: WorkspaceKey, workspace_id: Option<&str>) -> Verdict {
        let claims = self.inner.lock().expect("claims");
        let mine = ClaimKeys::of(&me.metadata, &me.spec, workspace_id);
        let (created, namespace, name) = age_of(&me.metadata);
        let my_age = (created, namespace.into_boxed_str(), name.into_boxed_str());
        let my_uid = me.uid().unwrap_or_default();
        let older = |claim: &&Arc<Claim>| *claim.uid != *my_uid && claim.age < my_age;
        let standing = |claim: &Claim| claims.held.get(&claim.uid).map(|held| held.standing);
        let by_name =
            claims.by_name.get(&mine.name).into_iter().flat_map(|set| &set.0).filter(older).map(
                |claim| match standing(claim) {
                    Some(Standing::Admitted(theirs)) if theirs == key => (Some(claim), false),
                    Some(Standing::Pending) => (None, true),
                    _ => (None, false),
                },
            );
        let by_id = mine.id.and_then(|id| claims.by_id.get(&id)).into_iter().flat_map(|set| &set.0).filter(older).map(
            |claim| match standing(claim) {
                Some(Standing::Admitted(_)) => (Some(claim), false),
                Some(Standing::Pending) => (None, true),
                _ => (None, false),
            },
        );
        let (mut winner, mut unsettled): (Option<&Arc<Claim>>, bool) = (None, false);
        for (beats, pending) in by_name.chain(by_id) {
            unsettled |= pending;
            if let Some(claim) = beats
                && winner.is_none_or(|w| claim < w)
            {
                winner = Some(claim);
            }
        }
        match winner {
            Some(claim) if claim.age.1 == my_age.1 => Verdict::Conflict(format!("{}/{}", claim.age.1, claim.age.2)),
            Some(_) => Verdict::Conflict("in another namespace".to_owned()),
            None if unsettled => Verdict::Waits,
            None => Verdict::Drives,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ChatWorkspaceSpec, ChatWorkspaceStatus, TemplateRef, WorkspaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const URL: &str = "https://coder.example.com";

    fn resource(namespace: &str, name: &str, created: i64, owner: Option<&str>, workspace: &str) -> ChatWorkspace {
        let mut cws = ChatWorkspace::new(
            name,
            ChatWorkspaceSpec {
                desired_state: Default::default(),
                owner: owner.map(str::to_string),
                organization: None,
                workspace_name: Some(workspace.to_owned()),
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

    fn observed(mut cws: ChatWorkspace, id: &str) -> ChatWorkspace {
        cws.status = Some(ChatWorkspaceStatus {
            workspace: Some(WorkspaceStatus { id: id.into(), ..Default::default() }),
            ..Default::default()
        });
        cws
    }

    fn index(resources: &[&ChatWorkspace]) -> ClaimsIndex {
        let index = ClaimsIndex::default();
        for r in resources {
            index.apply(&Watched::pack((*r).clone()));
        }
        index
    }

    fn alices(name: &str) -> WorkspaceKey {
        WorkspaceKey::new(URL, "u-alice", name)
    }

    #[test]
    fn the_older_admitted_resource_wins_and_is_named_only_in_its_own_namespace() {
        let old = resource("a", "one", 10, Some("alice"), "ws");
        let new = resource("b", "two", 20, Some("alice"), "ws");
        let neighbour = resource("a", "three", 30, Some("alice"), "ws");
        let claims = index(&[&old, &new, &neighbour]);
        claims.settle(&old, Standing::Admitted(alices("ws")));
        assert_eq!(claims.verdict(&old, alices("ws"), None), Verdict::Drives);
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Conflict("in another namespace".into()));
        claims.settle(&new, Standing::Admitted(alices("ws")));
        assert_eq!(claims.verdict(&neighbour, alices("ws"), None), Verdict::Conflict("a/one".into()));
    }

    #[test]
    fn every_spelling_of_one_owner_is_one_workspace() {
        // The owner's username, its id and `me` resolve to one user.
        let by_name = resource("a", "one", 10, Some("alice"), "ws");
        let by_id = resource("b", "two", 20, Some("0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02"), "WS");
        let claims = index(&[&by_name, &by_id]);
        claims.settle(&by_name, Standing::Admitted(alices("ws")));
        assert_eq!(claims.verdict(&by_id, alices("WS"), None), Verdict::Conflict("in another namespace".into()));
        // Another owner's workspace of the same name is another workspace.
        let bobs = WorkspaceKey::new(URL, "u-bob", "ws");
        assert_eq!(claims.verdict(&by_id, bobs, None), Verdict::Drives);
        // So is one of another Coder deployment.
        assert_eq!(claims.verdict(&by_id, WorkspaceKey::new("https://other", "u-alice", "ws"), None), Verdict::Drives);
    }

    #[test]
    fn a_refused_resource_claims_nothing_and_blocks_nobody() {
        let refused = observed(resource("a", "one", 10, Some("alice"), "ws"), "w-1");
        let granted = resource("b", "two", 20, Some("alice"), "ws");
        let claims = index(&[&refused, &granted]);
        claims.settle(&refused, Standing::Idle);
        assert_eq!(claims.verdict(&granted, alices("ws"), Some("w-1")), Verdict::Drives);
    }

    #[test]
    fn an_older_unsettled_resource_makes_a_younger_one_wait_until_it_is_settled() {
        let old = resource("a", "one", 10, Some("0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02"), "ws");
        let new = resource("b", "two", 20, Some("alice"), "ws");
        let claims = index(&[&old, &new]);
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Waits);
        assert_eq!(claims.verdict(&old, alices("ws"), None), Verdict::Drives, "the older one never waits");
        claims.settle(&old, Standing::Idle);
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Drives);
        claims.settle(&old, Standing::Admitted(alices("ws")));
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Conflict("in another namespace".into()));
    }

    #[test]
    fn a_new_spelling_must_be_settled_again() {
        let mut old = resource("a", "one", 10, Some("alice"), "ws");
        let new = resource("a", "two", 20, Some("alice"), "ws");
        let claims = index(&[&old, &new]);
        claims.settle(&old, Standing::Admitted(alices("ws")));
        // A status write keeps the standing.
        claims.apply(&Watched::pack(observed(old.clone(), "w-1")));
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Conflict("a/one".into()));
        // Other credentials are a new question for tenancy.
        old.spec.credentials_ref = Some(crate::crd::SecretRef { name: "mine".into() });
        claims.apply(&Watched::pack(old));
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Waits);
    }

    #[test]
    fn the_same_observed_id_conflicts_across_names() {
        // A workspace renamed in Coder is followed by id.
        let old = observed(resource("a", "one", 10, Some("alice"), "old-name"), "w-1");
        let new = resource("a", "two", 20, Some("alice"), "new-name");
        let claims = index(&[&old, &new]);
        claims.settle(&old, Standing::Admitted(alices("old-name")));
        assert_eq!(claims.verdict(&new, alices("new-name"), Some("w-1")), Verdict::Conflict("a/one".into()));
        assert_eq!(claims.verdict(&new, alices("new-name"), Some("w-2")), Verdict::Drives);
        assert_eq!(claims.verdict(&new, alices("new-name"), None), Verdict::Drives);
    }

    #[test]
    fn a_resource_being_deleted_keeps_its_claim_until_it_is_gone() {
        // Its cleanup may still be stopping the workspace.
        let mut old = resource("a", "one", 10, Some("alice"), "ws");
        old.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(30).unwrap()));
        let new = resource("a", "two", 20, Some("alice"), "ws");
        let claims = index(&[&old, &new]);
        claims.settle(&old, Standing::Admitted(alices("ws")));
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Conflict("a/one".into()));
        claims.delete(&Watched::pack(old));
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Drives);
    }

    #[test]
    fn a_relist_forgets_what_it_did_not_list_in_its_own_namespace_only() {
        let gone = resource("a", "one", 10, Some("alice"), "ws");
        let kept = resource("b", "two", 12, Some("alice"), "ws");
        let new = resource("a", "three", 20, Some("alice"), "ws");
        let claims = index(&[&gone, &kept, &new]);
        claims.settle(&gone, Standing::Admitted(alices("ws")));
        claims.settle(&kept, Standing::Admitted(alices("ws")));
        claims.relist_started(Some("a"));
        claims.apply(&Watched::pack(new.clone()));
        claims.relist_done(Some("a"));
        // a/one was not listed again; b/two belongs to another watch.
        assert_eq!(claims.verdict(&new, alices("ws"), None), Verdict::Conflict("in another namespace".into()));
    }
}
