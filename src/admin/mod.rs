//! The DNS node's admin API: operator state changes, status, metrics and the status page.
//!
//! Plain HTTP/1.1 (hyper) on a loopback address by default. Reads (`GET`) are open and reveal
//! no secrets; every mutating call needs the bearer token from the token file
//! ([`AdminToken`]). Operator changes are never applied in place: the handler copies the
//! current snapshot's [`crate::operator_state::OperatorState`], edits the copy, and hands it to
//! [`crate::snapshot::SnapshotStore::update_operator`], which persists it before publishing,
//! so a change a restart would forget is never reported as applied.
//!
//! - [`model`]: the JSON documents (shared with [`client`] and `meridian ctl`).
//! - [`server`]: routing, authentication, limits and handlers.
//! - [`error`]: the one mapping from failures to status codes and error bodies.
//! - [`page`]: the HTML status page (pure).
//! - [`recent`]: the ring of recent decisions the query path records into without waiting.
//! - [`client`]: the Rust client used by `ctl`, drills and the demo.
//! - [`ctl`]: `meridian ctl`.
//!
//! This module must not make steering decisions or interpret health reports: it shows what the
//! snapshot holds and asks the snapshot store for changes.

pub mod client;
pub mod ctl;
pub mod error;
pub mod metrics;
pub mod model;
pub mod page;
pub mod recent;
pub mod server;
pub mod token;

use std::sync::{Arc, Mutex};

pub use error::ApiError;
pub use recent::{RecentDecision, RecentDecisions};
pub use server::serve;
pub use token::{AdminError, AdminToken};

use crate::{health::ReportLedger, metrics::MetricsSource, snapshot::SnapshotStore};

/// Everything the admin API reads and acts on.
pub struct AdminContext {
    pub store: Arc<SnapshotStore>,
    pub token: AdminToken,
    /// Exposed at `/metrics` (the admin API appends its own series).
    pub metrics: Vec<Arc<dyn MetricsSource>>,
    /// The health channel's ledger, for report ages; `None` without a channel.
    pub ledger: Option<Arc<Mutex<ReportLedger>>>,
    pub recent: Arc<RecentDecisions>,
}
