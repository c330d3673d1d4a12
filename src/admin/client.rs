//! A Rust client of the admin API, for `meridian ctl`, drills and the demo.
//!
//! Plain HTTP/1.1 through hyper's pooled client, with a connect timeout and an overall
//! timeout per call. Server refusals come back as [`ClientError::Server`] carrying the
//! status and the server's own error code and message.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::de::DeserializeOwned;

use super::model::{
    DecisionView, ErrorBody, MaxTtl, RegionAction, RegionResponse, RegionView, Status,
    WeightRequest,
};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Status documents are small; anything this large is not our server.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("invalid admin URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("the admin token cannot be sent in an HTTP header (not printable ASCII)")]
    InvalidToken,
    #[error("cannot reach the admin API at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the admin API at {url} did not answer within {} ms", after.as_millis())]
    Timeout { url: String, after: Duration },
    #[error("the admin API refused: {message} (HTTP {status}, {code})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the admin API at {url}: {message}")]
    Decode { url: String, message: String },
}

/// A handle on one DNS node's admin API; cheap to clone (connections are pooled).
#[derive(Clone, Debug)]
pub struct AdminClient {
    /// `http://host:port` plus an optional path prefix, without a trailing slash.
    base: String,
    authorization: Option<HeaderValue>,
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl AdminClient {
    /// `base_url` like `http://127.0.0.1:9954`; `token` is needed for changes only.
    pub fn new(base_url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let uri: Uri = base_url
            .parse()
            .map_err(|_| invalid("not a URL (expected http://HOST:PORT)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(invalid(
                    "only http:// is supported (bind the API to loopback)",
                ));
            }
            None => return Err(invalid("missing http:// scheme")),
        }
        if uri.authority().is_none() {
            return Err(invalid("missing host"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        let authorization = token
            .map(|token| {
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map(|mut value| {
                        value.set_sensitive(true);
                        value
                    })
                    .map_err(|_| ClientError::InvalidToken)
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(AdminClient {
            base: base_url.trim_end_matches('/').to_owned(),
            authorization,
            http: Client::builder(TokioExecutor::new()).build(connector),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Overall time allowed per call (connect, request, response body).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// The node's recent GSLB decisions, newest first.
    pub async fn decisions(&self) -> Result<Vec<DecisionView>, ClientError> {
        self.call(Method::GET, "/v1/decisions", None).await
    }

    pub async fn set_admin(
        &self,
        region: &str,
        action: RegionAction,
    ) -> Result<RegionView, ClientError> {
        let path = format!("/v1/regions/{region}/{}", action.path_segment());
        let response: RegionResponse = self.call(Method::POST, &path, None).await?;
        Ok(response.region)
    }

    /// `weight` in percent (0..=1000).
    pub async fn set_weight(&self, region: &str, weight: u32) -> Result<RegionView, ClientError> {
        let path = format!("/v1/regions/{region}/weight");
        let body = serde_json::to_vec(&WeightRequest { weight }).unwrap_or_default();
        let response: RegionResponse = self.call(Method::PUT, &path, Some(body)).await?;
        Ok(response.region)
    }

    /// Sets (`Some`, at least 1 s) or removes (`None`) the TTL cap on GSLB answers.
    pub async fn set_max_ttl(&self, max_ttl: Option<u32>) -> Result<(), ClientError> {
        let _: MaxTtl = match max_ttl {
            Some(max_ttl) => {
                let body = serde_json::to_vec(&MaxTtl {
                    max_ttl: Some(max_ttl),
                })
                .unwrap_or_default();
                self.call(Method::PUT, "/v1/max-ttl", Some(body)).await?
            }
            None => self.call(Method::DELETE, "/v1/max-ttl", None).await?,
        };
        Ok(())
    }

    /// A call whose successful body is returned as the server sent it (`ctl --json`).
    pub async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(method, path, body).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(self.timeout, self.exchange(method, &url, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url,
                after: self.timeout,
            }),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| ClientError::InvalidUrl {
                url: url.to_owned(),
                reason: "cannot form a request for it",
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|error| ClientError::Connect {
                url: url.to_owned(),
                message: describe(&error),
            })?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = limited
            .collect()
            .await
            .map_err(|error| ClientError::Decode {
                url: url.to_owned(),
                message: format!("reading the body: {error}"),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Server {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => ClientError::Server {
                    status: status.as_u16(),
                    code: "unknown".to_owned(),
                    message: String::from_utf8_lossy(&bytes)
                        .trim()
                        .chars()
                        .take(200)
                        .collect(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Decode {
            url: url.to_owned(),
            message: error.to_string(),
        })
    }
}

/// The innermost cause: hyper's outer messages ("client error (Connect)") say little.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message = cause.to_string();
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_plain_http_base_urls() {
        for ok in [
            "http://127.0.0.1:9954",
            "http://[::1]:9954/",
            "http://node/admin",
        ] {
            assert!(AdminClient::new(ok, None).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("https://127.0.0.1:9954", "only http://"),
            ("127.0.0.1:9954", "scheme"),
            ("http://h:1/?a=b", "query"),
            ("not a url", "not a URL"),
        ] {
            let error = AdminClient::new(bad, None).unwrap_err().to_string();
            assert!(error.contains(reason), "{bad}: {error}");
        }
        assert_eq!(
            AdminClient::new("http://h:1", Some("bad\ntoken".into())).unwrap_err(),
            ClientError::InvalidToken
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client = AdminClient::new("http://h:1", Some("hunter2-token".into())).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Sensitive"), "{shown}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let client = AdminClient::new(&format!("http://{address}"), None).unwrap();
        match client.status().await {
            Err(ClientError::Connect { message, .. }) => {
                assert!(message.to_lowercase().contains("refused"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
