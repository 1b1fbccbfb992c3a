//! coderd's write rules: creating workspaces and builds, canceling jobs.

use std::collections::HashMap;

use axum::http::StatusCode;
use jiff::Timestamp;
use uuid::Uuid;

use super::params::{self, Values};
use super::{Agent, Build, Deployment, Job, Life, Template, Transition, Workspace, after};
use crate::error::ApiError;

/// Workspace names follow coderd's `workspace_name` validation tag.
const MAX_WORKSPACE_NAME_LEN: usize = 32;

/// What a client asks for when it creates a workspace.
#[derive(Debug, Clone, Default)]
pub struct NewWorkspace {
    pub name: String,
    pub template_id: Option<Uuid>,
    pub template_version_id: Option<Uuid>,
    pub preset_id: Option<Uuid>,
    pub parameters: Values,
    pub ttl_ms: Option<i64>,
    pub autostart_schedule: Option<String>,
    pub automatic_updates: Option<String>,
}

/// What a client asks for when it creates a build.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub transition: Transition,
    pub template_version_id: Option<Uuid>,
    pub preset_id: Option<Uuid>,
    pub parameters: Values,
    /// The request's `reason` (`dashboard`, `cli`, ...); `None`: coderd
    /// records `initiator`.
    pub reason: Option<String>,
}

/// A build as it is queued: what was asked for, resolved and validated.
struct QueuedBuild {
    transition: Transition,
    template_version_id: Uuid,
    preset_id: Option<Uuid>,
    parameters: Values,
    reason: String,
}

impl Deployment {
    /// `POST /users/{user}/workspaces`: validates like coderd, then creates
    /// the workspace and its first start build.
    pub fn create_workspace(
        &mut self,
        owner_id: Uuid,
        organization_id: Option<Uuid>,
        request: &NewWorkspace,
        now: Timestamp,
    ) -> Result<Uuid, ApiError> {
        let template = self.template_for_create(request)?;
        if let Some(org_id) = organization_id
            && template.organization_id != org_id
        {
            let org = self.organization_by_id(org_id).map(|org| org.name.clone()).unwrap_or_default();
            return Err(ApiError::new(StatusCode::FORBIDDEN, format!("Template is not in organization {org:?}.")));
        }
        if template.deprecated {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Template {:?} has been deprecated, and cannot be used to create a new workspace.",
                    template.name
                ),
            )
            .detail(template.deprecation_message.clone()));
        }
        if let Some(version_id) = request.template_version_id {
            check_active_version(template, version_id)?;
        }
        self.create_workspace_unchecked(owner_id, request, None, now)
    }

    fn template_for_create(&self, request: &NewWorkspace) -> Result<&Template, ApiError> {
        let version = match request.template_version_id {
            None => None,
            Some(id) => Some(self.versions.get(&id).ok_or_else(|| {
                ApiError::bad_request(format!("Template version \"{id}\" doesn't exist."))
                    .validation("template_version_id", "template not found")
            })?),
        };
        let template_id = match (request.template_id, version) {
            (None, None) => {
                return Err(ApiError::bad_request("Either template_id or template_version_id must be specified.")
                    .validation("template_id", "template_id or template_version_id is required"));
            }
            (Some(template_id), Some(version)) if version.template_id != template_id => {
                return Err(ApiError::bad_request("Template version does not belong to the template.")
                    .validation("template_version_id", "template version does not belong to the template"));
            }
            (Some(template_id), _) => template_id,
            (None, Some(version)) => version.template_id,
        };
        self.template(template_id).ok_or_else(|| {
            ApiError::bad_request(format!("Template \"{template_id}\" doesn't exist."))
                .validation("template_id", "template not found")
        })
    }

    pub(super) fn create_workspace_unchecked(
        &mut self,
        owner_id: Uuid,
        request: &NewWorkspace,
        fixed_id: Option<Uuid>,
        now: Timestamp,
    ) -> Result<Uuid, ApiError> {
        validate_workspace_name(&request.name)?;
        let template = self.template_for_create(request)?.clone();
        if self.workspace_by_name(owner_id, &request.name, now).is_some() {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("Workspace {:?} already exists.", request.name))
                .validation("name", "This value is already in use and should be unique."));
        }
        let ttl_ms = match request.ttl_ms {
            Some(ttl) => validate_ttl(ttl)?,
            None => Some(template.default_ttl_ms).filter(|&ttl| ttl > 0),
        };
        let automatic_updates = match request.automatic_updates.as_deref() {
            None | Some("") => "never".to_owned(),
            Some(value @ ("always" | "never")) => value.to_owned(),
            Some(other) => return Err(ApiError::invalid_field("automatic_updates", "oneof", other)),
        };
        let version_id = request.template_version_id.unwrap_or(template.active_version_id);
        let parameters = self.resolve_parameters(version_id, request.preset_id, &request.parameters, &[])?;

        let id = fixed_id.unwrap_or_else(Uuid::new_v4);
        self.workspaces.insert(
            id,
            Workspace {
                id,
                name: request.name.clone(),
                owner_id,
                organization_id: template.organization_id,
                template_id: template.id,
                created_at: now,
                ttl_ms,
                autostart_schedule: request.autostart_schedule.clone().filter(|s| !s.is_empty()),
                automatic_updates,
                builds: Vec::new(),
                probe_partitioned: false,
                dormant_at: None,
            },
        );
        let first = QueuedBuild {
            transition: Transition::Start,
            template_version_id: version_id,
            preset_id: request.preset_id,
            parameters,
            reason: "initiator".to_owned(),
        };
        self.push_build(id, first, now);
        Ok(id)
    }

    /// `POST /workspaces/{id}/builds`.
    pub fn create_build(&mut self, workspace_id: Uuid, request: &NewBuild, now: Timestamp) -> Result<Uuid, ApiError> {
        let workspace = self.workspaces.get(&workspace_id).ok_or_else(ApiError::not_found)?;
        if self.is_deleted(workspace, now) {
            return Err(deleted_workspace(workspace_id));
        }
        let latest = self.latest_build(workspace);
        if latest.job.status(now).is_active() {
            return Err(ApiError::new(StatusCode::CONFLICT, "A workspace build is already active."));
        }
        let template = self.template(workspace.template_id).ok_or_else(ApiError::not_found)?;
        let version_id = request.template_version_id.unwrap_or(latest.template_version_id);
        match self.versions.get(&version_id) {
            None => return Err(ApiError::bad_request("template version does not exist")),
            Some(version) if version.template_id != template.id => {
                return Err(ApiError::bad_request("template version doesn't match template"));
            }
            Some(_) => {}
        }
        // A stop or delete is never gated on versions.
        if request.transition == Transition::Start {
            if workspace.dormant_at.is_some() {
                // coderd's answer to a start of a dormant workspace.
                return Err(ApiError::new(StatusCode::FORBIDDEN, "Workspace is dormant.")
                    .detail("The workspace must be made active before it can be started."));
            }
            check_active_version(template, version_id)?;
        }
        // A version change starts from the new version's parameters; values
        // of parameters the new version also has carry over.
        let previous = latest.parameters.clone();
        let parameters = self.resolve_parameters(version_id, request.preset_id, &request.parameters, &previous)?;
        let build = QueuedBuild {
            transition: request.transition,
            template_version_id: version_id,
            preset_id: request.preset_id,
            parameters,
            reason: request.reason.clone().unwrap_or_else(|| "initiator".to_owned()),
        };
        Ok(self.push_build(workspace_id, build, now))
    }

    /// A stop Coder makes on its own (`autostop`, `dormancy`,
    /// `task_auto_pause`): no user request, no version checks.
    pub fn stop_by_coder(&mut self, workspace_id: Uuid, reason: &str, now: Timestamp) -> Result<Uuid, ApiError> {
        let workspace = self.workspaces.get(&workspace_id).ok_or_else(ApiError::not_found)?;
        let latest = self.latest_build(workspace);
        if latest.job.status(now).is_active() {
            return Err(ApiError::new(StatusCode::CONFLICT, "A workspace build is already active."));
        }
        let (version, parameters) = (latest.template_version_id, latest.parameters.clone());
        if reason == "dormancy"
            && let Some(workspace) = self.workspaces.get_mut(&workspace_id)
        {
            workspace.dormant_at = Some(now);
        }
        let build = QueuedBuild {
            transition: Transition::Stop,
            template_version_id: version,
            preset_id: None,
            parameters,
            reason: reason.to_owned(),
        };
        Ok(self.push_build(workspace_id, build, now))
    }

    /// `PATCH /workspacebuilds/{id}/cancel`.
    pub fn cancel_build(&mut self, build_id: Uuid, now: Timestamp) -> Result<(), ApiError> {
        let grace = self.timings.job_pending;
        let build = self.builds.get_mut(&build_id).ok_or_else(ApiError::not_found)?;
        build.job.cancel(now, grace).map_err(ApiError::bad_request)
    }

    /// Applies the preset (its values win, as in coderd) and validates the
    /// result against the version's rich parameters.
    fn resolve_parameters(
        &self,
        version_id: Uuid,
        preset_id: Option<Uuid>,
        given: &[(String, String)],
        previous: &[(String, String)],
    ) -> Result<Values, ApiError> {
        let version =
            self.versions.get(&version_id).ok_or_else(|| ApiError::bad_request("template version does not exist"))?;
        let mut values: Values = given.to_vec();
        if let Some(preset_id) = preset_id {
            let preset = version.presets.iter().find(|p| p.id == preset_id).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Template version preset \"{preset_id}\" does not belong to template version \"{version_id}\"."
                ))
                .validation("template_version_preset_id", "preset not found for this template version")
            })?;
            for (name, value) in &preset.parameters {
                values.retain(|(n, _)| n != name);
                values.push((name.clone(), value.clone()));
            }
        }
        // coderd's dynamic parameter flow: one message, no detail, one
        // validation per parameter, sorted by name.
        params::resolve(&version.parameters, &values, previous).map_err(|mut errors| {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            errors.iter().fold(ApiError::bad_request("Unable to validate parameters"), |err, e| {
                err.validation(e.field.clone(), e.detail.clone())
            })
        })
    }

    fn push_build(&mut self, workspace_id: Uuid, build: QueuedBuild, now: Timestamp) -> Uuid {
        let QueuedBuild { transition, template_version_id, preset_id, parameters, reason } = build;
        let failure = self.take_failure(workspace_id, transition);
        let never_connects = transition == Transition::Start && self.take_never_connect(workspace_id);
        let startup_fails = transition == Transition::Start && self.take_startup_failure(workspace_id);
        let timings = self.timings;
        let job = Job::new(now, timings.job_pending, timings.job_running, failure);
        let build_id = Uuid::new_v4();
        let resource_id = Uuid::new_v4();
        let workspace = self.workspaces.get_mut(&workspace_id).expect("the workspace exists");
        let number = i32::try_from(workspace.builds.len()).unwrap_or(i32::MAX - 1) + 1;
        workspace.builds.push(build_id);

        let mut agents = Vec::new();
        if transition == Transition::Start {
            // Every start build makes new agents, as a real provisioner does.
            let specs = self.versions[&template_version_id].agents.clone();
            let ids: HashMap<&str, Uuid> = specs.iter().map(|spec| (spec.name.as_str(), Uuid::new_v4())).collect();
            let connect_at = after(job.completed_at, timings.agent_connect_delay);
            for spec in &specs {
                let id = ids[spec.name.as_str()];
                let lives = if never_connects { Vec::new() } else { vec![Life { start: connect_at, killed_at: None }] };
                self.agents.insert(
                    id,
                    Agent {
                        id,
                        name: spec.name.clone(),
                        parent_id: spec.parent.as_deref().map(|parent| ids[parent]),
                        resource_id,
                        build_id,
                        workspace_id,
                        created_at: job.completed_at,
                        lives,
                        startup_fails,
                    },
                );
                agents.push(id);
            }
        }
        self.builds.insert(
            build_id,
            Build {
                id: build_id,
                workspace_id,
                number,
                transition,
                template_version_id,
                preset_id,
                parameters,
                initiator_id: self.me,
                reason,
                created_at: now,
                job,
                resource_id,
                agents,
            },
        );
        tracing::info!(%workspace_id, %build_id, number, transition = transition.as_str(), "build queued");
        build_id
    }
}

pub fn deleted_workspace(workspace_id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        format!(
            "Workspace {:?} was deleted, you can view this workspace by specifying '?deleted=true' and trying again.",
            workspace_id.to_string()
        ),
    )
}

/// coderd refuses a start (or a create) on a non-active version when the
/// template requires the active one.
fn check_active_version(template: &Template, version_id: Uuid) -> Result<(), ApiError> {
    if template.require_active_version && version_id != template.active_version_id {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "cannot use non-active version").detail(format!(
            "Template {:?} requires workspaces to use its active version {}; version {version_id} is not active.",
            template.name, template.active_version_id
        )));
    }
    Ok(())
}

fn validate_workspace_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "required", name));
    }
    let valid = name.len() <= MAX_WORKSPACE_NAME_LEN
        && name.split('-').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    if valid { Ok(()) } else { Err(ApiError::invalid_field("name", "workspace_name", name)) }
}

fn validate_ttl(ttl_ms: i64) -> Result<Option<i64>, ApiError> {
    const MINUTE_MS: i64 = 60_000;
    const MAX_MS: i64 = 30 * 24 * 60 * MINUTE_MS;
    let problem = match ttl_ms {
        0 => return Ok(None),
        ttl if ttl < MINUTE_MS => "time until shutdown must be at least one minute",
        ttl if ttl > MAX_MS => "time until shutdown must be less than 30 days",
        _ => return Ok(Some(ttl_ms)),
    };
    Err(ApiError::bad_request("Invalid Workspace Time to Shutdown.").validation("ttl_ms", problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{deployment, template_id};

    #[test]
    fn workspace_names_are_validated() {
        assert!(validate_workspace_name("fix-login-bug").is_ok());
        assert!(validate_workspace_name("Bad_Name").is_err());
        assert!(validate_workspace_name("-x").is_err());
        assert!(validate_workspace_name(&"a".repeat(33)).is_err());
    }

    #[test]
    fn presets_override_given_values() {
        let (mut deployment, now) = deployment();
        let template_id = template_id(&deployment, "docker-dev");
        let large = deployment.versions.values().flat_map(|v| &v.presets).find(|p| p.name == "large").unwrap().id;
        let request = NewWorkspace {
            name: "w".to_owned(),
            template_id: Some(template_id),
            preset_id: Some(large),
            parameters: vec![("cpu".to_owned(), "3".to_owned())],
            ..NewWorkspace::default()
        };
        let id = deployment.create_workspace(deployment.me, None, &request, now).unwrap();
        let build = deployment.latest_build(&deployment.workspaces[&id]);
        assert!(build.parameters.contains(&("cpu".to_owned(), "8".to_owned())));
        assert_eq!(build.preset_id, Some(large));
    }

    #[test]
    fn a_second_build_while_one_is_active_conflicts() {
        let (mut deployment, now) = deployment();
        let request = NewWorkspace {
            name: "w".to_owned(),
            template_id: Some(template_id(&deployment, "docker-dev")),
            ..NewWorkspace::default()
        };
        let id = deployment.create_workspace(deployment.me, None, &request, now).unwrap();
        let stop = NewBuild {
            transition: Transition::Stop,
            template_version_id: None,
            preset_id: None,
            parameters: Vec::new(),
            reason: None,
        };
        let err = deployment.create_build(id, &stop, now).unwrap_err();
        assert_eq!(err.status, StatusCode::CONFLICT);
    }
}
