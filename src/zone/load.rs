//! Zone file → validated [`Zone`].
//!
//! hickory's parser does the RFC 1035 text format; this file decides what a *servable* zone
//! is: exactly one SOA, at the apex; NS at the apex; every owner inside the origin; class IN;
//! sane TTLs; CNAMEs alone at their name and never at the apex. The first problem found is
//! reported, located to a line by `source::locate` (error path only).
//!
//! hickory's parser returns the whole zone as one map of `RecordSet`s, about 700 bytes per
//! record, far more than the store keeps. So a large text is parsed in chunks of entries,
//! each chunk's map moved into the store's staging arenas before the next is parsed: the
//! peak stays near the final size. The parser's state between entries (origin, owner of a
//! blank-owner line, default and last TTL, class) is carried across a chunk boundary by
//! sentinel records: lines appended to one chunk report the state, lines prepended to the
//! next restore it, and both are removed from the result. Anything the chunked pass cannot
//! vouch for (an error of any kind, an RRset split across chunks, a state that does not
//! round-trip) sends the zone through the whole-text parse, whose result and diagnosis are
//! the reference; the chunked pass only ever accepts what that would accept, identically.

use std::path::Path;

use hickory_proto::ProtoError;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_proto::serialize::binary::DecodeError;
use hickory_proto::serialize::txt::ParseError;

use super::source::{self, EntryStart, ParsedRecords};
use super::store::{self, NodeIdx, StagedRrset, Store};
use super::{SourceLine, Zone, ZoneError};

/// RFC 2181 §8: TTLs are unsigned 31-bit values.
const MAX_TTL: u32 = i32::MAX as u32;

impl Zone {
    /// Reads and parses the zone file at `path` for `origin`.
    pub fn load(origin: &Name, path: &Path) -> Result<Zone, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|error| ZoneError::Read {
            file: path.to_path_buf(),
            kind: error.kind(),
            reason: error.to_string(),
        })?;
        Zone::parse(origin, &text, Some(path))
    }

    /// Parses zone text for `origin`. `path` names the source in errors and resolves relative
    /// `$INCLUDE`s; without it, relative `$INCLUDE` is an error.
    pub fn parse(origin: &Name, text: &str, path: Option<&Path>) -> Result<Zone, ZoneError> {
        Zone::parse_in(origin, text, path, CHUNK_ENTRIES)
    }

    /// [`Zone::parse`] with chunks of `chunk_entries` entries (`usize::MAX`: whole text).
    pub(super) fn parse_in(
        origin: &Name,
        text: &str,
        path: Option<&Path>,
        chunk_entries: usize,
    ) -> Result<Zone, ZoneError> {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        let source = Source {
            text,
            path,
            origin: &origin,
        };
        let scan = source::scan(text);
        // Small zones, and texts the chunked pass could misread, go the reference way.
        let chunked = scan.starts.len() > chunk_entries.saturating_add(1) && chunkable(&scan, text);
        if chunked && let Ok(zone) = parse_in_chunks(&source, &scan.starts, chunk_entries) {
            return Ok(zone);
        }
        let parsed = source::parse(text, path, &origin).map_err(|error| source.syntax(&error))?;
        if let Some(line) = scan.quote_in_group {
            return Err(ZoneError::QuoteInGroup {
                at: source.at(Some(line)),
            });
        }
        let mut staging = Staging::new(&source, Attempt::Whole);
        let whole = staging.add(parsed, None).and_then(|()| staging.finish());
        whole.map_err(|failure| match failure {
            Failure::Zone(error) => error,
            // Only the chunked pass retries.
            Failure::Retry => ZoneError::Syntax {
                at: source.at(None),
                message: "internal error: inconsistent parse".into(),
            },
        })
    }
}

/// Entries per chunk: tens of KiB of text, well under a MiB of parser output. Smaller maps
/// also make hickory's inserts cheaper (fewer name comparisons per record).
const CHUNK_ENTRIES: usize = 512;

/// TXT data of the sentinel records, followed by their number. A text that contains it is
/// parsed whole.
const SENTINEL: &str = "meridian-zone-chunk-state-";

/// Appended to every chunk but the last. Blank owners report the current owner; after an
/// explicit TTL, a record without one shows whether `$TTL` set a default (it then ignores the
/// explicit one); `@` reports the origin.
const REPORT: &str = concat!(
    "\tTXT meridian-zone-chunk-state-1\n",
    "\t1 TXT meridian-zone-chunk-state-2\n",
    "\tTXT meridian-zone-chunk-state-3\n",
    "\t2 TXT meridian-zone-chunk-state-4\n",
    "\tTXT meridian-zone-chunk-state-5\n",
    "@ TXT meridian-zone-chunk-state-6\n",
);

/// The parser's state at a chunk boundary, as the sentinels reported it.
struct ParserState {
    origin: Name,
    owner: Name,
    default_ttl: Option<u32>,
    /// The TTL a record without one gets: the default if any, else the last explicit one.
    ttl: u32,
}

impl ParserState {
    fn from_report(found: &[Option<Record>; SENTINELS]) -> Option<ParserState> {
        let [
            _,
            Some(owner),
            _,
            Some(after_1),
            _,
            Some(after_2),
            Some(origin),
            _,
        ] = found
        else {
            return None;
        };
        // The class sticks across lines; ours must be IN (anything else is rejected anyway,
        // by the whole-text pass with its diagnosis).
        if owner.dns_class != DNSClass::IN {
            return None;
        }
        let default_ttl = if after_1.ttl == after_2.ttl {
            Some(after_1.ttl)
        } else if (after_1.ttl, after_2.ttl) == (1, 2) {
            None
        } else {
            return None;
        };
        Some(ParserState {
            origin: origin.name.clone(),
            owner: owner.name.clone(),
            default_ttl,
            ttl: owner.ttl,
        })
    }

    /// Lines that put a fresh parser in this state (sentinels 7 and 0).
    fn restore(&self, chunk: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(chunk, "$ORIGIN {}", self.origin.to_ascii());
        match self.default_ttl {
            Some(ttl) => {
                let _ = writeln!(chunk, "$TTL {ttl}");
                let _ = writeln!(chunk, "@ 0 IN TXT {SENTINEL}7");
                let _ = writeln!(chunk, "{} IN TXT {SENTINEL}0", self.owner.to_ascii());
            }
            None => {
                let _ = writeln!(chunk, "@ 0 IN TXT {SENTINEL}7");
                let _ = writeln!(
                    chunk,
                    "{} {} IN TXT {SENTINEL}0",
                    self.owner.to_ascii(),
                    self.ttl
                );
            }
        }
    }

    /// Whether the restoring lines came out as meant (names survive `to_ascii` and back).
    fn restored(&self, found: &[Option<Record>; SENTINELS]) -> bool {
        let [Some(owner), .., Some(origin)] = found else {
            return false;
        };
        origin.name.eq_case(&self.origin)
            && owner.name.eq_case(&self.owner)
            && owner.ttl == self.ttl
    }
}

const SENTINELS: usize = 8;

/// Parses a large text chunk by chunk into the store; `Err` means "parse it whole".
fn parse_in_chunks(
    source: &Source<'_>,
    starts: &[EntryStart],
    chunk_entries: usize,
) -> Result<Zone, Failure> {
    let mut staging = Staging::new(source, Attempt::Chunked);
    let mut state: Option<ParserState> = None;
    let mut bounds: Vec<usize> = starts
        .iter()
        .step_by(chunk_entries.max(1))
        .map(|start| start.offset)
        .collect();
    if bounds.last() != Some(&source.text.len()) {
        bounds.push(source.text.len());
    }
    let mut chunk = String::new();
    for range in bounds.windows(2) {
        let &[start, end] = range else {
            continue;
        };
        let last = end == source.text.len();
        chunk.clear();
        if let Some(state) = &state {
            state.restore(&mut chunk);
        }
        chunk.push_str(source.text.get(start..end).ok_or(Failure::Retry)?);
        if !last {
            chunk.push_str(REPORT);
        }
        let parsed =
            source::parse(&chunk, source.path, source.origin).map_err(|_| Failure::Retry)?;
        let mut found: [Option<Record>; SENTINELS] = Default::default();
        staging.add(parsed, Some(&mut found))?;
        if state.as_ref().is_some_and(|state| !state.restored(&found)) {
            return Err(Failure::Retry);
        }
        if !last {
            state = Some(ParserState::from_report(&found).ok_or(Failure::Retry)?);
        }
    }
    staging.finish()
}

/// Whether the chunked pass may read `text`: hickory must see entries where `scan` does (it
/// does not, for quotes in a group), and no record of the text may pass for a sentinel.
fn chunkable(scan: &source::Scan, text: &str) -> bool {
    scan.quote_in_group.is_none() && !text.contains(SENTINEL)
}

/// The chunked pass alone: `None` where [`Zone::parse`] would fall back to the whole text.
#[cfg(test)]
pub(super) fn parse_chunked_only(origin: &Name, text: &str, chunk_entries: usize) -> Option<Zone> {
    let source = Source {
        text,
        path: None,
        origin,
    };
    let scan = source::scan(text);
    if !chunkable(&scan, text) {
        return None;
    }
    parse_in_chunks(&source, &scan.starts, chunk_entries).ok()
}

/// Which pass is running: the chunked one gives up where the whole-text one diagnoses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    Chunked,
    Whole,
}

// Failures are cold: one per load at most.
#[allow(clippy::large_enum_variant, reason = "cold path, as ZoneError itself")]
enum Failure {
    /// The chunked pass cannot vouch for the result: parse the whole text.
    Retry,
    Zone(ZoneError),
}

impl Attempt {
    /// Diagnosing costs parses (to find the line): only the whole-text pass does it.
    fn reject(self, error: impl FnOnce() -> ZoneError) -> Failure {
        match self {
            Attempt::Chunked => Failure::Retry,
            Attempt::Whole => Failure::Zone(error()),
        }
    }
}

/// The zone text, kept to locate problems.
struct Source<'a> {
    text: &'a str,
    path: Option<&'a Path>,
    origin: &'a Name,
}

impl Source<'_> {
    fn at(&self, line: Option<usize>) -> SourceLine {
        SourceLine {
            file: self.path.map(Path::to_path_buf),
            line,
        }
    }

    fn syntax(&self, error: &ParseError) -> ZoneError {
        let message = describe(error);
        // The shortest failing prefix fails at the entry that broke the whole text.
        let line = source::locate(self.text, self.path, self.origin, |result| result.is_err());
        ZoneError::Syntax {
            at: self.at(line),
            message,
        }
    }

    /// The line of the entry that first brings the RRset `key` into the parse.
    fn line_of(&self, name: &Name, rtype: RecordType) -> SourceLine {
        let key = RrKey::new(LowerName::new(name), rtype);
        self.line_where(|records| records.contains_key(&key))
    }

    fn line_where(&self, shows_problem: impl Fn(&ParsedRecords) -> bool) -> SourceLine {
        let line = source::locate(self.text, self.path, self.origin, |result| {
            result.as_ref().is_ok_and(&shows_problem)
        });
        self.at(line)
    }
}

/// hickory's wording, made plainer where operators most often meet it.
fn describe(error: &ParseError) -> String {
    match error {
        ParseError::Proto(ProtoError::Decode(DecodeError::UnknownRecordTypeStr(rtype))) => {
            format!("unknown record type \"{rtype}\"")
        }
        other => other.to_string(),
    }
}

/// Parser output on its way into a [`Store`]: RRsets with their owners' keys and their
/// records in wire form, in arrival order.
struct Staging<'s> {
    source: &'s Source<'s>,
    attempt: Attempt,
    origin_labels: usize,
    keys: Vec<u8>,
    rrsets: Vec<StagedRrset>,
    rdata: Vec<u8>,
    scratch: Vec<u8>,
    soa: Option<Record>,
    record_count: usize,
}

impl<'s> Staging<'s> {
    fn new(source: &'s Source<'s>, attempt: Attempt) -> Staging<'s> {
        Staging {
            source,
            attempt,
            origin_labels: source.origin.iter().len(),
            keys: Vec::new(),
            rrsets: Vec::new(),
            rdata: Vec::new(),
            scratch: Vec::new(),
            soa: None,
            record_count: 0,
        }
    }

    /// Checks and stages one parse's RRsets, consuming the map as it goes. `sentinels`: take
    /// the chunk-state records out, by number.
    fn add(
        &mut self,
        parsed: ParsedRecords,
        mut sentinels: Option<&mut [Option<Record>; SENTINELS]>,
    ) -> Result<(), Failure> {
        let (source, attempt) = (self.source, self.attempt);
        for (_, set) in parsed {
            let parts = set.into_parts();
            let name = parts.name.to_lowercase();
            let rtype = parts.record_type;
            let mut records = parts.records;
            if let Some(found) = sentinels.as_deref_mut()
                && rtype == RecordType::TXT
            {
                records.retain(|record| !take_sentinel(record, found));
                if records.is_empty() {
                    continue;
                }
            }
            check_rrset(source, attempt, &name, rtype, &records)?;
            if rtype == RecordType::SOA {
                if name != *source.origin {
                    return Err(attempt.reject(|| ZoneError::SoaNotAtApex {
                        at: source.line_of(&name, rtype),
                        name: name.clone(),
                        origin: source.origin.clone(),
                    }));
                }
                self.soa = records.first().map(|soa| {
                    let mut soa = soa.clone();
                    soa.name = name.clone();
                    soa
                });
            }
            self.record_count += records.len();

            let too_large = || {
                attempt.reject(|| ZoneError::TooLarge {
                    at: source.at(None),
                })
            };
            let key_start = u32::try_from(self.keys.len()).map_err(|_| too_large())?;
            store::push_key(self.origin_labels, &name, &mut self.keys);
            let rdata_start = u32::try_from(self.rdata.len()).map_err(|_| too_large())?;
            for record in &records {
                store::encode_rdata(&record.data, &mut self.scratch, &mut self.rdata).ok_or_else(
                    || {
                        attempt.reject(|| ZoneError::Unrepresentable {
                            at: source.line_of(&name, rtype),
                            name: name.clone(),
                            rtype,
                        })
                    },
                )?;
            }
            self.rrsets.push(StagedRrset {
                key_start,
                key_end: u32::try_from(self.keys.len()).map_err(|_| too_large())?,
                rtype: u16::from(rtype),
                // `check_rrset`: one TTL per RRset.
                ttl: records.first().map_or(0, |record| record.ttl),
                rdata_start,
                rdata_end: u32::try_from(self.rdata.len()).map_err(|_| too_large())?,
            });
        }
        Ok(())
    }

    /// Zone-wide checks, then the store.
    fn finish(mut self) -> Result<Zone, Failure> {
        let (source, attempt) = (self.source, self.attempt);
        let origin = source.origin;
        let Some(soa) = self.soa.take() else {
            return Err(attempt.reject(|| ZoneError::MissingSoa {
                at: source.at(None),
                origin: origin.clone(),
            }));
        };
        let keys = std::mem::take(&mut self.keys);
        let mut rrsets = std::mem::take(&mut self.rrsets);
        // Stable: the parts of an RRset that chunks split stay in text order.
        rrsets.sort_by(|a, b| a.key(&keys).cmp(b.key(&keys)).then(a.rtype.cmp(&b.rtype)));
        self.merge_split_rrsets(&keys, &mut rrsets)?;
        let apex_ns = u16::from(RecordType::NS);
        if !rrsets
            .iter()
            .any(|set| set.key(&keys).is_empty() && set.rtype == apex_ns)
        {
            return Err(attempt.reject(|| ZoneError::MissingApexNs {
                at: source.at(None),
                origin: origin.clone(),
            }));
        }
        let store = Store::build(&keys, &rrsets, std::mem::take(&mut self.rdata)).map_err(
            |store::TooLarge| {
                attempt.reject(|| ZoneError::TooLarge {
                    at: source.at(None),
                })
            },
        )?;
        drop((keys, rrsets));
        let zone = Zone {
            origin: origin.clone(),
            origin_labels: self.origin_labels,
            soa,
            store,
            record_count: self.record_count,
        };
        check_names(source, attempt, &zone)?;
        Ok(zone)
    }
}

impl Staging<'_> {
    /// Joins the parts of RRsets that chunk boundaries split, as hickory's `RecordSet::insert`
    /// joins records in one parse: a record with the RDATA of an earlier one is dropped, a
    /// CNAME replaces the set, anything else is appended. One parse has one RRset per
    /// (name, type), so this only happens in the chunked pass; a split SOA (two SOAs at one
    /// name) or a joined set with mixed TTLs is left to the whole-text pass to diagnose.
    fn merge_split_rrsets(
        &mut self,
        keys: &[u8],
        rrsets: &mut Vec<StagedRrset>,
    ) -> Result<(), Failure> {
        let same =
            |a: &StagedRrset, b: &StagedRrset| a.key(keys) == b.key(keys) && a.rtype == b.rtype;
        if !rrsets.windows(2).any(|w| same(&w[0], &w[1])) {
            return Ok(());
        }
        if self.attempt == Attempt::Whole {
            return Err(Failure::Retry);
        }
        let mut kept = 0;
        let mut next = 0;
        while let Some(first) = rrsets.get(next).copied() {
            let parts = rrsets[next..]
                .iter()
                .take_while(|set| same(&first, set))
                .count();
            let set = if parts == 1 {
                first
            } else {
                self.merge(&rrsets[next..next + parts])?
            };
            rrsets[kept] = set;
            kept += 1;
            next += parts;
        }
        rrsets.truncate(kept);
        Ok(())
    }

    fn merge(&mut self, parts: &[StagedRrset]) -> Result<StagedRrset, Failure> {
        let Some(&first) = parts.first() else {
            return Err(Failure::Retry);
        };
        let rtype = RecordType::from(first.rtype);
        if rtype == RecordType::SOA {
            return Err(Failure::Retry);
        }
        let mut merged: Vec<(RData, u32)> = Vec::new();
        for part in parts {
            self.record_count -= store::staged_rdatas(&self.rdata, part).count();
            for data in store::staged_rdatas(&self.rdata, part) {
                if rtype == RecordType::CNAME {
                    merged.clear();
                }
                // Records are equal by RDATA (names without case), whatever their TTL
                // (RFC 2136 §1.1.1): the first one stays.
                if !merged.iter().any(|(kept, _)| *kept == data) {
                    merged.push((data, part.ttl));
                }
            }
        }
        if merged.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(Failure::Retry);
        }
        self.record_count += merged.len();
        let rdata_start = u32::try_from(self.rdata.len()).map_err(|_| Failure::Retry)?;
        for (data, _) in &merged {
            store::encode_rdata(data, &mut self.scratch, &mut self.rdata).ok_or(Failure::Retry)?;
        }
        Ok(StagedRrset {
            ttl: merged.first().map_or(first.ttl, |(_, ttl)| *ttl),
            rdata_start,
            rdata_end: u32::try_from(self.rdata.len()).map_err(|_| Failure::Retry)?,
            ..first
        })
    }
}

/// Whether `record` is a chunk-state sentinel; if so, it is kept in `found` by number.
fn take_sentinel(record: &Record, found: &mut [Option<Record>; SENTINELS]) -> bool {
    let RData::TXT(txt) = &record.data else {
        return false;
    };
    let [data] = &*txt.txt_data else {
        return false;
    };
    let number = data
        .strip_prefix(SENTINEL.as_bytes())
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok());
    match number.and_then(|n| found.get_mut(n)) {
        Some(slot) => {
            *slot = Some(record.clone());
            true
        }
        None => false,
    }
}

/// Per-RRset checks: owner inside the origin, class IN, TTLs.
fn check_rrset(
    source: &Source<'_>,
    attempt: Attempt,
    name: &Name,
    rtype: RecordType,
    records: &[Record],
) -> Result<(), Failure> {
    if !source.origin.zone_of(name) {
        return Err(attempt.reject(|| ZoneError::OutsideOrigin {
            at: source.line_of(name, rtype),
            name: name.clone(),
            origin: source.origin.clone(),
        }));
    }
    let Some(first) = records.first() else {
        return Ok(());
    };
    for record in records {
        if record.dns_class != DNSClass::IN {
            return Err(attempt.reject(|| ZoneError::NotInClass {
                at: source.line_of(name, rtype),
                name: name.clone(),
                rtype,
                class: record.dns_class,
            }));
        }
        if record.ttl > MAX_TTL {
            return Err(attempt.reject(|| ZoneError::TtlTooLarge {
                at: source.line_of(name, rtype),
                name: name.clone(),
                rtype,
                ttl: record.ttl,
            }));
        }
        if record.ttl != first.ttl {
            return Err(attempt.reject(|| {
                let key = RrKey::new(LowerName::new(name), rtype);
                ZoneError::TtlMismatch {
                    at: source.line_where(|parsed| {
                        parsed.get(&key).is_some_and(|set| {
                            set.records_without_rrsigs()
                                .any(|record| record.ttl != first.ttl)
                        })
                    }),
                    name: name.clone(),
                    rtype,
                    first: first.ttl,
                    other: record.ttl,
                }
            }));
        }
    }
    Ok(())
}

/// Per-name checks that need all RRsets of a name, in canonical name order (the store's), so
/// the error reported for a broken zone is the first in that order.
fn check_names(source: &Source<'_>, attempt: Attempt, zone: &Zone) -> Result<(), Failure> {
    let store = &zone.store;
    for node in 0..store.len() as NodeIdx {
        let has = |rtype| store.rrset(node, rtype).is_some();
        if has(RecordType::CNAME) {
            if store.key(node).is_empty() {
                return Err(attempt.reject(|| {
                    let name = zone.node_name(node);
                    ZoneError::CnameAtApex {
                        at: source.line_of(&name, RecordType::CNAME),
                        name,
                    }
                }));
            }
            if let Some(other) = store
                .rrsets(node)
                .iter()
                .find(|set| set.rtype() != RecordType::CNAME)
            {
                return Err(attempt.reject(|| {
                    let name = zone.node_name(node);
                    let cname = RrKey::new(LowerName::new(&name), RecordType::CNAME);
                    let other_key = RrKey::new(LowerName::new(&name), other.rtype());
                    ZoneError::CnameAndOtherData {
                        at: source.line_where(|parsed| {
                            parsed.contains_key(&cname) && parsed.contains_key(&other_key)
                        }),
                        name,
                        other: other.rtype(),
                    }
                }));
            }
        }
        let wildcard = store::parent_key(store.key(node))
            .is_some_and(|parent| &store.key(node)[parent.len()..] == b"*\0");
        if wildcard && has(RecordType::NS) {
            return Err(attempt.reject(|| {
                let name = zone.node_name(node);
                ZoneError::WildcardDelegation {
                    at: source.line_of(&name, RecordType::NS),
                    name,
                }
            }));
        }
    }
    Ok(())
}
