//! Record: what a reconcile leaves behind in Kubernetes (status, Events) and
//! in the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, warn};

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

/// The statuses this replica wrote that the watch has not delivered yet,
/// per resource. A reconcile that starts between a status write and its
/// watch event (woken by a probe, say) would otherwise decide from the
/// status before the write, write the same status again and repeat its
/// Events. Only the operator writes status, so a cached status that is
/// neither one it replaced nor its latest write was written by someone
/// else, and is taken as it is.
///
/// The watch may deliver a write before its request returns. A write in
/// flight therefore notes what the watch delivers meanwhile
/// ([`Written::sending`]), and a write the watch has already delivered
/// leaves nothing behind: it would otherwise be remembered until the
/// resource's next reconcile, which for a settled resource is the resync.
#[derive(Default)]
pub(super) struct Written {
    inner: Mutex<WrittenInner>,
}

#[derive(Default)]
struct WrittenInner {
    by_resource: HashMap<ObjectRef<ChatWorkspace>, Unseen>,
    /// Resources with a status write in flight, and the hashes of the
    /// statuses the watch delivered for them meanwhile.
    in_flight: HashMap<ObjectRef<ChatWorkspace>, Vec<u64>>,
    /// Resources being reconciled (see [`Written::reconciling`]), and the
    /// resourceVersion the reconcile's resource had and the one its latest
    /// status write produced: its next write is conditional on that one,
    /// whatever the watch has delivered meanwhile.
    reconciling: HashMap<ObjectRef<ChatWorkspace>, Option<(String, String)>>,
}

/// A reconcile under way (see [`Written::reconciling`]); dropping it
/// forgets what its writes produced.
pub(super) struct Reconciling<'a> {
    written: &'a Written,
    key: ObjectRef<ChatWorkspace>,
}

impl Drop for Reconciling<'_> {
    fn drop(&mut self) {
        self.written.inner.lock().expect("written statuses").reconciling.remove(&self.key);
    }
}

/// A status write in flight (see [`Written::sending`]); dropping it ends
/// the flight, whether or not the write succeeded.
pub(super) struct Sending<'a> {
    written: &'a Written,
    key: ObjectRef<ChatWorkspace>,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.written.inner.lock().expect("written statuses").in_flight.remove(&self.key);
    }
}

struct Unseen {
    /// Hashes of the statuses these writes replaced.
    replaced: Vec<u64>,
    latest: Arc<ChatWorkspaceStatus>,
    latest_hash: u64,
    /// The resourceVersion and generation the latest write produced.
    version: (Option<String>, Option<i64>),
}

use crate::cache::status_hash;

impl Written {
    /// The status to decide from: the cached one, or this replica's latest
    /// write while the cache has not caught up with it.
    pub(super) fn previous(&self, resource: &ChatWorkspace) -> ChatWorkspaceStatus {
        let cached = resource.status.clone().unwrap_or_default();
        let key = crate::crd::reference(resource);
        let mut inner = self.inner.lock().expect("written statuses");
        let by_resource = &mut inner.by_resource;
        let Some(unseen) = by_resource.get(&key) else { return cached };
        let hash = status_hash(&cached);
        if unseen.replaced.contains(&hash) {
            return (*unseen.latest).clone();
        }
        // Caught up, or written by someone else: the cache is right.
        if hash != unseen.latest_hash {
            debug!(name = %resource.name_any(), "status changed by another writer");
        }
        by_resource.remove(&key);
        cached
    }

    /// A reconcile of `resource` begins: until the returned guard is
    /// dropped, each status write it makes is conditional on the version
    /// its previous one produced, also when the watch delivered that write
    /// before its answer (and nothing else remembers it).
    pub(super) fn reconciling(&self, resource: &ChatWorkspace) -> Reconciling<'_> {
        let key = crate::crd::reference(resource);
        self.inner.lock().expect("written statuses").reconciling.insert(key.clone(), None);
        Reconciling { written: self, key }
    }

    /// The resourceVersion to make a write conditional on: the cached
    /// one, or the one this replica's latest write produced while the cache
    /// has not caught up with it (and the spec is the same generation).
    pub(super) fn resource_version(&self, resource: &ChatWorkspace) -> Option<String> {
        let inner = self.inner.lock().expect("written statuses");
        let key = crate::crd::reference(resource);
        if let Some(Some((had, produced))) = inner.reconciling.get(&key)
            && resource.metadata.resource_version.as_ref() == Some(had)
        {
            return Some(produced.clone());
        }
        let stale = inner.by_resource.get(&crate::crd::reference(resource)).filter(|unseen| {
            unseen.version.1 == resource.metadata.generation
                && unseen.replaced.contains(&status_hash(&resource.status.clone().unwrap_or_default()))
        });
        match stale {
            Some(unseen) => unseen.version.0.clone(),
            None => resource.resource_version(),
        }
    }

    /// A status write of `resource` is about to be sent: until the returned
    /// guard is dropped, what the watch delivers for it is noted.
    pub(super) fn sending(&self, resource: &ChatWorkspace) -> Sending<'_> {
        let key = crate::crd::reference(resource);
        self.inner.lock().expect("written statuses").in_flight.insert(key.clone(), Vec::new());
        Sending { written: self, key }
    }

    /// Remembers that `written` (what the apiserver answered) holds
    /// `status`, which replaced `replaced`, unless the watch has delivered
    /// it already; and, for the reconcile under way, that `resource` (the
    /// one it decided from) is now `written`.
    fn wrote(
        &self,
        resource: &ChatWorkspace,
        replaced: &ChatWorkspaceStatus,
        status: &ChatWorkspaceStatus,
        written: &ChatWorkspace,
    ) {
        let key = crate::crd::reference(written);
        let mut inner = self.inner.lock().expect("written statuses");
        if let Some(versions) = inner.reconciling.get_mut(&key)
            && let Some(produced) = written.resource_version()
        {
            let had = match versions.take() {
                Some((had, _)) => Some(had),
                None => resource.resource_version(),
            };
            *versions = had.map(|had| (had, produced));
        }
        let latest_hash = status_hash(status);
        let delivered = inner.in_flight.get_mut(&key).map(std::mem::take).unwrap_or_default();
        if delivered.contains(&latest_hash) {
            // The cache holds this write already: earlier writes are
            // superseded, and nothing is on its way.
            inner.by_resource.remove(&key);
            return;
        }
        let latest = Arc::new(status.clone());
        let version = (written.resource_version(), written.metadata.generation);
        let unseen = inner.by_resource.entry(key).or_insert_with(|| Unseen {
            replaced: Vec::new(),
            latest: latest.clone(),
            latest_hash,
            version: version.clone(),
        });
        // Every status before the latest write is stale now, earlier
        // writes of this replica included.
        for stale in [status_hash(replaced), unseen.latest_hash] {
            if stale != latest_hash && !unseen.replaced.contains(&stale) {
                unseen.replaced.push(stale);
            }
        }
        unseen.latest = latest;
        unseen.latest_hash = latest_hash;
        unseen.version = version;
    }

    /// The watch delivered `resource`: once it holds this replica's latest
    /// write (or someone else's), nothing needs remembering.
    pub(super) fn delivered(&self, key: &ObjectRef<ChatWorkspace>, hash: u64) {
        let mut inner = self.inner.lock().expect("written statuses");
        if let Some(delivered) = inner.in_flight.get_mut(key) {
            delivered.push(hash);
        }
        let Some(unseen) = inner.by_resource.get(key) else { return };
        if !unseen.replaced.contains(&hash) {
            inner.by_resource.remove(key);
        }
    }

    /// Forgets a deleted resource.
    pub(super) fn forget(&self, resource: &ObjectRef<ChatWorkspace>) {
        self.inner.lock().expect("written statuses").by_resource.remove(resource);
    }

    #[cfg(test)]
    fn unseen(&self) -> usize {
        self.inner.lock().expect("written statuses").by_resource.len()
    }
}

/// Writes `status` unless it is what the resource already has. Like every
/// status write, it is conditional on the resourceVersion the decision was
/// made from (see [`Written::resource_version`]): a write decided on a stale
/// view fails with 409 instead of overwriting a newer status (another
/// replica's, after this one lost its lease), and the resource is looked at
/// again.
pub(super) async fn write_status(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
) -> Result<()> {
    if status == previous {
        return Ok(());
    }
    apply_status(context, api, resource, previous, status).await
}

/// Persists what is about to be done (a recovery's stage and attempt, the
/// build request) before it is done, so that an operator stopped between
/// the build and its record resumes the recovery instead of losing its
/// stage or counting a new attempt. The resourceVersion makes the write fail
/// if the resource changed since it was read: a decision taken on a stale
/// spec or status is not acted on.
pub(super) async fn write_intent(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
) -> Result<()> {
    apply_status(context, api, resource, previous, status).await
}

/// Applies `status` as the operator's field manager, conditional on the
/// resourceVersion the decision was made from, and remembers the write
/// until the watch delivers it.
async fn apply_status(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": ChatWorkspace::api_version(&()),
        "kind": ChatWorkspace::kind(&()),
        "metadata": {"resourceVersion": context.written.resource_version(resource)},
        "status": status,
    });
    let sending = context.written.sending(resource);
    let written = api
        .patch_status(&resource.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    context.written.wrote(resource, previous, status, &written);
    drop(sending);
    Ok(())
}

/// Records, before a create, that this resource is creating its workspace
/// (see `tenancy::adoption::made_by_us`). A merge patch of that one field:
/// the status apply at the end of the reconcile writes the rest.
pub(super) async fn write_create_intent(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
) -> Result<ChatWorkspaceStatus> {
    let intent = crate::tenancy::adoption::create_intent(decision::whole_seconds(Timestamp::now()).0);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": context.written.resource_version(resource)},
        "status": {"ownership": intent},
    });
    let sending = context.written.sending(resource);
    let written = api.patch_status(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let mut status = previous.clone();
    status.ownership = Some(intent);
    context.written.wrote(resource, previous, &status, &written);
    drop(sending);
    Ok(status)
}

/// Takes back a create's intent when Coder answered that it made nothing
/// (it refused the request, or the name was taken meanwhile): a workspace
/// someone makes later under that name is not this resource's. `intended`
/// is the status [`write_create_intent`] wrote; `previous`, the one before.
pub(super) async fn clear_create_intent(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    (previous, intended): (&ChatWorkspaceStatus, &ChatWorkspaceStatus),
) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": context.written.resource_version(resource)},
        "status": {"ownership": previous.ownership},
    });
    let sending = context.written.sending(resource);
    let written = api.patch_status(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    context.written.wrote(resource, intended, previous, &written);
    drop(sending);
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
    all.extend(phase_event(previous, status));
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

/// The Event of a new phase. The first phase a resource is given is not a
/// change and has none: an install over 10,000 running workspaces would
/// otherwise post 10,000 Events that say nothing happened (the status says
/// what was found). A first phase of `Failed` is a warning, and is told.
fn phase_event(previous: &ChatWorkspaceStatus, status: &ChatWorkspaceStatus) -> Option<KubeEvent> {
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

fn flipped_true<'a>(previous: &[Condition], current: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    let now = conditions::find(current, type_).filter(|c| c.status == "True")?;
    let before = conditions::find(previous, type_);
    let same = before.is_some_and(|b| b.status == "True" && b.reason == now.reason);
    (!same).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;

    fn resource(version: &str, phase: Option<Phase>) -> ChatWorkspace {
        let mut resource: ChatWorkspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {"name": "a", "namespace": "team", "resourceVersion": version, "generation": 1},
            "spec": {"desiredState": "Running", "template": {"name": "docker"}},
        }))
        .expect("a ChatWorkspace");
        resource.status = phase.map(|phase| ChatWorkspaceStatus { phase: Some(phase), ..Default::default() });
        resource
    }

    fn status(phase: Phase) -> ChatWorkspaceStatus {
        ChatWorkspaceStatus { phase: Some(phase), ..Default::default() }
    }

    #[test]
    fn a_cache_behind_this_replicas_writes_decides_from_the_latest_write() {
        let written = Written::default();
        let cached = resource("1", None);
        assert_eq!(written.previous(&cached), ChatWorkspaceStatus::default(), "nothing written: the cache");

        written.wrote(
            &resource("1", None),
            &ChatWorkspaceStatus::default(),
            &status(Phase::Starting),
            &resource("2", Some(Phase::Starting)),
        );
        assert_eq!(written.previous(&cached).phase, Some(Phase::Starting));
        assert_eq!(written.resource_version(&cached).as_deref(), Some("2"));

        // A second write before the watch delivered the first.
        written.wrote(
            &resource("1", None),
            &status(Phase::Starting),
            &status(Phase::Running),
            &resource("3", Some(Phase::Running)),
        );
        assert_eq!(written.previous(&cached).phase, Some(Phase::Running), "the original status is stale");
        let first_delivered = resource("2", Some(Phase::Starting));
        assert_eq!(written.previous(&first_delivered).phase, Some(Phase::Running), "so is the first write");
        assert_eq!(written.resource_version(&first_delivered).as_deref(), Some("3"));

        // The watch caught up: the cache is right, and nothing is kept.
        let caught_up = resource("3", Some(Phase::Running));
        let delivered = |r: &ChatWorkspace| {
            written.delivered(&crate::crd::reference(r), status_hash(&r.status.clone().unwrap_or_default()))
        };
        delivered(&first_delivered);
        assert_eq!(written.unseen(), 1, "the latest write is still on its way");
        delivered(&caught_up);
        assert_eq!(written.unseen(), 0, "delivered: nothing is kept at rest");
        assert_eq!(written.previous(&caught_up).phase, Some(Phase::Running));
        assert_eq!(written.resource_version(&caught_up).as_deref(), Some("3"));
    }

    #[test]
    fn a_write_the_watch_delivered_before_its_answer_leaves_nothing_behind() {
        let written = Written::default();
        let key = crate::crd::reference(&resource("1", None));
        let delivered = |r: &ChatWorkspace| written.delivered(&key, status_hash(&r.status.clone().unwrap_or_default()));
        {
            let _sending = written.sending(&resource("1", None));
            // The watch brings the write's own result before the request
            // returns.
            delivered(&resource("2", Some(Phase::Starting)));
            written.wrote(
                &resource("1", None),
                &ChatWorkspaceStatus::default(),
                &status(Phase::Starting),
                &resource("2", Some(Phase::Starting)),
            );
        }
        assert_eq!(written.unseen(), 0, "the cache holds the write: nothing is waited for");
        assert_eq!(written.previous(&resource("2", Some(Phase::Starting))).phase, Some(Phase::Starting));

        // An event of an older state during the flight keeps the write
        // remembered until its own event comes.
        {
            let _sending = written.sending(&resource("2", Some(Phase::Starting)));
            delivered(&resource("2", Some(Phase::Starting)));
            written.wrote(
                &resource("1", None),
                &status(Phase::Starting),
                &status(Phase::Running),
                &resource("3", Some(Phase::Running)),
            );
        }
        assert_eq!(written.unseen(), 1, "the write is still on its way");
        assert_eq!(written.previous(&resource("2", Some(Phase::Starting))).phase, Some(Phase::Running));
        delivered(&resource("3", Some(Phase::Running)));
        assert_eq!(written.unseen(), 0);

        // Outside a flight, deliveries are not noted.
        delivered(&resource("3", Some(Phase::Running)));
        assert!(written.inner.lock().expect("written").in_flight.is_empty(), "a flight ends with its guard");
    }

    #[test]
    fn a_reconciles_next_write_is_conditional_on_what_its_last_produced_even_once_delivered() {
        let written = Written::default();
        let decided_from = resource("1", None);
        let key = crate::crd::reference(&decided_from);
        {
            let _reconciling = written.reconciling(&decided_from);
            {
                let _sending = written.sending(&decided_from);
                // The watch delivers the write before its answer: nothing
                // is remembered for the resources at rest...
                written.delivered(&key, status_hash(&status(Phase::Creating)));
                written.wrote(
                    &decided_from,
                    &ChatWorkspaceStatus::default(),
                    &status(Phase::Creating),
                    &resource("2", Some(Phase::Creating)),
                );
            }
            assert_eq!(written.unseen(), 0);
            // ...but the reconcile's next write, from the resource it holds,
            // is conditional on the version its first write produced.
            assert_eq!(written.resource_version(&decided_from).as_deref(), Some("2"));
            written.wrote(
                &decided_from,
                &status(Phase::Creating),
                &status(Phase::Starting),
                &resource("3", Some(Phase::Starting)),
            );
            assert_eq!(written.resource_version(&decided_from).as_deref(), Some("3"), "and so on, write after write");
            assert_eq!(written.resource_version(&resource("7", None)).as_deref(), Some("7"), "a newer copy is its own");
        }
        assert!(written.inner.lock().expect("written").reconciling.is_empty(), "nothing kept after the reconcile");
        let mut later = resource("1", None);
        later.metadata.generation = Some(2);
        assert_eq!(written.resource_version(&later).as_deref(), Some("1"));
    }

    #[test]
    fn a_status_written_by_someone_else_is_taken_as_it_is() {
        let written = Written::default();
        written.wrote(
            &resource("1", None),
            &ChatWorkspaceStatus::default(),
            &status(Phase::Starting),
            &resource("2", Some(Phase::Starting)),
        );
        let edited = resource("4", Some(Phase::Failed));
        assert_eq!(written.previous(&edited).phase, Some(Phase::Failed));
        assert_eq!(written.unseen(), 0);
        assert_eq!(written.resource_version(&edited).as_deref(), Some("4"));
    }

    #[test]
    fn a_phase_event_tells_of_a_change_of_phase_not_of_the_first_one_found() {
        let none = ChatWorkspaceStatus::default();
        let reason = |previous: &ChatWorkspaceStatus, now: Phase| phase_event(previous, &status(now)).map(|e| e.reason);
        assert_eq!(reason(&none, Phase::Running), None, "found running: nothing happened");
        assert_eq!(reason(&none, Phase::Creating), None);
        assert_eq!(reason(&status(Phase::Starting), Phase::Running).as_deref(), Some("Running"));
        assert_eq!(reason(&status(Phase::Running), Phase::Running), None, "no change");
        let failed = phase_event(&none, &status(Phase::Failed)).expect("a first Failed is told");
        assert_eq!((failed.reason.as_str(), failed.type_), ("Failed", EventType::Warning));
    }

    #[test]
    fn a_new_generation_is_not_conditioned_on_the_version_of_an_older_one() {
        let written = Written::default();
        written.wrote(
            &resource("1", None),
            &ChatWorkspaceStatus::default(),
            &status(Phase::Starting),
            &resource("2", Some(Phase::Starting)),
        );
        let mut newer_spec = resource("5", None);
        newer_spec.metadata.generation = Some(2);
        assert_eq!(written.resource_version(&newer_spec).as_deref(), Some("5"));
    }
}
