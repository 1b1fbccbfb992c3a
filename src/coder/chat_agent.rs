//! Which agent of a workspace serves the chat: Coder's chat-agent rule.

use std::cmp::Ordering;

use super::types::{WorkspaceAgent, WorkspaceBuild};

/// The name suffix by which a template marks its chat agent (matched without
/// regard to case).
pub const CHAT_AGENT_SUFFIX: &str = "-coderd-chat";

/// Picks the chat's agent among the agents of `build`.
///
/// With an explicit `name`, it is the agent of exactly that name, root or
/// sub-agent. Otherwise Coder's rule applies: among root agents (no parent),
/// ordered by display order then name, the one agent whose name ends in
/// `-coderd-chat`; if none or several do, the first.
///
/// `None` when the build has no such agent (yet): a build that has not
/// provisioned its resources, a stopped workspace, or a wrong name.
pub fn chat_agent<'a>(build: &'a WorkspaceBuild, name: Option<&str>) -> Option<&'a WorkspaceAgent> {
    if let Some(name) = name {
        return build.agents().find(|agent| agent.name == name);
    }
    let mut roots: Vec<&WorkspaceAgent> = build.agents().filter(|agent| agent.is_root()).collect();
    roots.sort_by(|a, b| display_order(a, b));

    let mut marked = roots.iter().filter(|agent| is_chat_agent(&agent.name));
    match (marked.next(), marked.next()) {
        (Some(only), None) => Some(only),
        _ => roots.first().copied(),
    }
}

fn is_chat_agent(name: &str) -> bool {
    name.to_lowercase().ends_with(CHAT_AGENT_SUFFIX)
}

/// Display order, then name ignoring case, then name, then id, so that the
/// choice never depends on the order coderd happened to list agents in.
fn display_order(a: &WorkspaceAgent, b: &WorkspaceAgent) -> Ordering {
    a.display_order
        .cmp(&b.display_order)
        .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Agent {
        name: &'static str,
        order: i32,
        parent: Option<&'static str>,
    }

    fn root(name: &'static str, order: i32) -> Agent {
        Agent { name, order, parent: None }
    }

    fn sub(name: &'static str, parent: &'static str) -> Agent {
        Agent { name, order: 0, parent: Some(parent) }
    }

    /// A build with the agents spread over two resources, as multi-resource
    /// templates produce.
    fn build(agents: &[Agent]) -> WorkspaceBuild {
        let agents: Vec<_> = agents
            .iter()
            .map(|agent| {
                json!({
                    "id": format!("id-{}", agent.name),
                    "name": agent.name,
                    "parent_id": agent.parent.map(|parent| format!("id-{parent}")),
                    "display_order": agent.order,
                    "created_at": "2025-03-01T09:00:00Z",
                })
            })
            .collect();
        let (first, second) = agents.split_at(agents.len() / 2);
        serde_json::from_value(json!({
            "id": "build",
            "created_at": "2025-03-01T09:00:00Z",
            "updated_at": "2025-03-01T09:00:00Z",
            "job": {"id": "job", "created_at": "2025-03-01T09:00:00Z"},
            "resources": [
                {"id": "r1", "agents": first},
                {"id": "r2", "agents": second},
            ],
        }))
        .unwrap()
    }

    fn chosen(agents: &[Agent], name: Option<&str>) -> Option<String> {
        chat_agent(&build(agents), name).map(|agent| agent.name.clone())
    }

    #[test]
    fn the_single_suffixed_agent_wins() {
        let agents = [root("alpha", 0), root("dev-coderd-chat", 5), root("zeta", 0)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("dev-coderd-chat"));
    }

    #[test]
    fn the_suffix_matches_regardless_of_case() {
        let agents = [root("alpha", 0), root("Dev-Coderd-Chat", 0)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("Dev-Coderd-Chat"));
    }

    #[test]
    fn without_a_suffix_the_lowest_display_order_wins() {
        let agents = [root("zeta", 2), root("bravo", 1), root("alpha", 1)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("alpha"));
    }

    #[test]
    fn names_tie_break_without_regard_to_case() {
        let agents = [root("beta", 0), root("Alpha", 0)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("Alpha"));
    }

    #[test]
    fn several_suffixed_agents_fall_back_to_the_first() {
        let agents = [root("b-coderd-chat", 0), root("main", 0), root("a-coderd-chat", 1)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("b-coderd-chat"));
        let agents = [root("x-coderd-chat", 1), root("main", 0), root("y-coderd-chat", 1)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("main"));
    }

    #[test]
    fn sub_agents_are_not_candidates() {
        let agents = [sub("aaa-coderd-chat", "main"), root("main", 3)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("main"));
        let agents = [sub("aaa", "main"), root("main", 3)];
        assert_eq!(chosen(&agents, None).as_deref(), Some("main"));
    }

    #[test]
    fn an_explicit_name_picks_that_agent() {
        let agents = [root("alpha", 0), root("dev-coderd-chat", 0), sub("devcontainer", "alpha")];
        assert_eq!(chosen(&agents, Some("alpha")).as_deref(), Some("alpha"));
        assert_eq!(chosen(&agents, Some("devcontainer")).as_deref(), Some("devcontainer"));
        assert_eq!(chosen(&agents, Some("missing")), None);
        assert_eq!(chosen(&agents, Some("ALPHA")), None, "names are exact");
    }

    #[test]
    fn a_build_without_agents_has_no_chat_agent() {
        assert_eq!(chosen(&[], None), None);
        assert_eq!(chosen(&[sub("only-sub", "gone")], None), None);
    }
}
