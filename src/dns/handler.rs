//! The request handler: one packet in, at most one packet out, against one snapshot.
//!
//! This is the whole DNS decision path without sockets: decode ([`super::wire`]), pick the
//! source of the answer (a `_why` debug name, a GSLB name through the steering core, or zone
//! data), and encode the response with EDNS, ECS echo and truncation handled. Every RCODE the
//! server sends is chosen here, in [`respond`], and nowhere else. It never blocks and never
//! does IO, so the listeners call it inline and benchmarks call it directly.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
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
    let (source, _) = answer(snapshot, &query, peer, seed, now, &mut reply);
    let rcode = reply.rcode;
    let truncated = encode(
        &query,
        &query.name,
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

/// Pre-encoded responses, for one worker and one snapshot.
///
/// Most queries a GSLB server sees repeat: the same few names, types and EDNS shapes. For
/// those the response bytes differ only in the header ID, the case of the question name
/// (resolvers randomise it, 0x20) and the ECS option's address and scope, so the cache keeps
/// the encoded response and patches those. A template is keyed by everything else that shapes
/// the bytes: the lower-cased name, type, class, RD and CD bits, transport, EDNS presence,
/// DO bit, the size limit the response was fitted to (TC included), and the ECS family and
/// source prefix (which fix the option's length). A GSLB name still runs `steering::decide`
/// on every query, so health, weights (the seed), client maps and operator state act as
/// before; its templates are keyed further by the decision's regions and TTL.
///
/// Cached are NOERROR answers from zone data or steering; never `_why` answers (they describe
/// one client), errors, NXDOMAIN, REFUSED or anything malformed, so a flood of random names
/// cannot fill the cache. It is emptied when the snapshot changes (by pointer, not generation:
/// health updates publish new snapshots under the same generation) and when it is full.
///
/// Templates are encoded with the question name in lower case, so name compression points the
/// answers' owner names at the question: a query in mixed case gets its own case back in the
/// owner names too (case-insensitively the same response).
pub struct AnswerCache {
    /// Holding the snapshot keeps its address from being reused by a later one.
    snapshot: Option<Arc<Snapshot>>,
    plans: HashMap<Box<[u8]>, Plan>,
    key: Vec<u8>,
}

/// Distinct query shapes kept before the cache starts over.
const CACHE_MAX_PLANS: usize = 4096;
/// Distinct steering outcomes kept per GSLB query shape.
const CACHE_MAX_VARIANTS: usize = 16;

enum Plan {
    /// The same response for every client.
    Fixed(Template),
    /// A GSLB name: the response depends on the steering decision.
    Steered {
        policy: PolicyIdx,
        variants: Vec<(Outcome, u32, Template)>,
    },
}

struct Template {
    bytes: Vec<u8>,
    rcode: ResponseCode,
    truncated: bool,
    /// Offset of the echoed ECS option's scope octet; its address octets follow.
    ecs_scope_at: Option<usize>,
}

impl Default for AnswerCache {
    fn default() -> Self {
        AnswerCache::new()
    }
}

impl AnswerCache {
    pub fn new() -> AnswerCache {
        AnswerCache {
            snapshot: None,
            plans: HashMap::new(),
            key: Vec::new(),
        }
    }

    /// Query shapes held (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    fn follow(&mut self, snapshot: &Arc<Snapshot>) {
        let same = self
            .snapshot
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, snapshot));
        if !same {
            self.plans.clear();
            self.snapshot = Some(snapshot.clone());
        }
    }
}

/// [`respond`] through an [`AnswerCache`]: the same answers, encoded once per query shape.
#[allow(clippy::too_many_arguments)]
pub fn respond_cached(
    snapshot: &Arc<Snapshot>,
    cache: &mut AnswerCache,
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
    cache.follow(snapshot);
    let limit = response_limit(snapshot, &query, transport);
    let client_subnet = query.edns.as_ref().and_then(|e| e.client_subnet);
    shape_key(&query, transport, limit, &mut cache.key);

    // Hit: patch a template. A GSLB shape decides first, then looks for its outcome.
    let mut steered_decision = None;
    match cache.plans.get(cache.key.as_slice()) {
        Some(Plan::Fixed(template)) => {
            template.write(&query, client_subnet, None, out);
            return Some(Summary {
                rcode: template.rcode,
                source: AnswerSource::Zone,
                truncated: template.truncated,
            });
        }
        Some(Plan::Steered { policy, variants }) => {
            let decision = decide(snapshot, *policy, &query, client_subnet, peer, seed, now);
            if let Some((_, _, template)) = variants
                .iter()
                .find(|(outcome, ttl, _)| *outcome == decision.outcome && *ttl == decision.ttl)
            {
                let scope = echoed_scope(snapshot, *policy, client_subnet, &decision);
                template.write(&query, client_subnet, scope, out);
                return Some(Summary {
                    rcode: template.rcode,
                    source: into_gslb_source(*policy, decision),
                    truncated: template.truncated,
                });
            }
            steered_decision = Some(decision);
        }
        None => {}
    }

    // Miss: answer in full. `decide` is deterministic, so a second call agrees with the first.
    let mut reply = Reply::new(ResponseCode::NoError);
    let (source, decision) = answer(snapshot, &query, peer, seed, now, &mut reply);
    debug_assert!(steered_decision.is_none() || steered_decision == decision);
    let rcode = reply.rcode;
    let cacheable = rcode == ResponseCode::NoError
        && matches!(source, AnswerSource::Zone | AnswerSource::Gslb { .. });
    if !cacheable {
        let truncated = encode(
            &query,
            &query.name,
            reply,
            snapshot.config.limits.max_udp_payload,
            limit,
            out,
        );
        return Some(Summary {
            rcode,
            source,
            truncated,
        });
    }
    let ecs_echo = client_subnet.zip(reply.ecs_scope);
    let truncated = encode(
        &query,
        &query.lower_name,
        reply,
        snapshot.config.limits.max_udp_payload,
        limit,
        out,
    );
    let Some(template) = Template::new(out, rcode, truncated, ecs_echo) else {
        write_question_case(&query, out);
        return Some(Summary {
            rcode,
            source,
            truncated,
        });
    };
    template.write(&query, client_subnet, None, out);
    if cache.plans.len() >= CACHE_MAX_PLANS {
        cache.plans.clear();
    }
    match (&source, decision) {
        (AnswerSource::Gslb { policy, .. }, Some(decision)) => {
            let plan = cache
                .plans
                .entry(cache.key.as_slice().into())
                .or_insert_with(|| Plan::Steered {
                    policy: *policy,
                    variants: Vec::new(),
                });
            if let Plan::Steered { variants, .. } = plan
                && variants.len() < CACHE_MAX_VARIANTS
            {
                variants.push((decision.outcome, decision.ttl, template));
            }
        }
        _ => {
            cache
                .plans
                .insert(cache.key.as_slice().into(), Plan::Fixed(template));
        }
    }
    Some(Summary {
        rcode,
        source,
        truncated,
    })
}

/// Everything about a query that shapes its response's bytes, except what a template patches.
fn shape_key(query: &Query, transport: Transport, limit: usize, key: &mut Vec<u8>) {
    key.clear();
    key.push(match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    });
    key.push(u8::from(query.recursion_desired) | u8::from(query.checking_disabled) << 1);
    key.extend_from_slice(&u16::from(query.qtype).to_be_bytes());
    key.extend_from_slice(&u16::from(query.qclass).to_be_bytes());
    key.extend_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_be_bytes());
    match &query.edns {
        None => key.push(0),
        Some(edns) => {
            key.push(1 | u8::from(edns.dnssec_ok) << 1);
            match edns.client_subnet {
                None => key.push(0),
                Some(subnet) => {
                    key.push(if subnet.address.is_ipv4() { 1 } else { 2 });
                    key.push(subnet.source_prefix);
                }
            }
        }
    }
    for label in query.lower_name.iter() {
        // Labels are at most 63 octets: the length never collides with the fields above.
        key.push(label.len() as u8);
        key.extend_from_slice(label);
    }
}

impl Template {
    /// `encoded` is a response whose question name is in lower case and, with `ecs`, whose
    /// message ends with the echoed ECS option (hickory writes OPT last, ECS its one option).
    fn new(
        encoded: &[u8],
        rcode: ResponseCode,
        truncated: bool,
        ecs: Option<(ClientSubnet, u8)>,
    ) -> Option<Template> {
        let ecs_scope_at = match ecs {
            None => None,
            Some((subnet, scope)) => {
                let option = wire::encode_client_subnet(&subnet, scope);
                // Anything else would be a change in hickory's layout: better not to cache
                // than to patch the wrong octets (and leak one client's subnet to another).
                if !encoded.ends_with(&option) {
                    return None;
                }
                Some(encoded.len() - option.len() + 3)
            }
        };
        Some(Template {
            bytes: encoded.to_vec(),
            rcode,
            truncated,
            ecs_scope_at,
        })
    }

    /// The response to `query`: the template with its ID, question case and ECS patched in
    /// (the scope only when given: zone answers keep the template's 0).
    fn write(
        &self,
        query: &Query,
        client_subnet: Option<ClientSubnet>,
        scope: Option<u8>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        write_question_case(query, out);
        if let (Some(scope_at), Some(subnet)) = (self.ecs_scope_at, client_subnet) {
            let mut octets = [0u8; 16];
            match subnet.address {
                IpAddr::V4(v4) => octets[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => octets = v6.octets(),
            }
            let length = usize::from(subnet.source_prefix).div_ceil(8);
            if let Some(scope) = scope {
                out[scope_at] = scope;
            }
            if let Some(target) = out.get_mut(scope_at + 1..scope_at + 1 + length) {
                target.copy_from_slice(&octets[..length]);
            }
        }
    }
}

/// Writes the question name as the query spelled it over a response encoded with the name in
/// lower case: same labels, same lengths, right after the header.
fn write_question_case(query: &Query, out: &mut [u8]) {
    let mut at = 12;
    for label in query.name.iter() {
        at += 1;
        if let Some(target) = out.get_mut(at..at + label.len()) {
            target.copy_from_slice(label);
        }
        at += label.len();
    }
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

/// Fills `reply`; returns where the answer came from and, for a GSLB name, the decision.
fn answer(
    snapshot: &Snapshot,
    query: &Query,
    peer: SocketAddr,
    seed: u64,
    now: Instant,
    reply: &mut Reply,
) -> (AnswerSource, Option<Decision>) {
    let mut decision = None;
    let source = answer_into(snapshot, query, peer, seed, now, reply, &mut decision);
    (source, decision)
}

fn answer_into(
    snapshot: &Snapshot,
    query: &Query,
    peer: SocketAddr,
    seed: u64,
    now: Instant,
    reply: &mut Reply,
    decided: &mut Option<Decision>,
) -> AnswerSource {
    if query.qclass != DNSClass::IN {
        reply.rcode = ResponseCode::Refused;
        return AnswerSource::Refused;
    }
    match query.qtype {
        // OPT is not a question.
        RecordType::OPT => {
            reply.rcode = ResponseCode::FormErr;
            return AnswerSource::Refused;
        }
        // AXFR is not defined over UDP (RFC 5936 §4.2); over TCP the listener streams it
        // through `super::transfer` before this handler sees the packet.
        RecordType::AXFR => {
            reply.rcode = ResponseCode::Refused;
            return AnswerSource::Refused;
        }
        // RFC 1995 §2: over UDP, the current SOA alone means "transfer over TCP".
        RecordType::IXFR => {
            return match super::transfer::ixfr_over_udp(snapshot, &query.lower_name) {
                Ok(soa) => {
                    reply.authoritative = true;
                    reply.answers.push(soa);
                    AnswerSource::Zone
                }
                Err(rcode) => {
                    reply.rcode = rcode;
                    AnswerSource::Refused
                }
            };
        }
        _ => {}
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
            let decision = decide(snapshot, policy, query, client_subnet, peer, seed, now);
            reply.ecs_scope = echoed_scope(snapshot, policy, client_subnet, &decision);
            render_decision(snapshot, &name, query.qtype, &decision, reply, zone);
            let source = gslb_source(policy, &decision);
            *decided = Some(decision);
            source
        }
    }
}

fn decide(
    snapshot: &Snapshot,
    policy: PolicyIdx,
    query: &Query,
    client_subnet: Option<ClientSubnet>,
    peer: SocketAddr,
    seed: u64,
    now: Instant,
) -> Decision {
    let client = client_input(snapshot, policy, client_subnet, peer, seed, false);
    let question = steering::Question {
        want: want_for(query.qtype),
        explain: false,
    };
    steering::decide(&snapshot.steering, policy, &client, &question, now)
}

/// The ECS scope a GSLB answer echoes, if any.
fn echoed_scope(
    snapshot: &Snapshot,
    policy: PolicyIdx,
    client_subnet: Option<ClientSubnet>,
    decision: &Decision,
) -> Option<u8> {
    match client_subnet {
        // A SOURCE PREFIX-LENGTH of 0 is answered from the resolver's own address, so the
        // decision's scope describes that address, not the option: the echoed scope must
        // never be wider than the query's source prefix (RFC 7871 §7.2.1). Found by fuzzing.
        Some(subnet) if snapshot.config.gslb[policy.0 as usize].policy.ecs => {
            Some(decision.ecs_scope.min(subnet.source_prefix))
        }
        // ECS switched off for this name: we ignored the option, so we do not echo it.
        _ => None,
    }
}

fn gslb_source(policy: PolicyIdx, decision: &Decision) -> AnswerSource {
    AnswerSource::Gslb {
        policy,
        regions: match &decision.outcome {
            Outcome::Regions(regions) => regions.clone(),
            _ => Vec::new(),
        },
        reason: decision.reason,
    }
}

/// [`gslb_source`] for a decision not needed afterwards: its region list moves.
fn into_gslb_source(policy: PolicyIdx, decision: Decision) -> AnswerSource {
    AnswerSource::Gslb {
        policy,
        regions: match decision.outcome {
            Outcome::Regions(regions) => regions,
            _ => Vec::new(),
        },
        reason: decision.reason,
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
fn encode(
    query: &Query,
    question_name: &Name,
    reply: Reply,
    our_payload: u16,
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    let mut message = Message::new(query.id, MessageType::Response, OpCode::Query);
    message.metadata.authoritative = reply.authoritative;
    message.metadata.recursion_desired = query.recursion_desired;
    message.metadata.checking_disabled = query.checking_disabled;
    message.metadata.response_code = reply.rcode;
    // The question is echoed exactly, class included (RFC 1035 §4.1.1): clients match on it.
    let mut question = Question::query(question_name.clone(), query.qtype);
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

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query as Question},
        rr::{Name, RecordType, rdata::opt::ClientSubnet as HickorySubnet, rdata::opt::EdnsOption},
    };
    use proptest::prelude::*;

    use super::*;

    fn bundled() -> Arc<Snapshot> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml");
        Arc::new(Snapshot::load(&path, 1).expect("bundled config loads"))
    }

    const NAMES: &[&str] = &[
        "api.example.test.",
        "www.example.test.",
        "nearest.example.test.",
        "weighted.example.test.",
        "failover.example.test.",
        "chat.example.test.",
        "docs.example.test.",
        "_why.api.example.test.",
        "nope.example.test.",
        "big.example.test.",
        "x.lab.example.test.",
        "example.test.",
        "elsewhere.test.",
    ];
    const TYPES: &[RecordType] = &[
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::ANY,
        RecordType::MX,
        RecordType::CNAME,
        RecordType::HTTPS,
    ];
    /// (UDP payload, DO, ECS subnet); `None` = no OPT record.
    const EDNS: &[Option<(u16, bool, Option<&str>)>] = &[
        None,
        Some((1232, false, None)),
        Some((512, true, None)),
        Some((4096, false, Some("81.2.69.0/24"))),
        Some((4096, false, Some("8.8.8.0/24"))),
        Some((1232, true, Some("133.242.0.0/16"))),
        Some((1232, false, Some("2a02:2e0::/32"))),
        Some((1232, false, Some("2001:db8::/56"))),
        Some((1232, false, Some("0.0.0.0/0"))),
    ];
    const PEERS: &[&str] = &["8.8.8.8:41000", "127.0.0.1:5300", "[2a02:2e0::1]:53"];

    fn packet(
        id: u16,
        name: &str,
        qtype: RecordType,
        edns: Option<(u16, bool, Option<&str>)>,
    ) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = id.is_multiple_of(2);
        message.add_query(Question::query(
            Name::from_ascii(name).expect("name"),
            qtype,
        ));
        if let Some((payload, dnssec_ok, subnet)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            if let Some(subnet) = subnet {
                let net: ipnet::IpNet = subnet.parse().expect("subnet");
                e.options_mut()
                    .insert(EdnsOption::Subnet(HickorySubnet::from(net)));
            }
            message.set_edns(e);
        }
        message.to_vec().expect("encode query")
    }

    /// `name` with the letters whose bit is set in `mask` in upper case (0x20 randomisation).
    fn with_case(name: &str, mask: u64) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// What the cache must send: for a cacheable answer, the uncached response to the
    /// lower-case query with the question spelled as asked (and so, through compression, the
    /// answers' owners); for anything else the uncached response itself.
    fn expected(
        snapshot: &Snapshot,
        packet: &[u8],
        lower_packet: &[u8],
        peer: SocketAddr,
        transport: Transport,
        seed: u64,
        now: Instant,
    ) -> (Option<Summary>, Vec<u8>) {
        let mut out = Vec::new();
        let summary = respond(snapshot, lower_packet, peer, transport, seed, now, &mut out);
        let cacheable = summary.as_ref().is_some_and(|s| {
            s.rcode == ResponseCode::NoError
                && matches!(s.source, AnswerSource::Zone | AnswerSource::Gslb { .. })
        });
        if cacheable {
            let name_end = 12 + packet[12..].iter().position(|b| *b == 0).expect("root");
            out[12..name_end].copy_from_slice(&packet[12..name_end]);
            (summary, out)
        } else {
            let summary = respond(snapshot, packet, peer, transport, seed, now, &mut out);
            (summary, out)
        }
    }

    #[derive(Clone, Debug)]
    struct Asked {
        id: u16,
        name: usize,
        case: u64,
        qtype: usize,
        edns: usize,
        peer: usize,
        tcp: bool,
        seed: u64,
    }

    fn asked() -> impl Strategy<Value = Asked> {
        (
            any::<u16>(),
            0..NAMES.len(),
            any::<u64>(),
            0..TYPES.len(),
            0..EDNS.len(),
            0..PEERS.len(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(id, name, case, qtype, edns, peer, tcp, seed)| Asked {
                id,
                name,
                case,
                qtype,
                edns,
                peer,
                tcp,
                seed,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever was asked before, a cached response is the fresh one with only the ID, the
        /// question's case and the ECS option differing, and the summary is the same.
        #[test]
        fn cached_responses_equal_fresh_ones(queries in prop::collection::vec(asked(), 1..48)) {
            let snapshot = bundled();
            let mut cache = AnswerCache::new();
            let now = Instant::now();
            let mut out = Vec::new();
            // Each query is followed by a twin of the same shape (another ID, case, seed and,
            // where the table has one, client subnet of the same length): a cache hit.
            let twins = queries.iter().flat_map(|q| {
                let twin = Asked {
                    id: q.id.wrapping_add(2),
                    case: !q.case,
                    edns: match q.edns { 3 => 4, 4 => 3, other => other },
                    seed: q.seed.wrapping_mul(31).wrapping_add(1),
                    ..q.clone()
                };
                [q.clone(), twin]
            });
            for q in twins {
                let q = &q;
                let name = with_case(NAMES[q.name], q.case);
                let packet = packet(q.id, &name, TYPES[q.qtype], EDNS[q.edns]);
                let lower = super::tests::packet(q.id, NAMES[q.name], TYPES[q.qtype], EDNS[q.edns]);
                let peer: SocketAddr = PEERS[q.peer].parse().expect("peer");
                let transport = if q.tcp { Transport::Tcp } else { Transport::Udp };
                let (summary, bytes) =
                    expected(&snapshot, &packet, &lower, peer, transport, q.seed, now);
                let cached = respond_cached(
                    &snapshot, &mut cache, &packet, peer, transport, q.seed, now, &mut out,
                );
                prop_assert_eq!(&cached, &summary, "{:?}", q);
                prop_assert_eq!(&out, &bytes, "{:?} ({})", q, name);
            }
        }
    }

    #[test]
    fn a_second_ask_is_served_from_the_template_with_its_own_id_case_and_subnet() {
        let snapshot = bundled();
        let mut cache = AnswerCache::new();
        let now = Instant::now();
        let peer: SocketAddr = PEERS[0].parse().expect("peer");
        let mut out = Vec::new();
        let first = packet(2, "api.example.test.", RecordType::A, EDNS[3]);
        respond_cached(
            &snapshot,
            &mut cache,
            &first,
            peer,
            Transport::Udp,
            7,
            now,
            &mut out,
        );
        assert_eq!(cache.len(), 1);
        // Same shape (/24, same EDNS), another client network, ID and case.
        let second = packet(4, "aPi.ExAmPlE.test.", RecordType::A, EDNS[4]);
        let lower = packet(4, "api.example.test.", RecordType::A, EDNS[4]);
        let (summary, bytes) = expected(&snapshot, &second, &lower, peer, Transport::Udp, 7, now);
        let cached = respond_cached(
            &snapshot,
            &mut cache,
            &second,
            peer,
            Transport::Udp,
            7,
            now,
            &mut out,
        );
        assert_eq!(cached, summary);
        assert_eq!(out, bytes);
        assert_eq!(&out[..2], &[0, 4]);
        assert_eq!(cache.len(), 1, "served from the same shape");
    }

    #[test]
    fn explanations_errors_and_unknown_names_are_not_cached() {
        let snapshot = bundled();
        let mut cache = AnswerCache::new();
        let now = Instant::now();
        let peer: SocketAddr = PEERS[0].parse().expect("peer");
        let mut out = Vec::new();
        for name in [
            "_why.api.example.test.",
            "nope.example.test.",
            "elsewhere.test.",
        ] {
            let query = packet(1, name, RecordType::TXT, EDNS[1]);
            respond_cached(
                &snapshot,
                &mut cache,
                &query,
                peer,
                Transport::Udp,
                1,
                now,
                &mut out,
            )
            .expect("answered");
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn a_new_snapshot_empties_the_cache_even_with_the_same_generation() {
        let first = bundled();
        let mut cache = AnswerCache::new();
        let now = Instant::now();
        let peer: SocketAddr = PEERS[0].parse().expect("peer");
        let mut out = Vec::new();
        let query = packet(1, "www.example.test.", RecordType::A, EDNS[1]);
        respond_cached(
            &first,
            &mut cache,
            &query,
            peer,
            Transport::Udp,
            1,
            now,
            &mut out,
        );
        assert_eq!(cache.len(), 1);
        let second = bundled();
        assert_eq!(first.generation, second.generation);
        let other = packet(1, "www.example.test.", RecordType::AAAA, EDNS[1]);
        respond_cached(
            &second,
            &mut cache,
            &other,
            peer,
            Transport::Udp,
            1,
            now,
            &mut out,
        );
        assert_eq!(cache.len(), 1, "the first snapshot's template is gone");
    }
}
