//! The HTTP/3 front: QUIC (quinn) carrying HTTP/3 (h3).
//!
//! The only module that uses `h3` and `h3-quinn`, whose APIs move between releases.
//!
//! Per request stream: the client's DATA frames become the request body as they arrive; the
//! response goes out as headers, then one DATA frame per body frame the service yields, then
//! FIN. When the client resets the stream (seen on the next write) or the connection goes (seen
//! at once), the response body is dropped, which cancels everything upstream of it.

use std::{
    fmt,
    future::Future,
    io,
    io::IoSliceMut,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use h3::{error::Code, server::RequestStream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use quinn::{
    AsyncUdpSocket, UdpPoller,
    udp::{RecvMeta, Transmit},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch},
    task::{AbortHandle, JoinSet},
};
use tracing::{debug, warn};

use super::drain_started;
use crate::relay::{
    config::model::Limits,
    service::{Body, BodyError, ConnInfo, FrontProtocol, RelayService},
};

type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<h3_quinn::RecvStream, Bytes>;

/// How long a drained endpoint waits for its closing connections to tell their peers.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A QUIC endpoint serving `config` on an already bound UDP socket, and what frees the socket
/// again when the relay stops.
pub fn h3_endpoint(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
) -> io::Result<(quinn::Endpoint, UdpRelease)> {
    let tokio = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("no async runtime to drive the QUIC endpoint"))?;
    let runtime = Arc::new(FrontRuntime {
        inner: tokio,
        drivers: Mutex::new(Vec::new()),
    });
    let (released, on_release) = oneshot::channel();
    let socket = Arc::new(ReleasedSocket {
        inner: quinn::Runtime::wrap_udp_socket(&*runtime, socket)?,
        _released: Released(Some(released)),
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime.clone(),
    )?;
    let release = UdpRelease {
        endpoint: endpoint.clone(),
        runtime,
        on_release,
    };
    Ok((endpoint, release))
}

/// Closes an HTTP/3 endpoint for good and frees its UDP port.
///
/// quinn closes the socket only once every handle on it is gone: the endpoint's, its driver
/// task's, and every connection's (each connection's driver task holds the socket until the
/// connection is drained). Normally a closed connection drains within three PTOs. But
/// quinn-proto 0.11.19 leaves one kind of connection without a close timer: one created from a
/// client Initial that carries only a CONNECTION_CLOSE (a client that gave up on a handshake
/// whose first Initial was lost, as the DNS node's probe does against a relay that is
/// restarting). It is draining from its first packet, so `close` does nothing to it, and it
/// lingers until the idle timeout (a minute with the default timeouts), holding the port. A
/// stop therefore does not wait for quinn: it closes what is open, gives the peers
/// [`CLOSE_GRACE`] to hear about it, then ends the driver tasks itself.
pub struct UdpRelease {
    endpoint: quinn::Endpoint,
    runtime: Arc<FrontRuntime>,
    on_release: oneshot::Receiver<()>,
}

impl UdpRelease {
    /// Closes what is still open (nothing, after a completed drain), gives the peers
    /// `CLOSE_GRACE` to hear about it, ends the endpoint's driver tasks and waits at most
    /// `limit` for the socket to close. Returns whether it did.
    pub async fn release(self, limit: Duration) -> bool {
        let UdpRelease {
            endpoint,
            runtime,
            on_release,
        } = self;
        endpoint.close(quinn::VarInt::from_u32(0), b"relay stopping");
        if tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!(
                open = endpoint.open_connections(),
                "QUIC connections still draining; ending them"
            );
        }
        drop(endpoint);
        runtime.end_drivers();
        let released = tokio::time::timeout(limit, on_release).await.is_ok();
        if !released {
            warn!(
                ?limit,
                "the HTTP/3 UDP socket is still open; a restart on this address may fail"
            );
        }
        released
    }
}

/// quinn's tokio runtime, keeping a handle on every task quinn spawns for one endpoint (its
/// driver and one driver per connection), so that a stop can end them.
#[derive(Debug)]
struct FrontRuntime {
    inner: Arc<dyn quinn::Runtime>,
    drivers: Mutex<Vec<AbortHandle>>,
}

impl FrontRuntime {
    fn end_drivers(&self) {
        let drivers = std::mem::take(&mut *self.lock_drivers());
        for driver in drivers {
            driver.abort();
        }
    }

    fn lock_drivers(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        // A panic while holding the lock leaves a plain list of handles: still usable.
        self.drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl quinn::Runtime for FrontRuntime {
    fn new_timer(&self, deadline: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.inner.new_timer(deadline)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        let driver = tokio::spawn(future).abort_handle();
        let mut drivers = self.lock_drivers();
        // One handle per connection ever made: finished ones go as new ones come.
        drivers.retain(|driver| !driver.is_finished());
        drivers.push(driver);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        self.inner.wrap_udp_socket(socket)
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }
}

/// The endpoint's UDP socket, reporting when quinn drops the last handle on it.
#[derive(Debug)]
struct ReleasedSocket {
    // Field order matters: the socket closes before the release is reported.
    inner: Arc<dyn AsyncUdpSocket>,
    _released: Released,
}

#[derive(Debug)]
struct Released(Option<oneshot::Sender<()>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(released) = self.0.take() {
            let _ = released.send(());
        }
    }
}

impl AsyncUdpSocket for ReleasedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // The poller holds the inner socket too: it keeps the wrapper, so the release is
        // reported only when the pollers are gone as well.
        Box::pin(ReleasedPoller {
            inner: self.inner.clone().create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

struct ReleasedPoller {
    // Dropped first: it holds a handle on the inner socket.
    inner: Pin<Box<dyn UdpPoller>>,
    _socket: Arc<ReleasedSocket>,
}

impl fmt::Debug for ReleasedPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasedPoller").finish_non_exhaustive()
    }
}

impl UdpPoller for ReleasedPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_writable(cx)
    }
}

/// Serves HTTP/3 on `endpoint` until `drain` turns true; then refuses new connections, sends
/// GOAWAY on the open ones, lets their requests finish, closes them and returns.
///
/// Connections and their requests are tasks owned here (and by each connection): when this
/// future is dropped (a stop cutting the drain short), they are aborted with it, so no
/// `quinn::Connection` outlives the front and keeps its socket open.
pub async fn serve_h3(
    endpoint: quinn::Endpoint,
    service: Arc<dyn RelayService>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            () = drain_started(&mut drain) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(
                peer = %incoming.remote_address(),
                limit = limits.max_connections,
                "connection limit reached; refusing"
            );
            service.connection_refused("h3");
            incoming.refuse();
            continue;
        };
        connections.spawn(serve_connection(
            incoming,
            slot,
            service.clone(),
            limits,
            drain.clone(),
        ));
    }
    loop {
        tokio::select! {
            joined = connections.join_next() => if joined.is_none() { break },
            // Refused, not ignored: the client learns at once and goes elsewhere.
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => {
                    while connections.join_next().await.is_some() {}
                    break;
                }
            },
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

async fn serve_connection(
    incoming: quinn::Incoming,
    _slot: OwnedSemaphorePermit,
    service: Arc<dyn RelayService>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            debug!(%peer, %error, "QUIC connection failed");
            return;
        }
    };
    let connection = match tokio::time::timeout(limits.header_read_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            debug!(%peer, %error, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "QUIC handshake timed out");
            return;
        }
    };
    let header_bytes = u64::try_from(limits.max_request_header_bytes).unwrap_or(u64::MAX);
    let h3 = h3::server::builder()
        .max_field_section_size(header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
        .await;
    let mut h3 = match h3 {
        Ok(h3) => h3,
        Err(error) => {
            debug!(%peer, %error, "HTTP/3 connection set-up failed");
            return;
        }
    };

    // Owned here, so aborting this connection's task aborts its requests (and drops their
    // connection handles) too.
    let mut requests = JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(serve_request(resolver, service.clone(), connection.clone()));
                }
                Ok(None) => break,
                Err(error) => {
                    debug!(%peer, %error, "HTTP/3 connection ended");
                    break;
                }
            },
            () = drain_started(&mut drain), if !draining => {
                draining = true;
                // GOAWAY naming the last request taken: later ones are refused, and the
                // client knows it may retry them elsewhere.
                if let Err(error) = h3.shutdown(0).await {
                    debug!(%peer, %error, "HTTP/3 GOAWAY failed");
                    break;
                }
            },
            // Reaps finished requests; once draining, ends the loop when none is left.
            joined = requests.join_next(), if draining || !requests.is_empty() => {
                if joined.is_none() {
                    break;
                }
            },
        }
    }
    // Dropping `h3` closes the connection, so its requests finish first.
    while requests.join_next().await.is_some() {}
    if draining {
        // Let the client read the last bytes and close first: a CONNECTION_CLOSE sent right
        // after the final FIN allows the peer to drop data its application has not read yet.
        let _ = tokio::time::timeout(CLOSE_GRACE, connection.closed()).await;
    }
}

async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    service: Arc<dyn RelayService>,
    connection: quinn::Connection,
) {
    let peer = connection.remote_address();
    let (request, stream) = match resolver.resolve_request().await {
        Ok(resolved) => resolved,
        Err(error) => {
            debug!(%peer, %error, "HTTP/3 request rejected");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let request = request.map(|()| request_body(recv));
    let conn = ConnInfo {
        peer,
        protocol: FrontProtocol::Http3,
        secure: true,
        rtt: Some(connection.rtt()),
    };
    let response = tokio::select! {
        response = service.call(request, conn) => response,
        _ = connection.closed() => return,
    };
    let (mut parts, body) = response.into_parts();
    strip_connection_headers(&mut parts.headers);
    if let Err(error) = send
        .send_response(http::Response::from_parts(parts, ()))
        .await
    {
        debug!(%peer, %error, "HTTP/3 response headers not sent");
        return;
    }
    send_body(&mut send, body, &connection).await;
}

/// Forwards the body frame by frame; returns early (dropping the body) when the client is gone.
async fn send_body(send: &mut SendHalf, mut body: Body, connection: &quinn::Connection) {
    let peer = connection.remote_address();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = connection.closed() => return,
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                // The client must not mistake a cut-off body for a complete one.
                debug!(%peer, %error, "response body failed; resetting the stream");
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) if data.is_empty() => Ok(()),
            Ok(data) => send.send_data(data).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => match send.send_trailers(trailers).await {
                    Ok(()) => break,
                    Err(error) => Err(error),
                },
                Err(_unknown) => Ok(()),
            },
        };
        if let Err(error) = sent {
            debug!(%peer, %error, "client stopped the response stream");
            return;
        }
    }
    if let Err(error) = send.finish().await {
        debug!(%peer, %error, "HTTP/3 response not finished");
    }
}

/// The client's DATA frames (then trailers, if any) as a body, read only as it is consumed.
fn request_body(recv: RecvHalf) -> Body {
    let frames = futures_util::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        let frame = match recv.recv_data().await {
            Ok(Some(mut data)) => Ok(Frame::data(data.copy_to_bytes(data.remaining()))),
            Ok(None) => match recv.recv_trailers().await {
                Ok(Some(trailers)) => return Some((Ok(Frame::trailers(trailers)), None)),
                Ok(None) => return None,
                Err(error) => return Some((Err(BodyError::from(error)), None)),
            },
            Err(error) => return Some((Err(BodyError::from(error)), None)),
        };
        Some((frame, Some(recv)))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// HTTP/3 forbids connection-specific header fields (RFC 9114 §4.2); a response relayed from
/// an HTTP/1.1 backend may carry them.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::relay::front::testing::*;

    struct Server {
        addr: SocketAddr,
        drain: watch::Sender<bool>,
        serving: tokio::task::JoinHandle<()>,
        service: Arc<TestService>,
        certs: CertFixture,
    }

    fn start(limits: Limits) -> Server {
        let certs = CertFixture::new();
        let config = crate::relay::tls::quic_server_config(
            certs.store.clone(),
            &limits,
            Duration::from_secs(10),
        )
        .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (endpoint, _release) = h3_endpoint(socket, config).unwrap();
        let service = Arc::new(TestService::default());
        let (drain, draining) = watch::channel(false);
        let serving = tokio::spawn(serve_h3(endpoint, service.clone(), limits, draining));
        Server {
            addr,
            drain,
            serving,
            service,
            certs,
        }
    }

    struct H3Client {
        _endpoint: quinn::Endpoint,
        connection: quinn::Connection,
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    }

    impl H3Client {
        async fn connect(server: &Server) -> Result<H3Client, BoxError> {
            let endpoint = server.certs.quic_client();
            let connection = within(endpoint.connect(server.addr, "localhost")?).await??;
            let (mut driver, send) =
                h3::client::new(h3_quinn::Connection::new(connection.clone())).await?;
            let driver =
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            Ok(H3Client {
                _endpoint: endpoint,
                connection,
                send,
                driver,
            })
        }

        /// Sends the request with `body`; returns the response head and the stream to read
        /// the body from.
        async fn send(
            &mut self,
            method: http::Method,
            path: &str,
            body: &[u8],
        ) -> Result<
            (
                http::Response<()>,
                h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
            ),
            BoxError,
        > {
            let request = http::Request::builder()
                .method(method)
                .uri(format!("https://localhost{path}"))
                .body(())?;
            let mut stream = within(self.send.send_request(request)).await??;
            // Several frames, so the server sees a body that arrives in pieces.
            for piece in body.chunks(64 << 10) {
                stream.send_data(Bytes::copy_from_slice(piece)).await?;
            }
            stream.finish().await?;
            let response = within(stream.recv_response()).await??;
            Ok((response, stream))
        }
    }

    impl Drop for H3Client {
        fn drop(&mut self) {
            self.driver.abort();
        }
    }

    async fn next_chunk(
        stream: &mut h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    ) -> Option<String> {
        let mut data = within(stream.recv_data()).await.unwrap().unwrap()?;
        let bytes = data.copy_to_bytes(data.remaining());
        Some(String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn read_rest(
        stream: &mut h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    ) -> String {
        let mut all = String::new();
        while let Some(chunk) = next_chunk(stream).await {
            all.push_str(&chunk);
        }
        all
    }

    #[tokio::test]
    async fn serves_requests_with_their_bodies() {
        let server = start(test_limits());
        let mut client = H3Client::connect(&server).await.unwrap();
        let (response, mut stream) = client
            .send(http::Method::POST, "/echo", &[b'x'; 1234])
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(read_rest(&mut stream).await, "POST /echo h3 secure 1234");

        let body = pattern(1 << 20);
        let (_, mut stream) = client
            .send(http::Method::POST, "/digest", &body)
            .await
            .unwrap();
        assert_eq!(read_rest(&mut stream).await, digest(&body));
        assert!(client.connection.rtt() > Duration::ZERO);
    }

    #[tokio::test]
    async fn streamed_chunks_arrive_one_by_one() {
        let server = start(test_limits());
        let mut client = H3Client::connect(&server).await.unwrap();
        let (chunks, _dropped) = server.service.next_stream();
        let (_, mut stream) = client
            .send(http::Method::GET, "/stream", b"")
            .await
            .unwrap();
        for chunk in ["data: one\n\n", "data: two\n\n"] {
            chunks
                .send(Bytes::from_static(chunk.as_bytes()))
                .await
                .unwrap();
            assert_eq!(next_chunk(&mut stream).await.as_deref(), Some(chunk));
        }
        drop(chunks);
        assert_eq!(next_chunk(&mut stream).await, None);
    }

    #[tokio::test]
    async fn client_going_away_drops_the_response_body() {
        let server = start(test_limits());
        let mut client = H3Client::connect(&server).await.unwrap();
        let (chunks, dropped) = server.service.next_stream();
        let (_, mut stream) = client
            .send(http::Method::GET, "/stream", b"")
            .await
            .unwrap();
        chunks.send(Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(next_chunk(&mut stream).await.as_deref(), Some("one"));
        client
            .connection
            .close(quinn::VarInt::from_u32(0x100), b"bye");
        within(dropped).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused() {
        let server = start(Limits {
            max_connections: 1,
            ..test_limits()
        });
        let mut first = H3Client::connect(&server).await.unwrap();
        let (response, _) = first.send(http::Method::GET, "/echo", b"").await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(H3Client::connect(&server).await.is_err());
    }

    /// A client that gives up on a handshake whose first Initial was lost sends its
    /// CONNECTION_CLOSE in an Initial of its own, and quinn-proto makes that a connection which
    /// is draining from birth with no close timer: only the idle timeout ends it. The DNS
    /// node's probe does exactly this against a relay that is restarting. A stop must free the
    /// port at once all the same, so the relay can start again on it.
    #[tokio::test]
    async fn stop_frees_the_port_despite_a_connection_born_closed() {
        let certs = CertFixture::new();
        // The port of a relay that is down: the client's first Initial is lost here.
        let down = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = down.local_addr().unwrap();
        down.set_nonblocking(true).unwrap();
        let down = tokio::net::UdpSocket::from_std(down).unwrap();
        let client = certs.quic_client();
        let connecting = client.connect(addr, "localhost").unwrap();
        let mut initial = [0u8; 2048];
        within(down.recv_from(&mut initial)).await.unwrap().unwrap();
        drop(down);

        // The relay starts again on the port; then the client gives up.
        let limits = test_limits();
        let config = crate::relay::tls::quic_server_config(
            certs.store.clone(),
            &limits,
            Duration::from_secs(30),
        )
        .unwrap();
        let (endpoint, release) =
            h3_endpoint(std::net::UdpSocket::bind(addr).unwrap(), config).unwrap();
        let observer = endpoint.clone();
        let (drain, draining) = watch::channel(false);
        let serving = tokio::spawn(serve_h3(
            endpoint,
            Arc::new(TestService::default()),
            limits,
            draining,
        ));
        drop(connecting);
        within(async {
            while observer.open_connections() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the client's close reached the relay");

        drain.send(true).unwrap();
        within(serving).await.unwrap().unwrap();
        assert_eq!(
            observer.open_connections(),
            1,
            "the connection born closed is still there after the drain"
        );
        drop(observer);
        assert!(
            within(release.release(Duration::from_secs(5)))
                .await
                .unwrap(),
            "the UDP socket was not closed"
        );
        std::net::UdpSocket::bind(addr).expect("the port is free again");
        drop(client);
    }

    #[tokio::test]
    async fn drain_finishes_streams_and_refuses_new_connections() {
        let server = start(test_limits());
        let mut client = H3Client::connect(&server).await.unwrap();
        let (chunks, _dropped) = server.service.next_stream();
        let (_, mut stream) = client
            .send(http::Method::GET, "/stream", b"")
            .await
            .unwrap();
        chunks.send(Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(next_chunk(&mut stream).await.as_deref(), Some("one"));

        server.drain.send(true).unwrap();
        assert!(
            H3Client::connect(&server).await.is_err(),
            "a connection made after the drain was served"
        );
        // The in-flight stream goes on to its end.
        chunks.send(Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(next_chunk(&mut stream).await.as_deref(), Some("two"));
        assert!(
            !server.serving.is_finished(),
            "returned with a stream in flight"
        );
        drop(chunks);
        assert_eq!(next_chunk(&mut stream).await, None);

        within(server.serving).await.unwrap().unwrap();
        // The drained connection was closed without error once its stream ended.
        let closed = within(client.connection.closed()).await.unwrap();
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close) if close.error_code == quinn::VarInt::from_u32(0x100)),
            "{closed:?}"
        );
    }
}
