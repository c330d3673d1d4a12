//! The announcement's Prometheus series (`meridian_anycast_*`).

use std::sync::Mutex;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::metrics::MetricsSource;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

pub struct AnycastMetrics {
    registry: Mutex<Registry>,
    announced: Gauge,
    wanted: Gauge,
    bird_up: Gauge,
    bird_errors: Family<ErrorLabels, Counter>,
    withdrawals: Family<ReasonLabels, Counter>,
}

impl Default for AnycastMetrics {
    fn default() -> Self {
        AnycastMetrics::new()
    }
}

impl AnycastMetrics {
    pub fn new() -> AnycastMetrics {
        let mut registry = Registry::with_prefix("meridian_anycast");
        let announced = Gauge::default();
        let wanted = Gauge::default();
        let bird_up = Gauge::default();
        let bird_errors = Family::<ErrorLabels, Counter>::default();
        let withdrawals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "announced",
            "1 while BIRD confirmed the anycast protocol enabled; 0 when withdrawn or unknown \
             (see bird_up)",
            announced.clone(),
        );
        registry.register(
            "wanted",
            "1 while the self-check wants the anycast address announced",
            wanted.clone(),
        );
        registry.register(
            "bird_up",
            "1 while the last exchange with BIRD's control socket succeeded; 0 = the \
             announcement state is unknown",
            bird_up.clone(),
        );
        registry.register(
            "bird_errors",
            "Failed exchanges with BIRD's control socket, by error",
            bird_errors.clone(),
        );
        registry.register(
            "withdrawals",
            "Times the self-check turned from announce to withdraw, by reason",
            withdrawals.clone(),
        );
        AnycastMetrics {
            registry: Mutex::new(registry),
            announced,
            wanted,
            bird_up,
            bird_errors,
            withdrawals,
        }
    }

    pub(crate) fn wanted(&self, announce: bool) {
        self.wanted.set(i64::from(announce));
    }

    pub(crate) fn withdrawn(&self, reason: &'static str) {
        self.withdrawals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn bird_confirmed(&self, enabled: bool) {
        self.bird_up.set(1);
        self.announced.set(i64::from(enabled));
    }

    pub(crate) fn bird_failed(&self, error: &'static str) {
        self.bird_up.set(0);
        self.announced.set(0);
        self.bird_errors.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

impl MetricsSource for AnycastMetrics {
    fn encode_into(&self, out: &mut String) {
        let text = self.encode();
        out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
    }
}
