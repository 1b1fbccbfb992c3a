//! What the chart and operations tests share: the operator binary run as a
//! process (as a pod would run it), its admin endpoints, a Prometheus text
//! parser, the Helm chart, and waiting on ChatWorkspaces and the Lease.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chatworkspace_operator::conditions;
use chatworkspace_operator::crd::ChatWorkspace;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use testbed::ControlPlane;
use tokio::process::{Child, Command};

/// How long a ChatWorkspace gets to converge against the fast simulator.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Lease settings short enough to measure failover in seconds; the ordering
/// (retry < renew deadline < duration) is the production one.
pub const LEASE_DURATION: Duration = Duration::from_secs(3);
pub const LEASE_ENV: [(&str, &str); 3] =
    [("LEASE_DURATION", "3s"), ("LEASE_RENEW_DEADLINE", "2s"), ("LEASE_RETRY_PERIOD", "500ms")];

/// The chart, in the repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts").join("chatworkspace-operator")
}

/// A unique suffix for release and lease names in a shared control plane.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(mut command: std::process::Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `helm install <release> <chart> --namespace <namespace> -f <values>`,
/// without waiting for pods (the test bed runs none).
pub fn helm_install(plane: &ControlPlane, release: &str, namespace: &str, values: &serde_json::Value) -> String {
    let file = tempfile::Builder::new().suffix(".json").tempfile().expect("a values file");
    std::fs::write(file.path(), values.to_string()).expect("write the values file");
    let mut helm = plane.helm();
    helm.args(["install", release]).arg(chart_dir()).args(["--namespace", namespace, "--values"]).arg(file.path());
    run(helm, &format!("helm install {release}"))
}

/// One sample of a scrape: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: samples, and each family's declared type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`; 0 when
    /// no such sample was exposed (a counter that never moved).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .sum()
    }
}

/// Parses the OpenMetrics text format the admin server serves, strictly
/// enough that a malformed line or a sample of an undeclared family fails.
pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut ended = false;
    for line in text.lines() {
        if ended {
            return Err(format!("content after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    exposition.types.insert(name.to_owned(), kind.to_owned());
                }
                (Some("HELP" | "UNIT"), Some(_), _) => {}
                _ => return Err(format!("unknown comment line {line:?}")),
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let family = family_of(&sample.name, &exposition.types)
            .ok_or_else(|| format!("sample {} has no # TYPE line", sample.name))?;
        if !exposition.types.contains_key(family) {
            return Err(format!("sample {} of undeclared family {family}", sample.name));
        }
        exposition.samples.push(sample);
    }
    if !ended {
        return Err("no # EOF line".into());
    }
    Ok(exposition)
}

/// The family a sample belongs to: its own name, or the name without an
/// OpenMetrics suffix (`_total`, `_bucket`, ...).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_total", "_created", "_bucket", "_count", "_sum", "_info"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix).filter(|family| types.contains_key(*family)))
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = || format!("malformed sample line {line:?}");
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').ok_or_else(bad)?;
            (&line[..open], parse_labels(&line[open + 1..close]).ok_or_else(bad)?, &line[close + 1..])
        }
        None => {
            let space = line.find(' ').ok_or_else(bad)?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let valid_name = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return Err(bad());
    }
    // A value, then optionally a timestamp.
    let value = rest.split_whitespace().next().ok_or_else(bad)?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().map_err(|_| bad())?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let eq = rest.find("=\"")?;
        let key = &rest[..eq];
        rest = &rest[eq + 2..];
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
    }
    Some(labels)
}

/// The operator binary, run as a separate process with exactly the
/// environment given (plus its admin address), its output kept in a file.
pub struct OperatorProcess {
    pub name: String,
    pub admin: SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
    http: reqwest::Client,
}

impl OperatorProcess {
    /// Starts `chatworkspace-operator run` with `env` only (nothing is
    /// inherited, so the test sees what the process really depends on).
    pub fn spawn(name: &str, env: &[(String, String)]) -> OperatorProcess {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = tempfile::Builder::new().prefix(&format!("{name}-")).suffix(".log").tempfile().expect("a log file");
        let mut command = Command::new(operator_binary());
        command
            .arg("run")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_ADDR", admin.to_string())
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log file"))
            .stderr(log.reopen().expect("log file"))
            .kill_on_drop(true);
        let child = command.spawn().expect("start chatworkspace-operator");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("an HTTP client");
        OperatorProcess { name: name.to_owned(), admin, child, log, http }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    /// SIGKILL: no chance to finish anything or release the Lease.
    pub fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
    }

    /// SIGTERM, as the kubelet sends when a pod stops.
    pub fn terminate(&self) {
        let status =
            std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the operator"),
            Err(_) => panic!("{} still running {timeout:?} later; log:\n{}", self.name, self.logs()),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GET on the admin server: status and body, or `None` when it does not
    /// answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String, String)> {
        let response = self.http.get(format!("http://{}{path}", self.admin)).send().await.ok()?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some((status, content_type, response.text().await.ok()?))
    }

    /// Scrapes and parses `/metrics`.
    pub async fn metrics(&self) -> Exposition {
        let (status, _, body) =
            self.get("/metrics").await.unwrap_or_else(|| panic!("{} serves no /metrics", self.name));
        assert_eq!(status, 200, "{}: /metrics answered {status}", self.name);
        parse_exposition(&body).unwrap_or_else(|err| panic!("{}: /metrics is not valid: {err}\n{body}", self.name))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for_ok("/readyz", timeout).await;
    }

    /// Waits until `/healthz` answers 200: the process serves.
    pub async fn wait_live(&mut self, timeout: Duration) {
        self.wait_for_ok("/healthz", timeout).await;
    }

    async fn wait_for_ok(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _, _)) = self.get(path).await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before {path} answered 200; log:\n{}", self.name, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{}: no 200 on {path} after {timeout:?}; log:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.logs());
        }
    }
}

/// The binary cargo built for these tests, or `$CWS_OPERATOR_BIN` (e.g. the
/// static release binary the image ships, to run these tests against it).
pub fn operator_binary() -> PathBuf {
    std::env::var_os("CWS_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chatworkspace-operator")))
}

/// The environment of an operator that talks to the test control plane with
/// `kubeconfig` and to the simulator at `coder_url` (with `token`), serves
/// `namespace` only, and runs with short requeue intervals.
pub fn operator_env(kubeconfig: &Path, coder_url: &str, token: &str, namespace: &str) -> Vec<(String, String)> {
    [
        ("KUBECONFIG", kubeconfig.to_string_lossy().as_ref()),
        ("CODER_URL", coder_url),
        ("CODER_SESSION_TOKEN", token),
        ("WATCH_NAMESPACES", namespace),
        ("RESYNC_INTERVAL", "2s"),
        ("ACTIVE_INTERVAL", "200ms"),
        ("RUST_LOG", "info,chatworkspace_operator=debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Creates a ChatWorkspace as the admin.
pub async fn create_workspace(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let object: ChatWorkspace = serde_json::from_value(json!({
        "apiVersion": "chat.coder.com/v1alpha1",
        "kind": "ChatWorkspace",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("a valid ChatWorkspace");
    Api::<ChatWorkspace>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("create ChatWorkspace");
}

/// Waits until condition `type_` of the ChatWorkspace has `status` for its
/// current generation, and returns the resource.
pub async fn wait_for_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> ChatWorkspace {
    let api = Api::<ChatWorkspace>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let current = api.get(name).await.expect("get ChatWorkspace");
        let generation = current.metadata.generation;
        let matches = current.status.as_ref().is_some_and(|s| {
            conditions::find(&s.conditions, type_)
                .is_some_and(|c| c.status == status && c.observed_generation == generation)
        });
        if matches {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{namespace}/{name} not {type_}={status} after {timeout:?}; status: {}",
            serde_json::to_string_pretty(&current.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Lease's holder (`None` when released or absent).
pub async fn lease_holder(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace).get_opt(name).await.expect("get Lease")?;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Polls the Lease every 20 ms until `check` holds for its holder; returns
/// when it did.
pub async fn wait_for_holder(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    check: impl Fn(Option<&str>) -> bool,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let holder = lease_holder(client, namespace, name).await;
        if check(holder.as_deref()) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "Lease {namespace}/{name}: holder still {holder:?} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let text = "# HELP c Things.\n# TYPE c counter\nc_total{kind=\"a\\\"b\",x=\"1\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# TYPE g gauge\ng 1\n# EOF\n";
        let exposition = parse_exposition(text).unwrap();
        assert_eq!(exposition.value("c_total", &[("kind", "a\"b")]), 3.0);
        assert_eq!(exposition.value("h_count", &[]), 2.0);
        assert_eq!(exposition.value("g", &[]), 1.0);
        assert_eq!(exposition.types["h"], "histogram");
    }

    #[test]
    fn rejects_malformed_text() {
        assert!(parse_exposition("# TYPE c counter\nc_total 1\n").is_err(), "no # EOF");
        assert!(parse_exposition("d_total 1\n# EOF\n").is_err(), "undeclared family");
        assert!(parse_exposition("# TYPE c counter\nc_total one\n# EOF\n").is_err(), "bad value");
        assert!(parse_exposition("# TYPE c counter\nc_total{a=\"1} 1\n# EOF\n").is_err(), "bad labels");
    }
}
