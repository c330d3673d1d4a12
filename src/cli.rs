//! The `meridian` command line: subcommands, exit codes, the ready file.
//!
//! Owns process-level concerns (argument parsing, logging set-up, signals, exit status) and
//! wires the library together; it holds no DNS or steering logic of its own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::{error, info};

use crate::{
    config,
    dns::server::{self, Listeners, ServerLimits},
    geo::{self, GeoDb},
    metrics::{self, Metrics},
    operator_state::OperatorState,
    reload,
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
    },
    /// Validate a configuration, its zone files and GeoIP database without binding anything.
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
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Dns {
            config,
            listen,
            metrics_listen,
            ready_file,
        } => run_dns(
            &config_path(config),
            Overrides {
                listen,
                metrics_listen,
            },
            ready_file,
        ),
        Command::Check { config } => check(&config_path(config)),
        Command::Geoip {
            command: GeoipCommand::Build { csv, out },
        } => build_geoip(&csv, &out),
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
    let snapshot = store.load_full();
    let addresses = if overrides.listen.is_empty() {
        snapshot.config.listen.clone()
    } else {
        overrides.listen
    };
    let listeners = Listeners::bind(&addresses).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.reload_loaded(snapshot.generation);
    let (shutdown_tx, shutdown) = watch::channel(false);

    let metrics_listener = match overrides.metrics_listen.or(snapshot.config.metrics_listen) {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot bind metrics listener {address}"))?,
        ),
        None => None,
    };
    let ready = ReadyFile {
        udp: listeners.udp_addresses()?,
        tcp: listeners.tcp_addresses()?,
        metrics: metrics_listener.as_ref().and_then(metrics::describe),
        pid: std::process::id(),
        generation: snapshot.generation,
    };
    let limits = ServerLimits {
        tcp_idle_timeout: Duration::from_millis(snapshot.config.limits.tcp_idle_timeout_ms),
        max_tcp_connections: snapshot.config.limits.max_tcp_connections,
    };
    drop(snapshot);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve_metrics(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(reload::run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(server::serve(
        listeners,
        store.clone(),
        metrics.clone(),
        limits,
        shutdown.clone(),
    ));
    info!(
        udp = ?ready.udp,
        tcp = ?ready.tcp,
        metrics = ?ready.metrics,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    if let Some(path) = &ready_file {
        ready.write(path)?;
    }

    wait_for_termination().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn wait_for_termination() {
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

/// What scripts and tests read to find the server: never guess ports, never sleep.
#[derive(serde::Serialize)]
struct ReadyFile {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    metrics: Option<SocketAddr>,
    pid: u32,
    generation: u64,
}

impl ReadyFile {
    /// Written to a temporary name and renamed, so a reader never sees half a file.
    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }
}

/// `meridian check`: every problem in the config, every zone file and the GeoIP database,
/// reported at once.
fn check(config_path: &Path) -> ExitCode {
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
    ExitCode::SUCCESS
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
