//! Resource limits through the real path: each test drives one limit of docs/limits.md past its
//! bound on real sockets (TLS where the surface is TLS) and checks the documented decision —
//! refused, closed, 413, counted — and, where the limit is a slot, that the slot frees again.
//!
//! Limits that already have a real-path test elsewhere are not repeated here; docs/limits.md
//! names the test of every limit. Timeouts are configured short and waited for with a bounded
//! deadline; nothing here measures speed.

mod common;
mod relay_support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{Scratch, TestServer, eventually_true, raw_query};
use hickory_proto::rr::RecordType;
use meridian::{
    health::{
        ListenerCounters, ListenerLimits, ReportLedger, decode,
        frame::{HEADER_LEN, MAX_FRAME_BYTES, encode_report},
        listener_endpoint,
        pki::{
            Ca, PemPair, Validity, client_config_with_identity, create_ca, issue_dns_node_cert,
            issue_relay_cert,
        },
        run_listener,
    },
    relay::{
        config::parse_relay_config,
        pool::Pool,
        report::{self, REPORT_VERSION, RegionReport, RegionState},
        stats::{Rates, RequestStats},
    },
};
use relay_support::{LIMIT, MODEL, TestRelay, backend, sim, within};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

/// How long a bounded poll goes on before the test fails.
const DEADLINE: Duration = LIMIT;

// ---------------------------------------------------------------------------------------------
// DNS over TCP
// ---------------------------------------------------------------------------------------------

fn framed(message: &[u8]) -> Vec<u8> {
    let mut bytes = (message.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(message);
    bytes
}

/// The next length-prefixed message, or `None` once the server closed (or reset) the stream.
async fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let read = async {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.ok()?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut message).await.ok()?;
        Some(message)
    };
    within("a DNS message or the close", read).await
}

/// Sends one query on `stream` and returns whether it was answered (with the same id).
async fn answered(stream: &mut TcpStream, id: u16) -> bool {
    if stream
        .write_all(&framed(&raw_query(
            id,
            "www.example.test.",
            RecordType::A,
            Some(1232),
        )))
        .await
        .is_err()
    {
        return false;
    }
    read_framed(stream)
        .await
        .is_some_and(|response| response[..2] == id.to_be_bytes())
}

/// A copy of the bundled example with `[server]` keys replaced.
fn dns_config(replacements: &[(&str, &str)]) -> Scratch {
    let scratch = Scratch::new();
    let mut config = scratch.read("zones/meridian.toml");
    for (from, to) in replacements {
        assert!(config.contains(from), "the bundled config has {from}");
        config = config.replace(from, to);
    }
    scratch.replace("zones/meridian.toml", &config);
    scratch
}

#[tokio::test]
async fn dns_tcp_connections_over_the_cap_are_closed_counted_and_a_slot_frees() {
    let scratch = dns_config(&[("max_tcp_connections = 1024", "max_tcp_connections = 2")]);
    let server = TestServer::start(&scratch.config()).await;

    // Two connections hold the two slots: each got an answer, so each has its own task.
    let mut held = Vec::new();
    for id in [1, 2] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(answered(&mut stream, id).await, "connection {id} served");
        held.push(stream);
    }

    // The third is accepted by the kernel and closed by the server without an answer.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        !answered(&mut third, 3).await,
        "a third connection was served"
    );
    assert!(
        server
            .metrics
            .encode()
            .contains("meridian_dns_tcp_rejected_total 1\n"),
        "{}",
        server.metrics.encode()
    );
    // The held connections are untouched.
    assert!(answered(&mut held[0], 4).await);

    // Closing one frees its slot once the server saw the close.
    held.pop();
    let mut id = 100;
    eventually_true(
        "a new connection is served after one closed",
        DEADLINE,
        || {
            id += 1;
            async move {
                match TcpStream::connect(server.addr).await {
                    Ok(mut stream) => answered(&mut stream, id).await,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    server.stop().await;
}

/// Pipelined queries are read one bounded chunk at a time and answered in order; the rest wait
/// in the socket, not in the server.
#[tokio::test]
async fn dns_tcp_pipelined_queries_are_answered_in_order() {
    let server = TestServer::start(&common::bundled_config()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    const QUERIES: u16 = 500;
    let mut batch = Vec::new();
    for id in 0..QUERIES {
        batch.extend(framed(&raw_query(
            id,
            "www.example.test.",
            RecordType::A,
            Some(1232),
        )));
    }
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&batch).await.unwrap();
    };
    let read = async {
        let mut ids = Vec::new();
        for _ in 0..QUERIES {
            let mut length = [0u8; 2];
            reader.read_exact(&mut length).await.unwrap();
            let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
            reader.read_exact(&mut message).await.unwrap();
            ids.push(u16::from_be_bytes([message[0], message[1]]));
        }
        ids
    };
    let ((), ids) = within("500 pipelined answers", async { tokio::join!(write, read) }).await;
    assert_eq!(ids, (0..QUERIES).collect::<Vec<_>>());
    server.stop().await;
}

/// A pipelining client that never reads its answers: the server's one response in flight
/// cannot be written, and after `tcp_idle_timeout_ms` the connection is closed (the writer
/// sees it reset), while other clients go on being served.
#[tokio::test]
async fn dns_tcp_client_that_stops_reading_is_cut_off() {
    let scratch = dns_config(&[("tcp_idle_timeout_ms = 10000", "tcp_idle_timeout_ms = 300")]);
    let server = TestServer::start(&scratch.config()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    // big.example.test TXT is about 1.6 kB over TCP: the answers fill both socket buffers long
    // before the queries stop coming.
    let query = framed(&raw_query(
        7,
        "big.example.test.",
        RecordType::TXT,
        Some(1232),
    ));
    let chunk: Vec<u8> = query.repeat(1000);
    let (_reader, mut writer) = stream.into_split();
    let writing = async {
        loop {
            if let Err(error) = writer.write_all(&chunk).await {
                return error;
            }
        }
    };
    let error = within("the server cuts off a client that does not read", writing).await;
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error:?}"
    );
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    assert!(answered(&mut fresh, 9).await);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Relay fronts
// ---------------------------------------------------------------------------------------------

fn relay_tls(relay: &TestRelay, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(relay.cert_der.clone()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn relay_tls_stream(
    relay: &TestRelay,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(relay.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(relay_tls(relay, alpn));
    within(
        "TLS handshake with the relay",
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
}

/// Everything the server sends until it closes (or resets) the connection.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The status code of an HTTP/1.1 response head read from `stream`.
/// The relay admin listener's `/metrics` text (one short-lived connection).
async fn relay_metrics(admin: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(within("metrics are read", read_until_closed(&mut tcp)).await).unwrap()
}

async fn h1_status<S: AsyncRead + Unpin>(stream: &mut S) -> u16 {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        head
    };
    let head = within("an HTTP/1.1 response head", read).await;
    let text = String::from_utf8_lossy(&head);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {text:?}"))
}

async fn relay_with_limits(limits: &str) -> (TestRelay, meridian::sim_backend::SimBackend) {
    let backend_sim = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[backend("a", backend_sim.url(), &[MODEL], 4)],
        &format!("[limits]\n{limits}\n"),
    )
    .await;
    (relay, backend_sim)
}

/// HTTP/2 stream and header-list limits are what an h2 client reads in the server's SETTINGS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_h2_settings_carry_the_stream_and_header_limits() {
    let (relay, _sim) =
        relay_with_limits("max_streams_per_connection = 7\nmax_request_header_bytes = 8192").await;
    let mut tls = relay_tls_stream(&relay, b"h2").await;
    // Connection preface and an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let settings = within("the server's SETTINGS frame", async {
        loop {
            let mut header = [0u8; 9];
            tls.read_exact(&mut header).await.unwrap();
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            tls.read_exact(&mut payload).await.unwrap();
            let (kind, ack) = (header[3], header[4] & 1 == 1);
            if kind == 4 && !ack {
                break payload
                    .chunks_exact(6)
                    .map(|entry| {
                        (
                            u16::from_be_bytes([entry[0], entry[1]]),
                            u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]),
                        )
                    })
                    .collect::<BTreeMap<u16, u32>>();
            }
        }
    })
    .await;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    assert_eq!(
        settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&7),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&MAX_HEADER_LIST_SIZE),
        Some(&8192),
        "{settings:?}"
    );
}

/// HTTP/3 streams per connection are QUIC stream credit: a client cannot open more request
/// streams than `max_streams_per_connection` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_h3_grants_max_streams_per_connection() {
    let (relay, _sim) = relay_with_limits("max_streams_per_connection = 2").await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(relay.cert_der.clone()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = within(
        "QUIC handshake with the relay",
        endpoint.connect(relay.h3, "localhost").unwrap(),
    )
    .await
    .unwrap();
    let _first = within("stream 1", connection.open_bi()).await.unwrap();
    let _second = within("stream 2", connection.open_bi()).await.unwrap();
    // No credit for a third: opening waits (a short look suffices; more credit would have
    // made it ready at once).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), connection.open_bi())
            .await
            .is_err(),
        "a third concurrent stream was granted"
    );
    connection.close(0u32.into(), b"done");
}

/// Bodies over `max_request_body_bytes` get 413 however they are framed: a declared length is
/// refused before any of the body is read, a chunked body as soon as it passes the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_body_over_the_limit_is_413_declared_or_chunked() {
    // A long header-read timeout: a 413 within the test's deadline cannot be the 408 path.
    let (relay, _sim) =
        relay_with_limits("max_request_body_bytes = 1024\nheader_read_timeout_ms = 60000").await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/json\r\n";

    // Declared: ten megabytes announced, nothing sent.
    let mut tls = relay_tls_stream(&relay, b"http/1.1").await;
    tls.write_all(format!("{head}Content-Length: 10000000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(h1_status(&mut tls).await, 413, "declared length");

    // Chunked, no length: refused once the chunks pass the limit.
    let mut tls = relay_tls_stream(&relay, b"http/1.1").await;
    let chunk = format!(r#"{{"model":"{MODEL}","pad":"{}"}}"#, "x".repeat(2000));
    tls.write_all(
        format!(
            "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(h1_status(&mut tls).await, 413, "chunked");

    // At the limit is fine (the request goes on to the backend).
    let mut tls = relay_tls_stream(&relay, b"http/1.1").await;
    let body = format!(r#"{{"model":"{MODEL}","max_tokens":1,"messages":[]}}"#);
    tls.write_all(format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    assert_eq!(h1_status(&mut tls).await, 200, "a small body");
}

/// Slowloris: a client that keeps dribbling its request head, a byte at a time, is still cut
/// off after `header_read_timeout_ms`; one dribbling its body gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dribbling_client_is_cut_off_after_the_header_read_timeout() {
    let (relay, _sim) = relay_with_limits("header_read_timeout_ms = 500").await;

    let tls = relay_tls_stream(&relay, b"http/1.1").await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    writer
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let dribble = async {
        // Bounded: 10 s of dribbling at most (the test fails long before if never cut off).
        for _ in 0..200 {
            if writer.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let received = tokio::select! {
        received = read_until_closed(&mut reader) => received,
        () = dribble => unreachable!(),
        () = tokio::time::sleep(DEADLINE) => panic!("a dribbling head was not cut off"),
    };
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains(" 200 "), "{text}");

    let mut tls = relay_tls_stream(&relay, b"http/1.1").await;
    tls.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let dribble = async {
        for _ in 0..200 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let status = tokio::select! {
        status = h1_status(&mut reader) => status,
        () = dribble => unreachable!(),
    };
    assert_eq!(status, 408, "a dribbled body");
}

/// `max_connections` on the HTTPS listener: the next connection is closed at accept (its TLS
/// handshake fails), and a slot frees when a held connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_https_connections_over_the_cap_are_closed_and_a_slot_frees() {
    let (relay, _sim) = relay_with_limits("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = relay_tls_stream(&relay, b"http/1.1").await;
        tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(h1_status(&mut tls).await, 200);
        held.push(tls);
    }
    // The third TCP connection is accepted and closed at once: its TLS handshake fails.
    let tcp = TcpStream::connect(relay.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(relay_tls(&relay, b"http/1.1"));
    let third = within(
        "the third handshake ends",
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await;
    assert!(third.is_err(), "a third connection got through");
    let metrics = relay_metrics(relay.admin).await;
    assert!(
        metrics.contains("meridian_relay_connections_refused_total{listener=\"https\"} 1"),
        "{metrics}"
    );

    held.pop();
    eventually_true(
        "a new connection is served after one closed",
        DEADLINE,
        || async {
            let tcp = TcpStream::connect(relay.https).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(relay_tls(&relay, b"http/1.1"));
            let Ok(mut tls) = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
            else {
                return false;
            };
            tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .is_ok()
                && h1_status(&mut tls).await == 200
        },
    )
    .await;
}

/// The relay's admin listener serves at most `MAX_ADMIN_CONNECTIONS` connections; the next is
/// closed without an answer, and a slot frees when a held connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_admin_connections_over_the_cap_are_closed_and_a_slot_frees() {
    let (relay, _sim) = relay_with_limits("").await;
    let mut held = Vec::new();
    for _ in 0..meridian::relay::admin::MAX_ADMIN_CONNECTIONS {
        let mut tcp = TcpStream::connect(relay.admin).await.unwrap();
        tcp.write_all(b"GET /region/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(h1_status(&mut tcp).await, 200);
        held.push(tcp);
    }
    let mut extra = TcpStream::connect(relay.admin).await.unwrap();
    let _ = extra
        .write_all(b"GET /region/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let received = within(
        "the extra connection is closed",
        read_until_closed(&mut extra),
    )
    .await;
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );

    held.pop();
    // The metrics scrape itself needs a slot, so it comes after one was freed.
    eventually_true("the refusal is counted", DEADLINE, || async {
        let Ok(mut tcp) = TcpStream::connect(relay.admin).await else {
            return false;
        };
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if tcp.write_all(request).await.is_err() {
            return false;
        }
        let text = String::from_utf8_lossy(&read_until_closed(&mut tcp).await).into_owned();
        // At least the one above; tries of this loop made before the slot freed count too.
        text.lines()
            .filter_map(|line| {
                line.strip_prefix("meridian_relay_connections_refused_total{listener=\"admin\"} ")
            })
            .any(|count| count.parse::<u64>().is_ok_and(|n| n >= 1))
    })
    .await;
    eventually_true(
        "an admin request is served after one connection closed",
        DEADLINE,
        || async {
            let Ok(mut tcp) = TcpStream::connect(relay.admin).await else {
                return false;
            };
            if tcp
                .write_all(b"GET /region/health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_err()
            {
                return false;
            }
            let mut first = [0u8; 12];
            matches!(
                tokio::time::timeout(LIMIT, tcp.read_exact(&mut first)).await,
                Ok(Ok(_))
            ) && first.starts_with(b"HTTP/1.1 200")
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Health channel
// ---------------------------------------------------------------------------------------------

struct HealthDeployment {
    ca: PemPair,
    relay: PemPair,
    node: PemPair,
}

fn health_deployment() -> HealthDeployment {
    let now = SystemTime::now();
    let ca = create_ca("limits test", Validity::ca(now)).unwrap();
    let authority = Ca::from_pem(&ca).unwrap();
    let node =
        issue_dns_node_cert(&authority, "dns1", &["127.0.0.1"], Validity::leaf(now)).unwrap();
    let relay = issue_relay_cert(&authority, "eu-west", &[], Validity::leaf(now)).unwrap();
    HealthDeployment { ca, relay, node }
}

fn report_of(region: &str, sequence: u64) -> RegionReport {
    RegionReport {
        version: REPORT_VERSION,
        region: region.into(),
        sequence,
        state: RegionState::Ok,
        accept_new: true,
        saturation: 0.1,
        capacity_units: 8,
        headroom_units: 7.0,
        headroom_fraction: 0.9,
        models: BTreeMap::new(),
        rates: Rates::default(),
        client_rtt: Vec::new(),
    }
}

async fn send_stream(connection: &quinn::Connection, bytes: &[u8]) {
    let mut stream = connection.open_uni().await.unwrap();
    // The listener may stop the stream before all of it is written: that is its answer.
    let _ = stream.write_all(bytes).await;
    let _ = stream.finish();
}

/// Connections beyond `[health] max_connections` are refused and counted; a report stream
/// longer than one frame is stopped and counted, and the connection goes on serving; a slot
/// frees when its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_channel_caps_connections_and_frame_size() {
    meridian::relay::tls::install_crypto_provider();
    let deployment = health_deployment();
    let limits = ListenerLimits {
        max_connections: 1,
        ..ListenerLimits::default()
    };
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let endpoint =
        listener_endpoint(socket, &deployment.ca.cert_pem, &deployment.node, &limits).unwrap();
    let address = endpoint.local_addr().unwrap();
    let ledger = Arc::new(Mutex::new(ReportLedger::new(Duration::from_secs(10))));
    let counters = Arc::new(ListenerCounters::default());
    let reports = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let listening = tokio::spawn(run_listener(
        endpoint,
        ledger.clone(),
        counters.clone(),
        limits,
        |_region: &str| true,
        {
            let reports = reports.clone();
            move |_region: &str| {
                reports.fetch_add(1, Ordering::Relaxed);
            }
        },
        stopped,
    ));

    let client_config =
        client_config_with_identity(&deployment.ca.cert_pem, &deployment.relay).unwrap();
    let client = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let connect = || {
        let connecting = client
            .connect_with(client_config.clone(), address, "127.0.0.1")
            .unwrap();
        async move {
            match tokio::time::timeout(LIMIT, connecting).await {
                Ok(connected) => connected,
                Err(_) => panic!("health handshake hung"),
            }
        }
    };
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);

    let first = connect().await.unwrap();
    send_stream(
        &first,
        &encode_report(&report_of("eu-west", 1), 1000).unwrap(),
    )
    .await;
    eventually_true("the first report is accepted", DEADLINE, || async {
        reports.load(Ordering::Relaxed) == 1
    })
    .await;

    // Over the cap: refused before the handshake completes.
    let second = connect().await;
    if let Ok(connection) = second {
        // TLS 1.3 may let the client finish first; the refusal then closes it.
        within("the refused connection closes", connection.closed()).await;
    }
    assert_eq!(load(&counters.refused_over_limit), 1);

    // One byte more than a frame may hold: stopped, counted, nothing reaches the ledger.
    send_stream(&first, &vec![0u8; HEADER_LEN + MAX_FRAME_BYTES + 1]).await;
    eventually_true("the oversized stream is counted", DEADLINE, || async {
        load(&counters.streams_too_long) == 1
    })
    .await;
    // A header announcing more than the cap is malformed, whatever follows.
    let mut announced = encode_report(&report_of("eu-west", 2), 1000)
        .unwrap()
        .to_vec();
    announced[6..10].copy_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes());
    send_stream(&first, &announced).await;
    eventually_true("the over-announced frame is counted", DEADLINE, || async {
        load(&counters.malformed_frames) == 1
    })
    .await;
    // The connection itself goes on.
    send_stream(
        &first,
        &encode_report(&report_of("eu-west", 3), 1000).unwrap(),
    )
    .await;
    eventually_true("a later report is accepted", DEADLINE, || async {
        reports.load(Ordering::Relaxed) == 2
    })
    .await;

    // Closing the first frees its slot.
    first.close(0u32.into(), b"done");
    eventually_true(
        "a new connection is accepted after the first closed",
        DEADLINE,
        || async {
            match connect().await {
                Ok(connection) => {
                    send_stream(
                        &connection,
                        &encode_report(&report_of("eu-west", 10), 1000).unwrap(),
                    )
                    .await;
                    let accepted = tokio::time::timeout(Duration::from_secs(1), async {
                        while reports.load(Ordering::Relaxed) < 3 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    })
                    .await
                    .is_ok();
                    connection.close(0u32.into(), b"done");
                    accepted
                }
                Err(_) => false,
            }
        },
    )
    .await;

    stop.send(true).unwrap();
    within("the listener stops", listening).await.unwrap();
}

/// The relay's report carries client RTT for at most a bounded number of prefixes, so a relay
/// that has seen clients from every prefix its table can hold still sends a report that fits
/// one health-channel frame (an oversized report is not sent at all, and the region would go
/// silent on the DNS tier).
#[test]
fn relay_report_fits_a_frame_whatever_the_client_prefixes() {
    let text = format!(
        "[relay]\nregion = \"eu-west\"\nlisten = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\n[relay.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\n\
         [[backend]]\nid = \"a\"\nurl = \"http://127.0.0.1:9\"\nkind = \"vllm\"\n\
         models = [{}]\nslots = 4\n",
        (0..16)
            .map(|i| format!("\"model-with-a-fairly-long-name-{i:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let config =
        parse_relay_config(&text, std::path::Path::new("/nonexistent/relay.toml")).unwrap();
    let pool = Pool::new(&config);
    let stats = RequestStats::default();
    let now = Instant::now();
    // Far more distinct /48s than the stats table holds, with long RTT figures.
    for i in 0..10_000u32 {
        let client = Ipv6Addr::new(
            0x2001,
            0x0db8 + (i >> 16) as u16,
            i as u16,
            0xffff,
            0,
            0,
            0,
            1,
        );
        let _ = stats.record_client_rtt(
            client.into(),
            Duration::from_micros(123_456_789 + u64::from(i)),
            now,
        );
    }
    let busy = Ipv6Addr::new(0x2001, 0x0db8, 0xaaaa, 0, 0, 0, 0, 1);
    for _ in 0..5 {
        let _ = stats.record_client_rtt(busy.into(), Duration::from_millis(20), now);
    }
    let report = report::build(&config, &pool, &stats, false, 1, now);
    assert!(!report.client_rtt.is_empty());
    let frame = encode_report(&report, 10_000)
        .unwrap_or_else(|error| panic!("{} prefixes: {error}", report.client_rtt.len()));
    let (decoded, used) = decode(&frame).unwrap();
    assert_eq!(used, frame.len());
    let meridian::health::Frame::Report(decoded) = decoded;
    assert_eq!(decoded.report.client_rtt.len(), report.client_rtt.len());
    // The busiest prefix is among those kept.
    assert_eq!(decoded.report.client_rtt[0].prefix, "2001:db8:aaaa::/48");
}
