//! The scale benchmark: the quality bars (docs/performance.md, "Against the quality bars": convergence, Coder
//! load at steady state, reaction and recovery latency, memory), measured
//! against a real etcd + kube-apiserver, the Coder simulator with coderd's
//! own timings, and the release operator binary running as its own process.
//!
//! ```sh
//! make bench                                   # N = 1000
//! make bench BENCH_ARGS="--coder-max-rps 0"    # any flag of --help
//! cargo bench --bench scale -- --help
//! ```
//!
//! The report goes to stdout and, as JSON, to `target/bench/scale-<N>.json`;
//! the operator's log to `target/bench/operator-<N>.log`. docs/performance.md
//! says what each number means.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chatworkspace_operator::conditions::{self, READY};
use chatworkspace_operator::crd::{ChatWorkspace, parse_duration};
use clap::Parser;
use coder_sim::{RequestRecord, SimConfig, Simulator};
use futures::{StreamExt as _, TryStreamExt as _};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde::Serialize;
use serde_json::json;
use testbed::ControlPlane;
use tokio::task::JoinHandle;

use support::operator::OperatorProcess;
use support::procfs::{self, MachineCpu, Memory};
use support::stats::Summary;

/// The simulator's session token; its user (`admin` in the default seed,
/// with coderd's `owner` role) owns every workspace unless `--owners` says
/// otherwise.
const TOKEN: &str = "bench-token";
const OWNER: &str = "admin";
const TEMPLATE: &str = "docker-dev";
/// Creates in flight at once: enough to make "created at once" take seconds,
/// not minutes, without queueing hundreds of requests in the apiserver.
const CREATE_PARALLELISM: usize = 32;
const OPERATOR_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A stop build follows a patch within a second or two when all is well;
/// this bound only matters when something is stuck.
const REACTION_TIMEOUT: Duration = Duration::from_secs(120);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    name = "scale",
    about = "Measures convergence, Coder load, reaction and recovery latency and memory of the operator at scale"
)]
struct Args {
    /// ChatWorkspaces created at once, with desiredState Running.
    #[arg(long, default_value_t = 1000)]
    resources: usize,
    /// Coder users the resources are spread over, round robin (1: all of
    /// them the token's own user's, `admin`).
    #[arg(long, default_value_t = 1)]
    owners: usize,
    /// Workspaces in Coder that no resource names (other people's IDE
    /// workspaces), spread over the same owners, there before the operator
    /// starts.
    #[arg(long, default_value_t = 0)]
    unmanaged: usize,
    /// The share of those, in percent, whose agent is dead (unhealthy).
    #[arg(long, default_value_t = 5)]
    unmanaged_unhealthy_percent: usize,
    /// Steady-state window in which Coder requests are counted (0 skips it).
    #[arg(long, default_value = "60s", value_parser = duration)]
    window: Duration,
    /// Resources whose desiredState is patched to Stopped to measure reaction.
    #[arg(long, default_value_t = 100)]
    latency_resources: usize,
    /// Pause between two of those patches.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    latency_spacing: Duration,
    /// The workspaces already exist in Coder, and the ChatWorkspaces in
    /// Kubernetes, when the operator starts: measures how soon a restarted
    /// operator has observed them all (status written with the Coder state).
    #[arg(long)]
    existing: bool,
    /// Leave out the reaction latency phase (e.g. for a memory-only run).
    #[arg(long)]
    skip_latency: bool,
    /// Agents killed in the simulator after the reaction phase, to measure
    /// agent death -> the recovery's stop build with coderd's timings (the
    /// last resources, never those of the reaction phase; 0 skips it).
    #[arg(long, default_value_t = 10)]
    recovery_agents: usize,
    /// Running workspaces stopped in Coder as a person would (a stop build
    /// through Coder's API, not the operator's) after the recovery phase,
    /// to time the stop build -> the watch seeing the resource's status show
    /// it (those before the recovery's, never the reaction phase's; 0
    /// skips it).
    #[arg(long, default_value_t = 10)]
    outside_stops: usize,
    /// Make the outside stops right after the index has read the running
    /// count, so that they wait the longest for the next read: the worst
    /// case of an outside stop; their builds end before it when they are
    /// shorter than the time between two reads, and the count, not the
    /// builds under way, then has to tell which workspaces stopped.
    #[arg(long)]
    outside_stops_after_tick: bool,
    /// At the end, time the apiserver's CPU for the two smallest writes a
    /// first sight needs (a finalizer, a one-field status) on this many
    /// resources that no operator watches (0 skips it).
    #[arg(long, default_value_t = 0)]
    write_floor: usize,
    /// After convergence, restart the kube-apiserver under the operator and,
    /// if its watch lists everything again, report the operator's peak
    /// memory during that relist.
    #[arg(long)]
    relist: bool,
    /// At the end, restart the operator (every status is current then) and
    /// measure how soon the new process has observed every resource, by its
    /// `chatworkspace_observed_resources` gauge, and what it wrote meanwhile.
    #[arg(long)]
    restart: bool,
    /// Longest wait for every resource to become Ready.
    #[arg(long, default_value = "10m", value_parser = duration)]
    timeout: Duration,
    /// The operator's --concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
    /// The operator's --resync-interval (a safety net since the index).
    #[arg(long, default_value = "5m", value_parser = duration)]
    resync_interval: Duration,
    /// The period of the one-read-per-object polling the report compares
    /// Coder's load with (the operator's resync before the index).
    #[arg(long, default_value = "30s", value_parser = duration)]
    baseline_interval: Duration,
    /// The operator's --active-interval.
    #[arg(long, default_value = "2s", value_parser = duration)]
    active_interval: Duration,
    /// The operator's --attention-interval.
    #[arg(long, default_value = "10s", value_parser = duration)]
    attention_interval: Duration,
    /// The operator's --full-list-interval.
    #[arg(long, default_value = "5m", value_parser = duration)]
    full_list_interval: Duration,
    /// The operator's --probe-budget-per-minute.
    #[arg(long, default_value_t = 120)]
    probe_budget_per_minute: u32,
    /// The operator's --probe-interval.
    #[arg(long, default_value = "5m", value_parser = duration)]
    probe_interval: Duration,
    /// The operator's --coder-max-rps (0: unlimited).
    #[arg(long, default_value_t = 5.0)]
    coder_max_rps: f64,
    /// The operator's --coder-burst.
    #[arg(long, default_value_t = 10)]
    coder_burst: u32,
    /// Set by `cargo bench`. Without it (`cargo test --all-targets` runs
    /// benchmarks too) the benchmark does nothing, as libtest benches do.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The operator's duration syntax, or plain seconds.
fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.bench {
        eprintln!("scale: a benchmark; run it with `make bench` or `cargo bench --bench scale`");
        return Ok(());
    }
    if cfg!(debug_assertions) {
        eprintln!("scale: warning: built without optimizations; the numbers will not mean much");
    }
    let binary = operator_binary()?;
    let out_dir = bench_dir()?;
    let load_before = procfs::load_average();

    eprintln!("scale: starting etcd and kube-apiserver");
    // Declared first so that it is dropped last, after the operator.
    let plane = ControlPlane::start().context("starting the control plane (built by `make tools`)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut report = runtime.block_on(async {
        // Ctrl-C or a TERM (from `timeout`, say) ends the run through the
        // normal return path, so the operator and the control plane are
        // stopped by their destructors instead of being left behind.
        tokio::select! {
            report = run(&args, &plane, &binary, &out_dir) => report,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {}", signal?)),
        }
    })?;
    report.machine.load_average_before = load_before;
    report.machine.load_average_after = procfs::load_average();

    let text = report.table();
    println!("{text}");
    let path = out_dir.join(format!("scale-{}.json", args.resources));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("JSON report: {}", path.display());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

/// `CWS_OPERATOR_BIN`, or the operator that Cargo built beside this
/// benchmark (`target/release/chatworkspace-operator` under `cargo bench`).
fn operator_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::var_os("CWS_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chatworkspace-operator")));
    if !binary.is_file() {
        bail!(
            "the operator binary {} is missing: build it with `cargo build --release --bin chatworkspace-operator` \
             (`make bench` does), or point CWS_OPERATOR_BIN at one",
            binary.display()
        );
    }
    Ok(binary)
}

/// `target/bench`, found from this executable (`target/release/deps/scale-…`).
fn bench_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).context("the benchmark runs from <target>/<profile>/deps")?;
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A duration in the operator's flag syntax.
fn flag_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) { format!("{}s", millis / 1000) } else { format!("{millis}ms") }
}

async fn run(args: &Args, plane: &ControlPlane, binary: &Path, out_dir: &Path) -> anyhow::Result<Report> {
    // coderd's own timings (a build takes about six seconds, agents
    // heartbeat every 15 s), so steady state looks like production.
    let mut config = SimConfig::new(TOKEN);
    if args.owners > 1 {
        config.seed.users.extend((0..args.owners).map(|n| coder_sim::seed::User {
            id: None,
            username: developer(n),
            name: String::new(),
            email: None,
            roles: Vec::new(),
        }));
    }
    let sim = Simulator::start(config).await?;
    if args.unmanaged > 0 {
        let unhealthy = args.unmanaged * args.unmanaged_unhealthy_percent / 100;
        eprintln!(
            "scale: {} workspaces that no resource names over {} owners, {unhealthy} of them with a dead agent",
            args.unmanaged, args.owners
        );
        for index in 0..args.unmanaged {
            let id = sim.create_workspace(&owner_of(args, index), &format!("ide-{index:05}"), TEMPLATE);
            if index < unhealthy {
                sim.kill_agent(id);
            }
        }
        sim.clear_requests();
    }
    let namespace = plane.namespace("scale").await;
    // The cluster admin's grant: the benchmark's resources use the default
    // credentials for the token's own user.
    let grant = serde_json::json!({"metadata": {"annotations": {
        chatworkspace_operator::tenancy::OWNERS_ANNOTATION: "*"
    }}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(plane.client().await)
        .patch(&namespace, &PatchParams::default(), &Patch::Merge(&grant))
        .await?;
    let api: Api<ChatWorkspace> = Api::namespaced(plane.client().await, &namespace);
    let tracker = Tracker::start(api.clone());

    let admin = format!("127.0.0.1:{}", free_port()?);
    let operator_flags = vec![
        format!("--concurrency={}", args.concurrency),
        format!("--resync-interval={}", flag_duration(args.resync_interval)),
        format!("--active-interval={}", flag_duration(args.active_interval)),
        format!("--attention-interval={}", flag_duration(args.attention_interval)),
        format!("--full-list-interval={}", flag_duration(args.full_list_interval)),
        format!("--probe-budget-per-minute={}", args.probe_budget_per_minute),
        format!("--probe-interval={}", flag_duration(args.probe_interval)),
        format!("--coder-max-rps={}", args.coder_max_rps),
        format!("--coder-burst={}", args.coder_burst),
    ];
    let mut command = vec!["run".to_owned(), format!("--namespace={namespace}"), format!("--admin-addr={admin}")];
    command.extend(operator_flags.iter().cloned());
    let env = [
        ("KUBECONFIG", plane.kubeconfig_path().display().to_string()),
        ("CODER_URL", sim.url()),
        ("CODER_SESSION_TOKEN", sim.token()),
        // Warnings and errors only, unless `CWS_OPERATOR_LOG` says otherwise
        // (to trace a run): at thousands of resources the info lines (one
        // per create and build) would make a large log and add their own
        // cost to what is measured.
        ("RUST_LOG", std::env::var("CWS_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned())),
    ];
    if args.existing {
        eprintln!("scale: {} workspaces and ChatWorkspaces exist before the operator starts", args.resources);
        for index in 0..args.resources {
            sim.create_workspace(&owner_of(args, index), &resource_name(index), TEMPLATE);
        }
        create_resources(args, &api).await?;
        sim.clear_requests();
    }
    let apiserver_at_start = apiserver_requests(&plane.client().await).await?;
    let operator_started = (Timestamp::now(), Instant::now());
    let log = out_dir.join(format!("operator-{}.log", args.resources));
    let mut operator = OperatorProcess::spawn(binary, &command, &env, &log)?;
    operator.wait_ready(&admin, OPERATOR_READY_TIMEOUT).await?;
    eprintln!("scale: operator {} ready (pid {}, log {})", binary.display(), operator.pid(), log.display());

    let [etcd, apiserver] = plane.server_pids()[..] else { bail!("the control plane has two servers") };
    let pids = Pids { operator: operator.pid(), apiserver, etcd, bench: std::process::id() };

    let memory_idle = procfs::memory(pids.operator)?;
    let before = CpuSample::take(&pids)?;
    let client = api.clone().into_client();
    let mut convergence =
        converge(args, &api, &sim, &tracker, &mut operator, args.existing.then_some(operator_started)).await?;
    let after_convergence = CpuSample::take(&pids)?;
    convergence.apiserver_requests = requests_since(&client, &apiserver_at_start).await?;
    convergence.queue_wait = Some(queue_wait(&admin).await?);
    let memory_converged = procfs::memory(pids.operator)?;
    let converged_settled = settle(pids.operator).await?;
    let (object_json_kib, managed_fields_json_kib, packed_bytes) = object_sizes(&api, out_dir).await?;

    let (coder_load, window_cpu) = if args.window.is_zero() {
        (None, None)
    } else {
        eprintln!("scale: counting Coder requests for {:?}", args.window);
        let start = CpuSample::take(&pids)?;
        let load = steady_state(args, &api.clone().into_client(), &sim, &tracker).await?;
        operator.ensure_running()?;
        (Some(load), Some(CpuSample::take(&pids)?.since(&start)))
    };

    let (reaction, reaction_cpu) = if args.skip_latency {
        (None, None)
    } else {
        let start = CpuSample::take(&pids)?;
        let reaction = react(args, &api, &sim, &tracker).await?;
        operator.ensure_running()?;
        (Some(reaction), Some(CpuSample::take(&pids)?.since(&start)))
    };
    let recovery = if args.recovery_agents == 0 {
        None
    } else {
        let recovery = recover(args, &api, &sim).await?;
        operator.ensure_running()?;
        Some(recovery)
    };
    let outside_stops = if args.outside_stops == 0 {
        None
    } else {
        let stops = stop_outside(args, &sim, &tracker).await?;
        operator.ensure_running()?;
        Some(stops)
    };
    let write_floor = if args.write_floor == 0 {
        None
    } else {
        Some(write_floor(args, plane, pids.apiserver, procfs::cores()).await?)
    };
    let relist = if args.relist { Some(relist(plane, &admin, pids.operator).await?) } else { None };
    let memory_end = procfs::memory(pids.operator)?;
    let restart = if args.restart {
        drop(operator);
        Some(restart(args, plane, binary, &command, &env, &log, &admin, &sim).await?)
    } else {
        None
    };

    Ok(Report {
        command: std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" "),
        revision: git_revision(),
        resources: args.resources,
        operator_flags,
        simulator: "coderd timings: job pending 1 s + running 5 s, agent connects 2 s later, ready 2 s after that, \
                    heartbeats every 15 s"
            .to_owned(),
        machine: MachineInfo {
            cores: procfs::cores(),
            load_average_before: String::new(),
            load_average_after: String::new(),
            convergence: after_convergence.since(&before),
            window: window_cpu,
            reaction: reaction_cpu,
        },
        convergence,
        coder_load,
        reaction,
        recovery,
        outside_stops,
        write_floor,
        relist,
        restart,
        memory: MemoryReport {
            after_convergence: memory_converged,
            settled: converged_settled,
            end: memory_end,
            per_resource_kib: (memory_converged.rss_mib - memory_idle.rss_mib) * 1024.0 / args.resources as f64,
            object_json_kib,
            managed_fields_json_kib,
            packed_bytes,
        },
    })
}

fn git_revision() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(testbed::repo_root())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn resource_name(index: usize) -> String {
    format!("scale-{index:05}")
}

/// The Coder user number `n` of `--owners`.
fn developer(n: usize) -> String {
    format!("dev-{n:05}")
}

/// The owner of resource (or unmanaged workspace) number `index`.
fn owner_of(args: &Args, index: usize) -> String {
    if args.owners > 1 { developer(index % args.owners) } else { OWNER.to_owned() }
}

/// The owner of the resource named `name` ([`resource_name`]).
fn owner_of_name(args: &Args, name: &str) -> String {
    let index = name.strip_prefix("scale-").and_then(|n| n.parse().ok()).unwrap_or_default();
    owner_of(args, index)
}

// ---------------------------------------------------------------------------
// What the benchmark's own watch sees

/// The benchmark's own watch of the ChatWorkspaces: when it saw each
/// generation and each Ready, on the same wall clock as the simulator's
/// request log. It stands for any client of the apiserver (an AI agent
/// running `kubectl wait`), which is why reaction is compared against it.
struct Tracker {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    objects: HashMap<String, Object>,
    /// Object updates delivered. After convergence the benchmark writes
    /// nothing but its patches, so the rest are the operator's status
    /// writes (those that changed something: a no-op apply sends no event).
    updates: u64,
}

struct Object {
    generation: i64,
    /// When the watch first delivered `generation`.
    generation_seen: Timestamp,
    /// When the watch first delivered Ready=True for `generation`.
    ready_since: Option<Timestamp>,
    /// When the watch first delivered a status holding the Coder state
    /// (the latest build).
    observed_since: Option<Timestamp>,
    /// The latest build number the status showed, and when the watch first
    /// delivered it.
    build_seen: Option<(i32, Timestamp)>,
    /// When the watch first delivered Ready=False with reason
    /// `StoppedOutside`.
    stopped_outside_since: Option<Timestamp>,
    /// The Ready reason last seen, for a report on what never converged.
    reason: String,
}

impl Tracker {
    fn start(api: Api<ChatWorkspace>) -> Tracker {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut changes = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(change) = changes.next().await {
                let at = Timestamp::now();
                match change {
                    Ok(cws) => shared.lock().unwrap_or_else(PoisonError::into_inner).observe(&cws, at),
                    Err(error) => eprintln!("scale: watch error (it restarts): {error}"),
                }
            }
        });
        Tracker { seen, task }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Seen {
    fn observe(&mut self, cws: &ChatWorkspace, at: Timestamp) {
        self.updates += 1;
        let generation = cws.metadata.generation.unwrap_or_default();
        let ready = cws.status.as_ref().and_then(|status| conditions::find(&status.conditions, READY));
        let is_ready = ready.is_some_and(|c| c.status == "True" && c.observed_generation == Some(generation));
        let reason = ready.map_or_else(|| "NoStatusYet".to_owned(), |c| format!("{}={}", c.status, c.reason));
        let object = self.objects.entry(cws.name_any()).or_insert(Object {
            generation,
            generation_seen: at,
            ready_since: None,
            observed_since: None,
            build_seen: None,
            stopped_outside_since: None,
            reason: String::new(),
        });
        if object.observed_since.is_none() && cws.status.as_ref().is_some_and(|s| s.latest_build.is_some()) {
            object.observed_since = Some(at);
        }
        if let Some(number) = cws.status.as_ref().and_then(|s| s.latest_build.as_ref()).map(|b| b.number)
            && object.build_seen.is_none_or(|(seen, _)| number > seen)
        {
            object.build_seen = Some((number, at));
        }
        if object.stopped_outside_since.is_none()
            && ready.is_some_and(|c| c.status == "False" && c.reason == "StoppedOutside")
        {
            object.stopped_outside_since = Some(at);
        }
        if generation > object.generation {
            object.generation = generation;
            object.generation_seen = at;
            object.ready_since = None;
        }
        object.ready_since = if is_ready { object.ready_since.or(Some(at)) } else { None };
        object.reason = reason;
    }

    fn ready(&self) -> usize {
        self.objects.values().filter(|o| o.ready_since.is_some()).count()
    }

    /// How many resources not Ready have each Ready reason.
    fn not_ready_reasons(&self, expected: usize) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for object in self.objects.values().filter(|o| o.ready_since.is_none()) {
            *reasons.entry(object.reason.clone()).or_default() += 1;
        }
        let unseen = expected.saturating_sub(self.objects.len());
        if unseen > 0 {
            reasons.insert("NotSeenByTheWatch".to_owned(), unseen);
        }
        reasons
    }
}

// ---------------------------------------------------------------------------
// Phase 1: convergence

#[derive(Debug, Serialize)]
struct Convergence {
    /// With `--existing`: from the operator's start until the watch saw the
    /// last resource's first status with the Coder state.
    observed_s: Option<f64>,
    /// From the first create request to the last create answered.
    created_s: f64,
    /// From the first create request until the watch saw the last Ready=True.
    all_ready_s: f64,
    /// Per resource: first create request of the burst → its Ready=True.
    time_to_ready_s: Summary,
    /// Resources per second over `all_ready_s`.
    throughput_per_s: f64,
    /// Every Coder request from the first create to the last Ready.
    requests: RequestCounts,
    /// The most Coder requests that arrived within any one second: the
    /// operator's rate limit (`--coder-max-rps`, `--coder-burst`) bounds it.
    peak_requests_in_1s: usize,
    /// Requests the apiserver served from the operator's start to the last
    /// Ready (all clients; the benchmark adds only its watch), by verb and
    /// resource.
    apiserver_requests: BTreeMap<String, u64>,
    /// The operator's `chatworkspace_queue_wait_seconds` at the end of
    /// convergence: from a resource becoming due to its reconcile's start.
    queue_wait: Option<QueueWait>,
}

/// A histogram's count and percentiles, each given as the upper bound of
/// the bucket it falls in (the histogram keeps no finer detail).
#[derive(Debug, Default, Serialize)]
struct QueueWait {
    count: u64,
    p50_at_most_s: f64,
    p99_at_most_s: f64,
}

async fn converge(
    args: &Args,
    api: &Api<ChatWorkspace>,
    sim: &Simulator,
    tracker: &Tracker,
    operator: &mut OperatorProcess,
    existing: Option<(Timestamp, Instant)>,
) -> anyhow::Result<Convergence> {
    let n = args.resources;
    let (started, clock, created) = match existing {
        Some(operator_started) => (operator_started.0, operator_started.1, Duration::ZERO),
        None => {
            sim.clear_requests();
            let started = Timestamp::now();
            let clock = Instant::now();
            let created = create_resources(args, api).await?;
            eprintln!("scale: created in {:.1}s; waiting for Ready", created.as_secs_f64());
            (started, clock, created)
        }
    };

    let deadline = clock + args.timeout;
    let mut progress = Instant::now();
    loop {
        operator.ensure_running()?;
        let ready = tracker.with(Seen::ready);
        if ready >= n {
            break;
        }
        if Instant::now() > deadline {
            let reasons = tracker.with(|seen| seen.not_ready_reasons(n));
            let memory = procfs::memory(operator.pid())?;
            bail!(
                "only {ready} of {n} ChatWorkspaces were Ready after {:?}; the others' Ready conditions: {reasons:?}; \
                 operator VmRSS {:.1} MiB, VmHWM {:.1} MiB; operator log: {}",
                args.timeout,
                memory.rss_mib,
                memory.peak_rss_mib,
                operator.log().display()
            );
        }
        if progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("scale: {ready}/{n} Ready after {:.0}s", clock.elapsed().as_secs_f64());
            progress = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }

    let ready_after: Vec<f64> = tracker.with(|seen| {
        seen.objects.values().filter_map(|o| o.ready_since).map(|at| seconds_between(started, at)).collect()
    });
    let all_ready_s = ready_after.iter().copied().fold(0.0, f64::max);
    eprintln!("scale: all {n} Ready after {all_ready_s:.1}s");
    let observed_s = existing.map(|_| {
        tracker.with(|seen| {
            seen.objects
                .values()
                .filter_map(|o| o.observed_since)
                .map(|at| seconds_between(started, at))
                .fold(0.0, f64::max)
        })
    });
    let log = sim.requests();
    let mut requests = RequestCounts::default();
    log.iter().for_each(|request| requests.count(request));
    Ok(Convergence {
        observed_s,
        requests,
        peak_requests_in_1s: peak_in_one_second(&log),
        apiserver_requests: BTreeMap::new(),
        queue_wait: None,
        created_s: created.as_secs_f64(),
        all_ready_s,
        time_to_ready_s: Summary::of(ready_after),
        throughput_per_s: n as f64 / all_ready_s,
    })
}

/// Creates every ChatWorkspace, `CREATE_PARALLELISM` at a time.
async fn create_resources(args: &Args, api: &Api<ChatWorkspace>) -> anyhow::Result<Duration> {
    let n = args.resources;
    eprintln!("scale: creating {n} ChatWorkspaces (desiredState Running, template {TEMPLATE})");
    let clock = Instant::now();
    let creates = futures::stream::iter(0..n)
        .map(|index| async move {
            let name = resource_name(index);
            // Workspaces that exist already are adopted with consent.
            let mut spec = json!({"desiredState": "Running", "template": {"name": TEMPLATE}, "adopt": args.existing});
            if args.owners > 1 {
                spec["owner"] = json!(owner_of(args, index));
            }
            let object: ChatWorkspace = serde_json::from_value(json!({
                "apiVersion": "chat.coder.com/v1alpha1",
                "kind": "ChatWorkspace",
                "metadata": {"name": name},
                "spec": spec,
            }))?;
            api.create(&PostParams::default(), &object).await.with_context(|| format!("creating {name}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(CREATE_PARALLELISM)
        .try_collect::<()>();
    tokio::time::timeout(args.timeout, creates).await.context("creating the ChatWorkspaces timed out")??;
    Ok(clock.elapsed())
}

/// The most requests whose arrival times fall within one second of each other.
fn peak_in_one_second(requests: &[RequestRecord]) -> usize {
    let mut arrivals: Vec<Timestamp> = requests.iter().map(|r| r.at).collect();
    arrivals.sort();
    let second = jiff::SignedDuration::from_secs(1);
    let mut first = 0;
    let mut peak = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while at.duration_since(arrivals[first]) >= second {
            first += 1;
        }
        peak = peak.max(last + 1 - first);
    }
    peak
}

fn seconds_between(earlier: Timestamp, later: Timestamp) -> f64 {
    later.duration_since(earlier).as_secs_f64()
}

// ---------------------------------------------------------------------------
// A relist (`--relist`)

#[derive(Debug, Serialize)]
struct Relist {
    /// Whether the operator's watch listed everything again after the
    /// apiserver's restart (it may resume its watch instead).
    relisted: bool,
    /// From the apiserver's restart to the end of the relist.
    relist_s: Option<f64>,
    /// The operator's memory then; `peak_rss_mib` is its peak since just
    /// before the restart (the peak was reset then).
    memory: Memory,
    /// Its memory once the resident size stopped falling after the relist
    /// (see `settle`), and how long after the relist's end that was.
    settled: Settled,
}

/// A process's memory once it has settled.
#[derive(Debug, Serialize)]
struct Settled {
    memory: Memory,
    after_s: f64,
    /// False if it was still moving when `SETTLE_TIMEOUT` ran out (then
    /// `memory` is the last reading).
    settled: bool,
}

/// How long the resident size must stay within `SETTLE_SPAN_MIB` of itself
/// to count as settled, and how long to wait for that at most.
const SETTLE_FOR: Duration = Duration::from_secs(10);
const SETTLE_SPAN_MIB: f64 = 0.5;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads a process's memory every second until its `VmRSS` has stayed
/// within `SETTLE_SPAN_MIB` for `SETTLE_FOR`: what it keeps once the work
/// of a burst is over and the allocator has returned what it freed.
async fn settle(pid: u32) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let mut readings: std::collections::VecDeque<Memory> = std::collections::VecDeque::new();
    let window = SETTLE_FOR.as_secs() as usize + 1;
    loop {
        let memory = procfs::memory(pid)?;
        readings.push_back(memory);
        if readings.len() > window {
            readings.pop_front();
        }
        let (low, high) =
            readings.iter().fold((f64::MAX, f64::MIN), |(low, high), m| (low.min(m.rss_mib), high.max(m.rss_mib)));
        let settled = readings.len() == window && high - low <= SETTLE_SPAN_MIB;
        if settled || started.elapsed() >= SETTLE_TIMEOUT {
            let memory = readings.pop_back().expect("one reading at least");
            return Ok(Settled { memory, after_s: started.elapsed().as_secs_f64(), settled });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How long the operator's watch may take to list again after the restart.
const RELIST_TIMEOUT: Duration = Duration::from_secs(120);

/// Restarts the apiserver under the operator and, if its watch lists
/// everything again, measures its peak memory across the relist.
async fn relist(plane: &ControlPlane, admin: &str, operator: u32) -> anyhow::Result<Relist> {
    eprintln!("scale: restarting the kube-apiserver under the operator");
    let before = gauge(admin, "chatworkspace_relists_total").await?;
    procfs::reset_peak(operator)?;
    let started = Instant::now();
    tokio::task::block_in_place(|| plane.restart_apiserver())?;
    let mut relisted = false;
    while started.elapsed() < RELIST_TIMEOUT {
        if gauge(admin, "chatworkspace_relists_total").await? > before {
            relisted = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let relist_s = relisted.then(|| started.elapsed().as_secs_f64());
    let memory = procfs::memory(operator)?;
    Ok(Relist { relisted, relist_s, memory, settled: settle(operator).await? })
}

// ---------------------------------------------------------------------------
// The restart (`--restart`)

#[derive(Debug, Serialize)]
struct Restart {
    /// From the new process's start until its `observed_resources` gauge
    /// counted every resource.
    observed_s: f64,
    /// What the apiserver served meanwhile (all clients), by verb and resource.
    apiserver_requests: BTreeMap<String, u64>,
    /// Coder requests meanwhile.
    requests: RequestCounts,
    /// The new process's memory once it had observed everything.
    memory: Memory,
}

/// Starts a new operator over resources whose statuses are all current, and
/// waits until it has decided on each one with the whole picture.
#[allow(clippy::too_many_arguments)]
async fn restart(
    args: &Args,
    plane: &ControlPlane,
    binary: &Path,
    command: &[String],
    env: &[(&str, String)],
    log: &Path,
    admin: &str,
    sim: &Simulator,
) -> anyhow::Result<Restart> {
    eprintln!("scale: restarting the operator");
    let client = plane.client().await;
    let apiserver_before = apiserver_requests(&client).await?;
    sim.clear_requests();
    let started = (Timestamp::now(), Instant::now());
    let mut operator = OperatorProcess::spawn(binary, command, env, &log.with_extension("restart.log"))?;
    operator.wait_ready(admin, OPERATOR_READY_TIMEOUT).await?;
    let deadline = started.1 + args.timeout;
    let mut last_progress = Instant::now();
    loop {
        operator.ensure_running()?;
        let observed = gauge(admin, "chatworkspace_observed_resources").await?;
        if observed >= args.resources as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the restarted operator had observed {observed} of {} after {:?}", args.resources, args.timeout);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("scale: {observed}/{} observed after the restart", args.resources);
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    let observed_s = started.1.elapsed().as_secs_f64();
    let memory = procfs::memory(operator.pid())?;
    let apiserver_requests = requests_since(&client, &apiserver_before).await?;
    let mut requests = RequestCounts::default();
    for request in sim.requests().iter().filter(|r| r.at >= started.0) {
        requests.count(request);
    }
    Ok(Restart { observed_s, apiserver_requests, requests, memory })
}

/// The operator's /metrics, as text.
async fn operator_metrics(admin: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{admin}/metrics"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("reading the operator's /metrics")?
        .text()
        .await?)
}

/// One unlabelled gauge or counter from the operator's /metrics.
async fn gauge(admin: &str, name: &str) -> anyhow::Result<f64> {
    let text = operator_metrics(admin).await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("{name} in the operator's /metrics"))
}

// ---------------------------------------------------------------------------
// Phase 2: Coder load at steady state

#[derive(Debug, Default, Serialize)]
struct RequestCounts {
    /// `GET /api/v2/workspaces` (one page of an owner's list each).
    lists: u64,
    /// `GET /api/v2/users/{owner}/workspace/{name}`: one workspace, fresh.
    reads: u64,
    /// `GET /api/v2/workspaceagents/{id}/listening-ports`.
    probes: u64,
    /// `POST /api/v2/workspaces/{id}/builds`.
    builds: u64,
    /// `POST …/workspaces`: a create, which also starts the first build.
    creates: u64,
    /// Everything else (templates, users, …), by method and path.
    other: BTreeMap<String, u64>,
    /// Answers with a status of 400 or more, included above.
    errors: u64,
}

impl RequestCounts {
    fn total(&self) -> u64 {
        self.lists + self.reads + self.probes + self.builds + self.creates + self.other.values().sum::<u64>()
    }

    /// The counts by kind, for the report.
    fn breakdown(&self) -> String {
        format!(
            "{} lists, {} reads, {} probes, {} creates, {} builds, {} other",
            self.lists,
            self.reads,
            self.probes,
            self.creates,
            self.builds,
            self.other.values().sum::<u64>()
        )
    }

    fn count(&mut self, request: &RequestRecord) {
        let path = request.path.as_str();
        match request.method.as_str() {
            "GET" if path == "/api/v2/workspaces" => self.lists += 1,
            "GET" if path.starts_with("/api/v2/users/") && path.contains("/workspace/") => self.reads += 1,
            "GET" if path.ends_with("/listening-ports") => self.probes += 1,
            "POST" if path.starts_with("/api/v2/workspaces/") && path.ends_with("/builds") => self.builds += 1,
            "POST" if path.ends_with("/workspaces") => self.creates += 1,
            method => *self.other.entry(format!("{method} {}", generic_path(path))).or_default() += 1,
        }
        if request.status >= 400 {
            self.errors += 1;
        }
    }
}

/// What a request was, for the busiest minute's breakdown: a workspace list
/// by the keys of its search terms (`q=status id` for a running count by
/// id, `q=` for a page of everything), the rest by route.
fn request_kind(request: &RequestRecord) -> String {
    if request.path != "/api/v2/workspaces" {
        return format!("{} {}", request.method, generic_path(&request.path));
    }
    let query = request.query.replace("%3A", ":").replace("%2C", ",").replace('+', " ").replace("%20", " ");
    let q = query.split('&').find_map(|pair| pair.strip_prefix("q=")).unwrap_or("");
    let keys: Vec<&str> = q.split(' ').filter(|t| !t.is_empty()).map(|t| t.split(':').next().unwrap_or(t)).collect();
    let value = q.strip_prefix("status:").and_then(|v| v.split(' ').next());
    match value {
        Some(status) => format!("GET /workspaces q=status:{status} {}", keys[1..].join(" ")).trim_end().to_owned(),
        None => format!("GET /workspaces q={}", keys.join(" ")),
    }
}

/// A path with its ids and names replaced by `*`, so that "other" requests
/// group by route.
fn generic_path(path: &str) -> String {
    let mut generic = String::new();
    let mut previous = "";
    for segment in path.split('/').skip(1) {
        let variable = matches!(previous, "users" | "workspace" | "templates" | "organizations" | "members")
            || uuid::Uuid::parse_str(segment).is_ok();
        let _ = write!(generic, "/{}", if variable { "*" } else { segment });
        previous = segment;
    }
    generic
}

#[derive(Debug, Serialize)]
struct CoderLoad {
    window_s: f64,
    requests: RequestCounts,
    total: u64,
    per_workspace_per_minute: f64,
    /// All requests in each whole minute of the window, in order: the
    /// routine probes and chat lookups start minutes after convergence, so
    /// the busiest minute is the steady state's, not the window's average.
    total_by_minute: Vec<u64>,
    /// The requests of the busiest of those minutes, by [`request_kind`].
    busiest_minute: BTreeMap<String, u64>,
    /// One read per workspace per resync interval.
    baseline_per_workspace_per_minute: f64,
    baseline_formula: String,
    /// Measured / baseline.
    ratio_to_baseline: f64,
    /// ChatWorkspace updates the watch delivered in the window (status
    /// writes that changed something), per workspace per minute.
    status_changes_per_workspace_per_minute: f64,
    /// Requests the apiserver served in the window, from its own
    /// `apiserver_request_total`, by verb and resource: an apply that
    /// changes nothing reaches no watch but still costs the apiserver.
    apiserver_requests: BTreeMap<String, u64>,
}

/// The apiserver's `apiserver_request_total` counters, summed by verb and
/// resource (with subresource), e.g. `APPLY chatworkspaces/status`.
async fn apiserver_requests(client: &kube::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let request = kube::core::Request::new("").get("metrics", &kube::api::GetParams::default())?;
    let text = client.request_text(request).await.context("reading the apiserver's /metrics")?;
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).map(|i| i + name.len() + 2)?;
            labels[start..].split('"').next()
        };
        // Non-resource requests (like these /metrics reads) have no resource.
        let (Some(verb), Some(resource)) = (label("verb"), label("resource").filter(|r| !r.is_empty())) else {
            continue;
        };
        let key = match label("subresource").filter(|s| !s.is_empty()) {
            Some(subresource) => format!("{verb} {resource}/{subresource}"),
            None => format!("{verb} {resource}"),
        };
        *totals.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    Ok(totals)
}

/// The writes among the apiserver's requests: neither reads nor watches.
fn writes_among(requests: &BTreeMap<String, u64>) -> u64 {
    requests
        .iter()
        .filter(|(kind, _)| !kind.starts_with("GET") && !kind.starts_with("LIST") && !kind.starts_with("WATCH"))
        .map(|(_, count)| count)
        .sum()
}

/// What the apiserver served since `before` (a reading of
/// `apiserver_requests`), without the kinds that did not grow.
async fn requests_since(
    client: &kube::Client,
    before: &BTreeMap<String, u64>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut now = apiserver_requests(client).await?;
    for (key, count) in &mut now {
        *count -= before.get(key).copied().unwrap_or(0).min(*count);
    }
    now.retain(|_, count| *count > 0);
    Ok(now)
}

/// Reads the operator's queue-wait histogram from its admin endpoint.
async fn queue_wait(admin: &str) -> anyhow::Result<QueueWait> {
    let text = operator_metrics(admin).await?;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("chatworkspace_queue_wait_seconds_bucket{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let Some(le) = labels.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().context("a bucket's le")? };
        buckets.push((bound, value.parse::<f64>().context("a bucket's count")? as u64));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map_or(0, |b| b.1);
    let at_most = |q: f64| {
        let rank = (q * count as f64).ceil() as u64;
        buckets.iter().find(|b| b.1 >= rank.max(1)).map_or(0.0, |b| b.0)
    };
    Ok(QueueWait { count, p50_at_most_s: at_most(0.50), p99_at_most_s: at_most(0.99) })
}

async fn steady_state(
    args: &Args,
    client: &kube::Client,
    sim: &Simulator,
    tracker: &Tracker,
) -> anyhow::Result<CoderLoad> {
    let apiserver_before = apiserver_requests(client).await?;
    let updates_before = tracker.with(|seen| seen.updates);
    sim.clear_requests();
    let begin = Timestamp::now();
    tokio::time::sleep(args.window).await;
    let end = Timestamp::now();
    let updates = tracker.with(|seen| seen.updates) - updates_before;
    let apiserver = requests_since(client, &apiserver_before).await?;

    let mut requests = RequestCounts::default();
    // A request in flight at the clear is logged when it ends; count only
    // those that arrived inside the window.
    let window_s = seconds_between(begin, end);
    let mut total_by_minute = vec![0; (window_s / 60.0).floor() as usize];
    let mut kinds_by_minute: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); total_by_minute.len()];
    for request in sim.requests().iter().filter(|r| r.at >= begin && r.at < end) {
        requests.count(request);
        let minute = (seconds_between(begin, request.at) / 60.0) as usize;
        if let (Some(total), Some(kinds)) = (total_by_minute.get_mut(minute), kinds_by_minute.get_mut(minute)) {
            *total += 1;
            *kinds.entry(request_kind(request)).or_default() += 1;
        }
    }
    let busiest_minute = total_by_minute
        .iter()
        .enumerate()
        .max_by_key(|(_, total)| **total)
        .map(|(minute, _)| kinds_by_minute[minute].clone())
        .unwrap_or_default();
    let per_minute = |count: u64| count as f64 / args.resources as f64 / (window_s / 60.0);
    let resync_s = args.baseline_interval.as_secs_f64();
    let baseline = 60.0 / resync_s;
    let total = requests.total();
    Ok(CoderLoad {
        window_s,
        total,
        per_workspace_per_minute: per_minute(total),
        total_by_minute,
        busiest_minute,
        baseline_per_workspace_per_minute: baseline,
        baseline_formula: format!(
            "N x 60 / resync_seconds = {} x 60 / {resync_s} = {:.0} reads per minute, i.e. {baseline:.2} per workspace \
             per minute (one GET of each workspace per resync interval, no lists, no probes)",
            args.resources,
            args.resources as f64 * baseline
        ),
        ratio_to_baseline: per_minute(total) / baseline,
        status_changes_per_workspace_per_minute: per_minute(updates),
        apiserver_requests: apiserver,
        requests,
    })
}

// ---------------------------------------------------------------------------
// Phase 3: reaction latency

#[derive(Debug, Serialize)]
struct Reaction {
    patches: usize,
    spacing_ms: f64,
    /// Patch sent → the simulator received the stop build request.
    patch_to_build_ms: Summary,
    /// Patch sent → the benchmark's own watch delivered the new generation.
    patch_to_watch_ms: Summary,
    /// Patch sent → the apiserver's answer received: the write itself.
    patch_round_trip_ms: Summary,
    /// Per resource: build request time − watch delivery time.
    watch_to_build_ms: Summary,
    /// `patch_to_build_ms.p99 / patch_to_watch_ms.p99`.
    ratio_p99: f64,
    /// Coder requests from the first patch until every stop build was
    /// requested, and their rate: near `--coder-max-rps`, requests queue
    /// in the operator's rate limiter.
    coder_requests: usize,
    coder_requests_per_s: f64,
}

struct Patched {
    name: String,
    workspace_id: String,
    sent: Timestamp,
    answered: Timestamp,
    generation: i64,
}

async fn react(args: &Args, api: &Api<ChatWorkspace>, sim: &Simulator, tracker: &Tracker) -> anyhow::Result<Reaction> {
    let k = args.latency_resources.min(args.resources);
    eprintln!("scale: patching {k} ChatWorkspaces to Stopped, {:?} apart", args.latency_spacing);
    let mut ids = Vec::with_capacity(k);
    for name in (0..k).map(resource_name) {
        let owner = owner_of_name(args, &name);
        let id = sim.workspace_id(&owner, &name).with_context(|| format!("no workspace {owner}/{name} in Coder"))?;
        ids.push((name, id.to_string()));
    }
    sim.clear_requests();

    let mut pace = tokio::time::interval(args.latency_spacing);
    // A slow patch delays the next one rather than bunching the rest up.
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut patched = Vec::with_capacity(k);
    let patch = json!({"spec": {"desiredState": "Stopped"}});
    for (name, workspace_id) in ids {
        pace.tick().await;
        let sent = Timestamp::now();
        let object = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("patching {name}"))?;
        let answered = Timestamp::now();
        let generation = object.metadata.generation.context("the apiserver sets metadata.generation")?;
        patched.push(Patched { name, workspace_id, sent, answered, generation });
    }

    let deadline = Instant::now() + REACTION_TIMEOUT;
    let (builds, watched, log) = loop {
        let log = sim.requests();
        let builds = first_stop_builds(&log, &patched);
        let watched: Vec<Option<Timestamp>> = tracker.with(|seen| {
            patched
                .iter()
                .map(|p| seen.objects.get(&p.name).filter(|o| o.generation >= p.generation).map(|o| o.generation_seen))
                .collect()
        });
        let (built, seen) = (builds.iter().flatten().count(), watched.iter().flatten().count());
        if built == k && seen == k {
            break (builds, watched, log);
        }
        if Instant::now() > deadline {
            bail!("after {REACTION_TIMEOUT:?}, {built} of {k} stop builds were requested and {seen} patches watched");
        }
        tokio::time::sleep(POLL).await;
    };

    let millis = |from: Timestamp, to: Timestamp| seconds_between(from, to) * 1000.0;
    let mut to_build = Vec::with_capacity(k);
    let mut to_watch = Vec::with_capacity(k);
    let mut watch_to_build = Vec::with_capacity(k);
    for ((p, build), watch) in patched.iter().zip(builds.into_iter().flatten()).zip(watched.into_iter().flatten()) {
        to_build.push(millis(p.sent, build));
        to_watch.push(millis(p.sent, watch));
        watch_to_build.push(millis(watch, build));
    }
    let (patch_to_build, patch_to_watch) = (Summary::of(to_build), Summary::of(to_watch));
    let first_sent = patched.first().map(|p| p.sent).unwrap_or_else(Timestamp::now);
    let last_build = builds_at_latest(&log, &patched).unwrap_or(first_sent);
    let coder_requests = log.iter().filter(|r| r.at >= first_sent && r.at <= last_build).count();
    Ok(Reaction {
        coder_requests,
        coder_requests_per_s: coder_requests as f64 / seconds_between(first_sent, last_build).max(1e-3),
        patches: k,
        spacing_ms: args.latency_spacing.as_secs_f64() * 1000.0,
        ratio_p99: patch_to_build.p99 / patch_to_watch.p99,
        patch_to_build_ms: patch_to_build,
        patch_to_watch_ms: patch_to_watch,
        patch_round_trip_ms: Summary::of(patched.iter().map(|p| millis(p.sent, p.answered)).collect()),
        watch_to_build_ms: Summary::of(watch_to_build),
    })
}

/// When the last of the patches' stop builds was requested.
fn builds_at_latest(requests: &[RequestRecord], patched: &[Patched]) -> Option<Timestamp> {
    first_stop_builds(requests, patched).into_iter().flatten().max()
}

/// For each patch, when the simulator received the first successful stop
/// build request for its workspace after the patch was sent.
fn first_stop_builds(requests: &[RequestRecord], patched: &[Patched]) -> Vec<Option<Timestamp>> {
    let after: Vec<(String, Timestamp)> = patched.iter().map(|p| (p.workspace_id.clone(), p.sent)).collect();
    first_stop_builds_after(requests, &after)
}

/// For each (workspace id, time), when the simulator received the first
/// successful stop build request for that workspace at or after that time.
fn first_stop_builds_after(requests: &[RequestRecord], after: &[(String, Timestamp)]) -> Vec<Option<Timestamp>> {
    let since: HashMap<&str, Timestamp> = after.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    let mut first: HashMap<&str, Timestamp> = HashMap::new();
    for request in requests {
        let is_stop = request.method == "POST"
            && request.status < 300
            && request.body.as_ref().and_then(|b| b.get("transition")).and_then(|t| t.as_str()) == Some("stop");
        let workspace = request.path.strip_prefix("/api/v2/workspaces/").and_then(|rest| rest.strip_suffix("/builds"));
        let (true, Some(workspace)) = (is_stop, workspace) else { continue };
        if since.get(workspace).is_some_and(|at| request.at >= *at) {
            first.entry(workspace).and_modify(|seen| *seen = (*seen).min(request.at)).or_insert(request.at);
        }
    }
    after.iter().map(|(id, _)| first.get(id.as_str()).copied()).collect()
}

// ---------------------------------------------------------------------------
// Phase 3b: recovery latency

#[derive(Debug, Serialize)]
struct Recovery {
    agents: usize,
    /// The resources' `disconnectedThreshold` and `probeTimeout` (the CRD's
    /// defaults unless the benchmark set them), and the operator's
    /// `--attention-interval`.
    disconnected_threshold_s: f64,
    probe_timeout_s: f64,
    attention_interval_s: f64,
    /// The design's bar: threshold + probe timeout + attention interval + 2 s.
    bar_s: f64,
    /// Agent killed -> the simulator received the recovery's stop build for
    /// its workspace.
    kill_to_stop_build_s: Summary,
}

/// Kills the agents of the last `--recovery-agents` resources at once and
/// waits for each one's recovery to request its stop build.
async fn recover(args: &Args, api: &Api<ChatWorkspace>, sim: &Simulator) -> anyhow::Result<Recovery> {
    let reacted = if args.skip_latency { 0 } else { args.latency_resources.min(args.resources) };
    let k = args.recovery_agents.min(args.resources - reacted);
    if k == 0 {
        bail!("--recovery-agents needs resources the reaction phase did not stop (--resources {})", args.resources);
    }
    let names: Vec<String> = (args.resources - k..args.resources).map(resource_name).collect();
    let first = api.get(&names[0]).await.with_context(|| format!("reading {}", names[0]))?;
    let recovery = &first.spec.recovery;
    let threshold = parse_duration(&recovery.disconnected_threshold).context("the resource's disconnectedThreshold")?;
    let probe_timeout = parse_duration(&recovery.probe_timeout).context("the resource's probeTimeout")?;
    let bar = threshold + probe_timeout + args.attention_interval + Duration::from_secs(2);
    eprintln!(
        "scale: killing the agents of {k} workspaces (disconnectedThreshold {threshold:?}, probeTimeout \
         {probe_timeout:?}: the bar is {bar:?})"
    );

    let mut killed = Vec::with_capacity(k);
    for name in names {
        let owner = owner_of_name(args, &name);
        let id = sim.workspace_id(&owner, &name).with_context(|| format!("no workspace {owner}/{name} in Coder"))?;
        let at = Timestamp::now();
        sim.kill_agent(id);
        killed.push((id.to_string(), at));
    }
    // Past the bar the recovery is late, not lost: wait a while longer to
    // report how late.
    let deadline = Instant::now() + bar * 2;
    let stops = loop {
        let stops = first_stop_builds_after(&sim.requests(), &killed);
        let built = stops.iter().flatten().count();
        if built == k {
            break stops;
        }
        if Instant::now() > deadline {
            bail!("{:?} after the kills, {built} of {k} recoveries had requested their stop build", bar * 2);
        }
        tokio::time::sleep(POLL).await;
    };
    let seconds = killed.iter().zip(stops.into_iter().flatten()).map(|((_, at), stop)| seconds_between(*at, stop));
    Ok(Recovery {
        agents: k,
        disconnected_threshold_s: threshold.as_secs_f64(),
        probe_timeout_s: probe_timeout.as_secs_f64(),
        attention_interval_s: args.attention_interval.as_secs_f64(),
        bar_s: bar.as_secs_f64(),
        kill_to_stop_build_s: Summary::of(seconds.collect()),
    })
}

// ---------------------------------------------------------------------------
// Phase 3c: a stop made in Coder

#[derive(Debug, Serialize)]
struct OutsideStops {
    workspaces: usize,
    /// Made right after a read of the running count (`--outside-stops-after-tick`).
    after_tick: bool,
    /// The operator's `--attention-interval`: the bar for the first figure.
    attention_interval_s: f64,
    /// The stop build made through Coder's API (the benchmark's clock, just
    /// before the request) -> the watch delivered a status whose latest
    /// build is that stop.
    build_to_status_s: Summary,
    /// The same -> the watch delivered Ready=False `StoppedOutside` (after
    /// the build's own run: 1 s pending and 5 s running).
    build_to_stopped_outside_s: Summary,
}

/// Stops the workspaces of `--outside-stops` running resources at once, as a
/// person's Stop button in Coder's dashboard does, and waits for the watch
/// to show each stop in the resource's status.
async fn stop_outside(args: &Args, sim: &Simulator, tracker: &Tracker) -> anyhow::Result<OutsideStops> {
    use chatworkspace_operator::coder::{CoderClient, CreateWorkspaceBuildRequest, SessionToken, WorkspaceTransition};
    let reacted = if args.skip_latency { 0 } else { args.latency_resources.min(args.resources) };
    let last = args.resources - args.recovery_agents.min(args.resources - reacted);
    let k = args.outside_stops.min(last - reacted);
    if k == 0 {
        bail!("--outside-stops needs resources that neither the reaction nor the recovery phase touched");
    }
    eprintln!("scale: stopping {k} workspaces in Coder from outside the operator");
    let person = CoderClient::new(&sim.url(), SessionToken::new(sim.token())?, Duration::from_secs(30))?;
    if args.outside_stops_after_tick {
        let since = Timestamp::now();
        let deadline = Instant::now() + args.attention_interval * 3;
        let is_tick = |r: &RequestRecord| {
            r.at > since && r.path == "/api/v2/workspaces" && r.query.starts_with("q=status%3Arunning&")
        };
        while !sim.requests().iter().any(is_tick) {
            if Instant::now() > deadline {
                bail!("the index read no running count within three attention intervals");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("scale: the index read the running count; stopping at once");
    }
    let mut stops = Vec::with_capacity(k);
    for name in (last - k..last).map(resource_name) {
        let owner = owner_of_name(args, &name);
        let id = sim.workspace_id(&owner, &name).with_context(|| format!("no workspace {owner}/{name} in Coder"))?;
        let at = Timestamp::now();
        let build = person
            .create_build(&id.to_string(), &CreateWorkspaceBuildRequest::new(WorkspaceTransition::Stop))
            .await
            .with_context(|| format!("stopping {owner}/{name} from outside"))?;
        stops.push((name, build.build_number, at));
    }
    let deadline = Instant::now() + args.attention_interval * 6 + Duration::from_secs(60);
    loop {
        let (shown, stopped) = tracker.with(|seen| {
            let object = |name: &String| seen.objects.get(name);
            let shown = stops
                .iter()
                .filter(|(name, number, _)| object(name).and_then(|o| o.build_seen).is_some_and(|(n, _)| n >= *number))
                .count();
            let stopped = stops
                .iter()
                .filter(|(name, ..)| object(name).is_some_and(|o| o.stopped_outside_since.is_some()))
                .count();
            (shown, stopped)
        });
        if shown == k && stopped == k {
            break;
        }
        if Instant::now() > deadline {
            bail!("the watch showed {shown} of {k} outside stops ({stopped} as StoppedOutside) before the deadline");
        }
        tokio::time::sleep(POLL).await;
    }
    let (shown, stopped) = tracker.with(|seen| {
        let mut shown = Vec::with_capacity(k);
        let mut stopped = Vec::with_capacity(k);
        for (name, _, at) in &stops {
            let object = &seen.objects[name];
            shown.extend(object.build_seen.map(|(_, seen_at)| seconds_between(*at, seen_at)));
            stopped.extend(object.stopped_outside_since.map(|seen_at| seconds_between(*at, seen_at)));
        }
        (shown, stopped)
    });
    Ok(OutsideStops {
        workspaces: k,
        after_tick: args.outside_stops_after_tick,
        attention_interval_s: args.attention_interval.as_secs_f64(),
        build_to_status_s: Summary::of(shown),
        build_to_stopped_outside_s: Summary::of(stopped),
    })
}

// ---------------------------------------------------------------------------
// The apiserver's share (`--write-floor`)

/// What the apiserver's CPU allows on this machine for a first sight of
/// `--resources` resources, with the smallest writes it needs.
#[derive(Debug, Serialize)]
struct WriteFloor {
    resources: usize,
    /// Apiserver CPU per merge patch that adds the finalizer and the install
    /// claim's annotation.
    finalizer_patch_ms: f64,
    /// Apiserver CPU per merge patch of a one-field status.
    one_field_status_ms: f64,
    /// `--resources` × both ÷ cores: how long the apiserver's own work for
    /// those writes alone keeps every core busy.
    floor_s: f64,
}

/// Creates `--write-floor` resources in a namespace no operator watches and
/// times the apiserver's CPU for the two writes, one request at a time.
async fn write_floor(args: &Args, plane: &ControlPlane, apiserver: u32, cores: usize) -> anyhow::Result<WriteFloor> {
    let k = args.write_floor;
    eprintln!("scale: timing the apiserver's smallest writes on {k} resources no operator watches");
    let namespace = plane.namespace("floor").await;
    let api: Api<ChatWorkspace> = Api::namespaced(plane.client().await, &namespace);
    let names: Vec<String> = (0..k).map(resource_name).collect();
    futures::stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                let object: ChatWorkspace = serde_json::from_value(json!({
                    "apiVersion": "chat.coder.com/v1alpha1",
                    "kind": "ChatWorkspace",
                    "metadata": {"name": name},
                    "spec": {"desiredState": "Running", "template": {"name": TEMPLATE}, "adopt": true},
                }))?;
                api.create(&PostParams::default(), &object).await.with_context(|| format!("creating {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_PARALLELISM)
        .try_collect::<()>()
        .await?;
    let params = PatchParams::default();
    let claim = json!({"metadata": {
        "finalizers": [chatworkspace_operator::crd::FINALIZER],
        "annotations": {chatworkspace_operator::tenancy::installs::INSTALL_ANNOTATION: "write-floor"},
    }});
    let status = json!({"status": {"phase": "Running"}});
    let before = procfs::cpu_seconds(apiserver)?;
    for name in &names {
        api.patch(name, &params, &Patch::Merge(&claim)).await.with_context(|| format!("patching {name}"))?;
    }
    let between = procfs::cpu_seconds(apiserver)?;
    for name in &names {
        api.patch_status(name, &params, &Patch::Merge(&status)).await.with_context(|| format!("patching {name}"))?;
    }
    let after = procfs::cpu_seconds(apiserver)?;
    let (finalizer, one_field) = ((between - before) / k as f64, (after - between) / k as f64);
    Ok(WriteFloor {
        resources: args.resources,
        finalizer_patch_ms: finalizer * 1000.0,
        one_field_status_ms: one_field * 1000.0,
        floor_s: args.resources as f64 * (finalizer + one_field) / cores.max(1) as f64,
    })
}

// ---------------------------------------------------------------------------
// Phase 4: memory and CPU, and the report

struct Pids {
    operator: u32,
    apiserver: u32,
    etcd: u32,
    /// This process: the simulator and the watch.
    bench: u32,
}

/// CPU counters at one moment.
struct CpuSample {
    at: Instant,
    machine: MachineCpu,
    operator: f64,
    apiserver: f64,
    etcd: f64,
    bench: f64,
}

impl CpuSample {
    fn take(pids: &Pids) -> anyhow::Result<CpuSample> {
        Ok(CpuSample {
            at: Instant::now(),
            machine: MachineCpu::now()?,
            operator: procfs::cpu_seconds(pids.operator)?,
            apiserver: procfs::cpu_seconds(pids.apiserver)?,
            etcd: procfs::cpu_seconds(pids.etcd)?,
            bench: procfs::cpu_seconds(pids.bench)?,
        })
    }

    fn since(&self, earlier: &CpuSample) -> CpuUse {
        CpuUse {
            seconds: self.at.duration_since(earlier.at).as_secs_f64(),
            machine_busy: self.machine.busy_since(&earlier.machine),
            operator_cpu_s: self.operator - earlier.operator,
            apiserver_cpu_s: self.apiserver - earlier.apiserver,
            etcd_cpu_s: self.etcd - earlier.etcd,
            bench_cpu_s: self.bench - earlier.bench,
        }
    }
}

/// How busy the machine was during one phase, and who used the CPU.
#[derive(Debug, Serialize)]
struct CpuUse {
    seconds: f64,
    /// Fraction of all cores' time not idle.
    machine_busy: f64,
    operator_cpu_s: f64,
    apiserver_cpu_s: f64,
    etcd_cpu_s: f64,
    /// The simulator and the benchmark's watch (one process).
    bench_cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct MachineInfo {
    cores: usize,
    load_average_before: String,
    load_average_after: String,
    convergence: CpuUse,
    window: Option<CpuUse>,
    reaction: Option<CpuUse>,
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    after_convergence: Memory,
    /// Once its resident size stopped falling after convergence: what it
    /// keeps at rest (the steady state the memory bar is about).
    settled: Settled,
    end: Memory,
    /// Operator RSS growth per resource, from its RSS just before the burst.
    per_resource_kib: f64,
    /// A ChatWorkspace as the apiserver serves it (and the operator's cache
    /// holds it) after convergence, as compact JSON, averaged.
    object_json_kib: f64,
    /// The part of that which is `metadata.managedFields`.
    managed_fields_json_kib: f64,
    /// Its spec and status as the operator's cache packs them, in bytes.
    packed_bytes: f64,
}

/// The average JSON size of the namespace's ChatWorkspaces, and of their
/// managedFields, in KiB.
async fn object_sizes(api: &Api<ChatWorkspace>, out_dir: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let list = api.list(&kube::api::ListParams::default()).await?;
    let count = list.items.len().max(1) as f64;
    let (mut total, mut managed, mut packed) = (0usize, 0usize, 0usize);
    for object in &list.items {
        total += serde_json::to_vec(object)?.len();
        managed += serde_json::to_vec(&object.metadata.managed_fields)?.len();
        packed += chatworkspace_operator::cache::Watched::pack(object.clone()).packed_len();
    }
    // One object as the apiserver serves it, to look at.
    if let Some(object) = list.items.first() {
        let path = out_dir.join("object-sample.json");
        std::fs::write(&path, serde_json::to_vec_pretty(object)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((total as f64 / count / 1024.0, managed as f64 / count / 1024.0, packed as f64 / count))
}

#[derive(Debug, Serialize)]
struct Report {
    /// The benchmark's arguments.
    command: String,
    /// `git describe --always --dirty` of the tree measured.
    revision: Option<String>,
    resources: usize,
    operator_flags: Vec<String>,
    simulator: String,
    machine: MachineInfo,
    convergence: Convergence,
    coder_load: Option<CoderLoad>,
    reaction: Option<Reaction>,
    recovery: Option<Recovery>,
    outside_stops: Option<OutsideStops>,
    write_floor: Option<WriteFloor>,
    relist: Option<Relist>,
    restart: Option<Restart>,
    memory: MemoryReport,
}

impl Report {
    fn table(&self) -> String {
        let mut out = String::new();
        let n = self.resources;
        let _ = writeln!(
            out,
            "\nchatworkspace-operator scale benchmark: {n} ChatWorkspaces on {} cores",
            self.machine.cores
        );
        let _ = writeln!(out, "  revision {}", self.revision.as_deref().unwrap_or("unknown"));
        let _ = writeln!(out, "  arguments: {}", if self.command.is_empty() { "(defaults)" } else { &self.command });
        let _ = writeln!(out, "  operator: {}", self.operator_flags.join(" "));
        let _ = writeln!(out, "  simulator: {}", self.simulator);

        let c = &self.convergence;
        let t = &c.time_to_ready_s;
        let _ = writeln!(out, "\nConvergence ({n} created at once, desiredState Running)");
        if let Some(observed) = c.observed_s {
            let _ = writeln!(out, "  {:<44}{:>10.1} s", "all observed (status with the Coder state)", observed);
        }
        let _ = writeln!(out, "  {:<44}{:>10.1} s", "all created", c.created_s);
        let _ = writeln!(out, "  {:<44}{:>10.1} s", "all Ready", c.all_ready_s);
        let _ =
            writeln!(out, "  {:<44}{:>10.1} s  (p90 {:.1} s, p99 {:.1} s)", "time to Ready, p50", t.p50, t.p90, t.p99);
        let _ = writeln!(out, "  {:<44}{:>10.1} /s", "throughput", c.throughput_per_s);
        let r = &c.requests;
        let _ = writeln!(
            out,
            "  {:<44}{:>10}  ({:.1} per workspace: {})",
            "Coder requests",
            r.total(),
            r.total() as f64 / n as f64,
            r.breakdown()
        );
        let _ = writeln!(out, "  {:<44}{:>10}", "peak Coder requests within 1 s", c.peak_requests_in_1s);
        if let Some(q) = &c.queue_wait {
            // Every resource due at once drains in about n / throughput: a
            // fair queue keeps p99 near that, starvation puts it far above.
            let drain = match c.observed_s {
                Some(observed) => observed,
                None => c.all_ready_s,
            };
            let _ = writeln!(
                out,
                "  {:<44}{:>10}  (p50 <= {:.3} s, p99 <= {:.3} s; 1.2 x n / throughput = {:.1} s)",
                "queue waits (due -> reconcile start)",
                q.count,
                q.p50_at_most_s,
                q.p99_at_most_s,
                1.2 * drain
            );
        }
        let writes = writes_among(&c.apiserver_requests);
        let _ = writeln!(
            out,
            "  {:<44}{:>10}  ({:.2} per resource)",
            "apiserver writes meanwhile (all clients)",
            writes,
            writes as f64 / n as f64
        );
        // The apiserver's own watches restart now and then: not the operator's.
        for (kind, count) in c.apiserver_requests.iter().filter(|(kind, _)| !kind.starts_with("WATCH")) {
            let _ = writeln!(out, "    {kind:<40}{count:>10}");
        }
        // What the apiserver's own work allows on this machine: its CPU for
        // the phase (reads and watches included), spread over every core.
        let apiserver_cpu_s = self.machine.convergence.apiserver_cpu_s;
        if writes > 0 {
            let _ = writeln!(
                out,
                "  {:<44}{:>8.1} ms  (its CPU for the phase over {} cores: {:.1} s)",
                "apiserver CPU per write",
                1000.0 * apiserver_cpu_s / writes as f64,
                self.machine.cores,
                apiserver_cpu_s / self.machine.cores.max(1) as f64
            );
        }

        if let Some(load) = &self.coder_load {
            let r = &load.requests;
            let per = |count: u64| count as f64 / n as f64 / (load.window_s / 60.0);
            let _ = writeln!(out, "\nCoder load at steady state ({:.0} s window after convergence)", load.window_s);
            let _ = writeln!(out, "  {:<32}{:>10}{:>24}", "kind", "requests", "per workspace per min");
            let other: u64 = r.other.values().sum();
            for (kind, count) in [
                ("lists GET /workspaces", r.lists),
                ("single reads /users/*/workspace/*", r.reads),
                ("probes /listening-ports", r.probes),
                ("builds POST .../builds", r.builds),
                ("creates POST .../workspaces", r.creates),
                ("other", other),
                ("total", load.total),
            ] {
                let _ = writeln!(out, "  {kind:<32}{count:>10}{:>24.3}", per(count));
            }
            for (route, count) in &r.other {
                let _ = writeln!(out, "    {route:<30}{count:>10}");
            }
            if r.errors > 0 {
                let _ = writeln!(out, "  answered with an error status: {}", r.errors);
            }
            if !load.total_by_minute.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<42}{:?} (busiest {})",
                    "all requests in each minute",
                    load.total_by_minute,
                    load.total_by_minute.iter().max().copied().unwrap_or_default()
                );
                let _ = writeln!(out, "  the busiest minute, by kind:");
                for (kind, count) in &load.busiest_minute {
                    let _ = writeln!(out, "    {kind:<50}{count:>6}");
                }
            }
            let _ = writeln!(out, "  baseline: {}", load.baseline_formula);
            let _ = write!(out, "  {:<42}{:>10.3}", "ratio to the polling baseline", load.ratio_to_baseline);
            if load.ratio_to_baseline > 0.0 {
                let _ = write!(out, "  ({:.1}x fewer requests)", 1.0 / load.ratio_to_baseline);
            }
            out.push('\n');
            let _ = writeln!(
                out,
                "  {:<42}{:>10.3}",
                "status changes per workspace per min", load.status_changes_per_workspace_per_minute
            );
            let _ = writeln!(out, "  apiserver requests in the window (all clients), per workspace per min:");
            for (kind, count) in &load.apiserver_requests {
                let _ = writeln!(out, "    {kind:<30}{count:>10}{:>24.3}", per(*count));
            }
        }

        if let Some(r) = &self.reaction {
            let _ = writeln!(
                out,
                "\nReaction ({} patches of desiredState to Stopped, {:.0} ms apart), in ms",
                r.patches, r.spacing_ms
            );
            let _ = writeln!(out, "  {:<36}{:>9}{:>9}{:>9}{:>9}", "", "p50", "p90", "p99", "max");
            for (label, s) in [
                ("patch -> stop build request (Coder)", &r.patch_to_build_ms),
                ("patch -> watch event (apiserver)", &r.patch_to_watch_ms),
                ("watch event -> stop build request", &r.watch_to_build_ms),
                ("patch round trip (apiserver write)", &r.patch_round_trip_ms),
            ] {
                let _ = writeln!(out, "  {label:<36}{:>9.1}{:>9.1}{:>9.1}{:>9.1}", s.p50, s.p90, s.p99, s.max);
            }
            let _ = writeln!(out, "  {:<36}{:>9.2}", "ratio build / watch at p99", r.ratio_p99);
            let _ = writeln!(
                out,
                "  Coder requests meanwhile: {} ({:.1}/s; the operator's limit: --coder-max-rps)",
                r.coder_requests, r.coder_requests_per_s
            );
        }

        if let Some(r) = &self.recovery {
            let _ = writeln!(
                out,
                "\nRecovery ({} agents killed at once; coderd's timings: heartbeats every 15 s, disconnected after 30 s)",
                r.agents
            );
            let _ = writeln!(out, "  {:<36}{:>9}{:>9}{:>9}{:>9}", "in s", "p50", "p90", "p99", "max");
            let s = &r.kill_to_stop_build_s;
            let _ = writeln!(
                out,
                "  {:<36}{:>9.1}{:>9.1}{:>9.1}{:>9.1}",
                "agent killed -> stop build request", s.p50, s.p90, s.p99, s.max
            );
            let _ = writeln!(
                out,
                "  bar: threshold {:.0} s + probe timeout {:.0} s + attention interval {:.0} s + 2 s = {:.0} s ({})",
                r.disconnected_threshold_s,
                r.probe_timeout_s,
                r.attention_interval_s,
                r.bar_s,
                if s.max <= r.bar_s { "met" } else { "not met" }
            );
        }
        if let Some(o) = &self.outside_stops {
            let _ = writeln!(
                out,
                "\nOutside stops ({} workspaces stopped through Coder's API at once{})",
                o.workspaces,
                if o.after_tick { ", right after a read of the running count" } else { "" }
            );
            let _ = writeln!(out, "  {:<36}{:>9}{:>9}{:>9}{:>9}", "in s", "p50", "p90", "p99", "max");
            for (label, s) in [
                ("stop build -> status shows it", &o.build_to_status_s),
                ("stop build -> Ready=False StoppedOutside", &o.build_to_stopped_outside_s),
            ] {
                let _ = writeln!(out, "  {:<36}{:>9.1}{:>9.1}{:>9.1}{:>9.1}", label, s.p50, s.p90, s.p99, s.max);
            }
            let _ = writeln!(
                out,
                "  bar: the attention interval, {:.0} s, for the status to show it ({})",
                o.attention_interval_s,
                if o.build_to_status_s.max <= o.attention_interval_s { "met" } else { "not met" }
            );
        }

        if let Some(w) = &self.write_floor {
            let _ = writeln!(
                out,
                "\nThe apiserver's smallest writes (resources no operator watches, one request at a time)"
            );
            let _ = writeln!(
                out,
                "  {:<44}{:>8.2} ms of apiserver CPU",
                "finalizer + claim merge patch", w.finalizer_patch_ms
            );
            let _ = writeln!(out, "  {:<44}{:>8.2} ms", "one-field status merge patch", w.one_field_status_ms);
            let _ = writeln!(
                out,
                "  {:<44}{:>8.1} s  (both for {} resources over {} cores)",
                "the apiserver's CPU alone for a first sight", w.floor_s, w.resources, self.machine.cores
            );
        }

        if let Some(r) = &self.relist {
            let _ = writeln!(out, "\nRelist (the kube-apiserver restarted under the operator)");
            match r.relist_s {
                Some(seconds) => {
                    let _ = writeln!(out, "  {:<44}{:>8.1} s", "apiserver restart -> relist complete", seconds);
                    let _ = writeln!(
                        out,
                        "  {:<44}{:>8.1} MiB (VmRSS now {:.1}, RssAnon {:.1})",
                        "operator peak across the relist", r.memory.peak_rss_mib, r.memory.rss_mib, r.memory.anon_mib
                    );
                    let s = &r.settled;
                    let _ = writeln!(
                        out,
                        "  {:<44}{:>8.1} MiB (RssAnon {:.1}; {:.0} s after the relist{})",
                        "operator once settled",
                        s.memory.rss_mib,
                        s.memory.anon_mib,
                        s.after_s,
                        if s.settled { "" } else { ", still moving" }
                    );
                }
                None => {
                    let _ = writeln!(out, "  the operator's watch resumed without listing again: no relist to measure");
                }
            }
        }

        if let Some(r) = &self.restart {
            let _ = writeln!(out, "\nRestart (a new operator process; every status is current)");
            let _ = writeln!(out, "  {:<44}{:>8.1} s", "start -> every resource observed", r.observed_s);
            let q = &r.requests;
            let _ = writeln!(out, "  {:<44}{:>10}  ({})", "Coder requests meanwhile", q.total(), q.breakdown());
            let _ = writeln!(
                out,
                "  {:<44}{:>10}",
                "apiserver writes meanwhile (all clients)",
                writes_among(&r.apiserver_requests)
            );
            for (kind, count) in r.apiserver_requests.iter().filter(|(kind, _)| !kind.starts_with("WATCH")) {
                let _ = writeln!(out, "    {kind:<40}{count:>10}");
            }
            let _ = writeln!(
                out,
                "  {:<44}{:>8.1} MiB (VmHWM {:.1}, RssAnon {:.1})",
                "memory of the new process then", r.memory.rss_mib, r.memory.peak_rss_mib, r.memory.anon_mib
            );
        }

        let m = &self.memory;
        let _ = writeln!(out, "\nOperator memory (MiB)                       VmRSS    VmHWM (peak)  RssAnon");
        let settled = format!(
            "settled ({:.0} s later{})",
            m.settled.after_s,
            if m.settled.settled { "" } else { ", still moving" }
        );
        for (label, memory) in
            [("after convergence", &m.after_convergence), (settled.as_str(), &m.settled.memory), ("at the end", &m.end)]
        {
            let _ = writeln!(
                out,
                "  {label:<40}{:>9.1}{:>9.1}{:>15.1}",
                memory.rss_mib, memory.peak_rss_mib, memory.anon_mib
            );
        }
        let _ = writeln!(out, "  {:<40}{:>9.1} KiB", "RSS growth per resource", m.per_resource_kib);
        let _ = writeln!(
            out,
            "  {:<40}{:>9.1} KiB  (managedFields {:.1} KiB)",
            "one ChatWorkspace as JSON", m.object_json_kib, m.managed_fields_json_kib
        );
        let _ = writeln!(out, "  {:<40}{:>9.0} bytes", "its spec and status, packed in the cache", m.packed_bytes);

        let machine = &self.machine;
        let _ = writeln!(
            out,
            "\nMachine: load average {} before, {} after",
            machine.load_average_before, machine.load_average_after
        );
        let _ = writeln!(
            out,
            "  {:<14}{:>8}{:>7}{:>11}{:>11}{:>8}{:>14}",
            "phase", "seconds", "busy", "operator", "apiserver", "etcd", "sim+watch"
        );
        for (phase, cpu) in [
            ("convergence", Some(&machine.convergence)),
            ("window", machine.window.as_ref()),
            ("reaction", machine.reaction.as_ref()),
        ] {
            if let Some(cpu) = cpu {
                let _ = writeln!(
                    out,
                    "  {phase:<14}{:>8.1}{:>6.0}%{:>10.1}s{:>10.1}s{:>7.1}s{:>13.1}s",
                    cpu.seconds,
                    cpu.machine_busy * 100.0,
                    cpu.operator_cpu_s,
                    cpu.apiserver_cpu_s,
                    cpu.etcd_cpu_s,
                    cpu.bench_cpu_s
                );
            }
        }
        out
    }
}
