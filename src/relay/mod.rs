//! The relay tier: an HTTPS / HTTP/3 front door to one region's LLM backends.
pub mod config;
pub mod front;
pub mod service;
pub mod tls;
