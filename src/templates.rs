//! Templates and their presets, as chatd's `read_template` shows them, with a
//! bounded-lifetime cache: they change rarely, and reading them on every
//! reconcile of every workspace would multiply Coder's load for nothing.
//!
//! What is kept is bounded by what live resources read within one TTL: an
//! entry is dropped once it is older than the TTL (swept at most once a
//! minute, on a read or when a resource goes), a failed read (an unknown
//! template) keeps nothing, and the gate that makes reconciles share one
//! read goes when that read ends. Keys hold a resource's spec strings, so a
//! tenant that keeps renaming its template must not grow the operator.

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

/// How often expired entries are swept at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

type Gates = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

pub struct Templates {
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Arc<TemplateInfo>)>>,
    swept: Mutex<Instant>,
    /// One read at a time per template: when an entry expires, the
    /// reconciles in flight wait for one read instead of each sending theirs.
    reading: Gates,
}

/// Removes a read's gate once nobody holds or waits on it, however the read
/// ends (a reconcile may be cancelled mid-read).
struct GateRelease<'a> {
    gates: &'a Gates,
    key: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for GateRelease<'_> {
    fn drop(&mut self) {
        let mut gates = self.gates.lock().expect("template reads");
        // Two references: the map's and this one's.
        if gates.get(self.key).is_some_and(|gate| Arc::ptr_eq(gate, &self.gate)) && Arc::strong_count(&self.gate) <= 2 {
            gates.remove(self.key);
        }
    }
}

impl Templates {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache: Mutex::default(), swept: Mutex::new(Instant::now()), reading: Mutex::default() }
    }

    /// Drops what is older than the TTL, at most once a minute (or once a
    /// TTL, if shorter).
    pub fn sweep(&self) {
        {
            let mut swept = self.swept.lock().expect("template sweep");
            if swept.elapsed() < SWEEP_EVERY.min(self.ttl) {
                return;
            }
            *swept = Instant::now();
        }
        let mut cache = self.cache.lock().expect("template cache");
        cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
        cache.shrink_to_fit();
        self.reading.lock().expect("template reads").shrink_to_fit();
    }

    /// How many template reads are kept, and how many reads are under way.
    pub fn kept(&self) -> (usize, usize) {
        (self.cache.lock().expect("template cache").len(), self.reading.lock().expect("template reads").len())
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
        self.sweep();
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let gate = self.reading.lock().expect("template reads").entry(key.clone()).or_default().clone();
        let release = GateRelease { gates: &self.reading, key: &key, gate };
        let _reading = release.gate.lock().await;
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let info = Arc::new(Self::read(credentials, organization, reference).await?);
        let mut cache = self.cache.lock().expect("template cache");
        cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
        cache.insert(key.clone(), (Instant::now(), info.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::{CoderClient, SessionToken};

    /// Credentials whose Coder refuses every connection.
    fn unreachable() -> Resolved {
        let client = CoderClient::new("http://127.0.0.1:9", SessionToken::new("t").unwrap(), Duration::from_secs(1));
        Resolved { client: client.unwrap(), key: "default@unreachable".into() }
    }

    #[tokio::test]
    async fn a_failed_read_keeps_nothing_of_its_key() {
        let templates = Templates::new(Duration::from_secs(300));
        for i in 0..50 {
            let reference = TemplateRef { name: Some(format!("t{i:0>31}")), ..TemplateRef::default() };
            assert!(templates.resolve(&unreachable(), None, &reference).await.is_err());
        }
        assert_eq!(templates.kept(), (0, 0), "no entry and no read gate is left");
    }

    #[test]
    fn entries_older_than_the_ttl_are_swept() {
        let ttl = Duration::from_millis(20);
        let templates = Templates::new(ttl);
        let info = |id: &str| {
            let template: Template = serde_json::from_value(serde_json::json!({"id": id})).unwrap();
            Arc::new(TemplateInfo { template, version_id: "v".into(), presets: Vec::new() })
        };
        templates.cache.lock().unwrap().insert("old".into(), (Instant::now(), info("old")));
        std::thread::sleep(ttl * 2);
        templates.cache.lock().unwrap().insert("new".into(), (Instant::now(), info("new")));
        templates.sweep();
        let kept: Vec<String> = templates.cache.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, ["new"]);
    }
}
