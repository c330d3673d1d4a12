//! The health plane between the tiers (design §4): relays push region reports to every DNS
//! node over QUIC with mutual TLS.
//!
//! - [`frame`]: the versioned, length-limited wire format of a report (pure).
//! - [`ledger`]: which report of each region is current and fresh, by per-connection sequence
//!   and the receiver's own clock (pure).
//! - [`pki`]: the deployment CA, relay and DNS-node certificates, the region identity read
//!   from a relay's certificate, and the rustls/quinn configurations of the channel.
//! - [`sender`]: the relay's end: a connection per DNS node, a report per interval, reconnect
//!   with backoff.
//! - [`listener`]: the DNS node's end: mutual-TLS connections, bounded report streams into the
//!   ledger, and the feed that publishes region health into the serving snapshot.
//! - [`feed`]: publishes the view into the serving snapshot.
//! - [`view`]: region health from the ledger, with hysteresis (pure).
//! - [`probe`]: the DNS node's own probe of a silent region's relay (QUIC handshake and HTTPS
//!   `/health`), and the consecutive-failure count that turns it into a verdict.
//! - [`runtime`]: the DNS node's plane running: listener, ledger, feed, periodic refresh and
//!   probes started together from `[health]`, with their metrics.
//!
//! The region a report is about is always the one in the sender's certificate
//! ([`pki::peer_region`]); the body's `region` field is only checked against it.

pub(crate) mod der;
pub mod feed;
pub mod frame;
pub mod ledger;
pub mod listener;
pub mod pki;
pub mod probe;
pub mod runtime;
pub mod sender;
pub mod view;

pub use feed::SteeringFeed;
pub use frame::{
    Frame, FrameError, ReceivedReport, ReportFrame, ReportedState, decode, encode, encode_report,
};
pub use ledger::{LedgerCounters, ReportLedger, ReportRejected, Session};
pub use listener::{
    ListenerCounters, ListenerError, ListenerLimits, listener_endpoint, run_listener,
};
pub use runtime::{HealthPlane, HealthPlaneError};
pub use sender::{
    Backoff, ChannelSetupError, HealthNode, HealthSenderConfig, SenderError, run_sender,
};
pub use view::{HealthView, Hysteresis};
