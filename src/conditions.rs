//! Standard `metav1.Condition` handling: one entry per type, the transition
//! time moving only when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const AGENT_CONNECTED: &str = "AgentConnected";
pub const AGENT_REACHABLE: &str = "AgentReachable";
pub const RECOVERING: &str = "Recovering";
/// The bound chat's context is pinned to the current chat agent and not dirty.
pub const CHAT_CONTEXT_CURRENT: &str = "ChatContextCurrent";

/// Every condition type the operator maintains, in the order it writes them.
pub const ALL: [&str; 7] =
    [READY, PROGRESSING, DEGRADED, AGENT_CONNECTED, AGENT_REACHABLE, RECOVERING, CHAT_CONTEXT_CURRENT];

/// What the core wants one condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Merges `verdicts` into `previous`: a condition keeps its
/// `lastTransitionTime` unless its status flips, and every written condition
/// carries `generation`. Conditions of other types are kept as they were.
pub fn merge(previous: &[Condition], verdicts: &[Verdict], generation: i64, now: &Time) -> Vec<Condition> {
    // A condition this pass did not speak about still stands, as of this
    // generation: `kubectl wait --for=condition=…` after a patch must not
    // wait on a type that only the previous generation's pass set.
    let mut merged: Vec<Condition> = previous
        .iter()
        .filter(|c| !verdicts.iter().any(|v| v.type_ == c.type_))
        .cloned()
        .map(|mut c| {
            c.observed_generation = Some(generation);
            c
        })
        .collect();
    for verdict in verdicts {
        let status = if verdict.status { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == verdict.type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        merged.push(Condition {
            type_: verdict.type_.to_string(),
            status: status.to_string(),
            reason: verdict.reason.to_string(),
            message: verdict.message.clone(),
            observed_generation: Some(generation),
            last_transition_time,
        });
    }
    merged.sort_by_key(|c| ALL.iter().position(|t| *t == c.type_).unwrap_or(ALL.len()));
    merged
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let first = merge(&[], &[Verdict::new(READY, false, "Starting", "starting")], 1, &at(10));
        assert_eq!(first[0].last_transition_time, at(10));

        let same = merge(&first, &[Verdict::new(READY, false, "AgentConnecting", "waiting")], 2, &at(20));
        assert_eq!(same[0].last_transition_time, at(10), "no flip: time kept");
        assert_eq!(same[0].reason, "AgentConnecting");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(&same, &[Verdict::new(READY, true, "Running", "ready")], 2, &at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn keeps_other_types_and_orders_by_type() {
        let previous = merge(&[], &[Verdict::new(DEGRADED, false, "AsExpected", "")], 1, &at(1));
        let merged = merge(&previous, &[Verdict::new(READY, true, "Running", "")], 1, &at(2));
        let types: Vec<_> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, DEGRADED]);
        assert!(is_true(&merged, READY));
        assert!(!is_true(&merged, DEGRADED));
    }
}
