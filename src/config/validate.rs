//! Raw TOML structs → validated [`DnsConfig`], reporting every problem at once.
//!
//! Validation never stops at the first error: each check records a [`FieldError`] and carries
//! on with a harmless placeholder, so an operator fixes a file in one round rather than one
//! error per run. The model is returned only when no error was recorded. This module does no
//! IO: paths are resolved against the config file's folder but never opened (`meridian check`
//! opens zone files and the GeoIP database).

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use hickory_proto::rr::Name;
use ipnet::IpNet;

use super::{
    error::{AddressKind, FieldError, Problem},
    model::{
        AdminApi, AllUnhealthy, Anycast, CidrOverride, Coordinates, CostPreference, DnsConfig,
        Endpoints, GeoIpSource, GeoMap, GslbName, HealthChannel, LatencyFallback, Limits,
        ProbeSettings, RateLimit, Region, RegionIdx, RelayProbe, SpillWatermarks, SteeringMode,
        SteeringPolicy, TsigAlgorithm, TsigKey, ZoneSource,
    },
    raw::{
        RawAdmin, RawAllUnhealthy, RawAnycast, RawCost, RawDnsConfig, RawGeoMap, RawGslb,
        RawHealth, RawLatencyFallback, RawMode, RawOverride, RawRateLimit, RawRegion,
        RawRelayProbe, RawServer, RawTsigAlgorithm, RawTsigKey, RawZone,
    },
};

/// A parsed document together with the file it came from, which relative paths are resolved
/// against.
/// Shared by the DNS and the relay configuration (`T` is the raw document type).
#[derive(Clone, Copy, Debug)]
pub struct RawDocument<'a, T> {
    pub config: &'a T,
    pub source: &'a Path,
}

impl TryFrom<RawDocument<'_, RawDnsConfig>> for DnsConfig {
    type Error = Vec<FieldError>;

    fn try_from(doc: RawDocument<'_, RawDnsConfig>) -> Result<Self, Self::Error> {
        let raw = doc.config;
        let mut v = Validator {
            findings: Findings::new(doc.source),
        };

        let (listen, limits, metrics_listen) = v.server(&raw.server);
        let operator_state_file = raw
            .operator_state
            .as_deref()
            .map(|p| v.path("operator_state", p));
        let geoip = raw.geoip.as_ref().map(|g| GeoIpSource {
            path: v.path("geoip.database", &g.database),
        });
        let keys = v.tsig_keys(&raw.tsig_keys);
        let (zones, origins) = v.zones(&raw.zones, &keys);
        let health = raw.health.as_ref().map(|h| v.health(h, &listen));
        let regions = v.regions(&raw.regions, health.is_some());
        let ids = RegionIds::new(&raw.regions);
        let gslb = v.gslb_names(&raw.gslb, &origins, &ids, &regions);
        let overrides = v.overrides(&raw.overrides, &ids);
        let admin = raw
            .admin
            .as_ref()
            .map(|a| v.admin(a, &listen, metrics_listen));
        let anycast = raw.anycast.as_ref().map(|a| v.anycast(a));
        let rrl = raw.rrl.as_ref().map(|r| v.rrl(r));

        if !v.findings.errors.is_empty() {
            return Err(v.findings.errors);
        }
        Ok(DnsConfig {
            source: doc.source.to_path_buf(),
            listen,
            limits,
            geoip,
            zones,
            regions,
            gslb,
            overrides,
            operator_state_file,
            metrics_listen,
            health,
            admin,
            anycast,
            rrl,
        })
    }
}

/// Region ids → indices, first definition wins (a duplicate is reported where it is defined,
/// not again at every reference).
struct RegionIds<'a> {
    by_id: HashMap<&'a str, RegionIdx>,
    /// Every index, in config order: the default candidate list.
    all: Vec<RegionIdx>,
}

impl<'a> RegionIds<'a> {
    fn new(regions: &'a [RawRegion]) -> Self {
        let mut by_id = HashMap::new();
        let mut all = Vec::new();
        // Beyond u16 there is no index to give; `regions()` reports that.
        for (i, region) in regions.iter().enumerate() {
            let Ok(i) = u16::try_from(i) else { break };
            by_id.entry(region.id.as_str()).or_insert(RegionIdx(i));
            all.push(RegionIdx(i));
        }
        Self { by_id, all }
    }
}

/// Every problem found in one config file, each with its field path, and the folder relative
/// paths are resolved against. Shared by the DNS and the relay validators, which add their own
/// checks on top (through `Deref`).
pub(crate) struct Findings {
    pub(crate) errors: Vec<FieldError>,
    base: PathBuf,
}

impl Findings {
    pub(crate) fn new(source: &Path) -> Findings {
        Findings {
            errors: Vec::new(),
            base: source.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    pub(crate) fn report(&mut self, field: impl Into<String>, problem: Problem) {
        self.errors.push(FieldError {
            field: field.into(),
            problem,
        });
    }

    pub(crate) fn path(&mut self, field: &str, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.report(field, Problem::EmptyPath);
        }
        // `join` keeps absolute paths as they are.
        self.base.join(path)
    }

    /// `value` as a `T` if it lies in `min..=max`.
    pub(crate) fn int_in<T: TryFrom<i64>>(
        &mut self,
        field: &str,
        value: i64,
        min: i64,
        max: i64,
    ) -> Option<T> {
        if !(min..=max).contains(&value) {
            self.report(field, Problem::IntegerOutOfRange { value, min, max });
            return None;
        }
        T::try_from(value).ok()
    }

    /// A float in `min..=max`, or above `min` when `min_exclusive`; `max = None` only demands
    /// a finite number. NaN, which TOML can spell, is never in range. Returns `value` either
    /// way (the caller's placeholder is the value itself: it is never used once reported).
    pub(crate) fn number_in(
        &mut self,
        field: &str,
        value: f64,
        (min, min_exclusive): (f64, bool),
        max: Option<f64>,
    ) -> f64 {
        let above_min = if min_exclusive {
            value > min
        } else {
            value >= min
        };
        let below_max = value <= max.unwrap_or(f64::MAX);
        if !(above_min && below_max) {
            self.report(
                field,
                Problem::NumberOutOfRange {
                    value,
                    min,
                    min_exclusive,
                    max,
                },
            );
        }
        value
    }
}

struct Validator {
    findings: Findings,
}

impl std::ops::Deref for Validator {
    type Target = Findings;
    fn deref(&self) -> &Findings {
        &self.findings
    }
}

impl std::ops::DerefMut for Validator {
    fn deref_mut(&mut self) -> &mut Findings {
        &mut self.findings
    }
}

impl Validator {
    fn coordinate(&mut self, field: &str, value: f64, limit: f64) -> f64 {
        // `contains` is false for NaN, which TOML can spell.
        if !(-limit..=limit).contains(&value) {
            self.report(
                field,
                Problem::CoordinateOutOfRange {
                    value,
                    min: -limit,
                    max: limit,
                },
            );
        }
        value
    }

    fn name(&mut self, field: &str, text: &str) -> Option<Name> {
        let parsed = if text.is_empty() {
            Err("the name is empty".to_owned())
        } else {
            // hickory's messages can end in a dangling ": ".
            Name::from_ascii(text)
                .map_err(|e| e.to_string().trim_end_matches([':', ' ']).to_owned())
        };
        match parsed {
            Ok(name) => {
                let mut name = name.to_lowercase();
                name.set_fqdn(true);
                Some(name)
            }
            Err(reason) => {
                self.report(
                    field,
                    Problem::InvalidName {
                        name: text.to_owned(),
                        reason,
                    },
                );
                None
            }
        }
    }

    fn address<T: FromStr>(&mut self, field: &str, text: &str, kind: AddressKind) -> Option<T> {
        let parsed = text.parse().ok();
        if parsed.is_none() {
            self.report(
                field,
                Problem::InvalidAddress {
                    value: text.to_owned(),
                    expected: kind,
                },
            );
        }
        parsed
    }

    fn server(&mut self, raw: &RawServer) -> (Vec<SocketAddr>, Limits, Option<SocketAddr>) {
        let defaults = Limits::default();
        let mut listen: Vec<SocketAddr> = Vec::new();
        let mut first_at = HashMap::new();
        for (i, text) in raw.listen.iter().enumerate() {
            let field = at(&field("server", "listen"), i);
            let Some(addr) = self.address(&field, text, AddressKind::SocketAddr) else {
                continue;
            };
            match first_at.get(&addr) {
                Some(first) => self.report(
                    field,
                    Problem::Duplicate {
                        value: text.clone(),
                        first: String::clone(first),
                    },
                ),
                None => {
                    first_at.insert(addr, field);
                    listen.push(addr);
                }
            }
        }
        if raw.listen.is_empty() {
            self.report("server.listen", Problem::EmptyList);
        }

        let limits = Limits {
            max_udp_payload: self
                .int_in("server.max_udp_payload", raw.max_udp_payload, 512, 4096)
                .unwrap_or(defaults.max_udp_payload),
            tcp_idle_timeout_ms: self
                .int_in(
                    "server.tcp_idle_timeout_ms",
                    raw.tcp_idle_timeout_ms,
                    1,
                    i64::MAX,
                )
                .unwrap_or(defaults.tcp_idle_timeout_ms),
            max_tcp_connections: self
                .int_in(
                    "server.max_tcp_connections",
                    raw.max_tcp_connections,
                    1,
                    i64::from(u32::MAX),
                )
                .unwrap_or(defaults.max_tcp_connections),
        };

        let metrics_listen = raw.metrics_listen.as_deref().and_then(|text| {
            let field = "server.metrics_listen";
            let address = self.address(field, text, AddressKind::SocketAddr)?;
            // The DNS listener binds TCP on the same address, so the metrics server could
            // never bind; better said now than at startup.
            if listen.contains(&address) {
                self.report(field, Problem::MetricsOnDnsListener { address });
            }
            Some(address)
        });

        (listen, limits, metrics_listen)
    }

    /// The zones, and the origins that parsed (the only ones GSLB names are placed in).
    fn zones(&mut self, raw: &[RawZone], keys: &[TsigKey]) -> (Vec<ZoneSource>, Vec<Name>) {
        if raw.is_empty() {
            self.report("zone", Problem::NoZones);
        }
        let mut first_at: HashMap<Name, String> = HashMap::new();
        let mut zones = Vec::with_capacity(raw.len());
        let mut origins = Vec::with_capacity(raw.len());
        for (i, zone) in raw.iter().enumerate() {
            let base = at("zone", i);
            let origin_field = field(&base, "origin");
            let origin = match self.name(&origin_field, &zone.origin) {
                Some(origin) => {
                    if let Some(first) = first_at.get(&origin) {
                        self.report(
                            &origin_field,
                            Problem::Duplicate {
                                value: origin.to_string(),
                                first: first.clone(),
                            },
                        );
                    } else {
                        first_at.insert(origin.clone(), origin_field);
                        origins.push(origin.clone());
                    }
                    origin
                }
                None => Name::root(),
            };
            let file = self.path(&field(&base, "file"), &zone.file);
            let transfer_to =
                self.transfer_networks(&field(&base, "transfer_to"), &zone.transfer_to);
            let notify = self.addresses::<SocketAddr>(
                &field(&base, "notify"),
                &zone.notify,
                AddressKind::SocketAddr,
            );
            let transfer_key = zone
                .transfer_key
                .as_deref()
                .and_then(|text| self.key_reference(&field(&base, "transfer_key"), text, keys));
            zones.push(ZoneSource {
                origin,
                file,
                transfer_to,
                notify,
                transfer_key,
            });
        }
        (zones, origins)
    }

    /// `[[tsig_key]]`: names unique (compared as domain names), secret paths resolved.
    fn tsig_keys(&mut self, raw: &[RawTsigKey]) -> Vec<TsigKey> {
        let mut first_at: HashMap<Name, String> = HashMap::new();
        let mut keys = Vec::with_capacity(raw.len());
        for (i, key) in raw.iter().enumerate() {
            let base = at("tsig_key", i);
            let name_field = field(&base, "name");
            let secret_file = self.path(&field(&base, "secret_file"), &key.secret_file);
            let Some(name) = self.name(&name_field, &key.name) else {
                continue;
            };
            if let Some(first) = first_at.get(&name) {
                self.report(
                    name_field,
                    Problem::Duplicate {
                        value: name.to_string(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            first_at.insert(name.clone(), name_field);
            let algorithm = match key.algorithm {
                RawTsigAlgorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
                RawTsigAlgorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
            };
            keys.push(TsigKey {
                name,
                algorithm,
                secret_file,
            });
        }
        keys
    }

    /// A zone's `transfer_key`: the name of a `[[tsig_key]]`.
    fn key_reference(&mut self, field: &str, text: &str, keys: &[TsigKey]) -> Option<TsigKey> {
        let name = self.name(field, text)?;
        let key = keys.iter().find(|key| key.name == name).cloned();
        if key.is_none() {
            self.report(
                field,
                Problem::UnknownVariant {
                    value: text.to_owned(),
                    expected: keys.iter().map(|key| key.name.to_string()).collect(),
                },
            );
        }
        key
    }

    /// `[[zone]] transfer_to`: networks in CIDR notation (a bare address means that one
    /// host), host bits zero, each once.
    fn transfer_networks(&mut self, list_field: &str, texts: &[String]) -> Vec<IpNet> {
        let mut first_at: HashMap<IpNet, String> = HashMap::new();
        let mut networks = Vec::with_capacity(texts.len());
        for (j, text) in texts.iter().enumerate() {
            let item = at(list_field, j);
            let network = match text.parse::<std::net::IpAddr>() {
                Ok(host) => IpNet::from(host),
                Err(_) => match self.address::<IpNet>(&item, text, AddressKind::Network) {
                    Some(network) => network,
                    None => continue,
                },
            };
            let truncated = network.trunc();
            if truncated != network {
                self.report(&item, Problem::HostBitsSet { network, truncated });
            }
            if let Some(first) = first_at.get(&truncated) {
                self.report(
                    item,
                    Problem::Duplicate {
                        value: truncated.to_string(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            first_at.insert(truncated, item);
            networks.push(truncated);
        }
        networks
    }

    fn millis(&mut self, field: &str, value: i64, min: i64, max: i64) -> std::time::Duration {
        std::time::Duration::from_millis(self.int_in(field, value, min, max).unwrap_or(1))
    }

    /// `[health]`. Thresholds count reports; durations are milliseconds.
    fn health(&mut self, raw: &RawHealth, dns_listen: &[SocketAddr]) -> HealthChannel {
        let listen_field = "health.listen";
        let listen = self
            .address(listen_field, &raw.listen, AddressKind::SocketAddr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        // QUIC binds UDP, as the DNS listeners do.
        if let Some(i) = dns_listen.iter().position(|&d| clash(d, listen)) {
            self.report(
                listen_field,
                Problem::ListenerClash {
                    address: listen,
                    other: at("server.listen", i),
                },
            );
        }
        let ca = self.path("health.ca", &raw.ca);
        let cert = self.path("health.cert", &raw.cert);
        let key = self.path("health.key", &raw.key);
        let down_after = self
            .int_in("health.down_after", raw.down_after, 1, 100)
            .unwrap_or(1);
        let up_after = self
            .int_in("health.up_after", raw.up_after, 1, 100)
            .unwrap_or(1);
        if raw.down_after > raw.up_after && (1..=100).contains(&raw.up_after) {
            self.report(
                "health.down_after",
                Problem::ExceedsField {
                    value: raw.down_after,
                    other: "health.up_after".to_owned(),
                    other_value: raw.up_after,
                },
            );
        }
        let max_report_validity = self.millis(
            "health.max_report_validity_ms",
            raw.max_report_validity_ms,
            100,
            3_600_000,
        );
        let refresh_interval = self.millis(
            "health.refresh_interval_ms",
            raw.refresh_interval_ms,
            10,
            60_000,
        );
        let max_connections = self
            .int_in("health.max_connections", raw.max_connections, 1, 65_536)
            .unwrap_or(1);

        let trip = self.number_in("health.spill.trip", raw.spill.trip, (0.0, false), Some(1.0));
        let recover = self.number_in(
            "health.spill.recover",
            raw.spill.recover,
            (0.0, false),
            Some(1.0),
        );
        if trip >= recover && (0.0..=1.0).contains(&trip) && (0.0..=1.0).contains(&recover) {
            self.report(
                "health.spill.trip",
                Problem::NotBelowField {
                    value: trip,
                    other: "health.spill.recover".to_owned(),
                    other_value: recover,
                },
            );
        }
        let hold_reports = self
            .int_in("health.spill.hold_reports", raw.spill.hold_reports, 1, 100)
            .unwrap_or(1);
        let probe = ProbeSettings {
            interval: self.millis(
                "health.probe.interval_ms",
                raw.probe.interval_ms,
                100,
                3_600_000,
            ),
            timeout: self.millis("health.probe.timeout_ms", raw.probe.timeout_ms, 100, 60_000),
            down_after: self
                .int_in("health.probe.down_after", raw.probe.down_after, 1, 100)
                .unwrap_or(1),
        };
        HealthChannel {
            listen,
            ca,
            cert,
            key,
            down_after,
            up_after,
            max_report_validity,
            spill: SpillWatermarks {
                trip,
                recover,
                hold_reports,
            },
            refresh_interval,
            probe,
            max_connections,
        }
    }

    /// `[admin]`: a TCP listener, so it must not share a port with the DNS (TCP) listeners or
    /// the metrics listener.
    fn admin(
        &mut self,
        raw: &RawAdmin,
        dns_listen: &[SocketAddr],
        metrics_listen: Option<SocketAddr>,
    ) -> AdminApi {
        let field = "admin.listen";
        let listen = self
            .address(field, &raw.listen, AddressKind::SocketAddr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let others = dns_listen
            .iter()
            .enumerate()
            .map(|(i, &a)| (a, at("server.listen", i)))
            .chain(metrics_listen.map(|m| (m, "server.metrics_listen".to_owned())));
        for (address, other) in others {
            if clash(address, listen) {
                self.report(
                    field,
                    Problem::ListenerClash {
                        address: listen,
                        other,
                    },
                );
                break;
            }
        }
        AdminApi {
            listen,
            token_file: self.path("admin.token_file", &raw.token_file),
        }
    }

    fn anycast(&mut self, raw: &RawAnycast) -> Anycast {
        if raw.protocol.trim().is_empty() {
            self.report("anycast.protocol", Problem::EmptyList);
        }
        Anycast {
            bird_socket: self.path("anycast.bird_socket", &raw.bird_socket),
            protocol: raw.protocol.clone(),
            max_health_silence: raw
                .max_health_silence_ms
                .map(|ms| self.millis("anycast.max_health_silence_ms", ms, 1_000, 86_400_000)),
            check_interval: self.millis(
                "anycast.check_interval_ms",
                raw.check_interval_ms,
                100,
                60_000,
            ),
        }
    }

    fn rrl(&mut self, raw: &RawRateLimit) -> RateLimit {
        RateLimit {
            responses_per_second: self
                .int_in(
                    "rrl.responses_per_second",
                    raw.responses_per_second,
                    1,
                    1_000_000,
                )
                .unwrap_or(1),
            burst: self
                .int_in("rrl.burst", raw.burst, 0, 1_000_000)
                .unwrap_or(0),
            // BIND's range: beyond 10 a spoofed victim gets almost nothing anyway.
            slip: self.int_in("rrl.slip", raw.slip, 0, 10).unwrap_or(0),
            ipv4_prefix: self
                .int_in("rrl.ipv4_prefix", raw.ipv4_prefix, 1, 32)
                .unwrap_or(24),
            ipv6_prefix: self
                .int_in("rrl.ipv6_prefix", raw.ipv6_prefix, 1, 128)
                .unwrap_or(56),
            max_buckets: self
                .int_in("rrl.max_buckets", raw.max_buckets, 1, 100_000_000)
                .unwrap_or(1),
        }
    }

    /// A region's model pools: non-empty, each listed once.
    fn models(&mut self, list_field: &str, raw: &[String]) -> Vec<Arc<str>> {
        let mut first_at: HashMap<&str, String> = HashMap::new();
        let mut models = Vec::with_capacity(raw.len());
        for (j, model) in raw.iter().enumerate() {
            let item = at(list_field, j);
            if model.trim().is_empty() {
                self.report(item, Problem::EmptyModelId);
                continue;
            }
            if let Some(first) = first_at.get(model.as_str()) {
                self.report(
                    item,
                    Problem::Duplicate {
                        value: model.clone(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            first_at.insert(model, item);
            models.push(Arc::from(model.as_str()));
        }
        models
    }

    fn probe(&mut self, base: &str, raw: &RawRelayProbe, has_health: bool) -> RelayProbe {
        let address = self
            .address(
                &field(base, "address"),
                &raw.address,
                AddressKind::SocketAddr,
            )
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        if rustls_pki_types::ServerName::try_from(raw.server_name.as_str()).is_err() {
            self.report(
                field(base, "server_name"),
                Problem::InvalidServerName {
                    name: raw.server_name.clone(),
                },
            );
        }
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.path(&field(base, "ca"), ca));
        if ca.is_none() && !has_health {
            self.report(base, Problem::ProbeCaRequired);
        }
        RelayProbe {
            address,
            server_name: raw.server_name.clone(),
            ca,
        }
    }

    fn regions(&mut self, raw: &[RawRegion], has_health: bool) -> Vec<Region> {
        let max = usize::from(u16::MAX) + 1;
        if raw.len() > max {
            self.report(
                "region",
                Problem::TooManyRegions {
                    count: raw.len(),
                    max,
                },
            );
        }
        let mut first_at: HashMap<&str, String> = HashMap::new();
        let mut regions = Vec::with_capacity(raw.len());
        for (i, region) in raw.iter().enumerate() {
            let base = at("region", i);
            let id_field = field(&base, "id");
            if !is_region_id(&region.id) {
                self.report(
                    &id_field,
                    Problem::InvalidRegionId {
                        id: region.id.clone(),
                    },
                );
            }
            if let Some(first) = first_at.get(region.id.as_str()) {
                self.report(
                    &id_field,
                    Problem::Duplicate {
                        value: region.id.clone(),
                        first: first.clone(),
                    },
                );
            } else {
                first_at.insert(&region.id, id_field);
            }
            let coordinates = Coordinates {
                latitude: self.coordinate(&field(&base, "latitude"), region.latitude, 90.0),
                longitude: self.coordinate(&field(&base, "longitude"), region.longitude, 180.0),
            };
            let endpoints = self.endpoints(&base, region);
            let capacity = self
                .int_in(
                    &field(&base, "capacity"),
                    region.capacity,
                    1,
                    i64::from(u32::MAX),
                )
                .unwrap_or(1);
            let cost = self.number_in(&field(&base, "cost"), region.cost, (0.0, false), None);
            let models = self.models(&field(&base, "models"), &region.models);
            let probe = region
                .probe
                .as_ref()
                .map(|p| self.probe(&field(&base, "probe"), p, has_health));
            regions.push(Region {
                id: Arc::from(region.id.as_str()),
                coordinates,
                endpoints,
                capacity,
                cost,
                models,
                probe,
            });
        }
        regions
    }

    fn endpoints(&mut self, base: &str, region: &RawRegion) -> Endpoints {
        let v4: Vec<Ipv4Addr> =
            self.addresses(&field(base, "ipv4"), &region.ipv4, AddressKind::Ipv4);
        let v6: Vec<Ipv6Addr> =
            self.addresses(&field(base, "ipv6"), &region.ipv6, AddressKind::Ipv6);
        let has_addresses = !region.ipv4.is_empty() || !region.ipv6.is_empty();
        match &region.cname {
            Some(target) => {
                let cname_field = field(base, "cname");
                let target = self.name(&cname_field, target).unwrap_or_else(Name::root);
                if has_addresses {
                    self.report(cname_field, Problem::CnameWithAddresses);
                }
                Endpoints::Cname(target)
            }
            None => {
                if !has_addresses {
                    self.report(base, Problem::NoEndpoints);
                }
                Endpoints::Addresses { v4, v6 }
            }
        }
    }

    fn addresses<T: FromStr + Eq + std::hash::Hash + Copy>(
        &mut self,
        list_field: &str,
        texts: &[String],
        kind: AddressKind,
    ) -> Vec<T> {
        let mut first_at: HashMap<T, String> = HashMap::new();
        let mut addresses = Vec::with_capacity(texts.len());
        for (j, text) in texts.iter().enumerate() {
            let item = at(list_field, j);
            let Some(address) = self.address::<T>(&item, text, kind) else {
                continue;
            };
            if let Some(first) = first_at.get(&address) {
                self.report(
                    item,
                    Problem::Duplicate {
                        value: text.clone(),
                        first: first.clone(),
                    },
                );
            } else {
                first_at.insert(address, item);
                addresses.push(address);
            }
        }
        addresses
    }

    /// Resolves region ids in a list: each must exist, appear once, and (when `allowed` is
    /// given) be one of them. Returns the ids that resolved.
    fn region_list(
        &mut self,
        list_field: &str,
        ids: &[String],
        regions: &RegionIds<'_>,
        allowed: Option<&HashSet<RegionIdx>>,
    ) -> Vec<RegionIdx> {
        if ids.is_empty() {
            self.report(list_field, Problem::EmptyList);
        }
        let mut first_at: HashMap<RegionIdx, String> = HashMap::new();
        let mut resolved = Vec::with_capacity(ids.len());
        for (j, id) in ids.iter().enumerate() {
            let item = at(list_field, j);
            let Some(&idx) = regions.by_id.get(id.as_str()) else {
                self.report(item, Problem::UnknownRegion { id: id.clone() });
                continue;
            };
            if let Some(first) = first_at.get(&idx) {
                self.report(
                    item,
                    Problem::Duplicate {
                        value: id.clone(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            if allowed.is_some_and(|allowed| !allowed.contains(&idx)) {
                self.report(&item, Problem::NotACandidate { id: id.clone() });
            }
            first_at.insert(idx, item);
            resolved.push(idx);
        }
        resolved
    }

    fn gslb_names(
        &mut self,
        raw: &[RawGslb],
        origins: &[Name],
        regions: &RegionIds<'_>,
        defined: &[Region],
    ) -> Vec<GslbName> {
        let mut first_at: HashMap<Name, String> = HashMap::new();
        let mut names = Vec::with_capacity(raw.len());
        for (i, gslb) in raw.iter().enumerate() {
            let base = at("gslb", i);
            let name_field = field(&base, "name");
            let (name, zone) = match self.name(&name_field, &gslb.name) {
                Some(name) => {
                    let zone = self.enclosing_zone(&name_field, &name, origins);
                    if let Some(first) = first_at.get(&name) {
                        self.report(
                            &name_field,
                            Problem::Duplicate {
                                value: name.to_string(),
                                first: first.clone(),
                            },
                        );
                    } else {
                        first_at.insert(name.clone(), name_field);
                    }
                    (name, zone)
                }
                None => (Name::root(), Name::root()),
            };
            let policy = self.policy(&base, gslb, regions, defined);
            names.push(GslbName { name, zone, policy });
        }
        names
    }

    /// The deepest zone strictly containing `name`: the zone whose SOA and NS it shares.
    fn enclosing_zone(&mut self, field: &str, name: &Name, origins: &[Name]) -> Name {
        if origins.contains(name) {
            self.report(
                field,
                Problem::ZoneApex {
                    name: name.to_string(),
                },
            );
            return name.clone();
        }
        let enclosing = origins
            .iter()
            .filter(|origin| origin.zone_of(name))
            .max_by_key(|origin| origin.num_labels());
        match enclosing {
            Some(origin) => origin.clone(),
            None => {
                self.report(
                    field,
                    Problem::NotInAnyZone {
                        name: name.to_string(),
                    },
                );
                Name::root()
            }
        }
    }

    fn policy(
        &mut self,
        base: &str,
        gslb: &RawGslb,
        regions: &RegionIds<'_>,
        defined: &[Region],
    ) -> SteeringPolicy {
        let regions_field = field(base, "regions");
        let (candidates, listed) = match &gslb.regions {
            Some(ids) => (
                self.region_list(&regions_field, ids, regions, None),
                ids.len(),
            ),
            None => {
                if regions.all.is_empty() {
                    self.report(&regions_field, Problem::EmptyList);
                }
                (regions.all.clone(), regions.all.len())
            }
        };

        let answers_field = field(base, "answers");
        let answers = self
            .int_in(&answers_field, gslb.answers, 1, i64::MAX)
            .unwrap_or(1);
        if gslb.answers >= 1 && listed > 0 && answers > listed {
            self.report(
                answers_field,
                Problem::AnswersExceedCandidates {
                    answers: gslb.answers,
                    candidates: listed,
                },
            );
        }
        let ttl = self
            .int_in(&field(base, "ttl"), gslb.ttl, 1, 86_400)
            .unwrap_or(1);

        let mode = self.mode(base, gslb, regions, &candidates);
        let model = gslb.model.as_deref().map(|model| {
            let model_field = field(base, "model");
            if model.trim().is_empty() {
                self.report(&model_field, Problem::EmptyModelId);
            } else {
                let serves = |r: &RegionIdx| {
                    defined.get(r.get()).is_some_and(|region| {
                        region.models.is_empty() || region.models.iter().any(|m| &**m == model)
                    })
                };
                // Unknown candidates were reported already; only judge a list that resolved.
                if !candidates.is_empty() && !candidates.iter().any(serves) {
                    self.report(
                        &model_field,
                        Problem::ModelNotServed {
                            model: model.to_owned(),
                        },
                    );
                }
            }
            Arc::from(model)
        });
        let cost = gslb.cost.map(|c| self.cost(base, gslb.mode, c));

        SteeringPolicy {
            mode,
            candidates,
            answers,
            ttl,
            when_all_unhealthy: match gslb.when_all_unhealthy {
                RawAllUnhealthy::FailOpen => AllUnhealthy::FailOpen,
                RawAllUnhealthy::FailClosed => AllUnhealthy::FailClosed,
            },
            model,
            cost,
            ecs: gslb.ecs,
            why: gslb.why,
        }
    }

    /// The ordering mode; `[gslb.geo]` is required by `geo` and by `latency` falling back to
    /// geo, and forbidden everywhere else.
    fn mode(
        &mut self,
        base: &str,
        gslb: &RawGslb,
        regions: &RegionIds<'_>,
        candidates: &[RegionIdx],
    ) -> SteeringMode {
        let geo_field = field(base, "geo");
        let fallback_field = field(base, "latency_fallback");
        let fallback = match (gslb.mode, gslb.latency_fallback) {
            (RawMode::Latency, fallback) => Some(fallback.unwrap_or(RawLatencyFallback::Nearest)),
            (mode, Some(_)) => {
                self.report(
                    &fallback_field,
                    Problem::LatencyFallbackForbidden {
                        mode: mode.as_str().to_owned(),
                    },
                );
                None
            }
            (_, None) => None,
        };
        let wants_geo = gslb.mode == RawMode::Geo || fallback == Some(RawLatencyFallback::Geo);
        let geo = match (&gslb.geo, wants_geo) {
            (Some(geo), true) => {
                let allowed: HashSet<RegionIdx> = candidates.iter().copied().collect();
                Some(self.geo_map(&geo_field, geo, regions, &allowed))
            }
            (None, true) => {
                self.report(&geo_field, Problem::GeoMapRequired);
                Some(GeoMap::default())
            }
            (Some(_), false) => {
                self.report(
                    &geo_field,
                    Problem::GeoMapForbidden {
                        mode: gslb.mode.as_str().to_owned(),
                    },
                );
                None
            }
            (None, false) => None,
        };
        match gslb.mode {
            RawMode::Geo => SteeringMode::GeoMap(geo.unwrap_or_default()),
            RawMode::Nearest => SteeringMode::Nearest,
            RawMode::Weighted => SteeringMode::Weighted,
            RawMode::Failover => SteeringMode::Failover,
            RawMode::Latency => SteeringMode::Latency(match geo {
                Some(map) => LatencyFallback::GeoMap(map),
                None => LatencyFallback::Nearest,
            }),
        }
    }

    fn cost(&mut self, base: &str, mode: RawMode, raw: RawCost) -> CostPreference {
        let cost_field = field(base, "cost");
        if matches!(mode, RawMode::Weighted | RawMode::Failover) {
            self.report(
                &cost_field,
                Problem::CostForbidden {
                    mode: mode.as_str().to_owned(),
                },
            );
        }
        let positive = (0.0, true);
        match (raw.within_km, raw.within_ms) {
            (Some(km), None) => CostPreference::WithinKm(self.number_in(
                &field(&cost_field, "within_km"),
                km,
                positive,
                Some(40_075.0),
            )),
            (None, Some(ms)) => CostPreference::WithinMs(self.number_in(
                &field(&cost_field, "within_ms"),
                ms,
                positive,
                Some(60_000.0),
            )),
            _ => {
                self.report(cost_field, Problem::CostBudgetChoice);
                CostPreference::WithinKm(1.0)
            }
        }
    }

    fn geo_map(
        &mut self,
        base: &str,
        raw: &RawGeoMap,
        regions: &RegionIds<'_>,
        allowed: &HashSet<RegionIdx>,
    ) -> GeoMap {
        let default = self.region_list(
            &field(base, "default"),
            &raw.default,
            regions,
            Some(allowed),
        );
        let mut keyed = |kind: &str, entries, check: CodeCheck| {
            self.geo_table(&field(base, kind), entries, check, regions, allowed)
        };
        let continents = keyed("continents", &raw.continents, check_continent);
        let countries = keyed("countries", &raw.countries, check_country);
        let subdivisions = keyed("subdivisions", &raw.subdivisions, check_subdivision);
        GeoMap {
            subdivisions,
            countries,
            continents,
            default,
        }
    }

    /// One of the geo map's code → regions tables; codes are normalised to upper case.
    fn geo_table(
        &mut self,
        table_field: &str,
        entries: &std::collections::BTreeMap<String, Vec<String>>,
        check: CodeCheck,
        regions: &RegionIds<'_>,
        allowed: &HashSet<RegionIdx>,
    ) -> HashMap<String, Vec<RegionIdx>> {
        let mut table = HashMap::with_capacity(entries.len());
        let mut first_at: HashMap<String, String> = HashMap::new();
        for (code, ids) in entries {
            let entry_field = field(table_field, code);
            let normalised = code.to_ascii_uppercase();
            if let Some(problem) = check(&normalised) {
                self.report(&entry_field, problem);
            }
            let list = self.region_list(&entry_field, ids, regions, Some(allowed));
            // TOML already rejects the same key twice; only spellings differing in case
            // reach here.
            if let Some(first) = first_at.get(&normalised) {
                self.report(
                    entry_field,
                    Problem::Duplicate {
                        value: normalised,
                        first: first.clone(),
                    },
                );
            } else {
                first_at.insert(normalised.clone(), entry_field);
                table.insert(normalised, list);
            }
        }
        table
    }

    fn overrides(&mut self, raw: &[RawOverride], regions: &RegionIds<'_>) -> Vec<CidrOverride> {
        let mut first_at: HashMap<IpNet, String> = HashMap::new();
        let mut overrides = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            let base = at("override", i);
            let network_field = field(&base, "network");
            let network =
                self.address::<IpNet>(&network_field, &entry.network, AddressKind::Network);
            let list = self.region_list(&field(&base, "regions"), &entry.regions, regions, None);
            let Some(network) = network else { continue };
            let truncated = network.trunc();
            if truncated != network {
                self.report(&network_field, Problem::HostBitsSet { network, truncated });
            }
            if let Some(first) = first_at.get(&truncated) {
                self.report(
                    network_field,
                    Problem::Duplicate {
                        value: truncated.to_string(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            first_at.insert(truncated, network_field);
            overrides.push(CidrOverride {
                network: truncated,
                regions: list,
            });
        }
        // Most specific first, so the first match is the longest-prefix match. Ties (same
        // length, different networks) cannot both match one address; the order only has to be
        // deterministic.
        overrides.sort_by(|a, b| {
            b.network
                .prefix_len()
                .cmp(&a.network.prefix_len())
                .then_with(|| a.network.cmp(&b.network))
        });
        overrides
    }
}

/// Two listeners clash when binding one would make binding the other fail: same port (other
/// than 0, which picks a free one) on the same or a wildcard address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `base.key`, quoting keys that are not TOML bare keys.
pub(super) fn field(base: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if base.is_empty() {
        key
    } else {
        format!("{base}.{key}")
    }
}

/// `base[index]`.
pub(super) fn at(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

fn is_region_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a geo map key (already upper-cased); `None` when it is valid.
type CodeCheck = fn(&str) -> Option<Problem>;

/// MaxMind's continent codes.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// ISO 3166-1 alpha-2 officially assigned codes, sorted, plus `XK` (Kosovo, user-assigned but
/// used by MaxMind). Checked against the list rather than the pattern because the common
/// mistakes (`UK`, `EL`) have the right shape and would silently never match.
const COUNTRIES: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Codes people write for a country whose ISO code differs.
const COUNTRY_ALIASES: [(&str, &str); 2] = [("UK", "GB"), ("EL", "GR")];

fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

fn check_continent(code: &str) -> Option<Problem> {
    (!CONTINENTS.contains(&code)).then(|| Problem::UnknownContinent {
        code: code.to_owned(),
    })
}

fn check_country(code: &str) -> Option<Problem> {
    (!is_country(code)).then(|| Problem::UnknownCountry {
        code: code.to_owned(),
        suggestion: COUNTRY_ALIASES
            .iter()
            .find(|(alias, _)| *alias == code)
            .map(|(_, iso)| (*iso).to_owned()),
    })
}

/// ISO 3166-2: a country code, `-`, and one to three letters or digits.
fn check_subdivision(code: &str) -> Option<Problem> {
    let valid = code.split_once('-').is_some_and(|(country, sub)| {
        is_country(country)
            && (1..=3).contains(&sub.len())
            && sub.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    (!valid).then(|| Problem::InvalidSubdivision {
        code: code.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_list_is_sorted_and_unique() {
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_country("GB") && is_country("ZW") && is_country("AD"));
        assert!(!is_country("UK"));
    }

    #[test]
    fn code_checks() {
        let cases: &[(&str, CodeCheck, bool)] = &[
            ("EU", check_continent, true),
            ("EUR", check_continent, false),
            ("US-CA", check_subdivision, true),
            ("GB-ENG", check_subdivision, true),
            ("FR-75C", check_subdivision, true),
            ("US", check_subdivision, false),
            ("US-", check_subdivision, false),
            ("XX-CA", check_subdivision, false),
            ("US-CALI", check_subdivision, false),
        ];
        for (code, check, ok) in cases {
            assert_eq!(check(code).is_none(), *ok, "{code}");
        }
        assert_eq!(
            check_country("UK"),
            Some(Problem::UnknownCountry {
                code: "UK".into(),
                suggestion: Some("GB".into())
            })
        );
    }

    #[test]
    fn region_ids() {
        for (id, ok) in [
            ("us-east", true),
            ("a", true),
            ("", false),
            ("US-east", false),
            ("us_east", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(is_region_id(id), ok, "{id:?}");
        }
    }

    #[test]
    fn field_paths_quote_non_bare_keys() {
        assert_eq!(field("", "server"), "server");
        assert_eq!(
            field("gslb[0].geo.countries", "GB"),
            "gslb[0].geo.countries.GB"
        );
        assert_eq!(field("a", "x y"), "a.\"x y\"");
        assert_eq!(at("gslb", 3), "gslb[3]");
    }
}
