//! Coder's error shape: `{"message", "detail"?, "validations"?}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validation {
    pub field: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<Validation>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), detail: String::new(), validations: Vec::new() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn validation(mut self, field: impl Into<String>, detail: impl Into<String>) -> Self {
        self.validations.push(Validation { field: field.into(), detail: detail.into() });
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// coderd's answer for anything missing or not visible to the caller.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Resource not found or you do not have access to this resource")
    }

    /// coderd's answer for a request field that fails its validation tag.
    pub fn invalid_field(field: &str, tag: &str, value: &str) -> Self {
        Self::bad_request("Validation failed.")
            .validation(field, format!("Validation failed for tag {tag:?} with value: {value:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}
