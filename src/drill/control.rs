//! The levers a drill pulls, behind one small trait so the runner can be driven by the real
//! admin API, by an in-process store (tests), or by a fake that fails on cue.
//!
//! [`AdminControl`] is the real one: the DNS node's admin API through
//! [`crate::admin::client::AdminClient`], plus the relay's `POST /admin/reports` and, for the
//! kill mode, the `kill` command. It must not decide anything: what to call and when to undo
//! it belongs to the runner.

use std::future::Future;

use serde::Deserialize;

use super::http::HttpCaller;
use crate::admin::{client::AdminClient, model::RegionAction};

/// What a drill needs to know from the DNS node's status.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ControlStatus {
    pub max_ttl: Option<u32>,
    pub regions: Vec<RegionState>,
}

/// One region in [`ControlStatus`]; field names and values as in the admin API's JSON
/// (`admin`: auto / drain / force_down / force_up; `health`: up / degraded / down / unknown).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RegionState {
    pub id: String,
    pub admin: String,
    pub health: String,
    pub serving: bool,
}

impl ControlStatus {
    pub fn region(&self, id: &str) -> Option<&RegionState> {
        self.regions.iter().find(|r| r.id == id)
    }
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    #[error("admin API: {0}")]
    Admin(String),
    #[error("relay admin: {0}")]
    Relay(String),
    #[error("cannot kill process {pid}: {message}")]
    Kill { pid: u32, message: String },
    #[error("{0}")]
    Other(String),
}

/// The actions a drill takes and reads. Every mutating call must be idempotent: the runner
/// repeats undo calls when they fail.
pub trait DrillControl {
    fn drain(&self, region: &str) -> impl Future<Output = Result<(), ControlError>>;
    /// Back to `auto`: health decides again.
    fn undrain(&self, region: &str) -> impl Future<Output = Result<(), ControlError>>;
    /// Caps every GSLB answer's TTL; `None` clears the cap.
    fn set_max_ttl(&self, max_ttl: Option<u32>) -> impl Future<Output = Result<(), ControlError>>;
    fn status(&self) -> impl Future<Output = Result<ControlStatus, ControlError>>;
    /// Stops (`true`) or resumes the health reports of the relay whose admin listener is at
    /// `relay_admin` (e.g. `http://127.0.0.1:9101`).
    fn pause_reports(
        &self,
        relay_admin: &str,
        paused: bool,
    ) -> impl Future<Output = Result<(), ControlError>>;
    /// Kills a relay process outright (SIGKILL): the unplanned drill's harshest outage.
    fn kill(&self, pid: u32) -> impl Future<Output = Result<(), ControlError>>;
}

/// The real levers: the DNS node's admin API and the relays' admin listeners.
pub struct AdminControl {
    admin: AdminClient,
    http: HttpCaller,
}

impl AdminControl {
    pub fn new(admin: AdminClient, http: HttpCaller) -> AdminControl {
        AdminControl { admin, http }
    }
}

fn admin_error(error: impl std::fmt::Display) -> ControlError {
    ControlError::Admin(error.to_string())
}

impl DrillControl for AdminControl {
    async fn drain(&self, region: &str) -> Result<(), ControlError> {
        self.admin
            .set_admin(region, RegionAction::Drain)
            .await
            .map(drop)
            .map_err(admin_error)
    }

    async fn undrain(&self, region: &str) -> Result<(), ControlError> {
        self.admin
            .set_admin(region, RegionAction::Undrain)
            .await
            .map(drop)
            .map_err(admin_error)
    }

    async fn set_max_ttl(&self, max_ttl: Option<u32>) -> Result<(), ControlError> {
        self.admin.set_max_ttl(max_ttl).await.map_err(admin_error)
    }

    async fn status(&self) -> Result<ControlStatus, ControlError> {
        let status = self.admin.status().await.map_err(admin_error)?;
        // Read through the API's JSON shape rather than the client's Rust types: the drill
        // depends on the documented wire fields only.
        serde_json::to_value(&status)
            .and_then(serde_json::from_value)
            .map_err(admin_error)
    }

    async fn pause_reports(&self, relay_admin: &str, paused: bool) -> Result<(), ControlError> {
        let url = format!("{}/admin/reports", relay_admin.trim_end_matches('/'));
        self.http
            .post_json(&url, &serde_json::json!({ "paused": paused }))
            .await
            .map(drop)
            .map_err(|e| ControlError::Relay(e.to_string()))
    }

    async fn kill(&self, pid: u32) -> Result<(), ControlError> {
        // The `kill` command rather than libc: the crate has no unsafe code.
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status()
        })
        .await
        .map_err(|e| ControlError::Kill {
            pid,
            message: e.to_string(),
        })?
        .map_err(|e| ControlError::Kill {
            pid,
            message: e.to_string(),
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(ControlError::Kill {
                pid,
                message: format!("kill exited with {status}"),
            })
        }
    }
}
