//! The admin API's own series: requests by route and status, authentication failures,
//! connections refused at the cap, and recent-decision samples dropped.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::recent::RecentDecisions;
use crate::metrics::MetricsSource;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// A route pattern (`PUT /v1/regions/{id}/weight`), never the raw path, so the label set
    /// stays bounded whatever clients send.
    route: &'static str,
    status: u16,
}

pub struct AdminMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    auth_failures: Counter,
    connections_refused: Counter,
    recent: Arc<RecentDecisions>,
}

impl AdminMetrics {
    pub fn new(recent: Arc<RecentDecisions>) -> AdminMetrics {
        let mut registry = Registry::with_prefix("meridian_admin");
        let requests = Family::<RequestLabels, Counter>::default();
        let auth_failures = Counter::default();
        let connections_refused = Counter::default();
        registry.register(
            "requests",
            "Admin API requests by route pattern and HTTP status",
            requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Mutating admin calls refused for a missing or wrong bearer token",
            auth_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Admin connections closed at accept because the connection cap was reached",
            connections_refused.clone(),
        );
        AdminMetrics {
            registry: Mutex::new(registry),
            requests,
            auth_failures,
            connections_refused,
            recent,
        }
    }

    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }
}

impl MetricsSource for AdminMetrics {
    fn encode_into(&self, out: &mut String) {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
            out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
        }
        // Read from the ring at scrape time rather than registered, as the ring owns the count.
        out.push_str(
            "# HELP meridian_admin_recent_decisions_dropped Decision samples not recorded because \
             the ring was busy.\n# TYPE meridian_admin_recent_decisions_dropped counter\n",
        );
        out.push_str(&format!(
            "meridian_admin_recent_decisions_dropped_total {}\n",
            self.recent.dropped()
        ));
    }
}
