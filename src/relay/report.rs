//! The region health report (design §4): what this relay tells the DNS tier about its region.
//!
//! Pure: built from the pool's load, the recent request statistics and the relay's own state,
//! at a given `now`. Served as JSON at `GET /region/health` on the admin listener; the health
//! plane pushes the same document to every DNS node.

use std::{collections::BTreeMap, time::Instant};

use super::{
    config::model::RelayConfig,
    pool::{Pool, RegionLoad},
    stats::{ClientRtt, ModelLatency, Rates, RequestStats},
};

/// Report format version; bump on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    Ok,
    /// Serving, but some backend is out or the region is close to saturation.
    Degraded,
    /// Finishing in-flight work, taking none.
    Draining,
    /// No backend can take work.
    Down,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RegionReport {
    pub version: u32,
    pub region: String,
    /// Per relay, strictly increasing: receivers order reports by it, never by clocks.
    pub sequence: u64,
    pub state: RegionState,
    pub accept_new: bool,
    pub saturation: f64,
    pub capacity_units: u64,
    pub headroom_units: f64,
    pub headroom_fraction: f64,
    pub models: BTreeMap<String, ModelReport>,
    pub rates: Rates,
    pub client_rtt: Vec<ClientRtt>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelReport {
    pub healthy_backends: u32,
    pub total_backends: u32,
    pub capacity_units: u64,
    pub headroom_units: f64,
    pub headroom_fraction: f64,
    pub saturation: f64,
    /// Requests waiting in the backends' own queues, summed (where they publish it).
    pub waiting: f64,
    /// Highest KV-cache use among its backends (0..1), where published.
    pub kv_usage: Option<f64>,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    pub inter_token_p50_ms: f64,
    pub inter_token_p95_ms: f64,
}

/// Saturation above which a serving region reports itself degraded, as a share of the
/// shedding threshold: the DNS tier should start moving new clients before the relay sheds.
const DEGRADED_AT_SHARE_OF_SHEDDING: f64 = 0.8;

/// Client prefixes a report carries RTT for: the busiest ones. The stats table tracks more,
/// but a report must fit one health-channel frame (64 KiB) or it is not sent at all, and the
/// region goes silent on the DNS tier; an entry is at most about 100 bytes of JSON, so this
/// leaves over 10 KiB for the rest of the report.
pub const MAX_REPORTED_PREFIXES: usize = 512;

pub fn build(
    config: &RelayConfig,
    pool: &Pool,
    stats: &RequestStats,
    draining: bool,
    sequence: u64,
    now: Instant,
) -> RegionReport {
    let load = pool.region_load(now);
    let latency = stats.latency(now);
    let views = pool.views(now);
    let mut models = BTreeMap::new();
    for model in &load.models {
        let serving: Vec<_> = views
            .iter()
            .filter(|v| !v.removed && v.models.iter().any(|m| m == &model.model))
            .collect();
        let waiting = serving
            .iter()
            .filter_map(|v| v.signals.and_then(|s| s.waiting))
            .sum();
        let kv_usage = serving
            .iter()
            .filter_map(|v| v.signals.and_then(|s| s.kv_usage))
            .reduce(f64::max);
        let ModelLatency { ttft, inter_token } =
            latency.get(&model.model).cloned().unwrap_or_default();
        models.insert(
            model.model.clone(),
            ModelReport {
                healthy_backends: model.healthy_backends,
                total_backends: model.total_backends,
                capacity_units: model.capacity_units,
                headroom_units: round3(model.headroom_units),
                headroom_fraction: round3(model.headroom_fraction),
                saturation: round3(model.saturation),
                waiting,
                kv_usage,
                ttft_p50_ms: ttft.p50_ms,
                ttft_p95_ms: ttft.p95_ms,
                inter_token_p50_ms: inter_token.p50_ms,
                inter_token_p95_ms: inter_token.p95_ms,
            },
        );
    }
    let state = region_state(config, &load, draining);
    RegionReport {
        version: REPORT_VERSION,
        region: config.region.to_string(),
        sequence,
        accept_new: matches!(state, RegionState::Ok | RegionState::Degraded)
            && load.saturation < config.shedding.max_saturation,
        state,
        saturation: round3(load.saturation),
        capacity_units: load.capacity_units,
        headroom_units: round3(load.headroom_units),
        headroom_fraction: round3(load.headroom_fraction),
        models,
        rates: stats.rates(now),
        client_rtt: {
            // Busiest first, so the cut keeps the prefixes most clients are in.
            let mut rtt = stats.client_rtt(now);
            rtt.truncate(MAX_REPORTED_PREFIXES);
            rtt
        },
    }
}

fn region_state(config: &RelayConfig, load: &RegionLoad, draining: bool) -> RegionState {
    if draining {
        return RegionState::Draining;
    }
    if load.models.iter().all(|m| m.healthy_backends == 0) {
        return RegionState::Down;
    }
    let some_backend_out = load
        .models
        .iter()
        .any(|m| m.healthy_backends < m.total_backends);
    let near_shedding =
        load.saturation >= config.shedding.max_saturation * DEGRADED_AT_SHARE_OF_SHEDDING;
    if some_backend_out || near_shedding {
        RegionState::Degraded
    } else {
        RegionState::Ok
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
