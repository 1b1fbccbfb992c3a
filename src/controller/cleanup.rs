//! Deletion: applies `deletionPolicy` to the workspace, then lets the
//! resource go by removing the operator's finalizer.
//!
//! A cleanup build that fails in Coder is retried with backoff, counted in
//! `status.cleanup`. A deletion that cannot finish because the resource's
//! credentials are gone or its namespace is being deleted waits at most
//! `--cleanup-timeout` from its `deletionTimestamp`, saying why, and then
//! leaves the workspace in Coder (as `Orphan` would) so that the namespace
//! is not held forever.

use std::time::Duration;

use super::Next;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Context, act, events, gather, record};
use crate::claims::Verdict;
use crate::coder::{CoderError, Workspace};
use crate::crd::{ChatWorkspace, CleanupStatus, DeletionPolicy, FINALIZER};
use crate::credentials::Resolved;
use crate::decision::{self, BuildPlan, BuildReason, Cleanup, CleanupDeadline};
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
) -> Result<Next> {
    record::publish_one(context, resource, events::left_as_is(why)).await;
    remove_finalizer(api, resource).await?;
    Ok(Next::await_change())
}

/// How far applying the policy got in one pass.
enum Progress {
    /// The finalizer is gone.
    Finished,
    /// Not done yet; look again after this long.
    Pending(Duration),
}

/// Applies `deletionPolicy`, then lets the resource go; gives up (leaving the
/// workspace in Coder) when a deletion that cannot finish has waited long
/// enough.
pub(super) async fn cleanup(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Next> {
    // An orphaned workspace needs no Coder at all.
    if resource.spec.deletion_policy == DeletionPolicy::Orphan {
        remove_finalizer(api, resource).await?;
        return Ok(Next::await_change());
    }
    let outcome = apply_policy(api, resource, context).await;
    let (detail, after) = match &outcome {
        Ok(Progress::Finished) => return Ok(Next::await_change()),
        Ok(Progress::Pending(after)) => (Some("the cleanup build has not finished".to_string()), *after),
        Err(error) => (Some(error.to_string()), context.settings.requeue.stable),
    };
    let (blocker, detail) = match &outcome {
        Err(Error::CredentialsSecretMissing { namespace, secret }) => (
            format!(
                "its Coder credentials are gone (Secret {namespace}/{secret}, named by spec.credentialsRef, does not exist)"
            ),
            None,
        ),
        _ if namespace_terminating(context, resource).await? => {
            (format!("its namespace {} is being deleted", resource.namespace().unwrap_or_default()), detail)
        }
        // Nothing stands in the way for good: carry on (errors with backoff).
        _ => {
            return outcome.map(|progress| match progress {
                Progress::Pending(after) => Next::requeue(after),
                Progress::Finished => Next::await_change(),
            });
        }
    };
    wait_or_orphan(api, resource, context, &blocker, detail.as_deref(), after).await
}

/// A resource another install claimed (`chat.coder.com/operator`), being
/// deleted in a namespace that is being deleted: that install applies its
/// `deletionPolicy`, but if it is gone the shared finalizer would hold the
/// namespace forever. The same rule as a blocked cleanup: after
/// `--cleanup-timeout` from the `deletionTimestamp` the finalizer goes,
/// Coder untouched, with a Warning Event. `None`: not such a deletion.
pub(super) async fn release_foreign_claim(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    context: &Context,
    other: &str,
) -> Result<Option<Next>> {
    let Some(deleted_at) = resource.metadata.deletion_timestamp.as_ref().map(|t| t.0) else {
        return Ok(None);
    };
    if !resource.finalizers().iter().any(|f| f == FINALIZER) || !namespace_terminating(context, resource).await? {
        return Ok(None);
    }
    let timeout = context.settings.cleanup_timeout;
    if let CleanupDeadline::WaitUntil { remaining, .. } =
        decision::cleanup_deadline(deleted_at, timeout, Timestamp::now())
    {
        return Ok(Some(Next::requeue(remaining + Duration::from_millis(100))));
    }
    let note = tenancy::installs::abandoned(other, &context.settings.install, &decision::human(timeout));
    warn!(name = %resource.name_any(), namespace = ?resource.namespace(), %note, "releasing another install's claim");
    record::publish_one(context, resource, events::foreign_claim_released(note)).await;
    remove_finalizer(api, resource).await?;
    Ok(Some(Next::await_change()))
}

/// Whether the resource's namespace is being deleted.
async fn namespace_terminating(context: &Context, resource: &ChatWorkspace) -> Result<bool> {
    let api: Api<Namespace> = Api::all(context.kube.clone());
    let namespace = api.get_metadata_opt(&resource.namespace().unwrap_or_default()).await?;
    Ok(namespace.is_none_or(|n| n.metadata.deletion_timestamp.is_some()))
}

/// The workspace a deletion is about, for messages: owner/name and id.
fn workspace_named(resource: &ChatWorkspace) -> String {
    match resource.status.as_ref().and_then(|s| s.workspace.as_ref()) {
        Some(known) => format!("{}/{} (id {})", known.owner, known.name, known.id),
        None => format!(
            "{}/{} (id unknown: the operator never saw it)",
            resource.spec.owner.as_deref().unwrap_or("<the token's user>"),
            resource.workspace_name()
        ),
    }
}

/// Before the deadline: says once why the deletion waits, and looks again.
/// After it: leaves the workspace in Coder, says so, and lets the resource go.
async fn wait_or_orphan(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    context: &Context,
    blocker: &str,
    detail: Option<&str>,
    after: Duration,
) -> Result<Next> {
    let policy = resource.spec.deletion_policy;
    let timeout = context.settings.cleanup_timeout;
    let now = Timestamp::now();
    let deleted_at = resource.metadata.deletion_timestamp.as_ref().map_or(now, |t| t.0);
    let deadline = decision::cleanup_deadline(deleted_at, timeout, now);
    let workspace = workspace_named(resource);
    let CleanupDeadline::WaitUntil { at: deadline, remaining } = deadline else {
        let last = detail.map(|detail| format!(" (last: {detail})")).unwrap_or_default();
        let note = format!(
            "Left workspace {workspace} in Coder as it is, without applying deletionPolicy {policy:?}: {blocker}, \
             and {} after the deletion began it still could not be applied{last}. Stop or delete the workspace \
             in Coder if it is no longer needed.",
            decision::human(timeout)
        );
        warn!(name = %resource.name_any(), namespace = ?resource.namespace(), %note, "giving up on deletionPolicy");
        record::publish_one(context, resource, events::orphaned(note)).await;
        remove_finalizer(api, resource).await?;
        return Ok(Next::await_change());
    };
    let message = format!(
        "The deletion waits: {blocker}, so deletionPolicy {policy:?} cannot be applied to workspace {workspace}. \
         If it still cannot by {} ({} after the deletion began), the workspace is left in Coder as it is and \
         the resource goes.",
        deadline.round(jiff::Unit::Second).unwrap_or(deadline),
        decision::human(timeout)
    );
    let mut cleanup = previous_cleanup(resource);
    if cleanup.waiting.as_deref() != Some(message.as_str()) {
        // Once per cause, not once per pass.
        cleanup.waiting = Some(message.clone());
        record::write_cleanup(context, api, resource, &cleanup).await?;
        record::publish_one(context, resource, events::deletion_blocked(message)).await;
    }
    Ok(Next::requeue(after.min(remaining + Duration::from_millis(100))))
}

fn previous_cleanup(resource: &ChatWorkspace) -> CleanupStatus {
    resource.status.as_ref().and_then(|s| s.cleanup.clone()).unwrap_or_default()
}

/// The workspace a deletion may act on, or why it leaves it alone.
enum Subject {
    /// This resource drives it.
    Drives(Box<Driven>),
    /// An older resource that may name the same workspace is not settled.
    Waits,
    /// Leave the workspace as it is, for this reason.
    Leave(String),
}

/// What a deletion that drives its workspace acts with.
struct Driven {
    credentials: Resolved,
    /// The owner's username.
    owner: String,
    /// `None`: the workspace does not exist.
    workspace: Option<Workspace>,
}

/// One pass of `deletionPolicy` (Stop or Delete) against Coder.
async fn apply_policy(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Progress> {
    let active = context.settings.requeue.active;
    let (credentials, owner, workspace) = match subject(resource, context).await? {
        Subject::Drives(driven) => {
            let Driven { credentials, owner, workspace } = *driven;
            (credentials, owner, workspace)
        }
        Subject::Waits => return Ok(Progress::Pending(active)),
        Subject::Leave(why) => {
            leave_workspace(api, resource, context, &why).await?;
            return Ok(Progress::Finished);
        }
    };
    let policy = match &workspace {
        Some(found) => match policy_for(resource, found, (context, &credentials), &owner).await? {
            Ok(policy) => policy,
            Err(why) => {
                leave_workspace(api, resource, context, &why).await?;
                return Ok(Progress::Finished);
            }
        },
        None => resource.spec.deletion_policy,
    };
    let previous = previous_cleanup(resource);
    let decided = decision::decide_cleanup(
        policy,
        workspace.as_ref(),
        &previous,
        context.settings.cleanup_backoff,
        Timestamp::now(),
    );
    if decided.status != previous {
        // Counted before it is reported or retried: a restart keeps the count.
        record::write_cleanup(context, api, resource, &decided.status).await?;
    }
    if let Some(event) = decided.event {
        record::publish_one(context, resource, events::of_cleanup(event)).await;
    }
    match decided.cleanup {
        Cleanup::Done => {
            info!(name = %resource.name_any(), ?policy, "deletion policy applied; removing finalizer");
            remove_finalizer(api, resource).await?;
            Ok(Progress::Finished)
        }
        Cleanup::Wait => Ok(Progress::Pending(active)),
        Cleanup::RetryIn(after) => Ok(Progress::Pending(after)),
        Cleanup::Build(transition) => {
            let workspace = workspace.expect("a cleanup build is only decided for an observed workspace");
            let plan = BuildPlan { transition, template_version_id: None, reason: BuildReason::Deletion };
            match act::issue_build(&workspace, &plan, &[], &credentials.client).await {
                Ok(build) => {
                    context.metrics.build(transition.as_str(), plan.reason.as_str());
                    let event =
                        events::cleanup_build(transition.as_str(), build.build_number, policy, previous.failed_builds);
                    record::publish_one(context, resource, event).await;
                }
                Err(Error::Coder(CoderError::Conflict { .. })) => {}
                Err(error) => return Err(error),
            }
            Ok(Progress::Pending(active))
        }
    }
}

/// The workspace the deletion is about, if this resource may act on it: a
/// resource that may not drive the workspace (any more) leaves it as it is,
/// and so does one that does not hold its claim, before and after the
/// fresh read. The one-actor rule is the reconcile's (`gather::admit`,
/// `ClaimsIndex::verdict`).
async fn subject(resource: &ChatWorkspace, context: &Context) -> Result<Subject> {
    let (credentials, owner, key) = match gather::admit(resource, context).await {
        Ok(gather::Admitted { credentials, owner, key }) => (credentials, owner, key),
        Err(error @ (Error::OwnerNotGranted(_) | Error::CoderUrlNotAllowed { .. })) => {
            return Ok(Subject::Leave(error.to_string()));
        }
        Err(error) => return Err(error),
    };
    let verdict = |id: Option<&str>| match context.claims.verdict(resource, key, id) {
        Verdict::Drives => None,
        Verdict::Waits => Some(Subject::Waits),
        Verdict::Conflict(other) => Some(Subject::Leave(format!(
            "another ChatWorkspace ({other}) drives workspace {}",
            workspace_named(resource)
        ))),
    };
    let known_id = resource.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.as_str());
    if let Some(elsewhere) = verdict(known_id) {
        return Ok(elsewhere);
    }
    let workspace =
        gather::fresh_read(&context.index, &credentials, &owner.username, &resource.workspace_name(), known_id)
            .await
            .and_then(|workspace| gather::owned_by(workspace, &owner));
    let workspace = match workspace {
        Ok(workspace) => workspace,
        Err(error @ Error::WorkspaceOfAnotherOwner { .. }) => return Ok(Subject::Leave(error.to_string())),
        Err(error) => return Err(error),
    };
    if let Some(elsewhere) = workspace.as_ref().and_then(|found| verdict(Some(&found.id))) {
        return Ok(elsewhere);
    }
    Ok(Subject::Drives(Box::new(Driven { credentials, owner: owner.username, workspace })))
}

/// The policy to apply to `found`: deleting needs the adoption's explicit
/// consent (stopping is what Stop would do); an adoption refused leaves
/// the workspace alone (`Err`, why).
async fn policy_for(
    resource: &ChatWorkspace,
    found: &Workspace,
    (context, credentials): (&Context, &Resolved),
    owner: &str,
) -> Result<std::result::Result<DeletionPolicy, String>> {
    let status = resource.status.clone().unwrap_or_default();
    let ownership = match gather::consent(resource, &status, &None, Some(found), (context, credentials), owner).await {
        Ok(recorded) => recorded.or(status.ownership.clone()),
        Err(refused @ Error::AdoptionNotConsented(_)) => return Ok(Err(refused.to_string())),
        Err(error) => return Err(error),
    };
    let policy = resource.spec.deletion_policy;
    if policy == DeletionPolicy::Delete
        && !tenancy::adoption::may_delete(resource.spec.adopt, ownership.as_ref(), &found.id)
    {
        return Ok(Ok(DeletionPolicy::Stop));
    }
    Ok(Ok(policy))
}
