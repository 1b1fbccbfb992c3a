//! A fake OpenAI-compatible model on loopback, for a real coderd's chat
//! daemon: `POST /v1/chat/completions` (streamed as server-sent events, or
//! one JSON answer) and `GET /v1/models`. It answers plain text, and it can
//! hold a turn open so a test can see a chat `running` and interrupt it.
//!
//! What it answers depends on the last message of the conversation:
//! - a tool result: a plain text answer, ending the turn;
//! - a user message with `FAKE-MODEL-TOOL <name> <json arguments>` on a line
//!   of its own: one call of that tool, if the request offers it (the
//!   arguments may carry the hold marker for the turn the tool starts);
//! - a user message with [`HOLD_MARKER`] elsewhere, in a streamed request
//!   that offers tools (the chat's own turn, not a title or summary
//!   request): the first words at once, then nothing until
//!   [`FakeModel::release`] or `POST /control/release`, or until the caller
//!   hangs up (an interrupt);
//! - anything else: [`REPLY`].
//!
//! `GET /control/state` tells what it was asked; the same is available
//! in-process through [`FakeModel::completions`] and friends.
//!
//! Paths are accepted with and without the `/v1` prefix: a provider's base
//! URL may or may not include it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// In the last user message, holds the turn open until released.
pub const HOLD_MARKER: &str = "FAKE-MODEL-HOLD";
/// At the start of a line of the last user message: call a tool.
pub const TOOL_MARKER: &str = "FAKE-MODEL-TOOL";
/// The text of every plain answer.
pub const REPLY: &str = "Done: the fake model answered.";
/// The model the fake lists in `/v1/models`; it answers for any name.
pub const MODEL: &str = "fake-model-1";

/// What one completion request asked, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    pub path: String,
    pub model: String,
    pub stream: bool,
    /// The names of the tools the request offered.
    pub tools: Vec<String>,
    /// The text of the last user message.
    pub last_user: String,
    /// The role of the last message (`user`, `tool`, ...).
    pub last_role: String,
    pub answer: Answer,
    /// A held turn whose caller hung up before it was released.
    pub cancelled: bool,
}

/// What the fake answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Text,
    Held,
    ToolCall(String),
}

#[derive(Default)]
struct Record {
    completions: Vec<Completion>,
    /// Turns being held now.
    held_now: usize,
    /// Texts released so far: a held turn whose last user message contains
    /// one goes on.
    releases: Vec<String>,
    /// Held turns are numbered; those below this were released all at once.
    held_seen: u64,
    released_below: u64,
    other_requests: Vec<String>,
}

struct Shared {
    record: Mutex<Record>,
    /// Bumped by each release: every turn held before it goes on.
    released: watch::Sender<u64>,
    ids: AtomicU64,
}

impl Shared {
    /// `None`: every turn held now.
    fn release(&self, text: Option<&str>) {
        let mut record = self.record();
        match text {
            Some(text) => record.releases.push(text.to_owned()),
            None => record.released_below = record.held_seen,
        }
        drop(record);
        self.released.send_modify(|n| *n += 1);
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake model; dropping it stops the server.
pub struct FakeModel {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeModel {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeModel> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn bind(addr: SocketAddr) -> anyhow::Result<FakeModel> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            record: Mutex::new(Record::default()),
            released: watch::channel(0).0,
            ids: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .route("/control/release", post(release))
            .route("/control/state", get(state))
            .fallback(unknown)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "fake model stopped");
            }
        });
        Ok(FakeModel { shared, addr, server })
    }

    /// `http://127.0.0.1:<port>`, without `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets every turn held now go on to its end.
    pub fn release(&self) {
        self.shared.release(None);
    }

    /// Lets the turns whose last user message contains `text` go on, now
    /// and when they come: tests sharing one fake model keep apart by it.
    pub fn release_matching(&self, text: &str) {
        self.shared.release(Some(text));
    }

    /// Every completion request so far, oldest first.
    pub fn completions(&self) -> Vec<Completion> {
        self.shared.record().completions.clone()
    }

    /// How many turns are held open now.
    pub fn held_now(&self) -> usize {
        self.shared.record().held_now
    }

    /// Requests to paths the fake does not serve (`METHOD path`).
    pub fn other_requests(&self) -> Vec<String> {
        self.shared.record().other_requests.clone()
    }
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}],
    }))
}

/// Releases every held turn, or with `?matching=TEXT` those whose last
/// user message contains TEXT.
async fn release(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> StatusCode {
    shared.release(query.get("matching").map(String::as_str).filter(|text| !text.is_empty()));
    StatusCode::NO_CONTENT
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let record = shared.record();
    Json(json!({
        "completions": record.completions,
        "held_now": record.held_now,
        "other_requests": record.other_requests,
    }))
}

async fn unknown(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let line = format!("{} {}", request.method(), request.uri().path());
    shared.record().other_requests.push(line);
    let body = json!({"error": {"message": "no such route in the fake model", "type": "invalid_request_error"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// The text of a message's `content`: a string, or the text parts of an array.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// What to answer to `request`, from its last messages and offered tools.
fn decide(request: &Value, stream: bool, tools: &[String]) -> (Answer, Option<Value>) {
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let last_role = messages.last().and_then(|m| m["role"].as_str()).unwrap_or_default();
    if last_role != "user" {
        return (Answer::Text, None);
    }
    let last_user = messages.last().map(|m| text_of(&m["content"])).unwrap_or_default();
    // A tool line comes first: its arguments may carry the hold marker for
    // the turn the tool starts (a sub-agent's prompt).
    let mut rest_of_message = Vec::new();
    for line in last_user.lines() {
        let Some(call) = line.trim().strip_prefix(TOOL_MARKER) else {
            rest_of_message.push(line);
            continue;
        };
        let call = call.trim();
        let (name, arguments) = call.split_once(' ').unwrap_or((call, "{}"));
        if tools.iter().any(|t| t == name) {
            return (Answer::ToolCall(name.to_owned()), Some(json!(arguments.trim())));
        }
    }
    if stream && !tools.is_empty() && rest_of_message.iter().any(|line| line.contains(HOLD_MARKER)) {
        return (Answer::Held, None);
    }
    (Answer::Text, None)
}

async fn completions(State(shared): State<Arc<Shared>>, uri: axum::http::Uri, Json(request): Json<Value>) -> Response {
    let stream = request["stream"].as_bool().unwrap_or(false);
    let model = request["model"].as_str().unwrap_or(MODEL).to_owned();
    let tools: Vec<String> = request["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let (answer, arguments) = decide(&request, stream, &tools);
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let last_user =
        messages.iter().rev().find(|m| m["role"] == "user").map(|m| text_of(&m["content"])).unwrap_or_default();
    let index = {
        let mut record = shared.record();
        record.completions.push(Completion {
            path: uri.path().to_owned(),
            model: model.clone(),
            stream,
            tools,
            last_user: last_user.clone(),
            last_role: messages.last().and_then(|m| m["role"].as_str()).unwrap_or_default().to_owned(),
            answer: answer.clone(),
            cancelled: false,
        });
        record.completions.len() - 1
    };
    let id = format!("chatcmpl-fake-{}", shared.ids.fetch_add(1, Ordering::Relaxed));
    let created = jiff::Timestamp::now().as_second();
    let tool_call = match (&answer, arguments) {
        (Answer::ToolCall(name), Some(arguments)) => Some(json!({
            "id": format!("call-{id}"),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        })),
        _ => None,
    };
    if !stream {
        let message = match &tool_call {
            Some(call) => json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            None => json!({"role": "assistant", "content": REPLY}),
        };
        let finish = if tool_call.is_some() { "tool_calls" } else { "stop" };
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(),
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut head = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let mut tail = Vec::new();
    match &tool_call {
        Some(call) => {
            let mut call = call.clone();
            call["index"] = json!(0);
            head.push(chunk(json!({"tool_calls": [call]}), None));
            tail.push(chunk(json!({}), Some("tool_calls")));
        }
        None => {
            // Words one by one, as a model streams; a held turn stops after the first.
            let mut words = REPLY.split_inclusive(' ');
            if let Some(first) = words.next() {
                head.push(chunk(json!({"content": first}), None));
            }
            tail.extend(words.map(|word| chunk(json!({"content": word}), None)));
            tail.push(chunk(json!({}), Some("stop")));
        }
    }
    // The usage, last and on its own, only when the client asked for it.
    if request["stream_options"]["include_usage"] == json!(true) {
        tail.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(),
        }));
    }

    let hold = (answer == Answer::Held).then(|| HeldTurn::new(&shared, index, last_user));
    let events = sse_body(head, hold, tail);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn usage() -> Value {
    json!({"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16})
}

fn event(data: &Value) -> Result<String, std::convert::Infallible> {
    Ok(format!("data: {data}\n\n"))
}

/// The server-sent events: `head` at once, then (for a held turn) a wait
/// for the release, then `tail` and `[DONE]`.
fn sse_body(
    head: Vec<Value>,
    hold: Option<HeldTurn>,
    tail: Vec<Value>,
) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>> + Send {
    let head = futures::stream::iter(head.iter().map(event).collect::<Vec<_>>());
    let wait = futures::stream::once(async move {
        if let Some(mut hold) = hold {
            hold.wait().await;
        }
        // An SSE comment, which clients ignore: the stream goes on.
        Ok(": released\n\n".to_owned())
    });
    let rest = futures::stream::iter(
        tail.iter().map(event).chain(std::iter::once(Ok("data: [DONE]\n\n".to_owned()))).collect::<Vec<_>>(),
    );
    head.chain(wait).chain(rest)
}

/// A turn held open; dropped before its release, it was cancelled by the
/// caller (the stream is dropped when the connection closes).
struct HeldTurn {
    shared: Arc<Shared>,
    index: usize,
    seq: u64,
    last_user: String,
    released: watch::Receiver<u64>,
    done: bool,
}

impl HeldTurn {
    fn new(shared: &Arc<Shared>, index: usize, last_user: String) -> HeldTurn {
        // Subscribed before the check, so no release falls in between.
        let released = shared.released.subscribe();
        let mut record = shared.record();
        record.held_now += 1;
        let seq = record.held_seen;
        record.held_seen += 1;
        drop(record);
        HeldTurn { shared: Arc::clone(shared), index, seq, last_user, released, done: false }
    }

    fn is_released(&self) -> bool {
        let record = self.shared.record();
        self.seq < record.released_below || record.releases.iter().any(|text| self.last_user.contains(text.as_str()))
    }

    async fn wait(&mut self) {
        while !self.is_released() {
            // The sender lives in `shared`, which this turn holds: no error.
            if self.released.changed().await.is_err() {
                break;
            }
        }
        self.done = true;
        self.shared.record().held_now -= 1;
    }
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut record = self.shared.record();
        record.held_now -= 1;
        if let Some(completion) = record.completions.get_mut(self.index) {
            completion.cancelled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stream: bool, tools: &[&str], messages: Value) -> Value {
        let tools: Vec<Value> = tools.iter().map(|t| json!({"type": "function", "function": {"name": t}})).collect();
        json!({"model": MODEL, "stream": stream, "tools": tools, "messages": messages})
    }

    #[test]
    fn a_hold_marker_holds_only_a_streamed_turn_that_offers_tools() {
        let held = json!([{"role": "user", "content": [{"type": "text", "text": "please FAKE-MODEL-HOLD"}]}]);
        assert_eq!(decide(&request(true, &["execute"], held.clone()), true, &["execute".into()]).0, Answer::Held);
        assert_eq!(decide(&request(false, &["execute"], held.clone()), false, &["execute".into()]).0, Answer::Text);
        assert_eq!(decide(&request(true, &[], held), true, &[]).0, Answer::Text, "a title request is not held");
    }

    #[test]
    fn a_tool_marker_calls_an_offered_tool_and_a_tool_result_ends_the_turn() {
        let asked = json!([{"role": "user", "content": "go\nFAKE-MODEL-TOOL spawn_agent {\"prompt\": \"x\"}"}]);
        let (answer, arguments) =
            decide(&request(true, &["spawn_agent"], asked.clone()), true, &["spawn_agent".into()]);
        assert_eq!(answer, Answer::ToolCall("spawn_agent".into()));
        assert_eq!(arguments, Some(json!("{\"prompt\": \"x\"}")));
        assert_eq!(decide(&request(true, &[], asked), true, &[]).0, Answer::Text, "a tool not offered is not called");
        let answered =
            json!([{"role": "user", "content": "FAKE-MODEL-TOOL spawn_agent {}"}, {"role": "tool", "content": "ok"}]);
        assert_eq!(decide(&request(true, &["spawn_agent"], answered), true, &["spawn_agent".into()]).0, Answer::Text);
    }
}
