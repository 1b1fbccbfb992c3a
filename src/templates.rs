//! Templates and their presets, as chatd's `read_template` shows them, with a
//! bounded-lifetime cache: they change rarely, and reading them on every
//! reconcile of every workspace would multiply Coder's load for nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::coder::{CoderError, Preset, Template};
use crate::crd::{Parameter, PresetRef, PresetStatus, TemplateRef, TemplateStatus};
use crate::credentials::Resolved;
use crate::error::{Error, Result};

/// The default organization of a Coder deployment.
pub const DEFAULT_ORGANIZATION: &str = "coder";

/// A template and the presets of the version a create builds.
#[derive(Clone, Debug)]
pub struct TemplateInfo {
    pub template: Template,
    /// `spec.template.versionId`, else the template's active version.
    pub version_id: String,
    pub presets: Vec<Preset>,
}

impl TemplateInfo {
    /// Resolves `spec.preset` to one of this version's presets.
    pub fn preset(&self, wanted: &PresetRef) -> Result<&Preset> {
        let found = self.presets.iter().find(|p| match (&wanted.id, &wanted.name) {
            (Some(id), _) => p.id == *id,
            (None, Some(name)) => p.name == *name,
            (None, None) => false,
        });
        found.ok_or_else(|| {
            let available: Vec<&str> = self.presets.iter().map(|p| p.name.as_str()).collect();
            let wanted = wanted.name.as_deref().or(wanted.id.as_deref()).unwrap_or_default();
            Error::PresetNotFound(format!(
                "template {} version {} has no preset {wanted:?}; available presets: {}",
                self.template.name,
                self.version_id,
                if available.is_empty() { "none".to_string() } else { available.join(", ") }
            ))
        })
    }

    pub fn status(&self) -> TemplateStatus {
        TemplateStatus {
            id: self.template.id.clone(),
            name: self.template.name.clone(),
            active_version_id: self.template.active_version_id.clone(),
            require_active_version: self.template.require_active_version,
            deprecated: self.template.deprecated,
            deprecation_message: Some(self.template.deprecation_message.clone()).filter(|m| !m.is_empty()),
            version_id: Some(self.version_id.clone()),
            presets: self.presets.iter().map(preset_status).collect(),
        }
    }
}

fn preset_status(preset: &Preset) -> PresetStatus {
    PresetStatus {
        id: preset.id.clone(),
        name: preset.name.clone(),
        default: preset.default,
        description: Some(preset.description.clone()).filter(|d| !d.is_empty()),
        icon: Some(preset.icon.clone()).filter(|i| !i.is_empty()),
        parameters: preset
            .parameters
            .iter()
            .map(|p| Parameter { name: p.name.clone(), value: p.value.clone() })
            .collect(),
        desired_prebuild_instances: preset.desired_prebuild_instances,
    }
}

pub struct Templates {
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Arc<TemplateInfo>)>>,
    /// One read at a time per template: when an entry expires, the
    /// reconciles in flight wait for one read instead of each sending theirs.
    reading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Templates {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache: Mutex::default(), reading: Mutex::default() }
    }

    fn cached(&self, key: &str) -> Option<Arc<TemplateInfo>> {
        let cache = self.cache.lock().expect("template cache");
        cache.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, info)| info.clone())
    }

    /// The template named by `reference` (in `organization`) and its presets,
    /// from the cache when it is younger than the TTL.
    pub async fn resolve(
        &self,
        credentials: &Resolved,
        organization: Option<&str>,
        reference: &TemplateRef,
    ) -> Result<Arc<TemplateInfo>> {
        let organization = organization.unwrap_or(DEFAULT_ORGANIZATION);
        let key = format!(
            "{}|{organization}|{}|{}|{}",
            credentials.key,
            reference.name.as_deref().unwrap_or_default(),
            reference.id.as_deref().unwrap_or_default(),
            reference.version_id.as_deref().unwrap_or_default()
        );
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let gate = self.reading.lock().expect("template reads").entry(key.clone()).or_default().clone();
        let _reading = gate.lock().await;
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let info = Arc::new(Self::read(credentials, organization, reference).await?);
        let mut cache = self.cache.lock().expect("template cache");
        cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
        cache.insert(key, (Instant::now(), info.clone()));
        Ok(info)
    }

    async fn read(credentials: &Resolved, organization: &str, reference: &TemplateRef) -> Result<TemplateInfo> {
        let coder = &credentials.client;
        let not_found = |what: String| {
            move |error: CoderError| match error {
                CoderError::NotFound { .. } => Error::TemplateNotFound(what),
                other => Error::Coder(other),
            }
        };
        let template = match (&reference.id, &reference.name) {
            (Some(id), _) => {
                coder.template(id).await.map_err(not_found(format!("template id {id:?} does not exist in Coder")))?
            }
            (None, Some(name)) => coder
                .template_by_name(organization, name)
                .await
                .map_err(not_found(format!("template {name:?} does not exist in organization {organization:?}")))?,
            (None, None) => return Err(Error::InvalidSpec("spec.template needs a name or an id".into())),
        };
        let version_id = reference.version_id.clone().unwrap_or_else(|| template.active_version_id.clone());
        let presets = coder.template_version_presets(&version_id).await.map_err(not_found(format!(
            "template version {version_id:?} of template {:?} does not exist",
            template.name
        )))?;
        Ok(TemplateInfo { template, version_id, presets })
    }
}
