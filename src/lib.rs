//! Meridian: an authoritative DNS GSLB for LLM APIs (the DNS tier).
//!
//! How a query flows, and which module owns each step:
//!
//! ```text
//!  UDP/TCP socket ─► dns::server ─► dns::handler::respond(snapshot, bytes) ─► bytes
//!                                     │  dns::wire: decode, ECS validation
//!                                     ├─ zone::Zone::lookup        (authoritative data)
//!                                     └─ steering::decide          (GSLB names, pure)
//!  snapshot::SnapshotStore ── one ArcSwap<Snapshot> ── rebuilt by reload (SIGHUP, file change)
//!     Snapshot = config::model + zone::Zones + geo::GeoDb + operator_state + steering::SteeringTable
//! ```
//!
//! The decision logic (`zone`, `steering`, `dns::wire`, `dns::handler`) does no IO and reads no
//! clock; files and sockets live in `config`, `geo`, `snapshot`, `reload`, `dns::server`, `cli`.
// The one exception is the GeoIP memory map (see `geo::reader`), as the issue requires mmap.
#![deny(unsafe_code)]

pub mod admin;
pub mod anycast;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dns;
pub mod drill;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod operator_state;
pub mod relay;
pub mod reload;
pub mod sim_backend;
pub mod snapshot;
pub mod steering;
pub mod zone;
