//! The fake OpenAI-compatible model over HTTP: what a chat daemon's client
//! reads from it, and a held turn that waits for its release or ends when
//! the caller hangs up.

use std::time::{Duration, Instant};

use coder_sim::fake_model::{Answer, FakeModel, HOLD_MARKER, MODEL, REPLY};
use serde_json::{Value, json};

fn turn(text: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "execute", "parameters": {}}}],
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": text}]},
        ],
    })
}

/// The `data:` payloads of a server-sent event body, `[DONE]` included.
fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|line| line.strip_prefix("data: ")).map(str::to_owned).collect()
}

/// The text a client puts together from the chunks' `delta.content`.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).expect("a JSON chunk"))
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not {what} after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_turn_is_answered_in_plain_text_streamed_or_not() {
    let model = FakeModel::start().await.unwrap();
    let http = reqwest::Client::new();

    let answer: Value = http
        .post(format!("{}/v1/chat/completions", model.url()))
        .json(&turn("hello", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let response = http.post(format!("{}/v1/chat/completions", model.url())).json(&turn("hello", true)).send().await;
    let response = response.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&events), REPLY);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 16, "the usage chunk a client asked for comes last");

    let models: Value = http.get(format!("{}/v1/models", model.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(model.completions().len(), 2);
    assert!(model.completions().iter().all(|c| c.answer == Answer::Text && c.last_user == "hello"));
}

#[tokio::test]
async fn a_held_turn_waits_for_its_release_then_ends() {
    let model = FakeModel::start().await.unwrap();
    let url = format!("{}/v1/chat/completions", model.url());
    let mut response = reqwest::Client::new().post(url).json(&turn(HOLD_MARKER, true)).send().await.unwrap();
    // The first words come at once, as a model that has started to answer.
    let first = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.contains("chat.completion.chunk"), "{first}");
    wait_until("held", || model.held_now() == 1).await;
    let still = tokio::time::timeout(Duration::from_millis(300), async {
        let mut body = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&chunk));
            if body.contains("[DONE]") {
                break;
            }
        }
        body
    })
    .await;
    assert!(still.is_err(), "a held turn does not end on its own");

    let control: reqwest::StatusCode =
        reqwest::Client::new().post(format!("{}/control/release", model.url())).send().await.unwrap().status();
    assert_eq!(control, reqwest::StatusCode::NO_CONTENT);
    let mut rest = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("[DONE]"), "{rest}");
    assert_eq!(model.held_now(), 0);
    assert!(!model.completions()[0].cancelled);
}

#[tokio::test]
async fn a_held_turn_whose_caller_hangs_up_is_recorded_as_cancelled() {
    let model = FakeModel::start().await.unwrap();
    let url = format!("{}/v1/chat/completions", model.url());
    let mut response = reqwest::Client::new().post(url).json(&turn(HOLD_MARKER, true)).send().await.unwrap();
    response.chunk().await.unwrap();
    wait_until("held", || model.held_now() == 1).await;
    // An interrupted turn: the chat daemon cancels the request.
    drop(response);
    wait_until("cancelled", || model.completions()[0].cancelled).await;
    assert_eq!(model.held_now(), 0);

    let state: Value = reqwest::get(format!("{}/control/state", model.url())).await.unwrap().json().await.unwrap();
    assert_eq!(state["completions"][0]["answer"], "held");
    assert_eq!(state["completions"][0]["cancelled"], true);
}

#[tokio::test]
async fn a_release_by_text_lets_only_the_matching_turns_go_on() {
    let model = FakeModel::start().await.unwrap();
    let url = format!("{}/v1/chat/completions", model.url());
    let http = reqwest::Client::new();
    let mut mine = http.post(&url).json(&turn(&format!("{HOLD_MARKER} mine"), true)).send().await.unwrap();
    let mut theirs = http.post(&url).json(&turn(&format!("{HOLD_MARKER} theirs"), true)).send().await.unwrap();
    mine.chunk().await.unwrap();
    theirs.chunk().await.unwrap();
    wait_until("both held", || model.held_now() == 2).await;
    model.release_matching("mine");
    let mut body = String::new();
    while let Some(chunk) = mine.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("[DONE]"));
    assert_eq!(model.held_now(), 1, "the other test's turn is still held");

    // A release by text holds for turns that come later too.
    let later = http.post(&url).json(&turn(&format!("{HOLD_MARKER} mine again"), true)).send().await.unwrap();
    assert!(later.text().await.unwrap().contains("[DONE]"));
    drop(theirs);
}
