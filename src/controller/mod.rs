//! The reconciler, in four steps that each live in their own place and run
//! in one direction:
//! - gather (`gather`): the resource, its credentials and template, what the
//!   Coder index holds for its workspace, the claims: no Coder I/O;
//! - decide: `decision::decide`, the pure core;
//! - act (`act`): the one action, after a fresh read of the one workspace;
//! - record (`record`): status, Events, metrics.
//!
//! Coder is observed in the background by the index (`crate::index`), which
//! wakes a resource when what it holds for its workspace changes; the
//! periodic resync is only a safety net.

mod act;
mod cleanup;
mod gather;
mod record;
mod resync;
pub mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::cache::{Cached, Slim};
use crate::claims::{ClaimsIndex, Standing};
use crate::coder::{CoderError, WorkspaceTransition};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, FIELD_MANAGER, FINALIZER};
use crate::credentials::Credentials;
use crate::decision::{self, Action as CoreAction, BuildReason, Inputs, Observed, ObservedChat, Requeue};
use crate::error::{Error, Result};
use crate::index::{CoderIndex, IndexSettings};
use crate::key::ResourceKey;
use crate::metrics::Metrics;
use crate::templates::Templates;
use crate::tenancy::{self, Tenancy};
pub use runtime::Action;

/// Settings of the controller itself (flags of `chatworkspace-operator run`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub requeue: Requeue,
    pub concurrency: u16,
    /// Watch only these namespaces; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// How long template and preset reads are reused.
    pub template_ttl: Duration,
    /// Name of this replica in Events.
    pub instance: String,
    /// How the Coder index polls and probes.
    pub index: IndexSettings,
    /// Name of this operator install, claimed on each resource it drives
    /// (see `tenancy::installs`).
    pub install: String,
    /// How long a transient failure (Coder's 5xx or a timeout, the
    /// apiserver) must last before it is written as `Degraded`: a blip marks
    /// nothing.
    pub transient_grace: Duration,
    /// How long a resource's status waits for the index to complete its
    /// picture (the agent's first probe, the chat lookup) before it is
    /// written without it: one write per resource on first sight, not two
    /// or three.
    pub first_sight_wait: Duration,
    /// How long a deletion may wait, from the resource's
    /// `deletionTimestamp`, when its credentials are gone or its namespace
    /// is being deleted; then the workspace is left in Coder (as
    /// `deletionPolicy: Orphan`) so that the namespace can go.
    pub cleanup_timeout: Duration,
    /// Waits between the retries of a cleanup build that failed in Coder.
    pub cleanup_backoff: decision::CleanupBackoff,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            requeue: Requeue::default(),
            concurrency: 16,
            namespaces: Vec::new(),
            template_ttl: Duration::from_secs(300),
            instance: "chatworkspace-operator".into(),
            index: IndexSettings::default(),
            install: "chatworkspace-operator".into(),
            transient_grace: Duration::from_secs(60),
            first_sight_wait: Duration::from_secs(10),
            cleanup_timeout: Duration::from_secs(300),
            cleanup_backoff: decision::CleanupBackoff::default(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub kube: kube::Client,
    pub credentials: Credentials,
    pub templates: Templates,
    pub index: CoderIndex,
    pub claims: ClaimsIndex,
    /// Namespace grants and owners: who may drive which workspace.
    pub tenancy: Tenancy,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    recorder: crate::events::Publisher,
    /// Consecutive transient failures per object, for backoff, and when the
    /// first of them happened.
    failures: Mutex<HashMap<ObjectRef<ChatWorkspace>, (u32, Instant)>>,
    /// Status writes the watch has not delivered yet.
    written: record::Written,
    /// Since when each resource's status has been held back waiting for
    /// the index's first probe or chat lookup.
    held: Mutex<HashMap<ObjectRef<ChatWorkspace>, Instant>>,
    /// Resources that asked not to be looked at again before a time later
    /// than the resync's sweep would (`None`: before a change of their
    /// own): the sweep passes them by.
    resting: Mutex<HashMap<ObjectRef<ChatWorkspace>, Option<Instant>>>,
    /// Resources whose finalizer and claim this replica has just patched,
    /// until the watch delivers them: a reconcile that starts meanwhile,
    /// from the cache's older copy, must not patch them again (its patch,
    /// conditional on that copy's resourceVersion, would only conflict).
    claiming: Mutex<std::collections::HashSet<ObjectRef<ChatWorkspace>>>,
}

impl Context {
    pub fn new(kube: kube::Client, credentials: Credentials, metrics: Arc<Metrics>, settings: Settings) -> Self {
        Self {
            recorder: crate::events::Publisher::new(kube.clone(), FIELD_MANAGER, settings.instance.clone()),
            templates: Templates::new(settings.template_ttl),
            index: CoderIndex::new(settings.index, Some(metrics.clone())),
            claims: ClaimsIndex::default(),
            tenancy: Tenancy::new(kube.clone()),
            kube,
            credentials,
            metrics,
            settings,
            failures: Mutex::default(),
            written: record::Written::default(),
            held: Mutex::default(),
            resting: Mutex::default(),
            claiming: Mutex::default(),
        }
    }

    /// Looks at `resource` again after `delay` and not before, whatever the
    /// resync's sweep does meanwhile.
    fn rest(&self, resource: &ChatWorkspace, delay: Duration) -> Action {
        let until = Instant::now() + delay;
        self.resting.lock().expect("resting").insert(crate::crd::reference(resource), Some(until));
        Action::requeue(delay)
    }

    /// Looks at `resource` again only when it changes: what failed needs a
    /// new spec, and the resync's sweep must not retry it meanwhile.
    fn rest_until_changed(&self, resource: &ChatWorkspace) -> Action {
        self.resting.lock().expect("resting").insert(crate::crd::reference(resource), None);
        Action::await_change()
    }

    /// Whether the resync's sweep passes `resource` by: it is on its own
    /// timer (being deleted, or backing off after failures), or resting
    /// after an error that waiting fixes only slowly or not at all.
    fn resync_skips(&self, resource: &Slim) -> bool {
        if resource.deleting() {
            return true;
        }
        let key: ObjectRef<ChatWorkspace> = resource.key().reference();
        if self.failures.lock().expect("failures").contains_key(&key) {
            return true;
        }
        self.resting.lock().expect("resting").get(&key).is_some_and(|until| until.is_none_or(|at| at > Instant::now()))
    }

    /// Whether `resource`'s reconciles have failed without a success for at
    /// least `grace`.
    fn failing_for(&self, resource: &ChatWorkspace, grace: Duration) -> bool {
        let failures = self.failures.lock().expect("failures");
        failures.get(&crate::crd::reference(resource)).is_some_and(|(_, since)| since.elapsed() >= grace)
    }

    /// How much longer `resource`'s status waits for the index, if `status`
    /// still lacks what the index is about to observe for the first time.
    fn hold(&self, resource: &ChatWorkspace, status: &ChatWorkspaceStatus) -> Option<Duration> {
        use crate::conditions::{CHAT_CONTEXT_CURRENT, READY};
        let reason = |type_| crate::conditions::find(&status.conditions, type_).map(|c| c.reason.as_str());
        let incomplete = reason(READY) == Some("AgentNotProbed") || reason(CHAT_CONTEXT_CURRENT) == Some("NotObserved");
        let mut held = self.held.lock().expect("held");
        let key = crate::crd::reference(resource);
        if !incomplete {
            held.remove(&key);
            return None;
        }
        let since = *held.entry(key).or_insert_with(Instant::now);
        self.settings.first_sight_wait.checked_sub(since.elapsed()).filter(|left| !left.is_zero())
    }

    /// Keeps the claims and the index in step with the watch.
    fn track(&self, scope: Option<&str>, event: &watcher::Event<Cached>) {
        match event {
            watcher::Event::Init => self.claims.relist_started(scope),
            watcher::Event::InitApply(resource) | watcher::Event::Apply(resource) => {
                self.claims.apply(resource);
                let reference = reference_of(resource);
                self.written.delivered(&reference, resource.status_hash());
                if resource.finalizers().iter().any(|f| f == FINALIZER) {
                    let mut claiming = self.claiming.lock().expect("claiming");
                    if !claiming.is_empty() {
                        claiming.remove(&reference);
                    }
                }
            }
            watcher::Event::InitDone => {
                self.claims.relist_done(scope);
                self.metrics.relists.inc();
            }
            watcher::Event::Delete(resource) => self.claims.delete(resource),
        }
    }

    /// `key` is gone (deleted, or missing from a relist): nothing is kept
    /// of it.
    fn forget(&self, key: &ResourceKey) {
        let reference: ObjectRef<ChatWorkspace> = key.reference();
        self.index.forget(&reference);
        self.written.forget(&reference);
        self.held.lock().expect("held").remove(&reference);
        self.resting.lock().expect("resting").remove(&reference);
        self.failures.lock().expect("failures").remove(&reference);
        self.claiming.lock().expect("claiming").remove(&reference);
        // What the caches keep for it goes with the last resource using it.
        self.credentials.forget(key);
        self.templates.sweep();
    }
}

/// The reference the operator's maps use for a cached resource.
fn reference_of(resource: &Cached) -> ObjectRef<ChatWorkspace> {
    let reference = ObjectRef::new(resource.metadata.name.as_deref().unwrap_or_default());
    match resource.metadata.namespace.as_deref() {
        Some(namespace) => reference.within(namespace),
        None => reference,
    }
}

/// Runs the controller until `shutdown` resolves; the reconciles in flight
/// finish first.
/// `readiness` turns true once every watch has listed its resources.
pub async fn run(
    context: Arc<Context>,
    readiness: Arc<crate::admin::Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = Box::pin(shutdown).shared();
    let scopes: Vec<Option<String>> = if context.settings.namespaces.is_empty() {
        vec![None]
    } else {
        context.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut dispatchers = Vec::new();
    let mut sources = tokio::task::JoinSet::new();
    let mut stores = Vec::new();
    for scope in scopes {
        let store = Arc::new(runtime::Store::default());
        let queue = Arc::new(runtime::Queue::default());
        stores.push(store.clone());

        // The watch: the store, the claims, and a reconcile for what is new
        // or changed in what triggers one (`lifecycle`).
        let api: Api<Cached> = match &scope {
            Some(namespace) => Api::namespaced(context.kube.clone(), namespace),
            None => Api::all(context.kube.clone()),
        };
        let mut events = Box::pin(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
        let (watching, into) = (context.clone(), (store.clone(), queue.clone()));
        let tracked = scope.clone();
        sources.spawn(async move {
            let (store, queue) = into;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        watching.track(tracked.as_deref(), &event);
                        let applied = store.apply(event, lifecycle);
                        for key in applied.gone {
                            queue.forget(&key);
                            watching.forget(&key);
                        }
                        if let Some(key) = applied.trigger {
                            queue.push(key);
                        }
                    }
                    Err(error) => warn!(%error, "watching ChatWorkspaces failed; retrying"),
                }
            }
        });
        // The Coder index's wakes.
        let mut wakes = context.index.wakes(scope.clone());
        let woken = queue.clone();
        sources.spawn(async move {
            while let Some(key) = wakes.recv().await {
                woken.push(key);
            }
        });
        // A namespace granted (or revoked) an owner reconciles its resources now.
        let mut granted = Box::pin(context.tenancy.namespaces.changes());
        let (grants, granting) = (store.clone(), queue.clone());
        sources.spawn(async move {
            while let Some(namespace) = granted.next().await {
                for key in grants.keys_in(&namespace) {
                    granting.push(key);
                }
            }
        });
        // A resync shorter than SWEPT_AT_LEAST keeps every resource on its
        // own timer (`requeue`), and needs no sweep.
        let sweeping = context.clone();
        let swept = context.settings.requeue.stable >= SWEPT_AT_LEAST;
        let mut resync = Box::pin(resync::sweep(store.clone(), context.settings.requeue.stable, move |resource| {
            swept && !sweeping.resync_skips(resource)
        }));
        let resyncing = queue.clone();
        sources.spawn(async move {
            while let Some(key) = resync.next().await {
                resyncing.push(key);
            }
        });

        let reconciling = context.clone();
        dispatchers.push(runtime::dispatch(
            store,
            queue,
            usize::from(context.settings.concurrency),
            shutdown.clone(),
            move |resource| {
                let context = reconciling.clone();
                async move {
                    let action = match reconcile(resource.clone(), context.clone()).await {
                        Ok(action) => action,
                        // A write decided on a stale view: not a failure;
                        // decide again once the watch has caught up.
                        Err(error) if error.is_stale_write() => {
                            tracing::debug!(name = %resource.key().name(), %error, "decided on a stale view; looking again");
                            Action::requeue(context.settings.requeue.active)
                        }
                        Err(error) => error_policy(&resource, &error, &context),
                    };
                    action.requeue_after()
                }
            },
        ));
    }
    let namespace_watch = tokio::spawn(context.tenancy.namespaces.clone().watch(context.settings.namespaces.clone()));
    let watched = stores.clone();
    tokio::spawn(async move {
        for store in &watched {
            store.ready().await;
        }
        info!("caches synced; ready");
        readiness.set(true);
    });
    futures::future::join_all(dispatchers).await;
    sources.shutdown().await;
    namespace_watch.abort();
}

/// The resource's start-request annotation, if set.
fn start_request(resource: &ChatWorkspace) -> Option<&str> {
    resource.annotations().get(crate::crd::START_REQUESTED_AT).map(String::as_str)
}

/// Reconcile on changes of the spec, the finalizers, deletion or the
/// start-request annotation, but not on the operator's own status writes: each of those would otherwise cost one
/// more reconcile, and one more Coder read, for nothing.
fn lifecycle(resource: &Cached) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // A resource deleted and created again under its name is a new one.
    resource.metadata.uid.hash(&mut hasher);
    resource.metadata.generation.hash(&mut hasher);
    resource.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    resource.finalizers().hash(&mut hasher);
    resource.annotation(crate::crd::START_REQUESTED_AT).hash(&mut hasher);
    hasher.finish()
}

fn error_policy(resource: &Slim, error: &Error, context: &Context) -> Action {
    let key: ObjectRef<ChatWorkspace> = resource.key().reference();
    let failures = {
        let mut failures = context.failures.lock().expect("failures");
        let (count, _) = failures.entry(key).or_insert((0, Instant::now()));
        *count = count.saturating_add(1);
        *count
    };
    // 1s, 2s, 4s … capped at five minutes: converge soon after a blip,
    // never hammer a Coder that is down.
    let delay = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    warn!(name = %resource.key().name(), namespace = %resource.key().namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(cached: Arc<Slim>, context: Arc<Context>) -> Result<Action> {
    let _timer = context.metrics.reconcile_timer();
    let resource = cached.expand();
    context.resting.lock().expect("resting").remove(&crate::crd::reference(&resource));
    if let Some(waited) = context.index.reconcile_started(&crate::crd::reference(&resource)) {
        context.metrics.queue_wait.observe(waited.as_secs_f64());
    }
    let namespace = resource.namespace().unwrap_or_default();
    let api: Api<ChatWorkspace> = Api::namespaced(context.kube.clone(), &namespace);
    let install = &context.settings.install;
    let claim = tenancy::installs::claim(
        resource.annotations().get(tenancy::installs::INSTALL_ANNOTATION).map(String::as_str),
        install,
    );
    let result = if let tenancy::installs::Claim::Other(other) = &claim {
        // Another install drives it: never a second actor.
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "ManagedByAnotherOperator".into(),
            note: Some(tenancy::installs::elsewhere(other, install)),
            action: "Reconcile".into(),
            secondary: None,
        };
        context.claims.settle(&resource, Standing::Idle);
        record::publish_one(&context, &resource, event).await;
        cleanup::release_foreign_claim(&api, &resource, &context, other)
            .await
            .map(|action| action.unwrap_or_else(|| context.rest(&resource, Duration::from_secs(300))))
    } else if resource.metadata.deletion_timestamp.is_some() {
        if resource.finalizers().iter().any(|f| f == FINALIZER) {
            cleanup::cleanup(&api, &resource, &context).await
        } else {
            context.claims.settle(&resource, Standing::Idle);
            Ok(Action::await_change())
        }
    } else {
        let unclaimed =
            !resource.finalizers().iter().any(|f| f == FINALIZER) || claim == tenancy::installs::Claim::Unclaimed;
        let reference = crate::crd::reference(&resource);
        // Marked before the patch is sent, so that the watch's delivery of
        // its result, however soon, finds the mark to clear.
        let patch = unclaimed && context.claiming.lock().expect("claiming").insert(reference.clone());
        // Decided from the patched resource: a status write conditional on
        // the cache's older version would only conflict.
        let claimed = if patch {
            match add_finalizer(&api, &resource, install).await {
                Ok(claimed) => Some(claimed),
                Err(error) => {
                    context.claiming.lock().expect("claiming").remove(&reference);
                    return Err(error);
                }
            }
        } else {
            None
        };
        apply(&api, claimed.as_ref().unwrap_or(&resource), &context).await
    };
    match &result {
        Ok(_) => {
            context.metrics.reconciled("ok");
            context.failures.lock().expect("failures").remove(&crate::crd::reference(&resource));
        }
        // Not a failure: decided again (see `run`), counted apart so a
        // storm of them would show.
        Err(error) if error.is_stale_write() => context.metrics.reconciled("stale"),
        Err(error) => context.metrics.failed(error.reason()),
    }
    result
}

/// Looks at the resource again after `delay`. A settled one (the decision
/// core's "nothing expected", the resync interval itself) waits for a
/// change, a wake of the Coder index, or the resync's sweep (`resync`),
/// instead of a timer of its own; any other delay is a moment something is
/// due (a threshold, a budget's window) and keeps its timer.
fn requeue(delay: Duration, context: &Context) -> Action {
    // A resync shorter than a minute (the tests') may equal an agent's or a
    // build's own interval: then every resource keeps its timer, and the
    // sweep hands over nothing.
    let settled = delay == context.settings.requeue.stable && delay >= SWEPT_AT_LEAST;
    if settled { Action::await_change() } else { Action::requeue(delay) }
}

/// The shortest resync whose settled resources are left to the sweep.
const SWEPT_AT_LEAST: Duration = Duration::from_secs(60);

/// What one pass of `apply` produced.
struct Applied {
    status: ChatWorkspaceStatus,
    requeue: Duration,
    events: Vec<decision::Event>,
    /// Decided with the whole picture; not a status held back for the
    /// index's first probe or chat lookup.
    complete: bool,
}

async fn apply(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Action> {
    let _reconciling = context.written.reconciling(resource);
    let previous = context.written.previous(resource);
    match converge(api, resource, &previous, context).await {
        Ok(None) => {
            // The index has not listed this owner's workspaces yet; it wakes
            // the resource when it has.
            Ok(Action::await_change())
        }
        Ok(Some(applied)) => {
            record::write_status(context, api, resource, &previous, &applied.status).await?;
            record::publish(context, resource, &previous, &applied.status, &applied.events).await;
            if applied.complete {
                context.index.observed(&crate::crd::reference(resource));
            }
            Ok(requeue(applied.requeue, context))
        }
        Err(error) if error.is_transient() && !context.failing_for(resource, context.settings.transient_grace) => {
            // A blip: retried with backoff, not written down (yet).
            Err(error)
        }
        Err(error) => {
            let status = record::failed_status(resource, &previous, &error);
            record::write_status(context, api, resource, &previous, &status).await?;
            record::publish(context, resource, &previous, &status, &[]).await;
            if error.is_transient() {
                return Err(error);
            }
            warn!(name = %resource.name_any(), %error, "reconcile needs a change to succeed");
            context.metrics.error_kind(error.reason());
            if error.waits_for_spec_change() {
                // Only a new spec can fix it; a spec change triggers a reconcile.
                Ok(context.rest_until_changed(resource))
            } else {
                // A token, template or Secret may be fixed outside Kubernetes'
                // view of this resource: look again slowly, never in a storm.
                Ok(context.rest(resource, context.settings.requeue.stable.max(Duration::from_secs(60))))
            }
        }
    }
}

/// Gather, decide, act, and decide again on what the action produced.
/// `None` while the index does not know the owner's workspaces yet.
async fn converge(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    context: &Context,
) -> Result<Option<Applied>> {
    // An older resource that may drive the same workspace is settled first:
    // until then this one touches nothing and writes nothing.
    let claim_waits = || Applied {
        status: previous.clone(),
        requeue: context.settings.requeue.active,
        events: Vec::new(),
        complete: false,
    };
    let mut gathered = match gather::gather(resource, previous, context).await? {
        gather::Found::Gathered(gathered) => *gathered,
        gather::Found::NotListed => return Ok(None),
        gather::Found::ClaimWaits => return Ok(Some(claim_waits())),
    };
    let mut decision = gathered.decide();
    if decision.action != CoreAction::None && !gathered.fresh {
        // Never act on the index's view: read this workspace again, and
        // decide on that with the freshest probe.
        gathered.refresh(context).await?;
        if gathered.claim_waits {
            return Ok(Some(claim_waits()));
        }
        decision = gathered.decide();
    }
    if decision.action == CoreAction::None
        && let Some(left) = context.hold(resource, &decision.status)
    {
        // The index is about to complete the picture (the agent's first
        // probe, the chat lookup) and wakes the resource when it has: write
        // the status once, then, rather than now and again in a moment.
        return Ok(Some(Applied { status: previous.clone(), requeue: left, events: Vec::new(), complete: false }));
    }
    if decision.action == CoreAction::Refresh {
        // The core wants a fresher probe than the index has: ask for one;
        // the index wakes this resource when it completes.
        if let Some(agent) = gathered.chat_agent_id() {
            context.index.request_probe(&agent);
        }
        decision.action = CoreAction::None;
        decision.requeue = decision.requeue.min(context.settings.requeue.probe_retry.max(Duration::from_secs(1)));
    }

    // The template only blocks a create; for an existing workspace a
    // template that cannot be read just leaves status.template as it was.
    let template = match gathered.template.take() {
        Some(Ok(info)) => Some(info),
        Some(Err(error)) if decision.action == CoreAction::CreateWorkspace => return Err(error),
        Some(Err(error)) => {
            warn!(name = %resource.name_any(), %error, "cannot read the template");
            None
        }
        None => None,
    };

    let coder = &gathered.credentials.client.clone();
    let (owner, name) = (&gathered.owner.clone(), &gathered.name.clone());
    let mut events = std::mem::take(&mut decision.events);
    let acted = match decision.action.clone() {
        CoreAction::None | CoreAction::Refresh => None,
        CoreAction::InterruptChats(plan) => {
            // A chat that cannot be interrupted must not hold up the
            // recovery: the status records the attempt, the stop comes next.
            match act::interrupt_chats(&plan, coder).await {
                Ok(outcome) => {
                    let interrupted = outcome.chats.len();
                    for chat in outcome.chats {
                        gathered.chat_changed(context, chat);
                    }
                    let skipped = match outcome.skipped {
                        0 => String::new(),
                        n => format!(" ({n} had ended already)"),
                    };
                    events.push(decision::Event {
                        warning: false,
                        reason: "ChatInterrupted",
                        note: format!(
                            "Interrupted {interrupted} chat turn(s) running on the dead agent {} before the \
                             recovery's stop{skipped}.",
                            plan.agent_name
                        ),
                    });
                }
                Err(error) => events.push(decision::Event {
                    warning: true,
                    reason: "ChatInterruptFailed",
                    note: format!("Could not interrupt the chat's turn before the recovery's stop: {error}"),
                }),
            }
            None
        }
        CoreAction::RefreshChatContext(plan) => {
            match act::refresh_chat_context(&plan, coder).await {
                Ok(outcome) => {
                    // v2.36.1 re-pins to the agent the chat has stored, which
                    // after a stop/start is still the old one: say so.
                    let still_old =
                        outcome.chats.iter().filter(|c| c.agent_id.as_deref() != Some(plan.agent_id.as_str())).count();
                    let count = outcome.chats.len();
                    for chat in outcome.chats {
                        gathered.chat_changed(context, chat);
                    }
                    let note = if still_old == 0 {
                        format!(
                            "Re-pinned the context of {count} chat(s) to the new chat agent {}, now ready, so the \
                             chat and its sub-agents keep their instruction files and skills.",
                            plan.agent_name
                        )
                    } else {
                        format!(
                            "Refreshed the context of {count} chat(s), but coderd kept {still_old} of them on the \
                             agent they are bound to, not the new chat agent {}: the chat's next turn rebinds it \
                             and re-pins its context.",
                            plan.agent_name
                        )
                    };
                    events.push(decision::Event { warning: false, reason: "ChatContextRefreshed", note });
                }
                // Once per build: the chat's next turn re-pins it anyway.
                Err(error) => events.push(decision::Event {
                    warning: true,
                    reason: "ChatContextRefreshFailed",
                    note: format!(
                        "Could not re-pin the chat's context to agent {}: {error}. The chat's next turn does it.",
                        plan.agent_name
                    ),
                }),
            }
            None
        }
        CoreAction::CreateWorkspace => {
            let template = template.as_ref().expect("resolved above for a create");
            let intended = record::write_create_intent(context, api, resource, previous).await?;
            match act::create_workspace(resource, owner, name, template, coder).await {
                Ok(workspace) => {
                    context.metrics.build("start", "Create");
                    if let Some(request) = decision.status.last_build_request.as_mut() {
                        request.build_id = Some(workspace.latest_build.id.clone());
                    }
                    gathered.ownership = Some(crate::crd::OwnershipStatus {
                        workspace_id: workspace.id.clone(),
                        origin: crate::crd::WorkspaceOrigin::Created,
                        time: Some(decision::whole_seconds(Timestamp::now())),
                    });
                    events.push(decision::Event {
                        warning: false,
                        reason: "WorkspaceCreated",
                        note: format!(
                            "Created workspace {}/{} from template {} (build #{}).",
                            workspace.owner_name,
                            workspace.name,
                            template.template.name,
                            workspace.latest_build.build_number
                        ),
                    });
                    Some(workspace)
                }
                // The name is taken: someone created it meanwhile. Adopt it
                // on the next pass (with consent) rather than guessing now.
                Err(Error::Coder(CoderError::Conflict { .. })) => {
                    record::clear_create_intent(context, api, resource, (previous, &intended)).await?;
                    None
                }
                Err(error) => {
                    // A create that may have been made (a timeout, a 5xx)
                    // keeps its intent, which covers only the create's own
                    // request (`adoption::made_by_us`); one refused made nothing.
                    if !error.is_transient() {
                        record::clear_create_intent(context, api, resource, (previous, &intended)).await?;
                    }
                    return Err(error);
                }
            }
        }
        CoreAction::Build(plan) => {
            let current = gathered.workspace.as_ref().expect("a build is only decided for an observed workspace");
            if plan.reason == BuildReason::Recovery {
                record::write_intent(context, api, resource, previous, &decision.status).await?;
            }
            match act::issue_build(current, &plan, &resource.spec.parameters, coder).await {
                Ok(build) => {
                    let transition = plan.transition.as_str();
                    context.metrics.build(transition, plan.reason.as_str());
                    if plan.reason == BuildReason::Recovery && plan.transition == WorkspaceTransition::Stop {
                        context.metrics.recovery("started");
                    }
                    events.push(decision::Event {
                        warning: false,
                        reason: "BuildRequested",
                        note: format!(
                            "Requested {transition} build #{} ({}){}.",
                            build.build_number,
                            plan.reason.as_str(),
                            plan.template_version_id.as_ref().map(|v| format!(" on version {v}")).unwrap_or_default()
                        ),
                    });
                    if let Some(request) = decision.status.last_build_request.as_mut() {
                        request.build_id = Some(build.id.clone());
                    }
                    let mut updated = current.clone();
                    updated.latest_build = build;
                    Some(updated)
                }
                // A build became active between our read and our request:
                // never stack a second one; decide again on a fresh read.
                Err(Error::Coder(CoderError::Conflict { .. })) => {
                    if plan.reason == BuildReason::Recovery {
                        // The recovery's intent is written, but Coder made no
                        // build: take it back, or a stop that someone else
                        // makes next would pass for the recovery's own.
                        record::write_status(context, api, resource, &decision.status, previous).await?;
                    }
                    decision.status = previous.clone();
                    decision.requeue = context.settings.requeue.active;
                    None
                }
                Err(error) => return Err(error),
            }
        }
    };

    let mut status = decision.status.clone();
    let mut requeue = decision.requeue;
    if matches!(decision.action, CoreAction::RefreshChatContext(_)) {
        // Describe the re-pinned chat now rather than at the next pass.
        let after = gathered.decide_after(&status);
        if after.action == CoreAction::None {
            status = after.status;
        }
    }
    if let Some(workspace) = acted {
        context.index.record(&gathered.credentials, owner, name, Some(workspace.clone()));
        // Describe the state the action produced (a build under way), keeping
        // what the first decision recorded (recovery stage, build request).
        let after = decision::decide(&Inputs {
            spec: &resource.spec,
            policy: gathered.policy,
            generation: gathered.generation,
            previous: &status,
            observed: Observed::Workspace { workspace: Some(&workspace), fresh: true, probe: None },
            chat: ObservedChat::Unknown,
            now: Timestamp::now(),
            requeue: context.settings.requeue,
            start_request: start_request(resource),
        });
        status = after.status;
        requeue = requeue.min(after.requeue);
    }
    if let Some(info) = &template {
        status.template = Some(info.status());
    }
    if gathered.ownership.is_some() {
        status.ownership = gathered.ownership.clone();
    }
    Ok(Some(Applied { status, requeue, events, complete: true }))
}

/// Adds the finalizer and claims the resource for this install, in one
/// merge patch that fails if the resource changed meanwhile (so of two
/// installs, one claims it and the other sees the claim).
/// Returns the resource as patched.
async fn add_finalizer(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, install: &str) -> Result<ChatWorkspace> {
    let mut finalizers = resource.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "annotations": {tenancy::installs::INSTALL_ANNOTATION: install},
            "resourceVersion": resource.resource_version(),
        },
    });
    match api.patch(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(claimed) => Ok(claimed),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // The cached copy is older than the resource: this replica's own
            // patch may have landed already (a reconcile that began just
            // before the watch delivered it). Read it once to tell.
            let current = api.get(&resource.name_any()).await?;
            let done = current.finalizers().iter().any(|f| f == FINALIZER)
                && current.annotations().get(tenancy::installs::INSTALL_ANNOTATION).map(String::as_str)
                    == Some(install);
            if done { Ok(current) } else { Err(kube::Error::Api(status).into()) }
        }
        Err(error) => Err(error.into()),
    }
}
