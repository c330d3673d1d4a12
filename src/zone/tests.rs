use std::path::{Path, PathBuf};
use std::str::FromStr;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::svcb::{Alpn, SvcParamKey, SvcParamValue};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use proptest::prelude::*;

use super::lookup::MAX_CNAME_CHAIN;
use super::source::entry_starts;
use super::*;

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

fn zone(origin: &str, text: &str) -> Zone {
    Zone::parse(&name(origin), text, None).unwrap()
}

fn parse_error(text: &str) -> ZoneError {
    Zone::parse(&name("example.test."), text, None).unwrap_err()
}

fn at(line: Option<usize>) -> SourceLine {
    SourceLine { file: None, line }
}

fn show(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One line per outcome, so tables read like `dig` output.
fn render(lookup: &Lookup) -> String {
    let after = |chain: &[Record]| match chain {
        [] => String::new(),
        chain => format!(" after {}", show(chain)),
    };
    match lookup {
        Lookup::Answer {
            answers,
            additionals,
        } if additionals.is_empty() => format!("answer {}", show(answers)),
        Lookup::Answer {
            answers,
            additionals,
        } => format!(
            "answer {} | additional {}",
            show(answers),
            show(additionals)
        ),
        Lookup::NoData { chain } => format!("nodata{}", after(chain)),
        Lookup::NxDomain { chain } => format!("nxdomain{}", after(chain)),
        Lookup::Referral { ns, glue } if glue.is_empty() => format!("referral {}", show(ns)),
        Lookup::Referral { ns, glue } => format!("referral {} | glue {}", show(ns), show(glue)),
        Lookup::Dynamic { chain, name } => format!("dynamic {name}{}", after(chain)),
    }
}

fn check_table(zone: &Zone, table: &[(&str, RecordType, &str)]) {
    for (qname, qtype, expected) in table {
        let got = render(&zone.lookup(&name(qname), *qtype));
        assert_eq!(&got, expected, "{qname} {qtype}");
    }
}

/// The example zone of RFC 4592 §2.2.1, with A records for the NS targets of `subdel`.
const RFC4592_ZONE: &str = r#"
$ORIGIN example.
example.                 3600 IN  SOA   ns.example.com. hostmaster.example. 1 7200 1800 1209600 300
example.                 3600     NS    ns.example.com.
example.                 3600     NS    ns.example.net.
*.example.               3600     TXT   "this is a wildcard"
*.example.               3600     MX    10 host1.example.
sub.*.example.           3600     TXT   "this is not a wildcard"
host1.example.           3600     A     192.0.2.1
_ssh._tcp.host1.example. 3600     SRV   0 0 22 host1.example.
_ssh._tcp.host2.example. 3600     SRV   0 0 22 host2.example.
subdel.example.          3600     NS    ns.example.com.
subdel.example.          3600     NS    ns.example.net.
"#;

#[test]
fn wildcards_follow_rfc4592_examples() {
    let zone = zone("example.", RFC4592_ZONE);
    use RecordType::*;
    check_table(
        &zone,
        &[
            // §2.2.1: names that do not exist get the wildcard, owned by the qname.
            (
                "host3.example.",
                MX,
                "answer host3.example. MX 10 host1.example. | additional host1.example. A 192.0.2.1",
            ),
            ("host3.example.", A, "nodata"),
            (
                "foo.bar.example.",
                TXT,
                "answer foo.bar.example. TXT this is a wildcard",
            ),
            // Existing names, empty non-terminals and the wildcard's own subtree block it.
            ("host1.example.", MX, "nodata"),
            ("sub.*.example.", MX, "nodata"),
            ("_telnet._tcp.host1.example.", SRV, "nxdomain"),
            ("ghost.*.example.", MX, "nxdomain"),
            ("_tcp.host1.example.", SRV, "nodata"),
            // Below a cut the wildcard does not apply: the child answers.
            (
                "host.subdel.example.",
                A,
                "referral subdel.example. NS ns.example.com.; subdel.example. NS ns.example.net.",
            ),
            // Asking for the wildcard itself returns it as written.
            (
                "*.example.",
                TXT,
                "answer *.example. TXT this is a wildcard",
            ),
        ],
    );
}

const ZONE: &str = r#"
$ORIGIN example.test.
$TTL 3600
@        IN SOA ns1 hostmaster 7 7200 1800 1209600 300
@        IN NS  ns1
@        IN NS  ns.lab
@        IN MX  10 mail
@        IN MX  20 mail
@        IN MX  30 mx.elsewhere.test.
ns1      IN A   192.0.2.1
Mail     IN A   192.0.2.25
mail     IN AAAA 2001:db8::25
www      IN A   192.0.2.80
www      IN TXT "Mixed Case Kept"
docs     IN CNAME WWW
one      IN CNAME docs
out      IN CNAME www.elsewhere.test.
loop1    IN CNAME loop2
loop2    IN CNAME loop1
self     IN CNAME self
dangling IN CNAME nowhere
ent-ref  IN CNAME b
to-cut   IN CNAME host.lab
chat     IN CNAME api
alias-of-chat IN CNAME chat
_sip._tcp IN SRV 0 5 5060 mail
a.b      IN A   192.0.2.110
*.apps   IN A   192.0.2.100
*.apps   IN AAAA 2001:db8::100
*.cn     IN CNAME www
x.apps   IN TXT "exists"
lab      IN NS  ns.lab
lab      IN NS  ns.other.test.
ns.lab   IN A   192.0.2.53
ns.lab   IN AAAA 2001:db8::53
deep.lab IN A   192.0.2.54
"#;

fn test_zone() -> Zone {
    let mut zone = zone("example.test.", ZONE);
    zone.add_dynamic_name(&name("api.example.test.")).unwrap();
    zone
}

#[test]
fn lookups_follow_authoritative_semantics() {
    let zone = test_zone();
    use RecordType::*;
    check_table(
        &zone,
        &[
            // Plain data; rdata case is kept, owner names are lower-cased.
            (
                "www.example.test.",
                A,
                "answer www.example.test. A 192.0.2.80",
            ),
            (
                "www.example.test.",
                TXT,
                "answer www.example.test. TXT Mixed Case Kept",
            ),
            ("www.example.test.", AAAA, "nodata"),
            ("nope.example.test.", A, "nxdomain"),
            ("x.nope.example.test.", A, "nxdomain"),
            // Additional-section processing: each in-zone target once, out-of-zone ones skipped.
            (
                "example.test.",
                MX,
                "answer example.test. MX 10 mail.example.test.; example.test. MX 20 mail.example.test.; \
                 example.test. MX 30 mx.elsewhere.test. | additional mail.example.test. A 192.0.2.25; \
                 mail.example.test. AAAA 2001:db8::25",
            ),
            (
                "_sip._tcp.example.test.",
                SRV,
                "answer _sip._tcp.example.test. SRV 0 5 5060 mail.example.test. | additional \
                 mail.example.test. A 192.0.2.25; mail.example.test. AAAA 2001:db8::25",
            ),
            (
                "example.test.",
                NS,
                "answer example.test. NS ns1.example.test.; example.test. NS ns.lab.example.test. | \
                 additional ns1.example.test. A 192.0.2.1; ns.lab.example.test. A 192.0.2.53; \
                 ns.lab.example.test. AAAA 2001:db8::53",
            ),
            // Empty non-terminals exist.
            ("b.example.test.", A, "nodata"),
            ("apps.example.test.", A, "nodata"),
            // CNAME chains inside the zone.
            (
                "docs.example.test.",
                A,
                "answer docs.example.test. CNAME www.example.test.; www.example.test. A 192.0.2.80",
            ),
            (
                "one.example.test.",
                A,
                "answer one.example.test. CNAME docs.example.test.; docs.example.test. CNAME \
                 www.example.test.; www.example.test. A 192.0.2.80",
            ),
            (
                "docs.example.test.",
                CNAME,
                "answer docs.example.test. CNAME www.example.test.",
            ),
            (
                "docs.example.test.",
                AAAA,
                "nodata after docs.example.test. CNAME www.example.test.",
            ),
            (
                "dangling.example.test.",
                A,
                "nxdomain after dangling.example.test. CNAME nowhere.example.test.",
            ),
            (
                "ent-ref.example.test.",
                A,
                "nodata after ent-ref.example.test. CNAME b.example.test.",
            ),
            (
                "out.example.test.",
                A,
                "answer out.example.test. CNAME www.elsewhere.test.",
            ),
            (
                "to-cut.example.test.",
                A,
                "answer to-cut.example.test. CNAME host.lab.example.test.",
            ),
            // Loops end the chain without spinning.
            (
                "loop1.example.test.",
                A,
                "answer loop1.example.test. CNAME loop2.example.test.; loop2.example.test. CNAME \
                 loop1.example.test.",
            ),
            (
                "self.example.test.",
                A,
                "answer self.example.test. CNAME self.example.test.",
            ),
            // Wildcards: synthesized owner, blocked by existing names, wildcard CNAME followed.
            (
                "web.apps.example.test.",
                A,
                "answer web.apps.example.test. A 192.0.2.100",
            ),
            (
                "a.b.apps.example.test.",
                AAAA,
                "answer a.b.apps.example.test. AAAA 2001:db8::100",
            ),
            ("web.apps.example.test.", MX, "nodata"),
            ("x.apps.example.test.", A, "nodata"),
            ("c.b.example.test.", A, "nxdomain"),
            (
                "q.cn.example.test.",
                A,
                "answer q.cn.example.test. CNAME www.example.test.; www.example.test. A 192.0.2.80",
            ),
            // Delegation: referral with glue for names at and below the cut; DS at the cut is
            // the parent's (NODATA); glue is never answered as data.
            (
                "lab.example.test.",
                A,
                "referral lab.example.test. NS ns.lab.example.test.; lab.example.test. NS \
                 ns.other.test. | glue ns.lab.example.test. A 192.0.2.53; ns.lab.example.test. \
                 AAAA 2001:db8::53",
            ),
            (
                "ns.lab.example.test.",
                A,
                "referral lab.example.test. NS ns.lab.example.test.; lab.example.test. NS \
                 ns.other.test. | glue ns.lab.example.test. A 192.0.2.53; ns.lab.example.test. \
                 AAAA 2001:db8::53",
            ),
            (
                "x.y.lab.example.test.",
                TXT,
                "referral lab.example.test. NS ns.lab.example.test.; lab.example.test. NS \
                 ns.other.test. | glue ns.lab.example.test. A 192.0.2.53; ns.lab.example.test. \
                 AAAA 2001:db8::53",
            ),
            ("lab.example.test.", DS, "nodata"),
            // GSLB names: address and CNAME questions go to the steering core.
            ("api.example.test.", A, "dynamic api.example.test."),
            ("api.example.test.", AAAA, "dynamic api.example.test."),
            ("api.example.test.", CNAME, "dynamic api.example.test."),
            ("api.example.test.", ANY, "dynamic api.example.test."),
            ("api.example.test.", TXT, "nodata"),
            ("x.api.example.test.", A, "nxdomain"),
            (
                "chat.example.test.",
                A,
                "dynamic api.example.test. after chat.example.test. CNAME api.example.test.",
            ),
            (
                "alias-of-chat.example.test.",
                AAAA,
                "dynamic api.example.test. after alias-of-chat.example.test. CNAME \
                 chat.example.test.; chat.example.test. CNAME api.example.test.",
            ),
            (
                "chat.example.test.",
                MX,
                "nodata after chat.example.test. CNAME api.example.test.",
            ),
            // Minimal ANY (RFC 8482): the RRset with the lowest type code; CNAME not followed.
            (
                "www.example.test.",
                ANY,
                "answer www.example.test. A 192.0.2.80",
            ),
            (
                "mail.example.test.",
                ANY,
                "answer mail.example.test. A 192.0.2.25",
            ),
            (
                "docs.example.test.",
                ANY,
                "answer docs.example.test. CNAME www.example.test.",
            ),
            ("b.example.test.", ANY, "nodata"),
            ("nope.example.test.", ANY, "nxdomain"),
        ],
    );
}

#[test]
fn cname_chains_are_bounded() {
    let mut text = String::from(
        "$ORIGIN example.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n",
    );
    for i in 0..20 {
        text.push_str(&format!("c{i} CNAME c{}\n", i + 1));
    }
    text.push_str("c20 A 192.0.2.20\n");
    let zone = zone("example.test.", &text);
    let Lookup::Answer { answers, .. } = zone.lookup(&name("c0.example.test."), RecordType::A)
    else {
        panic!("a long chain still answers NOERROR");
    };
    assert_eq!(answers.len(), MAX_CNAME_CHAIN);
    assert!(answers.iter().all(|r| r.record_type() == RecordType::CNAME));
    // A short chain reaches its data.
    let Lookup::Answer { answers, .. } = zone.lookup(&name("c15.example.test."), RecordType::A)
    else {
        panic!("expected an answer");
    };
    assert_eq!(answers.len(), 6);
    assert_eq!(answers[5].data, RData::A("192.0.2.20".parse().unwrap()));
}

#[test]
fn names_and_owners_are_case_insensitive() {
    let shouting = ZONE
        .replace("www ", "WwW ")
        .replace("$ORIGIN example.test.", "$ORIGIN EXAMPLE.Test.");
    let zone = Zone::parse(&name("Example.TEST"), &shouting, None).unwrap();
    assert_eq!(zone.origin().to_string(), "example.test.");
    let answer = render(&zone.lookup(&name("www.example.test."), RecordType::A));
    assert_eq!(answer, "answer www.example.test. A 192.0.2.80");
    let Lookup::Answer { answers, .. } = zone.lookup(&name("www.example.test."), RecordType::A)
    else {
        panic!("expected an answer");
    };
    assert!(answers[0].name.eq_case(&name("www.example.test.")));
}

#[test]
fn soa_accessors_follow_rfc2308() {
    let zone = test_zone();
    assert_eq!(zone.serial(), 7);
    assert_eq!(zone.soa().ttl, 3600);
    assert_eq!(zone.negative_soa().ttl, 300);
    assert_eq!(zone.negative_soa().data, zone.soa().data);
    assert_eq!(zone.apex_ns().len(), 2);
    assert_eq!(zone.record_count(), 33);

    // A SOA TTL below MINIMUM wins.
    let low = zone_text_with("@ 60 SOA ns hm 1 2 3 4 900\n@ NS ns\nns A 192.0.2.1\n");
    assert_eq!(
        Zone::parse(&name("example.test."), &low, None)
            .unwrap()
            .negative_soa()
            .ttl,
        60
    );
}

fn zone_text_with(body: &str) -> String {
    format!("$ORIGIN example.test.\n$TTL 3600\n{body}")
}

const HEAD: &str = "@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n";

#[test]
fn invalid_zones_are_rejected_with_their_line() {
    use RecordType::*;
    let n = name;
    let origin = || n("example.test.");
    // Lines: 1 $ORIGIN, 2 $TTL, 3-5 HEAD, 6 onwards the body.
    let cases: Vec<(String, ZoneError)> = vec![
        (
            zone_text_with(&format!("{HEAD}www A 192.0.2.1\nwww AAA ::1\n")),
            ZoneError::Syntax {
                at: at(Some(7)),
                message: "unknown record type \"AAA\"".into(),
            },
        ),
        (
            zone_text_with(&format!(
                "{HEAD}k TXT ( \"v=DKIM1; k=rsa\"\n  \"p=abc\" )\n"
            )),
            ZoneError::QuoteInGroup { at: at(Some(6)) },
        ),
        (
            zone_text_with("@ NS ns\nns A 192.0.2.1\n"),
            ZoneError::MissingSoa {
                at: at(None),
                origin: origin(),
            },
        ),
        (
            zone_text_with("@ SOA ns hm 1 2 3 4 5\nns A 192.0.2.1\n"),
            ZoneError::MissingApexNs {
                at: at(None),
                origin: origin(),
            },
        ),
        (
            zone_text_with(&format!("{HEAD}sub SOA ns hm 1 2 3 4 5\n")),
            ZoneError::SoaNotAtApex {
                at: at(Some(6)),
                name: n("sub.example.test."),
                origin: origin(),
            },
        ),
        (
            zone_text_with(&format!("{HEAD}\n\nwww.example.org. A 192.0.2.9\n")),
            ZoneError::OutsideOrigin {
                at: at(Some(8)),
                name: n("www.example.org."),
                origin: origin(),
            },
        ),
        (
            zone_text_with(&format!("{HEAD}www A 192.0.2.1\nWWW CNAME ns\n")),
            ZoneError::CnameAndOtherData {
                at: at(Some(7)),
                name: n("www.example.test."),
                other: A,
            },
        ),
        (
            zone_text_with(&format!("{HEAD}@ CNAME ns\n")),
            ZoneError::CnameAtApex {
                at: at(Some(6)),
                name: origin(),
            },
        ),
        (
            zone_text_with(&format!("{HEAD}www CH A 192.0.2.1\n")),
            ZoneError::NotInClass {
                at: at(Some(6)),
                name: n("www.example.test."),
                rtype: A,
                class: DNSClass::CH,
            },
        ),
        (
            zone_text_with(&format!("{HEAD}www 2147483648 A 192.0.2.1\n")),
            ZoneError::TtlTooLarge {
                at: at(Some(6)),
                name: n("www.example.test."),
                rtype: A,
                ttl: 2_147_483_648,
            },
        ),
        (
            zone_text_with(&format!(
                "{HEAD}www 60 A 192.0.2.1\nmail A 192.0.2.2\nwww 120 A 192.0.2.3\n"
            )),
            ZoneError::TtlMismatch {
                at: at(Some(8)),
                name: n("www.example.test."),
                rtype: A,
                first: 60,
                other: 120,
            },
        ),
        (
            zone_text_with(&format!("{HEAD}*.w NS ns\n")),
            ZoneError::WildcardDelegation {
                at: at(Some(6)),
                name: n("*.w.example.test."),
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_error(&text), expected, "{text}");
    }
}

#[test]
fn syntax_errors_name_the_first_line_of_a_multi_line_entry() {
    let text = "$ORIGIN example.test.\n$TTL 60\n; comment with ( and \"\n@ SOA ns hm (\n  1 2 3\n  4 5 )\n@ NS ns\nns TXT \"a\n(b\"\nx A (\n 192.0.2.300 )\n";
    // Lines: 4-6 SOA, 8-9 TXT with a quoted newline and parenthesis, 10-11 the bad address.
    let ZoneError::Syntax { at: got, .. } = parse_error(text) else {
        panic!("two addresses in one A record must not parse");
    };
    assert_eq!(got, at(Some(10)));

    // An unclosed group is reported where it opens.
    let text =
        "$ORIGIN example.test.\n@ 60 SOA ns hm 1 2 3 4 5\n@ 60 NS ns\nx 60 TXT ( \"open\"\n\n";
    let ZoneError::Syntax { at: got, .. } = parse_error(text) else {
        panic!("an unclosed parenthesis must not parse");
    };
    assert_eq!(got, at(Some(4)));
}

#[test]
fn errors_display_file_and_line() {
    let text = zone_text_with(&format!("{HEAD}www AAA ::1\n"));
    let error = Zone::parse(
        &name("example.test."),
        &text,
        Some(Path::new("zones/example.test.zone")),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "zones/example.test.zone:6: unknown record type \"AAA\""
    );

    let missing = Zone::load(&name("example.test."), Path::new("/nonexistent/zone")).unwrap_err();
    assert!(
        matches!(&missing, ZoneError::Read { kind, .. } if *kind == std::io::ErrorKind::NotFound),
        "{missing:?}"
    );
}

#[test]
fn dynamic_names_are_checked() {
    let mut zone = zone("example.test.", ZONE);
    let cases = [
        (
            "api.example.org.",
            Err(ZoneError::DynamicOutsideZone {
                name: name("api.example.org."),
                origin: name("example.test."),
            }),
        ),
        (
            "lab.example.test.",
            Err(ZoneError::DynamicBelowCut {
                name: name("lab.example.test."),
                cut: name("lab.example.test."),
            }),
        ),
        (
            "new.lab.example.test.",
            Err(ZoneError::DynamicBelowCut {
                name: name("new.lab.example.test."),
                cut: name("lab.example.test."),
            }),
        ),
        (
            "www.example.test.",
            Err(ZoneError::DynamicHasData {
                name: name("www.example.test."),
                rtype: RecordType::A,
            }),
        ),
        (
            "docs.example.test.",
            Err(ZoneError::DynamicHasData {
                name: name("docs.example.test."),
                rtype: RecordType::CNAME,
            }),
        ),
        (
            "*.x.example.test.",
            Err(ZoneError::DynamicWildcard {
                name: name("*.x.example.test."),
            }),
        ),
        ("API.Example.Test.", Ok(())),
        (
            "api.example.test.",
            Err(ZoneError::DynamicDuplicate {
                name: name("api.example.test."),
            }),
        ),
        // An empty non-terminal may become a GSLB name; a deep new name creates its ENTs.
        ("b.example.test.", Ok(())),
        ("llm.eu.example.test.", Ok(())),
    ];
    for (dynamic, expected) in cases {
        assert_eq!(zone.add_dynamic_name(&name(dynamic)), expected, "{dynamic}");
    }
    check_table(
        &zone,
        &[
            ("b.example.test.", RecordType::A, "dynamic b.example.test."),
            (
                "a.b.example.test.",
                RecordType::A,
                "answer a.b.example.test. A 192.0.2.110",
            ),
            ("eu.example.test.", RecordType::A, "nodata"),
            (
                "llm.eu.example.test.",
                RecordType::AAAA,
                "dynamic llm.eu.example.test.",
            ),
            // A registered name blocks the wildcard that would have matched it.
            (
                "api.apps.example.test.",
                RecordType::A,
                "answer api.apps.example.test. A 192.0.2.100",
            ),
        ],
    );
    zone.add_dynamic_name(&name("gslb.apps.example.test."))
        .unwrap();
    check_table(
        &zone,
        &[("gslb.apps.example.test.", RecordType::TXT, "nodata")],
    );
}

#[test]
fn zones_pick_the_longest_origin() {
    let parent = test_zone();
    let child = zone(
        "lab.example.test.",
        "$ORIGIN lab.example.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.53\n",
    );
    let zones = Zones::new(vec![parent.clone(), child.clone()]).unwrap();
    let table = [
        ("www.example.test.", Some("example.test.")),
        ("example.test.", Some("example.test.")),
        ("lab.example.test.", Some("lab.example.test.")),
        ("a.b.lab.example.test.", Some("lab.example.test.")),
        ("example.org.", None),
        ("test.", None),
        (".", None),
    ];
    for (qname, expected) in table {
        let found = zones
            .find(&name(qname))
            .map(|zone| zone.origin().to_string());
        assert_eq!(found.as_deref(), expected, "{qname}");
    }
    assert_eq!(zones.iter().count(), 2);
    assert_eq!(
        Zones::new(vec![parent.clone(), child, parent]).unwrap_err(),
        ZoneError::DuplicateOrigin {
            origin: name("example.test."),
        }
    );
}

#[test]
fn entry_starts_skip_groups_quotes_and_comments() {
    let text = "a A 1\nb TXT ( \"x\n; not a comment\" ) ; (\nc ( 1\n2 )\n";
    let lines: Vec<usize> = entry_starts(text).iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 6]);
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/example.test.zone")
}

fn example_zone() -> Zone {
    let mut zone = Zone::load(&name("example.test."), &example_path()).unwrap();
    zone.add_dynamic_name(&name("api.example.test.")).unwrap();
    zone
}

#[test]
fn bundled_example_zone_loads_and_answers() {
    let zone = example_zone();
    assert_eq!(zone.serial(), 2026112101);
    assert_eq!(zone.negative_soa().ttl, 300);
    use RecordType::*;
    check_table(
        &zone,
        &[
            (
                "chat.example.test.",
                A,
                "dynamic api.example.test. after chat.example.test. CNAME api.example.test.",
            ),
            ("api.example.test.", AAAA, "dynamic api.example.test."),
            (
                "docs.example.test.",
                AAAA,
                "answer docs.example.test. CNAME www.example.test.; www.example.test. AAAA 2001:db8::80",
            ),
            ("b.example.test.", A, "nodata"),
            (
                "foo.apps.example.test.",
                A,
                "answer foo.apps.example.test. A 192.0.2.100",
            ),
            (
                "host.lab.example.test.",
                AAAA,
                "referral lab.example.test. NS ns.lab.example.test. | glue ns.lab.example.test. \
                 A 192.0.2.53; ns.lab.example.test. AAAA 2001:db8::53",
            ),
            (
                "example.test.",
                MX,
                "answer example.test. MX 10 mail.example.test. | additional mail.example.test. A \
                 192.0.2.25; mail.example.test. AAAA 2001:db8::25",
            ),
            ("missing.example.test.", A, "nxdomain"),
        ],
    );
    for (qname, qtype) in [
        ("example.test.", CAA),
        ("example.test.", TXT),
        ("www.example.test.", HTTPS),
        ("svc.example.test.", SVCB),
        ("_https._tcp.example.test.", SRV),
        ("_services._dns-sd._udp.example.test.", PTR),
    ] {
        let lookup = zone.lookup(&name(qname), qtype);
        assert!(
            matches!(&lookup, Lookup::Answer { answers, .. } if answers[0].record_type() == qtype),
            "{qname} {qtype}: {lookup:?}"
        );
    }
    // The long TXT is one record of several character-strings, over 255 bytes in all.
    let Lookup::Answer { answers, .. } = zone.lookup(&name("mail._domainkey.example.test."), TXT)
    else {
        panic!("expected the DKIM TXT record");
    };
    let RData::TXT(txt) = &answers[0].data else {
        panic!("expected TXT rdata");
    };
    assert_eq!(txt.txt_data.len(), 3);
    assert!(txt.txt_data[0].starts_with(b"v=DKIM1; k=rsa; p="));
    assert!(txt.txt_data.iter().map(|s| s.len()).sum::<usize>() > 255);
}

#[test]
fn bundled_big_answers_exceed_the_udp_payload_limit() {
    let zone = example_zone();
    for qtype in [RecordType::A, RecordType::TXT, RecordType::ANY] {
        let qname = name("big.example.test.");
        let Lookup::Answer { answers, .. } = zone.lookup(&qname, qtype) else {
            panic!("big {qtype} must answer");
        };
        let mut message = Message::query();
        message.add_query(Query::query(qname, qtype));
        message.add_answers(answers);
        let size = message.to_vec().unwrap().len();
        assert!(size > 1232, "big {qtype}: {size} bytes");
    }
}

/// Every record of the bundled zone survives the wire format unchanged, and hickory's
/// presentation format too, except TXT: hickory prints TXT strings unquoted, so a string with
/// spaces comes back split (its `Display` is for humans, not for zone files).
#[test]
fn bundled_records_round_trip() {
    let zone = example_zone();
    let all: Vec<Record> = std::iter::once(zone.soa().clone())
        .chain(zone.transfer_body())
        .collect();
    let mut records: Vec<&Record> = all.iter().collect();
    assert_eq!(records.len(), zone.record_count());
    records.sort_by_key(|r| {
        (
            r.name.clone(),
            u16::from(r.record_type()),
            r.data.to_string(),
        )
    });

    for record in &records {
        let wire = record.to_bytes().unwrap();
        let decoded = Record::from_bytes(&wire).unwrap();
        assert_eq!(&&decoded, record);
        assert_eq!(decoded.ttl, record.ttl);
    }

    let printable: Vec<&&Record> = records
        .iter()
        .filter(|r| r.record_type() != RecordType::TXT)
        .collect();
    let text: String = printable.iter().map(|r| format!("{r}\n")).collect();
    let reparsed = Zone::parse(&name("example.test."), &text, None).unwrap();
    assert_eq!(reparsed.record_count(), printable.len());
    let reparsed: Vec<Record> = std::iter::once(reparsed.soa().clone())
        .chain(reparsed.transfer_body())
        .collect();
    for record in printable {
        assert!(
            reparsed.iter().any(|r| r == *record && r.ttl == record.ttl),
            "{record} did not survive:\n{text}"
        );
    }
}

#[test]
fn bundled_rdata_is_what_the_file_says() {
    let zone = example_zone();
    let table = [
        (
            "example.test.",
            RecordType::CAA,
            "0 issue \"letsencrypt.org\"",
        ),
        (
            "_https._tcp.example.test.",
            RecordType::SRV,
            "10 5 443 www.example.test.",
        ),
        (
            "_services._dns-sd._udp.example.test.",
            RecordType::PTR,
            "_https._tcp.example.test.",
        ),
    ];
    for (owner, rtype, expected) in table {
        let Lookup::Answer { answers, .. } = zone.lookup(&name(owner), rtype) else {
            panic!("{owner} {rtype} must answer");
        };
        assert_eq!(answers[0].data.to_string(), expected, "{owner} {rtype}");
    }
    let service_binding = |owner: &str, rtype| match zone.lookup(&name(owner), rtype) {
        Lookup::Answer { answers, .. } => match &answers[0].data {
            RData::HTTPS(https) => https.0.clone(),
            RData::SVCB(svcb) => svcb.clone(),
            other => panic!("{owner}: {other:?}"),
        },
        other => panic!("{owner}: {other:?}"),
    };
    let alpn = |ids: &[&str]| {
        (
            SvcParamKey::Alpn,
            SvcParamValue::Alpn(Alpn(ids.iter().map(|id| id.to_string()).collect())),
        )
    };
    let https = service_binding("www.example.test.", RecordType::HTTPS);
    assert_eq!((https.svc_priority, https.target_name), (1, Name::root()));
    assert_eq!(https.svc_params, vec![alpn(&["h3", "h2"])]);
    let svcb = service_binding("svc.example.test.", RecordType::SVCB);
    assert_eq!(svcb.target_name, name("www.example.test."));
    assert_eq!(
        svcb.svc_params,
        vec![
            alpn(&["h2"]),
            (SvcParamKey::Port, SvcParamValue::Port(8443))
        ]
    );

    let Lookup::Answer { answers, .. } = zone.lookup(&name("example.test."), RecordType::TXT)
    else {
        panic!("apex TXT must answer");
    };
    let RData::TXT(txt) = &answers[0].data else {
        panic!("expected TXT rdata");
    };
    assert_eq!(
        txt.txt_data,
        vec![b"v=spf1 mx -all".to_vec().into_boxed_slice()].into_boxed_slice()
    );
}

fn qname_strategy() -> impl Strategy<Value = Name> {
    let label = prop::sample::select(vec![
        "www", "docs", "one", "chat", "api", "apps", "x", "b", "a", "lab", "ns", "deep", "loop1",
        "self", "cn", "mail", "nope", "*", "_tcp", "_sip", "ent-ref", "to-cut",
    ]);
    prop::collection::vec(label, 0..4).prop_map(|labels| {
        let mut text = labels.join(".");
        if !text.is_empty() {
            text.push('.');
        }
        name(&format!("{text}example.test."))
    })
}

fn qtype_strategy() -> impl Strategy<Value = RecordType> {
    prop::sample::select(vec![
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::MX,
        RecordType::TXT,
        RecordType::NS,
        RecordType::DS,
        RecordType::ANY,
    ])
}

proptest! {
    /// Whatever the question: answers start at the qname, each CNAME leads to the next owner,
    /// referrals only come from the delegated subtree, and nothing below the cut is answered.
    #[test]
    fn lookups_are_consistent(qname in qname_strategy(), qtype in qtype_strategy()) {
        let zone = test_zone();
        let lookup = zone.lookup(&qname, qtype);
        prop_assert_eq!(&lookup, &zone.lookup(&qname, qtype));
        let lab = name("lab.example.test.");
        let chain = match &lookup {
            Lookup::Answer { answers, .. } => answers.as_slice(),
            Lookup::NoData { chain } | Lookup::NxDomain { chain } | Lookup::Dynamic { chain, .. } => chain.as_slice(),
            Lookup::Referral { ns, .. } => {
                prop_assert!(lab.zone_of(&qname));
                prop_assert!(ns.iter().all(|r| r.name == lab));
                return Ok(());
            }
        };
        prop_assert!(!lab.zone_of(&qname) || (qtype == RecordType::DS && qname == lab));
        let mut owner = qname.clone();
        for record in chain {
            prop_assert_eq!(&record.name, &owner);
            prop_assert!(!lab.zone_of(&record.name));
            if let RData::CNAME(target) = &record.data
                && qtype != RecordType::CNAME
                && qtype != RecordType::ANY
            {
                owner = target.0.to_lowercase();
            }
        }
        if let Lookup::Dynamic { name: dynamic, .. } = &lookup {
            prop_assert_eq!(dynamic, &name("api.example.test."));
            prop_assert_eq!(dynamic, &owner);
        }
    }
}

/// Everything a loaded zone holds, node by node in canonical order, in a form that compares
/// case-sensitively (`Name` equality ignores case).
fn fingerprint(zone: &Zone) -> Vec<String> {
    let store = &zone.store;
    let mut out = vec![format!("{:?} {}", zone.soa(), zone.record_count())];
    for node in 0..store.len() as store::NodeIdx {
        let owner = zone.node_name(node);
        let cut = store.cut(node).map(|cut| zone.node_name(cut));
        out.push(format!(
            "{owner:?} dynamic={} cut={cut:?}",
            store.is_dynamic(node)
        ));
        for set in store.rrsets(node) {
            out.extend(
                store
                    .records(set, &owner)
                    .iter()
                    .map(|record| format!("  {record:?}")),
            );
        }
    }
    out
}

/// A text that exercises the parser state a chunk boundary must carry: blank owners, `@`,
/// `$ORIGIN` and `$TTL` changes, last-TTL inheritance, groups and quoted strings.
fn stateful_zone_text(entries: usize) -> String {
    let mut text = String::from(
        "$ORIGIN example.test.\n@ 3600 IN SOA ns1 hostmaster (\n  1 ; serial\n  7200 1800 1209600 300 )\n\tNS ns1\n\tNS ns2.example.test.\nns1 A 192.0.2.1\n",
    );
    for i in 0..entries {
        let line = match i % 13 {
            // Two records of one RRset: chunk boundaries fall between them too.
            0 => format!("h{i} A 192.0.2.{}\nh{i} A 192.0.2.251", i % 250),
            1 => format!("\t{} AAAA 2001:db8::{i:x}", 60 + i % 7),
            2 => format!("\tTXT \"entry {i}; with ( specials\" plain{i}"),
            3 => "$TTL 120".to_string(),
            4 => format!("Mixed{i}.Sub  IN  MX 10 Mail{i}"),
            5 => "$ORIGIN sub.example.test.".to_string(),
            6 => format!("s{i} CNAME h{}.example.test.", i.saturating_sub(6)),
            7 => format!("$ORIGIN o{i}.example.test.\n@ TXT at-{i}"),
            8 => "$ORIGIN example.test.".to_string(),
            9 => format!("; comment {i}"),
            10 => String::new(),
            11 => format!("*.w{i} 30 A 198.51.100.{}", i % 250),
            _ => format!("d{i} NS ns.d{i}\nns.d{i} A 203.0.113.{}", i % 250),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The chunked pass gives exactly the whole-text result, whatever the chunk size, and does
/// not fall back on an ordinary zone.
#[test]
fn chunks_parse_as_the_whole_text_does() {
    let origin = name("example.test.");
    let text = stateful_zone_text(200);
    let whole = fingerprint(&Zone::parse_in(&origin, &text, None, usize::MAX).unwrap());
    assert!(whole.len() > 200);
    // A first chunk of one entry holds only `$ORIGIN`: no owner to carry yet.
    for chunk_entries in [2, 3, 5, 8, 64] {
        let chunked = load::parse_chunked_only(&origin, &text, chunk_entries)
            .unwrap_or_else(|| panic!("fell back with chunks of {chunk_entries}"));
        assert_eq!(fingerprint(&chunked), whole, "chunks of {chunk_entries}");
    }
    // No $TTL at all: every record without a TTL takes the last explicit one.
    let no_default: String =
        text.lines()
            .filter(|l| !l.starts_with("$TTL"))
            .fold(String::new(), |mut out, line| {
                out.push_str(line);
                out.push('\n');
                out
            });
    let whole = fingerprint(&Zone::parse_in(&origin, &no_default, None, usize::MAX).unwrap());
    let chunked = load::parse_chunked_only(&origin, &no_default, 3).unwrap();
    assert_eq!(fingerprint(&chunked), whole);
}

/// A second SOA, a sentinel look-alike in the text, or a problem anywhere:
/// the chunked pass declines, and `parse` answers as the whole text does.
#[test]
fn chunks_decline_what_they_cannot_vouch_for() {
    let origin = name("example.test.");
    let base = stateful_zone_text(40);
    let second_soa = format!("{base}example.test. 60 SOA ns1 hm 2 2 3 4 5\n");
    let lookalike = format!("{base}x TXT meridian-zone-chunk-state-1\n");
    let broken = format!("{base}x A not-an-address\n");
    let mismatch = format!("{base}h0.example.test. 99 A 192.0.2.99\n");
    for text in [&second_soa, &lookalike, &broken, &mismatch] {
        assert!(load::parse_chunked_only(&origin, text, 4).is_none());
        let whole = Zone::parse_in(&origin, text, None, usize::MAX).map(|z| fingerprint(&z));
        let chunked = Zone::parse_in(&origin, text, None, 4).map(|z| fingerprint(&z));
        assert_eq!(chunked, whole);
    }
}

fn zone_line() -> impl Strategy<Value = String> {
    let owner = prop::sample::select(vec![
        "",
        "@",
        "a",
        "B",
        "a.b",
        "*.w",
        "x.example.test.",
        "Deep.a.b",
        "w",
    ]);
    let ttl = prop::sample::select(vec!["", "60 ", "300 "]);
    let class = prop::sample::select(vec!["", "IN "]);
    let data = prop::sample::select(vec![
        "A 192.0.2.1",
        "A 192.0.2.2",
        "AAAA 2001:db8::1",
        "TXT \"one two\"",
        "TXT plain",
        "MX 10 a",
        "CNAME a",
        "NS ns.a",
        "SRV 1 2 3 a",
    ]);
    let directive = prop::sample::select(vec![
        "$TTL 90",
        "$ORIGIN example.test.",
        "$ORIGIN b.example.test.",
        "; just a comment",
        "",
    ]);
    prop_oneof![
        4 => (owner, ttl, class, data).prop_map(|(owner, ttl, class, data)| {
            let owner = if owner.is_empty() { "\t" } else { owner };
            format!("{owner} {ttl}{class}{data}")
        }),
        1 => directive.prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Chunked parsing never changes the outcome: the same zone, or the same error.
    #[test]
    fn chunking_never_changes_the_outcome(
        lines in prop::collection::vec(zone_line(), 1..40),
        chunk_entries in 1usize..6,
        default_ttl in any::<bool>(),
    ) {
        let mut text = String::from("$ORIGIN example.test.\n");
        if default_ttl {
            text.push_str("$TTL 3600\n");
        }
        text.push_str("@ 3600 SOA ns hm 1 2 3 4 5\n@ NS ns\n");
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        let origin = name("example.test.");
        let whole = Zone::parse_in(&origin, &text, None, usize::MAX).map(|z| fingerprint(&z));
        let chunked = Zone::parse_in(&origin, &text, None, chunk_entries).map(|z| fingerprint(&z));
        prop_assert_eq!(&chunked, &whole, "{}", text);
        if let Some(zone) = load::parse_chunked_only(&origin, &text, chunk_entries) {
            prop_assert_eq!(Ok(fingerprint(&zone)), whole);
        }
    }
}
