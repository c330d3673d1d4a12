//! Response-rate limiting through the real server: UDP sockets on loopback, the bundled
//! example configuration with `[rrl]` turned on, and a flood from many source addresses of one
//! /24 (loopback lets a test bind any 127.x.y.z, which is as close to a spoofed-source flood as
//! a test can get without raw sockets).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use meridian::{
    config::{self, model::RateLimit},
    dns::{
        rrl::{ResponseRateLimiter, RrlCounts},
        server::{self, Listeners, ServerLimits},
    },
    metrics::{Metrics, MetricsSource},
    snapshot::{Snapshot, SnapshotStore},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::watch,
    task::JoinHandle,
};

const RATE: u32 = 5;
const BURST: u32 = 5;
const SLIP: u32 = 2;
const FLOOD_SOURCES: u8 = 20;
const QUERIES_PER_SOURCE: u16 = 10;

fn bundled_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml")
}

struct Server {
    addr: SocketAddr,
    rrl: Arc<ResponseRateLimiter>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// The bundled configuration with `rrl` in place of its `[rrl]` table.
    async fn start(config_path: &Path, rrl: Option<RateLimit>) -> Server {
        let mut dns_config = config::load_dns_config(config_path).expect("config loads");
        dns_config.rrl = rrl;
        let snapshot = Snapshot::build(dns_config, 1).expect("snapshot builds");
        let store = Arc::new(SnapshotStore::from_snapshot(snapshot, config_path));
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
            .await
            .expect("bind");
        let addr = listeners.udp_addresses().expect("udp addr")[0];
        let limiter = Arc::new(ResponseRateLimiter::new());
        let (shutdown, watcher) = watch::channel(false);
        let task = tokio::spawn(server::serve_observed(
            listeners,
            store,
            Arc::new(Metrics::new()),
            ServerLimits {
                tcp_idle_timeout: Duration::from_secs(5),
                max_tcp_connections: 16,
            },
            server::Observers {
                rrl: Some(limiter.clone()),
                recent: None,
            },
            watcher,
        ));
        Server {
            addr,
            rrl: limiter,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.task.await.expect("server task");
    }

    /// Waits until the limiter has decided on `n` responses.
    async fn wait_checked(&self, n: u64) -> RrlCounts {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let counts = self.rrl.counts();
            if counts.checked >= n {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "server decided on {counts:?} of {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn rate_limit() -> RateLimit {
    RateLimit {
        responses_per_second: RATE,
        burst: BURST,
        slip: SLIP,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        max_buckets: 1000,
    }
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    message.to_vec().expect("encode")
}

async fn socket_at(address: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(IpAddr::V4(address), 0))
        .await
        .expect("bind a loopback source")
}

async fn ask_udp(socket: &UdpSocket, server: SocketAddr, packet: &[u8]) -> Option<Message> {
    socket.send_to(packet, server).await.expect("send");
    let mut buffer = vec![0u8; 65_535];
    match tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer)).await {
        Ok(Ok((n, _))) => Some(Message::from_vec(&buffer[..n]).expect("response parses")),
        _ => None,
    }
}

async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let length = u16::try_from(packet.len()).expect("small query");
    stream
        .write_all(&length.to_be_bytes())
        .await
        .expect("write");
    stream.write_all(packet).await.expect("write");
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.expect("read length");
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut response).await.expect("read");
    Message::from_vec(&response).expect("response parses")
}

#[tokio::test]
async fn a_flood_from_one_prefix_is_limited_while_other_clients_are_answered() {
    let server = Server::start(&bundled_config(), Some(rate_limit())).await;

    // The flood: 20 source addresses of 127.0.0.0/24, all asking for the same answer, sent
    // without waiting for responses.
    let mut sources = Vec::new();
    for i in 0..FLOOD_SOURCES {
        sources.push(socket_at(Ipv4Addr::new(127, 0, 0, 10 + i)).await);
    }
    let started = Instant::now();
    let mut id = 0u16;
    for _ in 0..QUERIES_PER_SOURCE {
        for socket in &sources {
            id += 1;
            let packet = query(id, "api.example.test.", RecordType::A);
            socket.send_to(&packet, server.addr).await.expect("send");
        }
    }
    let flood = u64::from(FLOOD_SOURCES) * u64::from(QUERIES_PER_SOURCE);
    let counts = server.wait_checked(flood).await;
    let expected_responses = flood - counts.dropped;

    // Collect every response the server decided to send.
    let (mut full, mut truncated) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buffer = vec![0u8; 65_535];
    while full + truncated < expected_responses {
        assert!(
            Instant::now() < deadline,
            "{full} + {truncated} of {expected_responses} responses"
        );
        let mut got_one = false;
        for socket in &sources {
            while let Ok((n, _)) = socket.try_recv_from(&mut buffer) {
                got_one = true;
                let message = Message::from_vec(&buffer[..n]).expect("response parses");
                if message.metadata.truncation {
                    assert!(message.answers.is_empty(), "a slip carries no answer");
                    assert_eq!(message.queries.len(), 1, "a slip echoes the question");
                    truncated += 1;
                } else {
                    assert_eq!(message.answers.len(), 1);
                    full += 1;
                }
            }
        }
        if !got_one {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // However the flood was spread, the prefix got no more than rate × time + rate + burst
    // full answers; every limited response was slipped or dropped, every SLIP-th slipped.
    let allowance = (f64::from(RATE) * elapsed).ceil() as u64 + u64::from(RATE + BURST);
    assert!(
        full <= allowance,
        "{full} full answers > {allowance} in {elapsed:.2}s"
    );
    assert!(full >= u64::from(RATE + BURST), "the burst is answered");
    assert_eq!(counts.limited, flood - full);
    assert_eq!(counts.limited, counts.slipped + counts.dropped);
    assert_eq!(truncated, counts.slipped);
    assert_eq!(counts.slipped, counts.limited / u64::from(SLIP));

    // A client in another network asking for the same name is not affected.
    let client = socket_at(Ipv4Addr::new(127, 0, 1, 1)).await;
    for i in 0..u16::try_from(RATE).expect("small") {
        let response = ask_udp(
            &client,
            server.addr,
            &query(1000 + i, "api.example.test.", RecordType::A),
        )
        .await
        .expect("the other client is answered");
        assert!(!response.metadata.truncation);
        assert_eq!(response.answers.len(), 1);
    }

    // The flooded prefix is still answered in full over TCP (where slipped clients go).
    for i in 0..3 {
        let response = ask_tcp(
            server.addr,
            &query(2000 + i, "api.example.test.", RecordType::A),
        )
        .await;
        assert!(!response.metadata.truncation);
        assert_eq!(response.answers.len(), 1);
    }

    // And the operator sees it.
    let mut text = String::new();
    server.rrl.encode_into(&mut text);
    assert!(
        text.contains(&format!(
            "meridian_dns_rrl_limited_total{{kind=\"answer\"}} {}",
            counts.limited
        )),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn random_names_in_the_zone_share_one_nxdomain_bucket() {
    let server = Server::start(&bundled_config(), Some(rate_limit())).await;
    let socket = socket_at(Ipv4Addr::new(127, 0, 2, 1)).await;
    let queries = u16::try_from(RATE + BURST).expect("small") + 10;
    let started = Instant::now();
    for i in 0..queries {
        let packet = query(i, &format!("random-{i}.example.test."), RecordType::A);
        socket.send_to(&packet, server.addr).await.expect("send");
    }
    let counts = server.wait_checked(u64::from(queries)).await;
    // Each name is asked once, yet the zone's NXDOMAIN answers are one bucket: all but the
    // allowance are limited.
    let allowance =
        (f64::from(RATE) * started.elapsed().as_secs_f64()).ceil() as u64 + u64::from(RATE + BURST);
    assert!(
        counts.limited + allowance >= u64::from(queries),
        "{counts:?}, allowance {allowance}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_rrl_nothing_is_limited() {
    let server = Server::start(&bundled_config(), None).await;
    let socket = socket_at(Ipv4Addr::new(127, 0, 3, 1)).await;
    for i in 0..50 {
        let response = ask_udp(
            &socket,
            server.addr,
            &query(i, "api.example.test.", RecordType::A),
        )
        .await
        .expect("answered");
        assert!(!response.metadata.truncation);
    }
    assert_eq!(server.rrl.counts(), RrlCounts::default());
    server.stop().await;
}
