//! Building MaxMind DB files: from `(network, location)` entries, or from the CSV the demo
//! database is kept in. Records are GeoIP2-City-shaped in an IPv6 tree with the usual IPv4
//! aliases, so any MaxMind reader (ours, `mmdblookup`, libmaxminddb) reads them as it reads
//! GeoLite2-City. Output is byte-for-byte reproducible: the build time is an input, never the
//! clock.
//!
//! This is the only module that speaks `mmdb-writer`'s API. It is tooling (`meridian geoip
//! build`, tests); the DNS path never writes databases.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;

use super::error::{CsvProblem, EntryProblem, GeoError};
use super::location::Location;
use crate::config::model::Coordinates;

/// `database_type` of databases built from CSV. It contains "City" so [`super::GeoDb`]
/// accepts it, and says plainly it is not a MaxMind product.
pub const CSV_DATABASE_TYPE: &str = "Meridian-Demo-City";

/// `build_epoch` of databases built from CSV (2026-01-01T00:00:00Z): fixed so that the
/// committed demo database can be checked against its CSV byte for byte.
pub const CSV_BUILD_EPOCH: u64 = 1_767_225_600;

/// The CSV columns, in order. `subdivision` is the ISO 3166-2 part after the dash (`CA` for
/// `US-CA`); `city` only names the row (written as `city.names.en`).
pub const CSV_COLUMNS: [&str; 7] = [
    "network",
    "continent",
    "country",
    "subdivision",
    "latitude",
    "longitude",
    "city",
];

const DESCRIPTION: &str = "Built by Meridian (meridian geoip build)";

/// MaxMind continent codes.
const CONTINENTS: [(&str, &str); 7] = [
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

/// IPv6 ranges a MaxMind DB points at its IPv4 tree; nothing may be written into them.
const IPV4_ALIASES: [&str; 3] = ["::ffff:0:0/96", "2001::/32", "2002::/16"];

/// Builds a City-shaped MaxMind DB. Where entries overlap, the more specific network wins
/// whatever the order of `entries`. Sibling networks with identical locations come out merged
/// into their parent (the tree stores them once), which readers cannot tell apart.
pub fn build_database(
    database_type: &str,
    entries: &[(IpNet, Location)],
    build_epoch: u64,
) -> Result<Vec<u8>, GeoError> {
    let entries: Vec<DbEntry<'_>> = entries
        .iter()
        .map(|(network, location)| DbEntry {
            network: *network,
            location,
            city: None,
        })
        .collect();
    write_database(database_type, &entries, build_epoch)
}

/// Builds a database from a CSV file with the columns [`CSV_COLUMNS`] (a header row first;
/// lines starting with `#` are comments), as [`CSV_DATABASE_TYPE`] built at
/// [`CSV_BUILD_EPOCH`].
pub fn build_database_from_csv(csv_path: &Path) -> Result<Vec<u8>, GeoError> {
    let text = std::fs::read(csv_path).map_err(|e| GeoError::CsvUnreadable {
        path: csv_path.to_owned(),
        reason: e.to_string(),
    })?;
    let rows = parse_csv(csv_path, &text)?;
    let entries: Vec<DbEntry<'_>> = rows
        .iter()
        .map(|row| DbEntry {
            network: row.network,
            location: &row.location,
            city: row.city.as_deref(),
        })
        .collect();
    write_database(CSV_DATABASE_TYPE, &entries, CSV_BUILD_EPOCH)
}

struct DbEntry<'a> {
    network: IpNet,
    location: &'a Location,
    city: Option<&'a str>,
}

fn write_database(
    database_type: &str,
    entries: &[DbEntry<'_>],
    build_epoch: u64,
) -> Result<Vec<u8>, GeoError> {
    // libmaxminddb (gdnsd, Knot, mmdblookup) rejects build_epoch 0 as invalid metadata; a
    // database only our own reader can open is not what this writer promises.
    if build_epoch == 0 {
        return Err(GeoError::Build {
            reason: "build_epoch must be a real time (libmaxminddb rejects 0)".to_string(),
        });
    }
    let mut seen = HashSet::with_capacity(entries.len());
    for entry in entries {
        check_entry(entry.network, entry.location).map_err(|problem| GeoError::InvalidEntry {
            network: entry.network,
            problem,
        })?;
        if !seen.insert(entry.network) {
            return Err(GeoError::InvalidEntry {
                network: entry.network,
                problem: EntryProblem::Duplicate,
            });
        }
    }

    // The writer lets the last insert win; inserting wider networks first makes the more
    // specific one win instead, independent of input order.
    let mut ordered: Vec<&DbEntry<'_>> = entries.iter().collect();
    // Sorting on the network too makes the insert order, and so the bytes, canonical.
    ordered.sort_by_key(|entry| (tree_prefix_len(entry.network), entry.network));

    let mut writer = Writer::builder(database_type)
        .description(&[("en", DESCRIPTION)])
        .build_epoch(UNIX_EPOCH + Duration::from_secs(build_epoch))
        .build();
    for entry in ordered {
        let record = CityRecord::new(entry.location, entry.city);
        writer
            .insert(entry.network, &record)
            .map_err(|e| GeoError::Build {
                reason: format!("{}: {e}", entry.network),
            })?;
    }
    writer.to_bytes().map_err(|e| GeoError::Build {
        reason: e.to_string(),
    })
}

/// Depth of the network in an IPv6 tree, where IPv4 lives under `::/96`.
fn tree_prefix_len(network: IpNet) -> u8 {
    match network {
        IpNet::V4(v4) => 96 + v4.prefix_len(),
        IpNet::V6(v6) => v6.prefix_len(),
    }
}

fn check_entry(network: IpNet, location: &Location) -> Result<(), EntryProblem> {
    if network != network.trunc() {
        return Err(EntryProblem::HostBitsSet {
            network: network.trunc(),
        });
    }
    if let IpNet::V6(v6) = network {
        if v6.prefix_len() >= 96 && u128::from(v6.network()) >> 32 == 0 {
            return Err(EntryProblem::InIpv4Embedding);
        }
        for alias in IPV4_ALIASES {
            if let Ok(alias) = alias.parse::<IpNet>()
                && alias.contains(&network)
            {
                return Err(EntryProblem::InIpv4Alias { alias });
            }
        }
    }
    if let Some(subdivision) = &location.subdivision {
        let inside = location.country.as_deref().is_some_and(|country| {
            subdivision
                .strip_prefix(country)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|code| !code.is_empty())
        });
        if !inside {
            return Err(EntryProblem::SubdivisionOutsideCountry {
                subdivision: subdivision.clone(),
                country: location.country.clone(),
            });
        }
    }
    Ok(())
}

/// A GeoIP2 City record, as much of it as we know. Fields that are `None` are left out.
#[derive(Serialize)]
struct CityRecord<'a> {
    city: Option<Named<'a>>,
    continent: Option<Continent<'a>>,
    country: Option<IsoCode<'a>>,
    location: Option<Point>,
    subdivisions: Option<[IsoCode<'a>; 1]>,
}

#[derive(Serialize)]
struct Named<'a> {
    names: Names<'a>,
}

#[derive(Serialize)]
struct Names<'a> {
    en: &'a str,
}

#[derive(Serialize)]
struct Continent<'a> {
    code: &'a str,
    names: Option<Names<'a>>,
}

#[derive(Serialize)]
struct IsoCode<'a> {
    iso_code: &'a str,
}

#[derive(Serialize)]
struct Point {
    latitude: f64,
    longitude: f64,
}

impl<'a> CityRecord<'a> {
    fn new(location: &'a Location, city: Option<&'a str>) -> Self {
        let country = location.country.as_deref();
        // check_entry made sure the subdivision is "<country>-<code>".
        let subdivision = location
            .subdivision
            .as_deref()
            .zip(country)
            .and_then(|(sub, country)| sub.get(country.len() + 1..));
        CityRecord {
            city: city.map(|en| Named {
                names: Names { en },
            }),
            continent: location.continent.as_deref().map(|code| Continent {
                code,
                names: CONTINENTS
                    .iter()
                    .find(|(c, _)| *c == code)
                    .map(|(_, en)| Names { en }),
            }),
            country: country.map(|iso_code| IsoCode { iso_code }),
            location: location.coordinates.map(|c| Point {
                latitude: c.latitude,
                longitude: c.longitude,
            }),
            subdivisions: subdivision.map(|iso_code| [IsoCode { iso_code }]),
        }
    }
}

/// One parsed CSV row.
#[derive(Debug, PartialEq)]
struct CsvEntry {
    network: IpNet,
    location: Location,
    city: Option<String>,
}

fn parse_csv(path: &Path, text: &[u8]) -> Result<Vec<CsvEntry>, GeoError> {
    let row_error = |line: u64, problem: CsvProblem| GeoError::CsvRow {
        path: path.to_owned(),
        line,
        problem,
    };
    let malformed = |e: csv::Error| {
        let line = e.position().map_or(0, csv::Position::line);
        row_error(
            line,
            CsvProblem::Malformed {
                reason: e.to_string(),
            },
        )
    };

    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text);
    let header = reader.headers().map_err(malformed)?;
    if header.iter().ne(CSV_COLUMNS) {
        let line = header.position().map_or(1, csv::Position::line);
        return Err(row_error(
            line,
            CsvProblem::Header {
                expected: CSV_COLUMNS.join(","),
                found: header.iter().collect::<Vec<_>>().join(","),
            },
        ));
    }

    let mut entries = Vec::new();
    let mut first_seen: HashMap<IpNet, u64> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(malformed)?;
        let line = record.position().map_or(0, csv::Position::line);
        let entry = parse_row(&record).map_err(|problem| row_error(line, problem))?;
        match first_seen.entry(entry.network) {
            Entry::Occupied(first) => {
                return Err(row_error(
                    line,
                    CsvProblem::Duplicate {
                        network: entry.network,
                        first_line: *first.get(),
                    },
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(line);
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_row(record: &csv::StringRecord) -> Result<CsvEntry, CsvProblem> {
    // The csv reader rejects rows whose length differs from the header's.
    let field = |i: usize| record.get(i).unwrap_or_default();
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());

    let value = field(0);
    let network: IpNet = value.parse().map_err(|_| CsvProblem::InvalidNetwork {
        value: value.to_owned(),
    })?;
    if network != network.trunc() {
        return Err(CsvProblem::HostBitsSet {
            value: value.to_owned(),
            network: network.trunc(),
        });
    }

    let continent = code(field(1), "continent", |c| {
        CONTINENTS.iter().any(|(known, _)| *known == c)
    })?;
    let country = code(field(2), "country", |c| {
        c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())
    })?;
    let subdivision = code(field(3), "subdivision", |c| {
        (1..=3).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })?;
    let coordinates = match (field(4), field(5)) {
        ("", "") => None,
        (latitude, longitude) => Some(Coordinates {
            latitude: coordinate(latitude, "latitude", 90.0)?,
            longitude: coordinate(longitude, "longitude", 180.0)?,
        }),
    };

    let subdivision = match (subdivision, &country) {
        (Some(sub), Some(country)) => Some(format!("{country}-{sub}").into_boxed_str()),
        (Some(sub), None) => {
            return Err(CsvProblem::Entry(EntryProblem::SubdivisionOutsideCountry {
                subdivision: sub.into_boxed_str(),
                country: None,
            }));
        }
        (None, _) => None,
    };
    let location = Location {
        country: country.map(String::into_boxed_str),
        subdivision,
        continent: continent.map(String::into_boxed_str),
        coordinates,
    };
    check_entry(network, &location).map_err(CsvProblem::Entry)?;
    Ok(CsvEntry {
        network,
        location,
        city: optional(field(6)),
    })
}

fn code(
    value: &str,
    column: &'static str,
    valid: impl Fn(&str) -> bool,
) -> Result<Option<String>, CsvProblem> {
    match value {
        "" => Ok(None),
        v if valid(v) => Ok(Some(v.to_owned())),
        v => Err(CsvProblem::InvalidCode {
            column,
            value: v.to_owned(),
        }),
    }
}

fn coordinate(value: &str, column: &'static str, limit: f64) -> Result<f64, CsvProblem> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && v.abs() <= limit)
        .ok_or_else(|| CsvProblem::InvalidCoordinate {
            column,
            value: value.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use maxminddb::geoip2;

    use super::*;
    use crate::geo::test_support::{TempFile, location, repo_file};

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    #[test]
    fn committed_demo_database_matches_its_csv() {
        let built = build_database_from_csv(&repo_file("geoip/demo.csv")).expect("demo builds");
        let committed = std::fs::read(repo_file("geoip/demo.mmdb")).expect("demo.mmdb");
        assert!(
            built == committed,
            "geoip/demo.mmdb is stale: run `meridian geoip build --csv geoip/demo.csv --out geoip/demo.mmdb`"
        );
    }

    #[test]
    fn records_read_as_geoip2_city() {
        let reader =
            maxminddb::Reader::open_readfile(repo_file("geoip/demo.mmdb")).expect("demo opens");
        let addr: IpAddr = "81.2.69.142".parse().expect("address");
        let city: geoip2::City<'_> = reader
            .lookup(addr)
            .expect("lookup")
            .decode()
            .expect("decode")
            .expect("found");
        assert_eq!(city.city.names.english, Some("London"));
        assert_eq!(city.country.iso_code, Some("GB"));
        assert_eq!(city.continent.code, Some("EU"));
        assert_eq!(city.continent.names.english, Some("Europe"));
        assert_eq!(
            city.subdivisions.first().and_then(|s| s.iso_code),
            Some("ENG")
        );
        assert_eq!(city.location.latitude, Some(51.5142));
        assert_eq!(city.location.longitude, Some(-0.0931));
    }

    #[test]
    fn output_depends_on_the_entries_not_their_order() {
        let gb = location("EU", "GB", Some("GB-ENG"), Some((51.5, -0.1)));
        let us = location("NA", "US", Some("US-CA"), None);
        let entries = vec![
            (net("81.2.64.0/20"), gb.clone()),
            (net("81.2.69.0/24"), us.clone()),
            (net("2001:4860::/32"), us),
            (net("2a02:2e0::/32"), gb),
        ];
        let forward = build_database("Test-City", &entries, 42).expect("build");
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(
            build_database("Test-City", &reversed, 42),
            Ok(forward.clone())
        );
        assert_ne!(build_database("Test-City", &entries, 43), Ok(forward));
    }

    #[test]
    fn entries_that_cannot_be_written_are_rejected() {
        let gb = location("EU", "GB", Some("GB-ENG"), None);
        let table = [
            (
                vec![(net("81.2.69.1/24"), gb.clone())],
                EntryProblem::HostBitsSet {
                    network: net("81.2.69.0/24"),
                },
            ),
            (
                vec![(net("::ffff:81.2.69.0/120"), gb.clone())],
                EntryProblem::InIpv4Alias {
                    alias: net("::ffff:0:0/96"),
                },
            ),
            (
                vec![(net("2002:5102:4500::/40"), gb.clone())],
                EntryProblem::InIpv4Alias {
                    alias: net("2002::/16"),
                },
            ),
            (
                vec![(net("2001:0:5102:4500::/56"), gb.clone())],
                EntryProblem::InIpv4Alias {
                    alias: net("2001::/32"),
                },
            ),
            (
                vec![(net("::81.2.69.0/120"), gb.clone())],
                EntryProblem::InIpv4Embedding,
            ),
            (
                vec![(
                    net("81.2.69.0/24"),
                    location("EU", "GB", Some("US-CA"), None),
                )],
                EntryProblem::SubdivisionOutsideCountry {
                    subdivision: "US-CA".into(),
                    country: Some("GB".into()),
                },
            ),
            (
                vec![
                    (net("81.2.69.0/24"), gb.clone()),
                    (net("81.2.69.0/24"), gb.clone()),
                ],
                EntryProblem::Duplicate,
            ),
        ];
        for (entries, problem) in table {
            let network = entries.last().map(|(n, _)| *n).expect("entry");
            assert_eq!(
                build_database("Test-City", &entries, CSV_BUILD_EPOCH),
                Err(GeoError::InvalidEntry { network, problem })
            );
        }
    }

    #[test]
    fn build_epoch_zero_is_refused() {
        assert!(matches!(
            build_database("Test-City", &[], 0),
            Err(GeoError::Build { .. })
        ));
    }

    const HEADER: &str = "network,continent,country,subdivision,latitude,longitude,city\n";

    fn parse(text: &str) -> Result<Vec<CsvEntry>, GeoError> {
        parse_csv(Path::new("test.csv"), text.as_bytes())
    }

    fn row_error(line: u64, problem: CsvProblem) -> Result<Vec<CsvEntry>, GeoError> {
        Err(GeoError::CsvRow {
            path: "test.csv".into(),
            line,
            problem,
        })
    }

    #[test]
    fn csv_rows_parse_into_locations() {
        let text = format!(
            "# comment\n{HEADER}81.2.69.0/24, EU, GB, ENG, 51.5142, -0.0931, London\n\
             2a02:2e0::/32,EU,DE,,,,\n"
        );
        let expected = vec![
            CsvEntry {
                network: net("81.2.69.0/24"),
                location: location("EU", "GB", Some("GB-ENG"), Some((51.5142, -0.0931))),
                city: Some("London".to_owned()),
            },
            CsvEntry {
                network: net("2a02:2e0::/32"),
                location: location("EU", "DE", None, None),
                city: None,
            },
        ];
        assert_eq!(parse(&text), Ok(expected));
    }

    #[test]
    fn bad_csv_rows_name_their_line() {
        let good = "81.2.69.0/24,EU,GB,ENG,51.5,-0.1,London\n";
        // Line 1 is a comment, 2 the header, 3 a good row: the bad row is line 4.
        let table = [
            (
                "81.2.69.0/33,EU,GB,,,,",
                CsvProblem::InvalidNetwork {
                    value: "81.2.69.0/33".to_owned(),
                },
            ),
            (
                "81.2.70.1/24,EU,GB,,,,",
                CsvProblem::HostBitsSet {
                    value: "81.2.70.1/24".to_owned(),
                    network: net("81.2.70.0/24"),
                },
            ),
            (
                "81.2.70.0/24,XX,GB,,,,",
                CsvProblem::InvalidCode {
                    column: "continent",
                    value: "XX".to_owned(),
                },
            ),
            (
                "81.2.70.0/24,EU,gb,,,,",
                CsvProblem::InvalidCode {
                    column: "country",
                    value: "gb".to_owned(),
                },
            ),
            (
                "81.2.70.0/24,EU,GB,GB-ENG,,,",
                CsvProblem::InvalidCode {
                    column: "subdivision",
                    value: "GB-ENG".to_owned(),
                },
            ),
            (
                "81.2.70.0/24,EU,GB,,91,0,",
                CsvProblem::InvalidCoordinate {
                    column: "latitude",
                    value: "91".to_owned(),
                },
            ),
            (
                "81.2.70.0/24,EU,GB,,51.5,,",
                CsvProblem::InvalidCoordinate {
                    column: "longitude",
                    value: String::new(),
                },
            ),
            (
                "81.2.70.0/24,EU,,ENG,,,",
                CsvProblem::Entry(EntryProblem::SubdivisionOutsideCountry {
                    subdivision: "ENG".into(),
                    country: None,
                }),
            ),
            (
                "2002::/24,EU,GB,,,,",
                CsvProblem::Entry(EntryProblem::InIpv4Alias {
                    alias: net("2002::/16"),
                }),
            ),
            (
                "81.2.69.0/24,EU,GB,,,,",
                CsvProblem::Duplicate {
                    network: net("81.2.69.0/24"),
                    first_line: 3,
                },
            ),
        ];
        for (bad, problem) in table {
            let text = format!("# demo\n{HEADER}{good}{bad}\n");
            assert_eq!(parse(&text), row_error(4, problem), "{bad}");
        }

        let short = format!("# demo\n{HEADER}{good}81.2.70.0/24,EU,GB\n");
        assert!(
            matches!(
                parse(&short),
                Err(GeoError::CsvRow {
                    line: 4,
                    problem: CsvProblem::Malformed { .. },
                    ..
                })
            ),
            "{:?}",
            parse(&short)
        );

        assert_eq!(
            parse("network,country\n81.2.69.0/24,GB\n"),
            row_error(
                1,
                CsvProblem::Header {
                    expected: HEADER.trim_end().to_owned(),
                    found: "network,country".to_owned(),
                }
            )
        );
    }

    #[test]
    fn csv_files_errors_name_the_file() {
        let bad = TempFile::with_contents(format!("{HEADER}not-a-network,EU,GB,,,,\n").as_bytes());
        assert_eq!(
            build_database_from_csv(&bad.path),
            Err(GeoError::CsvRow {
                path: bad.path.clone(),
                line: 2,
                problem: CsvProblem::InvalidNetwork {
                    value: "not-a-network".to_owned()
                },
            })
        );

        let missing = repo_file("geoip/no-such-file.csv");
        assert!(matches!(
            build_database_from_csv(&missing),
            Err(GeoError::CsvUnreadable { path, .. }) if path == missing
        ));
    }
}
