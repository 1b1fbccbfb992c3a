//! Kubernetes Events (`events.k8s.io/v1`), published with a small memory
//! of what was sent so that an Event repeated within a few minutes becomes
//! one Event with a growing `series` instead of many objects.
//!
//! The memory keeps a hash and a name per recent Event, not the Event: at
//! thousands of resources, each with an Event or two on first sight, a copy
//! of every Event would be tens of MiB, and it is swept once a minute, not
//! scanned on every publish.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};

crate::conditions::vocabulary! {
    /// What an Event of the operator tells, besides a new phase (named by
    /// the phase) and a new `Degraded` cause (named by its condition
    /// reason). The README's "Event reasons" table lists them (a unit test
    /// holds the two equal); alerts and `kubectl get events
    /// --field-selector reason=…` match these names.
    pub enum EventReason {
        // What a reconcile decided or found.
        WorkspaceDeletedInCoder,
        RestartRequested,
        RestartRefused,
        StartRequested,
        RestartingOutsideStop,
        ActiveVersionRequired,
        StopFailed,
        RecoveryStarted,
        RecoveryStarting,
        RecoveryFailed,
        Recovered,
        // What carrying out the action produced.
        WorkspaceCreated,
        BuildRequested,
        ChatInterrupted,
        ChatInterruptFailed,
        ChatContextRefreshed,
        ChatContextRefreshFailed,
        ManagedByAnotherOperator,
        // A deletion.
        CleanupBuildFailed,
        DeletionBlocked,
        ForeignClaimReleased,
        WorkspaceLeftAsIs,
        WorkspaceOrphaned,
    }
}

impl EventReason {
    /// The `chatworkspace_recoveries_total` outcome an Event of this reason
    /// counts, if any: a recovery that brought the agent back, or one whose
    /// new agent never connected.
    pub const fn recovery_outcome(self) -> Option<&'static str> {
        match self {
            EventReason::Recovered => Some("succeeded"),
            EventReason::RecoveryFailed => Some("failed"),
            _ => None,
        }
    }
}

/// How long a sent Event is remembered: a repeat within it joins its series.
const REMEMBER: Duration = Duration::from_secs(6 * 60);
/// How often the memory forgets what is older than `REMEMBER`.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Publishes Events as one controller instance.
pub struct Publisher {
    client: kube::Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

impl Publisher {
    pub fn new(client: kube::Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), recent: Mutex::default() }
    }

    /// Creates the Event, or adds to the series of the same Event sent
    /// recently about the same object.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let key = key(event, regarding);
        let next = self.recent.lock().expect("recent events").next(key, Instant::now());
        if let Next::Series { name, count } = next {
            let now = MicroTime(Timestamp::now());
            let patch = serde_json::json!({"series": EventSeries { count, last_observed_time: now }});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                // The apiserver dropped it (its Event TTL): start a new one.
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let created = api.create(&PostParams::default(), &self.event(event, regarding, &namespace)).await?;
        self.recent.lock().expect("recent events").sent(key, created.name_any(), Instant::now());
        Ok(())
    }

    fn event(&self, event: &Event, regarding: &ObjectReference, namespace: &str) -> K8sEvent {
        let now = Timestamp::now();
        let subject = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(event_name(subject, now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        }
    }
}

/// The longest object name Kubernetes accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// `<subject>.<time in hex>`, as kubectl's Events are named, with the
/// subject shortened so that the name of an Event about a resource whose own
/// name is already 253 characters long is still valid. The subject is a
/// Kubernetes name (ASCII), so it is cut on a character boundary; a cut that
/// ends in `.` or `-` would make an invalid name, so those go too.
fn event_name(subject: &str, nanos: i128) -> String {
    let suffix = format!(".{nanos:x}");
    let keep = subject.len().min(MAX_NAME - suffix.len());
    let mut cut = subject.get(..keep).unwrap_or("event");
    cut = cut.trim_end_matches(['.', '-']);
    if cut.is_empty() {
        cut = "event";
    }
    format!("{cut}{suffix}")
}

/// What identifies "the same Event again": the object, and everything the
/// Event says.
fn key(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (regarding.uid.as_deref(), regarding.namespace.as_deref(), regarding.name.as_deref()).hash(&mut hasher);
    (matches!(event.type_, EventType::Warning), &event.reason, &event.action, &event.note).hash(&mut hasher);
    hasher.finish()
}

/// What to send for an Event.
#[derive(Debug, PartialEq)]
enum Next {
    Create,
    /// Patch the recent Event `name` to this count.
    Series {
        name: String,
        count: i32,
    },
}

#[derive(Default)]
struct Recent {
    sent: HashMap<u64, Sent>,
    swept: Option<Instant>,
}

struct Sent {
    name: Box<str>,
    count: i32,
    last: Instant,
}

impl Recent {
    fn next(&mut self, key: u64, now: Instant) -> Next {
        self.sweep(now);
        match self.sent.get_mut(&key) {
            Some(sent) if now.duration_since(sent.last) < REMEMBER => {
                sent.count = sent.count.saturating_add(1);
                sent.last = now;
                Next::Series { name: sent.name.to_string(), count: sent.count }
            }
            _ => Next::Create,
        }
    }

    fn sent(&mut self, key: u64, name: String, now: Instant) {
        self.sent.insert(key, Sent { name: name.into_boxed_str(), count: 1, last: now });
    }

    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        self.sent.retain(|_, sent| now.duration_since(sent.last) < REMEMBER);
        self.sent.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recovery_that_ended_counts_as_a_recovery_outcome() {
        let counted: Vec<_> =
            EventReason::ALL.iter().filter_map(|r| r.recovery_outcome().map(|o| (r.as_str(), o))).collect();
        assert_eq!(counted, [("RecoveryFailed", "failed"), ("Recovered", "succeeded")]);
    }

    #[test]
    fn the_readme_lists_exactly_the_event_reasons() {
        use crate::conditions::{documented, undocumented_or_unknown};
        let documented = documented(include_str!("../README.md"), "### Event reasons");
        let names: Vec<&str> = EventReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(documented.len() > 10, "the table was not found: {documented:?}");
        if let Err(difference) = undocumented_or_unknown(&documented, &names) {
            panic!("{difference}");
        }
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            name: Some(name.into()),
            namespace: Some("team".into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn an_event_name_is_a_valid_name_whatever_the_length_of_the_resources_name() {
        let nanos = Timestamp::now().as_nanosecond();
        assert_eq!(event_name("chat-1", 0x1f), "chat-1.1f", "a short name is kept whole");
        let longest = format!("{}.b", "a".repeat(251));
        // Names whose cut falls right after a `.` or a `-`.
        let keep = MAX_NAME - format!(".{nanos:x}").len();
        let cut_at_a_dot = format!("{}.{}", "a".repeat(keep - 1), "b".repeat(MAX_NAME - keep));
        let cut_at_a_hyphen = format!("{}-{}", "a".repeat(keep - 1), "b".repeat(MAX_NAME - keep));
        for subject in [longest.as_str(), &cut_at_a_dot, &cut_at_a_hyphen] {
            let name = event_name(subject, nanos);
            assert!(name.len() <= MAX_NAME, "{} characters: {name}", name.len());
            assert!(name.ends_with(&format!(".{nanos:x}")), "{name}");
            let is_label = |label: &str| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            };
            assert!(name.split('.').all(is_label), "not a DNS subdomain: {name}");
            assert!(name.starts_with(&subject[..200]), "the subject is kept as far as it fits: {name}");
        }
    }

    #[test]
    fn a_repeat_within_the_memory_joins_the_series_and_a_later_one_starts_anew() {
        let mut recent = Recent::default();
        let start = Instant::now();
        let key = key(&event("Running", "up"), &object("a"));
        assert_eq!(recent.next(key, start), Next::Create);
        recent.sent(key, "a.1".into(), start);
        assert_eq!(recent.next(key, start + Duration::from_secs(10)), Next::Series { name: "a.1".into(), count: 2 });
        assert_eq!(recent.next(key, start + Duration::from_secs(20)), Next::Series { name: "a.1".into(), count: 3 });
        // Six minutes after the last repeat it is a new Event.
        assert_eq!(recent.next(key, start + Duration::from_secs(20) + REMEMBER), Next::Create);
    }

    #[test]
    fn another_object_or_another_message_is_another_event() {
        let same = key(&event("Running", "up"), &object("a"));
        assert_ne!(same, key(&event("Running", "up"), &object("b")));
        assert_ne!(same, key(&event("Running", "down"), &object("a")));
        assert_ne!(same, key(&event("Stopped", "up"), &object("a")));
    }

    #[test]
    fn the_sweep_forgets_what_is_older_than_the_memory_once_a_minute() {
        let mut recent = Recent::default();
        let start = Instant::now();
        for k in 0..1000 {
            recent.next(k, start);
            recent.sent(k, format!("e.{k}"), start);
        }
        let fresh = start + REMEMBER;
        recent.next(5000, fresh);
        recent.sent(5000, "new".into(), fresh);
        assert_eq!(recent.sent.len(), 1, "only the Event sent at {fresh:?} is remembered");
        // Within a minute of a sweep nothing is scanned again.
        recent.sent(6000, "other".into(), fresh);
        recent.next(7000, fresh + Duration::from_secs(30));
        assert_eq!(recent.sent.len(), 2);
    }
}
