//! `meridian ctl`: the admin API from a shell.
//!
//! Human-readable output by default, the server's JSON with `--json`. Exit status: 0 done,
//! 1 the node refused or could not be reached (its message is printed), 64 usage (including
//! a change asked for without `--token-file`, or a token file that cannot be used).

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use http::Method;

use super::{
    client::{AdminClient, ClientError},
    model::{MaxTtl, RegionAction, RegionResponse, RegionView, Status, WeightRequest},
    token::AdminToken,
};

/// BSD EX_USAGE, as `meridian check` uses.
const EXIT_USAGE: u8 = 64;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Base URL of the DNS node's admin API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9954")]
    pub admin: String,
    /// File holding the admin bearer token (needed for every change; must be chmod 600).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the node's answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// Regions (health, headroom, operator state, report age), generation and TTL cap.
    Status,
    /// Stop sending new clients to REGION (persisted; survives restarts).
    Drain { region: String },
    /// Back to automatic: health decides whether REGION serves.
    Undrain { region: String },
    /// Never answer with REGION, whatever its health.
    ForceDown { region: String },
    /// Answer with REGION even when its health says down.
    ForceUp { region: String },
    /// Set REGION's weight in percent of its capacity (0..=1000) for weighted policies.
    Weight { region: String, weight: u32 },
    /// Cap every GSLB answer's TTL at N seconds, or `clear` the cap.
    MaxTtl {
        #[arg(value_name = "N|clear", value_parser = parse_max_ttl)]
        value: MaxTtlValue,
    },
}

/// `max-ttl`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTtlValue {
    Seconds(u32),
    Clear,
}

fn parse_max_ttl(text: &str) -> Result<MaxTtlValue, String> {
    if text == "clear" {
        return Ok(MaxTtlValue::Clear);
    }
    match text.parse::<u32>() {
        Ok(seconds @ 1..) => Ok(MaxTtlValue::Seconds(seconds)),
        _ => Err("expected a number of seconds (at least 1) or `clear`".to_owned()),
    }
}

impl CtlCommand {
    fn changes_state(&self) -> bool {
        !matches!(self, Self::Status)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Drain { .. } => "drain",
            Self::Undrain { .. } => "undrain",
            Self::ForceDown { .. } => "force-down",
            Self::ForceUp { .. } => "force-up",
            Self::Weight { .. } => "weight",
            Self::MaxTtl { .. } => "max-ttl",
        }
    }

    /// Method, path and body of the admin call.
    fn request(&self) -> (Method, String, Option<Vec<u8>>) {
        let action = |region: &str, action: RegionAction| {
            (
                Method::POST,
                format!("/v1/regions/{region}/{}", action.path_segment()),
                None,
            )
        };
        match self {
            Self::Status => (Method::GET, "/v1/status".to_owned(), None),
            Self::Drain { region } => action(region, RegionAction::Drain),
            Self::Undrain { region } => action(region, RegionAction::Undrain),
            Self::ForceDown { region } => action(region, RegionAction::ForceDown),
            Self::ForceUp { region } => action(region, RegionAction::ForceUp),
            Self::Weight { region, weight } => (
                Method::PUT,
                format!("/v1/regions/{region}/weight"),
                serde_json::to_vec(&WeightRequest { weight: *weight }).ok(),
            ),
            Self::MaxTtl {
                value: MaxTtlValue::Seconds(seconds),
            } => (
                Method::PUT,
                "/v1/max-ttl".to_owned(),
                serde_json::to_vec(&MaxTtl {
                    max_ttl: Some(*seconds),
                })
                .ok(),
            ),
            Self::MaxTtl {
                value: MaxTtlValue::Clear,
            } => (Method::DELETE, "/v1/max-ttl".to_owned(), None),
        }
    }
}

pub fn run(args: CtlArgs) -> ExitCode {
    let token = match (&args.token_file, args.command.changes_state()) {
        (Some(path), _) => match AdminToken::from_file(path) {
            Ok(token) => Some(token),
            Err(error) => return usage(&error.to_string()),
        },
        (None, true) => {
            return usage(&format!(
                "`{}` changes the node's state: give --token-file FILE",
                args.command.name()
            ));
        }
        (None, false) => None,
    };
    let secret = token.map(|t| t.reveal().to_owned());
    let client = match AdminClient::new(&args.admin, secret) {
        Ok(client) => client.with_timeout(Duration::from_secs(args.timeout.max(1))),
        Err(error) => return usage(&error.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meridian ctl: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (method, path, body) = args.command.request();
    match runtime.block_on(client.call_json(method, &path, body)) {
        Ok(value) => match render(&args.command, args.json, value) {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) is not the node's failure.
                let _ = out.write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        Err(error) => fail(&error),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("meridian ctl: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn fail(error: &ClientError) -> ExitCode {
    eprintln!("meridian ctl: {error}");
    ExitCode::FAILURE
}

/// What to print for the server's successful answer.
fn render(
    command: &CtlCommand,
    json: bool,
    value: serde_json::Value,
) -> Result<String, ClientError> {
    if json {
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        return Ok(text);
    }
    let decode = |error: serde_json::Error| ClientError::Decode {
        url: String::new(),
        message: error.to_string(),
    };
    Ok(match command {
        CtlCommand::Status => {
            status_table(&serde_json::from_value::<Status>(value).map_err(decode)?)
        }
        CtlCommand::MaxTtl { .. } => {
            match serde_json::from_value::<MaxTtl>(value).map_err(decode)? {
                MaxTtl { max_ttl: Some(ttl) } => format!("GSLB answers' TTL capped at {ttl} s\n"),
                MaxTtl { max_ttl: None } => "TTL cap removed\n".to_owned(),
            }
        }
        _ => {
            let RegionResponse { region } = serde_json::from_value(value).map_err(decode)?;
            region_table(std::slice::from_ref(&region))
        }
    })
}

pub fn status_table(status: &Status) -> String {
    let mut text = format!(
        "generation {}, TTL cap {}, health channel {}\n",
        status.generation,
        status
            .max_ttl
            .map_or_else(|| "none".to_owned(), |ttl| format!("{ttl} s")),
        status.health_channel.as_ref().map_or_else(
            || "not configured".to_owned(),
            |channel| format!("on {}", channel.listen)
        ),
    );
    text.push_str(&region_table(&status.regions));
    text
}

/// A table with a header row, columns padded to their widest cell.
pub fn region_table(regions: &[RegionView]) -> String {
    let header = [
        "REGION",
        "SERVING",
        "ADMIN",
        "HEALTH",
        "HEADROOM",
        "SPILLING",
        "WEIGHT",
        "REPORT AGE",
    ];
    let rows: Vec<[String; 8]> = regions
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                if r.serving { "yes" } else { "no" }.to_owned(),
                r.admin.as_str().to_owned(),
                r.health.clone(),
                r.headroom
                    .map_or_else(|| "-".to_owned(), |h| format!("{:.0}%", h * 100.0)),
                r.spilling
                    .map_or("-", |s| if s { "yes" } else { "no" })
                    .to_owned(),
                format!("{}%", r.weight),
                r.report_age_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                ),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator_state::AdminState;

    #[test]
    fn max_ttl_argument() {
        assert_eq!(parse_max_ttl("clear"), Ok(MaxTtlValue::Clear));
        assert_eq!(parse_max_ttl("5"), Ok(MaxTtlValue::Seconds(5)));
        assert!(parse_max_ttl("0").is_err());
        assert!(parse_max_ttl("-3").is_err());
        assert!(parse_max_ttl("soon").is_err());
    }

    #[test]
    fn requests_per_command() {
        let cases = [
            (CtlCommand::Status, Method::GET, "/v1/status", None),
            (
                CtlCommand::Undrain {
                    region: "eu-west".into(),
                },
                Method::POST,
                "/v1/regions/eu-west/undrain",
                None,
            ),
            (
                CtlCommand::Weight {
                    region: "eu-west".into(),
                    weight: 50,
                },
                Method::PUT,
                "/v1/regions/eu-west/weight",
                Some(r#"{"weight":50}"#),
            ),
            (
                CtlCommand::MaxTtl {
                    value: MaxTtlValue::Seconds(5),
                },
                Method::PUT,
                "/v1/max-ttl",
                Some(r#"{"max_ttl":5}"#),
            ),
            (
                CtlCommand::MaxTtl {
                    value: MaxTtlValue::Clear,
                },
                Method::DELETE,
                "/v1/max-ttl",
                None,
            ),
        ];
        for (command, method, path, body) in cases {
            let (m, p, b) = command.request();
            assert_eq!((m, p.as_str()), (method, path), "{command:?}");
            assert_eq!(
                b.map(|b| String::from_utf8(b).unwrap()).as_deref(),
                body,
                "{command:?}"
            );
        }
    }

    #[test]
    fn table_aligns_columns() {
        let region = |id: &str, serving| RegionView {
            id: id.into(),
            admin: if serving {
                AdminState::Auto
            } else {
                AdminState::Drain
            },
            weight: 100,
            health: "unknown".into(),
            spilling: None,
            headroom: Some(0.5),
            report_age_ms: None,
            serving,
            endpoints: Vec::new(),
        };
        let table = region_table(&[region("us-east", true), region("ap-southeast-2", false)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("REGION          SERVING  ADMIN"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("us-east         yes      auto "),
            "{table}"
        );
        assert!(
            lines[2].starts_with("ap-southeast-2  no       drain"),
            "{table}"
        );
        assert!(lines[2].contains("50%"), "{table}");
    }
}
