//! `meridian drill`: rehearse a failover and measure it.
//!
//! A planned drill drains regions through a DNS node's admin API (optionally ramping the TTL
//! down first), samples the answers a set of client prefixes get (ECS queries straight to the
//! node) and the drained regions' relay counters, measures how fast answers and traffic left,
//! restores, measures how fast they came back, and writes a JSON and a Markdown report. An
//! unplanned drill instead silences a relay's health reports or kills it, and measures
//! detection and answer shift.
//!
//! Layout: [`measure`] is the pure core (figures from a recorded timeline); [`runner`] drives
//! one drill and guarantees restoration on every exit path (error, panic, Ctrl-C);
//! [`control`] holds the levers behind [`DrillControl`]; [`probe`] queries DNS and parses
//! relay metrics; [`report`] renders. This module only turns the command line into a plan.
//! Nothing here decides steering: the drill observes the DNS node from outside, as a resolver
//! would, and its figures are only as fine as the sample interval.

pub mod control;
pub mod http;
pub mod measure;
pub mod probe;
pub mod report;
pub mod runner;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

pub use control::{AdminControl, ControlError, ControlStatus, DrillControl, RegionState};
pub use probe::EndpointMap;
pub use report::{DrillReport, Outcome};
pub use runner::{Disruption, DrillPlan, run_drill};

/// Exit status when the drill could not restore everything it changed: an operator must look.
pub const EXIT_NOT_RESTORED: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// The DNS node's admin API, e.g. http://127.0.0.1:9954.
    #[arg(long)]
    pub admin: String,
    /// File holding the admin bearer token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The DNS node's UDP address to query, e.g. 127.0.0.1:5353.
    #[arg(long)]
    pub dns: SocketAddr,
    /// The GSLB name to sample.
    #[arg(long)]
    pub name: String,
    /// Record type to query (A or AAAA).
    #[arg(long, default_value = "A")]
    pub qtype: String,
    /// Region to drain (planned) or take out (unplanned); repeatable.
    #[arg(long = "region", required = true)]
    pub regions: Vec<String>,
    /// Client prefix to sample, sent as EDNS Client Subnet; repeatable.
    #[arg(long = "prefix", required = true)]
    pub prefixes: Vec<IpNet>,
    /// The DNS node's configuration, to recognise each region's endpoints in answers.
    #[arg(long)]
    pub dns_config: Option<PathBuf>,
    /// A region's endpoints, `REGION=ADDR[,ADDR…]` (an address or a CNAME target); repeatable.
    /// Adds to --dns-config.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<RegionValue>,
    /// A region relay's Prometheus endpoint, `REGION=URL`; repeatable.
    #[arg(long = "relay-metrics")]
    pub relay_metrics: Vec<RegionValue>,
    /// Cap answers' TTL at SECONDS first and wait out the previous TTL before draining.
    #[arg(long)]
    pub ttl_ramp: Option<u32>,
    /// Bearer-token file of the relays' admin listeners (their `relay.admin_token_file`):
    /// sent with `--unplanned pause-reports` and `--relay-metrics` calls.
    #[arg(long)]
    pub relay_token_file: Option<PathBuf>,
    /// Unplanned drill: `pause-reports=RELAY_ADMIN_URL` stops that relay's health reports.
    #[arg(long, conflicts_with = "kill_pid")]
    pub unplanned: Option<Unplanned>,
    /// Unplanned drill: kill this relay process (it is not restarted).
    #[arg(long)]
    pub kill_pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    pub sample_interval_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub query_timeout_ms: u64,
    /// Bound on each phase; on timeout the drill restores and reports "did not converge".
    #[arg(long, default_value_t = 60)]
    pub max_wait_s: u64,
    /// Stay drained this long after convergence.
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// How long a relay must be idle with a still counter to count as drained.
    #[arg(long, default_value_t = 2000)]
    pub traffic_quiet_ms: u64,
    /// Folder for drill-report.json and drill-report.md.
    #[arg(long)]
    pub out: PathBuf,
}

/// `REGION=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionValue {
    pub region: String,
    pub value: String,
}

impl FromStr for RegionValue {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((region, value)) if !region.is_empty() && !value.is_empty() => Ok(RegionValue {
                region: region.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("expected REGION=VALUE, got {text:?}")),
        }
    }
}

/// The `--unplanned` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplanned {
    PauseReports { relay_admin: String },
}

impl FromStr for Unplanned {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some(("pause-reports", url)) if url.starts_with("http://") => Ok(Self::PauseReports {
                relay_admin: url.to_owned(),
            }),
            _ => Err(format!(
                "expected pause-reports=http://RELAY_ADMIN, got {text:?}"
            )),
        }
    }
}

/// Why the command line does not make a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--name {name:?}: {message}")]
    Name { name: String, message: String },
    #[error("--qtype {0:?}: only A and AAAA are sampled")]
    Qtype(String),
    #[error("--dns-config {path}: {message}")]
    DnsConfig { path: PathBuf, message: String },
    #[error("--endpoint {region}={value}: not an IP address or DNS name")]
    Endpoint { region: String, value: String },
    #[error("--relay-metrics {0}: not one of the drilled regions")]
    RelayRegion(String),
    #[error("--sample-interval-ms and --query-timeout-ms must be at least 1")]
    ZeroInterval,
    #[error("--ttl-ramp must be at least 1 second")]
    ZeroTtl,
}

/// The plan the command line describes (the token and admin client are the caller's).
pub fn plan_from_args(args: &DrillArgs) -> Result<DrillPlan, PlanError> {
    let name = Name::from_str(&args.name)
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .map_err(|e| PlanError::Name {
            name: args.name.clone(),
            message: e.to_string(),
        })?;
    let qtype = match args.qtype.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        _ => return Err(PlanError::Qtype(args.qtype.clone())),
    };
    let mut endpoints = match &args.dns_config {
        Some(path) => crate::config::load_dns_config(path)
            .map(|config| EndpointMap::from_config(&config))
            .map_err(|e| PlanError::DnsConfig {
                path: path.clone(),
                message: e.to_string(),
            })?,
        None => EndpointMap::default(),
    };
    for RegionValue { region, value } in &args.endpoints {
        for item in value.split(',') {
            if let Ok(address) = item.parse::<IpAddr>() {
                endpoints.insert_address(region, address);
            } else if Name::from_str(item).is_ok() && item.contains('.') {
                endpoints.insert_name(region, item);
            } else {
                return Err(PlanError::Endpoint {
                    region: region.clone(),
                    value: item.to_owned(),
                });
            }
        }
    }
    let regions: Vec<Arc<str>> = args.regions.iter().map(|r| Arc::from(r.as_str())).collect();
    if args.sample_interval_ms == 0 || args.query_timeout_ms == 0 {
        return Err(PlanError::ZeroInterval);
    }
    if args.ttl_ramp == Some(0) {
        return Err(PlanError::ZeroTtl);
    }
    let mut plan = DrillPlan::new(args.dns, name, regions, args.prefixes.clone(), endpoints);
    plan.qtype = qtype;
    plan.relay_metrics = args
        .relay_metrics
        .iter()
        .map(|rv| {
            if args.regions.contains(&rv.region) {
                Ok((Arc::from(rv.region.as_str()), rv.value.clone()))
            } else {
                Err(PlanError::RelayRegion(rv.region.clone()))
            }
        })
        .collect::<Result<_, _>>()?;
    plan.ttl_ramp = args.ttl_ramp;
    plan.disruption = match (&args.unplanned, args.kill_pid) {
        (Some(Unplanned::PauseReports { relay_admin }), _) => Disruption::PauseReports {
            relay_admin: relay_admin.clone(),
        },
        (None, Some(pid)) => Disruption::Kill { pid },
        (None, None) => Disruption::Drain,
    };
    plan.sample_interval = Duration::from_millis(args.sample_interval_ms);
    plan.query_timeout = Duration::from_millis(args.query_timeout_ms);
    plan.max_wait = Duration::from_secs(args.max_wait_s);
    plan.hold = Duration::from_secs(args.hold_s);
    plan.traffic_quiet = Duration::from_millis(args.traffic_quiet_ms);
    plan.admin_url = args.admin.clone();
    Ok(plan)
}

/// `meridian drill`: runs the drill, writes the reports, prints a summary. Exit status 0 when
/// it converged and restored, 1 when it did not converge or stopped early, 3 when restoration
/// is incomplete, 64 for bad arguments.
/// Regions the plan cannot recognise in answers yet (no `--endpoint`, no `--dns-config`) learn
/// their endpoints from the node's own status, so a drill needs nothing but the admin URL.
async fn learn_endpoints(
    plan: &mut DrillPlan,
    admin: &crate::admin::client::AdminClient,
) -> Result<(), String> {
    let status = admin.status().await.map_err(|error| {
        format!(
            "cannot read the node's status from {}: {error}",
            plan.admin_url
        )
    })?;
    for region in &status.regions {
        if plan.endpoints.knows(&region.id) {
            continue;
        }
        for endpoint in &region.endpoints {
            match endpoint.parse::<IpAddr>() {
                Ok(address) => plan.endpoints.insert_address(&region.id, address),
                Err(_) => plan.endpoints.insert_name(&region.id, endpoint),
            }
        }
    }
    match plan.regions.iter().find(|r| !plan.endpoints.knows(r)) {
        Some(missing) => Err(format!(
            "region `{missing}` is not a region of the node at {} (or has no endpoints)",
            plan.admin_url
        )),
        None => Ok(()),
    }
}

pub fn run(args: DrillArgs) -> ExitCode {
    let plan = match plan_from_args(&args) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("meridian drill: {error}");
            return ExitCode::from(crate::cli::EXIT_INVALID);
        }
    };
    // The same checks as the node and `meridian ctl` (non-empty, not readable by others).
    let token = match crate::admin::AdminToken::from_file(&args.token_file) {
        Ok(token) => token.reveal().to_owned(),
        Err(error) => {
            eprintln!("meridian drill: {error}");
            return ExitCode::from(crate::cli::EXIT_INVALID);
        }
    };
    let mut plan = plan;
    if let Some(path) = &args.relay_token_file {
        match crate::admin::AdminToken::from_file(path) {
            Ok(token) => plan.relay_token = Some(token),
            Err(error) => {
                eprintln!("meridian drill: --relay-token-file: {error}");
                return ExitCode::from(crate::cli::EXIT_INVALID);
            }
        }
    }
    let admin = match crate::admin::client::AdminClient::new(&args.admin, Some(token)) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("meridian drill: --admin {}: {error}", args.admin);
            return ExitCode::from(crate::cli::EXIT_INVALID);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meridian drill: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(message) = runtime.block_on(learn_endpoints(&mut plan, &admin)) {
        eprintln!("meridian drill: {message}");
        return ExitCode::FAILURE;
    }
    let control = AdminControl::new(
        admin,
        http::HttpCaller::new(plan.call_timeout).with_token(plan.relay_token.clone()),
    );
    let report = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_interrupt = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("meridian drill: interrupted — aborting and restoring");
                on_interrupt.cancel();
            }
        });
        run_drill(&plan, &control, cancel).await
    });
    print!("{}", report.summary());
    match report.write(&args.out) {
        Ok((json, markdown)) => println!("  reports: {} {}", json.display(), markdown.display()),
        Err(error) => {
            eprintln!(
                "meridian drill: cannot write the reports into {}: {error}",
                args.out.display()
            );
            // The figures are lost, but the terminal still has the summary.
            return ExitCode::FAILURE;
        }
    }
    if !report.restoration.complete {
        ExitCode::from(EXIT_NOT_RESTORED)
    } else if report.outcome == Outcome::Converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        drill: DrillArgs,
    }

    fn parse(extra: &[&str]) -> Result<DrillPlan, String> {
        let mut argv = vec![
            "drill",
            "--admin",
            "http://127.0.0.1:9954",
            "--token-file",
            "t",
            "--dns",
            "127.0.0.1:5353",
            "--name",
            "api.example.test",
            "--region",
            "eu-west",
            "--prefix",
            "81.2.69.0/24",
            "--out",
            "o",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.kind().to_string())?;
        plan_from_args(&cli.drill).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plan_never_shows_the_relay_token() {
        let mut plan = parse(&[]).unwrap();
        plan.relay_token = Some(
            crate::admin::AdminToken::parse("hunter2-relay", std::path::Path::new("t")).unwrap(),
        );
        let shown = format!("{plan:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn command_lines_make_plans() {
        let plan = parse(&["--endpoint", "eu-west=198.51.100.10,lb.eu.example.net"]).unwrap();
        assert_eq!(plan.disruption, Disruption::Drain);
        assert_eq!(plan.name.to_ascii(), "api.example.test.");
        assert!(plan.endpoints.knows("eu-west"));
        assert_eq!(plan.sample_interval, Duration::from_millis(100));

        let plan = parse(&[
            "--unplanned",
            "pause-reports=http://127.0.0.1:9101",
            "--relay-metrics",
            "eu-west=http://127.0.0.1:9101/metrics",
            "--ttl-ramp",
            "5",
        ])
        .unwrap();
        assert_eq!(
            plan.disruption,
            Disruption::PauseReports {
                relay_admin: "http://127.0.0.1:9101".into()
            }
        );
        assert_eq!(plan.relay_metrics.len(), 1);
        assert_eq!(plan.ttl_ramp, Some(5));
        assert_eq!(
            parse(&["--kill-pid", "42"]).unwrap().disruption,
            Disruption::Kill { pid: 42 }
        );

        let rejected: &[(&[&str], &str)] = &[
            (&["--endpoint", "eu-west=???"], "not an IP address"),
            (
                &["--relay-metrics", "us-east=http://x/metrics"],
                "not one of",
            ),
            (&["--ttl-ramp", "0"], "at least 1 second"),
            (&["--qtype", "MX"], "only A and AAAA"),
            (&["--unplanned", "stop=http://x"], "invalid value"),
            (
                &["--unplanned", "pause-reports=http://x", "--kill-pid", "1"],
                "cannot be used",
            ),
        ];
        for (extra, message) in rejected {
            let error = parse(extra).unwrap_err();
            assert!(error.contains(message), "{extra:?}: {error}");
        }
    }
}
