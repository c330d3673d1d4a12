//! The HTTP client the relay uses towards its backends (proxied requests and probes alike):
//! plain HTTP or HTTPS (rustls with the system's trust roots), HTTP/1.1, pooled connections.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::config::model::RelayConfig;

pub type UpstreamConnector = HttpsConnector<HttpConnector>;

/// Idle pooled connections to a backend are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `http://` and `https://` backends with the config's connect timeout.
pub fn client<B>(config: &RelayConfig) -> Client<UpstreamConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.timeouts.connect));
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(builder) => builder,
        Err(error) => {
            // Plain-HTTP backends still work; HTTPS ones fail their handshakes, visibly.
            tracing::warn!(%error, "no system trust roots found; HTTPS backends cannot be verified");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http1_max_buf_size(config.limits.max_response_header_bytes.max(8192))
        .build(connector)
}
