//! The Coder side: a client that speaks exactly the REST API of
//! `docs/coder-api.md`, its wire types, and the rule that picks a chat's agent.

mod chat_agent;
mod client;
mod error;
mod rate;
pub mod search;
mod token;
mod types;

pub use chat_agent::{CHAT_AGENT_SUFFIX, chat_agent};
pub use client::{ChatApi, CoderClient, MAX_WORKSPACES_PER_CHAT_LOOKUP, ProbeOutcome, RequestObserver};
pub use error::{CoderError, FieldError};
pub use rate::RateLimit;
pub use token::{SessionToken, TokenError};
pub use types::{
    AgentHealth, AgentLifecycle, AgentStatus, AutomaticUpdates, Chat, ChatContext, ChatContextResource, ChatError,
    CreateWorkspaceBuildRequest, CreateWorkspaceRequest, ListeningPort, ListeningPorts, Organization, ParameterOption,
    ParameterValue, Preset, PresetParameter, ProvisionerJob, ProvisionerJobStatus, TOKEN_USER, Template,
    TemplateVersion, TemplateVersionParameter, User, UsersResponse, Workspace, WorkspaceAgent, WorkspaceBuild,
    WorkspaceBuildReason, WorkspaceHealth, WorkspaceResource, WorkspaceStatus, WorkspaceTransition, WorkspacesResponse,
};
