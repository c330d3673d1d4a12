//! The admin API's JSON documents, shared by the server, [`super::client::AdminClient`] and
//! `meridian ctl`.
//!
//! These types are the wire contract: field names are the JSON keys. Health is carried as its
//! text (`"up"`, `"unknown"`, …) rather than an enum so that a client keeps decoding the status
//! of a newer server that knows more states.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::operator_state::AdminState;

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Configuration generation being served (counts reloads, not health flips).
    pub generation: u64,
    /// The operator's TTL cap on GSLB answers, if set.
    pub max_ttl: Option<u32>,
    /// In configuration order.
    pub regions: Vec<RegionView>,
    /// `None` when the node has no `[health]` channel configured.
    pub health_channel: Option<HealthChannelView>,
}

/// One region as the steering core sees it right now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionView {
    pub id: String,
    pub admin: AdminState,
    /// Operator multiplier on capacity in weighted mode, in percent (0..=1000).
    pub weight: u32,
    /// `unknown`, `up`, `degraded` or `down`.
    pub health: String,
    /// Whether capacity spill-over currently sends this region's new clients elsewhere.
    #[serde(default)]
    pub spilling: Option<bool>,
    /// Headroom fraction (0..=1) of the latest fresh report.
    #[serde(default)]
    pub headroom: Option<f32>,
    /// Time since the region's latest accepted report, by this node's clock.
    #[serde(default)]
    pub report_age_ms: Option<u64>,
    /// Whether new clients may be answered with this region.
    pub serving: bool,
    /// What an answer with this region contains: its addresses, or its CNAME target (so
    /// tools such as `meridian drill` can tell which region an answer names).
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// The relay report channel, when configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthChannelView {
    /// QUIC listen address of the channel.
    pub listen: SocketAddr,
    /// Reports applied since start (when the ledger is available to the admin API).
    #[serde(default)]
    pub reports_accepted: Option<u64>,
    /// Reports refused since start (region mismatch, replay, reordering, superseded session).
    #[serde(default)]
    pub reports_rejected: Option<u64>,
}

/// `POST /v1/regions/{id}/{action}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionAction {
    Drain,
    /// Back to `auto`: health decides.
    Undrain,
    ForceDown,
    ForceUp,
}

impl RegionAction {
    /// The last path segment of the action's URL.
    pub fn path_segment(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Undrain => "undrain",
            Self::ForceDown => "force-down",
            Self::ForceUp => "force-up",
        }
    }

    pub fn from_path_segment(segment: &str) -> Option<RegionAction> {
        [Self::Drain, Self::Undrain, Self::ForceDown, Self::ForceUp]
            .into_iter()
            .find(|a| a.path_segment() == segment)
    }

    /// The operator state the action sets.
    pub fn admin_state(self) -> AdminState {
        match self {
            Self::Drain => AdminState::Drain,
            Self::Undrain => AdminState::Auto,
            Self::ForceDown => AdminState::ForceDown,
            Self::ForceUp => AdminState::ForceUp,
        }
    }
}

/// Response of every region mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionResponse {
    pub region: RegionView,
}

/// `PUT /v1/regions/{id}/weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    pub weight: u32,
}

/// `PUT /v1/max-ttl` body, and the response of `PUT` and `DELETE /v1/max-ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxTtl {
    pub max_ttl: Option<u32>,
}

/// A recently answered GSLB query, as `GET /v1/decisions` lists it (newest first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionView {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The client's network, truncated (never a full address).
    pub client: String,
    pub name: String,
    pub regions: Vec<String>,
    pub reason: String,
}

/// Every error response: `{"error":{"code":"...","message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`unauthorized`, `unknown_region`, `invalid_weight`, …).
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
}
