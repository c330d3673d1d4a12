//! Configuration of the relay tier: TOML → raw serde structs → validated [`model`].
//!
//! The same three steps as the DNS tier's [`crate::config`], with the same error vocabulary
//! ([`ConfigError`], [`FieldError`], [`Problem`]) so `meridian check` reports both files alike:
//! - [`raw`]: serde structs mirroring the file; they only reject unknown keys and wrong types.
//! - `validate`: `TryFrom` into [`RelayConfig`], collecting every problem with its field path
//!   (`backend[1].url`) instead of stopping at the first.
//! - this module: reading the file ([`load_relay_config`]), parsing text
//!   ([`parse_relay_config`]) and telling the two tiers' files apart ([`config_kind`]).
//!
//! Nothing here opens the TLS files or contacts a backend; paths are only resolved against the
//! config file's folder (`meridian check` loads the certificates).

pub mod model;
pub mod raw;
mod validate;

use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::config::{ConfigError, parse_toml};

pub use crate::config::RawDocument;

use model::RelayConfig;
use raw::RawRelayConfig;

/// Reads and validates the relay configuration file at `path`. Relative paths inside it are
/// resolved against the file's folder.
pub fn load_relay_config(path: &Path) -> Result<RelayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_relay_config(&text, path)
}

/// Parses and validates relay configuration text. `source` is the path it came from: it names
/// the file in messages, and relative paths are resolved against its folder.
pub fn parse_relay_config(text: &str, source: &Path) -> Result<RelayConfig, ConfigError> {
    let raw: RawRelayConfig = parse_toml(text, source)?;
    RelayConfig::try_from(RawDocument {
        config: &raw,
        source,
    })
    .map_err(|errors| ConfigError::Invalid {
        path: source.to_path_buf(),
        errors,
    })
}

/// Which tier a configuration file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    Dns,
    Relay,
}

/// A top-level `[relay]` table means a relay config, anything else a DNS config.
///
/// Text that is not TOML counts as DNS: either loader reports the same syntax error, so the
/// guess cannot change what the operator is told.
pub fn config_kind(text: &str) -> ConfigKind {
    let is_relay = DeTable::parse(text).is_ok_and(|document| {
        document.get_ref().iter().any(|(key, value)| {
            key.get_ref() == "relay" && matches!(value.get_ref(), DeValue::Table(_))
        })
    });
    if is_relay {
        ConfigKind::Relay
    } else {
        ConfigKind::Dns
    }
}

#[cfg(test)]
mod tests;
