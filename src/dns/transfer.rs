//! Zone transfers out: AXFR (RFC 5936), and IXFR (RFC 1995) answered with the whole zone.
//!
//! This module owns who may transfer a zone (`[[zone]] transfer_to`, and with `transfer_key`
//! a TSIG signature by that key, RFC 8945), what a secondary receives, and how a transfer is
//! cut into DNS messages, each signed when the request was. Its only IO is reading the
//! zone's TSIG secret file ([`tsig::Key::load`]): the TCP listener asks
//! [`is_transfer_query`] per packet and, for a transfer, writes the messages [`respond`]
//! returns, from a blocking thread. Over UDP there are no transfers (RFC 5936 §4.2): the ordinary
//! handler answers AXFR with REFUSED and IXFR with the current SOA ([`ixfr_over_udp`]), which
//! RFC 1995 §2 defines as "ask again over TCP".
//!
//! What a secondary receives: the SOA, every record of the zone file (delegations and glue
//! included), then for each GSLB name of the zone its *static fallback*, then the SOA again.
//! A secondary has no health reports, so it cannot steer; the fallback is the answer an
//! unlocated client would get with every region up (the policy's default order, first N
//! regions), computed from the configuration alone. So a secondary never answers NXDOMAIN for
//! a name Meridian steers, and its answer changes only with the configuration, never with
//! health, as a transferred zone's content must (it changes only when the serial does).
//!
//! IXFR: Meridian keeps no history of zone versions, so an IXFR is answered with the whole
//! zone in the AXFR form, which RFC 1995 §4 allows and every secondary understands; a client
//! whose serial is not older than ours gets the current SOA alone (RFC 1995 §2).
//!
//! Messages: records are packed greedily up to [`MESSAGE_BUDGET`] octets, counting each
//! record at its uncompressed size, so a message never exceeds the budget whatever name
//! compression achieves (BIND's `transfer-message-size` makes the same trade: small enough
//! that compression pointers reach every name, large enough to keep the message count low).

use std::net::SocketAddr;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query as Question, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
    serialize::binary::{BinEncodable, BinEncoder, NameEncoding},
};
use tracing::{debug, info, warn};

use super::{
    handler::{AnswerSource, Summary},
    tsig::{self, Key, Rejection, ResponseSigner, TsigError},
    wire::{self, Query},
};
use crate::{
    config::model::{
        DnsConfig, Endpoints, GslbName, LatencyFallback, RegionIdx, SteeringMode, ZoneSource,
    },
    snapshot::Snapshot,
    zone::Zone,
};

/// Largest message a transfer is cut into, before name compression.
pub const MESSAGE_BUDGET: usize = 16 * 1024;
/// Largest DNS message over TCP: one record larger than the budget gets a message of its own
/// up to this size.
const TCP_MAX_MESSAGE: usize = 65_535;
/// Header, the question (name at most 255 octets, type, class) and a bare OPT record.
const FIXED_OVERHEAD: usize = 12 + 255 + 4 + 11;

/// The messages of one transfer response, in order.
#[derive(Debug)]
pub struct TransferResponse {
    /// For metrics: NOERROR from zone data, or why the transfer was refused.
    pub summary: Summary,
    /// Each one DNS message, without the TCP length prefix.
    pub messages: Vec<Vec<u8>>,
}

/// Whether `packet` asks for AXFR or IXFR. Looks at the question type only (no allocation):
/// it runs on every TCP query.
pub fn is_transfer_query(packet: &[u8]) -> bool {
    // One question starting right after the header; its name has no compression pointer
    // (nothing precedes it to point at).
    let mut at = 12;
    while let Some(&length) = packet.get(at) {
        if length == 0 {
            break;
        }
        if length & 0xC0 != 0 {
            return false;
        }
        at += 1 + usize::from(length);
    }
    let qtype = packet
        .get(at + 1..at + 3)
        .map(|octets| u16::from_be_bytes([octets[0], octets[1]]));
    matches!(qtype, Some(qtype) if qtype == u16::from(RecordType::AXFR) || qtype == u16::from(RecordType::IXFR))
}

/// Answers a transfer query that came over TCP. `None`: the packet is not a well-formed
/// transfer query, and the ordinary handler answers it (FORMERR, NOTIMP, a drop) as it
/// answers any malformed packet. Reads the zone's TSIG secret file when it has a
/// `transfer_key` (the caller runs this on a blocking thread).
pub fn respond(snapshot: &Snapshot, packet: &[u8], peer: SocketAddr) -> Option<TransferResponse> {
    respond_at(snapshot, packet, peer, tsig::unix_now())
}

/// [`respond`] with the clock TSIG times are checked against (seconds since the Unix epoch).
pub fn respond_at(
    snapshot: &Snapshot,
    packet: &[u8],
    peer: SocketAddr,
    now: u64,
) -> Option<TransferResponse> {
    let query = wire::parse_query(packet).ok()?;
    if !matches!(query.qtype, RecordType::AXFR | RecordType::IXFR) {
        return None;
    }
    if !transfer_class(query.qclass) {
        return Some(refused(&query));
    }
    let (zone, source) = match transfer_zone(snapshot, &query.lower_name, peer) {
        Ok(found) => found,
        Err(rcode) => return Some(single(&query, rcode, Vec::new(), AnswerSource::Refused)),
    };
    let key = match source.transfer_key.as_ref().map(Key::load).transpose() {
        Ok(key) => key,
        Err(error) => {
            warn!(%peer, zone = %zone.origin(), %error, "zone transfer failed: TSIG key unusable");
            return Some(single(
                &query,
                ResponseCode::ServFail,
                Vec::new(),
                AnswerSource::Refused,
            ));
        }
    };
    let mut signer = match authenticate(&query, key.as_ref(), packet, peer, now) {
        Ok(signer) => signer,
        Err(response) => return Some(response),
    };
    let mut response = transfer(snapshot, zone, &query, packet, peer);
    if let Some(signer) = signer.as_mut() {
        for message in &mut response.messages {
            signer.sign(message, now);
        }
    }
    Some(response)
}

/// Checks a transfer request's TSIG against the zone's key (RFC 8945 §5.2). `Ok`: the signer
/// of the response (`None`: the zone takes unsigned transfers and the request is unsigned).
/// `Err`: the refusal to send, signed where RFC 8945 says so (BADTIME).
fn authenticate<'k>(
    query: &Query,
    key: Option<&'k Key>,
    packet: &[u8],
    peer: SocketAddr,
    now: u64,
) -> Result<Option<ResponseSigner<'k>>, TransferResponse> {
    let zone = &query.lower_name;
    let received = match tsig::find(packet) {
        Ok(received) => received,
        Err(error) => {
            info!(%peer, %zone, %error, "zone transfer refused");
            return Err(refused(query));
        }
    };
    let (key, received) = match (key, received) {
        (None, None) => return Ok(None),
        (Some(key), None) => {
            info!(%peer, %zone, key = %key.name(), "zone transfer refused: request not signed");
            return Err(refused(query));
        }
        (None, Some(received)) => {
            // We hold no key for this zone, so none can be the right one (RFC 8945 §5.2.1).
            let rejection = Rejection {
                error: TsigError::BadKey,
                request: Box::new(received),
            };
            return Err(tsig_refusal(query, &rejection, None, now, peer));
        }
        (Some(key), Some(received)) => (key, received),
    };
    match tsig::verify_request(key, received, now) {
        Ok(request_mac) => Ok(Some(ResponseSigner::new(key, request_mac))),
        Err(rejection) => Err(tsig_refusal(query, &rejection, Some(key), now, peer)),
    }
}

/// NOTAUTH with the TSIG error (RFC 8945 §5.2): unsigned for BADKEY and BADSIG, whose MAC
/// we cannot trust; signed for BADTIME, whose MAC verified.
fn tsig_refusal(
    query: &Query,
    rejection: &Rejection,
    key: Option<&Key>,
    now: u64,
    peer: SocketAddr,
) -> TransferResponse {
    info!(
        %peer,
        zone = %query.lower_name,
        key = %rejection.request.key_name,
        tsig_error = %rejection.error,
        time_signed = rejection.request.time_signed,
        now,
        "zone transfer refused: TSIG check failed"
    );
    let mut response = single(
        query,
        ResponseCode::NotAuth,
        Vec::new(),
        AnswerSource::Refused,
    );
    for message in &mut response.messages {
        match (rejection.error, key) {
            (TsigError::BadTime, Some(key)) => {
                ResponseSigner::new(key, rejection.request.mac.clone()).sign_bad_time(
                    message,
                    rejection.request.time_signed,
                    now,
                );
            }
            _ => tsig::append_unsigned_error(message, rejection),
        }
    }
    response
}

fn refused(query: &Query) -> TransferResponse {
    single(
        query,
        ResponseCode::Refused,
        Vec::new(),
        AnswerSource::Refused,
    )
}

/// The transfer itself, once the client is allowed: the SOA alone for an up-to-date IXFR
/// client, else the whole zone.
fn transfer(
    snapshot: &Snapshot,
    zone: &Zone,
    query: &Query,
    packet: &[u8],
    peer: SocketAddr,
) -> TransferResponse {
    if query.qtype == RecordType::IXFR
        && let Some(theirs) = ixfr_client_serial(packet)
        && !serial_is_older(theirs, zone.serial())
    {
        debug!(%peer, zone = %zone.origin(), serial = theirs, "IXFR: secondary is up to date");
        let soa = vec![zone.soa().clone()];
        return single(query, ResponseCode::NoError, soa, AnswerSource::Zone);
    }

    let records = transfer_records(snapshot, zone);
    match pack(query, &records) {
        Ok(messages) => {
            info!(
                %peer,
                zone = %zone.origin(),
                serial = zone.serial(),
                records = records.len(),
                messages = messages.len(),
                kind = %query.qtype,
                "zone transfer"
            );
            TransferResponse {
                summary: Summary {
                    rcode: ResponseCode::NoError,
                    source: AnswerSource::Zone,
                    truncated: false,
                },
                messages,
            }
        }
        Err(reason) => {
            warn!(%peer, zone = %zone.origin(), %reason, "zone transfer failed");
            single(
                query,
                ResponseCode::ServFail,
                Vec::new(),
                AnswerSource::Zone,
            )
        }
    }
}

/// IXFR over UDP (RFC 1995 §2): the zone's current SOA, which tells the client to transfer
/// over TCP (or that it is up to date). The SOA is what any SOA query returns, so this needs
/// no access check; the transfer itself does. `Err`: the RCODE to answer with.
pub fn ixfr_over_udp(snapshot: &Snapshot, qname: &Name) -> Result<Record, ResponseCode> {
    match snapshot.zones.find(qname) {
        Some(zone) if zone.origin() == qname => Ok(zone.soa().clone()),
        // Not a zone we hold (RFC 5936 §2.2.1 uses NOTAUTH for that).
        _ => Err(ResponseCode::NotAuth),
    }
}

/// The zone `qname` names and its configuration, if `peer`'s address may transfer it.
fn transfer_zone<'s>(
    snapshot: &'s Snapshot,
    qname: &Name,
    peer: SocketAddr,
) -> Result<(&'s Zone, &'s ZoneSource), ResponseCode> {
    let zone = match snapshot.zones.find(qname) {
        Some(zone) if zone.origin() == qname => zone,
        _ => return Err(ResponseCode::NotAuth),
    };
    let source = snapshot
        .config
        .zones
        .iter()
        .find(|source| source.origin == *qname)
        .filter(|source| source.transfer_allowed(peer.ip()));
    let Some(source) = source else {
        // Operators want to see a secondary that is misconfigured (or someone probing).
        info!(%peer, zone = %qname, "zone transfer refused: client not in transfer_to");
        return Err(ResponseCode::Refused);
    };
    Ok((zone, source))
}

/// The serial of the SOA in an IXFR query's authority section (RFC 1995 §3).
fn ixfr_client_serial(packet: &[u8]) -> Option<u32> {
    let message = Message::from_vec(packet).ok()?;
    message
        .authorities
        .iter()
        .find_map(|record| match &record.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

/// RFC 1982 serial arithmetic: whether `theirs` is older than `ours`.
fn serial_is_older(theirs: u32, ours: u32) -> bool {
    theirs != ours && ours.wrapping_sub(theirs) < 1 << 31
}

/// SOA, zone data, GSLB fallbacks, SOA.
fn transfer_records(snapshot: &Snapshot, zone: &Zone) -> Vec<Record> {
    // The body is every record but the SOA, which goes first and last.
    let mut records = Vec::with_capacity(zone.record_count() + 1);
    records.push(zone.soa().clone());
    records.extend(zone.transfer_body());
    let config = &snapshot.config;
    for gslb in config.gslb.iter().filter(|g| g.zone == *zone.origin()) {
        records.extend(static_fallback(config, gslb));
    }
    records.push(zone.soa().clone());
    records
}

/// What a secondary serves for a GSLB name: the answer an unlocated client gets with every
/// region up. The regions are the policy's default order (the geo map's default list for a
/// geo map, else the candidates in configured order), then the other candidates, only those
/// serving the policy's model, first `answers` of them. Rendered as the DNS handler renders
/// a decision: a CNAME region first answers alone, otherwise A and AAAA of every region.
pub fn static_fallback(config: &DnsConfig, gslb: &GslbName) -> Vec<Record> {
    let policy = &gslb.policy;
    let preferred: &[RegionIdx] = match &policy.mode {
        SteeringMode::GeoMap(map) | SteeringMode::Latency(LatencyFallback::GeoMap(map)) => {
            &map.default
        }
        _ => &policy.candidates,
    };
    let serves = |region: &RegionIdx| {
        let models = &config.region(*region).models;
        policy.candidates.contains(region)
            && match &policy.model {
                Some(model) => models.is_empty() || models.contains(model),
                None => true,
            }
    };
    let mut chosen: Vec<RegionIdx> = Vec::with_capacity(policy.answers);
    for region in preferred.iter().chain(&policy.candidates) {
        if chosen.len() == policy.answers {
            break;
        }
        if serves(region) && !chosen.contains(region) {
            chosen.push(*region);
        }
    }

    let name = &gslb.name;
    let ttl = policy.ttl;
    if let Some(Endpoints::Cname(target)) = chosen.first().map(|r| &config.region(*r).endpoints) {
        return vec![Record::from_rdata(
            name.clone(),
            ttl,
            RData::CNAME(CNAME(target.clone())),
        )];
    }
    let mut records = Vec::new();
    for region in &chosen {
        if let Endpoints::Addresses { v4, v6 } = &config.region(*region).endpoints {
            for addr in v4 {
                records.push(Record::from_rdata(name.clone(), ttl, RData::A(A(*addr))));
            }
            for addr in v6 {
                records.push(Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::AAAA(AAAA(*addr)),
                ));
            }
        }
    }
    // Two regions may share an endpoint; an RRset holds each record once (RFC 2181 §5).
    let mut seen = Vec::with_capacity(records.len());
    records.retain(|record| {
        let fresh = !seen.contains(&record.data);
        if fresh {
            seen.push(record.data.clone());
        }
        fresh
    });
    records
}

/// Why a transfer could not be encoded.
#[derive(Debug, thiserror::Error)]
enum PackError {
    #[error("{name} {rtype} does not fit in one DNS message ({size} octets)")]
    RecordTooLarge {
        name: Name,
        rtype: RecordType,
        size: usize,
    },
    #[error("cannot encode {name} {rtype}: {reason}")]
    Encode {
        name: Name,
        rtype: RecordType,
        reason: String,
    },
}

/// Cuts `records` into messages of at most [`MESSAGE_BUDGET`] octets (a single larger record
/// gets a message of its own). The question goes in the first message only, which
/// RFC 5936 §2.2.1 allows and saves its octets in every other one.
fn pack(query: &Query, records: &[Record]) -> Result<Vec<Vec<u8>>, PackError> {
    let mut messages = Vec::new();
    let mut batch: Vec<Record> = Vec::new();
    let mut batch_size = FIXED_OVERHEAD;
    let mut scratch = Vec::with_capacity(512);
    for record in records {
        let size = uncompressed_size(record, &mut scratch)?;
        if FIXED_OVERHEAD + size > TCP_MAX_MESSAGE {
            return Err(PackError::RecordTooLarge {
                name: record.name.clone(),
                rtype: record.record_type(),
                size,
            });
        }
        if !batch.is_empty() && batch_size + size > MESSAGE_BUDGET {
            messages.push(encode(
                query,
                messages.is_empty(),
                std::mem::take(&mut batch),
            )?);
            batch_size = FIXED_OVERHEAD;
        }
        batch.push(record.clone());
        batch_size += size;
    }
    if !batch.is_empty() {
        messages.push(encode(query, messages.is_empty(), batch)?);
    }
    Ok(messages)
}

fn uncompressed_size(record: &Record, scratch: &mut Vec<u8>) -> Result<usize, PackError> {
    scratch.clear();
    let mut encoder = BinEncoder::new(scratch);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    record
        .emit(&mut encoder)
        .map_err(|error| PackError::Encode {
            name: record.name.clone(),
            rtype: record.record_type(),
            reason: error.to_string(),
        })?;
    Ok(scratch.len())
}

fn encode(query: &Query, first: bool, answers: Vec<Record>) -> Result<Vec<u8>, PackError> {
    let (name, rtype) = answers
        .first()
        .map_or((Name::root(), RecordType::SOA), |r| {
            (r.name.clone(), r.record_type())
        });
    let message = response(query, first, ResponseCode::NoError, answers);
    message.to_vec().map_err(|error| PackError::Encode {
        name,
        rtype,
        reason: error.to_string(),
    })
}

/// A one-message response: an error, or the up-to-date SOA.
fn single(
    query: &Query,
    rcode: ResponseCode,
    answers: Vec<Record>,
    source: AnswerSource,
) -> TransferResponse {
    let message = response(query, true, rcode, answers);
    let bytes = message.to_vec().unwrap_or_else(|error| {
        // Only a broken record could fail here, and the SOA was encoded at load.
        warn!(%error, "cannot encode a transfer response");
        let mut bare = Message::new(query.id, MessageType::Response, OpCode::Query);
        bare.metadata.response_code = ResponseCode::ServFail;
        bare.to_vec().unwrap_or_default()
    });
    TransferResponse {
        summary: Summary {
            rcode,
            source,
            truncated: false,
        },
        messages: vec![bytes],
    }
}

fn response(query: &Query, first: bool, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut message = Message::new(query.id, MessageType::Response, OpCode::Query);
    message.metadata.authoritative = rcode == ResponseCode::NoError;
    message.metadata.recursion_desired = query.recursion_desired;
    message.metadata.response_code = rcode;
    if first {
        let mut question = Question::query(query.name.clone(), query.qtype);
        question.set_query_class(query.qclass);
        message.add_query(question);
    }
    if query.edns.is_some() {
        // RFC 6891 §7: a response to an EDNS query carries OPT. Its payload size means
        // nothing over TCP.
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_version(0);
        message.set_edns(edns);
    }
    message.answers = answers;
    message
}

/// The class a transfer query may ask for: IN, or ANY as some old secondaries send.
fn transfer_class(qclass: DNSClass) -> bool {
    matches!(qclass, DNSClass::IN | DNSClass::ANY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_follows_rfc_1982() {
        for (theirs, ours, older) in [
            (1, 2, true),
            (2, 2, false),
            (3, 2, false),
            (u32::MAX, 1, true), // wrapped: 1 is newer
            (1, u32::MAX, false),
            (0, 1 << 31, false), // undefined distance: treat as not older
        ] {
            assert_eq!(serial_is_older(theirs, ours), older, "{theirs} vs {ours}");
        }
    }

    fn query_packet(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.add_query(Question::query(Name::from_ascii(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    #[test]
    fn transfer_queries_are_recognised_by_type_alone() {
        assert!(is_transfer_query(&query_packet(
            "example.test.",
            RecordType::AXFR
        )));
        assert!(is_transfer_query(&query_packet(
            "example.test.",
            RecordType::IXFR
        )));
        assert!(is_transfer_query(&query_packet(".", RecordType::AXFR)));
        assert!(!is_transfer_query(&query_packet(
            "example.test.",
            RecordType::SOA
        )));
        assert!(!is_transfer_query(&query_packet(
            "axfr.test.",
            RecordType::A
        )));
        assert!(!is_transfer_query(&[]));
        assert!(!is_transfer_query(&[0; 12]));
        // A pointer where the question name starts is not a query we stream.
        let mut pointer = query_packet("example.test.", RecordType::AXFR);
        pointer[12] = 0xC0;
        assert!(!is_transfer_query(&pointer));
    }

    fn zone_with(records: usize) -> Zone {
        let mut text = String::from(
            "$ORIGIN big.test.\n$TTL 300\n@ SOA ns. host. 1 2 3 4 5\n@ NS ns.other.\n",
        );
        for i in 0..records {
            text.push_str(&format!("h{i} A 192.0.2.{}\n", i % 250 + 1));
        }
        Zone::parse(&Name::from_ascii("big.test.").unwrap(), &text, None).unwrap()
    }

    fn axfr_query() -> Query {
        wire::parse_query(&query_packet("big.test.", RecordType::AXFR)).unwrap()
    }

    #[test]
    fn a_large_zone_is_cut_into_messages_within_the_budget_that_reassemble() {
        let zone = zone_with(5_000);
        let mut records = vec![zone.soa().clone()];
        records.extend(zone.transfer_body());
        records.push(zone.soa().clone());
        let messages = pack(&axfr_query(), &records).unwrap();
        assert!(messages.len() > 1, "{} messages", messages.len());
        let mut received = Vec::new();
        for (i, bytes) in messages.iter().enumerate() {
            assert!(
                bytes.len() <= MESSAGE_BUDGET,
                "message {i}: {} octets",
                bytes.len()
            );
            let message = Message::from_vec(bytes).unwrap();
            assert_eq!(message.metadata.id, 7);
            assert!(message.metadata.authoritative);
            assert_eq!(message.queries.len(), usize::from(i == 0));
            received.extend(message.answers);
        }
        assert_eq!(received, records);
        assert_eq!(received.len(), 5_000 + 3);
    }

    #[test]
    fn one_record_larger_than_the_budget_gets_a_message_of_its_own() {
        let strings: Vec<String> = (0..100).map(|i| format!("\"{i:0>250}\"")).collect();
        let text = format!(
            "$ORIGIN big.test.\n$TTL 300\n@ SOA ns. host. 1 2 3 4 5\n@ NS ns.other.\nt TXT {}\n",
            strings.join(" ")
        );
        let zone = Zone::parse(&Name::from_ascii("big.test.").unwrap(), &text, None).unwrap();
        let mut records = vec![zone.soa().clone()];
        records.extend(zone.transfer_body());
        records.push(zone.soa().clone());
        let messages = pack(&axfr_query(), &records).unwrap();
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert!(
            sizes
                .iter()
                .any(|&s| s > MESSAGE_BUDGET && s <= TCP_MAX_MESSAGE),
            "{sizes:?}"
        );
        let total: usize = messages
            .iter()
            .map(|m| Message::from_vec(m).unwrap().answers.len())
            .sum();
        assert_eq!(total, records.len());
    }
}
