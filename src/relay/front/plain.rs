//! The plain-HTTP front: HTTP/1.1, and HTTP/2 with prior knowledge (h2c), without TLS.
//!
//! Meant for loopback use and health probes (`plain_listen`). Without ALPN the protocol is
//! told from the first bytes: the HTTP/2 connection preface, or anything else for HTTP/1.1.
//! Those bytes must arrive within the header-read timeout, like a request head.

use std::{io, sync::Arc};

use bytes::{Bytes, BytesMut};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tracing::debug;

use super::{HttpConnections, HttpVersion, Rewound, accept_until_drain};
use crate::relay::{config::model::Limits, service::RelayService};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves plain HTTP on `listener` until `drain` turns true, then finishes in-flight requests
/// and returns.
pub async fn serve_plain(
    listener: TcpListener,
    service: Arc<dyn RelayService>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let http = Arc::new(HttpConnections::new(service, &limits, None, false));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();

    while let Some((mut tcp, peer)) = accept_until_drain(&listener, &mut drain).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = limits.max_connections, "connection limit reached; closing");
            http.service().connection_refused("plain");
            continue;
        };
        let watcher = graceful.watcher();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (version, prefix) =
                match tokio::time::timeout(limits.header_read_timeout, sniff(&mut tcp)).await {
                    Ok(Ok(sniffed)) => sniffed,
                    Ok(Err(error)) => {
                        debug!(%peer, %error, "connection closed before a request");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "no request in time; closing");
                        return;
                    }
                };
            let io = Rewound { prefix, inner: tcp };
            http.serve(io, version, peer, None, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reads until the bytes either are the HTTP/2 preface or cannot become it; returns them to
/// be replayed.
async fn sniff(tcp: &mut TcpStream) -> io::Result<(HttpVersion, Bytes)> {
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if seen.len() >= H2_PREFACE.len() {
            let version = if seen.starts_with(H2_PREFACE) {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            };
            return Ok((version, seen.freeze()));
        }
        if !H2_PREFACE.starts_with(&seen) {
            return Ok((HttpVersion::Http1, seen.freeze()));
        }
        if tcp.read_buf(&mut seen).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
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
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(TestService::default());
        let (drain, draining) = watch::channel(false);
        let serving = tokio::spawn(serve_plain(
            listener,
            service.clone(),
            test_limits(),
            draining,
        ));
        Server {
            addr,
            drain,
            serving,
            service,
        }
    }

    #[tokio::test]
    async fn serves_h1_and_h2c_prior_knowledge() {
        let server = start().await;
        for (h2, protocol) in [(false, "h1"), (true, "h2")] {
            let mut conn = HttpClient::connect_plain(server.addr, h2).await.unwrap();
            let body = pattern(100_000);
            let response = conn
                .send(post("http://localhost/digest", body.clone()))
                .await
                .unwrap();
            assert!(response.headers().get(http::header::ALT_SVC).is_none());
            assert_eq!(read_all(response.into_body()).await, digest(&body));
            let response = conn.send(get("http://localhost/echo")).await.unwrap();
            assert_eq!(
                read_all(response.into_body()).await,
                format!("GET /echo {protocol} plain 0")
            );
        }
    }

    #[tokio::test]
    async fn streams_chunk_by_chunk() {
        let server = start().await;
        for h2 in [false, true] {
            let mut conn = HttpClient::connect_plain(server.addr, h2).await.unwrap();
            let (chunks, _dropped) = server.service.next_stream();
            let response = conn.send(get("http://localhost/stream")).await.unwrap();
            expect_chunks_one_by_one(response.into_body(), chunks).await;
        }
    }

    #[tokio::test]
    async fn h1_client_disconnect_drops_the_response_body() {
        let server = start().await;
        let (chunks, dropped) = server.service.next_stream();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        chunks.send(Bytes::from_static(b"one")).await.unwrap();
        let mut head = [0; 512];
        let n = within(tcp.read(&mut head)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        drop(tcp);
        within(dropped).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_partial_preface_or_head_is_cut_off() {
        let server = start().await;
        for partial in [&b"PRI * HTTP/2"[..], b"GET /echo HTTP/1.1\r\nHost: x\r\n"] {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(partial).await.unwrap();
            let mut rest = Vec::new();
            let _ = within(tcp.read_to_end(&mut rest)).await.unwrap();
            assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
        }
    }

    #[tokio::test]
    async fn drain_returns_once_streams_finish() {
        let server = start().await;
        let mut conn = HttpClient::connect_plain(server.addr, false).await.unwrap();
        let (chunks, _dropped) = server.service.next_stream();
        let response = conn.send(get("http://localhost/stream")).await.unwrap();
        let mut body = response.into_body();
        server.drain.send(true).unwrap();
        let late = async {
            let mut conn = HttpClient::connect_plain(server.addr, false).await?;
            conn.send(get("http://localhost/echo")).await
        };
        assert!(late.await.is_err(), "a request after the drain was served");
        chunks.send(Bytes::from_static(b"last")).await.unwrap();
        assert!(
            !server.serving.is_finished(),
            "returned with a stream in flight"
        );
        drop(chunks);
        assert_eq!(next_data(&mut body).await.as_deref(), Some("last"));
        assert_eq!(next_data(&mut body).await, None);
        within(server.serving).await.unwrap().unwrap();
    }
}
