//! How a drill looks at the world: DNS answers for client prefixes (one UDP query per prefix
//! with an EDNS Client Subnet option, as a resolver serving that prefix would send) and relay
//! request counters scraped from Prometheus text.
//!
//! Turning bytes into observations ([`classify`], [`relay_counters`]) is pure and tested here;
//! the socket and the clock stay in [`DnsSampler`]. Answers are mapped to regions by their
//! endpoints (addresses, CNAME targets) as configured, never by guessing.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, RecordType,
        rdata::opt::{ClientSubnet, EdnsOption},
    },
};
use ipnet::IpNet;
use tokio::net::UdpSocket;

use super::measure::{Observation, RelayCounters};
use crate::config::model::{DnsConfig, Endpoints};

/// Which region an answer record belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMap {
    by_address: HashMap<IpAddr, Arc<str>>,
    /// Lower-case, fully qualified (`lb.us-west.example.net.`).
    by_name: HashMap<String, Arc<str>>,
}

impl EndpointMap {
    /// Every region's endpoints from a DNS node's configuration.
    pub fn from_config(config: &DnsConfig) -> EndpointMap {
        let mut map = EndpointMap::default();
        for region in &config.regions {
            match &region.endpoints {
                Endpoints::Addresses { v4, v6 } => {
                    for address in v4 {
                        map.insert_address(&region.id, IpAddr::V4(*address));
                    }
                    for address in v6 {
                        map.insert_address(&region.id, IpAddr::V6(*address));
                    }
                }
                Endpoints::Cname(name) => map.insert_name(&region.id, &name.to_ascii()),
            }
        }
        map
    }

    pub fn insert_address(&mut self, region: &str, address: IpAddr) {
        self.by_address.insert(address, Arc::from(region));
    }

    pub fn insert_name(&mut self, region: &str, name: &str) {
        self.by_name.insert(fqdn_lower(name), Arc::from(region));
    }

    /// Whether any endpoint is known for `region`.
    pub fn knows(&self, region: &str) -> bool {
        self.by_address
            .values()
            .chain(self.by_name.values())
            .any(|r| &**r == region)
    }
}

fn fqdn_lower(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// What a response tells about where its client is sent.
pub fn classify(response: &Message, endpoints: &EndpointMap) -> Observation {
    let rcode = response.metadata.response_code;
    if rcode != ResponseCode::NoError {
        return Observation::Empty {
            rcode: rcode.to_string(),
        };
    }
    let mut regions = BTreeSet::new();
    let mut unmapped = Vec::new();
    let mut ttl: Option<u32> = None;
    for record in &response.answers {
        let region = match &record.data {
            RData::A(a) => {
                let address = IpAddr::V4(a.0);
                endpoints
                    .by_address
                    .get(&address)
                    .ok_or(address.to_string())
            }
            RData::AAAA(a) => {
                let address = IpAddr::V6(a.0);
                endpoints
                    .by_address
                    .get(&address)
                    .ok_or(address.to_string())
            }
            RData::CNAME(target) => {
                let target = fqdn_lower(&target.0.to_ascii());
                endpoints.by_name.get(&target).ok_or(target)
            }
            _ => continue,
        };
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        match region {
            Ok(region) => {
                regions.insert(Arc::clone(region));
            }
            Err(text) => unmapped.push(text),
        }
    }
    if regions.is_empty() && unmapped.is_empty() {
        return Observation::Empty {
            rcode: "NODATA".to_owned(),
        };
    }
    Observation::Answer {
        regions,
        ttl,
        unmapped,
    }
}

/// Sums of the relay's in-flight gauge and responses counter from a Prometheus text scrape.
/// Both must be present: a relay that exports neither is not a relay we can judge.
pub fn relay_counters(text: &str) -> Result<RelayCounters, String> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("unparseable metrics: {e}"))?;
    let mut in_flight = None;
    let mut responses = None;
    for sample in &scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let slot = match sample.metric.as_str() {
            "meridian_relay_backend_in_flight" => &mut in_flight,
            // The parser keeps or strips the `_total` suffix depending on the TYPE line.
            "meridian_relay_responses_total" | "meridian_relay_responses" => &mut responses,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    // A relay that has served nothing yet exports the families without samples.
    let declared = |name: &str| scrape.docs.contains_key(name);
    let in_flight = in_flight
        .or_else(|| declared("meridian_relay_backend_in_flight").then_some(0.0))
        .ok_or("no meridian_relay_backend_in_flight metric")?;
    let responses = responses
        .or_else(|| declared("meridian_relay_responses").then_some(0.0))
        .ok_or("no meridian_relay_responses_total metric")?;
    Ok(RelayCounters {
        in_flight,
        responses,
    })
}

/// Queries the DNS node for every client prefix, one round at a time.
pub struct DnsSampler {
    socket: UdpSocket,
    name: Name,
    qtype: RecordType,
    prefixes: Vec<IpNet>,
    timeout: Duration,
    endpoints: EndpointMap,
    next_id: u16,
}

impl DnsSampler {
    pub async fn connect(
        server: SocketAddr,
        name: Name,
        qtype: RecordType,
        prefixes: Vec<IpNet>,
        timeout: Duration,
        endpoints: EndpointMap,
    ) -> io::Result<DnsSampler> {
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        // Connected: the kernel drops datagrams from anyone but the server.
        socket.connect(server).await?;
        Ok(DnsSampler {
            socket,
            name,
            qtype,
            prefixes,
            timeout,
            endpoints,
            next_id: 1,
        })
    }

    /// One round: a query per prefix, sent together, answers matched by id; what did not come
    /// back within the timeout is [`Observation::Lost`].
    pub async fn sample(&mut self) -> Vec<Observation> {
        let mut answers: Vec<Option<Observation>> = vec![None; self.prefixes.len()];
        let mut ids: HashMap<u16, usize> = HashMap::new();
        for (index, prefix) in self.prefixes.iter().enumerate() {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            ids.insert(id, index);
            let sent = match query(id, &self.name, self.qtype, prefix) {
                Ok(bytes) => self.socket.send(&bytes).await.map(drop),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            if let Err(error) = sent {
                answers[index] = Some(Observation::Lost {
                    reason: error.to_string(),
                });
                ids.remove(&id);
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buffer = vec![0u8; 65_535];
        while !ids.is_empty() {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await;
            let length = match received {
                Ok(Ok(length)) => length,
                // ICMP port unreachable and the like: keep waiting for the others.
                Ok(Err(_)) => continue,
                Err(_) => break,
            };
            let Ok(response) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            // A late answer to an earlier round has an id no longer in the table.
            if let Some(index) = ids.remove(&response.metadata.id) {
                answers[index] = Some(if response.metadata.truncation {
                    Observation::Lost {
                        reason: "truncated".to_owned(),
                    }
                } else {
                    classify(&response, &self.endpoints)
                });
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or(Observation::Lost {
                    reason: "timeout".to_owned(),
                })
            })
            .collect()
    }
}

/// A query for `name` as a resolver serving `prefix` would send it (RFC 7871).
fn query(
    id: u16,
    name: &Name,
    qtype: RecordType,
    prefix: &IpNet,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    let network = prefix.trunc();
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            network.addr(),
            network.prefix_len(),
            0,
        )));
    message.set_edns(edns);
    message.to_vec()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::{Record, rdata};

    use super::*;

    fn endpoints() -> EndpointMap {
        let mut map = EndpointMap::default();
        map.insert_address("eu-west", "198.51.100.10".parse().unwrap());
        map.insert_address("eu-west", "2001:db8:20::10".parse().unwrap());
        map.insert_address("us-east", "192.0.2.10".parse().unwrap());
        map.insert_name("us-west", "LB.us-west.example.net");
        map
    }

    fn response(rcode: ResponseCode, records: Vec<(RData, u32)>) -> Message {
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.metadata.response_code = rcode;
        let name = Name::from_ascii("api.example.test.").unwrap();
        for (data, ttl) in records {
            message
                .answers
                .push(Record::from_rdata(name.clone(), ttl, data));
        }
        message
    }

    fn a(address: &str) -> RData {
        RData::A(rdata::A(address.parse::<Ipv4Addr>().unwrap()))
    }

    fn regions(list: &[&str]) -> BTreeSet<Arc<str>> {
        list.iter().map(|r| Arc::from(*r)).collect()
    }

    #[test]
    fn classifies_responses() {
        let cname = RData::CNAME(rdata::CNAME(
            Name::from_ascii("lb.us-west.example.net.").unwrap(),
        ));
        let aaaa = RData::AAAA(rdata::AAAA("2001:db8:20::10".parse::<Ipv6Addr>().unwrap()));
        let cases: Vec<(Message, Observation)> = vec![
            (
                response(ResponseCode::NoError, vec![(a("198.51.100.10"), 30)]),
                Observation::Answer {
                    regions: regions(&["eu-west"]),
                    ttl: Some(30),
                    unmapped: vec![],
                },
            ),
            (
                response(
                    ResponseCode::NoError,
                    vec![
                        (a("198.51.100.10"), 30),
                        (a("192.0.2.10"), 5),
                        (a("10.0.0.1"), 9),
                    ],
                ),
                Observation::Answer {
                    regions: regions(&["eu-west", "us-east"]),
                    ttl: Some(5),
                    unmapped: vec!["10.0.0.1".into()],
                },
            ),
            (
                response(ResponseCode::NoError, vec![(cname, 20), (aaaa, 30)]),
                Observation::Answer {
                    regions: regions(&["eu-west", "us-west"]),
                    ttl: Some(20),
                    unmapped: vec![],
                },
            ),
            (
                response(ResponseCode::NoError, vec![]),
                Observation::Empty {
                    rcode: "NODATA".into(),
                },
            ),
            (
                response(ResponseCode::ServFail, vec![(a("198.51.100.10"), 30)]),
                Observation::Empty {
                    rcode: ResponseCode::ServFail.to_string(),
                },
            ),
        ];
        for (message, want) in cases {
            assert_eq!(classify(&message, &endpoints()), want, "{message:?}");
        }
        assert!(endpoints().knows("us-west"));
        assert!(!endpoints().knows("ap-south"));
    }

    #[test]
    fn endpoints_from_the_bundled_config() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml");
        let config = crate::config::load_dns_config(&path).unwrap();
        let map = EndpointMap::from_config(&config);
        for region in ["us-east", "eu-west", "ap-south"] {
            assert!(map.knows(region), "{region}");
        }
        let message = response(ResponseCode::NoError, vec![(a("203.0.113.10"), 30)]);
        assert_eq!(
            classify(&message, &map).in_targets(&[Arc::from("ap-south")]),
            Some(true)
        );
    }

    #[test]
    fn relay_counters_from_a_scrape() {
        // As prometheus-client encodes the relay's registry (OpenMetrics text).
        let text = "\
# HELP meridian_relay_responses Responses started from a backend, by model, backend and status.
# TYPE meridian_relay_responses counter
meridian_relay_responses_total{model=\"m\",backend=\"b1\",status=\"200\"} 7
meridian_relay_responses_total{model=\"m\",backend=\"b2\",status=\"429\"} 2
# HELP meridian_relay_backend_in_flight Requests in flight per backend.
# TYPE meridian_relay_backend_in_flight gauge
meridian_relay_backend_in_flight{backend=\"b1\"} 3
meridian_relay_backend_in_flight{backend=\"b2\"} 0
# EOF
";
        assert_eq!(
            relay_counters(text),
            Ok(RelayCounters {
                in_flight: 3.0,
                responses: 9.0
            })
        );
        let idle = "\
# HELP meridian_relay_responses Responses.
# TYPE meridian_relay_responses counter
# HELP meridian_relay_backend_in_flight In flight.
# TYPE meridian_relay_backend_in_flight gauge
# EOF
";
        assert_eq!(
            relay_counters(idle),
            Ok(RelayCounters {
                in_flight: 0.0,
                responses: 0.0
            })
        );
        assert!(relay_counters("other_metric 1\n").is_err());
    }

    #[test]
    fn queries_carry_the_prefix_as_ecs() {
        let name = Name::from_ascii("api.example.test.").unwrap();
        let bytes = query(9, &name, RecordType::A, &"81.2.69.7/24".parse().unwrap()).unwrap();
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, 9);
        let subnet = match message
            .edns
            .as_ref()
            .and_then(|e| e.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet))
        {
            Some(EdnsOption::Subnet(subnet)) => *subnet,
            other => panic!("{other:?}"),
        };
        assert_eq!(subnet, "81.2.69.0/24".parse::<ClientSubnet>().unwrap());
    }
}
