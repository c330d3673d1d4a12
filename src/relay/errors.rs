//! Every error the relay returns to a client, and how it looks on the wire.
//!
//! The proxy decides *that* a request fails with a [`RelayError`]; this module alone decides the
//! HTTP status, the `Retry-After` header and the OpenAI-style JSON body
//! (`{"error": {"message", "type", "param", "code"}}`), so clients of the OpenAI SDKs see errors
//! they already know how to handle. It also renders the SSE error event sent when a stream
//! fails after its first byte reached the client.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use super::service::{Body, full_body};

/// Why a request was not (fully) served.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RelayError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body must be JSON (content-type application/json), got {content_type:?}")]
    UnsupportedMediaType { content_type: Option<String> },
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the client did not finish sending the request body in time")]
    BodyTimeout,
    #[error("request body could not be read: {reason}")]
    BodyUnreadable { reason: String },
    #[error("request body is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("request body has no string field `model`")]
    MissingModel,
    #[error("the model `{model}` does not exist in this region")]
    UnknownModel { model: String },
    #[error("region saturated ({reason}); retry later")]
    Saturated {
        reason: &'static str,
        retry_after: Duration,
    },
    #[error("no healthy backend serves `{model}` right now")]
    NoBackend {
        model: String,
        retry_after: Duration,
    },
    #[error("the relay is draining and takes no new requests")]
    Draining { retry_after: Duration },
    #[error("backend {backend} failed: {reason}")]
    BadGateway { backend: String, reason: String },
    #[error("backend {backend} did not send a first byte within {after:?}")]
    FirstByteTimeout { backend: String, after: Duration },
    #[error("request exceeded the total time limit of {after:?}")]
    TotalTimeout { after: Duration },
}

impl RelayError {
    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::NotFound { .. } | RelayError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            RelayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RelayError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RelayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RelayError::BodyUnreadable { .. }
            | RelayError::InvalidJson { .. }
            | RelayError::MissingModel => StatusCode::BAD_REQUEST,
            RelayError::Saturated { .. } => StatusCode::TOO_MANY_REQUESTS,
            RelayError::NoBackend { .. } | RelayError::Draining { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RelayError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            RelayError::FirstByteTimeout { .. } | RelayError::TotalTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 404 | 405 | 408 | 413 | 415 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    /// OpenAI's `error.code`: stable, machine-readable.
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::NotFound { .. } => "not_found",
            RelayError::MethodNotAllowed { .. } => "method_not_allowed",
            RelayError::UnsupportedMediaType { .. } => "unsupported_media_type",
            RelayError::BodyTooLarge { .. } => "request_too_large",
            RelayError::BodyTimeout => "request_timeout",
            RelayError::BodyUnreadable { .. } => "invalid_body",
            RelayError::InvalidJson { .. } => "invalid_json",
            RelayError::MissingModel => "missing_model",
            RelayError::UnknownModel { .. } => "model_not_found",
            RelayError::Saturated { .. } => "region_saturated",
            RelayError::NoBackend { .. } => "no_backend_available",
            RelayError::Draining { .. } => "relay_draining",
            RelayError::BadGateway { .. } => "backend_error",
            RelayError::FirstByteTimeout { .. } => "backend_timeout",
            RelayError::TotalTimeout { .. } => "timeout",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            RelayError::MissingModel | RelayError::UnknownModel { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RelayError::Saturated { retry_after, .. }
            | RelayError::NoBackend { retry_after, .. }
            | RelayError::Draining { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The error as OpenAI-style JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    pub fn into_response(self) -> http::Response<Body> {
        let body = self.json().to_string();
        let mut response = http::Response::new(full_body(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if matches!(self, RelayError::Draining { .. }) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The SSE event that ends a stream which failed after bytes already reached the client: the
/// status line is gone, so the error travels in-band, in the shape OpenAI's streaming API uses.
pub fn sse_error_event(message: &str, code: &str) -> bytes::Bytes {
    let payload = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": code }
    });
    bytes::Bytes::from(format!("data: {payload}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let table: Vec<(RelayError, u16, &str)> = vec![
            (RelayError::MissingModel, 400, "missing_model"),
            (
                RelayError::UnknownModel { model: "x".into() },
                404,
                "model_not_found",
            ),
            (
                RelayError::BodyTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                RelayError::UnsupportedMediaType { content_type: None },
                415,
                "unsupported_media_type",
            ),
            (RelayError::BodyTimeout, 408, "request_timeout"),
            (
                RelayError::Saturated {
                    reason: "load",
                    retry_after: Duration::from_secs(2),
                },
                429,
                "region_saturated",
            ),
            (
                RelayError::FirstByteTimeout {
                    backend: "a".into(),
                    after: Duration::from_secs(1),
                },
                504,
                "backend_timeout",
            ),
        ];
        for (error, status, code) in table {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.code(), code);
            let json = error.json();
            assert_eq!(json["error"]["code"], code);
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = RelayError::Saturated {
            reason: "load",
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let unknown = RelayError::UnknownModel { model: "m".into() }.into_response();
        assert!(unknown.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn sse_error_event_is_one_data_line() {
        let event = sse_error_event("backend died", "backend_error");
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("data: {"));
        assert!(text.ends_with("\n\n"));
        let json: serde_json::Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "backend_error");
    }
}
