//! Errors of zone loading and GSLB-name registration.
//!
//! Variants carry the diagnosis as fields so tests compare them with `assert_eq!`; the
//! `Display` form is what an operator reads (`zones/example.test.zone:17: …`).

use std::fmt;
use std::io;
use std::path::PathBuf;

use hickory_proto::rr::{DNSClass, Name, RecordType};

/// Where in the zone source a problem was found.
///
/// `line` is 1-based and refers to the top-level file (an error inside an `$INCLUDE`d file is
/// reported at the `$INCLUDE` line). It is `None` for zone-wide problems such as a missing SOA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// `None` when the zone was parsed from a string.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
}

impl fmt::Display for SourceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("<zone text>")?,
        }
        match self.line {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("{}: cannot read zone file: {reason}", file.display())]
    Read {
        file: PathBuf,
        kind: io::ErrorKind,
        reason: String,
    },

    /// hickory's parser rejected the text; `message` is its diagnosis, reworded for the common
    /// cases.
    #[error("{at}: {message}")]
    Syntax { at: SourceLine, message: String },

    /// hickory 0.26's lexer mangles quoted strings inside `( … )` (see `source.rs`).
    #[error("{at}: quoted string inside ( ); write the strings of this record on one line")]
    QuoteInGroup { at: SourceLine },

    #[error("{at}: {name} is outside the zone {origin}")]
    OutsideOrigin {
        at: SourceLine,
        name: Name,
        origin: Name,
    },

    #[error("{at}: {name} {rtype} has class {class}; only IN is served")]
    NotInClass {
        at: SourceLine,
        name: Name,
        rtype: RecordType,
        class: DNSClass,
    },

    /// RFC 2181 §8: a TTL is an unsigned 31-bit value.
    #[error("{at}: {name} {rtype} has TTL {ttl}, above 2147483647 (RFC 2181 section 8)")]
    TtlTooLarge {
        at: SourceLine,
        name: Name,
        rtype: RecordType,
        ttl: u32,
    },

    /// RFC 2181 §5.2: all records of an RRset share one TTL.
    #[error("{at}: the {name} {rtype} RRset mixes TTLs {first} and {other} (RFC 2181 section 5.2)")]
    TtlMismatch {
        at: SourceLine,
        name: Name,
        rtype: RecordType,
        first: u32,
        other: u32,
    },

    #[error("{at}: SOA at {name}; the zone's only SOA must be at the apex {origin}")]
    SoaNotAtApex {
        at: SourceLine,
        name: Name,
        origin: Name,
    },

    #[error("{at}: no SOA record at the apex {origin}")]
    MissingSoa { at: SourceLine, origin: Name },

    #[error("{at}: no NS records at the apex {origin}")]
    MissingApexNs { at: SourceLine, origin: Name },

    #[error("{at}: CNAME at the zone apex {name}")]
    CnameAtApex { at: SourceLine, name: Name },

    #[error("{at}: {name} has a CNAME next to other data ({other})")]
    CnameAndOtherData {
        at: SourceLine,
        name: Name,
        other: RecordType,
    },

    /// RFC 4592 §4.2: NS at a wildcard owner has no defined meaning.
    #[error("{at}: NS records at the wildcard {name}")]
    WildcardDelegation { at: SourceLine, name: Name },

    /// The store addresses names and records with 32-bit offsets: about 4 GiB of each, four
    /// billion names.
    #[error("{at}: the zone is too large to hold (over 4 GiB of names or record data)")]
    TooLarge { at: SourceLine },

    /// The record's wire form does not decode back to the same value, so it could not be
    /// served as written (a gap in hickory's support for the type).
    #[error("{at}: {name} {rtype}: the record does not survive a round trip through its wire form")]
    Unrepresentable {
        at: SourceLine,
        name: Name,
        rtype: RecordType,
    },

    #[error("GSLB name {name} is outside the zone {origin}")]
    DynamicOutsideZone { name: Name, origin: Name },

    #[error("GSLB name {name} is at or below the delegation point {cut}")]
    DynamicBelowCut { name: Name, cut: Name },

    #[error("GSLB name {name} already has zone data ({rtype})")]
    DynamicHasData { name: Name, rtype: RecordType },

    #[error("GSLB name {name} is registered twice")]
    DynamicDuplicate { name: Name },

    #[error("GSLB name {name} is a wildcard")]
    DynamicWildcard { name: Name },

    #[error("zone {origin} is configured twice")]
    DuplicateOrigin { origin: Name },
}
