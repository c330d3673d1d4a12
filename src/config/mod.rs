//! Configuration of the DNS tier: TOML → raw serde structs → validated [`model`].
//!
//! Three steps, each its own module:
//! - [`raw`]: serde structs mirroring the file; they only reject unknown keys and wrong types.
//! - [`validate`]: `TryFrom` into [`model::DnsConfig`], collecting every problem with its
//!   field path (`gslb[0].geo.countries.GB[1]`) instead of stopping at the first.
//! - this module: reading the file ([`load_dns_config`]) and parsing text
//!   ([`parse_dns_config`]), kept apart so tests and `meridian check` parse strings.
//!
//! Nothing here opens zone files or the GeoIP database; it only resolves their paths against
//! the config file's folder.

mod error;
pub mod model;
pub mod raw;
mod validate;

use std::{ops::Range, path::Path};

use toml::de::{DeTable, DeValue};

pub use error::{AddressKind, ConfigError, FieldError, Problem, UrlProblem};
pub(crate) use validate::Findings;
pub use validate::RawDocument;

use model::DnsConfig;
use raw::RawDnsConfig;

/// Reads and validates the configuration file at `path`. Relative paths inside it are resolved
/// against the file's folder.
pub fn load_dns_config(path: &Path) -> Result<DnsConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_dns_config(&text, path)
}

/// Parses and validates configuration text. `source` is the path it came from: it names the
/// file in messages, and relative paths are resolved against its folder.
pub fn parse_dns_config(text: &str, source: &Path) -> Result<DnsConfig, ConfigError> {
    let raw = parse_raw(text, source)?;
    DnsConfig::try_from(RawDocument {
        config: &raw,
        source,
    })
    .map_err(|errors| ConfigError::Invalid {
        path: source.to_path_buf(),
        errors,
    })
}

/// Parses text into the raw structs, without validating values.
pub fn parse_raw(text: &str, source: &Path) -> Result<RawDnsConfig, ConfigError> {
    parse_toml(text, source)
}

/// Parses TOML text into any raw serde struct: syntax errors located by line and column, shape
/// errors (unknown keys, wrong types) by field path. Shared with the relay tier's loader, so
/// both files report problems the same way.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    source: &Path,
) -> Result<T, ConfigError> {
    let document = DeTable::parse(text).map_err(|e| {
        let (line, column) = position(text, e.span().map_or(0, |span| span.start));
        ConfigError::Syntax {
            path: source.to_path_buf(),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    T::deserialize(toml::de::Deserializer::from(document)).map_err(|e| ConfigError::Invalid {
        path: source.to_path_buf(),
        errors: vec![shape_error(text, &e)],
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Turns serde's error (one, with a byte span) into a located [`FieldError`].
///
/// serde reports unknown keys, missing keys and unknown enum values through its default
/// `de::Error` methods, whose wording is fixed by serde; anything else keeps serde's message.
fn shape_error(text: &str, error: &toml::de::Error) -> FieldError {
    let message = error.message().trim_end();
    let path = match (error.span(), DeTable::parse(text)) {
        // A key missing from the root table comes with the empty span `0..0`, which every
        // table starting the file would otherwise seem to contain.
        (Some(span), Ok(document)) if !span.is_empty() => path_at(document.get_ref(), &span),
        _ => String::new(),
    };
    let quoted = backticked(message);
    let problem = match quoted.split_first() {
        Some((key, expected)) if message.starts_with("unknown field") => Problem::UnknownKey {
            key: key.clone(),
            expected: expected.to_vec(),
        },
        Some((value, expected)) if message.starts_with("unknown variant") => {
            Problem::UnknownVariant {
                value: value.clone(),
                expected: expected.to_vec(),
            }
        }
        Some((key, _)) if message.starts_with("missing field") => {
            // The span is the table the key is missing from.
            return FieldError {
                field: validate::field(&path, key),
                problem: Problem::MissingKey { key: key.clone() },
            };
        }
        _ => Problem::Schema {
            message: message.to_owned(),
        },
    };
    FieldError {
        field: path,
        problem,
    }
}

/// The strings between backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The field path of the key or value at `span` in the document.
///
/// Errors carry the span of the key or value serde was looking at. The best match is a key
/// with exactly that span, then a value with exactly that span (the deepest, since a table
/// and its only entry can share one), then the smallest value containing it.
fn path_at(document: &DeTable<'_>, span: &Range<usize>) -> String {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Rank {
        class: u8,
        width: usize,
        shallowness: usize,
    }
    struct Search<'s> {
        span: &'s Range<usize>,
        best: Option<(Rank, String)>,
    }
    impl Search<'_> {
        fn offer(&mut self, candidate: &Range<usize>, is_key: bool, depth: usize, path: &str) {
            let class = if candidate == self.span {
                if is_key { 0 } else { 1 }
            } else if !is_key
                && candidate.start <= self.span.start
                && self.span.end <= candidate.end
            {
                2
            } else {
                return;
            };
            let rank = Rank {
                class,
                width: candidate.len(),
                shallowness: usize::MAX - depth,
            };
            if self.best.as_ref().is_none_or(|(best, _)| rank < *best) {
                self.best = Some((rank, path.to_owned()));
            }
        }

        fn table(&mut self, table: &DeTable<'_>, depth: usize, path: &str) {
            for (key, value) in table {
                let path = validate::field(path, key.get_ref());
                self.offer(&key.span(), true, depth, &path);
                self.value(value.get_ref(), &value.span(), depth, &path);
            }
        }

        fn value(&mut self, value: &DeValue<'_>, span: &Range<usize>, depth: usize, path: &str) {
            self.offer(span, false, depth, path);
            match value {
                DeValue::Table(table) => self.table(table, depth + 1, path),
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = validate::at(path, i);
                        self.value(item.get_ref(), &item.span(), depth + 1, &path);
                    }
                }
                _ => {}
            }
        }
    }

    let mut search = Search { span, best: None };
    search.table(document, 0, "");
    search.best.map(|(_, path)| path).unwrap_or_default()
}

#[cfg(test)]
mod tests;
