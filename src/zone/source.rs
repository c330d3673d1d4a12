//! Finding the line of a problem in zone text.
//!
//! hickory's parser reports neither line nor position, and its output (an RRset map) forgets
//! where each record came from. Rather than fork the parser, the error path re-parses prefixes
//! of the text and binary-searches for the shortest one that shows the problem. Prefixes end
//! only at entry boundaries (line starts outside parentheses and quotes), so each prefix is a
//! well-formed zone text and the property searched for is monotone. This costs
//! O(log lines) parses, only when loading fails.

use std::collections::BTreeMap;
use std::path::Path;

use hickory_proto::rr::{Name, RecordSet, RrKey};
use hickory_proto::serialize::txt::{ParseResult, Parser};

pub(super) type ParsedRecords = BTreeMap<RrKey, RecordSet>;

/// Parses zone text with hickory; `path` resolves relative `$INCLUDE`s.
pub(super) fn parse(text: &str, path: Option<&Path>, origin: &Name) -> ParseResult<ParsedRecords> {
    Parser::new(text, path.map(Path::to_path_buf), Some(origin.clone()))
        .parse()
        .map(|(_, records)| records)
}

/// The 1-based line where the entry starts that first makes `shows_problem` true, assuming it
/// is false for the empty text and true for the whole text.
pub(super) fn locate(
    text: &str,
    path: Option<&Path>,
    origin: &Name,
    shows_problem: impl Fn(&ParseResult<ParsedRecords>) -> bool,
) -> Option<usize> {
    let starts = entry_starts(text);
    // Invariant: the answer prefix index lies in lo..=hi, and prefix `hi` shows the problem.
    let (mut lo, mut hi) = (1, starts.len().checked_sub(1)?);
    if hi == 0 {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let prefix = text.get(..starts[mid].offset)?;
        if shows_problem(&parse(prefix, path, origin)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(starts[lo - 1].line)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EntryStart {
    pub offset: usize,
    pub line: usize,
}

/// Offsets at which a new entry may begin, first `0`, last `text.len()`.
pub(super) fn entry_starts(text: &str) -> Vec<EntryStart> {
    scan(text).starts
}

pub(super) struct Scan {
    /// As [`entry_starts`] returns them.
    pub starts: Vec<EntryStart>,
    /// The line of the first quoted string inside a `( … )` group, if any.
    ///
    /// hickory 0.26's lexer does not recognise quotes inside a group: `( "a b" )` becomes the
    /// two strings `"a` and `b"`, and a `;` inside the quotes starts a comment. Rather than
    /// serve mangled TXT data, the loader rejects such text.
    pub quote_in_group: Option<usize>,
}

/// Tracks just enough of RFC 1035 §5.1 lexing to know when a newline ends an entry: quoted
/// strings, `\` escapes, `;` comments and `( … )` groups.
pub(super) fn scan(text: &str) -> Scan {
    let mut quote_in_group = None;
    let mut starts = vec![EntryStart { offset: 0, line: 1 }];
    let (mut depth, mut quoted, mut comment, mut escaped) = (0_u32, false, false, false);
    let mut line = 1;
    for (offset, byte) in text.bytes().enumerate() {
        if byte == b'\n' {
            line += 1;
        }
        if escaped {
            escaped = false;
            continue;
        }
        match byte {
            b'\n' => {
                comment = false;
                if depth == 0 && !quoted {
                    starts.push(EntryStart {
                        offset: offset + 1,
                        line,
                    });
                }
            }
            _ if comment => {}
            b'\\' => escaped = true,
            b'"' => {
                if depth > 0 && quote_in_group.is_none() {
                    quote_in_group = Some(line);
                }
                quoted = !quoted;
            }
            _ if quoted => {}
            b';' => comment = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if starts.last().map(|start| start.offset) != Some(text.len()) {
        starts.push(EntryStart {
            offset: text.len(),
            line,
        });
    }
    Scan {
        starts,
        quote_in_group,
    }
}
