//! `meridian demo`: the whole system on loopback, as production runs it.
//!
//! One DNS node serves the bundled example zone and GeoIP data; three regions each run a relay
//! in front of two simulated backends. Every relay listens on its own loopback address
//! (127.0.1.1, 127.0.1.2, 127.0.1.3) on the same port, and those are the addresses
//! `api.example.test` resolves to, so — as in production — the DNS answer alone tells a client
//! where to go. Relays report to the DNS node over the QUIC health channel with certificates
//! made on the fly; the admin API and `meridian ctl` / `meridian drill` work against it.
//!
//! This module only writes configuration files and starts the real components with them
//! (`DnsNode`, `RelayHandle`, `SimBackend`); it has no behaviour of its own to test beyond
//! that the files it writes are valid (they go through the same validators as any other).

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

use crate::{
    dns::node::{DnsNode, NodeOptions},
    health::pki::{self, Member},
    relay::{config as relay_config, server::RelayHandle},
    sim_backend::{SimBackend, SimBackendArgs, SimKind},
    snapshot::SnapshotStore,
};

/// The bundled example zone and demo GeoIP database, compiled in so the demo runs from any
/// working directory.
const ZONE: &str = include_str!("../../zones/example.test.zone");
const GEOIP: &[u8] = include_bytes!("../../geoip/demo.mmdb");

/// The model every demo backend serves.
pub const MODEL: &str = "demo-model";
/// The GSLB name clients resolve.
pub const API_NAME: &str = "api.example.test";

/// One demo region: its id, where its relay listens, where it is on the map, and what its
/// two simulated backends imitate.
struct RegionPlan {
    id: &'static str,
    relay_ip: Ipv4Addr,
    latitude: f64,
    longitude: f64,
    kinds: [SimKind; 2],
}

const REGIONS: [RegionPlan; 3] = [
    RegionPlan {
        id: "us-east",
        relay_ip: Ipv4Addr::new(127, 0, 1, 1),
        latitude: 39.0438,
        longitude: -77.4874,
        kinds: [SimKind::Vllm, SimKind::Sglang],
    },
    RegionPlan {
        id: "eu-west",
        relay_ip: Ipv4Addr::new(127, 0, 1, 2),
        latitude: 53.3498,
        longitude: -6.2603,
        kinds: [SimKind::Vllm, SimKind::Tgi],
    },
    RegionPlan {
        id: "ap-south",
        relay_ip: Ipv4Addr::new(127, 0, 1, 3),
        latitude: 19.0760,
        longitude: 72.8777,
        kinds: [SimKind::Llamacpp, SimKind::Ollama],
    },
];

/// DNS node id in the demo deployment's certificates.
const NODE_ID: &str = "dns-1";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Write a JSON object naming every address, the admin token file and the CA here once
    /// everything serves.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Keep the generated configuration, certificates and state in this folder (created if
    /// missing) instead of a temporary one removed on exit. It must not hold an earlier
    /// demo's files: certificates, keys and the admin token are never overwritten.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The port every relay listens on (TCP for HTTPS, UDP for HTTP/3); 0 = a free one.
    #[arg(long, default_value_t = 0)]
    pub relay_port: u16,
    /// DNS port on 127.0.0.1 (UDP and TCP); 0 = a free one.
    #[arg(long, default_value_t = 0)]
    pub dns_port: u16,
}

/// What `--ready-file` contains: everything a script or test needs to drive the demo.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DemoReady {
    pub dns_udp: SocketAddr,
    pub dns_tcp: SocketAddr,
    pub admin_url: String,
    pub admin_token_file: PathBuf,
    pub ca_file: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub name: String,
    pub model: String,
    pub regions: Vec<DemoRegion>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DemoRegion {
    pub id: String,
    pub https: SocketAddr,
    pub h3: Option<SocketAddr>,
    pub admin_url: String,
    pub backends: Vec<String>,
}

pub fn run(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meridian: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A running demo: dropped or [`Demo::stop`]ped, everything stops.
pub struct Demo {
    pub ready: DemoReady,
    node: DnsNode,
    /// In `REGIONS` order; `None` while stopped by [`Demo::stop_relay`].
    relays: Vec<Option<RelayHandle>>,
    /// Two per region, in `REGIONS` order; `None` while stopped by [`Demo::stop_backend`].
    backends: Vec<Option<SimBackend>>,
    /// What each backend was started with (its bound address included), to start it again
    /// where its relay expects it.
    backend_args: Vec<SimBackendArgs>,
    dir: PathBuf,
    /// Holds the temporary folder (removed on drop) unless `--dir` was given.
    _dir: Option<tempfile::TempDir>,
}

impl Demo {
    /// Writes the deployment into `dir` (or a temporary folder) and starts every component.
    pub async fn start(
        dir: Option<PathBuf>,
        dns_port: u16,
        relay_port: u16,
    ) -> anyhow::Result<Demo> {
        crate::relay::tls::install_crypto_provider();
        let (temp, dir) = match dir {
            Some(dir) => {
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (None, dir)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("meridian-demo-")
                    .tempdir()
                    .context("cannot create a temporary folder")?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;

        let relay_port = if relay_port == 0 {
            free_port_on_all(REGIONS.iter().map(|r| IpAddr::V4(r.relay_ip))).await?
        } else {
            relay_port
        };
        let certs = dir.join("certs");
        write_certificates(&certs)?;
        let token_file = dir.join("admin.token");
        write_token(&token_file)?;
        fs::write(dir.join("example.test.zone"), ZONE).context("cannot write the zone")?;
        fs::write(dir.join("demo.mmdb"), GEOIP).context("cannot write the GeoIP database")?;

        let dns_config = dir.join("dns.toml");
        fs::write(&dns_config, dns_config_text(relay_port)).context("cannot write dns.toml")?;
        let store = Arc::new(
            SnapshotStore::open(&dns_config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dns_config.display()))?,
        );
        let node = DnsNode::start(
            store,
            NodeOptions {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], dns_port))],
                ..NodeOptions::default()
            },
        )
        .await?;
        let health = node
            .addresses
            .health
            .context("the DNS node started without its health channel")?;
        let admin = node
            .addresses
            .admin
            .context("the DNS node started without its admin API")?;

        let mut backends = Vec::new();
        let mut backend_args = Vec::new();
        let mut relays = Vec::new();
        let mut regions = Vec::new();
        for plan in &REGIONS {
            let mut urls = Vec::new();
            for kind in plan.kinds {
                let mut args = SimBackendArgs::new([MODEL]);
                args.kind = kind;
                args.ttft_ms = 80;
                args.tokens_per_s = 40.0;
                args.max_tokens = 24;
                let backend = SimBackend::start(args.clone())
                    .await
                    .with_context(|| format!("cannot start a {kind:?} backend"))?;
                urls.push((kind, backend.url()));
                args.listen = backend.address();
                backend_args.push(args);
                backends.push(Some(backend));
            }
            let path = dir.join(format!("relay-{}.toml", plan.id));
            fs::write(&path, relay_config_text(plan, relay_port, &urls, health))
                .with_context(|| format!("cannot write {}", path.display()))?;
            let config = relay_config::load_relay_config(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let relay = RelayHandle::start(config)
                .await
                .with_context(|| format!("cannot start the {} relay", plan.id))?;
            regions.push(DemoRegion {
                id: plan.id.to_string(),
                https: relay.https,
                h3: relay.h3,
                admin_url: format!("http://{}", relay.admin),
                backends: urls.iter().map(|(_, url)| url.clone()).collect(),
            });
            relays.push(Some(relay));
        }

        wait_until_all_up(&node.store, Duration::from_secs(20)).await?;

        let ready = DemoReady {
            dns_udp: node.addresses.udp[0],
            dns_tcp: node.addresses.tcp[0],
            admin_url: format!("http://{admin}"),
            admin_token_file: token_file,
            ca_file: certs.join("ca.pem"),
            metrics: node.addresses.metrics,
            name: API_NAME.to_string(),
            model: MODEL.to_string(),
            regions,
        };
        Ok(Demo {
            ready,
            node,
            relays,
            backends,
            backend_args,
            dir,
            _dir: temp,
        })
    }

    /// Drains the relays, then stops the DNS node and the backends.
    pub async fn stop(self) {
        for relay in self.relays.into_iter().flatten() {
            relay.drain_and_stop(Duration::from_secs(5)).await;
        }
        self.node.shutdown().await;
        for backend in self.backends.into_iter().flatten() {
            let _ = backend.shutdown().await;
        }
    }

    /// The running DNS node: its snapshot store, metrics and health plane.
    pub fn node(&self) -> &DnsNode {
        &self.node
    }

    /// The folder holding the deployment: `dns.toml`, `relay-<region>.toml`, `certs/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The region's relay, unless stopped.
    pub fn relay(&self, region: &str) -> Option<&RelayHandle> {
        self.relays.get(region_index(region)?)?.as_ref()
    }

    /// One of the region's two backends (`index` 0 or 1), unless stopped.
    pub fn backend(&self, region: &str, index: usize) -> Option<&SimBackend> {
        self.backends.get(backend_slot(region, index)?)?.as_ref()
    }

    /// Stops the region's relay as a crash would look to its clients when `grace` is zero:
    /// open streams are cut, new connections refused, health reports stop. False when the
    /// region is unknown or its relay already stopped.
    pub async fn stop_relay(&mut self, region: &str, grace: Duration) -> bool {
        let Some(relay) = region_index(region).and_then(|i| self.relays.get_mut(i)?.take()) else {
            return false;
        };
        relay.drain_and_stop(grace).await;
        true
    }

    /// Starts the region's relay again from its `relay-<region>.toml`, on the same address
    /// and port (its admin API gets a new port: `ready` is updated). A running relay is left
    /// alone. Right after [`Demo::stop_relay`] this can fail with "address in use": the
    /// stopped relay's QUIC endpoint may still hold its UDP port; try again later.
    pub async fn start_relay(&mut self, region: &str) -> anyhow::Result<()> {
        let index = region_index(region).with_context(|| format!("no region `{region}`"))?;
        if self.relays[index].is_some() {
            return Ok(());
        }
        let path = self.dir.join(format!("relay-{region}.toml"));
        let config = relay_config::load_relay_config(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let relay = RelayHandle::start(config)
            .await
            .with_context(|| format!("cannot restart the {region} relay"))?;
        if let Some(view) = self.ready.regions.iter_mut().find(|r| r.id == region) {
            view.admin_url = format!("http://{}", relay.admin);
            view.h3 = relay.h3;
        }
        self.relays[index] = Some(relay);
        Ok(())
    }

    /// Stops one of the region's backends: open streams are cut, connections refused until
    /// [`Demo::start_backend`]. False when unknown or already stopped.
    pub async fn stop_backend(&mut self, region: &str, index: usize) -> bool {
        let Some(backend) =
            backend_slot(region, index).and_then(|i| self.backends.get_mut(i)?.take())
        else {
            return false;
        };
        let _ = backend.shutdown().await;
        true
    }

    /// Starts a stopped backend again on its old address, where its relay expects it.
    pub async fn start_backend(&mut self, region: &str, index: usize) -> anyhow::Result<()> {
        let slot = backend_slot(region, index)
            .with_context(|| format!("no backend {index} in region `{region}`"))?;
        if self.backends[slot].is_some() {
            return Ok(());
        }
        let args = self.backend_args[slot].clone();
        let backend = SimBackend::start(args)
            .await
            .with_context(|| format!("cannot restart backend {index} of {region}"))?;
        self.backends[slot] = Some(backend);
        Ok(())
    }
}

fn region_index(region: &str) -> Option<usize> {
    REGIONS.iter().position(|plan| plan.id == region)
}

fn backend_slot(region: &str, index: usize) -> Option<usize> {
    let per_region = REGIONS[0].kinds.len();
    (index < per_region).then_some(region_index(region)? * per_region + index)
}

/// The node starts before the relays, so its own probe may have marked regions down in the
/// meantime. "Ready" means every region reports up and not spilling (hysteresis included),
/// so the first answers a newcomer sees are the steady-state ones.
async fn wait_until_all_up(store: &SnapshotStore, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let snapshot = store.load();
        let waiting: Vec<&str> = snapshot
            .config
            .regions
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let status = snapshot
                    .steering
                    .region_status(crate::config::model::RegionIdx(*i as u16));
                status.health != crate::steering::Health::Up || status.spilling
            })
            .map(|(_, region)| &*region.id)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "regions not reporting up within {limit:?}: {}",
                waiting.join(", ")
            );
        }
        drop(snapshot);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let demo = Demo::start(args.dir.clone(), args.dns_port, args.relay_port).await?;
    if let Some(path) = &args.ready_file {
        let text = serde_json::to_string_pretty(&demo.ready)?;
        let temporary = path.with_extension("tmp");
        fs::write(&temporary, text)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
    }
    info!(dns = %demo.ready.dns_udp, admin = %demo.ready.admin_url, "demo serving");
    println!("{}", instructions(&demo.ready, args.dir.is_some()));

    crate::cli::wait_for_termination().await;
    println!("stopping the demo …");
    demo.stop().await;
    if let Some(path) = &args.ready_file {
        let _ = fs::remove_file(path);
    }
    Ok(())
}

/// A port free for TCP and UDP on every one of `addresses` (each relay binds its own address
/// with the same port, so clients need only the DNS answer). Bound and released here, so a
/// race with another program is possible but harmless: the relay then fails to start with a
/// clear error, and a rerun picks another port.
pub async fn free_port_on_all(
    addresses: impl Iterator<Item = IpAddr> + Clone,
) -> anyhow::Result<u16> {
    for _attempt in 0..32 {
        let first = addresses.clone().next().context("no relay addresses")?;
        let probe = TcpListener::bind((first, 0))
            .await
            .with_context(|| format!("cannot bind {first}: is 127.0.0.0/8 routed to lo?"))?;
        let port = probe.local_addr()?.port();
        let mut held = Vec::new();
        let mut all_free = true;
        for address in addresses.clone() {
            let udp = UdpSocket::bind((address, port)).await;
            let tcp = if address == first {
                None
            } else {
                Some(TcpListener::bind((address, port)).await)
            };
            match (udp, tcp) {
                (Ok(udp), None) => held.push((udp, None)),
                (Ok(udp), Some(Ok(tcp))) => held.push((udp, Some(tcp))),
                _ => {
                    all_free = false;
                    break;
                }
            }
        }
        drop(held);
        drop(probe);
        if all_free {
            return Ok(port);
        }
    }
    anyhow::bail!("no port is free on every relay address")
}

fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let member = |text: &str| -> anyhow::Result<Member> {
        text.parse()
            .map_err(|e| anyhow::anyhow!("demo certificate member `{text}`: {e}"))
    };
    let mut regions = Vec::new();
    for plan in &REGIONS {
        regions.push(member(&format!(
            "{}={API_NAME},{}",
            plan.id, plan.relay_ip
        ))?);
    }
    let nodes = [member(&format!("{NODE_ID}=localhost,127.0.0.1"))?];
    pki::write_deployment(dir, &regions, &nodes, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("cannot create the demo certificates: {e}"))?;
    Ok(())
}

/// 32 random bytes, hex; readable by the owner only.
fn write_token(path: &Path) -> anyhow::Result<()> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token: String = bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn dns_config_text(relay_port: u16) -> String {
    let mut text = String::from(
        r#"# Written by `meridian demo`: the bundled example with three loopback regions.
operator_state = "operator-state.json"

[server]
listen = ["127.0.0.1:0"]

[geoip]
database = "demo.mmdb"

[[zone]]
origin = "example.test."
file = "example.test.zone"

[health]
listen = "127.0.0.1:0"
ca = "certs/ca.pem"
cert = "certs/dns-dns-1.pem"
key = "certs/dns-dns-1-key.pem"
down_after = 2
up_after = 3
refresh_interval_ms = 200

[health.probe]
interval_ms = 1000
timeout_ms = 1000
down_after = 2

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
"#,
    );
    for plan in &REGIONS {
        let _ = write!(
            text,
            r#"
[[region]]
id = "{id}"
latitude = {lat}
longitude = {lon}
ipv4 = ["{ip}"]
capacity = 100
probe = {{ address = "{ip}:{port}", server_name = "{API_NAME}" }}
"#,
            id = plan.id,
            lat = plan.latitude,
            lon = plan.longitude,
            ip = plan.relay_ip,
            port = relay_port,
        );
    }
    text.push_str(
        r#"
[[gslb]]
name = "api.example.test."
mode = "geo"
regions = ["us-east", "eu-west", "ap-south"]
answers = 1
ttl = 10
ecs = true
why = true

[gslb.geo]
default = ["us-east", "eu-west", "ap-south"]
continents = { EU = ["eu-west", "us-east"], AF = ["eu-west", "us-east"], NA = ["us-east", "eu-west"], SA = ["us-east", "eu-west"], AS = ["ap-south", "eu-west"], OC = ["ap-south", "us-east"] }

[[gslb]]
name = "nearest.example.test."
mode = "nearest"
ttl = 10
why = true
"#,
    );
    text
}

fn relay_config_text(
    plan: &RegionPlan,
    port: u16,
    backends: &[(SimKind, String)],
    health: SocketAddr,
) -> String {
    let mut text = format!(
        r#"# Written by `meridian demo`: the {id} relay.
[relay]
region = "{id}"
listen = "{ip}:{port}"
admin_listen = "127.0.0.1:0"
# The DNS node's token: drain, reload and report pausing need it here too.
admin_token_file = "admin.token"
http3 = true
scrape_interval_ms = 500

[relay.tls]
cert = "certs/relay-{id}.pem"
key = "certs/relay-{id}-key.pem"

[relay.health_channel]
ca = "certs/ca.pem"
cert = "certs/relay-{id}.pem"
key = "certs/relay-{id}-key.pem"
interval_ms = 500
validity_ms = 2000

[[relay.health_channel.node]]
id = "{NODE_ID}"
address = "{health}"
server_name = "localhost"
"#,
        id = plan.id,
        ip = plan.relay_ip,
    );
    for (i, (kind, url)) in backends.iter().enumerate() {
        let kind = match kind {
            SimKind::Vllm => "vllm",
            SimKind::Sglang => "sglang",
            SimKind::Tgi => "tgi",
            SimKind::Llamacpp => "llamacpp",
            SimKind::Ollama => "ollama",
            SimKind::Openai => "openai",
        };
        let _ = write!(
            text,
            r#"
[[backend]]
id = "{region}-{i}"
url = "{url}"
kind = "{kind}"
models = ["{MODEL}"]
slots = 4
"#,
            region = plan.id,
        );
    }
    text
}

/// What to try, printed once everything serves.
fn instructions(ready: &DemoReady, kept: bool) -> String {
    let dns = ready.dns_udp;
    let (ip, port) = (dns.ip(), dns.port());
    let relay_port = ready.regions.first().map_or(0, |r| r.https.port());
    let ca = ready.ca_file.display();
    let token = ready.admin_token_file.display();
    let admin = &ready.admin_url;
    let mut text = String::new();
    let _ = writeln!(text, "Meridian demo is serving.");
    let _ = writeln!(text, "  DNS node   {dns} (UDP+TCP), admin {admin}");
    for region in &ready.regions {
        let _ = writeln!(
            text,
            "  {:<9}  relay https://{} (HTTP/3 {}), admin {}",
            region.id,
            region.https,
            region.h3.map_or("off".to_string(), |a| a.to_string()),
            region.admin_url
        );
    }
    let _ = writeln!(text, "\nTry:");
    let _ = writeln!(
        text,
        "  # geo steering by EDNS Client Subnet: London, Ashburn, Mumbai\n  \
         dig @{ip} -p {port} {API_NAME} +subnet=81.2.69.0/24 +short\n  \
         dig @{ip} -p {port} {API_NAME} +subnet=3.80.0.0/24 +short\n  \
         dig @{ip} -p {port} {API_NAME} +subnet=49.36.0.0/24 +short\n  \
         # why that answer?\n  \
         dig @{ip} -p {port} _why.{API_NAME} TXT +subnet=81.2.69.0/24 +short\n"
    );
    let _ = writeln!(
        text,
        "  # stream a completion through the relay the DNS answer names\n  \
         RELAY=$(dig @{ip} -p {port} {API_NAME} +subnet=81.2.69.0/24 +short)\n  \
         curl -N --cacert {ca} --resolve {API_NAME}:{relay_port}:$RELAY \\\n    \
         https://{API_NAME}:{relay_port}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n",
        model = ready.model
    );
    let _ = writeln!(
        text,
        "  # region status, then drain eu-west and watch London move (status page: {admin}/)\n  \
         meridian ctl --admin {admin} status\n  \
         meridian ctl --admin {admin} --token-file {token} drain eu-west\n  \
         dig @{ip} -p {port} {API_NAME} +subnet=81.2.69.0/24 +short\n  \
         meridian ctl --admin {admin} --token-file {token} undrain eu-west\n"
    );
    let eu = ready
        .regions
        .iter()
        .find(|r| r.id == "eu-west")
        .map_or(String::new(), |r| {
            format!(" --relay-metrics eu-west={}/metrics", r.admin_url)
        });
    let _ = writeln!(
        text,
        "  # a planned drill with its measured convergence (report in ./drill-report)\n  \
         meridian drill --admin {admin} --token-file {token} --dns {dns} --name {API_NAME} \\\n    \
         --region eu-west --prefix 81.2.69.0/24 --prefix 81.2.80.0/24 --prefix 41.0.0.0/24{eu} \\\n    \
         --relay-token-file {token} --ttl-ramp 2 --out drill-report\n"
    );
    if !kept {
        let _ = writeln!(
            text,
            "Files (certificates, configs, token) are in a temporary folder removed on exit; \
             pass --dir DIR to keep them."
        );
    }
    let _ = writeln!(text, "Ctrl-C stops everything.");
    text
}
