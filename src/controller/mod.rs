//! The reconciler, in four steps that each live in their own place and run
//! in one direction (`converge` is the pass, one call per step):
//! - gather (`gather`): the resource, its credentials and template, what the
//!   Coder index holds for its workspace, the claims, and before an action a
//!   fresh read of the one workspace;
//! - decide: `decision::decide`, the pure core;
//! - act (`act`): the one action, and what Coder made of it;
//! - record (`record`): the intent written before the action, the status
//!   that describes what it produced, Events (`events`) and metrics.
//!
//! Coder is observed in the background by the index (`crate::index`), which
//! wakes a resource when what it holds for its workspace changes; the
//! periodic resync is only a safety net. Deletion is `cleanup`; what is
//! remembered of a resource between its reconciles, `memory`.

// Each step reads at once: no function here is longer than a screen.
#![warn(clippy::too_many_lines)]

mod act;
mod cleanup;
mod events;
mod gather;
mod memory;
mod record;
mod resync;
pub mod runtime;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::cache::{Stored, Watched};
use crate::claims::{ClaimsIndex, Standing};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, FIELD_MANAGER, FINALIZER};
use crate::credentials::Credentials;
use crate::decision::{self, Action, Decision, Requeue};
use crate::error::{Error, Result};
use crate::index::{CoderIndex, IndexSettings};
use crate::key::ResourceKey;
use crate::metrics::Metrics;
use crate::templates::{TemplateInfo, Templates};
use crate::tenancy::{self, Tenancy};
pub use runtime::Next;

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
    pub hold_limit: Duration,
    /// How long a deletion may wait, from the resource's
    /// `deletionTimestamp`, when its credentials are gone or its namespace
    /// is being deleted; then the workspace is left in Coder (as
    /// `deletionPolicy: Orphan`) so that the namespace can go.
    pub cleanup_timeout: Duration,
    /// Waits between the retries of a cleanup build that failed in Coder.
    pub cleanup_backoff: Backoff,
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
            hold_limit: Duration::from_secs(10),
            cleanup_timeout: Duration::from_secs(300),
            cleanup_backoff: decision::CLEANUP_RETRY,
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
    /// What is remembered of each resource between its reconciles.
    memory: memory::Memory,
    /// Status writes the watch has not delivered yet.
    written: record::Written,
}

impl Context {
    pub fn new(kube: kube::Client, credentials: Credentials, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let index = CoderIndex::new(settings.index, Some(metrics.clone()));
        let tenancy = Tenancy::new(kube.clone());
        // What the index reads of each owner's workspaces keeps the owner's
        // resolution alive: no user read per owner every few minutes.
        tenancy.owners.witness(index.clone());
        Self {
            recorder: crate::events::Publisher::new(kube.clone(), FIELD_MANAGER, settings.instance.clone()),
            templates: Templates::new(settings.template_ttl),
            index,
            claims: ClaimsIndex::default(),
            tenancy,
            kube,
            credentials,
            metrics,
            settings,
            memory: memory::Memory::default(),
            written: record::Written::default(),
        }
    }

    /// Looks at `resource` again after `delay` and not before, whatever the
    /// resync's sweep does meanwhile.
    fn rest(&self, resource: &ChatWorkspace, delay: Duration) -> Next {
        self.memory.rest(&key(resource), Some(Instant::now() + delay));
        Next::requeue(delay)
    }

    /// Looks at `resource` again only when it changes: what failed needs a
    /// new spec, and the resync's sweep must not retry it meanwhile.
    fn rest_until_changed(&self, resource: &ChatWorkspace) -> Next {
        self.memory.rest(&key(resource), None);
        Next::await_change()
    }

    /// Whether the resync's sweep passes `resource` by: it is on its own
    /// timer (being deleted, or backing off after failures), or resting
    /// after an error that waiting fixes only slowly or not at all.
    fn resync_skips(&self, resource: &Stored) -> bool {
        resource.deleting() || self.memory.resync_skips(resource.key())
    }

    /// How much longer `resource`'s status waits for the index, if `status`
    /// still lacks what the index is about to observe for the first time.
    fn hold(&self, resource: &ChatWorkspace, status: &ChatWorkspaceStatus) -> Option<Duration> {
        use crate::conditions::{CHAT_CONTEXT_CURRENT, READY, Reason, has_reason};
        let incomplete = has_reason(&status.conditions, READY, Reason::AgentNotProbed)
            || has_reason(&status.conditions, CHAT_CONTEXT_CURRENT, Reason::NotObserved);
        self.memory.hold(&key(resource), incomplete, self.settings.hold_limit)
    }

    /// Keeps the claims and the index in step with the watch.
    fn track(&self, scope: Option<&str>, event: &watcher::Event<Watched>) {
        match event {
            watcher::Event::Init => self.claims.relist_started(scope),
            watcher::Event::InitApply(resource) | watcher::Event::Apply(resource) => {
                self.claims.apply(resource);
                let key = key_of(resource);
                self.written.delivered(&key, resource.status_hash());
                if resource.finalizers().iter().any(|f| f == FINALIZER) {
                    self.memory.claimed(&key);
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
        self.written.forget(key);
        self.memory.forget(key);
        // What the caches keep for it goes with the last resource using it.
        self.credentials.forget(key);
        self.templates.sweep();
    }
}

/// The key the controller's maps use for `resource`.
fn key(resource: &ChatWorkspace) -> ResourceKey {
    ResourceKey::new(resource.metadata.namespace.as_deref().unwrap_or_default(), &resource.name_any())
}

/// The key the controller's maps use for a cached resource.
fn key_of(resource: &Watched) -> ResourceKey {
    ResourceKey::new(
        resource.metadata.namespace.as_deref().unwrap_or_default(),
        resource.metadata.name.as_deref().unwrap_or_default(),
    )
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
        trigger(&context, scope, (&store, &queue), &mut sources);
        let reconciling = context.clone();
        let concurrency = usize::from(context.settings.concurrency);
        dispatchers.push(runtime::dispatch(store, queue, concurrency, shutdown.clone(), move |resource| {
            let context = reconciling.clone();
            async move { reconcile_once(resource, context).await.requeue_after() }
        }));
    }
    let namespace_watch = tokio::spawn(context.tenancy.namespaces.clone().watch(context.settings.namespaces.clone()));
    tokio::spawn(async move {
        for store in &stores {
            store.ready().await;
        }
        info!("caches synced; ready");
        readiness.set(true);
    });
    futures::future::join_all(dispatchers).await;
    sources.shutdown().await;
    namespace_watch.abort();
}

/// Everything that queues a resource of `scope` for a reconcile, each a
/// task in `sources`: the watch (which also fills the store and the claims,
/// and triggers on what is new or changed in [`trigger_hash`]), the Coder
/// index's wakes, a namespace's grants changing, and the resync's sweep.
fn trigger(
    context: &Arc<Context>,
    scope: Option<String>,
    (store, queue): (&Arc<runtime::Store>, &Arc<runtime::Queue>),
    sources: &mut tokio::task::JoinSet<()>,
) {
    let api: Api<Watched> = match &scope {
        Some(namespace) => Api::namespaced(context.kube.clone(), namespace),
        None => Api::all(context.kube.clone()),
    };
    let mut events = Box::pin(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    let (watching, into, tracked) = (context.clone(), (store.clone(), queue.clone()), scope.clone());
    sources.spawn(async move {
        let (store, queue) = into;
        while let Some(event) = events.next().await {
            let Ok(event) = event.inspect_err(|error| warn!(%error, "watching ChatWorkspaces failed; retrying")) else {
                continue;
            };
            watching.track(tracked.as_deref(), &event);
            let applied = store.apply(event, trigger_hash);
            for (phase, delta) in &applied.phases {
                watching.metrics.resources_in_phase(*phase, *delta);
            }
            for key in applied.gone {
                queue.forget(&key);
                watching.forget(&key);
            }
            if let Some(key) = applied.trigger {
                queue.push(key);
            }
        }
    });
    let mut wakes = context.index.wakes(scope);
    let woken = queue.clone();
    sources.spawn(async move {
        while let Some(key) = wakes.recv().await {
            woken.push(key);
        }
    });
    let mut granted = Box::pin(context.tenancy.namespaces.changes());
    let (grants, granting) = (store.clone(), queue.clone());
    sources.spawn(async move {
        while let Some(namespace) = granted.next().await {
            grants.keys_in(&namespace).into_iter().for_each(|key| granting.push(key));
        }
    });
    // A resync shorter than SWEPT_AT_LEAST keeps every resource on its own
    // timer (`requeue`), and needs no sweep.
    let (sweeping, swept) = (context.clone(), context.settings.requeue.stable >= SWEPT_AT_LEAST);
    let mut resync = Box::pin(resync::sweep(store.clone(), context.settings.requeue.stable, move |resource| {
        swept && !sweeping.resync_skips(resource)
    }));
    let resyncing = queue.clone();
    sources.spawn(async move {
        while let Some(key) = resync.next().await {
            resyncing.push(key);
        }
    });
}

/// One reconcile and what follows from its result.
async fn reconcile_once(resource: Arc<Stored>, context: Arc<Context>) -> Next {
    match reconcile(resource.clone(), context.clone()).await {
        Ok(action) => action,
        // A write decided on a stale view: not a failure; decide again once
        // the watch has caught up.
        Err(error) if error.is_stale_write() => {
            tracing::debug!(name = %resource.key().name(), %error, "decided on a stale view; looking again");
            Next::requeue(context.settings.requeue.active)
        }
        Err(error) => error_policy(&resource, &error, &context),
    }
}

/// The resource's start-request annotation, if set.
fn start_request(resource: &ChatWorkspace) -> Option<&str> {
    resource.annotations().get(crate::crd::START_REQUESTED_AT).map(String::as_str)
}

/// The resource's restart-request annotation, if set.
fn restart_request(resource: &ChatWorkspace) -> Option<&str> {
    resource.annotations().get(crate::crd::RESTART_REQUESTED_AT).map(String::as_str)
}

/// Reconcile on changes of the spec, the finalizers, deletion or the
/// start- and restart-request annotations, but not on the operator's own
/// status writes: each of those would otherwise cost one more reconcile,
/// and one more Coder read, for nothing.
fn trigger_hash(resource: &Watched) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // A resource deleted and created again under its name is a new one.
    resource.metadata.uid.hash(&mut hasher);
    resource.metadata.generation.hash(&mut hasher);
    resource.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    resource.finalizers().hash(&mut hasher);
    resource.annotation(crate::crd::START_REQUESTED_AT).hash(&mut hasher);
    resource.annotation(crate::crd::RESTART_REQUESTED_AT).hash(&mut hasher);
    hasher.finish()
}

fn error_policy(resource: &Stored, error: &Error, context: &Context) -> Next {
    let delay = context.memory.failed(resource.key());
    warn!(name = %resource.key().name(), namespace = %resource.key().namespace(), %error, retry_in = ?delay, "reconcile failed");
    Next::requeue(delay)
}

async fn reconcile(cached: Arc<Stored>, context: Arc<Context>) -> Result<Next> {
    let _timer = context.metrics.reconcile_timer();
    let resource = cached.expand();
    context.memory.woken(cached.key());
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
        let event = events::managed_elsewhere(tenancy::installs::elsewhere(other, install));
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
            Ok(Next::await_change())
        }
    } else {
        let unclaimed =
            !resource.finalizers().iter().any(|f| f == FINALIZER) || claim == tenancy::installs::Claim::Unclaimed;
        // Marked before the patch is sent, so that the watch's delivery of
        // its result, however soon, finds the mark to clear.
        let patch = unclaimed && context.memory.claiming(cached.key());
        // Decided from the patched resource: a status write conditional on
        // the cache's older version would only conflict.
        let claimed = if patch {
            match add_finalizer(&api, &resource, install).await {
                Ok(claimed) => Some(claimed),
                Err(error) => {
                    context.memory.claimed(cached.key());
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
            context.memory.succeeded(cached.key());
        }
        // Not a failure: decided again (see `run`), counted apart so a
        // storm of them would show.
        Err(error) if error.is_stale_write() => context.metrics.reconciled("stale"),
        Err(error) => context.metrics.failed(error.reason().as_str()),
    }
    result
}

/// Looks at the resource again after `delay`. A settled one (the decision
/// core's "nothing expected", the resync interval itself) waits for a
/// change, a wake of the Coder index, or the resync's sweep (`resync`),
/// instead of a timer of its own; any other delay is a moment something is
/// due (a threshold, a budget's window) and keeps its timer.
fn requeue(delay: Duration, context: &Context) -> Next {
    // A resync shorter than a minute (the tests') may equal an agent's or a
    // build's own interval: then every resource keeps its timer, and the
    // sweep hands over nothing.
    let settled = delay == context.settings.requeue.stable && delay >= SWEPT_AT_LEAST;
    if settled { Next::await_change() } else { Next::requeue(delay) }
}

/// The shortest resync whose settled resources are left to the sweep.
const SWEPT_AT_LEAST: Duration = Duration::from_secs(60);

async fn apply(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Next> {
    let _reconciling = context.written.reconciling(resource);
    let previous = context.written.previous(resource);
    match converge(api, resource, &previous, context).await {
        Ok(None) => {
            // The index has not listed this owner's workspaces yet; it wakes
            // the resource when it has.
            Ok(Next::await_change())
        }
        Ok(Some(applied)) => {
            record::write_status(context, api, resource, &previous, &applied.status).await?;
            record::publish(context, resource, &previous, &applied.status, &applied.events).await;
            if applied.complete {
                context.index.observed(&crate::crd::reference(resource));
            }
            Ok(requeue(applied.requeue, context))
        }
        Err(error)
            if error.is_transient()
                && !context.memory.failing_for(&key(resource), context.settings.transient_grace) =>
        {
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
            context.metrics.error_kind(error.reason().as_str());
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

/// Gather, decide, act, record: one pass over one resource. `None` while
/// the index does not know the owner's workspaces yet.
async fn converge(
    api: &Api<ChatWorkspace>,
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    context: &Context,
) -> Result<Option<record::Pass>> {
    let (mut gathered, decision) = match decide(resource, previous, context).await? {
        Decided::NotListed => return Ok(None),
        Decided::Waits(requeue) => return Ok(Some(record::Pass::unchanged(previous, requeue))),
        Decided::Act(decided) => *decided,
    };
    let template = template_for(&mut gathered, &decision.action)?;
    let intent = record::intend(context, api, resource, previous, &decision).await?;
    let target = act::Target {
        resource,
        coder: &gathered.credentials.client,
        owner: &gathered.owner,
        name: &gathered.name,
        workspace: gathered.workspace.as_ref(),
        template: template.as_deref(),
    };
    let acted = act::perform(&decision.action, &target).await;
    record::take_back(context, api, resource, previous, intent, &acted).await?;
    let acted = acted?;
    record::count(context, &acted);
    Ok(Some(record::describe(&mut gathered, decision, acted, template.as_deref())))
}

/// What gather and the decision core made of one resource.
enum Decided<'a> {
    /// The index has not listed the owner's workspaces yet.
    NotListed,
    /// Nothing is written yet: an older resource that may drive the same
    /// workspace is not settled, or the index is about to complete the
    /// picture. Look again after this long (or when woken).
    Waits(Duration),
    /// The decision, on a fresh read if it acts.
    Act(Box<(gather::Gathered<'a>, Decision)>),
}

/// Gathers and decides; a decision that acts is made again on a fresh read
/// of the workspace, never on the index's view.
async fn decide<'a>(
    resource: &'a ChatWorkspace,
    previous: &'a ChatWorkspaceStatus,
    context: &'a Context,
) -> Result<Decided<'a>> {
    let mut gathered = match gather::gather(resource, previous, context).await? {
        gather::Found::Gathered(gathered) => *gathered,
        gather::Found::NotListed => return Ok(Decided::NotListed),
        gather::Found::ClaimWaits => return Ok(Decided::Waits(context.settings.requeue.active)),
    };
    let mut decision = gathered.decide();
    if decision.action != Action::None && !gathered.fresh {
        gathered.refresh(context).await?;
        if gathered.claim_waits {
            return Ok(Decided::Waits(context.settings.requeue.active));
        }
        decision = gathered.decide();
    }
    if decision.action == Action::None
        && let Some(left) = context.hold(resource, &decision.status)
    {
        // The index is about to complete the picture (the agent's first
        // probe, the chat lookup) and wakes the resource when it has: write
        // the status once, then, rather than now and again in a moment.
        return Ok(Decided::Waits(left));
    }
    if decision.action == Action::Refresh {
        // The core wants a fresher probe than the index has: ask for one;
        // the index wakes this resource when it completes.
        if let Some(agent) = gathered.chat_agent_id() {
            context.index.request_probe(&agent);
        }
        decision.action = Action::None;
        decision.requeue = decision.requeue.min(context.settings.requeue.probe_retry.max(Duration::from_secs(1)));
    }
    Ok(Decided::Act(Box::new((gathered, decision))))
}

/// The template, which only blocks a create: for an existing workspace a
/// template that cannot be read just leaves status.template as it was.
fn template_for(gathered: &mut gather::Gathered<'_>, action: &Action) -> Result<Option<Arc<TemplateInfo>>> {
    match gathered.template.take() {
        Some(Ok(info)) => Ok(Some(info)),
        Some(Err(error)) if *action == Action::CreateWorkspace => Err(error),
        Some(Err(error)) => {
            warn!(name = %gathered.resource.name_any(), %error, "cannot read the template");
            Ok(None)
        }
        None => Ok(None),
    }
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
