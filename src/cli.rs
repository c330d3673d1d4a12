//! The `meridian` command line: subcommands, exit codes, the ready file.
//!
//! Owns process-level concerns (argument parsing, logging set-up, signals, exit status) and
//! wires the library together; it holds no DNS or steering logic of its own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::{
    config,
    dns::node::{DnsNode, NodeOptions},
    geo::{self, GeoDb},
    operator_state::OperatorState,
    relay::{
        config::{self as relay_config, ConfigKind},
        server::{RelayHandle, StartError},
        tls,
    },
    snapshot::{Snapshot, SnapshotStore},
    zone::Zone,
};

/// Exit status for invalid configuration, zone or GeoIP data (BSD EX_USAGE, as the issue
/// tracker and operators' scripts expect).
pub const EXIT_INVALID: u8 = 64;

/// The bundled example, as shipped in the repository.
const BUNDLED_CONFIG: &str = "zones/meridian.toml";

#[derive(Parser, Debug)]
#[command(name = "meridian", version, about = "Edge DNS GSLB for LLM APIs")]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the authoritative DNS server.
    Dns {
        /// Configuration file (default: the bundled example, zones/meridian.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address for UDP and TCP, repeatable; overrides the config. Port 0 picks one.
        #[arg(long = "listen")]
        listen: Vec<SocketAddr>,
        /// Prometheus `/metrics` listen address; overrides `server.metrics_listen`. Port 0 allowed.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Write a JSON object with the bound addresses here once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// With `[anycast]`: keep answering this long after the route is withdrawn on
        /// shutdown, before the listeners close.
        #[arg(long, default_value_t = crate::anycast::DEFAULT_WITHDRAW_LINGER.as_millis() as u64)]
        withdraw_linger_ms: u64,
    },
    /// Run a relay: HTTPS (h1/h2) and HTTP/3 in front of one region's LLM backends.
    Relay {
        /// Relay configuration file (see deploy/relay/relay.toml).
        #[arg(long)]
        config: PathBuf,
        /// Write a JSON object with the bound addresses here once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Operate a DNS node through its admin API: status, drain, undrain, weights, TTL cap.
    Ctl(crate::admin::ctl::CtlArgs),
    /// Drain (or take out) regions, measure how answers and traffic move, restore, report.
    Drill(Box<crate::drill::DrillArgs>),
    /// The whole system on loopback: a DNS node, three regions of relays with simulated
    /// backends, certificates made on the fly. Prints what to try.
    Demo(crate::demo::DemoArgs),
    /// Run a simulated OpenAI-compatible LLM backend (tests, demos, benchmarks).
    SimBackend(crate::sim_backend::SimBackendArgs),
    /// Validate a configuration (DNS or relay) and the files it names, without binding anything.
    Check {
        /// Configuration file (default: the bundled example).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// GeoIP database tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// Certificate tools.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a deployment's CA and the certificates of its relays and DNS nodes.
    Deployment {
        /// Folder to write into (created if missing); existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// A region's relay: `ID[=NAME,…]`, NAMEs being DNS names or IPs its HTTPS serves
        /// (e.g. `eu-west=api.example.test,127.0.1.1`); repeatable.
        #[arg(long = "region", required = true)]
        regions: Vec<crate::health::pki::Member>,
        /// A DNS node: `ID[=NAME,…]`, the names or IPs relays connect to (default: ID); repeatable.
        #[arg(long = "node", required = true)]
        nodes: Vec<crate::health::pki::Member>,
    },
    /// Write a self-signed certificate and key for local use (the relay example, tests, demos).
    /// Never for production: clients must be told to trust it explicitly.
    SelfSigned {
        /// Folder to write `relay.pem` and `relay-key.pem` into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address the certificate is for; repeatable.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GeoipCommand {
    /// Build a MaxMind DB (GeoIP2-City layout) from a CSV file, reproducibly.
    Build {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE) like every other invalid input; --help and --version
    // still exit 0 through clap.
    let cli = Cli::try_parse().unwrap_or_else(|error| {
        if error.use_stderr() {
            let _ = error.print();
            std::process::exit(i32::from(EXIT_INVALID));
        }
        error.exit()
    });
    init_logging(cli.log_json);
    match cli.command {
        Command::Dns {
            config,
            listen,
            metrics_listen,
            ready_file,
            withdraw_linger_ms,
        } => run_dns(
            &config_path(config),
            Overrides {
                listen,
                metrics_listen,
                withdraw_linger: std::time::Duration::from_millis(withdraw_linger_ms),
            },
            ready_file,
        ),
        Command::Check { config } => check(&config_path(config)),
        Command::Relay { config, ready_file } => run_relay(&config, ready_file),
        Command::SimBackend(args) => crate::sim_backend::run(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Ctl(args) => crate::admin::ctl::run(args),
        Command::Drill(args) => crate::drill::run(*args),
        Command::Geoip {
            command: GeoipCommand::Build { csv, out },
        } => build_geoip(&csv, &out),
        Command::Certs {
            command: CertsCommand::SelfSigned { out, names },
        } => self_signed(&out, &names),
        Command::Certs {
            command:
                CertsCommand::Deployment {
                    out,
                    regions,
                    nodes,
                },
        } => deployment_certs(&out, &regions, &nodes),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The config to use: the given one, else the bundled example found from the working
/// directory or, failing that, from where this binary was built.
fn config_path(given: Option<PathBuf>) -> PathBuf {
    if let Some(path) = given {
        return path;
    }
    let local = PathBuf::from(BUNDLED_CONFIG);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_CONFIG)
}

/// Command-line settings that win over the config file.
struct Overrides {
    listen: Vec<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    withdraw_linger: std::time::Duration,
}

fn run_dns(config: &Path, overrides: Overrides, ready_file: Option<PathBuf>) -> ExitCode {
    let started = Instant::now();
    let store = match SnapshotStore::open(config) {
        Ok(store) => Arc::new(store),
        Err(error) => {
            eprintln!("meridian: {error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
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
    match runtime.block_on(serve_dns(store, overrides, ready_file, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            eprintln!("meridian: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_dns(
    store: Arc<SnapshotStore>,
    overrides: Overrides,
    ready_file: Option<PathBuf>,
    started: Instant,
) -> anyhow::Result<()> {
    let generation = store.load().generation;
    let node = DnsNode::start(
        store,
        NodeOptions {
            listen: overrides.listen,
            metrics_listen: overrides.metrics_listen,
            withdraw_linger: overrides.withdraw_linger,
        },
    )
    .await?;
    let addresses = &node.addresses;
    info!(
        udp = ?addresses.udp,
        tcp = ?addresses.tcp,
        metrics = ?addresses.metrics,
        admin = ?addresses.admin,
        health = ?addresses.health,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    let ready = ReadyFile {
        udp: addresses.udp.clone(),
        tcp: addresses.tcp.clone(),
        metrics: addresses.metrics,
        admin: addresses.admin,
        health: addresses.health,
        pid: std::process::id(),
        generation,
    };
    if let Some(path) = &ready_file {
        ready.write(path)?;
    }

    wait_for_termination().await;
    info!("shutting down");
    node.shutdown().await;
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Until SIGTERM or SIGINT (Ctrl-C); forever if signal handlers cannot be installed.
pub(crate) async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; serve until then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn run_relay(config_path: &Path, ready_file: Option<PathBuf>) -> ExitCode {
    let config = match relay_config::load_relay_config(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
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
    runtime.block_on(async move {
        let grace = config.timeouts.total;
        let mut relay = match RelayHandle::start(config).await {
            Ok(relay) => relay,
            Err(
                error @ (StartError::Tls(_)
                | StartError::HealthChannel(_)
                | StartError::AdminToken(_)),
            ) => {
                eprintln!("meridian: {error}");
                return ExitCode::from(EXIT_INVALID);
            }
            Err(error) => {
                eprintln!("meridian: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &ready_file {
            let ready = serde_json::json!({
                "https": relay.https, "h3": relay.h3, "plain": relay.plain,
                "admin": relay.admin, "pid": std::process::id(),
            });
            if let Err(error) = write_atomically(path, &ready.to_string()) {
                eprintln!("meridian: {error:#}");
                return ExitCode::FAILURE;
            }
        }
        tokio::select! {
            () = wait_for_termination() => info!("signal received: draining"),
            _ = relay.drain_requested.wait_for(|drain| *drain) => info!("drain requested: draining"),
        }
        relay.drain_and_stop(grace).await;
        if let Some(path) = &ready_file {
            let _ = std::fs::remove_file(path);
        }
        ExitCode::SUCCESS
    })
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

/// What scripts and tests read to find the server: never guess ports, never sleep.
#[derive(serde::Serialize)]
struct ReadyFile {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    metrics: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    health: Option<SocketAddr>,
    pid: u32,
    generation: u64,
}

impl ReadyFile {
    fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, &serde_json::to_string_pretty(self)?)
    }
}

/// `meridian check`: every problem in the config and the files it names, reported at once.
/// A file with a top-level `[relay]` table is a relay config; anything else a DNS config.
fn check(config_path: &Path) -> ExitCode {
    let kind = std::fs::read_to_string(config_path)
        .map(|text| relay_config::config_kind(&text))
        .unwrap_or(ConfigKind::Dns);
    match kind {
        ConfigKind::Dns => check_dns(config_path),
        ConfigKind::Relay => check_relay(config_path),
    }
}

fn check_relay(config_path: &Path) -> ExitCode {
    let config = match relay_config::load_relay_config(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    tls::install_crypto_provider();
    if let Err(error) = tls::CertStore::load(config.tls.clone()) {
        eprintln!("{}: {error}", config_path.display());
        eprintln!("{}: 1 problem(s) found", config_path.display());
        return ExitCode::from(EXIT_INVALID);
    }
    // `[relay.health_channel]`: the files load and the certificate names `relay.region`.
    if let Err(error) = crate::health::HealthSenderConfig::from_relay(&config) {
        eprintln!("{}: {error}", config_path.display());
        eprintln!("{}: 1 problem(s) found", config_path.display());
        return ExitCode::from(EXIT_INVALID);
    }
    if let Err(error) = crate::relay::admin::load_token(&config) {
        eprintln!("{}: relay.admin_token_file: {error}", config_path.display());
        eprintln!("{}: 1 problem(s) found", config_path.display());
        return ExitCode::from(EXIT_INVALID);
    }
    let keys = std::iter::once(&config.tls.key).chain(config.health_channel.iter().map(|c| &c.key));
    for exposed in keys.filter_map(|key| crate::health::pki::key_file_exposure(key)) {
        eprintln!("{}: warning: {exposed}", config_path.display());
    }
    println!(
        "{}: ok — relay for region {}, {} backend(s), TLS certificate loaded",
        config_path.display(),
        config.region,
        config.backends.len()
    );
    ExitCode::SUCCESS
}

fn check_dns(config_path: &Path) -> ExitCode {
    let config = match config::load_dns_config(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let mut problems = Vec::new();
    let mut records = 0usize;
    for source in &config.zones {
        match Zone::load(&source.origin, &source.file) {
            Ok(zone) => records += zone.record_count(),
            Err(error) => problems.push(format!("zone {}: {error}", source.origin)),
        }
    }
    let mut geo_summary = String::from("none");
    if let Some(source) = &config.geoip {
        match GeoDb::open(&source.path) {
            Ok(db) => {
                let info = db.info();
                geo_summary = format!("{} (built {})", info.database_type, info.build_epoch);
            }
            Err(error) => problems.push(error.to_string()),
        }
    }
    if let Some(path) = &config.operator_state_file
        && let Err(error) = OperatorState::load(path)
    {
        problems.push(error.to_string());
    }
    if let Some(admin) = &config.admin
        && let Err(error) = crate::admin::AdminToken::from_file(&admin.token_file)
    {
        problems.push(format!("admin.token_file: {error}"));
    }
    if let Some(exposed) = config
        .health
        .as_ref()
        .and_then(|health| crate::health::pki::key_file_exposure(&health.key))
    {
        eprintln!("{}: warning: {exposed}", config_path.display());
    }
    let mut notes = Vec::new();
    if let Some(anycast) = &config.anycast {
        match crate::anycast::check_blocking(anycast) {
            Ok(outcome) => notes.push(outcome.to_string()),
            Err(error) => problems.push(format!("anycast: {error}")),
        }
    }
    if problems.is_empty() {
        // Cross-file rules (GSLB names against zone data) need everything loaded.
        if let Err(error) = Snapshot::build(config.clone(), 0) {
            problems.push(error.to_string());
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        eprintln!(
            "{}: {} problem(s) found",
            config_path.display(),
            problems.len()
        );
        return ExitCode::from(EXIT_INVALID);
    }
    println!(
        "{}: ok — {} zone(s), {} record(s), {} region(s), {} GSLB name(s), GeoIP: {}",
        config_path.display(),
        config.zones.len(),
        records,
        config.regions.len(),
        config.gslb.len(),
        geo_summary
    );
    for note in notes {
        println!("  {note}");
    }
    ExitCode::SUCCESS
}

fn self_signed(out: &Path, names: &[String]) -> ExitCode {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (cert, key) = match tls::self_signed(&names) {
        Ok(pair) => pair,
        Err(error) => {
            eprintln!("meridian: {error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(out.join("relay.pem"), cert))
        .and_then(|()| write_private(&out.join("relay-key.pem"), key.as_bytes()));
    match written {
        Ok(()) => {
            println!(
                "wrote {} and {} for {}",
                out.join("relay.pem").display(),
                out.join("relay-key.pem").display(),
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("meridian: cannot write into {}: {error}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn deployment_certs(
    out: &Path,
    regions: &[crate::health::pki::Member],
    nodes: &[crate::health::pki::Member],
) -> ExitCode {
    match crate::health::pki::write_deployment(out, regions, nodes, std::time::SystemTime::now()) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error @ crate::health::pki::PkiError::Io { .. }) => {
            eprintln!("meridian: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("meridian: {error}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn build_geoip(csv: &Path, out: &Path) -> ExitCode {
    match geo::build_database_from_csv(csv) {
        Ok(bytes) => match std::fs::write(out, &bytes) {
            Ok(()) => {
                println!("wrote {} ({} bytes)", out.display(), bytes.len());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("meridian: cannot write {}: {error}", out.display());
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("meridian: {error}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
