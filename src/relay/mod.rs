//! The relay tier: an HTTPS / HTTP/3 front door to one region's LLM backends.
pub mod admin;
pub mod config;
pub mod errors;
pub mod front;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod reconfigure;
pub mod report;
pub mod retry;
pub mod server;
pub mod service;
pub mod signals;
pub mod stats;
pub mod tls;
pub mod upstream;
