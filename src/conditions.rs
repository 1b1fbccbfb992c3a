//! Standard `metav1.Condition` handling: one entry per type, the transition
//! time moving only when the status flips.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const AGENT_CONNECTED: &str = "AgentConnected";
pub const AGENT_REACHABLE: &str = "AgentReachable";
pub const RECOVERING: &str = "Recovering";
/// The bound chat's context is pinned to the current chat agent and not dirty.
pub const CHAT_CONTEXT_CURRENT: &str = "ChatContextCurrent";
/// kstatus's "abnormal-true" pair (sigs.k8s.io/cli-utils, what Flux and
/// other CD tools compute health with): `Stalled=True` reads as Failed,
/// `Reconciling=True` as InProgress. See [`kstatus`].
pub const STALLED: &str = "Stalled";
pub const RECONCILING: &str = "Reconciling";

/// Every condition type the operator maintains, in the order it writes them;
/// the README's condition table lists them (a unit test holds the two equal).
pub const ALL: [&str; 9] = [
    READY,
    STALLED,
    RECONCILING,
    PROGRESSING,
    DEGRADED,
    AGENT_CONNECTED,
    AGENT_REACHABLE,
    RECOVERING,
    CHAT_CONTEXT_CURRENT,
];

/// A closed vocabulary of CamelCase names that go on the wire exactly as
/// their variants are spelled: the enum, `ALL` (every variant, for the
/// README check), `as_str` and `parse`.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name as written in status, Events and metric labels.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant),)+ }
            }

            /// The variant a name read back from the wire spells; `None` for
            /// a name this version does not write (an older operator's, say).
            pub fn parse(name: &str) -> Option<Self> {
                match name { $(stringify!($variant) => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        /// Strict: only the operator writes these names, and the CRD's
        /// `enum:` (every variant) keeps anything else out of storage.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&name).ok_or_else(|| {
                    serde::de::Error::unknown_variant(&name, &[$(stringify!($variant),)+])
                })
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "enum": [$(stringify!($variant),)+]})
            }
        }
    };
}
pub(crate) use vocabulary;

vocabulary! {
    /// Every reason the operator gives a condition. The README's "Condition
    /// reasons" table lists them (a unit test holds the two equal); users'
    /// `kubectl wait`, kstatus, Argo CD's health check and the chart's alerts
    /// match these names, so a variant is never renamed.
    pub enum Reason {
        // The desired state, reached or under way.
        Running,
        Stopped,
        NotCreated,
        Creating,
        Starting,
        Stopping,
        BuildInProgress,
        BuildSucceeded,
        StopFailed,
        StartFailed,
        NoWorkspace,
        WorkspaceNotRunning,
        // Coder or a person changed the workspace in Coder.
        StoppedByCoder,
        StoppedOutside,
        Dormant,
        DeletedInCoder,
        Conflict,
        // The chat agent.
        Connected,
        Connecting,
        Disconnected,
        NeverConnected,
        NoAgent,
        AgentConnecting,
        AgentNotProbed,
        AgentStarting,
        AgentDisconnected,
        AgentNeverConnected,
        AgentStartupFailed,
        AgentUnreachable,
        AgentDead,
        ExternalAgentDisconnected,
        ExternalAgentNotConnected,
        // The reachability probe.
        NotProbed,
        Reachable,
        ProbeRetry,
        ProbeRefused,
        ProbeTimedOut,
        ProbeFailed,
        ProbeInconclusive,
        DialTimeout,
        // Recovery.
        Recovering,
        Recovered,
        NotRecovering,
        RecoveryBudgetExhausted,
        // The bound chat.
        Current,
        NotObserved,
        NoChat,
        NoChatAgent,
        NotPinned,
        AgentStale,
        ContextDirty,
        // Nothing wrong; kstatus's pair.
        AsExpected,
        Ready,
        Reconciling,
        Stalled,
        Observing,
        // A reconcile that could not complete (`crate::error::Error::reason`).
        KubernetesError,
        CoderUnavailable,
        ValidationFailed,
        InvalidSpec,
        CredentialsInvalid,
        TemplateNotFound,
        PresetNotFound,
        OwnerNotGranted,
        CoderUrlNotAllowed,
        AdoptionNotConsented,
        WorkspaceOfAnotherOwner,
        NewParameterRequired,
        Unauthorized,
        Forbidden,
        NotFound,
        BadRequest,
        LeaseExpired,
        Decode,
        UnexpectedStatus,
        InvalidUrl,
        InvalidArgument,
    }
}

impl Reason {
    /// `Ready=False` reasons of a workspace that Coder or a person stopped in
    /// Coder, which the operator respects until a start is asked for: they
    /// stall the resource without `Degraded`.
    pub const fn is_stopped_in_coder(self) -> bool {
        matches!(self, Reason::StoppedByCoder | Reason::StoppedOutside)
    }
}

/// Whether the condition of `type_` is present with `reason`.
pub fn has_reason(conditions: &[Condition], type_: &str, reason: Reason) -> bool {
    find(conditions, type_).is_some_and(|c| c.reason == reason.as_str())
}

/// Whether `condition`'s reason says that Coder or a person stopped the
/// workspace in Coder (see [`Reason::is_stopped_in_coder`]).
pub fn stopped_in_coder(condition: &Condition) -> bool {
    Reason::parse(&condition.reason).is_some_and(Reason::is_stopped_in_coder)
}

/// `Stalled` and `Reconciling` as they follow from the other conditions, so
/// that exactly one of `Ready`, `Stalled` and `Reconciling` is True:
/// - `Ready=True`: the desired state is reached; neither.
/// - `Degraded=True`: the operator will not act again until a person or a
///   spec change does something (every Degraded reason says which):
///   `Stalled`, with Degraded's reason and message.
/// - a workspace stopped in Coder and respected (`Ready` says how to ask
///   for a start): `Stalled`, with Ready's reason and message.
/// - anything else is the operator working towards the desired state
///   (building, waiting for an agent, recovering): `Reconciling`, with
///   Ready's reason and message.
pub fn kstatus(conditions: &[Condition]) -> [Verdict; 2] {
    let ready = find(conditions, READY);
    let degraded = find(conditions, DEGRADED).filter(|c| c.status == "True");
    let not_stalled = |reason| Verdict::new(STALLED, false, reason, "Nothing waits for a person.");
    let not_reconciling = |reason, message: &str| Verdict::new(RECONCILING, false, reason, message);
    let stalled_as = |condition| Verdict::echo(STALLED, true, condition);
    match (ready, degraded) {
        (Some(ready), _) if ready.status == "True" => {
            [not_stalled(Reason::Ready), not_reconciling(Reason::Ready, "The desired state is reached; nothing to do.")]
        }
        (_, Some(degraded)) => [
            stalled_as(degraded),
            not_reconciling(Reason::Stalled, "The operator waits for a person or a spec change; see Stalled."),
        ],
        (Some(ready), None) if stopped_in_coder(ready) => [
            stalled_as(ready),
            not_reconciling(Reason::Stalled, "The operator waits for a start to be asked for; see Stalled."),
        ],
        (Some(ready), None) => [not_stalled(Reason::Reconciling), Verdict::echo(RECONCILING, true, ready)],
        (None, None) => [
            not_stalled(Reason::Reconciling),
            Verdict::new(RECONCILING, true, Reason::Observing, "The operator has not judged the workspace yet."),
        ],
    }
}

/// What the core wants one condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Cow<'static, str>,
    pub message: String,
}

impl Verdict {
    pub fn new(type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status, reason: Cow::Borrowed(reason.as_str()), message: message.into() }
    }

    /// A condition of `type_` saying what `condition` says, reason and
    /// message: kstatus's pair repeats `Ready`'s or `Degraded`'s, whatever
    /// wrote it.
    pub fn echo(type_: &'static str, status: bool, condition: &Condition) -> Self {
        Self { type_, status, reason: Cow::Owned(condition.reason.clone()), message: condition.message.clone() }
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

/// The names a docs table under `heading` (a line of its own, or the
/// table's header row) documents: every backquoted name in the first
/// column of each row.
#[cfg(test)]
pub(crate) fn documented(readme: &str, heading: &str) -> Vec<String> {
    let table = readme
        .lines()
        .skip_while(|line| line.trim() != heading)
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2);
    let first_cells = table.filter_map(|row| row.split('|').nth(1));
    first_cells.flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>()).collect()
}

/// Whether `documented` names each of `names` once and nothing else; the
/// difference otherwise.
#[cfg(test)]
pub(crate) fn undocumented_or_unknown(documented: &[String], names: &[&str]) -> Result<(), String> {
    let missing: Vec<_> = names.iter().filter(|n| !documented.iter().any(|d| d == *n)).collect();
    let unknown: Vec<_> = documented.iter().filter(|d| !names.contains(&d.as_str())).collect();
    let mut twice: Vec<_> = documented.iter().filter(|d| documented.iter().filter(|o| o == d).count() > 1).collect();
    twice.dedup();
    if missing.is_empty() && unknown.is_empty() && twice.is_empty() {
        return Ok(());
    }
    Err(format!("not in the table: {missing:?}; in the table only: {unknown:?}; listed twice: {twice:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_exactly_the_condition_reasons() {
        let documented = documented(include_str!("../README.md"), "### Condition reasons");
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(documented.len() > 50, "the table was not found: {documented:?}");
        if let Err(difference) = undocumented_or_unknown(&documented, &names) {
            panic!("{difference}");
        }
    }

    #[test]
    fn the_readme_lists_exactly_the_condition_types() {
        let documented = documented(include_str!("../README.md"), "| condition | True when |");
        if let Err(difference) = undocumented_or_unknown(&documented, &ALL) {
            panic!("{difference}");
        }
    }

    #[test]
    fn a_reason_reads_back_as_itself_and_spells_its_variant() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
            assert_eq!(format!("{reason:?}"), reason.as_str(), "the wire name is the variant's name");
        }
        assert_eq!(Reason::AgentNotProbed.as_str(), "AgentNotProbed");
        assert_eq!(Reason::parse("SomethingElse"), None);
        let stopped: Vec<_> = Reason::ALL.iter().filter(|r| r.is_stopped_in_coder()).map(|r| r.as_str()).collect();
        assert_eq!(stopped, ["StoppedByCoder", "StoppedOutside"]);
    }

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let first = merge(&[], &[Verdict::new(READY, false, Reason::Starting, "starting")], 1, &at(10));
        assert_eq!(first[0].last_transition_time, at(10));

        let same = merge(&first, &[Verdict::new(READY, false, Reason::AgentConnecting, "waiting")], 2, &at(20));
        assert_eq!(same[0].last_transition_time, at(10), "no flip: time kept");
        assert_eq!(same[0].reason, "AgentConnecting");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(&same, &[Verdict::new(READY, true, Reason::Running, "ready")], 2, &at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn keeps_other_types_and_orders_by_type() {
        let previous = merge(&[], &[Verdict::new(DEGRADED, false, Reason::AsExpected, "")], 1, &at(1));
        let merged = merge(&previous, &[Verdict::new(READY, true, Reason::Running, "")], 1, &at(2));
        let types: Vec<_> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, DEGRADED]);
        assert!(is_true(&merged, READY));
        assert!(!is_true(&merged, DEGRADED));
    }

    fn kstatus_of(verdicts: &[Verdict]) -> [(bool, String); 2] {
        kstatus(&merge(&[], verdicts, 1, &at(1))).map(|v| (v.status, v.reason.into_owned()))
    }

    #[test]
    fn stalled_and_reconciling_follow_ready_and_degraded() {
        let unready = Verdict::new(READY, false, Reason::Starting, "starting");
        let degraded = Verdict::new(DEGRADED, true, Reason::Dormant, "activate it");
        let fine = Verdict::new(DEGRADED, false, Reason::AsExpected, "");
        assert_eq!(kstatus_of(&[]), [(false, "Reconciling".into()), (true, "Observing".into())]);
        assert_eq!(
            kstatus_of(&[unready.clone(), fine.clone()]),
            [(false, "Reconciling".into()), (true, "Starting".into())]
        );
        assert_eq!(kstatus_of(&[unready, degraded.clone()]), [(true, "Dormant".into()), (false, "Stalled".into())]);
        let stopped = Verdict::new(READY, false, Reason::StoppedOutside, "annotate it");
        assert_eq!(kstatus_of(&[stopped, fine]), [(true, "StoppedOutside".into()), (false, "Stalled".into())]);
        let ready = Verdict::new(READY, true, Reason::Running, "ready");
        assert_eq!(kstatus_of(&[ready]), [(false, "Ready".into()), (false, "Ready".into())]);
        // A transient error beside a reached state (the error path) is
        // handled by its caller; Degraded alone never hides Ready.
        let ready_stopped = Verdict::new(READY, true, Reason::Stopped, "stopped");
        assert_eq!(kstatus_of(&[ready_stopped, degraded])[0], (false, "Ready".into()));
    }
}
