//! Deletion: applies `deletionPolicy` to the workspace, then lets the
//! resource go by removing the operator's finalizer.

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, ResourceExt};
use tracing::info;

use super::{Context, act, gather, record};
use crate::coder::CoderError;
use crate::crd::{ChatWorkspace, FINALIZER};
use crate::decision::{self, BuildPlan, BuildReason, Cleanup};
use crate::error::{Error, Result};
use crate::tenancy;

async fn remove_finalizer(api: &Api<ChatWorkspace>, resource: &ChatWorkspace) -> Result<()> {
    let finalizers = resource.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, resource, finalizers).await
}

/// A merge patch that carries the resourceVersion it was computed from, so
/// it fails (and the reconcile retries) instead of dropping another
/// controller's finalizer written meanwhile.
async fn set_finalizers(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": resource.resource_version()},
    });
    api.patch(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Lets a resource go without touching its workspace in Coder, saying why.
async fn leave_workspace(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    context: &Context,
    why: &str,
) -> Result<Action> {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "WorkspaceLeftAsIs".into(),
        note: Some(format!("deletionPolicy was not applied: {why}")),
        action: "Delete".into(),
        secondary: None,
    };
    record::publish_one(context, resource, event).await;
    remove_finalizer(api, resource).await?;
    Ok(Action::await_change())
}

/// Applies `deletionPolicy`, then lets the resource go.
pub(super) async fn cleanup(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Action> {
    let policy = resource.spec.deletion_policy;
    let workspace_id = resource.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.as_str());
    // A resource that lost a conflict never drove the workspace, and an
    // orphaned workspace needs no Coder at all.
    if policy == crate::crd::DeletionPolicy::Orphan || context.claims.conflicting(resource, workspace_id).is_some() {
        remove_finalizer(api, resource).await?;
        return Ok(Action::await_change());
    }
    // A resource that may not drive the workspace (any more) leaves it as it is.
    let admitted = match context.credentials.for_resource(&context.kube, resource).await {
        Ok(credentials) => context.tenancy.admit(resource, &credentials).await.map(|owner| (credentials, owner)),
        Err(error) => Err(error),
    };
    let (credentials, owner) = match admitted {
        Ok(admitted) => admitted,
        Err(error @ (Error::OwnerNotGranted(_) | Error::CoderUrlNotAllowed { .. })) => {
            return leave_workspace(api, resource, context, &error.to_string()).await;
        }
        Err(error) => return Err(error),
    };
    let coder = &credentials.client;
    let owner = owner.username;
    let known_id = resource.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.as_str());
    let workspace = act::fresh_read(&context.index, &credentials, &owner, &resource.workspace_name(), known_id).await?;
    let status = resource.status.clone().unwrap_or_default();
    let mut policy = policy;
    if let Some(found) = &workspace {
        let ownership =
            match gather::consent(resource, &status, &None, Some(found), (context, &credentials), &owner).await {
                Ok(recorded) => recorded.or(status.ownership.clone()),
                Err(refused @ Error::AdoptionNotConsented(_)) => {
                    return leave_workspace(api, resource, context, &refused.to_string()).await;
                }
                Err(error) => return Err(error),
            };
        if policy == crate::crd::DeletionPolicy::Delete
            && !tenancy::adoption::may_delete(resource.spec.adopt, ownership.as_ref(), &found.id)
        {
            // Deleting needs explicit consent; stopping is what Stop would do.
            policy = crate::crd::DeletionPolicy::Stop;
        }
    }
    match decision::decide_cleanup(policy, workspace.as_ref()) {
        Cleanup::Done => {
            info!(name = %resource.name_any(), ?policy, "deletion policy applied; removing finalizer");
            remove_finalizer(api, resource).await?;
            Ok(Action::await_change())
        }
        Cleanup::Wait => Ok(Action::requeue(context.settings.requeue.active)),
        Cleanup::Build(transition) => {
            let workspace = workspace.expect("a cleanup build is only decided for an observed workspace");
            let plan = BuildPlan { transition, template_version_id: None, reason: BuildReason::DesiredState };
            match act::issue_build(&workspace, &plan, coder).await {
                Ok(build) => {
                    context.metrics.build(transition.as_str(), "Deletion");
                    let event = KubeEvent {
                        type_: EventType::Normal,
                        reason: "BuildRequested".into(),
                        note: Some(format!(
                            "Requested {} build #{} because the resource is being deleted (deletionPolicy {policy:?}).",
                            transition.as_str(),
                            build.build_number
                        )),
                        action: "Delete".into(),
                        secondary: None,
                    };
                    record::publish_one(context, resource, event).await;
                }
                Err(Error::Coder(CoderError::Conflict { .. })) => {}
                Err(error) => return Err(error),
            }
            Ok(Action::requeue(context.settings.requeue.active))
        }
    }
}
