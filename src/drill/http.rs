//! The two plain-HTTP calls a drill makes outside the DNS admin client: scraping a relay's
//! `/metrics` and pausing or resuming its health reports. Loopback/plain HTTP only, like the
//! relay's admin listener; every call is bounded by a timeout. With a relay admin token every
//! call carries it as `Authorization: Bearer` (the relay only demands it for the pause, but a
//! scrape through an authenticating proxy then works too); errors never contain it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::admin::AdminToken;

/// Why an HTTP call failed, with the URL it was for.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("{url}: not a valid http:// URL")]
    BadUrl { url: String },
    /// Cannot happen for a token [`AdminToken`] accepted (printable ASCII); kept as an error
    /// rather than a panic.
    #[error("the relay admin token cannot be sent in an HTTP header")]
    BadToken,
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: no response within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// A small HTTP/1.1 client shared by the drill's scrapes and relay calls.
#[derive(Clone)]
pub struct HttpCaller {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    token: Option<AdminToken>,
}

impl HttpCaller {
    pub fn new(timeout: Duration) -> HttpCaller {
        HttpCaller {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
            token: None,
        }
    }

    /// Sends `token` (when `Some`) as `Authorization: Bearer` on every call.
    pub fn with_token(mut self, token: Option<AdminToken>) -> HttpCaller {
        self.token = token;
        self
    }

    /// `GET url`, the body as text on a 2xx.
    pub async fn get_text(&self, url: &str) -> Result<String, HttpError> {
        self.call(Method::GET, url, None).await
    }

    /// `POST url` with a JSON body; the response body on a 2xx.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<String, HttpError> {
        self.call(Method::POST, url, Some(body.to_string())).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<String, HttpError> {
        let uri: Uri = url
            .parse()
            .ok()
            .filter(|u: &Uri| u.scheme_str() == Some("http") && u.host().is_some())
            .ok_or_else(|| HttpError::BadUrl { url: url.into() })?;
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            let mut value = HeaderValue::try_from(format!("Bearer {}", token.reveal()))
                .map_err(|_| HttpError::BadToken)?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Transport {
                url: url.into(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| HttpError::Transport {
                        url: url.into(),
                        message: e.to_string(),
                    })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Transport {
                    url: url.into(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, HttpError>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, text) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.into(),
                timeout: self.timeout,
            })??;
        if status.is_success() {
            Ok(text)
        } else {
            Err(HttpError::Status {
                url: url.into(),
                status: status.as_u16(),
                body: truncate(&text, 200),
            })
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
