//! The client against a tiny local HTTP server standing in for coderd.

use std::sync::Mutex;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode as HttpStatus, Uri, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::*;
use crate::coder::types::{ParameterValue, WorkspaceTransition};

const SECRET: &str = "Xy7Kq2Lm9N-a8b7c6d5e4f3g2h1i0j9k8l7";
const PATIENT: Duration = Duration::from_secs(10);
const IMPATIENT: Duration = Duration::from_millis(200);

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query exactly as sent, percent-encoding included.
    target: String,
    token: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct FakeCoderd {
    seen: Mutex<Vec<Seen>>,
}

impl FakeCoderd {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn reply(status: u16, body: Value) -> HttpResponse {
    (HttpStatus::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn message(status: u16, message: &str) -> HttpResponse {
    reply(status, json!({ "message": message }))
}

async fn hang() -> HttpResponse {
    tokio::time::sleep(Duration::from_secs(60)).await;
    message(500, "too late")
}

fn workspace_json(name: &str) -> Value {
    json!({
        "id": "ws-1",
        "name": name,
        "owner_name": "alice",
        "latest_build": {
            "id": "b-1",
            "build_number": 1,
            "transition": "start",
            "status": "pending",
            "created_at": "2025-03-01T09:00:00Z",
            "updated_at": "2025-03-01T09:00:00Z",
            "job": {"id": "j-1", "status": "pending", "created_at": "2025-03-01T09:00:00Z"},
            "resources": []
        }
    })
}

/// Answers like coderd for a handful of fixed paths; some of them misbehave
/// on purpose.
async fn serve(
    State(state): State<Arc<FakeCoderd>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let token = header("coder-session-token");
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target: uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        token: token.clone(),
        content_type: header(header::CONTENT_TYPE.as_str()),
        body: body.to_vec(),
    });
    let echoed = token.unwrap_or_default();
    let path = uri.path().trim_start_matches("/prefix");
    match (method.as_str(), path) {
        ("GET", "/api/v2/users/me") => reply(200, json!({"id": "u-1", "username": "alice"})),
        // A server that echoes the request's headers back in every text.
        ("GET", "/api/v2/users/echo") => reply(
            401,
            json!({
                "message": format!("bad token {echoed}"),
                "detail": format!("Coder-Session-Token: {echoed}"),
            }),
        ),
        ("GET", "/api/v2/users/echo-validation") => reply(
            400,
            json!({
                "message": "Validation failed.",
                "validations": [{"field": echoed, "detail": echoed}],
            }),
        ),
        ("GET", "/api/v2/users/echo-body") => reply(200, json!(echoed)),
        ("GET", "/api/v2/users/redirect") => {
            (HttpStatus::FOUND, [(header::LOCATION, "http://elsewhere.invalid/")]).into_response()
        }
        ("GET", "/api/v2/workspaces") if uri.query().is_some_and(|q| q.contains("padded")) => {
            let page: Vec<Value> = (0..5).map(|i| workspace_json(&format!("ws-{i}"))).collect();
            reply(200, json!({"workspaces": page, "count": 1_000_000_000}))
        }
        ("GET", "/api/v2/workspaces") => reply(200, json!({"workspaces": [workspace_json("ws")], "count": 1})),
        // Bodies larger than any real answer: announced, or streamed with no length.
        ("GET", "/api/v2/workspaces/huge") => (HttpStatus::OK, vec![b' '; MAX_RESPONSE_BYTES + 1]).into_response(),
        ("GET", "/api/v2/workspaces/huge-stream") => {
            let chunks =
                (0..=MAX_RESPONSE_BYTES >> 16).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1 << 16])));
            axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        ("GET", "/api/v2/workspaces/hang") => hang().await,
        ("GET", "/api/v2/workspaces/unavailable") => reply(503, json!({"message": "Database unavailable."})),
        ("POST", "/api/v2/users/alice/workspaces") => reply(201, workspace_json("fix-login-bug")),
        ("POST", "/api/v2/workspaces/hang/builds") => hang().await,
        ("POST", "/api/v2/workspaces/ws-1/builds") => {
            reply(409, json!({"message": "A workspace build is already active."}))
        }
        ("GET", "/api/v2/templateversions/v-1/presets") => reply(200, Value::Null),
        ("GET", "/api/v2/workspaceagents/up/listening-ports") => reply(200, json!({"err": "", "ports": []})),
        ("GET", "/api/v2/workspaceagents/down/listening-ports") => {
            message(400, r#"Agent state is "disconnected", it must be in the "connected" state."#)
        }
        ("GET", "/api/v2/workspaceagents/old-down/listening-ports") => {
            message(412, r#"Agent state is "disconnected", it must be in the "connected" state."#)
        }
        ("GET", "/api/v2/workspaceagents/dial-fails/listening-ports") => {
            message(500, "Internal error dialing workspace agent.")
        }
        ("GET", "/api/v2/workspaceagents/hang/listening-ports") => hang().await,
        ("GET", "/api/v2/workspaceagents/limited/listening-ports") => message(429, "You've been rate limited."),
        ("GET", "/api/v2/workspaceagents/no-token/listening-ports") => message(401, "Unauthorized."),
        ("GET", "/api/v2/workspaceagents/forbidden/listening-ports") => message(403, "Forbidden."),
        ("GET", "/api/v2/workspaceagents/proxy/listening-ports") => message(502, "Bad Gateway"),
        ("GET", "/api/v2/workspaceagents/lb/listening-ports") => message(503, "Service Unavailable"),
        _ => message(404, "Resource not found or you do not have access to this resource"),
    }
}

async fn start_server() -> (String, Arc<FakeCoderd>) {
    let state = Arc::new(FakeCoderd::default());
    let app = Router::new().fallback(serve).with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), state)
}

fn client_for(base_url: &str, timeout: Duration) -> CoderClient {
    CoderClient::new(base_url, SessionToken::new(SECRET).unwrap(), timeout).unwrap()
}

async fn setup() -> (CoderClient, Arc<FakeCoderd>) {
    let (url, state) = start_server().await;
    (client_for(&url, PATIENT), state)
}

#[derive(Default)]
struct Observations(Mutex<Vec<(String, &'static str, Option<u16>)>>);

impl RequestObserver for Observations {
    fn observe(&self, credentials: &str, endpoint: &'static str, status: Option<u16>, _elapsed: Duration) {
        self.0.lock().unwrap().push((credentials.to_owned(), endpoint, status));
    }
}

#[tokio::test]
async fn sends_the_token_header_and_decodes() {
    let (client, server) = setup().await;
    let user = client.current_user().await.unwrap();
    assert_eq!(user.username, "alice");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/api/v2/users/me");
    assert_eq!(seen[0].token.as_deref(), Some(SECRET));
}

#[tokio::test]
async fn keeps_a_path_prefix_of_the_base_url() {
    let (url, server) = start_server().await;
    let client = client_for(&format!("{url}/prefix/"), PATIENT);
    assert_eq!(client.base_url(), format!("{url}/prefix"));
    client.current_user().await.unwrap();
    assert_eq!(server.seen()[0].target, "/prefix/api/v2/users/me");
}

#[tokio::test]
async fn percent_encodes_names_in_paths() {
    let (client, server) = setup().await;
    let found = client.workspace_by_owner_and_name("alice", "a b/c?d#e%f").await.unwrap();
    assert_eq!(found, None, "a 404 means no such workspace");
    assert_eq!(server.seen()[0].target, "/api/v2/users/alice/workspace/a%20b%2Fc%3Fd%23e%25f");
}

#[tokio::test]
async fn rejects_names_that_would_change_the_route() {
    let (client, server) = setup().await;
    for name in ["", ".", ".."] {
        let error = client.workspace_by_owner_and_name(name, "ws").await.unwrap_err();
        assert_eq!(error.reason(), "InvalidArgument", "{name:?}");
    }
    assert!(server.seen().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn encodes_the_search_query() {
    let (client, server) = setup().await;
    let page = client.list_workspaces(r#"owner:"alice" name:"ws""#, 50, 100).await.unwrap();
    assert_eq!(page.count, 1);
    assert_eq!(page.workspaces[0].name, "ws");
    assert_eq!(server.seen()[0].target, "/api/v2/workspaces?q=owner%3A%22alice%22+name%3A%22ws%22&limit=50&offset=100");
}

#[tokio::test]
async fn a_page_longer_than_asked_for_is_cut() {
    let (client, _server) = setup().await;
    let page = client.list_workspaces("padded", 2, 0).await.unwrap();
    assert_eq!(page.workspaces.len(), 2);
}

#[tokio::test]
async fn a_body_larger_than_any_real_answer_is_an_error() {
    let (client, _server) = setup().await;
    for id in ["huge", "huge-stream"] {
        let error = client.workspace(id).await.unwrap_err();
        assert!(matches!(error, CoderError::Decode { .. }), "{id}: {error:?}");
        assert!(error.to_string().contains("larger than the 8 MiB the operator reads from Coder"), "{id}: {error}");
    }
}

#[tokio::test]
async fn creates_a_workspace_with_a_json_body() {
    let (client, server) = setup().await;
    let request = CreateWorkspaceRequest {
        name: "fix-login-bug".into(),
        template_id: Some("t-1".into()),
        rich_parameter_values: vec![ParameterValue { name: "cpu".into(), value: "4".into() }],
        ..Default::default()
    };
    let workspace = client.create_workspace("alice", &request).await.unwrap();
    assert_eq!(workspace.name, "fix-login-bug");

    let seen = &server.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/v2/users/alice/workspaces");
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({
            "name": "fix-login-bug",
            "template_id": "t-1",
            "rich_parameter_values": [{"name": "cpu", "value": "4"}]
        })
    );
}

#[tokio::test]
async fn an_active_build_is_a_conflict() {
    let (client, _server) = setup().await;
    let request = CreateWorkspaceBuildRequest::new(WorkspaceTransition::Start);
    let error = client.create_build("ws-1", &request).await.unwrap_err();
    assert!(matches!(&error, CoderError::Conflict { message } if message.contains("already active")), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let (client, _server) = setup().await;
    let error = client.workspace("unavailable").await.unwrap_err();
    assert!(matches!(error, CoderError::Unavailable { status: 503, .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn null_lists_decode_as_empty() {
    let (client, _server) = setup().await;
    assert!(client.template_version_presets("v-1").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_hanging_request_times_out() {
    let (url, _server) = start_server().await;
    let client = client_for(&url, IMPATIENT);
    let started = Instant::now();
    let error = client.workspace("hang").await.unwrap_err();
    assert!(matches!(error, CoderError::Timeout { endpoint: "GET /workspaces/{id}" }), "{error:?}");
    assert!(error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = client_for(&format!("http://{address}"), PATIENT);
    let error = client.current_user().await.unwrap_err();
    assert!(matches!(&error, CoderError::Transport { endpoint: "GET /users/me", .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (client, server) = setup().await;
    let error = client.user("redirect").await.unwrap_err();
    assert!(matches!(error, CoderError::UnexpectedStatus { status: 302, .. }), "{error:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn the_token_never_shows_in_errors_or_debug_output() {
    let (client, _server) = setup().await;
    let mut shown = vec![format!("{client:?}")];
    for user in ["echo", "echo-validation", "echo-body"] {
        let error = client.user(user).await.unwrap_err();
        shown.push(error.to_string());
        shown.push(format!("{error:?}"));
    }
    for text in &shown {
        assert!(!text.contains(SECRET), "token leaked: {text}");
    }
    assert!(shown.iter().any(|text| text.contains("[redacted]")));
}

#[tokio::test]
async fn the_probe_tells_its_outcomes_apart() {
    let (client, _server) = setup().await;
    let probe = |agent: &'static str| {
        let client = client.clone();
        async move { client.probe_agent(agent, IMPATIENT).await }
    };

    assert_eq!(probe("up").await, ProbeOutcome::Reachable);

    for (agent, code) in [("down", 400), ("old-down", 412)] {
        let outcome = probe(agent).await;
        assert!(
            matches!(
                &outcome,
                ProbeOutcome::Refused { status, message }
                    if *status == code && message.contains(r#"must be in the "connected" state"#)
            ),
            "{outcome:?}"
        );
        assert!(!outcome.is_reachable());
    }

    // The client's request timeout is 10 s: only the probe's own 200 ms can
    // end this one in time.
    let started = Instant::now();
    assert_eq!(probe("hang").await, ProbeOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));

    let outcome = probe("dial-fails").await;
    let ProbeOutcome::Failed { message } = &outcome else {
        panic!("expected a failed probe, got {outcome:?}");
    };
    assert!(message.contains("(500)"), "{message}");
    assert!(message.contains("Internal error dialing workspace agent."));
    // No evidence about the agent: coderd never got to dial it.
    let outcome = probe("gone").await;
    assert!(matches!(&outcome, ProbeOutcome::Inconclusive { message } if message.contains("not found")), "{outcome:?}");
    for (agent, code) in [("limited", 429), ("no-token", 401), ("forbidden", 403), ("proxy", 502), ("lb", 503)] {
        let outcome = probe(agent).await;
        assert!(!outcome.is_conclusive(), "a {code} is no evidence about the agent: {outcome:?}");
    }
    let unreachable = client_for("http://127.0.0.1:9", PATIENT);
    let outcome = unreachable.probe_agent("up", IMPATIENT).await;
    assert!(!outcome.is_conclusive(), "coderd out of reach is no evidence about the agent: {outcome:?}");
}

#[tokio::test]
async fn the_observer_sees_each_request_once() {
    let (url, _server) = start_server().await;
    let observations = Arc::new(Observations::default());
    let client = client_for(&url, IMPATIENT).with_observer(observations.clone(), "team/coder");

    client.current_user().await.unwrap();
    client.workspace("missing").await.unwrap_err();
    client.workspace("hang").await.unwrap_err();
    client.probe_agent("up", IMPATIENT).await;

    assert_eq!(
        *observations.0.lock().unwrap(),
        [
            ("GET /users/me", Some(200)),
            ("GET /workspaces/{id}", Some(404)),
            ("GET /workspaces/{id}", None),
            ("GET /workspaceagents/{id}/listening-ports", Some(200)),
        ]
        .map(|(endpoint, status)| ("team/coder".to_owned(), endpoint, status))
    );
}

#[test]
fn rejects_unusable_base_urls() {
    let token = || SessionToken::new(SECRET).unwrap();
    for url in [
        "coder.example.com",
        "ftp://coder.example.com",
        "https://alice:hunter2@coder.example.com",
        "https://coder.example.com/?x=1",
    ] {
        let error = CoderClient::new(url, token(), PATIENT).unwrap_err();
        assert_eq!(error.reason(), "InvalidUrl", "{url}");
        assert!(!error.to_string().contains("hunter2"));
    }
    let error = CoderClient::new("https://coder.example.com", token(), Duration::ZERO).unwrap_err();
    assert_eq!(error.reason(), "InvalidArgument");
}

#[test]
fn route_labels_build_their_paths() {
    let (_, api_url) = parse_base_url("https://coder.example.com/").unwrap();
    let url = route::TEMPLATE_BY_NAME.url(&api_url, &["coder", "docker dev"]).unwrap();
    assert_eq!(url.as_str(), "https://coder.example.com/api/v2/organizations/coder/templates/docker%20dev");
    let url = route::CURRENT_USER.url(&api_url, &[]).unwrap();
    assert_eq!(url.as_str(), "https://coder.example.com/api/v2/users/me");
}

#[tokio::test]
async fn writes_pass_the_fence_and_one_in_flight_when_it_closes_is_dropped() {
    let (url, server) = start_server().await;
    let fence = crate::leader::Fence::closed();
    let client = client_for(&url, PATIENT).with_fence(fence.clone());
    let request = CreateWorkspaceBuildRequest::new(WorkspaceTransition::Start);
    let refused = client.create_build("ws-1", &request).await.unwrap_err();
    assert!(matches!(refused, CoderError::LeaseExpired { endpoint: "POST /workspaces/{id}/builds" }), "{refused:?}");
    assert!(server.seen().is_empty(), "nothing sent while the fence is closed");
    client.current_user().await.expect("reads do not pass the fence");

    fence.open_until(tokio::time::Instant::now() + Duration::from_secs(60));
    let sent = client.create_build("ws-1", &request).await.unwrap_err();
    assert!(matches!(sent, CoderError::Conflict { .. }), "sent while open: {sent:?}");

    let closing = crate::leader::Fence::closed();
    let client = client_for(&url, PATIENT).with_fence(closing.clone());
    closing.open_until(tokio::time::Instant::now() + IMPATIENT);
    let started = Instant::now();
    let dropped = client.create_build("hang", &request).await.unwrap_err();
    assert!(matches!(dropped, CoderError::LeaseExpired { .. }), "{dropped:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "dropped when the fence closed, not when it was answered");
}
