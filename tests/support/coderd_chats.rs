//! Chats on the test coderd: the fake model (`coder_sim::fake_model`) on
//! loopback, an `openai-compat` AI provider pointed at it and a default
//! model configuration, both made through coderd's API, and the chat
//! requests the tests make as a user.
//!
//! coderd v2.36.1 runs its chat daemon whenever the AI Gateway is enabled
//! (`--ai-gateway-enabled`, on by default); no experiment flag is needed.
//! The daemon sends a turn through the in-process gateway, which forwards
//! it to the provider's base URL: `POST {base}/chat/completions`.

use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use coder_sim::fake_model::FakeModel;
use serde_json::{Value, json};

use super::coderd::{Api, ApiError, Coderd, str_field};

/// Under `/api/experimental`, where coderd v2.36.1 serves chats.
const CHATS: &str = "/chats";

/// The fake model of this test binary, on a thread and runtime of its own:
/// it outlives every test's runtime.
pub fn fake_model() -> &'static FakeModel {
    static MODEL: OnceLock<FakeModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        thread::Builder::new()
            .name("fake-model".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(async {
                    let model = FakeModel::start().await.expect("start the fake model");
                    sender.send(model).expect("hand the fake model over");
                    std::future::pending::<()>().await;
                });
            })
            .expect("spawn the fake model's thread");
        receiver.recv().expect("the fake model started")
    })
}

/// The provider and the default model configuration, made once per coderd.
pub struct ChatModel {
    pub provider_id: String,
    pub model_config_id: String,
}

/// Sets chats up on the shared coderd (once): the provider pointed at the
/// fake model and a default model configuration.
pub async fn chat_model(coderd: &Coderd) -> &'static ChatModel {
    static MODEL: tokio::sync::OnceCell<ChatModel> = tokio::sync::OnceCell::const_new();
    MODEL
        .get_or_init(|| async {
            let api = coderd.admin_api();
            let experimental = api.experimental();
            let provider: Value = api
                .post(
                    "/ai/providers",
                    &json!({
                        "type": "openai-compat",
                        "name": "fake",
                        "display_name": "Fake model",
                        "enabled": true,
                        "base_url": format!("{}/v1", fake_model().url()),
                        "api_keys": ["fake-key"],
                    }),
                )
                .await
                .expect("create the AI provider");
            let provider_id = str_field(&provider, "id");
            let config: Value = experimental
                .post(
                    &format!("{CHATS}/model-configs"),
                    &json!({
                        "ai_provider_id": provider_id,
                        "model": coder_sim::fake_model::MODEL,
                        "display_name": "Fake model",
                        "enabled": true,
                        "is_default": true,
                        "context_limit": 100_000,
                    }),
                )
                .await
                .expect("create the chat model configuration");
            // Chats need the organization role `agents-access`; the first
            // user (Owner) has chat access without it, a member does not.
            let _: Value = api
                .put(
                    &format!("/organizations/{}/members/{}/roles", coderd.organization_id, coderd.member.username),
                    &json!({"roles": ["agents-access"]}),
                )
                .await
                .expect("give the member the agents-access role");
            ChatModel { provider_id, model_config_id: str_field(&config, "id") }
        })
        .await
}

/// Chat requests as one user.
pub struct Chats {
    api: Api,
    organization_id: String,
    model_config_id: String,
}

impl Chats {
    /// Chat requests with `api`'s token (e.g. [`Coderd::admin_api`]).
    pub async fn with(coderd: &Coderd, api: &Api) -> Chats {
        let model = chat_model(coderd).await;
        let api = api.experimental();
        Chats { api, organization_id: coderd.organization_id.clone(), model_config_id: model.model_config_id.clone() }
    }

    /// A new chat on `workspace_id` whose first message is `text`.
    pub async fn create(&self, workspace_id: &str, text: &str) -> Result<Value, ApiError> {
        self.api
            .post(
                CHATS,
                &json!({
                    "organization_id": self.organization_id,
                    "workspace_id": workspace_id,
                    "model_config_id": self.model_config_id,
                    "content": [{"type": "text", "text": text}],
                }),
            )
            .await
    }

    pub async fn get(&self, id: &str) -> Result<Value, ApiError> {
        self.api.get(&format!("{CHATS}/{id}")).await
    }

    /// Sends a user message: a new turn.
    pub async fn send(&self, id: &str, text: &str) -> Result<Value, ApiError> {
        self.api
            .post(
                &format!("{CHATS}/{id}/messages"),
                &json!({"content": [{"type": "text", "text": text}], "model_config_id": self.model_config_id}),
            )
            .await
    }

    pub async fn by_workspace(&self, workspace_ids: &[&str]) -> Result<Value, ApiError> {
        self.api.get(&format!("{CHATS}/by-workspace?workspace_ids={}", workspace_ids.join(","))).await
    }

    /// Waits until the chat satisfies `done`, and returns it.
    pub async fn wait(&self, id: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let chat = self.get(id).await.expect("read the chat");
            if done(&chat) {
                return chat;
            }
            assert!(Instant::now() < deadline, "chat {id} not {what} after {timeout:?}: {chat:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
