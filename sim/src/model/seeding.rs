//! Building a deployment from a [`Seed`].

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::{Deployment, Job, NewWorkspace, Organization, Preset, Template, TemplateVersion, User};
use crate::Timings;
use crate::faults::FaultTable;
use crate::requests::RequestLog;
use crate::seed::{self, Seed};

impl Deployment {
    pub fn from_seed(seed: &Seed, token: String, timings: Timings, now: Timestamp) -> anyhow::Result<Self> {
        let users: Vec<User> = seed
            .users
            .iter()
            .map(|user| User {
                id: user.id.unwrap_or_else(Uuid::new_v4),
                username: user.username.clone(),
                name: user.name.clone(),
                email: user.email.clone().unwrap_or_else(|| format!("{}@example.com", user.username)),
                roles: user.roles.clone(),
                created_at: now,
            })
            .collect();
        let me = users
            .iter()
            .find(|user| user.username == seed.token_user)
            .with_context(|| format!("token_user {:?} is not one of the seed's users", seed.token_user))?
            .id;
        let organizations: Vec<Organization> = seed
            .organizations
            .iter()
            .map(|org| Organization {
                id: org.id.unwrap_or_else(Uuid::new_v4),
                name: org.name.clone(),
                display_name: org.display_name.clone(),
                is_default: org.is_default,
                created_at: now,
            })
            .collect();

        let mut state = Deployment {
            token,
            me,
            timings,
            users,
            organizations,
            templates: Vec::new(),
            versions: HashMap::new(),
            workspaces: HashMap::new(),
            builds: HashMap::new(),
            agents: HashMap::new(),
            chats: HashMap::new(),
            snapshots: HashMap::new(),
            chat_api: Default::default(),
            context_refresh: Default::default(),
            rules: Default::default(),
            faults: FaultTable::default(),
            requests: RequestLog::default(),
        };
        for template in &seed.templates {
            state.add_template(template, now)?;
        }
        // Seeded workspaces already exist: their first build is back-dated so
        // that it has succeeded and its agents are ready at startup.
        let settled = timings.job_pending
            + timings.job_running
            + timings.agent_connect_delay
            + timings.agent_startup
            + Duration::from_secs(1);
        let created_at = now.checked_sub(SignedDuration::try_from(settled)?).context("seed timestamps out of range")?;
        for workspace in &seed.workspaces {
            state
                .add_seed_workspace(workspace, created_at)
                .with_context(|| format!("seed workspace {}/{}", workspace.owner, workspace.name))?;
        }
        Ok(state)
    }

    fn add_template(&mut self, template: &seed::Template, now: Timestamp) -> anyhow::Result<()> {
        let organization_id = self
            .organizations
            .iter()
            .find(|org| org.name == template.organization)
            .with_context(|| format!("template {}: unknown organization {:?}", template.name, template.organization))?
            .id;
        let template_id = template.id.unwrap_or_else(Uuid::new_v4);
        let mut active_version_id = None;
        for version in &template.versions {
            let id = version.id.unwrap_or_else(Uuid::new_v4);
            if version.name == template.active_version {
                active_version_id = Some(id);
            }
            for agent in &version.agents {
                if let Some(parent) = &agent.parent
                    && !version.agents.iter().any(|other| &other.name == parent && other.parent.is_none())
                {
                    bail!(
                        "template {} version {}: agent {} names parent {parent:?}, which is not a root agent of the version",
                        template.name,
                        version.name,
                        agent.name
                    );
                }
            }
            let presets = version
                .presets
                .iter()
                .map(|preset| {
                    for value in &preset.parameters {
                        if !version.parameters.iter().any(|p| p.name == value.name) {
                            bail!(
                                "template {} version {} preset {}: unknown parameter {:?}",
                                template.name,
                                version.name,
                                preset.name,
                                value.name
                            );
                        }
                    }
                    Ok(Preset {
                        id: preset.id.unwrap_or_else(Uuid::new_v4),
                        name: preset.name.clone(),
                        parameters: preset.parameters.iter().map(|p| (p.name.clone(), p.value.clone())).collect(),
                        default: preset.default,
                        description: preset.description.clone(),
                        icon: preset.icon.clone(),
                        desired_prebuild_instances: preset.desired_prebuild_instances,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let version = TemplateVersion {
                id,
                template_id,
                name: version.name.clone(),
                message: version.message.clone(),
                parameters: version.parameters.clone(),
                presets,
                agents: version.agents.clone(),
                resource: version.resource.clone(),
                job: Job::new(now, Duration::ZERO, Duration::ZERO, None),
                created_by: self.me,
                created_at: now,
            };
            if self.versions.insert(id, version).is_some() {
                bail!("template {}: duplicate version id {id}", template.name);
            }
        }
        let active_version_id = active_version_id.with_context(|| {
            format!(
                "template {}: active_version {:?} is not one of its versions",
                template.name, template.active_version
            )
        })?;
        self.templates.push(Template {
            id: template_id,
            organization_id,
            name: template.name.clone(),
            display_name: template.display_name.clone(),
            description: template.description.clone(),
            icon: template.icon.clone(),
            require_active_version: template.require_active_version,
            deprecated: template.deprecated,
            deprecation_message: template.deprecation_message.clone(),
            default_ttl_ms: template.default_ttl_ms,
            active_version_id,
            created_by: self.me,
            created_at: now,
        });
        Ok(())
    }

    fn add_seed_workspace(&mut self, workspace: &seed::Workspace, created_at: Timestamp) -> anyhow::Result<()> {
        let owner_id = self.user(&workspace.owner).with_context(|| format!("unknown owner {:?}", workspace.owner))?.id;
        let template = self
            .templates
            .iter()
            .find(|template| template.name == workspace.template)
            .with_context(|| format!("unknown template {:?}", workspace.template))?;
        let template_id = template.id;
        let version_id = match &workspace.version {
            None => template.active_version_id,
            Some(name) => {
                self.versions
                    .values()
                    .find(|version| version.template_id == template_id && &version.name == name)
                    .with_context(|| format!("unknown version {name:?}"))?
                    .id
            }
        };
        let request = NewWorkspace {
            name: workspace.name.clone(),
            template_version_id: Some(version_id),
            parameters: workspace.parameters.iter().map(|p| (p.name.clone(), p.value.clone())).collect(),
            ttl_ms: workspace.ttl_ms,
            ..NewWorkspace::default()
        };
        // Seeds describe how things are, so version policies do not apply.
        let id = self
            .create_workspace_unchecked(owner_id, &request, workspace.id, created_at)
            .map_err(|err| anyhow::anyhow!("{}: {}", err.message, err.detail))?;
        tracing::debug!(%id, owner = %workspace.owner, name = %workspace.name, "seeded workspace");
        Ok(())
    }
}
