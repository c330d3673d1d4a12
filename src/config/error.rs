//! What can be wrong with a configuration file, as data.
//!
//! Every problem is a [`Problem`] variant whose fields carry the diagnosis, so tests compare
//! errors with `assert_eq!` and the `check` command can print all of them at once. Only the
//! `Display` impls turn them into sentences; nothing here formats a diagnosis into a string
//! that code would later have to parse.

use std::{fmt, io, path::PathBuf};

use ipnet::IpNet;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid TOML. `line` and `column` are 1-based; the column counts
    /// characters, not bytes.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file is valid TOML but not a valid configuration; every problem found is listed.
    #[error("{}", InvalidDisplay { path, errors })]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

struct InvalidDisplay<'a> {
    path: &'a PathBuf,
    errors: &'a [FieldError],
}

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {error}", self.path.display())?;
        }
        Ok(())
    }
}

/// One problem, located by its field path in the file, e.g. `gslb[0].geo.countries.GB[1]`.
///
/// Array indices count the entries of that array in the file from 0, so `region[2]` is the
/// third `[[region]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Empty when the problem concerns the whole document.
    pub field: String,
    pub problem: Problem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

/// The kind of value a string failed to parse as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    Ipv4,
    Ipv6,
    SocketAddr,
    Network,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "an IPv4 address",
            Self::Ipv6 => "an IPv6 address",
            Self::SocketAddr => "a socket address (such as 127.0.0.1:53 or [::1]:53)",
            Self::Network => "a network in CIDR notation (such as 198.51.100.0/24)",
        })
    }
}

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    // --- The document's shape, as reported by serde. ---
    #[error("unknown key `{key}`{}", ExpectedKeys(expected))]
    UnknownKey { key: String, expected: Vec<String> },
    #[error("required key `{key}` is missing")]
    MissingKey { key: String },
    #[error("unknown value `{value}`{}", ExpectedKeys(expected))]
    UnknownVariant {
        value: String,
        expected: Vec<String>,
    },
    /// Any other shape error (wrong type, …), in serde's words.
    #[error("{message}")]
    Schema { message: String },

    // --- Values. ---
    #[error("{value} is out of range: {}", IntegerRange(*min, *max))]
    IntegerOutOfRange { value: i64, min: i64, max: i64 },
    #[error("{value} is out of range: must be from {min} to {max}")]
    CoordinateOutOfRange { value: f64, min: f64, max: f64 },
    #[error("`{value}` is not {expected}")]
    InvalidAddress {
        value: String,
        expected: AddressKind,
    },
    #[error("`{name}` is not a valid domain name: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("a path must not be empty")]
    EmptyPath,
    #[error("must not be empty")]
    EmptyList,
    #[error("`{value}` appears twice (first at {first})")]
    Duplicate { value: String, first: String },

    // --- Document-wide rules. ---
    #[error(
        "at least one [[zone]] is required: an authoritative server with no zones refuses everything"
    )]
    NoZones,
    #[error("{count} regions configured; at most {max} are supported")]
    TooManyRegions { count: usize, max: usize },
    #[error("{address} is also a DNS listen address")]
    MetricsOnDnsListener { address: std::net::SocketAddr },

    // --- Regions. ---
    #[error("`{id}` is not a valid region id: use 1 to 63 characters from a-z, 0-9 and -")]
    InvalidRegionId { id: String },
    #[error("a region answers either ipv4/ipv6 addresses or a cname, not both")]
    CnameWithAddresses,
    #[error("a region needs at least one ipv4 or ipv6 address, or a cname")]
    NoEndpoints,
    #[error("no [[region]] has id `{id}`")]
    UnknownRegion { id: String },

    // --- GSLB names. ---
    #[error("`{name}` is not inside any configured [[zone]] origin")]
    NotInAnyZone { name: String },
    #[error(
        "`{name}` is the apex of zone `{name}`, which owns its SOA and NS; steer a name below it"
    )]
    ZoneApex { name: String },
    #[error("answers = {answers} but only {candidates} candidate region(s)")]
    AnswersExceedCandidates { answers: i64, candidates: usize },
    #[error("mode = \"geo\" needs a [gslb.geo] section")]
    GeoMapRequired,
    #[error("a [gslb.geo] section only applies to mode = \"geo\", not \"{mode}\"")]
    GeoMapForbidden { mode: String },
    #[error("region `{id}` is not one of this name's candidate regions (its `regions` list)")]
    NotACandidate { id: String },
    #[error("`{code}` is not a continent code: use one of AF, AN, AS, EU, NA, OC, SA")]
    UnknownContinent { code: String },
    #[error(
        "`{code}` is not an ISO 3166-1 alpha-2 country code{}",
        Hint(suggestion)
    )]
    UnknownCountry {
        code: String,
        suggestion: Option<String>,
    },
    #[error("`{code}` is not an ISO 3166-2 subdivision code: use CC-XXX, e.g. US-CA")]
    InvalidSubdivision { code: String },

    #[error(
        "no candidate region serves model `{model}`: a region serves it when its `models` list is empty or names it"
    )]
    ModelNotServed { model: String },
    #[error("`latency_fallback` only applies to mode = \"latency\", not \"{mode}\"")]
    LatencyFallbackForbidden { mode: String },
    #[error("write exactly one of `within_km` and `within_ms`")]
    CostBudgetChoice,
    #[error(
        "cost-aware steering applies to client-dependent modes (geo, nearest, latency), not \"{mode}\""
    )]
    CostForbidden { mode: String },

    // --- Health channel, probes, admin. ---
    /// `value` must be below the value of `other` (its field path), `other_value`.
    #[error("{value} must be below `{other}` ({other_value})")]
    NotBelowField {
        value: f64,
        other: String,
        other_value: f64,
    },
    #[error("`{name}` is not a valid TLS server name")]
    InvalidServerName { name: String },
    #[error("a probe needs its own `ca` when there is no [health] section to take it from")]
    ProbeCaRequired,

    // --- Overrides. ---
    #[error("{network} has host bits set; did you mean {truncated}?")]
    HostBitsSet { network: IpNet, truncated: IpNet },

    // --- Relay tier (`meridian relay`). ---
    #[error("{value} is out of range: {}", FloatRange(*min, *min_exclusive, *max))]
    NumberOutOfRange {
        value: f64,
        min: f64,
        /// `value` must be greater than `min`, not equal to it.
        min_exclusive: bool,
        /// `None`: any finite number above `min`.
        max: Option<f64>,
    },
    /// An ordering between two fields, reported at the larger one: `value` exceeds the value
    /// of `other` (its field path), which is `other_value`.
    #[error("{value} exceeds `{other}` ({other_value})")]
    ExceedsField {
        value: i64,
        other: String,
        other_value: i64,
    },
    #[error("{address} is also used by `{other}`")]
    ListenerClash {
        address: std::net::SocketAddr,
        other: String,
    },
    #[error(
        "{address} is not a loopback address, so the admin listener needs `{token_key}`: \
         without a token anyone who reaches it can drain the relay"
    )]
    AdminExposedWithoutToken {
        address: std::net::SocketAddr,
        token_key: String,
    },
    #[error(
        "at least one [[backend]] is required: a relay with no backends can only refuse requests"
    )]
    NoBackends,
    #[error("{count} backends configured; at most {max} are supported")]
    TooManyBackends { count: usize, max: usize },
    #[error("`{id}` is not a valid backend id: use 1 to 63 characters from a-z, 0-9 and -")]
    InvalidBackendId { id: String },
    #[error("`{url}` is not a usable backend URL: {reason}")]
    InvalidUrl { url: String, reason: UrlProblem },
    #[error("`{value}` is not a model list: write a list of model ids or \"discover\"")]
    UnknownModelSource { value: String },
    #[error("a model id must not be empty")]
    EmptyModelId,
}

/// Why a backend URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("it does not parse as a URL such as http://127.0.0.1:8000")]
    Unparsable,
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("it needs an explicit port, such as http://127.0.0.1:8000")]
    NoPort,
    /// Credentials in a URL end up in logs and metrics labels.
    #[error("it must not contain credentials (user@)")]
    UserInfo,
    #[error("it must not have a query (?...)")]
    Query,
    #[error("it must not have a fragment (#...)")]
    Fragment,
}

struct ExpectedKeys<'a>(&'a [String]);

impl fmt::Display for ExpectedKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, "; expected `{one}`"),
            many => {
                f.write_str("; expected one of ")?;
                for (i, key) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{key}`")?;
                }
                Ok(())
            }
        }
    }
}

/// `max` is `i64::MAX` for "no upper bound"; printing that number would only confuse.
struct IntegerRange(i64, i64);

impl fmt::Display for IntegerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self(min, i64::MAX) => write!(f, "must be at least {min}"),
            Self(min, max) => write!(f, "must be from {min} to {max}"),
        }
    }
}

/// `(min, min_exclusive, max)` of [`Problem::NumberOutOfRange`].
struct FloatRange(f64, bool, Option<f64>);

impl fmt::Display for FloatRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self(min, false, Some(max)) => write!(f, "must be from {min} to {max}"),
            Self(min, true, Some(max)) => {
                write!(f, "must be greater than {min} and at most {max}")
            }
            Self(min, false, None) => write!(f, "must be a finite number of at least {min}"),
            Self(min, true, None) => write!(f, "must be a finite number greater than {min}"),
        }
    }
}

struct Hint<'a>(&'a Option<String>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(suggestion) => write!(f, "; did you mean `{suggestion}`?"),
            None => Ok(()),
        }
    }
}
