//! Record: what a reconcile leaves behind in Kubernetes and in the metrics:
//! the intent written before an action (and taken back if Coder made
//! nothing), the status that describes what the action produced
//! ([`describe`]), written by one conditional apply ([`apply_status`]), the
//! Events (built in `events`) and the counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Event as KubeEvent;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, warn};

use super::act::Acted;
use super::{Context, events, gather};
use crate::coder::Workspace;
use crate::coder::WorkspaceTransition;
use crate::conditions::{self, DEGRADED, READY, RECONCILING, Reason, STALLED, Verdict};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, CleanupStatus, FIELD_MANAGER, Phase};
use crate::decision::{self, Action, Decision, Inputs, Observed, ObservedChat};
use crate::error::{Error, Result};
use crate::key::ResourceKey;
use crate::templates::TemplateInfo;

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
    let now = decision::whole_seconds(Timestamp::now());
    let merged = conditions::merge(&previous.conditions, &verdicts, generation, &now);
    let progress = if error.is_transient() {
        // The operator retries on its own: working on it, not stalled.
        [
            Verdict::new(STALLED, false, Reason::Reconciling, "Nothing waits for a person."),
            Verdict::new(RECONCILING, true, error.reason(), format!("{error}. {}", error.advice())),
        ]
    } else {
        conditions::kstatus(&merged)
    };
    status.conditions = conditions::merge(&merged, &progress, generation, &now);
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
    by_resource: HashMap<ResourceKey, Unseen>,
    /// Resources with a status write in flight, and the hashes of the
    /// statuses the watch delivered for them meanwhile.
    in_flight: HashMap<ResourceKey, Vec<u64>>,
    /// Resources being reconciled (see [`Written::reconciling`]), and the
    /// resourceVersion the reconcile's resource had and the one its latest
    /// status write produced: its next write is conditional on that one,
    /// whatever the watch has delivered meanwhile.
    reconciling: HashMap<ResourceKey, Option<(String, String)>>,
}

/// A reconcile under way (see [`Written::reconciling`]); dropping it
/// forgets what its writes produced.
pub(super) struct Reconciling<'a> {
    written: &'a Written,
    key: ResourceKey,
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
    key: ResourceKey,
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
        let key = super::key(resource);
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
        let key = super::key(resource);
        self.inner.lock().expect("written statuses").reconciling.insert(key.clone(), None);
        Reconciling { written: self, key }
    }

    /// The resourceVersion to make a write conditional on: the cached
    /// one, or the one this replica's latest write produced while the cache
    /// has not caught up with it (and the spec is the same generation).
    pub(super) fn resource_version(&self, resource: &ChatWorkspace) -> Option<String> {
        let inner = self.inner.lock().expect("written statuses");
        let key = super::key(resource);
        if let Some(Some((had, produced))) = inner.reconciling.get(&key)
            && resource.metadata.resource_version.as_ref() == Some(had)
        {
            return Some(produced.clone());
        }
        let stale = inner.by_resource.get(&super::key(resource)).filter(|unseen| {
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
        let key = super::key(resource);
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
        let key = super::key(written);
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
    pub(super) fn delivered(&self, key: &ResourceKey, hash: u64) {
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
    pub(super) fn forget(&self, resource: &ResourceKey) {
        self.inner.lock().expect("written statuses").by_resource.remove(resource);
    }

    #[cfg(test)]
    fn unseen(&self) -> usize {
        self.inner.lock().expect("written statuses").by_resource.len()
    }
}

/// What one pass of `apply` produced.
pub(super) struct Pass {
    pub status: ChatWorkspaceStatus,
    pub requeue: Duration,
    pub events: Vec<decision::Event>,
    /// Decided with the whole picture; not a status held back for the
    /// index's first probe or chat lookup.
    pub complete: bool,
}

impl Pass {
    /// Nothing written, nothing told: look again after `requeue`.
    pub fn unchanged(previous: &ChatWorkspaceStatus, requeue: Duration) -> Self {
        Pass { status: previous.clone(), requeue, events: Vec::new(), complete: false }
    }
}

/// The status, Events and requeue of a pass: the decision's, completed with
/// what the action produced (the build it requested, the workspace it
/// created, the chats it changed) so the status describes the state the
/// action left, not the one before it.
pub(super) fn describe(
    gathered: &mut gather::Gathered<'_>,
    decision: Decision,
    acted: Acted,
    template: Option<&TemplateInfo>,
) -> Pass {
    let context = gathered.context;
    let Decision { mut status, mut requeue, mut events, .. } = decision;
    events.extend(events::of_action(&acted));
    let built = acted.workspace().map(|w| w.latest_build.id.clone());
    if let (Some(request), Some(build_id)) = (status.last_build_request.as_mut(), built) {
        request.build_id = Some(build_id);
    }
    match acted {
        Acted::ChatsInterrupted { result: Ok(outcome), .. } => {
            outcome.chats.into_iter().for_each(|chat| gathered.chat_changed(context, chat));
        }
        Acted::ChatContextRefreshed { result, .. } => {
            for chat in result.map(|outcome| outcome.chats).unwrap_or_default() {
                gathered.chat_changed(context, chat);
            }
            // Describe the re-pinned chat now rather than at the next pass.
            let after = gathered.decide_after(&status);
            if after.action == Action::None {
                status = after.status;
            }
        }
        Acted::Created { workspace, .. } => {
            gathered.ownership = Some(crate::crd::OwnershipStatus {
                workspace_id: workspace.id.clone(),
                origin: crate::crd::WorkspaceOrigin::Created,
                time: Some(decision::whole_seconds(Timestamp::now())),
            });
            requeue = requeue.min(describe_build(gathered, &mut status, workspace));
        }
        Acted::BuildRequested { workspace, .. } => {
            requeue = requeue.min(describe_build(gathered, &mut status, workspace));
        }
        Acted::BuildUnderWay => {
            // Decided again on a fresh read, soon.
            status = gathered.previous.clone();
            requeue = context.settings.requeue.active;
        }
        Acted::Nothing | Acted::NameTaken | Acted::ChatsInterrupted { .. } => {}
    }
    if let Some(info) = template {
        status.template = Some(info.status());
    }
    if gathered.ownership.is_some() {
        status.ownership = gathered.ownership.clone();
    }
    Pass { status, requeue, events, complete: true }
}

/// Indexes the workspace an action left and describes it (a build under
/// way), keeping what the decision recorded (recovery stage, build
/// request). Returns when to look again.
fn describe_build(gathered: &gather::Gathered<'_>, status: &mut ChatWorkspaceStatus, workspace: Workspace) -> Duration {
    let context = gathered.context;
    context.index.record(&gathered.credentials, &gathered.owner, &gathered.name, Some(workspace.clone()));
    let after = decision::decide(&Inputs {
        spec: &gathered.resource.spec,
        policy: gathered.policy,
        generation: gathered.generation,
        previous: status,
        observed: Observed::Workspace { workspace: Some(&workspace), fresh: true, probe: None },
        chat: ObservedChat::Unknown,
        now: Timestamp::now(),
        requeue: context.settings.requeue,
        start_request: super::start_request(gathered.resource),
        restart_request: super::restart_request(gathered.resource),
    });
    *status = after.status;
    after.requeue
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

/// What was written down before an action, to be taken back if Coder
/// made nothing.
pub(super) enum Intent {
    None,
    /// The status written, and whether it was a create's intent.
    Written {
        status: Box<ChatWorkspaceStatus>,
        create: bool,
    },
}

/// Persists what is about to be done before it is done: a create's intent
/// (`status.ownership`, so the workspace it makes is known as this
/// resource's: `tenancy::adoption::made_by_us`), a recovery's stage and
/// attempt and its build request (so that an operator stopped between the
/// build and its record resumes the recovery instead of losing its stage or
/// counting a new attempt), a chat interrupt's or re-pin's mark (tried once). The resourceVersion makes the write fail if the
/// resource changed since it was read: a decision taken on a stale spec or
/// status is not acted on.
pub(super) async fn intend(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    decision: &decision::Decision,
) -> Result<Intent> {
    let (status, create) = match &decision.action {
        decision::Action::CreateWorkspace => {
            let mut status = previous.clone();
            let now = decision::whole_seconds(Timestamp::now()).0;
            status.ownership = Some(crate::tenancy::adoption::create_intent(now));
            (status, true)
        }
        decision::Action::Build(plan) if plan.reason == decision::BuildReason::Recovery => {
            (decision.status.clone(), false)
        }
        // Once per dead agent, once per build: the status says it was
        // tried before it is, so a pass that follows a write that failed
        // (or a restart) does not try again.
        decision::Action::InterruptChats(_) | decision::Action::RefreshChatContext(_) => {
            (decision.status.clone(), false)
        }
        _ => return Ok(Intent::None),
    };
    apply_status(context, api, resource, previous, &status).await?;
    Ok(Intent::Written { status: Box::new(status), create })
}

/// Takes `intent` back when Coder made nothing: a name taken meanwhile or a
/// create it refused (a create that may have been made, a timeout or a
/// 5xx, keeps its intent, which covers only the create's own request), or
/// a build that found another under way (else a stop someone else makes
/// next would pass for the recovery's own).
pub(super) async fn take_back(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    intent: Intent,
    acted: &Result<Acted>,
) -> Result<()> {
    let Intent::Written { status, create } = intent else { return Ok(()) };
    let made_nothing = match acted {
        Ok(Acted::NameTaken | Acted::BuildUnderWay) => true,
        Err(error) => create && !error.is_transient(),
        Ok(_) => false,
    };
    if made_nothing { write_status(context, api, resource, &status, previous).await } else { Ok(()) }
}

/// Writes what a deletion has done and waits for (`status.cleanup`), as
/// every status is written.
pub(super) async fn write_cleanup(
    context: &Context,
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    cleanup: &CleanupStatus,
) -> Result<()> {
    let previous = context.written.previous(resource);
    let status = ChatWorkspaceStatus { cleanup: Some(cleanup.clone()), ..previous.clone() };
    write_status(context, api, resource, &previous, &status).await
}

/// Counts what the action produced.
pub(super) fn count(context: &Context, acted: &Acted) {
    match acted {
        Acted::Created { .. } => {
            context.metrics.build(WorkspaceTransition::Start.as_str(), decision::BuildReason::Create.as_str());
        }
        Acted::BuildRequested { plan, .. } => {
            context.metrics.build(plan.transition.as_str(), plan.reason.as_str());
            if plan.reason == decision::BuildReason::Recovery && plan.transition == WorkspaceTransition::Stop {
                context.metrics.recovery("started");
            }
        }
        _ => {}
    }
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

/// Events for what the decision reported and the action produced, and for
/// every state reached.
pub(super) async fn publish(
    context: &Context,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    status: &ChatWorkspaceStatus,
    reported: &[decision::Event],
) {
    if let Some(stalled) = events::flipped_true(&previous.conditions, &status.conditions, STALLED) {
        context.metrics.stalled(&stalled.reason);
    }
    for outcome in reported.iter().filter_map(|e| e.reason.recovery_outcome()) {
        context.metrics.recovery(outcome);
    }
    for event in events::of_reconcile(reported, previous, status) {
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
            written.delivered(&super::super::key(r), status_hash(&r.status.clone().unwrap_or_default()))
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
        let key = super::super::key(&resource("1", None));
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
        let key = super::super::key(&decided_from);
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
