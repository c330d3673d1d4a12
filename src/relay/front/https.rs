//! The HTTPS front: TLS on TCP, then HTTP/2 or HTTP/1.1 as ALPN chose.
//!
//! The TLS handshake must finish within the header-read timeout (a handshake that never
//! completes is the TLS form of slowloris). Every response advertises HTTP/3 with `Alt-Svc`
//! when the relay serves it.

use std::sync::Arc;

use http::HeaderValue;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{HttpConnections, HttpVersion, accept_until_drain};
use crate::relay::{config::model::Limits, service::RelayService};

/// Serves HTTPS on `listener` until `drain` turns true, then finishes in-flight requests and
/// returns.
///
/// `alt_svc` is the `Alt-Svc` value added to every response, e.g. `h3=":443"; ma=86400`.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn RelayService>,
    limits: Limits,
    alt_svc: Option<HeaderValue>,
    mut drain: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let http = Arc::new(HttpConnections::new(service, &limits, alt_svc, true));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();

    while let Some((tcp, peer)) = accept_until_drain(&listener, &mut drain).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = limits.max_connections, "connection limit reached; closing");
            http.service().connection_refused("https");
            continue;
        };
        // Taken before the handshake, so a drain that starts during it still reaches this
        // connection.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // A client sends its ClientHello right after the TCP handshake, and its Finished
            // one round trip after our reply: accept → handshake done ≈ one RTT (plus a
            // sub-millisecond of crypto), the client's network RTT for the region report.
            let accepted = std::time::Instant::now();
            let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let version = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => HttpVersion::Http2,
                _ => HttpVersion::Http1,
            };
            let rtt = accepted.elapsed();
            http.serve(tls, version, peer, Some(rtt), watcher).await;
        });
    }
    // Refuse from now on, rather than leave new connections waiting in the backlog.
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::relay::front::testing::*;

    struct Server {
        addr: std::net::SocketAddr,
        drain: watch::Sender<bool>,
        serving: tokio::task::JoinHandle<()>,
        service: Arc<TestService>,
        certs: CertFixture,
    }

    async fn start(limits: Limits) -> Server {
        let certs = CertFixture::new();
        let tls = crate::relay::tls::tcp_server_config(certs.store.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(TestService::default());
        let (drain, draining) = watch::channel(false);
        let serving = tokio::spawn(serve_https(
            listener,
            tls,
            service.clone(),
            limits,
            Some(HeaderValue::from_static(ALT_SVC)),
            draining,
        ));
        Server {
            addr,
            drain,
            serving,
            service,
            certs,
        }
    }

    const ALT_SVC: &str = "h3=\":443\"; ma=86400";

    #[tokio::test]
    async fn serves_h1_and_h2_by_alpn_with_alt_svc() {
        let server = start(test_limits()).await;
        for (alpn, protocol) in [(H1, "h1"), (H2, "h2")] {
            let client = server.certs.client_config(alpn);
            let mut conn = TlsClient::connect(server.addr, client, alpn).await.unwrap();
            let response = conn
                .send(post("https://localhost/echo", vec![b'x'; 1234]))
                .await
                .unwrap();
            assert_eq!(response.headers()[http::header::ALT_SVC], ALT_SVC);
            assert_eq!(
                read_all(response.into_body()).await,
                format!("POST /echo {protocol} secure 1234")
            );
        }
    }

    #[tokio::test]
    async fn request_bodies_arrive_intact() {
        let server = start(test_limits()).await;
        for alpn in [H1, H2] {
            let client = server.certs.client_config(alpn);
            let mut conn = TlsClient::connect(server.addr, client, alpn).await.unwrap();
            let body = pattern(1 << 20);
            let response = conn
                .send(post("https://localhost/digest", body.clone()))
                .await
                .unwrap();
            assert_eq!(read_all(response.into_body()).await, digest(&body));
        }
    }

    #[tokio::test]
    async fn streamed_chunks_arrive_one_by_one() {
        let server = start(test_limits()).await;
        for alpn in [H1, H2] {
            let client = server.certs.client_config(alpn);
            let mut conn = TlsClient::connect(server.addr, client, alpn).await.unwrap();
            let (chunks, _dropped) = server.service.next_stream();
            let response = conn.send(get("https://localhost/stream")).await.unwrap();
            expect_chunks_one_by_one(response.into_body(), chunks).await;
        }
    }

    #[tokio::test]
    async fn client_disconnect_drops_the_response_body() {
        let server = start(test_limits()).await;
        let client = server.certs.client_config(H2);
        let mut conn = TlsClient::connect(server.addr, client, H2).await.unwrap();
        let (chunks, dropped) = server.service.next_stream();
        let response = conn.send(get("https://localhost/stream")).await.unwrap();
        chunks.send(Bytes::from_static(b"one")).await.unwrap();
        let mut body = response.into_body();
        assert_eq!(next_data(&mut body).await.unwrap(), "one");
        drop(body);
        drop(conn);
        within(dropped).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn reloaded_certificate_serves_new_handshakes_only() {
        let server = start(test_limits()).await;
        let store = server.certs.store.clone();
        let (stop, stopped) = watch::channel(false);
        let _watching = store.clone().watch(stopped);

        let mut before = TlsClient::connect(server.addr, server.certs.client_config(H2), H2)
            .await
            .unwrap();
        assert_eq!(before.server_cert, server.certs.cert_der);

        let next = server.certs.replace_with_new_pair();
        let mut reloads = store.subscribe();
        within(reloads.wait_for(|r| r.generation == 2))
            .await
            .unwrap()
            .unwrap();
        let after = TlsClient::connect(server.addr, server.certs.client_config(H2), H2)
            .await
            .unwrap();
        assert_eq!(after.server_cert, next);
        // The connection made before the reload goes on with the old certificate.
        let response = before.send(get("https://localhost/echo")).await.unwrap();
        assert_eq!(
            read_all(response.into_body()).await,
            "GET /echo h2 secure 0"
        );

        let rejected = reloads.borrow().rejected;
        server.certs.replace_cert_with("garbage");
        within(reloads.wait_for(|r| r.rejected > rejected))
            .await
            .unwrap()
            .unwrap();
        let still = TlsClient::connect(server.addr, server.certs.client_config(H2), H2)
            .await
            .unwrap();
        assert_eq!(still.server_cert, next);
        stop.send(true).unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let server = start(Limits {
            max_connections: 2,
            ..test_limits()
        })
        .await;
        let connect = || TlsClient::connect(server.addr, server.certs.client_config(H2), H2);
        let mut first = connect().await.unwrap();
        let mut second = connect().await.unwrap();
        // Served: the two slots are taken by live connections.
        for conn in [&mut first, &mut second] {
            let response = conn.send(get("https://localhost/echo")).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        assert!(connect().await.is_err(), "a third connection got through");

        drop(first);
        // The slot frees once the server saw the close; until then attempts are refused.
        within(async {
            loop {
                if connect().await.is_ok() {
                    break;
                }
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn slow_request_head_is_cut_off() {
        let server = start(test_limits()).await;
        let mut tls = tls_stream(server.addr, server.certs.client_config(H1)).await;
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        let mut rest = Vec::new();
        // Closed by the server (EOF or reset, possibly after a 408) within the test's time.
        let _ = within(tls.read_to_end(&mut rest)).await.unwrap();
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    }

    #[tokio::test]
    async fn silent_h2_connection_is_cut_off() {
        let server = start(test_limits()).await;
        let mut tls = tls_stream(server.addr, server.certs.client_config(H2)).await;
        let mut rest = Vec::new();
        // The server's SETTINGS come, then the close: no request arrived in time.
        let _ = within(tls.read_to_end(&mut rest)).await.unwrap();
    }

    #[tokio::test]
    async fn stalled_tls_handshake_is_cut_off() {
        let server = start(test_limits()).await;
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let mut rest = Vec::new();
        let _ = within(tcp.read_to_end(&mut rest)).await.unwrap();
    }

    #[tokio::test]
    async fn drain_finishes_streams_and_refuses_new_connections() {
        let server = start(test_limits()).await;
        let mut conn = TlsClient::connect(server.addr, server.certs.client_config(H2), H2)
            .await
            .unwrap();
        let (chunks, _dropped) = server.service.next_stream();
        let response = conn.send(get("https://localhost/stream")).await.unwrap();
        let mut body = response.into_body();
        chunks.send(Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap(), "one");

        server.drain.send(true).unwrap();
        assert!(
            TlsClient::connect(server.addr, server.certs.client_config(H2), H2)
                .await
                .is_err(),
            "a connection made after the drain was served"
        );
        // The stream in flight is not cut: it goes on to its end.
        chunks.send(Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap(), "two");
        assert!(
            !server.serving.is_finished(),
            "returned with a stream in flight"
        );
        drop(chunks);
        assert_eq!(next_data(&mut body).await, None);
        within(server.serving).await.unwrap().unwrap();
        // And no new request is taken on the drained connection.
        assert!(conn.send(get("https://localhost/echo")).await.is_err());
    }

    #[tokio::test]
    async fn drain_of_an_idle_h1_connection_closes_it() {
        let server = start(test_limits()).await;
        let mut conn = TlsClient::connect(server.addr, server.certs.client_config(H1), H1)
            .await
            .unwrap();
        let response = conn.send(get("https://localhost/echo")).await.unwrap();
        assert_eq!(
            read_all(response.into_body()).await,
            "GET /echo h1 secure 0"
        );
        server.drain.send(true).unwrap();
        within(server.serving).await.unwrap().unwrap();
    }
}
