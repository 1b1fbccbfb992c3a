//! What the integration tests share: a real control plane (one per test
//! binary), a Coder simulator per test (or a real coderd, see [`coderd`]),
//! and the operator running in-process against both, restricted to the
//! test's own namespace.

#![allow(dead_code)]

pub mod coderd;
pub mod coderd_chats;
pub mod process;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatworkspace_operator::admin::Readiness;
use chatworkspace_operator::coder::{
    CoderClient, CreateWorkspaceBuildRequest, RateLimit, SessionToken, WorkspaceBuild, WorkspaceTransition,
};
use chatworkspace_operator::conditions;
use chatworkspace_operator::controller::{self, Context, Settings};
use chatworkspace_operator::crd::ChatWorkspace;
use chatworkspace_operator::credentials::Credentials;
use chatworkspace_operator::decision::Requeue;
use chatworkspace_operator::index::IndexSettings;
use chatworkspace_operator::metrics::Metrics;
use chatworkspace_operator::tenancy;
use coder_sim::{SimConfig, Simulator};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use testbed::ControlPlane;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Requeue intervals short enough that the simulator's fast timings drive
/// the tests in seconds.
pub fn fast_requeue() -> Requeue {
    Requeue {
        active: Duration::from_millis(200),
        agent: Duration::from_millis(200),
        probe_retry: Duration::from_millis(200),
        retry: Duration::from_secs(1),
        stable: Duration::from_secs(2),
    }
}

/// Index intervals on the simulator's fast scale.
pub fn fast_index() -> IndexSettings {
    IndexSettings {
        attention_interval: Duration::from_millis(300),
        active_interval: Duration::from_millis(200),
        full_interval: Duration::from_secs(3),
        page_size: 100,
        probe_interval: Duration::from_millis(500),
        probe_budget_per_minute: 6000,
        probe_concurrency: 8,
        probe_retry: Duration::from_millis(200),
        probe_fresh: Duration::from_millis(800),
        chat_interval: Duration::from_millis(500),
        chat_detail_interval: Duration::from_secs(2),
        chat_detail_budget_per_minute: 6000,
    }
}

/// A test against the simulator: the operator's side ([`Operated`], which
/// this derefs to) and the simulator it talks to.
pub struct Env {
    base: Operated,
    pub sim: Simulator,
}

impl Deref for Env {
    type Target = Operated;

    fn deref(&self) -> &Operated {
        &self.base
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut Operated {
        &mut self.base
    }
}

/// A test's namespace in the shared control plane and the operator serving
/// it, in-process, against one Coder (the simulator or a real coderd).
pub struct Operated {
    pub namespace: String,
    pub client: Client,
    pub api: Api<ChatWorkspace>,
    pub metrics: Arc<Metrics>,
    /// Applied to the operator's Coder traffic when it (re)starts.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// The operator's settings when it (re)starts.
    pub settings: Settings,
    /// Changes to the operator's settings, applied when it (re)starts.
    pub tweak: Option<fn(&mut Settings)>,
    /// Timeout of each of the operator's Coder requests.
    pub request_timeout: Duration,
    /// When set, the operator reads its default token from this file (and
    /// again whenever it changes), as from a mounted Secret.
    pub token_file: Option<std::path::PathBuf>,
    /// Coder URLs a `spec.credentialsRef` Secret may name besides the
    /// default one (the operator's `--allowed-coder-urls`).
    pub also_allowed_urls: Vec<String>,
    coder_url: String,
    coder_token: String,
    operator: Option<Operator>,
}

struct Operator {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Env {
    /// A client of the simulator with its token, not the operator's: what
    /// a person in Coder's dashboard, or Coder itself, does.
    pub fn coder_client(&self) -> CoderClient {
        CoderClient::new(&self.sim.url(), SessionToken::new(self.sim.token()).unwrap(), Duration::from_secs(5)).unwrap()
    }

    /// A build made in Coder from outside the operator: a person's Stop
    /// button, a delete in the dashboard, dormancy's auto-deletion.
    pub async fn build_in_coder(&self, id: uuid::Uuid, transition: WorkspaceTransition) -> WorkspaceBuild {
        let request = CreateWorkspaceBuildRequest::new(transition);
        self.coder_client().create_build(&id.to_string(), &request).await.expect("a build made in Coder")
    }

    /// A fresh namespace, a simulator with fast timings, and a running operator.
    pub async fn start(prefix: &str) -> Env {
        Self::start_with(prefix, SimConfig::fast()).await
    }

    pub async fn start_with(prefix: &str, config: SimConfig) -> Env {
        let mut env = Self::without_operator(prefix, config).await;
        env.start_operator();
        env
    }

    /// Everything but the operator, for tests that configure it first.
    pub async fn without_operator(prefix: &str, config: SimConfig) -> Env {
        let sim = Simulator::start(config).await.expect("start the Coder simulator");
        let mut base = Operated::without_operator(prefix, &sim.url(), &sim.token()).await;
        base.settings = Settings {
            requeue: fast_requeue(),
            concurrency: 8,
            namespaces: vec![base.namespace.clone()],
            template_ttl: Duration::from_secs(300),
            instance: "test".into(),
            index: fast_index(),
            install: "test".into(),
            // Tests of Coder's failures see them at once, unless they ask.
            transient_grace: Duration::ZERO,
            ..Settings::default()
        };
        base.request_timeout = Duration::from_secs(5);
        Env { base, sim }
    }
}

impl Operated {
    /// A fresh namespace and an operator (not started yet) that will talk to
    /// the Coder at `coder_url` with `coder_token`, with the production
    /// defaults of `chatworkspace-operator run` (see `src/main.rs`) but for
    /// the namespace it watches.
    pub async fn without_operator(prefix: &str, coder_url: &str, coder_token: &str) -> Operated {
        // The operator's logs, for a failing test: RUST_LOG=chatworkspace_operator=debug.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let plane = ControlPlane::shared();
        let namespace = plane.namespace(prefix).await;
        let client = plane.client().await;
        // The cluster admin's grant: this namespace may drive any Coder
        // user's workspaces with the operator's default credentials.
        grant(&client, &namespace, Some("*")).await;
        let api = Api::namespaced(client.clone(), &namespace);
        let settings = Settings {
            namespaces: vec![namespace.clone()],
            instance: "test".into(),
            install: "test".into(),
            ..Settings::default()
        };
        Operated {
            namespace,
            client,
            api,
            metrics: Arc::new(Metrics::default()),
            rate_limit: None,
            settings,
            tweak: None,
            request_timeout: Duration::from_secs(15),
            token_file: None,
            also_allowed_urls: Vec::new(),
            coder_url: coder_url.to_owned(),
            coder_token: coder_token.to_owned(),
            operator: None,
        }
    }

    pub fn settings(&self) -> Settings {
        let mut settings = self.settings.clone();
        if let Some(tweak) = self.tweak {
            tweak(&mut settings);
        }
        settings
    }

    /// Starts the operator (again), as a restarted process would: nothing
    /// carried over but what is in Kubernetes and Coder.
    pub fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "the operator is already running");
        let token = match &self.token_file {
            Some(path) => SessionToken::from_file(path).unwrap(),
            None => SessionToken::new(&self.coder_token).unwrap(),
        };
        let mut credentials = Credentials::new(
            Some((self.coder_url.clone(), token)),
            self.request_timeout,
            Some(self.metrics.clone()),
            self.rate_limit.clone(),
        )
        .unwrap();
        if let Some(path) = &self.token_file {
            credentials = credentials.with_default_token_file(path).unwrap();
        }
        if !self.also_allowed_urls.is_empty() {
            let mut allowed = self.also_allowed_urls.clone();
            allowed.push(self.coder_url.clone());
            credentials = credentials.with_allowed_urls(tenancy::urls::AllowedUrls::new(&allowed, None).unwrap());
        }
        let context = Arc::new(Context::new(self.client.clone(), credentials, self.metrics.clone(), self.settings()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(context, Arc::new(Readiness::default()), async move {
            let _ = stopped.await;
        }));
        self.operator = Some(Operator { stop, task });
    }

    /// A second operator install (its own name, the same namespace, Coder
    /// and token), as a second `helm install` watching the same namespace
    /// would be. It stops when the returned value is dropped.
    pub fn start_other_install(&self, install: &str) -> OtherInstall {
        let credentials = Credentials::new(
            Some((self.coder_url.clone(), SessionToken::new(&self.coder_token).unwrap())),
            self.request_timeout,
            None,
            None,
        )
        .unwrap();
        let settings = Settings { install: install.to_owned(), instance: install.to_owned(), ..self.settings() };
        let context = Arc::new(Context::new(self.client.clone(), credentials, Arc::new(Metrics::default()), settings));
        OtherInstall(tokio::spawn(controller::run(
            context,
            Arc::new(Readiness::default()),
            std::future::pending::<()>(),
        )))
    }

    /// Another namespace (granted `*` until the test says otherwise) that
    /// this test's operator watches too, once it is started; the returned
    /// view creates and reads resources there but runs no operator itself.
    pub async fn neighbour(&mut self, prefix: &str) -> Operated {
        assert!(self.operator.is_none(), "add neighbours before the operator starts");
        let neighbour = Operated::without_operator(prefix, &self.coder_url, &self.coder_token).await;
        self.settings.namespaces.push(neighbour.namespace.clone());
        neighbour
    }

    /// Sets (or, with `None`, removes) the namespace's grant of Coder owners.
    pub async fn grant(&self, owners: Option<&str>) {
        grant(&self.client, &self.namespace, owners).await;
    }

    /// Kills the operator at once, mid-reconcile if it is in one.
    pub fn kill_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.task.abort();
        }
    }

    /// Stops the operator gracefully and waits for it.
    pub async fn stop_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            let _ = operator.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(20), operator.task).await;
        }
    }

    pub async fn create(&self, name: &str, spec: serde_json::Value) -> ChatWorkspace {
        let object: ChatWorkspace = serde_json::from_value(json!({
            "apiVersion": "chat.coder.com/v1alpha1",
            "kind": "ChatWorkspace",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }))
        .expect("a valid ChatWorkspace");
        self.api.create(&PostParams::default(), &object).await.expect("create ChatWorkspace")
    }

    pub async fn get(&self, name: &str) -> ChatWorkspace {
        self.api.get(name).await.expect("get ChatWorkspace")
    }

    pub async fn set_desired_state(&self, name: &str, state: &str) {
        let patch = json!({"spec": {"desiredState": state}});
        self.api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch desiredState");
    }

    pub async fn delete(&self, name: &str) {
        self.api.delete(name, &DeleteParams::default()).await.expect("delete ChatWorkspace");
    }

    /// Waits until `check` holds for the resource, or fails the test with
    /// the resource's last status.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ChatWorkspace) -> bool,
    ) -> ChatWorkspace {
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.api.get_opt(name).await.expect("get ChatWorkspace");
            if let Some(current) = &current
                && check(current)
            {
                return current.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {name} to be {what}; last status: {}",
                    serde_json::to_string_pretty(&current.and_then(|c| c.status)).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for condition `type_` to have `status` (and `reason`, if given)
    /// for the current generation.
    pub async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> ChatWorkspace {
        let what = format!("{type_}={status}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default());
        self.wait_for(name, &what, timeout, |cws| {
            let generation = cws.metadata.generation;
            cws.status.as_ref().is_some_and(|s| {
                conditions::find(&s.conditions, type_).is_some_and(|c| {
                    c.status == status && reason.is_none_or(|r| c.reason == r) && c.observed_generation == generation
                })
            })
        })
        .await
    }

    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.api.get_opt(name).await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "{name} still exists after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Env {
    /// The Coder workspace id the simulator holds for `name` (owned by the
    /// simulator's default user).
    pub fn workspace_id(&self, owner: &str, name: &str) -> uuid::Uuid {
        self.sim.workspace_id(owner, name).unwrap_or_else(|| panic!("no workspace {owner}/{name} in the simulator"))
    }

    /// Transitions of every build of a workspace, in order.
    pub fn transitions(&self, workspace: uuid::Uuid) -> Vec<String> {
        self.sim.builds(workspace).into_iter().map(|b| b.transition).collect()
    }

    /// Requests whose status was 409 for a build: the operator tried to stack
    /// a build on an active one.
    pub fn stacked_builds(&self) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/builds") && r.status == 409)
            .count()
    }
}

impl Operated {
    /// Creates a Secret `name` with a Coder URL and token, for
    /// `spec.credentialsRef`.
    pub async fn credentials_secret(&self, name: &str, url: &str, token: &str) {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": self.namespace},
            "stringData": {"url": url, "token": token},
        }))
        .expect("a Secret");
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the credentials Secret");
    }

    /// Waits until Events with every one of `reasons` exist for `name`
    /// (they are published right after the status write a test waits on),
    /// and returns all of them as (reason, note).
    pub async fn wait_for_events(&self, name: &str, reasons: &[&str]) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(name).await;
            if reasons.iter().all(|wanted| events.iter().any(|(reason, _)| reason == wanted)) {
                return events;
            }
            assert!(Instant::now() < deadline, "events {reasons:?} not all published for {name}: {events:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = events.list(&Default::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

/// The cluster admin's act: annotates `namespace` with the Coder owners its
/// ChatWorkspaces may drive with the operator's default credentials.
pub async fn grant(client: &Client, namespace: &str, owners: Option<&str>) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let patch = json!({"metadata": {"annotations": {tenancy::OWNERS_ANNOTATION: owners}}});
    namespaces.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate the namespace");
}

/// A new namespace whose ChatWorkspaces may use the default credentials for
/// any Coder owner.
pub async fn granted_namespace(plane: &ControlPlane, prefix: &str) -> String {
    let namespace = plane.namespace(prefix).await;
    grant(&plane.client().await, &namespace, Some("*")).await;
    namespace
}

/// A client acting as `user` (impersonated by the admin), bound in
/// `namespace` to the chart's `chatworkspace-edit` ClusterRole, which is
/// applied from the chart as `helm template` renders it: real RBAC, not the
/// admin's rights.
pub async fn editor(plane: &ControlPlane, namespace: &str, user: &str) -> Client {
    let helm = testbed::tool("helm").unwrap_or_else(|err| panic!("{err:#}"));
    let mut render = std::process::Command::new(helm);
    render
        .args(["template", "roles"])
        .arg(process::chart_dir())
        .args(["--show-only", "templates/rbac-aggregated.yaml"]);
    let roles = process::run(render, "helm template the aggregated roles");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), roles).unwrap();
    let mut apply = plane.kubectl();
    apply.args(["apply", "--server-side", "--force-conflicts", "-f"]).arg(file.path());
    process::run(apply, "kubectl apply the aggregated roles");
    let mut bind = plane.kubectl();
    bind.args(["create", "rolebinding", "editor", "--clusterrole", "chatworkspace-edit", "--user", user]);
    bind.args(["--namespace", namespace]);
    process::run(bind, "kubectl create rolebinding");

    let mut config = kube::Config::from_custom_kubeconfig(plane.kubeconfig(), &Default::default())
        .await
        .expect("the control plane's kubeconfig");
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("a client for the editor")
}

/// A second operator install, stopped when dropped.
pub struct OtherInstall(JoinHandle<()>);

impl Drop for OtherInstall {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Operated {
    fn drop(&mut self) {
        self.kill_operator();
    }
}

pub const LONG: Duration = Duration::from_secs(30);

/// Whether the operator has written `status`: a resource it has not written
/// yet reads back with the schema's default, `observedGeneration: 0` alone.
pub fn written_by_operator(status: Option<&chatworkspace_operator::crd::ChatWorkspaceStatus>) -> bool {
    let unwritten =
        chatworkspace_operator::crd::ChatWorkspaceStatus { observed_generation: Some(0), ..Default::default() };
    status.is_some_and(|status| *status != unwritten)
}
