//! Decoding of incoming DNS queries, strictly and without trusting a single length field.
//!
//! This module owns the question of "is this packet a query we can answer, and what does it
//! ask": header, the one question, and the OPT record with its EDNS Client Subnet option
//! (validated per RFC 7871 §6). It returns either a [`Query`] or a [`QueryError`] that tells
//! the handler which RCODE to send, or that the packet must be dropped. It never builds a
//! response and never looks at zone data.
//!
//! Names are decoded by hickory-proto (which rejects forward pointers and so compression
//! loops); everything else is read here, because hickory's OPT decoding accepts ECS options
//! with trailing bytes or non-zero host bits, which RFC 7871 says deserve FORMERR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    rr::{DNSClass, Name, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// EDNS option code of EDNS Client Subnet (RFC 7871).
const OPTION_CLIENT_SUBNET: u16 = 8;
/// The OPT pseudo-record type.
const TYPE_OPT: u16 = 41;
/// Queries are small; anything claiming more records than this is garbage or an attack.
const MAX_RECORDS_PER_SECTION: u16 = 64;

/// A decoded query: everything the handler needs, nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question name exactly as sent (its case is echoed back).
    pub name: Name,
    /// `name` in lower case, the key for every lookup.
    pub lower_name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub edns: Option<Edns>,
}

/// The parts of a query's OPT record that shape the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The requester's UDP payload size, raised to 512 as RFC 6891 §6.2.5 says.
    pub udp_payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    pub client_subnet: Option<ClientSubnet>,
}

/// A validated EDNS Client Subnet option from a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSubnet {
    /// The address with every bit past `source_prefix` zero.
    pub address: IpAddr,
    pub source_prefix: u8,
}

/// Why a packet is not a query we answer normally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Too short for a header, or a response: never answered (no reflection, no loops).
    #[error("dropped: {reason}")]
    Drop { reason: &'static str },
    /// Malformed: answered with FORMERR, echoing the header ID.
    #[error("malformed query: {reason}")]
    FormErr {
        id: u16,
        opcode: u8,
        reason: &'static str,
    },
    /// An opcode other than QUERY: answered with NOTIMP.
    #[error("opcode {opcode} not implemented")]
    NotImp { id: u16, opcode: u8 },
    /// An EDNS version other than 0: answered with BADVERS (RFC 6891 §6.1.3).
    #[error("EDNS version not supported")]
    BadVersion {
        id: u16,
        question: Option<(Name, RecordType, DNSClass)>,
    },
}

impl QueryError {
    fn form(id: u16, opcode: u8, reason: &'static str) -> Self {
        QueryError::FormErr { id, opcode, reason }
    }
}

/// Decodes a query packet.
pub fn parse_query(packet: &[u8]) -> Result<Query, QueryError> {
    if packet.len() < 12 {
        return Err(QueryError::Drop {
            reason: "shorter than a DNS header",
        });
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return Err(QueryError::Drop {
            reason: "a response, not a query",
        });
    }
    let opcode = ((flags >> 11) & 0x0f) as u8;
    if opcode != 0 {
        return Err(QueryError::NotImp { id, opcode });
    }
    let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (qdcount, ancount, nscount, arcount) = (count(4), count(6), count(8), count(10));
    if qdcount != 1 {
        return Err(QueryError::form(id, opcode, "question count is not 1"));
    }
    if ancount > MAX_RECORDS_PER_SECTION
        || nscount > MAX_RECORDS_PER_SECTION
        || arcount > MAX_RECORDS_PER_SECTION
    {
        return Err(QueryError::form(id, opcode, "implausible record counts"));
    }

    let mut decoder = BinDecoder::new(packet);
    // The header was checked above; skip it.
    decoder
        .read_slice(12)
        .map_err(|_| QueryError::form(id, opcode, "truncated header"))?;
    let name =
        Name::read(&mut decoder).map_err(|_| QueryError::form(id, opcode, "bad question name"))?;
    let qtype = read_u16(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated question"))?;
    let qclass =
        read_u16(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated question"))?;
    let qtype = RecordType::from(qtype);
    let qclass = DNSClass::from(qclass);

    for _ in 0..u32::from(ancount) + u32::from(nscount) {
        skip_record(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated record"))?;
    }
    let mut edns = None;
    for _ in 0..arcount {
        let owner = Name::read(&mut decoder)
            .map_err(|_| QueryError::form(id, opcode, "bad additional record name"))?;
        let rtype =
            read_u16(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated record"))?;
        let class =
            read_u16(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated record"))?;
        let ttl = read_u32(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated record"))?;
        let rdlength =
            read_u16(&mut decoder).ok_or(QueryError::form(id, opcode, "truncated record"))?;
        let rdata = decoder
            .read_slice(usize::from(rdlength))
            .map_err(|_| QueryError::form(id, opcode, "record data runs past the packet"))?
            .unverified(/* bounded by the packet; parsed below with explicit checks */);
        if rtype != TYPE_OPT {
            // TSIG and friends are not supported; ignoring them is what an unsigned server does.
            continue;
        }
        if edns.is_some() {
            return Err(QueryError::form(id, opcode, "more than one OPT record"));
        }
        if !owner.is_root() {
            return Err(QueryError::form(
                id,
                opcode,
                "OPT record not owned by the root",
            ));
        }
        let version = ((ttl >> 16) & 0xff) as u8;
        if version != 0 {
            return Err(QueryError::BadVersion {
                id,
                question: Some((name.clone(), qtype, qclass)),
            });
        }
        let client_subnet =
            parse_options(rdata).map_err(|reason| QueryError::form(id, opcode, reason))?;
        edns = Some(Edns {
            udp_payload: class.max(512),
            version,
            dnssec_ok: ttl & 0x8000 != 0,
            client_subnet,
        });
    }
    if !decoder.is_empty() {
        return Err(QueryError::form(
            id,
            opcode,
            "trailing bytes after the last record",
        ));
    }

    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        lower_name: name.to_lowercase(),
        name,
        qtype,
        qclass,
        edns,
    })
}

fn read_u16(decoder: &mut BinDecoder<'_>) -> Option<u16> {
    decoder
        .read_u16()
        .ok()
        .map(|v| v.unverified(/* any value is valid */))
}

fn read_u32(decoder: &mut BinDecoder<'_>) -> Option<u32> {
    decoder
        .read_u32()
        .ok()
        .map(|v| v.unverified(/* any value is valid */))
}

fn skip_record(decoder: &mut BinDecoder<'_>) -> Option<()> {
    Name::read(decoder).ok()?;
    decoder.read_slice(8).ok()?; // type, class, ttl
    let rdlength = read_u16(decoder)?;
    decoder.read_slice(usize::from(rdlength)).ok()?;
    Some(())
}

/// Walks the OPT options; returns the ECS option if there is one.
fn parse_options(mut rdata: &[u8]) -> Result<Option<ClientSubnet>, &'static str> {
    let mut subnet = None;
    while !rdata.is_empty() {
        if rdata.len() < 4 {
            return Err("truncated EDNS option header");
        }
        let code = u16::from_be_bytes([rdata[0], rdata[1]]);
        let len = usize::from(u16::from_be_bytes([rdata[2], rdata[3]]));
        let Some(data) = rdata.get(4..4 + len) else {
            return Err("EDNS option runs past the OPT record");
        };
        if code == OPTION_CLIENT_SUBNET {
            if subnet.is_some() {
                return Err("more than one client subnet option");
            }
            subnet = Some(parse_client_subnet(data)?);
        }
        rdata = &rdata[4 + len..];
    }
    Ok(subnet)
}

/// RFC 7871 §6: family 1 or 2, SCOPE zero in queries, exactly ceil(SOURCE/8) address octets,
/// and no address bits set past SOURCE PREFIX-LENGTH.
pub fn parse_client_subnet(data: &[u8]) -> Result<ClientSubnet, &'static str> {
    if data.len() < 4 {
        return Err("client subnet option shorter than 4 bytes");
    }
    let family = u16::from_be_bytes([data[0], data[1]]);
    let source_prefix = data[2];
    let scope_prefix = data[3];
    let address = &data[4..];
    let max_prefix = match family {
        1 => 32,
        2 => 128,
        _ => return Err("client subnet family is neither IPv4 nor IPv6"),
    };
    if source_prefix > max_prefix {
        return Err("client subnet source prefix longer than the address");
    }
    if scope_prefix != 0 {
        return Err("client subnet scope prefix is not zero in a query");
    }
    if address.len() != usize::from(source_prefix).div_ceil(8) {
        return Err("client subnet address length does not match its source prefix");
    }
    let mut octets = [0u8; 16];
    octets[..address.len()].copy_from_slice(address);
    if !source_prefix.is_multiple_of(8) {
        let last = address.len() - 1;
        let host_mask = 0xffu8 >> (source_prefix % 8);
        if octets[last] & host_mask != 0 {
            return Err("client subnet address has bits set past its source prefix");
        }
    }
    let address = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(ClientSubnet {
        address,
        source_prefix,
    })
}

/// Encodes an ECS option's data for a response: the query's family, source prefix and
/// address, with our scope.
pub fn encode_client_subnet(subnet: &ClientSubnet, scope_prefix: u8) -> Vec<u8> {
    let octet_count = usize::from(subnet.source_prefix).div_ceil(8);
    let mut data = Vec::with_capacity(4 + octet_count);
    match subnet.address {
        IpAddr::V4(v4) => {
            data.extend_from_slice(&1u16.to_be_bytes());
            data.push(subnet.source_prefix);
            data.push(scope_prefix);
            data.extend_from_slice(&v4.octets()[..octet_count]);
        }
        IpAddr::V6(v6) => {
            data.extend_from_slice(&2u16.to_be_bytes());
            data.push(subnet.source_prefix);
            data.push(scope_prefix);
            data.extend_from_slice(&v6.octets()[..octet_count]);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name`/`qtype` with an optional OPT record carrying `options`.
    fn packet(name: &[u8], qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if let Some(options) = opt {
            p.push(0); // root
            p.extend_from_slice(&41u16.to_be_bytes());
            p.extend_from_slice(&1232u16.to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&(options.len() as u16).to_be_bytes());
            p.extend_from_slice(options);
        }
        p
    }

    const API: &[u8] = b"\x03API\x07example\x04test\x00";

    fn ecs_option(data: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 8];
        o.extend_from_slice(&(data.len() as u16).to_be_bytes());
        o.extend_from_slice(data);
        o
    }

    #[test]
    fn decodes_a_plain_query_and_lowercases_the_name() {
        let q = parse_query(&packet(API, 1, None)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        assert_eq!(q.name.to_ascii(), "API.example.test.");
        assert_eq!(q.lower_name.to_ascii(), "api.example.test.");
        assert_eq!(q.qtype, RecordType::A);
        assert_eq!(q.edns, None);
    }

    #[test]
    fn decodes_a_valid_client_subnet() {
        let opt = ecs_option(&[0, 1, 24, 0, 81, 2, 69]);
        let q = parse_query(&packet(API, 1, Some(&opt))).unwrap();
        let edns = q.edns.unwrap();
        assert_eq!(edns.udp_payload, 1232);
        assert_eq!(
            edns.client_subnet,
            Some(ClientSubnet {
                address: "81.2.69.0".parse().unwrap(),
                source_prefix: 24
            })
        );
    }

    #[test]
    fn source_prefix_zero_is_valid() {
        let opt = ecs_option(&[0, 2, 0, 0]);
        let q = parse_query(&packet(API, 28, Some(&opt))).unwrap();
        assert_eq!(q.edns.unwrap().client_subnet.unwrap().source_prefix, 0);
    }

    #[test]
    fn malformed_client_subnets_are_formerr() {
        let cases: &[(&[u8], &str)] = &[
            (&[0, 3, 24, 0, 1, 2, 3], "family"),
            (&[0, 1, 33, 0, 1, 2, 3, 4, 5], "longer than the address"),
            (&[0, 1, 24, 8, 81, 2, 69], "scope prefix"),
            (&[0, 1, 24, 0, 81, 2], "address length"),
            (&[0, 1, 24, 0, 81, 2, 69, 0], "address length"),
            (&[0, 1, 23, 0, 81, 2, 69], "bits set past"),
            (&[0, 1, 24], "shorter than 4"),
        ];
        for (data, expected) in cases {
            let opt = ecs_option(data);
            match parse_query(&packet(API, 1, Some(&opt))) {
                Err(QueryError::FormErr { id, reason, .. }) => {
                    assert_eq!(id, 0x1234);
                    assert!(reason.contains(expected), "{data:?}: {reason}");
                }
                other => panic!("{data:?}: expected FORMERR, got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_dropped_or_formerr_never_a_panic() {
        assert!(matches!(
            parse_query(&[1, 2, 3]),
            Err(QueryError::Drop { .. })
        ));
        let mut response = packet(API, 1, None);
        response[2] |= 0x80;
        assert!(matches!(
            parse_query(&response),
            Err(QueryError::Drop { .. })
        ));

        // A name whose label runs past the end of the packet.
        let mut p = packet(API, 1, None);
        p.truncate(15);
        assert!(matches!(parse_query(&p), Err(QueryError::FormErr { .. })));

        // A compression pointer to itself.
        let looped = packet(b"\xc0\x0c", 1, None);
        assert!(matches!(
            parse_query(&looped),
            Err(QueryError::FormErr { .. })
        ));

        // A label longer than 63 octets.
        let mut long = vec![64u8];
        long.extend_from_slice(&[b'a'; 64]);
        long.push(0);
        assert!(matches!(
            parse_query(&packet(&long, 1, None)),
            Err(QueryError::FormErr { .. })
        ));

        // Two questions.
        let mut two = packet(API, 1, None);
        two[5] = 2;
        assert!(matches!(parse_query(&two), Err(QueryError::FormErr { .. })));

        // An option length past the end of the OPT record.
        let bad_opt = [0u8, 8, 0, 40, 0, 1];
        assert!(matches!(
            parse_query(&packet(API, 1, Some(&bad_opt))),
            Err(QueryError::FormErr { .. })
        ));

        // Trailing bytes.
        let mut trailing = packet(API, 1, None);
        trailing.push(0);
        assert!(matches!(
            parse_query(&trailing),
            Err(QueryError::FormErr { .. })
        ));
    }

    #[test]
    fn other_opcodes_are_notimp_and_edns1_is_badvers() {
        let mut notify = packet(API, 6, None);
        notify[2] = 0x20; // opcode 4
        assert_eq!(
            parse_query(&notify),
            Err(QueryError::NotImp {
                id: 0x1234,
                opcode: 4
            })
        );
        let mut edns1 = packet(API, 1, Some(&[]));
        let ttl_at = edns1.len() - 2 - 4;
        edns1[ttl_at + 1] = 1; // version byte
        assert!(matches!(
            parse_query(&edns1),
            Err(QueryError::BadVersion { .. })
        ));
    }

    #[test]
    fn two_opt_records_are_formerr() {
        let mut p = packet(API, 1, Some(&[]));
        let opt = p[p.len() - 11..].to_vec();
        p.extend_from_slice(&opt);
        p[11] = 2;
        assert!(matches!(parse_query(&p), Err(QueryError::FormErr { .. })));
    }

    #[test]
    fn client_subnet_encoding_round_trips() {
        let subnet = ClientSubnet {
            address: "2a02:2e0::".parse().unwrap(),
            source_prefix: 32,
        };
        let data = encode_client_subnet(&subnet, 16);
        assert_eq!(data, vec![0, 2, 32, 16, 0x2a, 0x02, 0x02, 0xe0]);
        let mut query_form = data.clone();
        query_form[3] = 0;
        assert_eq!(parse_client_subnet(&query_form), Ok(subnet));
    }
}
