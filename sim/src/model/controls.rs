//! One-shot faults armed from tests or the control API, and what happens
//! to agent processes.

use jiff::Timestamp;
use uuid::Uuid;

use super::{Deployment, JobFailure, Transition};

/// One-shot behaviours armed from tests or the control API.
#[derive(Debug, Default)]
pub(super) struct Rules {
    fail_next: Vec<FailRule>,
    /// `None` matches the next start build of any workspace.
    never_connect: Vec<Option<Uuid>>,
    /// `None` matches the next start build of any workspace.
    startup_fails: Vec<Option<Uuid>>,
}

#[derive(Debug)]
struct FailRule {
    workspace: Option<Uuid>,
    transition: Option<Transition>,
    failure: JobFailure,
}

impl Deployment {
    pub fn fail_next_build(&mut self, workspace: Option<Uuid>, transition: Option<Transition>, failure: JobFailure) {
        self.rules.fail_next.push(FailRule { workspace, transition, failure });
    }

    pub(super) fn take_failure(&mut self, workspace_id: Uuid, transition: Transition) -> Option<JobFailure> {
        let index = self.rules.fail_next.iter().position(|rule| {
            rule.workspace.is_none_or(|ws| ws == workspace_id) && rule.transition.is_none_or(|t| t == transition)
        })?;
        Some(self.rules.fail_next.remove(index).failure)
    }

    pub fn never_connect_next_start(&mut self, workspace: Option<Uuid>) {
        self.rules.never_connect.push(workspace);
    }

    pub(super) fn take_never_connect(&mut self, workspace_id: Uuid) -> bool {
        let found = self.rules.never_connect.iter().position(|rule| rule.is_none_or(|ws| ws == workspace_id));
        found.map(|index| self.rules.never_connect.remove(index)).is_some()
    }

    pub fn fail_startup_next_start(&mut self, workspace: Option<Uuid>) {
        self.rules.startup_fails.push(workspace);
    }

    pub(super) fn take_startup_failure(&mut self, workspace_id: Uuid) -> bool {
        let found = self.rules.startup_fails.iter().position(|rule| rule.is_none_or(|ws| ws == workspace_id));
        found.map(|index| self.rules.startup_fails.remove(index)).is_some()
    }

    /// The agents of the workspace's most recent start build: the ones a
    /// kill or a respawn would hit.
    fn current_agents(&self, workspace_id: Uuid) -> Vec<Uuid> {
        let Some(workspace) = self.workspaces.get(&workspace_id) else {
            return Vec::new();
        };
        workspace
            .builds
            .iter()
            .rev()
            .filter_map(|id| self.builds.get(id))
            .find(|build| build.transition == Transition::Start)
            .map(|build| build.agents.clone())
            .unwrap_or_default()
    }

    /// Kills the agent processes of a workspace; returns how many it hit.
    pub fn kill_agents(&mut self, workspace_id: Uuid, now: Timestamp) -> usize {
        let ids = self.current_agents(workspace_id);
        for id in &ids {
            if let Some(agent) = self.agents.get_mut(id) {
                agent.kill(now);
            }
        }
        ids.len()
    }

    pub fn revive_agents(&mut self, workspace_id: Uuid, now: Timestamp) -> usize {
        let ids = self.current_agents(workspace_id);
        for id in &ids {
            if let Some(agent) = self.agents.get_mut(id) {
                agent.revive(now);
            }
        }
        ids.len()
    }

    pub fn partition_probe(&mut self, workspace_id: Uuid, partitioned: bool) -> bool {
        match self.workspaces.get_mut(&workspace_id) {
            Some(workspace) => {
                workspace.probe_partitioned = partitioned;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewWorkspace;
    use crate::model::tests::{deployment, template_id};

    #[test]
    fn armed_failures_hit_only_the_matching_build() {
        let (mut deployment, now) = deployment();
        let failure = JobFailure { error: "boom".to_owned(), error_code: None };
        deployment.fail_next_build(None, Some(Transition::Stop), failure);
        let request = NewWorkspace {
            name: "w".to_owned(),
            template_id: Some(template_id(&deployment, "docker-dev")),
            ..NewWorkspace::default()
        };
        let id = deployment.create_workspace(deployment.me, None, &request, now).unwrap();
        assert!(deployment.latest_build(&deployment.workspaces[&id]).job.failure.is_none());
        assert_eq!(deployment.rules.fail_next.len(), 1);
    }
}
