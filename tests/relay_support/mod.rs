//! Test kit for the relay's end-to-end tests: a relay started in-process from TOML in front of
//! simulated backends, with real clients for every front — HTTP/1.1 and HTTP/2 over TLS
//! (tokio-rustls + hyper), HTTP/3 (quinn + h3) — and a plain HTTP/1.1 client for the admin
//! listener.
//!
//! Everything is bounded: a step that does not finish within [`LIMIT`] fails the test instead
//! of hanging it. Waiting is done on state (sim stats, certificate generations); the few
//! conditions only visible over HTTP are polled with [`eventually`], which is bounded too.
#![allow(dead_code)] // not every helper is used by every test

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian::{
    relay::{config::parse_relay_config, server::RelayHandle, tls},
    sim_backend::{SimBackend, SimBackendArgs, SimStats},
};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{net::TcpStream, task::JoinHandle};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest any single step may take.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The model most tests serve.
pub const MODEL: &str = "test-model";

/// Fails the test (naming `what`) instead of hanging it.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(LIMIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// Polls `check` until it holds, for conditions only visible over HTTP (admin endpoints, a
/// new handshake). Bounded by [`LIMIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never happened within {LIMIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated backends
// ---------------------------------------------------------------------------------------------

/// A fast simulated backend (a few ms per answer) serving `models`, adjusted by `tweak`.
pub async fn sim(models: &[&str], tweak: impl FnOnce(&mut SimBackendArgs)) -> SimBackend {
    let mut args = SimBackendArgs::new(models.iter().copied());
    args.ttft_ms = 5;
    args.tokens_per_s = 2000.0;
    args.max_tokens = 4;
    args.slots = 8;
    tweak(&mut args);
    SimBackend::start(args).await.expect("sim backend starts")
}

/// Waits until the relay's first deep probe reached `sim` and ended, and returns the stats
/// then: the baseline that the test's own requests are counted from. (Deep probes are real
/// completions the sim counts; with the long deep interval of [`TestRelay::start`], each
/// backend gets exactly one, within a second of start-up.)
pub async fn probed(sim: &SimBackend) -> SimStats {
    within(
        "the relay's first deep probe reaches the backend and ends",
        sim.wait_for(|s| {
            s.received >= 1
                && s.completed + s.failed + s.cancelled + s.rejected + s.invalid >= 1
                && s.running == 0
        }),
    )
    .await
}

/// A loopback port nothing listens on: bound, read, released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    port
}

// ---------------------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------------------

/// One `[[backend]]` of the relay config.
pub struct BackendDecl {
    pub id: String,
    pub url: String,
    pub models: Vec<String>,
    pub slots: u32,
}

pub fn backend(id: &str, url: impl Into<String>, models: &[&str], slots: u32) -> BackendDecl {
    BackendDecl {
        id: id.to_string(),
        url: url.into(),
        models: models.iter().map(|m| (*m).to_string()).collect(),
        slots,
    }
}

/// Health checks that stay out of the way: one probe of each kind within a second of start-up,
/// then none for the length of any test.
pub const QUIET_HEALTH: &str = "
[health]
interval_ms = 600000
deep_interval_ms = 600000
deep_timeout_ms = 60000
";

/// Writes `token` to `relay-admin.token` in `dir` with `mode` (0600 for a usable one).
pub fn admin_token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("relay-admin.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A relay whose admin API needs `token` (from a 0600 file in `dir`), in front of one backend
/// that refuses connections: for tests of the admin surface, not of proxying.
pub async fn relay_with_admin_token(dir: &Path, token: &str) -> TestRelay {
    let token_file = admin_token_file(dir, token, 0o600);
    TestRelay::start_with(
        &[backend(
            "a",
            format!("http://127.0.0.1:{}", closed_port()),
            &["m"],
            4,
        )],
        &format!("admin_token_file = {:?}", token_file.to_str().unwrap()),
        "",
    )
    .await
}

/// A relay serving on loopback, its certificate files in a scratch folder.
pub struct TestRelay {
    handle: Option<RelayHandle>,
    pub https: SocketAddr,
    pub h3: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    /// DER of the certificate the relay started with.
    pub cert_der: Vec<u8>,
    /// A second pair, trusted by the clients, for [`TestRelay::replace_with_new_pair`].
    next: (String, String),
    trusted: Vec<CertificateDer<'static>>,
}

impl TestRelay {
    /// Starts a relay in front of `backends`. `relay_keys` go into `[relay]`; `sections` are
    /// further tables (`[timeouts]`, `[shedding]`, ...). Without a `[health]` table, probes
    /// are made rare (see [`QUIET_HEALTH`]).
    pub async fn start_with(backends: &[BackendDecl], relay_keys: &str, sections: &str) -> Self {
        tls::install_crypto_provider();
        let names = ["localhost", "127.0.0.1"];
        let (cert, key) = tls::self_signed(&names).expect("self-signed pair");
        let next = tls::self_signed(&names).expect("second self-signed pair");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), &cert).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &key).expect("write key");

        let mut text = format!(
            "[relay]\nregion = \"test\"\nlisten = \"127.0.0.1:0\"\n\
             admin_listen = \"127.0.0.1:0\"\nhttp3 = true\n{relay_keys}\n\n\
             [relay.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n"
        );
        for b in backends {
            let models: Vec<String> = b.models.iter().map(|m| format!("{m:?}")).collect();
            text.push_str(&format!(
                "[[backend]]\nid = \"{}\"\nurl = \"{}\"\nkind = \"vllm\"\nmodels = [{}]\nslots = {}\n\n",
                b.id,
                b.url,
                models.join(", "),
                b.slots
            ));
        }
        text.push_str(sections);
        if !sections.contains("[health]") {
            text.push_str(QUIET_HEALTH);
        }
        let config = parse_relay_config(&text, &dir.path().join("relay.toml"))
            .unwrap_or_else(|error| panic!("test relay config is invalid: {error}\n{text}"));
        let handle = RelayHandle::start(config).await.expect("relay starts");
        let h3 = handle.h3.expect("HTTP/3 is on");
        TestRelay {
            https: handle.https,
            h3,
            admin: handle.admin,
            handle: Some(handle),
            dir,
            cert_der: der(&cert).to_vec(),
            trusted: vec![der(&cert), der(&next.0)],
            next,
        }
    }

    pub async fn start(backends: &[BackendDecl], sections: &str) -> Self {
        Self::start_with(backends, "", sections).await
    }

    pub fn handle(&self) -> &RelayHandle {
        self.handle.as_ref().expect("relay still running")
    }

    /// The handle, for [`RelayHandle::drain_and_stop`].
    pub fn take_handle(&mut self) -> RelayHandle {
        self.handle.take().expect("relay still running")
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.trusted {
            roots.add(cert.clone()).expect("trust anchor");
        }
        roots
    }

    fn tls_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// A new connection over `proto`.
    pub async fn client(&self, proto: Proto) -> Client {
        self.try_client(proto)
            .await
            .unwrap_or_else(|error| panic!("{proto:?} connection to the relay: {error}"))
    }

    pub async fn try_client(&self, proto: Proto) -> Result<Client, BoxError> {
        match proto {
            Proto::H1 | Proto::H2 => {
                let alpn: &[u8] = if proto == Proto::H2 {
                    b"h2"
                } else {
                    b"http/1.1"
                };
                let connect = async {
                    let tcp = TcpStream::connect(self.https).await?;
                    let name = ServerName::try_from("localhost")?;
                    let tls = tokio_rustls::TlsConnector::from(self.tls_config(alpn))
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, BoxError>(tls)
                };
                let tls = tokio::time::timeout(LIMIT, connect).await??;
                let (_, session) = tls.get_ref();
                if session.alpn_protocol() != Some(alpn) {
                    return Err(format!("ALPN: {:?}", session.alpn_protocol()).into());
                }
                let server_cert = peer_leaf(session.peer_certificates());
                let io = TokioIo::new(tls);
                let inner = if proto == Proto::H2 {
                    let (sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                    let driver = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Inner::H2(sender, driver)
                } else {
                    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                    let driver = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Inner::H1(sender, driver)
                };
                Ok(Client { inner, server_cert })
            }
            Proto::H3 => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_root_certificates(self.roots())
                    .with_no_client_auth();
                tls.alpn_protocols = vec![b"h3".to_vec()];
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
                let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
                endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
                let connection =
                    tokio::time::timeout(LIMIT, endpoint.connect(self.h3, "localhost")?).await??;
                let server_cert = connection
                    .peer_identity()
                    .and_then(|identity| {
                        identity
                            .downcast::<Vec<CertificateDer<'static>>>()
                            .ok()
                            .and_then(|chain| chain.first().map(|c| c.to_vec()))
                    })
                    .unwrap_or_default();
                let (mut driver, send) =
                    h3::client::new(h3_quinn::Connection::new(connection.clone())).await?;
                let driver = tokio::spawn(async move {
                    let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                });
                Ok(Client {
                    inner: Inner::H3 {
                        _endpoint: endpoint,
                        connection,
                        send,
                        driver,
                    },
                    server_cert,
                })
            }
        }
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        self.admin_request(Method::GET, path).await
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub async fn admin_request(&self, method: Method, path: &str) -> (StatusCode, String) {
        let exchange = async {
            let tcp = TcpStream::connect(self.admin).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            let driver = tokio::spawn(conn);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.admin.to_string())
                .body(Full::new(Bytes::new()))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            driver.abort();
            Ok::<_, BoxError>((status, String::from_utf8(body.to_vec())?))
        };
        within("admin request", exchange)
            .await
            .unwrap_or_else(|error| panic!("admin request {path}: {error}"))
    }

    /// The admin view of backend `id` (`GET /admin/backends`).
    pub async fn backend_view(&self, id: &str) -> serde_json::Value {
        let backends = self.admin_json("/admin/backends").await;
        backends["backends"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["id"] == id).cloned())
            .unwrap_or_else(|| panic!("no backend {id} in {backends}"))
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        text
    }

    /// Renames the second certificate pair over the files (key first, like the front tests);
    /// returns the new certificate's DER.
    pub fn replace_with_new_pair(&self) -> Vec<u8> {
        let replace = |name: &str, contents: &str| {
            let staged = self.dir.path().join("staged.tmp");
            std::fs::write(&staged, contents).expect("write staged file");
            std::fs::rename(&staged, self.dir.path().join(name)).expect("rename over");
        };
        replace("key.pem", &self.next.1);
        replace("cert.pem", &self.next.0);
        der(&self.next.0).to_vec()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn peer_leaf(chain: Option<&[CertificateDer<'_>]>) -> Vec<u8> {
    chain
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    H3,
}

pub const ALL_PROTOCOLS: [Proto; 3] = [Proto::H1, Proto::H2, Proto::H3];

type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

enum Inner {
    H1(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        JoinHandle<()>,
    ),
    H2(
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        JoinHandle<()>,
    ),
    H3 {
        _endpoint: quinn::Endpoint,
        connection: quinn::Connection,
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        driver: JoinHandle<()>,
    },
}

/// One client connection to the relay's public listener.
pub struct Client {
    inner: Inner,
    /// The leaf certificate the relay presented on this connection.
    pub server_cert: Vec<u8>,
}

impl Drop for Client {
    fn drop(&mut self) {
        match &self.inner {
            Inner::H1(_, driver) | Inner::H2(_, driver) => driver.abort(),
            Inner::H3 {
                connection, driver, ..
            } => {
                connection.close(quinn::VarInt::from_u32(0x100), b"client gone");
                driver.abort();
            }
        }
    }
}

impl Client {
    /// Sends `request` (path only in its URI, e.g. `/v1/models`).
    pub async fn send(&mut self, request: Request<Bytes>) -> Result<Response, BoxError> {
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        match &mut self.inner {
            Inner::H1(sender, _) => {
                let mut request = Request::from_parts(parts, Full::new(body));
                *request.uri_mut() = path.parse()?;
                request.headers_mut().insert(
                    http::header::HOST,
                    http::HeaderValue::from_static("localhost"),
                );
                tokio::time::timeout(LIMIT, sender.ready()).await??;
                let response = tokio::time::timeout(LIMIT, sender.send_request(request)).await??;
                Ok(Response::hyper(response))
            }
            Inner::H2(sender, _) => {
                let mut request = Request::from_parts(parts, Full::new(body));
                *request.uri_mut() = format!("https://localhost{path}").parse()?;
                tokio::time::timeout(LIMIT, sender.ready()).await??;
                let response = tokio::time::timeout(LIMIT, sender.send_request(request)).await??;
                Ok(Response::hyper(response))
            }
            Inner::H3 { send, .. } => {
                let mut request = Request::from_parts(parts, ());
                *request.uri_mut() = format!("https://localhost{path}").parse()?;
                let exchange = async {
                    let mut stream = send.send_request(request).await?;
                    // RFC 9114 §4.1.2: a server that answers without the rest of the request
                    // (e.g. 415 before reading the body) may stop the client's sending side;
                    // the client must still read the complete response, so a failed send is
                    // not the outcome — the response is.
                    let sent = async {
                        if !body.is_empty() {
                            stream.send_data(body).await?;
                        }
                        stream.finish().await
                    }
                    .await;
                    let response = match stream.recv_response().await {
                        Ok(response) => response,
                        Err(error) => {
                            return Err(match sent {
                                Err(send_error) => format!("{send_error}; then {error}").into(),
                                Ok(()) => error.into(),
                            });
                        }
                    };
                    Ok::<_, BoxError>((response, stream))
                };
                let (response, stream) = tokio::time::timeout(LIMIT, exchange).await??;
                let (head, ()) = response.into_parts();
                Ok(Response {
                    status: head.status,
                    headers: head.headers,
                    body: ResponseBody::H3(Box::new(stream)),
                })
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Response, BoxError> {
        self.send(Request::get(path).body(Bytes::new())?).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, BoxError> {
        self.send(
            Request::post(path)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from(body.to_string()))?,
        )
        .await
    }

    /// A chat completion for `model` over this connection.
    pub async fn chat(
        &mut self,
        model: &str,
        stream: bool,
        max_tokens: u32,
    ) -> Result<Response, BoxError> {
        self.post_json(
            "/v1/chat/completions",
            &chat_body(model, stream, max_tokens),
        )
        .await
    }

    /// Whether the connection is closed for new requests (h1/h2 only; h3 reports on use).
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::H1(sender, _) => sender.is_closed(),
            Inner::H2(sender, _) => sender.is_closed(),
            Inner::H3 { connection, .. } => connection.close_reason().is_some(),
        }
    }
}

pub fn chat_body(model: &str, stream: bool, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "max_tokens": max_tokens,
    })
}

enum ResponseBody {
    Hyper(Incoming),
    H3(Box<H3Stream>),
}

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: ResponseBody,
}

impl Response {
    fn hyper(response: http::Response<Incoming>) -> Response {
        let (head, body) = response.into_parts();
        Response {
            status: head.status,
            headers: head.headers,
            body: ResponseBody::Hyper(body),
        }
    }

    /// The next non-empty piece of the body, `None` at its end, an error if the transport
    /// broke (reset stream, aborted connection).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        let next = async {
            loop {
                match &mut self.body {
                    ResponseBody::Hyper(body) => match body.frame().await {
                        None => return Ok(None),
                        Some(Err(error)) => return Err(BoxError::from(error)),
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data()
                                && !data.is_empty()
                            {
                                return Ok(Some(data));
                            }
                        }
                    },
                    ResponseBody::H3(stream) => match stream.recv_data().await? {
                        None => return Ok(None),
                        Some(mut data) => {
                            let data = data.copy_to_bytes(data.remaining());
                            if !data.is_empty() {
                                return Ok(Some(data));
                            }
                        }
                    },
                }
            }
        };
        tokio::time::timeout(LIMIT, next).await?
    }

    /// The rest of the body.
    pub async fn text(&mut self) -> Result<String, BoxError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8(all)?)
    }

    /// The whole body as JSON; panics on anything else.
    pub async fn json(mut self) -> serde_json::Value {
        let text = self.text().await.expect("response body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading what came back
// ---------------------------------------------------------------------------------------------

/// The `data:` payloads of an SSE stream, in order. Panics on a partial event at the end.
pub fn sse_payloads(text: &str) -> Vec<String> {
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "SSE stream ends mid-event: {text:?}"
    );
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

/// Asserts an OpenAI-style error body with `code`; returns it.
pub fn assert_openai_error(body: &serde_json::Value, code: &str) {
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(error["type"].is_string(), "no type: {body}");
    assert!(error.get("param").is_some(), "no param: {body}");
}

/// Sum of the samples of `name` whose labels include every `labels` pair, from Prometheus
/// text exposition.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
