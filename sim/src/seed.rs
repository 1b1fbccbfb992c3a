//! The initial content of a simulated deployment: users, organizations,
//! templates (with versions, rich parameters, presets and agent layouts) and
//! workspaces that already exist when the simulator starts.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The default seed, also used by `make demo`.
const DEFAULT_SEED: &str = include_str!("../seeds/default.json");

/// The initial content of the simulated deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Username of the user the session token belongs to (`me`).
    pub token_user: String,
    pub users: Vec<User>,
    pub organizations: Vec<Organization>,
    pub templates: Vec<Template>,
    /// Workspaces that exist (running, agents ready) when the simulator starts.
    #[serde(default)]
    pub workspaces: Vec<Workspace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Fixed id; a random one when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    pub username: String,
    #[serde(default)]
    pub name: String,
    /// Defaults to `<username>@example.com`.
    #[serde(default)]
    pub email: Option<String>,
    /// Site roles, e.g. `owner`, `template-admin`.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub name: String,
    /// Organization name.
    pub organization: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub icon: String,
    #[serde(default)]
    pub require_active_version: bool,
    #[serde(default)]
    pub deprecated: bool,
    #[serde(default)]
    pub deprecation_message: String,
    /// Default workspace TTL in milliseconds; 0 means no autostop.
    #[serde(default)]
    pub default_ttl_ms: i64,
    /// Name of the active version.
    pub active_version: String,
    pub versions: Vec<TemplateVersion>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateVersion {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    #[serde(default)]
    pub presets: Vec<Preset>,
    /// The agents every start build of this version creates, in display
    /// order. Defaults to one root agent named `main`.
    #[serde(default = "default_agents")]
    pub agents: Vec<Agent>,
    /// The resource that carries the agents.
    #[serde(default)]
    pub resource: Resource,
}

fn default_agents() -> Vec<Agent> {
    vec![Agent { name: "main".to_owned(), parent: None }]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    /// Name of the parent agent (a sub-agent such as a dev container); root
    /// agents have none.
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Default for Resource {
    fn default() -> Self {
        Self { name: "dev".to_owned(), kind: "docker_container".to_owned() }
    }
}

/// A rich parameter, with the same constraints coderd validates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    /// `string`, `number`, `bool` or `list(string)`.
    #[serde(rename = "type", default = "default_parameter_type")]
    pub kind: String,
    #[serde(default)]
    pub default_value: String,
    /// A required parameter has no default and must be given at creation.
    #[serde(default)]
    pub required: bool,
    /// Immutable parameters cannot change after the workspace is created.
    #[serde(default = "yes")]
    pub mutable: bool,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub icon: String,
    #[serde(default)]
    pub options: Vec<ParameterOption>,
    #[serde(default)]
    pub validation_min: Option<i32>,
    #[serde(default)]
    pub validation_max: Option<i32>,
    #[serde(default)]
    pub validation_regex: String,
    #[serde(default)]
    pub validation_error: String,
    /// `increasing`, `decreasing` or empty.
    #[serde(default)]
    pub validation_monotonic: String,
}

fn default_parameter_type() -> String {
    "string".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterOption {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub icon: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub parameters: Vec<ParameterValue>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub icon: String,
    #[serde(default)]
    pub desired_prebuild_instances: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Username of the owner.
    pub owner: String,
    pub name: String,
    /// Template name.
    pub template: String,
    /// Version name; the template's active version when absent.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub parameters: Vec<ParameterValue>,
    /// Autostop after this many milliseconds; the template's default when absent.
    #[serde(default)]
    pub ttl_ms: Option<i64>,
}

impl Seed {
    /// Reads a seed from a JSON file, or a YAML file when the name ends in
    /// `.yaml` or `.yml`.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Seed> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading seed {}", path.display()))?;
        let is_yaml =
            path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"));
        if is_yaml {
            serde_yaml::from_str(&text).with_context(|| format!("parsing seed {}", path.display()))
        } else {
            serde_json::from_str(&text).with_context(|| format!("parsing seed {}", path.display()))
        }
    }
}

impl Default for Seed {
    /// The content of `sim/seeds/default.json`.
    fn default() -> Self {
        // The file is compiled in and checked by the test suite, so a parse
        // failure here is a build defect, not bad input.
        serde_json::from_str(DEFAULT_SEED).expect("sim/seeds/default.json is a valid seed")
    }
}
