//! The chat routes (docs/coder-api.md, "Chats"). They moved: v2.36.x serves
//! them under `/api/experimental/chats`, v2.37 under `/api/v2/chats` (and
//! the release after drops the experimental mount). A client tries the v2
//! mount first; when coderd's router answers that it has no such route, it
//! uses the experimental one, and remembers whichever answered.

use std::collections::HashMap;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use super::{Answer, CoderClient, Route, route};
use crate::coder::error::CoderError;
use crate::coder::types::Chat;

/// coderd's limit on `workspace_ids` in one by-workspace request.
pub const MAX_WORKSPACES_PER_CHAT_LOOKUP: usize = 25;

/// coderd's message for a path its router does not know (as opposed to a
/// chat that does not exist or is not the caller's: "Resource not found…").
const ROUTE_NOT_FOUND: &str = "Route not found.";

/// Where a deployment serves its chat routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatApi {
    /// `/api/v2/chats` (v2.37 and later).
    V2,
    /// `/api/experimental/chats` (v2.36.x).
    Experimental,
}

impl ChatApi {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::V2 => "/api/v2",
            Self::Experimental => "/api/experimental",
        }
    }
}

impl CoderClient {
    /// Per workspace id, the latest non-archived chat this token can read
    /// (sub-agent chats included); workspaces without one are left out. At
    /// most [`MAX_WORKSPACES_PER_CHAT_LOOKUP`] ids.
    pub async fn chats_by_workspace(&self, workspace_ids: &[String]) -> Result<HashMap<String, String>, CoderError> {
        if workspace_ids.len() > MAX_WORKSPACES_PER_CHAT_LOOKUP {
            return Err(CoderError::InvalidArgument {
                message: format!(
                    "at most {MAX_WORKSPACES_PER_CHAT_LOOKUP} workspaces per chat lookup, not {}",
                    workspace_ids.len()
                ),
            });
        }
        if workspace_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = workspace_ids.join(",");
        self.chat_call(route::CHATS_BY_WORKSPACE, &[], Some(("workspace_ids", &ids))).await
    }

    /// The chat with its sub-agent chats (`children`) and context.
    pub async fn chat(&self, id: &str) -> Result<Chat, CoderError> {
        self.chat_call(route::CHAT, &[id], None).await
    }

    /// Re-pins the chat's context to its agent's latest snapshot; with no
    /// agent bound, coderd clears the pin instead, so call it only once the
    /// latest build's chat agent is connected and ready.
    pub async fn refresh_chat_context(&self, id: &str) -> Result<Chat, CoderError> {
        self.chat_call(route::CHAT_CONTEXT, &[id], None).await
    }

    /// Stops the chat's running turn. `Conflict` when there is none.
    pub async fn interrupt_chat(&self, id: &str) -> Result<Chat, CoderError> {
        self.chat_call(route::CHAT_INTERRUPT, &[id], None).await
    }

    /// The mount this client found the chat routes on, once it knows.
    pub fn chat_api(&self) -> Option<ChatApi> {
        *self.inner.chat_api.lock().expect("chat api")
    }

    async fn chat_call<T: DeserializeOwned>(
        &self,
        route: Route,
        args: &[&str],
        query: Option<(&str, &str)>,
    ) -> Result<T, CoderError> {
        let known = self.chat_api();
        let first = known.unwrap_or(ChatApi::V2);
        let answer =
            self.exchange(route, self.chat_url(first, route, args, query)?, None, self.inner.request_timeout).await?;
        if known.is_some() {
            return self.decode(route, answer);
        }
        if first == ChatApi::V2 && self.is_route_not_found(&answer) {
            let fallback = ChatApi::Experimental;
            let answer = self
                .exchange(route, self.chat_url(fallback, route, args, query)?, None, self.inner.request_timeout)
                .await?;
            self.learn(fallback, &answer);
            return self.decode(route, answer);
        }
        self.learn(first, &answer);
        self.decode(route, answer)
    }

    /// Remembers the mount when its answer proves the route is there (not a
    /// 429 or a 5xx, which say nothing about routes).
    fn learn(&self, api: ChatApi, answer: &Answer) {
        let telling = !self.is_route_not_found(answer)
            && answer.status != StatusCode::TOO_MANY_REQUESTS
            && !answer.status.is_server_error();
        if telling {
            *self.inner.chat_api.lock().expect("chat api") = Some(api);
        }
    }

    fn is_route_not_found(&self, answer: &Answer) -> bool {
        answer.status == StatusCode::NOT_FOUND && self.error_body(answer).message == ROUTE_NOT_FOUND
    }

    fn chat_url(
        &self,
        api: ChatApi,
        route: Route,
        args: &[&str],
        query: Option<(&str, &str)>,
    ) -> Result<Url, CoderError> {
        let root = match api {
            ChatApi::V2 => &self.inner.api_url,
            ChatApi::Experimental => &self.inner.experimental_url,
        };
        let mut url = route.url(root, args)?;
        if let Some((key, value)) = query {
            url.query_pairs_mut().append_pair(key, value);
        }
        Ok(url)
    }
}
