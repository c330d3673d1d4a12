//! Test support: a real server on loopback (in-process or as the `meridian` binary), real
//! clients (hickory's UDP/TCP client, raw sockets for crafted packets, `dig`), and a scratch
//! copy of the bundled example to edit.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_net::{
    client::Client,
    runtime::TokioRuntimeProvider,
    tcp::TcpClientStream,
    udp::UdpClientStream,
    xfer::{DnsHandle, FirstAnswer},
};
use hickory_proto::{
    op::{DnsRequest, DnsRequestOptions, DnsResponse, Edns, Message, MessageType, OpCode, Query},
    rr::{
        Name, RData, RecordType,
        rdata::opt::{ClientSubnet, EdnsCode, EdnsOption},
    },
};
use meridian::{
    dns::server::{self, Listeners, ServerLimits},
    metrics::Metrics,
    snapshot::SnapshotStore,
};
use tokio::{sync::watch, task::JoinHandle};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bundled_config() -> PathBuf {
    repo().join("zones/meridian.toml")
}

/// A scratch copy of `zones/` and `geoip/` that a test may edit; the config keeps its
/// relative paths, so it points at the copied zone files and database.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        for folder in ["zones", "geoip"] {
            let to = dir.path().join(folder);
            std::fs::create_dir_all(&to).expect("mkdir");
            for entry in std::fs::read_dir(repo().join(folder)).expect("read_dir") {
                let entry = entry.expect("entry");
                if entry.file_type().expect("type").is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
                }
            }
        }
        // Operator state from a developer's run must not leak into tests.
        let _ = std::fs::remove_file(dir.path().join("zones/operator-state.json"));
        Scratch { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("zones/meridian.toml")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Replaces a file the way operators should: write elsewhere, then rename.
    pub fn replace(&self, relative: &str, text: &str) {
        let target = self.path(relative);
        let temporary = target.with_extension("new");
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, &target).expect("rename");
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).expect("read")
    }
}

/// The server running in this process on 127.0.0.1:0 (UDP and TCP on the same port).
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: &Path) -> TestServer {
        TestServer::start_on(config, "127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(config: &Path, listen: SocketAddr) -> TestServer {
        let store = Arc::new(SnapshotStore::open(config).expect("config loads"));
        let listeners = Listeners::bind(&[listen]).await.expect("bind");
        let addr = listeners.udp_addresses().expect("udp addr")[0];
        assert_eq!(listeners.tcp_addresses().expect("tcp addr")[0], addr);
        let metrics = Arc::new(Metrics::new());
        let (shutdown, watcher) = watch::channel(false);
        let limits = {
            let snapshot = store.load();
            ServerLimits {
                tcp_idle_timeout: Duration::from_millis(snapshot.config.limits.tcp_idle_timeout_ms),
                max_tcp_connections: snapshot.config.limits.max_tcp_connections,
            }
        };
        let task = tokio::spawn(server::serve(
            listeners,
            store.clone(),
            metrics.clone(),
            limits,
            watcher,
        ));
        TestServer {
            addr,
            store,
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

pub async fn udp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default()).build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);
    client
}

pub async fn tcp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (stream, sender) = TcpClientStream::new(addr, None, None, TokioRuntimeProvider::new());
    let stream = stream.await.expect("tcp connect");
    let (client, background) = Client::<TokioRuntimeProvider>::new(stream, sender);
    tokio::spawn(background);
    client
}

/// A query message with EDNS (payload 1232) and an optional ECS option.
pub fn query_message(name: &str, qtype: RecordType, subnet: Option<&str>) -> Message {
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some(subnet) = subnet {
        let subnet: ClientSubnet = subnet.parse().expect("subnet");
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
    }
    message.set_edns(edns);
    message
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

/// Sends `message` through a hickory client and returns the response.
pub async fn exchange(client: &Client<TokioRuntimeProvider>, message: Message) -> DnsResponse {
    let mut options = DnsRequestOptions::default();
    options.use_edns = message.edns.is_some();
    let request = DnsRequest::new(message, options);
    tokio::time::timeout(Duration::from_secs(5), client.send(request).first_answer())
        .await
        .expect("answered within 5 s")
        .expect("a response")
}

pub async fn ask(
    client: &Client<TokioRuntimeProvider>,
    name: &str,
    qtype: RecordType,
    subnet: Option<&str>,
) -> Message {
    exchange(client, query_message(name, qtype, subnet))
        .await
        .into_message()
}

/// The addresses in the answer section, in order.
pub fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The ECS option of a response, if echoed.
pub fn echoed_subnet(message: &Message) -> Option<ClientSubnet> {
    match message.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(subnet) => Some(*subnet),
        _ => None,
    }
}

/// Raw UDP exchange for crafted packets; `None` if nothing came back within `wait`.
pub async fn raw_udp(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket.send_to(packet, addr).await.expect("send");
    let mut buffer = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await {
        Ok(Ok((n, _))) => Some(buffer[..n].to_vec()),
        _ => None,
    }
}

/// The `meridian` binary as a child process, found through its ready file.
pub struct Binary {
    pub child: Child,
    pub ready: serde_json::Value,
    pub udp: SocketAddr,
    _ready_dir: tempfile::TempDir,
}

impl Binary {
    pub fn dns(args: &[&str]) -> Binary {
        let ready_dir = tempfile::tempdir().expect("tempdir");
        let ready_file = ready_dir.path().join("ready.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("dns")
            .args(args)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn meridian");
        // Bounded wait for the ready file (written atomically once the sockets serve).
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                break serde_json::from_str::<serde_json::Value>(&text).expect("ready json");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("meridian exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "meridian not ready within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let udp = ready["udp"][0]
            .as_str()
            .expect("udp address")
            .parse()
            .expect("socket address");
        Binary {
            child,
            ready,
            udp,
            _ready_dir: ready_dir,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a command is installed; in CI (CI=true) a missing tool is a failure, not a skip.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} is not installed, but CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install bind9-dnsutils)");
    }
    found
}

/// Polls `check` until it returns `Some`, for at most `limit` (never a bare sleep to wait for
/// a state: a bounded loop that names what it waited for when it gives up).
pub async fn eventually_some<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually_some`] for a condition.
pub async fn eventually_true<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, limit, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// A query as raw bytes, with or without EDNS (and then with this payload size).
pub fn raw_query(id: u16, qname: &str, qtype: RecordType, payload: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(qname).unwrap(), qtype));
    if let Some(payload) = payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message.to_vec().unwrap()
}
