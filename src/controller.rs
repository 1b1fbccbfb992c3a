//! The reconciler: gathers what the decision core needs (the resource, a
//! fresh Coder read, a probe), calls `decision::decide`, performs the one
//! action it chose, and writes status and Events. Everything it decides is
//! in `decision`; this module only does I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::coder::{
    CoderClient, CoderError, CreateWorkspaceBuildRequest, CreateWorkspaceRequest, ParameterValue, Workspace,
    WorkspaceTransition,
};
use crate::conditions::{self, DEGRADED, READY, Verdict};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, FIELD_MANAGER, FINALIZER, Phase};
use crate::credentials::Credentials;
use crate::decision::{
    self, Action as CoreAction, BuildPlan, BuildReason, Cleanup, Decision, Inputs, Observed, Requeue,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observer::{Observer, ObserverSettings};
use crate::templates::Templates;

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
    /// How Coder is observed: shared lists, probe caching.
    pub observer: ObserverSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            requeue: Requeue::default(),
            concurrency: 16,
            namespaces: Vec::new(),
            template_ttl: Duration::from_secs(300),
            instance: "chatworkspace-operator".into(),
            observer: ObserverSettings::default(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub kube: kube::Client,
    pub credentials: Credentials,
    pub templates: Templates,
    pub observer: Observer,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    recorder: Recorder,
    /// The controllers' caches, for the one-actor-per-workspace check.
    stores: Mutex<Vec<Store<ChatWorkspace>>>,
    /// Consecutive transient failures per object, for backoff.
    failures: Mutex<HashMap<ObjectRef<ChatWorkspace>, u32>>,
}

impl Context {
    pub fn new(kube: kube::Client, credentials: Credentials, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(settings.instance.clone()) };
        Self {
            recorder: Recorder::new(kube.clone(), reporter),
            templates: Templates::new(settings.template_ttl),
            observer: Observer::new(settings.observer),
            kube,
            credentials,
            metrics,
            settings,
            stores: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    fn conflict(&self, resource: &ChatWorkspace, workspace_id: Option<&str>) -> Option<String> {
        let stores = self.stores.lock().expect("stores");
        let others: Vec<Arc<ChatWorkspace>> = stores.iter().flat_map(|s| s.state()).collect();
        crate::claims::conflicting(resource, workspace_id, others.iter().map(|o| o.as_ref()))
    }
}

/// Runs the controller until `shutdown` resolves; the reconcile in flight
/// finishes first.
/// `readiness` turns true once every watch has listed its resources.
pub async fn run(
    context: Arc<Context>,
    readiness: Arc<crate::admin::Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = Box::pin(shutdown).shared();
    let apis: Vec<Api<ChatWorkspace>> = if context.settings.namespaces.is_empty() {
        vec![Api::all(context.kube.clone())]
    } else {
        context.settings.namespaces.iter().map(|ns| Api::namespaced(context.kube.clone(), ns)).collect()
    };
    let mut controllers = Vec::new();
    for api in apis {
        let (reader, writer) = reflector::store();
        let changes = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(spec_or_lifecycle_changed, PredicateConfig::default());
        let controller = Controller::for_stream(changes, reader)
            .with_config(controller::Config::default().concurrency(context.settings.concurrency))
            .graceful_shutdown_on(shutdown.clone());
        context.stores.lock().expect("stores").push(controller.store());
        let context = context.clone();
        controllers.push(
            controller
                .run(reconcile, error_policy, context)
                .for_each(|result| async move {
                    if let Err(error) = result {
                        debug!(%error, "reconcile did not complete");
                    }
                })
                .boxed(),
        );
    }
    let stores = context.stores.lock().expect("stores").clone();
    tokio::spawn(async move {
        for store in stores {
            // kube-runtime wakes only the latest of several waiters on a
            // store, and the controller waits on it too: look again until
            // it is ready.
            loop {
                match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
        info!("caches synced; ready");
        readiness.set(true);
    });
    futures::future::join_all(controllers).await;
}

/// Reconcile on changes of the spec, the finalizers or deletion, but not on
/// the operator's own status writes: each of those would otherwise cost one
/// more reconcile, and one more Coder read, for nothing.
fn spec_or_lifecycle_changed(resource: &ChatWorkspace) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    resource.metadata.generation.hash(&mut hasher);
    resource.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    resource.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

fn error_policy(resource: Arc<ChatWorkspace>, error: &Error, context: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(resource.as_ref());
    let failures = {
        let mut failures = context.failures.lock().expect("failures");
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    // 1s, 2s, 4s … capped at five minutes: converge soon after a blip,
    // never hammer a Coder that is down.
    let delay = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    warn!(name = %resource.name_any(), namespace = ?resource.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(resource: Arc<ChatWorkspace>, context: Arc<Context>) -> Result<Action> {
    let _timer = context.metrics.reconcile_timer();
    let namespace = resource.namespace().unwrap_or_default();
    let api: Api<ChatWorkspace> = Api::namespaced(context.kube.clone(), &namespace);
    let result = if resource.metadata.deletion_timestamp.is_some() {
        if resource.finalizers().iter().any(|f| f == FINALIZER) {
            cleanup(&api, &resource, &context).await
        } else {
            Ok(Action::await_change())
        }
    } else {
        if !resource.finalizers().iter().any(|f| f == FINALIZER) {
            add_finalizer(&api, &resource).await?;
        }
        apply(&api, &resource, &context).await
    };
    match &result {
        Ok(_) => {
            context.metrics.reconciled("ok");
            context.failures.lock().expect("failures").remove(&ObjectRef::from_obj(resource.as_ref()));
        }
        Err(error) => context.metrics.failed(error.reason()),
    }
    result
}

/// What one pass of `apply` produced.
struct Applied {
    status: ChatWorkspaceStatus,
    requeue: Duration,
    events: Vec<decision::Event>,
}

async fn apply(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Action> {
    let previous = resource.status.clone().unwrap_or_default();
    match converge(resource, &previous, context).await {
        Ok(applied) => {
            write_status(api, resource, &previous, &applied.status).await?;
            publish(context, resource, &previous, &applied.status, &applied.events).await;
            Ok(Action::requeue(applied.requeue))
        }
        Err(error) => {
            let status = failed_status(resource, &previous, &error);
            write_status(api, resource, &previous, &status).await?;
            publish(context, resource, &previous, &status, &[]).await;
            if error.is_transient() {
                return Err(error);
            }
            warn!(name = %resource.name_any(), %error, "reconcile needs a change to succeed");
            context.metrics.error_kind(error.reason());
            if error.waits_for_spec_change() {
                // Only a new spec can fix it; a spec change triggers a reconcile.
                Ok(Action::await_change())
            } else {
                // A token, template or Secret may be fixed outside Kubernetes'
                // view of this resource: look again slowly, never in a storm.
                Ok(Action::requeue(context.settings.requeue.stable.max(Duration::from_secs(60))))
            }
        }
    }
}

/// Observe, decide, act, and decide again on what the action produced.
async fn converge(resource: &ChatWorkspace, previous: &ChatWorkspaceStatus, context: &Context) -> Result<Applied> {
    let policy = resource.spec.recovery.policy().map_err(Error::InvalidSpec)?;
    let credentials = context.credentials.for_resource(&context.kube, resource).await?;
    let coder = &credentials.client;
    let template =
        context.templates.resolve(&credentials, resource.spec.organization.as_deref(), &resource.spec.template).await;
    let owner = resource.spec.owner.clone().unwrap_or_else(|| "me".into());
    let name = resource.workspace_name();
    let generation = resource.metadata.generation.unwrap_or_default();

    let observation = context.observer.workspace(&credentials, &owner, &name).await?;
    let (mut workspace, mut fresh) = (observation.workspace, observation.fresh);
    let conflict = context.conflict(resource, workspace.as_ref().map(|w| w.id.as_str()));
    let inputs = Gathered { resource, previous, policy, generation, context, coder, conflict: &conflict };
    let mut decision = inputs.decide(&workspace, fresh).await;
    if !fresh && decision.action != CoreAction::None {
        // Never act on a shared list's view: read this workspace (and probe
        // its agent) again, and decide on that.
        workspace = context.observer.fresh(&credentials, &owner, &name).await?;
        fresh = true;
        decision = inputs.decide(&workspace, fresh).await;
    }
    if decision.action == CoreAction::Refresh {
        // The core asked for a fresh look although this one was fresh: a
        // decision it will make on the next pass, not in a loop here.
        decision.action = CoreAction::None;
    }

    // The template only blocks a create; for an existing workspace a
    // template that cannot be read just leaves status.template as it was.
    let template = match template {
        Ok(info) => Some(info),
        Err(error) if decision.action == CoreAction::CreateWorkspace => return Err(error),
        Err(error) => {
            warn!(name = %resource.name_any(), %error, "cannot read the template");
            None
        }
    };

    let mut events = std::mem::take(&mut decision.events);
    let acted = match decision.action.clone() {
        CoreAction::None | CoreAction::Refresh => None,
        CoreAction::CreateWorkspace => {
            let template = template.as_ref().expect("resolved above for a create");
            let created = create_workspace(resource, &owner, &name, template, coder).await;
            match created {
                Ok(workspace) => {
                    context.metrics.build("start", "Create");
                    if let Some(request) = decision.status.last_build_request.as_mut() {
                        request.build_id = Some(workspace.latest_build.id.clone());
                    }
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
                // on the next pass rather than guessing now.
                Err(Error::Coder(CoderError::Conflict { .. })) => None,
                Err(error) => return Err(error),
            }
        }
        CoreAction::Build(plan) => {
            let current = workspace.as_ref().expect("a build is only decided for an observed workspace");
            match issue_build(current, &plan, coder).await {
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
    if let Some(workspace) = &acted {
        context.observer.remember(&credentials, &owner, &name, Some(workspace.clone())).await;
    }
    if let Some(workspace) = acted {
        // Describe the state the action produced (a build under way), keeping
        // what the first decision recorded (recovery stage, build request).
        let after = decision::decide(&Inputs {
            spec: &resource.spec,
            policy,
            generation,
            previous: &status,
            observed: Observed::Workspace { workspace: Some(&workspace), fresh: true, probe: None },
            now: Timestamp::now(),
            requeue: context.settings.requeue,
        });
        status = after.status;
        requeue = requeue.min(after.requeue);
    }
    if let Some(info) = &template {
        status.template = Some(info.status());
    }
    Ok(Applied { status, requeue, events })
}

/// What one reconcile decides from, besides the workspace itself.
struct Gathered<'a> {
    resource: &'a ChatWorkspace,
    previous: &'a ChatWorkspaceStatus,
    policy: crate::crd::RecoveryPolicy,
    generation: i64,
    context: &'a Context,
    coder: &'a CoderClient,
    conflict: &'a Option<String>,
}

impl Gathered<'_> {
    /// Probes the chat agent if the core will judge it, then decides.
    async fn decide(&self, workspace: &Option<Workspace>, fresh: bool) -> Decision {
        let agent = workspace.as_ref().and_then(|w| decision::needs_probe(w, self.resource.spec.agent_name.as_deref()));
        let probe = match agent {
            Some(agent) if self.conflict.is_none() => {
                Some(self.context.observer.probe(self.coder, agent, self.policy.probe_timeout).await)
            }
            _ => None,
        };
        let observed = match self.conflict {
            Some(other) => Observed::Conflict { other: other.clone() },
            None => Observed::Workspace { workspace: workspace.as_ref(), fresh, probe: probe.as_ref() },
        };
        decision::decide(&Inputs {
            spec: &self.resource.spec,
            policy: self.policy,
            generation: self.generation,
            previous: self.previous,
            observed,
            now: Timestamp::now(),
            requeue: self.context.settings.requeue,
        })
    }
}

async fn create_workspace(
    resource: &ChatWorkspace,
    owner: &str,
    name: &str,
    template: &crate::templates::TemplateInfo,
    coder: &CoderClient,
) -> Result<Workspace> {
    let preset = resource.spec.preset.as_ref().map(|wanted| template.preset(wanted)).transpose()?;
    let request = CreateWorkspaceRequest {
        name: name.to_string(),
        template_id: resource.spec.template.version_id.is_none().then(|| template.template.id.clone()),
        template_version_id: resource.spec.template.version_id.clone(),
        template_version_preset_id: preset.map(|p| p.id.clone()),
        rich_parameter_values: resource
            .spec
            .parameters
            .iter()
            .map(|p| ParameterValue { name: p.name.clone(), value: p.value.clone() })
            .collect(),
        claim_prebuild_if_available: preset.and_then(|p| p.desired_prebuild_instances).filter(|n| *n > 0).map(|_| true),
        ..CreateWorkspaceRequest::default()
    };
    info!(workspace = name, owner, template = %template.template.name, "creating workspace");
    Ok(coder.create_workspace(owner, &request).await?)
}

async fn issue_build(
    workspace: &Workspace,
    plan: &BuildPlan,
    coder: &CoderClient,
) -> Result<crate::coder::WorkspaceBuild> {
    // Never a preset or parameters: a build of an existing workspace uses
    // its current values (chatd's start_workspace).
    let request = CreateWorkspaceBuildRequest {
        template_version_id: plan.template_version_id.clone(),
        ..CreateWorkspaceBuildRequest::new(plan.transition)
    };
    info!(
        workspace = %workspace.name, owner = %workspace.owner_name, transition = plan.transition.as_str(),
        reason = plan.reason.as_str(), "requesting build"
    );
    Ok(coder.create_build(&workspace.id, &request).await?)
}

/// The status to write when a reconcile could not complete.
fn failed_status(resource: &ChatWorkspace, previous: &ChatWorkspaceStatus, error: &Error) -> ChatWorkspaceStatus {
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

async fn write_status(
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

/// Events for what the decision reported, and for every state reached.
async fn publish(
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
    if all.is_empty() {
        return;
    }
    let reference = resource.object_ref(&());
    for event in all {
        if event.reason == "Recovered" {
            context.metrics.recovery("succeeded");
        }
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            warn!(%error, reason = %event.reason, "cannot publish event");
        }
    }
}

fn flipped_true<'a>(previous: &[Condition], current: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    let now = conditions::find(current, type_).filter(|c| c.status == "True")?;
    let before = conditions::find(previous, type_);
    let same = before.is_some_and(|b| b.status == "True" && b.reason == now.reason);
    (!same).then_some(now)
}

async fn add_finalizer(api: &Api<ChatWorkspace>, resource: &ChatWorkspace) -> Result<()> {
    let mut finalizers = resource.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    set_finalizers(api, resource, finalizers).await
}

async fn remove_finalizer(api: &Api<ChatWorkspace>, resource: &ChatWorkspace) -> Result<()> {
    let finalizers = resource.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, resource, finalizers).await
}

/// A merge patch that carries the resourceVersion it was computed from, so
/// it fails (and the reconcile retries) instead of dropping another
/// controller's finalizer written meanwhile.
async fn set_finalizers(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": resource.resource_version()},
    });
    api.patch(&resource.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Applies `deletionPolicy`, then lets the resource go.
async fn cleanup(api: &Api<ChatWorkspace>, resource: &ChatWorkspace, context: &Context) -> Result<Action> {
    let policy = resource.spec.deletion_policy;
    let workspace_id = resource.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.as_str());
    // A resource that lost a conflict never drove the workspace, and an
    // orphaned workspace needs no Coder at all.
    if policy == crate::crd::DeletionPolicy::Orphan || context.conflict(resource, workspace_id).is_some() {
        remove_finalizer(api, resource).await?;
        return Ok(Action::await_change());
    }
    let credentials = context.credentials.for_resource(&context.kube, resource).await?;
    let coder = &credentials.client;
    let owner = resource.spec.owner.clone().unwrap_or_else(|| "me".into());
    let workspace = context.observer.fresh(&credentials, &owner, &resource.workspace_name()).await?;
    match decision::decide_cleanup(policy, workspace.as_ref()) {
        Cleanup::Done => {
            info!(name = %resource.name_any(), ?policy, "deletion policy applied; removing finalizer");
            remove_finalizer(api, resource).await?;
            Ok(Action::await_change())
        }
        Cleanup::Wait => Ok(Action::requeue(context.settings.requeue.active)),
        Cleanup::Build(transition) => {
            let workspace = workspace.expect("a cleanup build is only decided for an observed workspace");
            let plan = BuildPlan { transition, template_version_id: None, reason: BuildReason::DesiredState };
            match issue_build(&workspace, &plan, coder).await {
                Ok(build) => {
                    context.metrics.build(transition.as_str(), "Deletion");
                    let event = KubeEvent {
                        type_: EventType::Normal,
                        reason: "BuildRequested".into(),
                        note: Some(format!(
                            "Requested {} build #{} because the resource is being deleted (deletionPolicy {policy:?}).",
                            transition.as_str(),
                            build.build_number
                        )),
                        action: "Delete".into(),
                        secondary: None,
                    };
                    if let Err(error) = context.recorder.publish(&event, &resource.object_ref(&())).await {
                        warn!(%error, "cannot publish event");
                    }
                }
                Err(Error::Coder(CoderError::Conflict { .. })) => {}
                Err(error) => return Err(error),
            }
            Ok(Action::requeue(context.settings.requeue.active))
        }
    }
}
