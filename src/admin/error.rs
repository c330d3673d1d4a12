//! Why an admin request failed, and the one place that turns that into a status and a body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::model::{ErrorBody, ErrorDetail};
use crate::operator_state::MAX_WEIGHT_PERCENT;

/// A refused or failed admin request. The `Display` text is the message clients see, so it
/// names what to fix and never carries the token.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("this call needs `Authorization: Bearer <token>` with the node's admin token")]
    Unauthorized,
    #[error("no such endpoint: {path}")]
    NotFound { path: String },
    #[error("no region `{id}` in the configuration")]
    UnknownRegion { id: String },
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("request body: {message}")]
    InvalidBody { message: String },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body not received within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error(
        "weight {weight} is out of range: a weight is a percentage from 0 to {MAX_WEIGHT_PERCENT}"
    )]
    InvalidWeight { weight: u32 },
    #[error("max_ttl must be at least 1 second (DELETE /v1/max-ttl removes the cap)")]
    InvalidMaxTtl,
    #[error(
        "no operator_state file is configured, so the change could not be persisted; \
         set `operator_state` in the DNS config"
    )]
    NotPersistent,
    #[error("the change was not applied: {message}")]
    WriteFailed { message: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } | Self::UnknownRegion { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidBody { .. } | Self::InvalidWeight { .. } | Self::InvalidMaxTtl => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::NotPersistent => StatusCode::CONFLICT,
            Self::WriteFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable and machine-readable, unlike the message.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::UnknownRegion { .. } => "unknown_region",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::InvalidBody { .. } => "invalid_body",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::InvalidWeight { .. } => "invalid_weight",
            Self::InvalidMaxTtl => "invalid_max_ttl",
            Self::NotPersistent => "not_persistent",
            Self::WriteFailed { .. } => "write_failed",
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = json_response(self.status(), &body);
        match &self {
            Self::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"meridian-admin\""),
                );
            }
            Self::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response; serialising our own plain-data models cannot fail.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    typed_response(status, "application/json", body)
}

pub fn typed_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
