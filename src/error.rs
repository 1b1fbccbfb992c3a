//! The reconciler's errors. Each variant is one thing a user or the
//! controller can act on; `reason()` becomes a condition reason, an Event
//! reason and a metric label.

use crate::coder::CoderError;
use crate::conditions::Reason;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("{0}")]
    Coder(#[from] CoderError),

    /// The spec passed schema validation but cannot be used (e.g. an object
    /// written before a CEL rule existed).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// `spec.credentialsRef` names a Secret that is missing or incomplete,
    /// or no operator-wide default credentials are configured.
    #[error("Coder credentials: {0}")]
    Credentials(String),

    /// The Secret named by `spec.credentialsRef` does not exist (deleted,
    /// perhaps with its namespace).
    #[error("Coder credentials: Secret {namespace}/{secret} (spec.credentialsRef) does not exist")]
    CredentialsSecretMissing { namespace: String, secret: String },

    /// The template or preset named in the spec does not exist.
    #[error("{0}")]
    TemplateNotFound(String),

    #[error("{0}")]
    PresetNotFound(String),

    /// The namespace is not granted this Coder owner for the operator's
    /// default credentials (`chat.coder.com/coder-owners`).
    #[error("{0}")]
    OwnerNotGranted(crate::tenancy::Refusal),

    /// `spec.credentialsRef` names a Coder URL outside the operator's
    /// allow-list; nothing was sent to it.
    #[error(
        "Secret {namespace}/{secret} (spec.credentialsRef) names a Coder URL outside the operator's allow-list \
         (allowed: {allowed}); no request was sent to it"
    )]
    CoderUrlNotAllowed { namespace: String, secret: String, allowed: String },

    /// A start on the template's active version (the template requires it)
    /// that Coder refused because that version adds required parameters
    /// without a default, and `spec.parameters` has no value for them.
    #[error(
        "template {template} requires its active version {version}, which adds required parameter(s) {} \
         without a default, so Coder refused the start ({source})",
        quoted(parameters)
    )]
    NewParameterRequired { template: String, version: String, parameters: Vec<String>, source: Box<CoderError> },

    /// The workspace this resource followed by id belongs to another Coder
    /// user than the one it drives now (its credentials changed).
    #[error(
        "workspace {id}, which this resource drove, does not belong to Coder user {owner}, whom it drives with its \
         current credentials; nothing was sent to it"
    )]
    WorkspaceOfAnotherOwner { id: String, owner: String },

    /// The workspace existed before this resource and `spec.adopt` is not set.
    #[error("{0}")]
    AdoptionNotConsented(String),
}

impl Error {
    /// The condition reason, Event reason and metric label of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Kube(_) => Reason::KubernetesError,
            Error::Coder(error) => coder_reason(error),
            Error::InvalidSpec(_) => Reason::InvalidSpec,
            Error::Credentials(_) | Error::CredentialsSecretMissing { .. } => Reason::CredentialsInvalid,
            Error::TemplateNotFound(_) => Reason::TemplateNotFound,
            Error::PresetNotFound(_) => Reason::PresetNotFound,
            Error::OwnerNotGranted(_) => Reason::OwnerNotGranted,
            Error::CoderUrlNotAllowed { .. } => Reason::CoderUrlNotAllowed,
            Error::AdoptionNotConsented(_) => Reason::AdoptionNotConsented,
            Error::WorkspaceOfAnotherOwner { .. } => Reason::WorkspaceOfAnotherOwner,
            Error::NewParameterRequired { .. } => Reason::NewParameterRequired,
        }
    }

    /// Transient errors are retried with backoff; the others wait for a
    /// change (of the spec, the Secret or Coder) and a slow resync.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) => true,
            Error::Coder(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// A write refused because the resource changed since the decision
    /// was made (409): decide again on a fresh view, nothing failed.
    pub fn is_stale_write(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.is_conflict())
    }

    /// Errors only a spec change can fix: retrying them unchanged would
    /// get the same answer from Coder.
    pub fn waits_for_spec_change(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_)
                | Error::PresetNotFound(_)
                | Error::Coder(CoderError::Validation { .. })
                | Error::NewParameterRequired { .. }
                | Error::WorkspaceOfAnotherOwner { .. }
        )
    }

    /// What a reading agent or person should do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            Error::Kube(_) => "The operator retries with backoff.",
            Error::Coder(CoderError::Unauthorized { .. }) => {
                "Replace the Coder token (spec.credentialsRef Secret or the operator's default); the operator retries slowly meanwhile."
            }
            Error::Coder(CoderError::Forbidden { .. }) => {
                "Give the token's user the needed Coder role, or use spec.credentialsRef with another token."
            }
            Error::Coder(CoderError::Validation { .. }) => {
                "Fix spec.parameters (or the preset); the operator does not retry until the spec changes."
            }
            Error::Coder(error) if error.is_retryable() => {
                "Coder is unavailable; the operator retries with backoff and converges once it is back."
            }
            Error::Coder(_) => "Check the spec against Coder; the operator retries slowly.",
            Error::InvalidSpec(_) => "Fix the spec.",
            Error::Credentials(_) | Error::CredentialsSecretMissing { .. } => {
                "Create the Secret named by spec.credentialsRef with keys url and token, or configure the operator's default credentials."
            }
            Error::TemplateNotFound(_) => "Fix spec.template (name or id) and spec.organization.",
            Error::PresetNotFound(_) => "Pick one of the listed presets in spec.preset.",
            Error::OwnerNotGranted(_) => "The operator looks again as soon as the namespace's annotation changes.",
            Error::CoderUrlNotAllowed { .. } => {
                "Use a Coder URL the operator's admin allowed (--allowed-coder-urls), or ask them to allow this one."
            }
            Error::AdoptionNotConsented(_) => {
                "Until spec.adopt is true nothing is sent to that workspace; the operator looks again slowly."
            }
            Error::WorkspaceOfAnotherOwner { .. } => {
                "Set spec.credentialsRef back to credentials of the workspace's owner, or create a new ChatWorkspace for this owner; the operator looks again when the spec changes."
            }
            Error::NewParameterRequired { .. } => {
                "Add a value for it to spec.parameters (values for parameters that the template's active version adds may be added after the workspace exists; existing values cannot change), or ask a template admin to give it a default; the operator tries the start again when the spec changes."
            }
        }
    }
}

/// What a Coder error means for the resource: the errors a retry fixes are
/// one reason, whichever way coderd was unavailable.
fn coder_reason(error: &CoderError) -> Reason {
    match error {
        CoderError::Validation { .. } => Reason::ValidationFailed,
        CoderError::Unavailable { .. } | CoderError::Timeout { .. } | CoderError::Transport { .. } => {
            Reason::CoderUnavailable
        }
        CoderError::Unauthorized { .. } => Reason::Unauthorized,
        CoderError::Forbidden { .. } => Reason::Forbidden,
        CoderError::NotFound { .. } => Reason::NotFound,
        CoderError::Conflict { .. } => Reason::Conflict,
        CoderError::BadRequest { .. } => Reason::BadRequest,
        CoderError::LeaseExpired { .. } => Reason::LeaseExpired,
        CoderError::Decode { .. } => Reason::Decode,
        CoderError::UnexpectedStatus { .. } => Reason::UnexpectedStatus,
        CoderError::InvalidUrl { .. } => Reason::InvalidUrl,
        CoderError::InvalidArgument { .. } => Reason::InvalidArgument,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}
