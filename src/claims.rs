//! One actor per workspace: when two `ChatWorkspace`s point at the same
//! Coder workspace, the older one drives it and the other reports a
//! conflict. Decided from the controller's cache, with no extra requests.

use kube::ResourceExt;

use crate::crd::ChatWorkspace;

/// What identifies a workspace before it is observed: the credentials (the
/// default, or a Secret of the resource's namespace), the owner as written
/// and the workspace name.
fn spec_key(resource: &ChatWorkspace) -> (Option<String>, String, String) {
    let credentials = resource
        .spec
        .credentials_ref
        .as_ref()
        .map(|secret| format!("{}/{}", resource.namespace().unwrap_or_default(), secret.name));
    // Coder's usernames and workspace names are case-insensitive, and `me`
    // is the token's user as much as no owner is.
    let owner = match crate::tenancy::OwnerRef::from_spec(resource.spec.owner.as_deref()) {
        crate::tenancy::OwnerRef::TokenUser => String::new(),
        other => other.path_param().to_owned(),
    };
    (credentials, owner, resource.workspace_name().to_lowercase())
}

/// Creation time, then namespace and name: a total order, stable over
/// restarts, so every replica and every reconcile agrees on who is older.
fn age_key(resource: &ChatWorkspace) -> (Option<jiff::Timestamp>, String, String) {
    (
        resource.metadata.creation_timestamp.as_ref().map(|t| t.0),
        resource.namespace().unwrap_or_default(),
        resource.name_any(),
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
                deletion_policy: Default::default(),
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
}
