//! Which Coder a resource talks to, and with which token: the operator's
//! default credentials, or a Secret named by `spec.credentialsRef` in the
//! resource's own namespace. Clients are cached per Secret version, so a
//! rotated token takes effect on the next reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::coder::{CoderClient, RateLimit, RequestObserver, SessionToken};
use crate::crd::ChatWorkspace;
use crate::error::{Error, Result};

/// A Coder client and a stable name for the credentials it uses (never the
/// token itself), for caches and for telling workspaces of different Coder
/// deployments apart.
#[derive(Clone)]
pub struct Resolved {
    pub client: CoderClient,
    pub key: String,
}

pub struct Credentials {
    default: Option<Resolved>,
    request_timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
    rate_limit: Option<Arc<RateLimit>>,
    /// (namespace, secret name) → (resourceVersion, client).
    secrets: Mutex<HashMap<(String, String), (String, Resolved)>>,
}

impl Credentials {
    /// `rate_limit` is shared by every client made here: the operator's
    /// whole Coder traffic stays under it, whatever the credentials.
    pub fn new(
        default: Option<(String, SessionToken)>,
        request_timeout: Duration,
        observer: Option<Arc<dyn RequestObserver>>,
        rate_limit: Option<Arc<RateLimit>>,
    ) -> Result<Self> {
        let mut credentials = Self { default: None, request_timeout, observer, rate_limit, secrets: Mutex::default() };
        if let Some((url, token)) = default {
            let client = credentials.client(&url, token)?;
            credentials.default = Some(Resolved { key: format!("default@{url}"), client });
        }
        Ok(credentials)
    }

    fn client(&self, url: &str, token: SessionToken) -> Result<CoderClient> {
        let mut client = CoderClient::new(url, token, self.request_timeout)?;
        if let Some(observer) = &self.observer {
            client = client.with_observer(observer.clone());
        }
        if let Some(limit) = &self.rate_limit {
            client = client.with_rate_limit(limit.clone());
        }
        Ok(client)
    }

    /// The credentials `workspace` uses.
    pub async fn for_resource(&self, kube: &kube::Client, workspace: &ChatWorkspace) -> Result<Resolved> {
        let Some(reference) = &workspace.spec.credentials_ref else {
            return self.default.clone().ok_or_else(|| {
                Error::Credentials(
                    "the operator has no default Coder credentials and spec.credentialsRef is not set".into(),
                )
            });
        };
        let namespace = workspace.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
        let secret = secrets.get_opt(&reference.name).await?.ok_or_else(|| {
            Error::Credentials(format!("Secret {namespace}/{} (spec.credentialsRef) does not exist", reference.name))
        })?;
        let version = secret.resource_version().unwrap_or_default();
        let cache_key = (namespace.clone(), reference.name.clone());
        if let Some((cached_version, resolved)) = self.secrets.lock().expect("credentials cache").get(&cache_key)
            && *cached_version == version
        {
            return Ok(resolved.clone());
        }
        let field = |key: &str| -> Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|value| value.0.clone())
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.clone().into_bytes()))
                .ok_or_else(|| {
                    Error::Credentials(format!("Secret {namespace}/{} has no key {key:?}", reference.name))
                })?;
            String::from_utf8(bytes).map(|s| s.trim().to_string()).map_err(|_| {
                Error::Credentials(format!("Secret {namespace}/{} key {key:?} is not UTF-8", reference.name))
            })
        };
        let url = field("url")?;
        let token = SessionToken::new(field("token")?)
            .map_err(|_| Error::Credentials(format!("Secret {namespace}/{} has an empty token", reference.name)))?;
        let resolved =
            Resolved { client: self.client(&url, token)?, key: format!("secret:{namespace}/{}@{url}", reference.name) };
        self.secrets.lock().expect("credentials cache").insert(cache_key, (version, resolved.clone()));
        Ok(resolved)
    }
}
