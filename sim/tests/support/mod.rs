//! Helpers shared by the simulator's integration tests: a small Coder
//! client, polling, and golden key-set files.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coder_sim::{SimConfig, Simulator, Timings};
use serde_json::{Value, json};

pub const DOCKER_DEV: &str = "2a000000-0000-4000-8000-000000000001";
pub const DOCKER_DEV_V1: &str = "2a000000-0000-4000-8000-0000000001a1";
pub const DOCKER_DEV_V2: &str = "2a000000-0000-4000-8000-0000000002a1";
pub const DOCKER_DEV_V1_SMALL: &str = "2a000000-0000-4000-8000-0000000001b1";
pub const DOCKER_DEV_V2_LARGE: &str = "2a000000-0000-4000-8000-0000000002b3";
pub const CHAT_DEV: &str = "2b000000-0000-4000-8000-000000000001";
pub const CHAT_DEV_V1: &str = "2b000000-0000-4000-8000-0000000001a1";
pub const CHAT_DEV_V2: &str = "2b000000-0000-4000-8000-0000000002a1";
pub const GPU_BOX: &str = "2c000000-0000-4000-8000-000000000001";
pub const LEGACY_VM: &str = "2d000000-0000-4000-8000-000000000001";
pub const STRICT_DEV: &str = "2e000000-0000-4000-8000-000000000001";
pub const STRICT_DEV_V2: &str = "2e000000-0000-4000-8000-0000000002a1";
pub const EXTERNAL_DEV: &str = "2f000000-0000-4000-8000-000000000001";

pub async fn start() -> (Simulator, Client) {
    start_with(Timings::fast()).await
}

pub async fn start_with(timings: Timings) -> (Simulator, Client) {
    let sim = Simulator::start(SimConfig { timings, ..SimConfig::fast() }).await.expect("simulator starts");
    let client = Client::new(&sim.url(), &sim.token());
    (sim, client)
}

/// A response: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status, body: {:#}", self.body);
        self.body
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self { http: reqwest::Client::new(), base: base.to_owned(), token: Some(token.to_owned()) }
    }

    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self { token: token.map(str::to_owned), ..self.clone() }
    }

    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { http: reqwest::Client::builder().timeout(timeout).build().unwrap(), ..self.clone() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Reply, reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("Coder-Session-Token", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok(Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    pub async fn try_get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.try_get(path).await.expect("request succeeds")
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await.expect("request succeeds")
    }

    pub async fn put(&self, path: &str) -> Reply {
        self.send(reqwest::Method::PUT, path, None).await.expect("request succeeds")
    }

    pub async fn patch(&self, path: &str) -> Reply {
        self.send(reqwest::Method::PATCH, path, None).await.expect("request succeeds")
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await.expect("request succeeds")
    }

    /// Creates a workspace for `me` and returns it.
    pub async fn create_workspace(&self, name: &str, template_id: &str) -> Value {
        self.post("/api/v2/users/me/workspaces", json!({ "name": name, "template_id": template_id })).await.expect(201)
    }

    pub async fn workspace(&self, id: &str) -> Value {
        self.get(&format!("/api/v2/workspaces/{id}")).await.expect(200)
    }

    pub async fn build(&self, workspace_id: &str, body: Value) -> Reply {
        self.post(&format!("/api/v2/workspaces/{workspace_id}/builds"), body).await
    }

    /// Waits until the workspace's latest build reaches `status`.
    pub async fn wait_for_build(&self, workspace_id: &str, status: &str) -> Value {
        eventually(&format!("latest build {status}"), Duration::from_secs(5), || async {
            let ws = self.workspace(workspace_id).await;
            (ws["latest_build"]["status"] == status).then_some(ws)
        })
        .await
    }

    /// The agents of the workspace's latest build.
    pub async fn agents(&self, workspace_id: &str) -> Vec<Value> {
        let ws = self.workspace(workspace_id).await;
        agents_of(&ws["latest_build"])
    }

    pub async fn agent(&self, agent_id: &str) -> Value {
        self.get(&format!("/api/v2/workspaceagents/{agent_id}")).await.expect(200)
    }

    /// Waits until the agent reports `status` and `lifecycle` (any when `None`).
    pub async fn wait_for_agent(&self, agent_id: &str, status: &str, lifecycle: Option<&str>) -> Value {
        eventually(&format!("agent {status}"), Duration::from_secs(6), || async {
            let agent = self.agent(agent_id).await;
            let lifecycle_ok = lifecycle.is_none_or(|want| agent["lifecycle_state"] == want);
            (agent["status"] == status && lifecycle_ok).then_some(agent)
        })
        .await
    }

    pub async fn probe(&self, agent_id: &str) -> Reply {
        self.get(&format!("/api/v2/workspaceagents/{agent_id}/listening-ports")).await
    }
}

pub fn agents_of(build: &Value) -> Vec<Value> {
    build["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|resource| resource["agents"].as_array().cloned().unwrap_or_default())
        .collect()
}

pub fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// Polls `check` every 20 ms until it yields a value, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- golden key sets -----

/// Every key path of a JSON value: `a`, `a.b`, `a[].c` (arrays merge their elements).
pub fn key_paths(value: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    collect(value, "", &mut paths);
    paths
}

fn collect(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                paths.insert(path.clone());
                collect(child, &path, paths);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, &format!("{prefix}[]"), paths);
            }
        }
        _ => {}
    }
}

/// Replaces ids and timestamps so golden files stay stable and readable.
pub fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::String(text) if uuid::Uuid::parse_str(text).is_ok() => json!("<uuid>"),
        Value::String(text) if text.parse::<jiff::Timestamp>().is_ok() => json!("<timestamp>"),
        other => other.clone(),
    }
}

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

pub fn read_golden(name: &str) -> Value {
    let text = std::fs::read_to_string(golden_path(name)).unwrap_or_else(|err| panic!("reading golden {name}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("parsing golden {name}: {err}"))
}

/// Asserts the response has exactly the key set of the committed golden
/// file. With `UPDATE_GOLDEN=1` it rewrites the file instead.
#[track_caller]
pub fn assert_golden(name: &str, actual: &Value) {
    let normalized = normalize(actual);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&normalized).unwrap() + "\n";
        std::fs::write(golden_path(name), text).unwrap();
        return;
    }
    let expected = key_paths(&read_golden(name));
    let actual = key_paths(&normalized);
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: key set differs from the golden file\n  missing: {missing:?}\n  extra: {extra:?}\n(rerun with UPDATE_GOLDEN=1 if the change is intended)"
    );
}
