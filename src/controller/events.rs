//! The Events a reconcile or a deletion tells, built in this one module:
//! what the decision reported, what the action produced, every phase and
//! `Degraded` reached, and the deletion's steps. `record::publish` and
//! `record::publish_one` send them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event as KubeEvent, EventType};

use super::act::Acted;
use crate::conditions::{self, DEGRADED, READY};
use crate::crd::{ChatWorkspaceStatus, DeletionPolicy, Phase};
use crate::decision;
use crate::events::EventReason;

/// An Event of a reconcile (`Reconcile`) or of a deletion (`Delete`).
fn event(warning: bool, reason: &str, note: String, action: &str) -> KubeEvent {
    KubeEvent {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

/// The Events of one reconcile: what the decision reported, then a new
/// phase, then a new `Degraded` cause.
pub(super) fn of_reconcile(
    reported: &[decision::Event],
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
) -> Vec<KubeEvent> {
    let mut all: Vec<KubeEvent> =
        reported.iter().map(|e| event(e.warning, e.reason.as_str(), e.note.clone(), "Reconcile")).collect();
    all.extend(phase(previous, status));
    if let Some(degraded) = flipped_true(&previous.conditions, &status.conditions, DEGRADED) {
        all.push(event(true, &degraded.reason, degraded.message.clone(), "Reconcile"));
    }
    all
}

/// What carrying out the action produced, in the decision's own terms.
pub(super) fn of_action(acted: &Acted) -> Option<decision::Event> {
    let (warning, reason, note) = match acted {
        Acted::Nothing | Acted::NameTaken | Acted::BuildUnderWay => return None,
        Acted::ChatsInterrupted { plan, result: Ok(outcome) } => {
            let skipped = match outcome.skipped {
                0 => String::new(),
                n => format!(" ({n} had ended already)"),
            };
            let note = format!(
                "Interrupted {} chat turn(s) running on the dead agent {} before the recovery's stop{skipped}.",
                outcome.chats.len(),
                plan.agent_name
            );
            (false, EventReason::ChatInterrupted, note)
        }
        Acted::ChatsInterrupted { result: Err(error), .. } => (
            true,
            EventReason::ChatInterruptFailed,
            format!("Could not interrupt the chat's turn before the recovery's stop: {error}"),
        ),
        Acted::ChatContextRefreshed { plan, result: Ok(outcome) } => {
            // v2.36.1 re-pins to the agent the chat has stored, which after a
            // stop/start is still the old one: say so.
            let count = outcome.chats.len();
            let still_old =
                outcome.chats.iter().filter(|c| c.agent_id.as_deref() != Some(plan.agent_id.as_str())).count();
            let note = if still_old == 0 {
                format!(
                    "Re-pinned the context of {count} chat(s) to the new chat agent {}, now ready, so the chat and \
                     its sub-agents keep their instruction files and skills.",
                    plan.agent_name
                )
            } else {
                format!(
                    "Refreshed the context of {count} chat(s), but coderd kept {still_old} of them on the agent \
                     they are bound to, not the new chat agent {}: the chat's next turn rebinds it and re-pins its \
                     context.",
                    plan.agent_name
                )
            };
            (false, EventReason::ChatContextRefreshed, note)
        }
        Acted::ChatContextRefreshed { plan, result: Err(error) } => (
            true,
            EventReason::ChatContextRefreshFailed,
            format!(
                "Could not re-pin the chat's context to agent {}: {error}. The chat's next turn does it.",
                plan.agent_name
            ),
        ),
        Acted::Created { workspace, template } => (
            false,
            EventReason::WorkspaceCreated,
            format!(
                "Created workspace {}/{} from template {template} (build #{}).",
                workspace.owner_name, workspace.name, workspace.latest_build.build_number
            ),
        ),
        Acted::BuildRequested { workspace, plan } => (
            false,
            EventReason::BuildRequested,
            format!(
                "Requested {} build #{} ({}){}.",
                plan.transition.as_str(),
                workspace.latest_build.build_number,
                plan.reason.as_str(),
                plan.template_version_id.as_ref().map(|v| format!(" on version {v}")).unwrap_or_default()
            ),
        ),
    };
    Some(decision::Event { warning, reason, note })
}

/// Another install drives the resource.
pub(super) fn managed_elsewhere(note: String) -> KubeEvent {
    event(true, EventReason::ManagedByAnotherOperator.as_str(), note, "Reconcile")
}

/// A deletion let the resource go without applying `deletionPolicy`.
pub(super) fn left_as_is(why: &str) -> KubeEvent {
    event(true, EventReason::WorkspaceLeftAsIs.as_str(), format!("deletionPolicy was not applied: {why}"), "Delete")
}

/// Another install's claim, released after the cleanup timeout.
pub(super) fn foreign_claim_released(note: String) -> KubeEvent {
    event(true, EventReason::ForeignClaimReleased.as_str(), note, "Delete")
}

/// A deletion that could not finish gave up, leaving the workspace.
pub(super) fn orphaned(note: String) -> KubeEvent {
    event(true, EventReason::WorkspaceOrphaned.as_str(), note, "Delete")
}

/// A deletion waits for something outside the operator.
pub(super) fn deletion_blocked(note: String) -> KubeEvent {
    event(true, EventReason::DeletionBlocked.as_str(), note, "Delete")
}

/// What the deletion's decision reported.
pub(super) fn of_cleanup(reported: decision::Event) -> KubeEvent {
    event(reported.warning, reported.reason.as_str(), reported.note, "Delete")
}

/// The build a deletion requested.
pub(super) fn cleanup_build(transition: &str, build_number: i32, policy: DeletionPolicy, failed: u32) -> KubeEvent {
    let retry = match failed {
        0 => String::new(),
        n => format!(" (retry after {n} failed build(s))"),
    };
    let note = format!(
        "Requested {transition} build #{build_number} because the resource is being deleted (deletionPolicy \
         {policy:?}){retry}."
    );
    event(false, EventReason::BuildRequested.as_str(), note, "Delete")
}

/// The Event of a new phase. The first phase a resource is given is not a
/// change and has none: an install over 10,000 running workspaces would
/// otherwise post 10,000 Events that say nothing happened (the status says
/// what was found). A first phase of `Failed` is a warning, and is told.
fn phase(previous: &ChatWorkspaceStatus, status: &ChatWorkspaceStatus) -> Option<KubeEvent> {
    let phase = status.phase.filter(|_| status.phase != previous.phase)?;
    if previous.phase.is_none() && phase != Phase::Failed {
        return None;
    }
    Some(KubeEvent {
        type_: if phase == Phase::Failed { EventType::Warning } else { EventType::Normal },
        reason: format!("{phase:?}"),
        note: conditions::find(&status.conditions, READY).map(|c| c.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    })
}

pub(super) fn flipped_true<'a>(previous: &[Condition], current: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    let now = conditions::find(current, type_).filter(|c| c.status == "True")?;
    let before = conditions::find(previous, type_);
    let same = before.is_some_and(|b| b.status == "True" && b.reason == now.reason);
    (!same).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: Phase) -> ChatWorkspaceStatus {
        ChatWorkspaceStatus { phase: Some(phase), ..ChatWorkspaceStatus::default() }
    }

    #[test]
    fn a_phase_event_tells_of_a_change_of_phase_not_of_the_first_one_found() {
        let none = ChatWorkspaceStatus::default();
        let reason = |previous: &ChatWorkspaceStatus, now: Phase| phase(previous, &status(now)).map(|e| e.reason);
        assert_eq!(reason(&none, Phase::Running), None, "found running: nothing happened");
        assert_eq!(reason(&none, Phase::Creating), None);
        assert_eq!(reason(&status(Phase::Starting), Phase::Running).as_deref(), Some("Running"));
        assert_eq!(reason(&status(Phase::Running), Phase::Running), None, "no change");
        let failed = phase(&none, &status(Phase::Failed)).expect("a first Failed is told");
        assert_eq!((failed.reason.as_str(), failed.type_), ("Failed", EventType::Warning));
    }
}
