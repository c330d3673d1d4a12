//! The request handler: one packet in, at most one packet out, against one snapshot.
//!
//! This is the whole DNS decision path without sockets: decode ([`super::wire`]), pick the
//! source of the answer (a `_why` debug name, a GSLB name through the steering core, or zone
//! data), and encode the response with EDNS, ECS echo and truncation handled. Every RCODE the
//! server sends is chosen here, in [`respond`], and nowhere else. It never blocks and never
//! does IO, so the listeners call it inline and benchmarks call it directly.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use hickory_proto::{
    op::{Edns as HickoryEdns, Message, MessageType, OpCode, Query as Question, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, TXT, opt::EdnsOption},
    },
    serialize::binary::{BinEncodable, BinEncoder},
};

use super::wire::{self, ClientSubnet, Query, QueryError};
use crate::{
    config::model::{Endpoints, RegionIdx},
    snapshot::Snapshot,
    steering::{self, ClientInput, ClientSource, Decision, Outcome, PolicyIdx, Reason, Want},
    zone::Lookup,
};

/// Largest DNS message over TCP.
const TCP_MAX_MESSAGE: usize = 65_535;
/// Response size limit for clients that do not speak EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;

/// The transport a query came in on; it bounds the response size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What the handler decided, for metrics and logs (the bytes are written to `out`).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub rcode: ResponseCode,
    pub source: AnswerSource,
    pub truncated: bool,
}

/// Where an answer came from.
#[derive(Clone, Debug, PartialEq)]
pub enum AnswerSource {
    /// The packet could not be decoded (FORMERR, NOTIMP, BADVERS).
    Malformed,
    /// Not in any of our zones, or a class / type we do not serve.
    Refused,
    Zone,
    Gslb {
        policy: PolicyIdx,
        regions: Vec<RegionIdx>,
        reason: Reason,
    },
    Why {
        policy: PolicyIdx,
    },
}

/// Handles one query packet. Returns `None` when the packet must be dropped (too short for a
/// header, or a response); otherwise writes the response into `out` (cleared first).
pub fn respond(
    snapshot: &Snapshot,
    packet: &[u8],
    peer: SocketAddr,
    transport: Transport,
    seed: u64,
    now: Instant,
    out: &mut Vec<u8>,
) -> Option<Summary> {
    out.clear();
    let query = match wire::parse_query(packet) {
        Ok(query) => query,
        Err(QueryError::Drop { .. }) => return None,
        Err(error) => return Some(malformed_response(&error, out)),
    };
    let limit = response_limit(snapshot, &query, transport);
    let mut reply = Reply::new(ResponseCode::NoError);
    let source = answer(snapshot, &query, peer, seed, now, &mut reply);
    let rcode = reply.rcode;
    let truncated = encode(
        &query,
        reply,
        snapshot.config.limits.max_udp_payload,
        limit,
        out,
    );
    Some(Summary {
        rcode,
        source,
        truncated,
    })
}

/// The parts of a response before encoding.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// Glue in a referral cannot be dropped to make the response fit (RFC 9471).
    additionals_required: bool,
    /// `Some(scope)`: echo the query's ECS option with this scope.
    ecs_scope: Option<u8>,
}

impl Reply {
    fn new(rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            additionals_required: false,
            ecs_scope: None,
        }
    }
}

fn answer(
    snapshot: &Snapshot,
    query: &Query,
    peer: SocketAddr,
    seed: u64,
    now: Instant,
    reply: &mut Reply,
) -> AnswerSource {
    if query.qclass != DNSClass::IN {
        reply.rcode = ResponseCode::Refused;
        return AnswerSource::Refused;
    }
    if matches!(
        query.qtype,
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT
    ) {
        // Zone transfer is not offered (yet); OPT is not a question.
        reply.rcode = if query.qtype == RecordType::OPT {
            ResponseCode::FormErr
        } else {
            ResponseCode::Refused
        };
        return AnswerSource::Refused;
    }
    let Some(zone) = snapshot.zones.find(&query.lower_name) else {
        reply.rcode = ResponseCode::Refused;
        return AnswerSource::Refused;
    };
    let client_subnet = query.edns.as_ref().and_then(|e| e.client_subnet);
    // Answers from zone data do not depend on the client: scope 0 (RFC 7871 §7.2.1).
    reply.ecs_scope = client_subnet.map(|_| 0);

    if let Some(&policy) = snapshot.why_by_name.get(&query.lower_name) {
        reply.authoritative = true;
        if matches!(query.qtype, RecordType::TXT | RecordType::ANY) {
            explain(snapshot, query, policy, peer, seed, now, reply);
        } else {
            reply.authorities.push(zone.negative_soa());
        }
        return AnswerSource::Why { policy };
    }

    match zone.lookup(&query.lower_name, query.qtype) {
        Lookup::Answer {
            answers,
            additionals,
        } => {
            reply.authoritative = true;
            reply.answers = answers;
            reply.additionals = additionals;
            AnswerSource::Zone
        }
        Lookup::NoData { chain } => {
            reply.authoritative = true;
            reply.answers = chain;
            reply.authorities.push(zone.negative_soa());
            AnswerSource::Zone
        }
        Lookup::NxDomain { chain } => {
            reply.authoritative = true;
            reply.rcode = ResponseCode::NXDomain;
            reply.answers = chain;
            reply.authorities.push(zone.negative_soa());
            AnswerSource::Zone
        }
        Lookup::Referral { ns, glue } => {
            reply.authorities = ns;
            reply.additionals = glue;
            reply.additionals_required = true;
            AnswerSource::Zone
        }
        Lookup::Dynamic { chain, name } => {
            reply.authoritative = true;
            reply.answers = chain;
            let Some(&policy) = snapshot.gslb_by_name.get(&name) else {
                // The zone only knows dynamic names the snapshot registered; this is a bug.
                tracing::error!(%name, "dynamic name without a policy");
                reply.rcode = ResponseCode::ServFail;
                return AnswerSource::Zone;
            };
            let client = client_input(snapshot, policy, client_subnet, peer, seed, false);
            let want = want_for(query.qtype);
            let question = steering::Question {
                want,
                explain: false,
            };
            let decision = steering::decide(&snapshot.steering, policy, &client, &question, now);
            let gslb = &snapshot.config.gslb[policy.0 as usize];
            reply.ecs_scope = match client_subnet {
                Some(_) if gslb.policy.ecs => Some(decision.ecs_scope),
                // ECS switched off for this name: we ignored the option, so we do not echo it.
                _ => None,
            };
            render_decision(snapshot, &name, query.qtype, &decision, reply, zone);
            AnswerSource::Gslb {
                policy,
                regions: match &decision.outcome {
                    Outcome::Regions(regions) => regions.to_vec(),
                    _ => Vec::new(),
                },
                reason: decision.reason,
            }
        }
    }
}

/// Which endpoint family a query type needs.
fn want_for(qtype: RecordType) -> Want {
    match qtype {
        RecordType::A => Want::V4,
        RecordType::AAAA => Want::V6,
        _ => Want::Any,
    }
}

/// The client the steering core sees: the ECS subnet when the policy honours it (RFC 7871:
/// a source prefix of 0 means "do not use client information", so the resolver's address is
/// used), else the resolver's own address.
fn client_input(
    snapshot: &Snapshot,
    policy: PolicyIdx,
    client_subnet: Option<ClientSubnet>,
    peer: SocketAddr,
    seed: u64,
    explain: bool,
) -> ClientInput {
    let ecs_enabled = snapshot.config.gslb[policy.0 as usize].policy.ecs;
    let (addr, source_prefix, source) = match client_subnet {
        Some(subnet) if ecs_enabled && subnet.source_prefix > 0 => {
            (subnet.address, subnet.source_prefix, ClientSource::Ecs)
        }
        _ => {
            let addr = canonical_ip(peer.ip());
            let full = if addr.is_ipv4() { 32 } else { 128 };
            (addr, full, ClientSource::Resolver)
        }
    };
    let location = if explain {
        snapshot.geo.as_ref().and_then(|db| db.lookup(addr))
    } else {
        None
    };
    ClientInput {
        addr,
        source_prefix,
        source,
        seed,
        location,
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) are IPv4 clients.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn render_decision(
    snapshot: &Snapshot,
    name: &Name,
    qtype: RecordType,
    decision: &Decision,
    reply: &mut Reply,
    zone: &crate::zone::Zone,
) {
    let regions = match &decision.outcome {
        Outcome::Regions(regions) => regions,
        Outcome::NoData => {
            reply.authorities.push(zone.negative_soa());
            return;
        }
        Outcome::ServFail => {
            reply.rcode = ResponseCode::ServFail;
            reply.authoritative = false;
            return;
        }
    };
    let ttl = decision.ttl;
    let first = regions
        .first()
        .map(|r| &snapshot.config.region(*r).endpoints);
    // A name owning a CNAME owns nothing else: a CNAME region answers alone.
    if let Some(Endpoints::Cname(target)) = first {
        reply.answers.push(Record::from_rdata(
            name.clone(),
            ttl,
            RData::CNAME(CNAME(target.clone())),
        ));
        return;
    }
    // ANY gets a minimal answer (RFC 8482): one RRset, the A records, or AAAA where the
    // chosen regions have no IPv4 endpoint.
    let qtype = match qtype {
        RecordType::ANY => {
            let has_v4 = regions.iter().any(|r| {
                matches!(&snapshot.config.region(*r).endpoints,
                    Endpoints::Addresses { v4, .. } if !v4.is_empty())
            });
            if has_v4 {
                RecordType::A
            } else {
                RecordType::AAAA
            }
        }
        other => other,
    };
    for region in regions.iter() {
        if let Endpoints::Addresses { v4, v6 } = &snapshot.config.region(*region).endpoints {
            if qtype == RecordType::A {
                for addr in v4 {
                    reply
                        .answers
                        .push(Record::from_rdata(name.clone(), ttl, RData::A(A(*addr))));
                }
            }
            if qtype == RecordType::AAAA {
                for addr in v6 {
                    reply.answers.push(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::AAAA(AAAA(*addr)),
                    ));
                }
            }
        }
    }
    if reply.answers.iter().all(|r| r.name != *name) {
        // e.g. a CNAME query for a name whose regions have addresses: no data of that type.
        reply.authorities.push(zone.negative_soa());
    }
}

/// Answers `_why.<name>` TXT: the decision this client would get, step by step.
fn explain(
    snapshot: &Snapshot,
    query: &Query,
    policy: PolicyIdx,
    peer: SocketAddr,
    seed: u64,
    now: Instant,
    reply: &mut Reply,
) {
    let client_subnet = query.edns.as_ref().and_then(|e| e.client_subnet);
    let client = client_input(snapshot, policy, client_subnet, peer, seed, true);
    let question = steering::Question {
        want: Want::V4,
        explain: true,
    };
    let decision = steering::decide(&snapshot.steering, policy, &client, &question, now);
    let mut lines = vec![format!("snapshot generation={}", snapshot.generation)];
    if let Some(trace) = &decision.trace {
        lines.extend(trace.lines(&snapshot.config));
    }
    // One record per line, numbered, so the order survives resolvers that shuffle RRsets.
    for (i, line) in lines.iter().enumerate() {
        let mut text = format!("{i:02} {line}");
        truncate_at_char_boundary(&mut text, 255);
        reply.answers.push(Record::from_rdata(
            query.lower_name.clone(),
            0,
            RData::TXT(TXT::new(vec![text])),
        ));
    }
    // The explanation is about this exact client: it must not be reused for any other.
    reply.ecs_scope = client_subnet.map(|s| s.source_prefix);
}

fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

/// The largest response this query may receive.
fn response_limit(snapshot: &Snapshot, query: &Query, transport: Transport) -> usize {
    match (transport, &query.edns) {
        (Transport::Tcp, _) => TCP_MAX_MESSAGE,
        (Transport::Udp, None) => CLASSIC_UDP_LIMIT,
        (Transport::Udp, Some(edns)) => {
            usize::from(edns.udp_payload.min(snapshot.config.limits.max_udp_payload))
                .max(CLASSIC_UDP_LIMIT)
        }
    }
}

/// Encodes the reply. When it does not fit: optional additional records go first; if it still
/// does not fit, the answer is sent empty with TC=1 so the client retries over TCP.
/// Returns whether TC was set.
fn encode(query: &Query, reply: Reply, our_payload: u16, limit: usize, out: &mut Vec<u8>) -> bool {
    let mut message = Message::new(query.id, MessageType::Response, OpCode::Query);
    message.metadata.authoritative = reply.authoritative;
    message.metadata.recursion_desired = query.recursion_desired;
    message.metadata.checking_disabled = query.checking_disabled;
    message.metadata.response_code = reply.rcode;
    // The question is echoed exactly, class included (RFC 1035 §4.1.1): clients match on it.
    let mut question = Question::query(query.name.clone(), query.qtype);
    question.set_query_class(query.qclass);
    message.add_query(question);
    if let Some(edns) = &query.edns {
        message.set_edns(response_edns(edns, our_payload, reply.ecs_scope));
    }
    // Moved, not copied: the reply is not needed after encoding.
    message.answers = reply.answers;
    message.authorities = reply.authorities;
    message.additionals = reply.additionals;

    if emit(&message, out) && out.len() <= limit {
        return false;
    }
    if !reply.additionals_required && !message.additionals.is_empty() {
        message.additionals.clear();
        if emit(&message, out) && out.len() <= limit {
            return false;
        }
    }
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = true;
    if !emit(&message, out) {
        // Even the bare header and question failed to encode: answer SERVFAIL, header only.
        out.clear();
        let mut bare = Message::new(query.id, MessageType::Response, OpCode::Query);
        bare.metadata.response_code = ResponseCode::ServFail;
        emit(&bare, out);
    }
    true
}

fn response_edns(query_edns: &wire::Edns, our_payload: u16, ecs_scope: Option<u8>) -> HickoryEdns {
    let mut edns = HickoryEdns::new();
    edns.set_max_payload(our_payload.max(512));
    edns.set_version(0);
    edns.set_dnssec_ok(query_edns.dnssec_ok);
    if let (Some(subnet), Some(scope)) = (query_edns.client_subnet, ecs_scope) {
        edns.options_mut().insert(EdnsOption::Subnet(
            hickory_proto::rr::rdata::opt::ClientSubnet::new(
                subnet.address,
                subnet.source_prefix,
                scope,
            ),
        ));
    }
    edns
}

fn emit(message: &Message, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut encoder = BinEncoder::new(out);
    message.emit(&mut encoder).is_ok()
}

fn malformed_response(error: &QueryError, out: &mut Vec<u8>) -> Summary {
    let (id, opcode, rcode, question) = match error {
        QueryError::FormErr { id, opcode, .. } => (*id, *opcode, ResponseCode::FormErr, None),
        QueryError::NotImp { id, opcode } => (*id, *opcode, ResponseCode::NotImp, None),
        QueryError::BadVersion { id, question } => {
            (*id, 0, ResponseCode::BADVERS, question.clone())
        }
        QueryError::Drop { .. } => (0, 0, ResponseCode::FormErr, None),
    };
    let mut message = Message::new(id, MessageType::Response, OpCode::from_u8(opcode));
    message.metadata.response_code = rcode;
    if let Some((name, qtype, qclass)) = question {
        let mut q = Question::query(name, qtype);
        q.set_query_class(qclass);
        message.add_query(q);
    }
    if rcode == ResponseCode::BADVERS {
        // BADVERS lives partly in the OPT record, so the response must carry one.
        let mut edns = HickoryEdns::new();
        edns.set_version(0);
        message.set_edns(edns);
    }
    if !emit(&message, out) {
        out.clear();
    }
    Summary {
        rcode,
        source: AnswerSource::Malformed,
        truncated: false,
    }
}
