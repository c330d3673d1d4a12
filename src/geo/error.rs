//! What can go wrong opening, reading or building a GeoIP database. Variants carry the
//! diagnosis (the path, the line, the offending value) so an operator can act on the message
//! and tests can compare errors with `assert_eq!`.

use std::path::PathBuf;

use ipnet::IpNet;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    #[error("GeoIP database {path:?} does not exist")]
    Missing { path: PathBuf },

    #[error("GeoIP database {path:?} cannot be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },

    #[error("{path:?} is not a MaxMind DB file: {reason}")]
    NotMaxMindDb { path: PathBuf, reason: String },

    #[error(
        "GeoIP database {path:?} has database_type {database_type:?}; \
         expected a City or Country database (e.g. GeoLite2-City)"
    )]
    UnsupportedDatabaseType {
        path: PathBuf,
        database_type: String,
    },

    /// The file opened but its tree or data section is damaged.
    #[error("GeoIP database {path:?} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// An entry handed to the database writer cannot be written as given.
    #[error("cannot write {network} to a GeoIP database: {problem}")]
    InvalidEntry {
        network: IpNet,
        problem: EntryProblem,
    },

    /// The MaxMind DB writer refused the database as a whole.
    #[error("cannot build the GeoIP database: {reason}")]
    Build { reason: String },

    #[error("cannot read CSV {path:?}: {reason}")]
    CsvUnreadable { path: PathBuf, reason: String },

    #[error("{path:?} line {line}: {problem}")]
    CsvRow {
        path: PathBuf,
        line: u64,
        problem: CsvProblem,
    },
}

/// Why one `(network, location)` entry cannot go into a database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("host bits are set (the network is {network})")]
    HostBitsSet { network: IpNet },
    #[error("the network is listed twice")]
    Duplicate,
    /// `::ffff:0:0/96`, `2001::/32` (Teredo) and `2002::/16` (6to4) mirror the IPv4 tree.
    #[error("the network lies in an IPv6 range that aliases IPv4 ({alias})")]
    InIpv4Alias { alias: IpNet },
    /// `::/96` is where the IPv4 tree lives; IPv4 networks must be written as IPv4.
    #[error("the network lies in ::/96, where IPv4 is stored; write it as an IPv4 network")]
    InIpv4Embedding,
    #[error(
        "subdivision {subdivision:?} is not of the form <country>-<code> for country {country:?}"
    )]
    SubdivisionOutsideCountry {
        subdivision: Box<str>,
        country: Option<Box<str>>,
    },
}

/// Why one CSV row of a database source was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvProblem {
    #[error("{reason}")]
    Malformed { reason: String },
    #[error("expected the header {expected:?}, found {found:?}")]
    Header { expected: String, found: String },
    #[error("{value:?} is not a network in CIDR notation")]
    InvalidNetwork { value: String },
    #[error("network {value:?} has host bits set (did you mean {network}?)")]
    HostBitsSet { value: String, network: IpNet },
    #[error("column {column}: {value:?} is not a valid code")]
    InvalidCode { column: &'static str, value: String },
    #[error("column {column}: {value:?} is not a valid coordinate")]
    InvalidCoordinate { column: &'static str, value: String },
    #[error("network {network} was already listed on line {first_line}")]
    Duplicate { network: IpNet, first_line: u64 },
    #[error(transparent)]
    Entry(EntryProblem),
}
