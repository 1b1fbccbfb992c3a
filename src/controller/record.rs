//! Record: what a reconcile leaves behind in Kubernetes (status, Events) and
//! in the metrics.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::warn;

use super::Context;
use crate::conditions::{self, DEGRADED, READY, Verdict};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, FIELD_MANAGER, Phase};
use crate::decision;
use crate::error::{Error, Result};

/// The status to write when a reconcile could not complete.
pub(super) fn failed_status(
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    error: &Error,
) -> ChatWorkspaceStatus {
    let generation = resource.metadata.generation.unwrap_or_default();
    let message = format!("{error}. {}", error.advice());
    let mut verdicts = vec![Verdict::new(DEGRADED, true, error.reason(), message.clone())];
    if !error.is_transient() {
        // The operator cannot keep the desired state until something changes.
        verdicts.push(Verdict::new(READY, false, error.reason(), message));
    }
    let mut status = previous.clone();
    status.observed_generation = Some(generation);
    if !error.is_transient() {
        status.phase = Some(Phase::Failed);
    }
    status.conditions =
        conditions::merge(&previous.conditions, &verdicts, generation, &decision::whole_seconds(Timestamp::now()));
    status
}

/// Writes `status` unless it is what the resource already has.
pub(super) async fn write_status(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
) -> Result<()> {
    if status == previous {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": ChatWorkspace::api_version(&()),
        "kind": ChatWorkspace::kind(&()),
        "status": status,
    });
    api.patch_status(&resource.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Persists what is about to be done (a recovery's stage and attempt, the
/// build request) before it is done, so that an operator stopped between
/// the build and its record resumes the recovery instead of losing its
/// stage or counting a new attempt. The resourceVersion makes the write fail
/// if the resource changed since it was read: a decision taken on a stale
/// spec or status is not acted on.
pub(super) async fn write_intent(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    status: &ChatWorkspaceStatus,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": ChatWorkspace::api_version(&()),
        "kind": ChatWorkspace::kind(&()),
        "metadata": {"resourceVersion": resource.resource_version()},
        "status": status,
    });
    api.patch_status(&resource.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Records, before a create, that this resource is creating its workspace
/// (see `tenancy::adoption::made_by_us`). A merge patch of that one field:
/// the status apply at the end of the reconcile writes the rest.
pub(super) async fn write_create_intent(api: &Api<ChatWorkspace>, resource: &ChatWorkspace) -> Result<()> {
    let intent = crate::tenancy::adoption::create_intent(decision::whole_seconds(Timestamp::now()).0);
    let patch = serde_json::json!({"status": {"ownership": intent}});
    api.patch_status(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Events for what the decision reported, and for every state reached.
pub(super) async fn publish(
    context: &Context,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
    events: &[decision::Event],
) {
    let mut all: Vec<KubeEvent> = events
        .iter()
        .map(|e| KubeEvent {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.into(),
            note: Some(e.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        })
        .collect();
    if status.phase != previous.phase
        && let Some(phase) = status.phase
    {
        let ready = conditions::find(&status.conditions, READY).map(|c| c.message.clone());
        all.push(KubeEvent {
            type_: if phase == Phase::Failed { EventType::Warning } else { EventType::Normal },
            reason: format!("{phase:?}"),
            note: ready,
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if let Some(degraded) = flipped_true(&previous.conditions, &status.conditions, DEGRADED) {
        all.push(KubeEvent {
            type_: EventType::Warning,
            reason: degraded.reason.clone(),
            note: Some(degraded.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    for event in all {
        if event.reason == "Recovered" {
            context.metrics.recovery("succeeded");
        }
        publish_one(context, resource, event).await;
    }
}

pub(super) async fn publish_one(context: &Context, resource: &ChatWorkspace, mut event: KubeEvent) {
    // A note the apiserver would refuse would lose the whole Event.
    event.note = event.note.map(|note| crate::tenancy::event_note(&note));
    if let Err(error) = context.recorder.publish(&event, &resource.object_ref(&())).await {
        warn!(%error, reason = %event.reason, "cannot publish event");
    }
}

fn flipped_true<'a>(previous: &[Condition], current: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    let now = conditions::find(current, type_).filter(|c| c.status == "True")?;
    let before = conditions::find(previous, type_);
    let same = before.is_some_and(|b| b.status == "True" && b.reason == now.reason);
    (!same).then_some(now)
}
