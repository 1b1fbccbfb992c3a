//! `chatworkspace-operator run` runs the controller; `chatworkspace-operator
//! crd` prints the CustomResourceDefinition that `crds/` holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use tokio::sync::watch;

use chatworkspace_operator::admin::{self, Readiness};
use chatworkspace_operator::coder::{RateLimit, SessionToken};
use chatworkspace_operator::controller::{self, Context, Settings};
use chatworkspace_operator::crd::{ChatWorkspace, parse_duration};
use chatworkspace_operator::credentials::Credentials;
use chatworkspace_operator::decision::Requeue;
use chatworkspace_operator::index::IndexSettings;
use chatworkspace_operator::leader::{self, Fence, FenceLayer, LeaseSettings, Role};
use chatworkspace_operator::metrics::Metrics;
use chatworkspace_operator::telemetry::{self, LogFormat};
use chatworkspace_operator::tenancy::urls::AllowedUrls;

/// jemalloc, chosen by measurement (docs/performance-history.md): at
/// 10,000 resources it keeps less memory than glibc's malloc after the
/// start's burst of lists and writes. Only the binary
/// uses it; the library and its tests keep the system allocator, and so
/// does a binary built with `--features system-allocator`, for heap
/// profilers that see only malloc (heaptrack; docs/performance.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (its `malloc_conf`; the
/// `_RJEM_MALLOC_CONF` environment variable overrides them). A background
/// thread returns freed pages to the system a tenth of a second after they
/// were freed. Without it, jemalloc purges only while the operator
/// allocates, and an operator at rest after a burst (the start's lists and
/// writes, or a relist after the apiserver restarted) kept what the burst
/// used: 56.5 MiB instead of 41.1 at 10,000 resources (docs/performance.md).
/// Returning pages at once instead (`dirty_decay_ms:0`) settles as low but
/// costs the operator's hot path half again the CPU. One arena, not four
/// per core, and no thread cache for objects over 1 KiB: the operator's
/// heap is a few long-lived maps, which spread over many arenas' half-empty
/// pages (3 to 6 MiB less at 10,000 resources).
#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1,tcache_max:1024\0";

#[derive(Parser)]
#[command(version, about = "Keeps Coder workspaces used by AI chats in their desired state, and recovers dead agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ChatWorkspace CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (kubeconfig or in-cluster configuration).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Default Coder deployment URL, used by resources without spec.credentialsRef.
    #[arg(long, env = "CODER_URL")]
    coder_url: Option<String>,
    /// File holding the default Coder session token (e.g. a mounted Secret),
    /// read again whenever it changes: a rotated Secret needs no restart.
    /// The token may also come from the CODER_SESSION_TOKEN environment variable.
    #[arg(long, env = "CODER_TOKEN_FILE")]
    coder_token_file: Option<PathBuf>,
    /// Coder URLs (origins: scheme, host, port) a spec.credentialsRef Secret
    /// may name (repeat or comma-separate; `*`: any). Default: only the
    /// origin of --coder-url, so a namespace cannot make the operator call
    /// arbitrary addresses.
    #[arg(long = "allowed-coder-url", env = "ALLOWED_CODER_URLS", value_delimiter = ',')]
    allowed_coder_urls: Vec<String>,
    /// Watch only these namespaces (repeat or comma-separate); default: all.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Resources reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Timeout of one Coder API request.
    #[arg(long, env = "CODER_REQUEST_TIMEOUT", default_value = "15s", value_parser = duration)]
    coder_request_timeout: Duration,
    /// How often a settled resource is reconciled anyway: a safety net only,
    /// since the Coder index wakes a resource when its workspace changes.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "5m", value_parser = duration)]
    resync_interval: Duration,
    /// How often a resource with a build or agent start under way is looked
    /// at, and how often the index reads such workspaces again.
    #[arg(long, env = "ACTIVE_INTERVAL", default_value = "2s", value_parser = duration)]
    active_interval: Duration,
    /// How long template and preset reads are reused.
    #[arg(long, env = "TEMPLATE_CACHE_TTL", default_value = "5m", value_parser = duration)]
    template_cache_ttl: Duration,
    /// How often the workspaces that need attention (unhealthy agents, how
    /// many run) are looked at, for every owner a token serves at once: the
    /// delay to notice an agent's death or a stop made in Coder. Two small
    /// requests per token, and the count of running workspaces (one
    /// request) once more halfway between.
    #[arg(long, env = "ATTENTION_INTERVAL", default_value = "10s", value_parser = duration)]
    attention_interval: Duration,
    /// How often every workspace is listed, as a backstop; its pages are
    /// spread over nine tenths of this interval.
    #[arg(long, env = "FULL_LIST_INTERVAL", default_value = "5m", value_parser = duration)]
    full_list_interval: Duration,
    /// How often the chats bound to the watched workspaces are looked up
    /// (one request per 25 workspaces of any owners; each owner at its own
    /// point of the interval).
    #[arg(long, env = "CHAT_INTERVAL", default_value = "5m", value_parser = duration)]
    chat_interval: Duration,
    /// How often a bound chat's details (status, sub-agents, context) are
    /// read again when nothing else asked for them: a new binding and the
    /// operator's own builds do.
    #[arg(long, env = "CHAT_DETAIL_INTERVAL", default_value = "1h", value_parser = duration)]
    chat_detail_interval: Duration,
    /// Those slow-cadence chat reads per minute, across all chats (they
    /// share Coder's budget); reads for a new binding or after the
    /// operator's own build are not counted here.
    #[arg(long, env = "CHAT_DETAIL_BUDGET_PER_MINUTE", default_value_t = 60)]
    chat_detail_budget_per_minute: u32,
    /// How often a healthy agent is probed, at most.
    #[arg(long, env = "PROBE_INTERVAL", default_value = "5m", value_parser = duration)]
    probe_interval: Duration,
    /// Probes of healthy agents per minute, across all of them (they share
    /// Coder's budget; docs/performance.md). Probes that decide something
    /// (a disconnected agent, a new one, a retry) are not counted here.
    #[arg(long, env = "PROBE_BUDGET_PER_MINUTE", default_value_t = 120)]
    probe_budget_per_minute: u32,
    /// Probes in flight at once.
    #[arg(long, env = "PROBE_CONCURRENCY", default_value_t = 8)]
    probe_concurrency: usize,
    /// How long a transient failure (Coder's 5xx or a timeout, the
    /// apiserver) must last before a resource shows it as Degraded.
    #[arg(long, env = "TRANSIENT_GRACE", default_value = "1m", value_parser = duration)]
    transient_grace: Duration,
    /// How long, from a resource's deletionTimestamp, a deletion whose
    /// credentials Secret is gone or whose namespace is being deleted may
    /// wait for deletionPolicy; then the workspace is left in Coder (as
    /// Orphan) with a Warning Event, so the namespace can go.
    #[arg(long, env = "CLEANUP_TIMEOUT", default_value = "5m", value_parser = duration)]
    cleanup_timeout: Duration,
    /// Most Coder requests per second of each credentials (a Coder URL and
    /// token), across every workspace (0: unlimited). The default stays under 60 % of coderd's default
    /// per-user limit (512 per minute); raise it with coderd's
    /// --api-rate-limit, or for an Owner token that bypasses the limit.
    #[arg(long, env = "CODER_MAX_RPS", default_value_t = 5.0)]
    coder_max_rps: f64,
    /// Requests allowed at once above that rate after a quiet spell.
    #[arg(long, env = "CODER_BURST", default_value_t = 10)]
    coder_burst: u32,
    /// Name of this replica in Events and leases; default: the host name
    /// (with a random suffix in the lease, where it must be unique).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile only while holding a coordination.k8s.io Lease, so that of
    /// several replicas exactly one acts; the others stand by, ready.
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    /// Name of this operator install, claimed on every ChatWorkspace it
    /// drives (annotation chat.coder.com/operator): another install serving
    /// the same namespace leaves those alone and warns. Default: the Lease's
    /// namespace/name with leader election, else `chatworkspace-operator`.
    #[arg(long, env = "INSTALL_NAME")]
    install_name: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "chatworkspace-operator")]
    lease_name: String,
    /// Namespace of the Lease; default: the operator's own (in a pod) or the
    /// kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a Lease that stopped being renewed still belongs to its holder;
    /// a killed leader is replaced after about this long.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
    /// How long a leader keeps acting while it cannot renew; shorter than the
    /// lease duration, so it stops before a standby may start.
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    lease_renew_deadline: Duration,
    /// How often the leader renews and a standby tries to take over.
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    lease_retry_period: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&ChatWorkspace::crd())?);
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let token = match (&args.coder_token_file, std::env::var("CODER_SESSION_TOKEN").ok()) {
        (Some(path), _) => Some(SessionToken::from_file(path).context("reading --coder-token-file")?),
        (None, Some(token)) => Some(SessionToken::new(&token).context("CODER_SESSION_TOKEN")?),
        (None, None) => None,
    };
    let default = match (args.coder_url.clone(), token) {
        (Some(url), Some(token)) => Some((url, token)),
        (None, None) => {
            tracing::warn!("no default Coder credentials: only resources with spec.credentialsRef can be served");
            None
        }
        (Some(_), None) => anyhow::bail!("--coder-url needs a token: --coder-token-file or CODER_SESSION_TOKEN"),
        (None, Some(_)) => anyhow::bail!("a Coder token was given without --coder-url"),
    };

    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let rate_limit = (args.coder_max_rps > 0.0).then(|| Arc::new(RateLimit::new(args.coder_max_rps, args.coder_burst)));
    let default_url = default.as_ref().map(|(url, _)| url.clone());
    let allowed = AllowedUrls::new(&args.allowed_coder_urls, default_url.as_deref())
        .map_err(|error| anyhow::anyhow!("--allowed-coder-url: {error}"))?;
    tracing::info!(%allowed, "Coder URLs a spec.credentialsRef Secret may name");
    let mut credentials = Credentials::new(default, args.coder_request_timeout, Some(metrics.clone()), rate_limit)?
        .with_allowed_urls(allowed);
    if let (Some(path), Some(_)) = (&args.coder_token_file, &default_url) {
        credentials = credentials.with_default_token_file(path)?;
    }
    let config = kube::Config::infer().await.context("connecting to Kubernetes")?;
    // The election renews through a client of its own; the controller's
    // writes pass the fence those renewals open.
    let elector_kube = kube::Client::try_from(config.clone()).context("connecting to Kubernetes")?;
    let election = args.leader_election.then(|| lease_settings(&args, &elector_kube)).transpose()?;
    let install = args.install_name.clone().unwrap_or_else(|| match &election {
        Some(lease) => format!("{}/{}", lease.namespace, lease.name),
        None => "chatworkspace-operator".into(),
    });
    let leadership = election.map(|lease| leader::spawn(elector_kube, lease));
    let fence = leadership.as_ref().map_or_else(Fence::unbounded, leader::Leadership::fence);
    let credentials = credentials.with_fence(fence.clone());
    let kube = kube::client::ClientBuilder::try_from(config)
        .context("connecting to Kubernetes")?
        .with_layer(&FenceLayer::new(fence.clone()))
        .build();
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let settings = Settings {
        requeue: Requeue {
            active: args.active_interval,
            agent: args.active_interval,
            stable: args.resync_interval,
            ..Requeue::default()
        },
        concurrency: args.concurrency,
        transient_grace: args.transient_grace,
        cleanup_timeout: args.cleanup_timeout,
        cleanup_backoff: chatworkspace_operator::decision::CLEANUP_RETRY,
        namespaces: args.namespaces.clone(),
        template_ttl: args.template_cache_ttl,
        instance: identity,
        index: IndexSettings {
            attention_interval: args.attention_interval,
            active_interval: args.active_interval,
            full_interval: args.full_list_interval,
            probe_interval: args.probe_interval,
            probe_budget_per_minute: args.probe_budget_per_minute,
            probe_concurrency: args.probe_concurrency,
            chat_interval: args.chat_interval,
            chat_detail_interval: args.chat_detail_interval,
            chat_detail_budget_per_minute: args.chat_detail_budget_per_minute,
            ..IndexSettings::default()
        },
        install,
        ..Settings::default()
    };
    tracing::info!(install = %settings.install, "claiming ChatWorkspaces for this install");
    let context = Arc::new(Context::new(kube, credentials, metrics.clone(), settings));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let signalled = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing reconciles in flight");
        signalled.send_replace(true);
    });

    let admin = tokio::spawn(admin::serve(args.admin_addr, metrics.clone(), readiness.clone(), stopped()));
    let outcome = match leadership {
        Some(leadership) => run_elected(context, readiness, metrics.clone(), leadership, &stopped).await,
        None => {
            metrics.leader.set(1);
            reconcile_until(context, readiness, stopped).await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    // The admin server goes with the work, also when the lease was lost.
    stop_tx.send_replace(true);
    admin.await??;
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

fn lease_settings(args: &RunArgs, kube: &kube::Client) -> anyhow::Result<LeaseSettings> {
    let settings = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone().unwrap_or_else(|| kube.default_namespace().to_owned()),
        identity: args.identity.clone().unwrap_or_else(|| leader::unique_identity(&hostname())),
        lease_duration: args.lease_duration,
        renew_deadline: args.lease_renew_deadline,
        retry_period: args.lease_retry_period,
    };
    settings.validate()?;
    Ok(settings)
}

/// Why a leader stops reconciling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Halt {
    Shutdown,
    LostLease,
}

/// Stands by until this replica holds the Lease, reconciles while it does,
/// and releases it on shutdown. Losing the Lease (the election says so, or
/// the fence closed by this replica's own clock) cancels the reconciles in
/// flight at once and ends the process with an error, as client-go's
/// controllers do: the restarted container joins the election again as a
/// standby, with nothing cached from its time as leader.
async fn run_elected<F>(
    context: Arc<Context>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    leadership: leader::Leadership,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let fence = leadership.fence();
    let mut role = leadership.role();
    let leading = tokio::select! {
        () = stopped() => false,
        result = stand_by(&mut role, &readiness) => {
            result?;
            true
        }
    };

    if !leading {
        // Stopped as a standby: nothing to release; dropping `leadership`
        // ends the election.
        return Ok(());
    }

    metrics.leader.set(1);
    // Ready again once the controller's caches have synced.
    readiness.set(false);
    // Why the controller stops, set by whichever comes first. `halt` lives
    // to the end of this function: a dropped sender would end the waits on
    // `halted` early.
    let (halt, halted) = watch::channel(None);
    let watcher = tokio::spawn({
        let (stop, halt) = (stopped(), halt.clone());
        async move {
            let reason = tokio::select! {
                () = stop => Halt::Shutdown,
                _ = role.wait_for(|role| *role != Role::Leader) => Halt::LostLease,
                // Its own clock says so, whatever the election task has
                // noticed yet (a process frozen past its lease).
                () = fence.until_closed() => Halt::LostLease,
            };
            halt.send_replace(Some(reason));
        }
    });
    let reconciling = reconcile_until(context, readiness, || halted_when(halted.clone(), Option::is_some));
    tokio::select! {
        biased;
        // Dropping the controller drops its dispatchers, which cancel the
        // reconciles they own; their writes stopped at the fence already.
        () = halted_when(halted.clone(), |halt| *halt == Some(Halt::LostLease)) => {
            tracing::warn!("lost the leader lease: cancelling the reconciles in flight");
        }
        () = reconciling => {}
    }
    watcher.abort();
    metrics.leader.set(0);

    match tokio::time::timeout(RELEASE_TIMEOUT, leadership.release()).await {
        Ok(Ok(true)) => tracing::info!("released the leader lease"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot release the leader lease; it expires on its own"),
        Err(_) => tracing::warn!("releasing the leader lease timed out; it expires on its own"),
    }
    if *halt.borrow() == Some(Halt::LostLease) {
        anyhow::bail!("lost the leader lease; exiting so that a restart joins the election as a standby");
    }
    Ok(())
}

/// Runs the controller until `halt` resolves; the reconciles in flight
/// finish first (`controller::run`). A halt before the caches synced (an
/// apiserver out of reach) has no reconcile to wait for: it stops at once,
/// and says so.
async fn reconcile_until<F>(context: Arc<Context>, readiness: Arc<Readiness>, halt: impl Fn() -> F)
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let reconciling = controller::run(context, readiness.clone(), halt());
    let halted_before_sync = async {
        halt().await;
        if readiness.get() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = reconciling => {}
        () = halted_before_sync => tracing::info!("stopping before the caches synced: no reconcile in flight"),
    }
}

/// Resolves once the halt reason satisfies `wanted`.
async fn halted_when(mut halted: watch::Receiver<Option<Halt>>, wanted: fn(&Option<Halt>) -> bool) {
    let _ = halted.wait_for(wanted).await;
}

/// How long shutdown waits for the Lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until this replica leads. A standby is ready as soon as the
/// election has answered: it serves health and metrics, and is the replica
/// that takes over.
async fn stand_by(role: &mut watch::Receiver<Role>, readiness: &Readiness) -> anyhow::Result<()> {
    loop {
        let current = role.borrow_and_update().clone();
        match current {
            Role::Leader => return Ok(()),
            Role::Standby { .. } => readiness.set(true),
            Role::Unknown => {}
        }
        role.changed().await.context("the leader election stopped")?;
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "chatworkspace-operator".into())
}
