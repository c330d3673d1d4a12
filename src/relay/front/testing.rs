//! Test kit for the fronts: a service that reports what it saw and streams on command,
//! certificates made on the spot, and clients for h1, h2 and h3.

use std::{
    collections::VecDeque,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

pub(crate) use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use crate::relay::{
    config::model::{Limits, TlsFiles},
    service::{Body, ConnInfo, RelayService, ResponseFuture, full_body},
    tls::{CertStore, self_signed},
};

pub(crate) const H1: &[u8] = b"http/1.1";
pub(crate) const H2: &[u8] = b"h2";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn test_limits() -> Limits {
    Limits {
        max_request_body_bytes: 4 << 20,
        max_request_header_bytes: 16 << 10,
        max_response_header_bytes: 16 << 10,
        max_connections: 64,
        max_streams_per_connection: 16,
        header_read_timeout: Duration::from_millis(300),
    }
}

/// Fails the test instead of hanging it.
pub(crate) async fn within<F: Future>(future: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), future).await
}

/// Routes: `/echo` answers `METHOD PATH PROTOCOL secure|plain BODY_LEN`; `/digest` answers
/// [`digest`] of the body; `/stream` streams the chunks the test sends through the channel of
/// the next [`TestService::next_stream`], and reports when its body is dropped.
#[derive(Default)]
pub(crate) struct TestService {
    streams: Mutex<VecDeque<(mpsc::Receiver<Bytes>, oneshot::Sender<()>)>>,
}

impl TestService {
    /// The chunk sender of the next `/stream` request (close it to end the body) and a
    /// receiver that completes when the response body is dropped.
    pub(crate) fn next_stream(&self) -> (mpsc::Sender<Bytes>, oneshot::Receiver<()>) {
        let (chunks_tx, chunks_rx) = mpsc::channel(1);
        let (dropped_tx, dropped_rx) = oneshot::channel();
        self.streams
            .lock()
            .unwrap()
            .push_back((chunks_rx, dropped_tx));
        (chunks_tx, dropped_rx)
    }
}

struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl RelayService for TestService {
    fn call(&self, request: http::Request<Body>, conn: ConnInfo) -> ResponseFuture {
        let stream = (request.uri().path() == "/stream")
            .then(|| self.streams.lock().unwrap().pop_front())
            .flatten();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let received = body.collect().await.map(|b| b.to_bytes());
            let Ok(received) = received else {
                return http::Response::builder()
                    .status(400)
                    .body(full_body("body failed"))
                    .unwrap();
            };
            let body = match parts.uri.path() {
                "/digest" => full_body(digest(&received)),
                "/stream" => match stream {
                    Some((chunks, dropped)) => streamed(chunks, DropSignal(Some(dropped))),
                    None => full_body("no stream queued"),
                },
                _ => full_body(format!(
                    "{} {} {} {} {}",
                    parts.method,
                    parts.uri.path(),
                    conn.protocol.as_str(),
                    if conn.secure { "secure" } else { "plain" },
                    received.len()
                )),
            };
            http::Response::builder()
                .header("content-type", "text/plain")
                .body(body)
                .unwrap()
        })
    }
}

fn streamed(chunks: mpsc::Receiver<Bytes>, dropped: DropSignal) -> Body {
    let frames = futures_util::stream::unfold((chunks, dropped), |(mut chunks, dropped)| async {
        let chunk = chunks.recv().await?;
        Some((
            Ok::<_, crate::relay::service::BodyError>(Frame::data(chunk)),
            (chunks, dropped),
        ))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Bytes whose corruption (a lost, repeated or moved block) changes [`digest`].
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

/// Length and FNV-1a of the bytes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{} {hash:016x}", bytes.len())
}

pub(crate) fn get(uri: &str) -> http::Request<Body> {
    http::Request::get(uri)
        .body(crate::relay::service::empty_body())
        .unwrap()
}

pub(crate) fn post(uri: &str, body: Vec<u8>) -> http::Request<Body> {
    http::Request::post(uri).body(full_body(body)).unwrap()
}

pub(crate) async fn read_all<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = within(body.collect()).await.unwrap().unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The next data frame, or `None` at the end of the body.
pub(crate) async fn next_data<B>(body: &mut B) -> Option<String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        let frame = within(body.frame()).await.unwrap()?.unwrap();
        // HTTP/2 may end a stream with an empty DATA frame; it carries nothing.
        match frame.into_data() {
            Ok(data) if !data.is_empty() => return Some(String::from_utf8(data.to_vec()).unwrap()),
            _ => {}
        }
    }
}

/// Each chunk must reach the client before the next one exists.
pub(crate) async fn expect_chunks_one_by_one<B>(mut body: B, chunks: mpsc::Sender<Bytes>)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    for chunk in ["data: one\n\n", "data: two\n\n", "data: three\n\n"] {
        chunks
            .send(Bytes::from_static(chunk.as_bytes()))
            .await
            .unwrap();
        assert_eq!(next_data(&mut body).await.as_deref(), Some(chunk));
    }
    drop(chunks);
    assert_eq!(next_data(&mut body).await, None);
}

/// A certificate pair on disk, served by a [`CertStore`], and a second pair to rotate to.
pub(crate) struct CertFixture {
    dir: tempfile::TempDir,
    pub(crate) files: TlsFiles,
    pub(crate) store: Arc<CertStore>,
    pub(crate) cert_der: Vec<u8>,
    next: (String, String),
    trusted: Vec<CertificateDer<'static>>,
}

impl CertFixture {
    pub(crate) fn new() -> CertFixture {
        let names = ["localhost", "127.0.0.1"];
        let (cert, key) = self_signed(&names).unwrap();
        let next = self_signed(&names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let store = Arc::new(CertStore::load(files.clone()).unwrap());
        let trusted = vec![der(&cert), der(&next.0)];
        CertFixture {
            dir,
            files,
            store,
            cert_der: der(&cert).to_vec(),
            next,
            trusted,
        }
    }

    fn replace(&self, path: &std::path::Path, contents: &str) {
        let staged = self.dir.path().join("staged.tmp");
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    /// Renames the second pair into place; returns its certificate.
    pub(crate) fn replace_with_new_pair(&self) -> Vec<u8> {
        self.replace(&self.files.key, &self.next.1);
        self.replace(&self.files.cert, &self.next.0);
        der(&self.next.0).to_vec()
    }

    pub(crate) fn replace_cert_with(&self, contents: &str) {
        self.replace(&self.files.cert, contents);
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.trusted {
            roots.add(cert.clone()).unwrap();
        }
        roots
    }

    /// A client trusting both pairs, offering `alpn`.
    pub(crate) fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// A QUIC client endpoint on loopback trusting both pairs, offering `h3`.
    pub(crate) fn quic_client(&self) -> quinn::Endpoint {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

pub(crate) async fn tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_stream(addr, config).await.unwrap()
}

async fn try_tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = within(tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await??;
    Ok(tls)
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Body>),
    Http2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One client connection, h1 or h2 by ALPN, over TLS or plain TCP.
pub(crate) struct HttpClient {
    sender: Sender,
    /// The leaf certificate the server presented (empty on plain TCP).
    pub(crate) server_cert: Vec<u8>,
    driver: tokio::task::JoinHandle<()>,
}

pub(crate) type TlsClient = HttpClient;

impl Drop for HttpClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpClient {
    pub(crate) async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        alpn: &[u8],
    ) -> Result<HttpClient, BoxError> {
        let tls = try_tls_stream(addr, config).await?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .unwrap_or_default();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        HttpClient::handshake(tls, alpn == H2, server_cert).await
    }

    pub(crate) async fn connect_plain(addr: SocketAddr, h2: bool) -> Result<HttpClient, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        HttpClient::handshake(tcp, h2, Vec::new()).await
    }

    async fn handshake<I>(io: I, h2: bool, server_cert: Vec<u8>) -> Result<HttpClient, BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let (sender, driver) = if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http2(sender), driver)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http1(sender), driver)
        };
        Ok(HttpClient {
            sender,
            server_cert,
            driver,
        })
    }

    pub(crate) async fn send(
        &mut self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                // Origin form and a Host header, as HTTP/1.1 clients send them.
                let uri = request.uri().clone();
                if let Some(authority) = uri.authority() {
                    let host = http::HeaderValue::from_str(authority.as_str())?;
                    request.headers_mut().insert(http::header::HOST, host);
                }
                if let Some(path) = uri.path_and_query() {
                    *request.uri_mut() = path.as_str().parse()?;
                }
                sender.ready().await?;
                within(sender.send_request(request)).await??
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                within(sender.send_request(request)).await??
            }
        };
        Ok(response)
    }
}
