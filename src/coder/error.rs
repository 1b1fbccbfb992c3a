//! Errors of the Coder client, one variant per thing a user or the controller
//! can act on.

use std::fmt;

use reqwest::StatusCode;
use serde::Deserialize;

/// Longest server-provided text kept in an error, so a huge or hostile body
/// never ends up whole in a log line or a condition message.
const MAX_TEXT_CHARS: usize = 512;

/// Most field errors listed from one response.
const MAX_VALIDATIONS: usize = 20;

/// One field Coder rejected, from the `validations` of an error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoderError {
    #[error("Coder rejected the session token (401): {message}")]
    Unauthorized { message: String },

    #[error("the token's user is not allowed to do this in Coder (403): {message}")]
    Forbidden { message: String },

    /// 404, or 410 for a workspace that was deleted (coderd's answer to a
    /// read by id).
    #[error("not found in Coder: {message}")]
    NotFound { message: String },

    /// For a build: another build is still active; read the workspace again
    /// before deciding what to do.
    #[error("Coder refused a conflicting request (409): {message}")]
    Conflict { message: String },

    #[error("Coder rejected the request's parameters (400): {message}{}", ValidationList(validations))]
    Validation { message: String, validations: Vec<FieldError> },

    /// Any other 4xx.
    #[error("Coder rejected the request ({status}): {message}{}", Detail(detail))]
    BadRequest { status: u16, message: String, detail: String },

    /// 5xx, 408 and 429: the server cannot serve the request now.
    #[error("Coder is unavailable ({status}): {message}")]
    Unavailable { status: u16, message: String },

    #[error("Coder did not answer {endpoint} in time")]
    Timeout { endpoint: &'static str },

    #[error("cannot reach Coder for {endpoint}: {message}")]
    Transport { endpoint: &'static str, message: String },

    /// A write (create, build, chat interrupt or context refresh) this
    /// replica did not send, or dropped unanswered, because its leader lease
    /// expired: another replica may be acting by now.
    #[error("{endpoint} not sent to Coder: this replica's leader lease has expired")]
    LeaseExpired { endpoint: &'static str },

    #[error("unexpected response from Coder for {endpoint}: {message}")]
    Decode { endpoint: &'static str, message: String },

    /// A status outside 2xx/4xx/5xx, such as a redirect: the configured URL
    /// is probably not the one coderd serves (http instead of https, a proxy).
    #[error("unexpected HTTP status {status} from Coder for {endpoint}; check the Coder URL")]
    UnexpectedStatus { endpoint: &'static str, status: u16 },

    #[error("invalid Coder URL: {message}")]
    InvalidUrl { message: String },

    /// A caller-supplied value that cannot be used in a request, such as an
    /// empty name.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
}

impl CoderError {
    /// The parameters a refused build names as required and not provided:
    /// coderd's dynamic-parameters flow lists them as validations, its
    /// classic flow names one in the message (`Unable to validate
    /// parameter "zone"`) with the reason in the detail. `None`: not such a
    /// refusal; an empty list: one that names none.
    pub fn missing_parameters(&self) -> Option<Vec<String>> {
        let required = |text: &str| {
            let text = text.to_ascii_lowercase();
            text.contains("required parameter not provided") || text.contains("is required but not provided")
        };
        match self {
            CoderError::Validation { validations, .. } => {
                Some(validations.iter().filter(|v| required(&v.detail)).map(|v| v.field.clone()).collect())
            }
            CoderError::BadRequest { message, detail, .. } if required(detail) => {
                Some(message.split('"').nth(1).map(str::to_string).into_iter().collect())
            }
            _ => None,
        }
    }

    /// Whether the same request may succeed later with nothing changed.
    /// A conflict is not: the caller must read the state again and decide.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::Transport { .. } | Self::LeaseExpired { .. }
        )
    }

    /// A short CamelCase name for condition reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::NotFound { .. } => "NotFound",
            Self::Conflict { .. } => "Conflict",
            Self::Validation { .. } => "Validation",
            Self::BadRequest { .. } => "BadRequest",
            Self::Unavailable { .. } => "Unavailable",
            Self::Timeout { .. } => "Timeout",
            Self::Transport { .. } => "Transport",
            Self::LeaseExpired { .. } => "LeaseExpired",
            Self::Decode { .. } => "Decode",
            Self::UnexpectedStatus { .. } => "UnexpectedStatus",
            Self::InvalidUrl { .. } => "InvalidUrl",
            Self::InvalidArgument { .. } => "InvalidArgument",
        }
    }

    /// Maps a non-2xx answer to an error, following docs/coder-api.md.
    pub(crate) fn from_status(endpoint: &'static str, status: StatusCode, body: ErrorBody) -> Self {
        let code = status.as_u16();
        match code {
            400 if !body.validations.is_empty() => {
                Self::Validation { message: body.summary(), validations: body.validations }
            }
            401 => Self::Unauthorized { message: body.summary() },
            403 => Self::Forbidden { message: body.summary() },
            404 | 410 => Self::NotFound { message: body.summary() },
            409 => Self::Conflict { message: body.summary() },
            408 | 429 | 500..=599 => Self::Unavailable { status: code, message: body.summary() },
            400..=499 => Self::BadRequest { status: code, message: body.message, detail: body.detail },
            _ => Self::UnexpectedStatus { endpoint, status: code },
        }
    }
}

/// Coder's error body, `{"message", "detail", "validations"}`, read leniently:
/// a proxy's HTML page or an empty body still yields a usable message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub message: String,
    pub detail: String,
    pub validations: Vec<FieldError>,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    validations: Option<Vec<FieldError>>,
}

impl ErrorBody {
    /// Reads a Coder error body. `clean` runs on every text before it is
    /// truncated, so that redaction sees whole strings.
    pub fn parse(status: StatusCode, raw: &[u8], clean: impl Fn(&str) -> String) -> Self {
        let wire = serde_json::from_slice::<WireErrorBody>(raw).ok();
        let (message, detail, validations) = match wire {
            Some(wire) => (wire.message, wire.detail, wire.validations.unwrap_or_default()),
            None => (String::new(), String::new(), Vec::new()),
        };
        let text = |value: &str| truncate(&clean(value));
        let message = if message.trim().is_empty() { status_text(status) } else { text(&message) };
        Self {
            message,
            detail: text(&detail),
            validations: validations
                .into_iter()
                .take(MAX_VALIDATIONS)
                .map(|field| FieldError { field: text(&field.field), detail: text(&field.detail) })
                .collect(),
        }
    }

    /// `message: detail`, or the message alone.
    pub fn summary(&self) -> String {
        format!("{}{}", self.message, Detail(&self.detail))
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => reason.to_owned(),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Cuts `text` to at most `MAX_TEXT_CHARS` characters, marking the cut.
pub(crate) fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Displays a non-empty detail as `: detail`.
struct Detail<'a>(&'a str);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, ": {}", self.0) }
    }
}

/// Displays field errors as `; field: detail; field: detail`.
struct ValidationList<'a>(&'a [FieldError]);

impl fmt::Display for ValidationList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for field in self.0 {
            write!(f, "; {}: {}", field.field, field.detail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(status: u16, body: &str) -> CoderError {
        let status = StatusCode::from_u16(status).unwrap();
        let body = ErrorBody::parse(status, body.as_bytes(), str::to_owned);
        CoderError::from_status("GET /test", status, body)
    }

    #[test]
    fn maps_statuses_per_the_api() {
        let body = r#"{"message": "m", "detail": "d"}"#;
        let cases = [
            (400, "BadRequest"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "NotFound"),
            (408, "Unavailable"),
            (409, "Conflict"),
            (412, "BadRequest"),
            (422, "BadRequest"),
            (429, "Unavailable"),
            (500, "Unavailable"),
            (502, "Unavailable"),
            (503, "Unavailable"),
            (302, "UnexpectedStatus"),
        ];
        for (status, reason) in cases {
            assert_eq!(error_for(status, body).reason(), reason, "status {status}");
        }
    }

    #[test]
    fn bad_request_with_validations_is_a_validation_error() {
        let error = error_for(
            400,
            r#"{"message": "Invalid request.",
                "validations": [{"field": "name", "detail": "must be lowercase"},
                                {"field": "ttl_ms", "detail": "too short"}]}"#,
        );
        let CoderError::Validation { validations, .. } = &error else {
            panic!("expected a validation error, got {error:?}");
        };
        assert_eq!(validations.len(), 2);
        assert_eq!(
            error.to_string(),
            "Coder rejected the request's parameters (400): Invalid request.; \
             name: must be lowercase; ttl_ms: too short"
        );
    }

    #[test]
    fn empty_or_null_validations_are_a_plain_bad_request() {
        for body in [r#"{"message": "no", "validations": []}"#, r#"{"message": "no", "validations": null}"#] {
            assert_eq!(error_for(400, body).reason(), "BadRequest");
        }
    }

    #[test]
    fn message_and_detail_are_shown() {
        let error = error_for(404, r#"{"message": "Resource not found.", "detail": "workspace \"x\""}"#);
        assert_eq!(error.to_string(), "not found in Coder: Resource not found.: workspace \"x\"");
    }

    #[test]
    fn non_json_body_falls_back_to_status_text() {
        let error = error_for(502, "<html><body>Bad Gateway from nginx</body></html>");
        assert_eq!(error.to_string(), "Coder is unavailable (502): Bad Gateway");
        let error = error_for(503, "");
        assert_eq!(error.to_string(), "Coder is unavailable (503): Service Unavailable");
    }

    #[test]
    fn unknown_keys_and_missing_keys_are_tolerated() {
        let body = ErrorBody::parse(StatusCode::CONFLICT, br#"{"message": "busy", "something_new": 1}"#, str::to_owned);
        assert_eq!(body.message, "busy");
        assert_eq!(body.detail, "");
        assert!(body.validations.is_empty());
    }

    #[test]
    fn long_server_text_is_truncated() {
        let long = "x".repeat(10_000);
        let body = ErrorBody::parse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(r#"{{"message": "{long}", "detail": "{long}"}}"#).as_bytes(),
            str::to_owned,
        );
        assert_eq!(body.message.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(body.message.ends_with('…'));
        assert_eq!(body.detail.chars().count(), MAX_TEXT_CHARS + 1);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let text = "é".repeat(MAX_TEXT_CHARS + 5);
        let cut = truncate(&text);
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS + 1);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(error_for(503, "").is_retryable());
        assert!(error_for(429, "").is_retryable());
        assert!(CoderError::Timeout { endpoint: "GET /x" }.is_retryable());
        assert!(CoderError::Transport { endpoint: "GET /x", message: "connection refused".into() }.is_retryable());
        for status in [400, 401, 403, 404, 409] {
            assert!(!error_for(status, "").is_retryable(), "status {status}");
        }
    }

    #[test]
    fn clean_reaches_every_text_before_truncation() {
        // The secret straddles the truncation point: only redacting first
        // keeps a prefix of it out of the message.
        let secret = "s3cr3t-token-value";
        let padding = "x".repeat(MAX_TEXT_CHARS - 5);
        let raw = serde_json::json!({
            "message": format!("{padding}{secret}"),
            "detail": secret,
            "validations": [{"field": secret, "detail": secret}],
        });
        let body = ErrorBody::parse(StatusCode::BAD_REQUEST, raw.to_string().as_bytes(), |text| {
            text.replace(secret, "[redacted]")
        });
        let shown = format!("{body:?}");
        assert!(!shown.contains("s3cr3"), "{shown}");
    }
}
