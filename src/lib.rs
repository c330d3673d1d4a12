//! Meridian: an authoritative DNS GSLB for LLM APIs (DNS tier).
#![deny(unsafe_code)]
pub mod config;
pub mod dns;
pub mod geo;
