//! Consent to drive a workspace the operator did not create.
//!
//! A workspace of the resource's owner and name that exists before the
//! resource creates one belongs to someone: it is adopted (started, stopped,
//! recovered) only with `spec.adopt: true`, and deleted by
//! `deletionPolicy: Delete` only when this resource created it or adopted it
//! with consent. What was decided is kept in `status.ownership`.

use crate::crd::{OwnershipStatus, WorkspaceOrigin};

/// What to do about the observed workspace `observed_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// `status.ownership` already covers it.
    Keep,
    /// Drive it, recording this origin.
    Record(WorkspaceOrigin),
    /// Leave it alone: it existed first and `spec.adopt` is not set.
    Refused,
}

/// `recorded`: `status.ownership`; `previously_driven`: the workspace id in
/// status from an earlier reconcile (an operator that did not record
/// ownership yet may have driven it); `made_by_us`: the workspace carries
/// the marks of this resource's own create whose status write was lost (see
/// [`made_by_us`]).
pub fn consent(
    adopt: bool,
    recorded: Option<&OwnershipStatus>,
    previously_driven: Option<&str>,
    observed_id: &str,
    made_by_us: bool,
) -> Consent {
    match recorded {
        Some(recorded) if recorded.workspace_id == observed_id => Consent::Keep,
        _ if made_by_us => Consent::Record(WorkspaceOrigin::Created),
        _ if adopt => Consent::Record(WorkspaceOrigin::Adopted),
        // Another workspace of that name than the one recorded (the first
        // was deleted, someone made a new one): consent again.
        Some(_) => Consent::Refused,
        None if previously_driven == Some(observed_id) => Consent::Record(WorkspaceOrigin::Inherited),
        None => Consent::Refused,
    }
}

/// How far Coder's clock may be behind the operator's.
const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(2);

/// How long after its intent a create can have made its workspace: its
/// request waits for the token's budget, then for its answer (the request
/// timeout). A workspace made later is someone else's; a create that
/// waited longer is taken for someone else's too, which asks a person for
/// consent rather than adopting a stranger.
pub const CREATE_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

/// Whether the workspace is the one this resource's create made, when the
/// answer to that create was lost (the operator stopped, or the status
/// write failed, right after it). Before a create, the operator records
/// its intent in `status.ownership` with no workspace id; a workspace made
/// then (not before, and within [`CREATE_WINDOW`]), still at its first
/// build, by the token's own user, is that create's. A workspace someone
/// made before would have refused the create (409) and is older; a create
/// that Coder refused takes its intent back.
pub fn made_by_us(
    recorded: Option<&OwnershipStatus>,
    workspace_created: Option<jiff::Timestamp>,
    build_number: i32,
    initiator_id: &str,
    token_user_id: &str,
) -> bool {
    let Some(requested) = recorded.filter(|r| r.workspace_id.is_empty() && r.origin == WorkspaceOrigin::Created) else {
        return false;
    };
    match (requested.time.as_ref(), workspace_created) {
        (Some(requested), Some(created)) => {
            created >= requested.0 - CLOCK_SKEW
                && created <= requested.0 + CREATE_WINDOW + CLOCK_SKEW
                && build_number == 1
                && !initiator_id.is_empty()
                && initiator_id.eq_ignore_ascii_case(token_user_id)
        }
        _ => false,
    }
}

/// The intent recorded before a create.
pub fn create_intent(now: jiff::Timestamp) -> OwnershipStatus {
    OwnershipStatus {
        workspace_id: String::new(),
        origin: WorkspaceOrigin::Created,
        time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
    }
}

/// Whether `deletionPolicy: Delete` may delete `workspace_id`: only a
/// workspace this resource created, or adopted with consent.
pub fn may_delete(adopt: bool, recorded: Option<&OwnershipStatus>, workspace_id: &str) -> bool {
    recorded.is_some_and(|recorded| {
        recorded.workspace_id == workspace_id
            && match recorded.origin {
                WorkspaceOrigin::Created | WorkspaceOrigin::Adopted => true,
                WorkspaceOrigin::Inherited => adopt,
            }
    })
}

/// The refusal, in words for the resource's users.
pub fn refusal(owner: &str, name: &str) -> String {
    format!(
        "workspace {owner}/{name} already exists in Coder and was not created by this resource; it is left alone. \
         To drive it (start, stop, recover and, with deletionPolicy Delete, delete it), set spec.adopt: true; \
         otherwise choose another spec.workspaceName"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, origin: WorkspaceOrigin) -> OwnershipStatus {
        OwnershipStatus { workspace_id: id.into(), origin, time: None }
    }

    #[test]
    fn an_existing_workspace_needs_consent() {
        assert_eq!(consent(false, None, None, "w-1", false), Consent::Refused);
        assert_eq!(consent(true, None, None, "w-1", false), Consent::Record(WorkspaceOrigin::Adopted));
    }

    #[test]
    fn a_recorded_workspace_is_kept() {
        let created = record("w-1", WorkspaceOrigin::Created);
        assert_eq!(consent(false, Some(&created), Some("w-1"), "w-1", false), Consent::Keep);
    }

    #[test]
    fn a_different_workspace_of_the_same_name_needs_consent_again() {
        let created = record("w-1", WorkspaceOrigin::Created);
        assert_eq!(consent(false, Some(&created), Some("w-1"), "w-2", false), Consent::Refused);
        assert_eq!(consent(true, Some(&created), Some("w-1"), "w-2", false), Consent::Record(WorkspaceOrigin::Adopted));
    }

    #[test]
    fn a_workspace_driven_before_ownership_was_recorded_is_inherited() {
        assert_eq!(consent(false, None, Some("w-1"), "w-1", false), Consent::Record(WorkspaceOrigin::Inherited));
        assert_eq!(consent(false, None, Some("w-1"), "w-2", false), Consent::Refused);
    }

    #[test]
    fn a_create_whose_answer_was_lost_is_recognised() {
        assert_eq!(consent(false, None, None, "w-1", true), Consent::Record(WorkspaceOrigin::Created));
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let intent = create_intent(t(100));
        assert!(made_by_us(Some(&intent), Some(t(101)), 1, "u-1", "U-1"));
        assert!(made_by_us(Some(&intent), Some(t(99)), 1, "u-1", "u-1"), "within the clock skew");
        assert!(!made_by_us(Some(&intent), Some(t(90)), 1, "u-1", "u-1"), "made before the create");
        assert!(made_by_us(Some(&intent), Some(t(100 + 120)), 1, "u-1", "u-1"), "within the create's window");
        assert!(!made_by_us(Some(&intent), Some(t(100 + 200)), 1, "u-1", "u-1"), "made long after the create");
        assert!(!made_by_us(Some(&intent), Some(t(101)), 2, "u-1", "u-1"), "built since");
        assert!(!made_by_us(Some(&intent), Some(t(101)), 1, "u-2", "u-1"), "made by someone else");
        assert!(!made_by_us(Some(&intent), None, 1, "u-1", "u-1"));
        assert!(!made_by_us(None, Some(t(101)), 1, "u-1", "u-1"), "no create was requested");
        let done = record("w-1", WorkspaceOrigin::Created);
        assert!(!made_by_us(Some(&done), Some(t(101)), 1, "u-1", "u-1"), "a finished create names its workspace");
    }

    #[test]
    fn only_created_or_consented_workspaces_are_deleted() {
        assert!(may_delete(false, Some(&record("w-1", WorkspaceOrigin::Created)), "w-1"));
        assert!(may_delete(false, Some(&record("w-1", WorkspaceOrigin::Adopted)), "w-1"));
        assert!(!may_delete(false, Some(&record("w-1", WorkspaceOrigin::Inherited)), "w-1"));
        assert!(may_delete(true, Some(&record("w-1", WorkspaceOrigin::Inherited)), "w-1"));
        assert!(!may_delete(true, None, "w-1"), "no record: never deleted");
        assert!(!may_delete(true, Some(&record("w-1", WorkspaceOrigin::Created)), "w-2"), "another workspace");
    }

    #[test]
    fn the_refusal_says_what_to_do() {
        let message = refusal("alice", "ws");
        assert!(message.contains("alice/ws") && message.contains("spec.adopt: true"), "{message}");
    }
}
