//! Raw TOML structs → validated [`RelayConfig`], reporting every problem at once.
//!
//! Follows the DNS tier's validator: each check records a [`FieldError`] and carries on with a
//! placeholder, and the model is returned only when nothing was recorded, so an operator fixes
//! a file in one round. No IO: the TLS files' paths are resolved against the config file's
//! folder but never opened (`meridian check` loads them).

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::config::{AddressKind, FieldError, Findings, Problem, RawDocument, UrlProblem};

use super::{
    model::{
        Backend, BackendKind, HealthChannel, HealthChannelNode, HealthChecks, Limits, ModelSource,
        RelayConfig, RetryPolicy, Shedding, Timeouts, TlsFiles,
    },
    raw::{
        RawBackend, RawBackendKind, RawHealth, RawHealthChannel, RawLimits, RawModels, RawRelay,
        RawRelayConfig, RawRetry, RawShedding, RawTimeouts,
    },
};

/// Backends are addressed by a `u16` index ([`super::model::BackendIdx`]).
const MAX_BACKENDS: usize = u16::MAX as usize + 1;

/// hyper refuses (panics on) an HTTP/1 read buffer below 8 KiB, and the header limits size it.
const MIN_HEADER_BYTES: i64 = 8 * 1024;
/// Far beyond any real request head; keeps the value inside HTTP/2's `u32` setting.
const MAX_HEADER_BYTES: i64 = 16 * 1024 * 1024;

/// The keyword that makes a backend's model list come from its `GET /v1/models`.
const DISCOVER: &str = "discover";

impl TryFrom<RawDocument<'_, RawRelayConfig>> for RelayConfig {
    type Error = Vec<FieldError>;

    fn try_from(doc: RawDocument<'_, RawRelayConfig>) -> Result<Self, Self::Error> {
        let raw = doc.config;
        let mut v = Validator {
            findings: Findings::new(doc.source),
        };

        let relay = &raw.relay;
        if !is_id(&relay.region) {
            v.report(
                "relay.region",
                Problem::InvalidRegionId {
                    id: relay.region.clone(),
                },
            );
        }
        let (listen, plain_listen, admin_listen) = v.listeners(relay);
        let admin_token_file = v.admin_token_file(relay, admin_listen);
        let tls = TlsFiles {
            cert: v.path("relay.tls.cert", &relay.tls.cert),
            key: v.path("relay.tls.key", &relay.tls.key),
        };
        let scrape_interval = v.millis(
            "relay.scrape_interval_ms",
            relay.scrape_interval_ms,
            100,
            60_000,
        );
        let backends = v.backends(&raw.backends);
        let timeouts = v.timeouts(&raw.timeouts);
        let retry = v.retry(&raw.retry);
        let shedding = v.shedding(&raw.shedding);
        let limits = v.limits(&raw.limits);
        let health = v.health(&raw.health);
        let health_channel = relay
            .health_channel
            .as_ref()
            .map(|channel| v.health_channel(channel));

        if !v.findings.errors.is_empty() {
            return Err(v.findings.errors);
        }
        Ok(RelayConfig {
            source: doc.source.to_path_buf(),
            region: Arc::from(relay.region.as_str()),
            listen,
            plain_listen,
            admin_listen,
            admin_token_file,
            tls,
            http3: relay.http3,
            backends,
            timeouts,
            retry,
            shedding,
            limits,
            health,
            scrape_interval,
            health_channel,
        })
    }
}

/// The relay's checks on top of the shared [`Findings`].
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

/// No upper bound for [`Validator::int_in`] (into a `u64`, such as milliseconds).
const UNBOUNDED: i64 = i64::MAX;
const U32_MAX: i64 = u32::MAX as i64;
/// `usize` is 32 bits on some targets.
const USIZE_MAX: i64 = if usize::BITS < 64 {
    u32::MAX as i64
} else {
    i64::MAX
};

impl Validator {
    /// `value` as a `T` if it lies in `min..=max`, otherwise a placeholder. `max` must fit a
    /// `T`.
    fn int_in<T: TryFrom<i64> + Default>(
        &mut self,
        field: &str,
        value: i64,
        min: i64,
        max: i64,
    ) -> T {
        self.findings
            .int_in(field, value, min, max)
            .unwrap_or_default()
    }

    fn millis(&mut self, field: &str, value: i64, min: i64, max: i64) -> Duration {
        Duration::from_millis(self.int_in(field, value, min, max))
    }

    /// A float in `min..=max`, or above `min` when `min_exclusive`; `max = None` only demands a
    /// finite number. NaN, which TOML can spell, is never in range.
    fn number_in(
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

    /// Reports `value` (at `field`) exceeding `bound` (at `bound_field`).
    fn at_most(&mut self, field: &str, value: Duration, bound_field: &str, bound: Duration) {
        if value > bound {
            self.report(
                field,
                Problem::ExceedsField {
                    value: millis_i64(value),
                    other: bound_field.to_owned(),
                    other_value: millis_i64(bound),
                },
            );
        }
    }

    fn address(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        let parsed = text.parse().ok();
        if parsed.is_none() {
            self.report(
                field,
                Problem::InvalidAddress {
                    value: text.to_owned(),
                    expected: AddressKind::SocketAddr,
                },
            );
        }
        parsed
    }

    /// The three listeners, which must not share a port: each clash is reported at the later
    /// key.
    fn listeners(&mut self, relay: &RawRelay) -> (SocketAddr, Option<SocketAddr>, SocketAddr) {
        let listen = self.address("relay.listen", &relay.listen);
        let plain = relay
            .plain_listen
            .as_deref()
            .and_then(|text| self.address("relay.plain_listen", text));
        let admin = self.address("relay.admin_listen", &relay.admin_listen);

        let named = [
            ("relay.listen", listen),
            ("relay.plain_listen", plain),
            ("relay.admin_listen", admin),
        ];
        for (i, &(field, address)) in named.iter().enumerate() {
            let Some(address) = address else { continue };
            let taken = named[..i]
                .iter()
                .find(|(_, earlier)| earlier.is_some_and(|earlier| clash(earlier, address)));
            if let Some(&(other, _)) = taken {
                self.report(
                    field,
                    Problem::ListenerClash {
                        address,
                        other: other.to_owned(),
                    },
                );
            }
        }

        let placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        (
            listen.unwrap_or(placeholder),
            plain,
            admin.unwrap_or(placeholder),
        )
    }

    /// The admin token file, required when the admin listener is reachable from other hosts:
    /// an unauthenticated drain must only ever be a local affair.
    fn admin_token_file(&mut self, relay: &RawRelay, admin_listen: SocketAddr) -> Option<PathBuf> {
        let token_file = relay
            .admin_token_file
            .as_ref()
            .map(|path| self.path("relay.admin_token_file", path));
        // The placeholder of an unparsable address is 0.0.0.0:0: that error is reported already.
        let parsed = relay.admin_listen.parse::<SocketAddr>().is_ok();
        if parsed && token_file.is_none() && !admin_listen.ip().is_loopback() {
            self.report(
                "relay.admin_listen",
                Problem::AdminExposedWithoutToken {
                    address: admin_listen,
                    token_key: "relay.admin_token_file".to_owned(),
                },
            );
        }
        token_file
    }

    fn backends(&mut self, raw: &[RawBackend]) -> Vec<Backend> {
        if raw.is_empty() {
            self.report("backend", Problem::NoBackends);
        }
        if raw.len() > MAX_BACKENDS {
            self.report(
                "backend",
                Problem::TooManyBackends {
                    count: raw.len(),
                    max: MAX_BACKENDS,
                },
            );
        }
        let mut first_id: HashMap<&str, String> = HashMap::new();
        let mut first_url: HashMap<http::Uri, String> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.len());
        for (i, backend) in raw.iter().enumerate() {
            let base = format!("backend[{i}]");

            let id_field = format!("{base}.id");
            if !is_id(&backend.id) {
                self.report(
                    &id_field,
                    Problem::InvalidBackendId {
                        id: backend.id.clone(),
                    },
                );
            }
            if let Some(first) = first_id.get(backend.id.as_str()) {
                self.report(
                    &id_field,
                    Problem::Duplicate {
                        value: backend.id.clone(),
                        first: first.clone(),
                    },
                );
            } else {
                first_id.insert(&backend.id, id_field);
            }

            let url_field = format!("{base}.url");
            let base_url = match backend_url(&backend.url) {
                Ok(url) => {
                    if let Some(first) = first_url.get(&url) {
                        self.report(
                            &url_field,
                            Problem::Duplicate {
                                value: backend.url.clone(),
                                first: first.clone(),
                            },
                        );
                    } else {
                        first_url.insert(url.clone(), url_field);
                    }
                    url
                }
                Err(reason) => {
                    self.report(
                        url_field,
                        Problem::InvalidUrl {
                            url: backend.url.clone(),
                            reason,
                        },
                    );
                    http::Uri::default()
                }
            };

            let models = self.models(&format!("{base}.models"), &backend.models);
            let slots = self.int_in(&format!("{base}.slots"), backend.slots, 1, U32_MAX);
            let capacity = match backend.capacity {
                Some(capacity) => self.int_in(&format!("{base}.capacity"), capacity, 1, U32_MAX),
                None => slots,
            };
            backends.push(Backend {
                id: Arc::from(backend.id.as_str()),
                base_url,
                kind: backend_kind(backend.kind),
                models,
                slots,
                capacity,
                drained: backend.drained,
            });
        }
        backends
    }

    fn models(&mut self, field: &str, raw: &RawModels) -> ModelSource {
        let ids = match raw {
            RawModels::Keyword(keyword) if keyword == DISCOVER => return ModelSource::Discover,
            RawModels::Keyword(value) => {
                self.report(
                    field,
                    Problem::UnknownModelSource {
                        value: value.clone(),
                    },
                );
                return ModelSource::Declared(Vec::new());
            }
            RawModels::List(ids) => ids,
        };
        if ids.is_empty() {
            self.report(field, Problem::EmptyList);
        }
        let mut first_at: HashMap<&str, String> = HashMap::new();
        let mut declared = Vec::with_capacity(ids.len());
        for (j, id) in ids.iter().enumerate() {
            let item = format!("{field}[{j}]");
            // Model ids are matched exactly as clients send them (`org/Model-Name:tag`), so
            // anything but an empty id is acceptable.
            if id.is_empty() {
                self.report(item, Problem::EmptyModelId);
                continue;
            }
            if let Some(first) = first_at.get(id.as_str()) {
                self.report(
                    item,
                    Problem::Duplicate {
                        value: id.clone(),
                        first: first.clone(),
                    },
                );
                continue;
            }
            first_at.insert(id, item);
            declared.push(id.clone());
        }
        ModelSource::Declared(declared)
    }

    fn timeouts(&mut self, raw: &RawTimeouts) -> Timeouts {
        let connect = self.millis("timeouts.connect_ms", raw.connect_ms, 1, UNBOUNDED);
        let first_byte = self.millis("timeouts.first_byte_ms", raw.first_byte_ms, 1, UNBOUNDED);
        let idle = self.millis("timeouts.idle_ms", raw.idle_ms, 1, UNBOUNDED);
        let total = self.millis("timeouts.total_ms", raw.total_ms, 1, UNBOUNDED);
        // A zero placeholder means that value was already reported; comparing it would only
        // add noise.
        if !total.is_zero() {
            for (field, value) in [
                ("timeouts.first_byte_ms", first_byte),
                ("timeouts.idle_ms", idle),
            ] {
                self.at_most(field, value, "timeouts.total_ms", total);
            }
        }
        Timeouts {
            connect,
            first_byte,
            idle,
            total,
        }
    }

    fn retry(&mut self, raw: &RawRetry) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.int_in("retry.max_attempts", raw.max_attempts, 1, 10),
            budget_ratio: self.number_in(
                "retry.budget_ratio",
                raw.budget_ratio,
                (0.0, false),
                Some(1.0),
            ),
            min_retries_per_second: self.int_in(
                "retry.min_retries_per_second",
                raw.min_retries_per_second,
                0,
                U32_MAX,
            ),
            max_retry_after: self.millis(
                "retry.max_retry_after_ms",
                raw.max_retry_after_ms,
                0,
                UNBOUNDED,
            ),
        }
    }

    fn shedding(&mut self, raw: &RawShedding) -> Shedding {
        Shedding {
            max_saturation: self.number_in(
                "shedding.max_saturation",
                raw.max_saturation,
                (0.0, true),
                Some(1.0),
            ),
            retry_after: Duration::from_secs(self.int_in(
                "shedding.retry_after_s",
                raw.retry_after_s,
                1,
                3600,
            )),
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        Limits {
            max_request_body_bytes: self.int_in(
                "limits.max_request_body_bytes",
                raw.max_request_body_bytes,
                1,
                USIZE_MAX,
            ),
            max_request_header_bytes: self.int_in(
                "limits.max_request_header_bytes",
                raw.max_request_header_bytes,
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
            ),
            max_response_header_bytes: self.int_in(
                "limits.max_response_header_bytes",
                raw.max_response_header_bytes,
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
            ),
            max_connections: self.int_in(
                "limits.max_connections",
                raw.max_connections,
                1,
                USIZE_MAX,
            ),
            max_streams_per_connection: self.int_in(
                "limits.max_streams_per_connection",
                raw.max_streams_per_connection,
                1,
                U32_MAX,
            ),
            header_read_timeout: self.millis(
                "limits.header_read_timeout_ms",
                raw.header_read_timeout_ms,
                1,
                UNBOUNDED,
            ),
        }
    }

    fn health(&mut self, raw: &RawHealth) -> HealthChecks {
        let base_ejection = self.millis(
            "health.base_ejection_ms",
            raw.base_ejection_ms,
            1,
            UNBOUNDED,
        );
        let max_ejection = self.millis("health.max_ejection_ms", raw.max_ejection_ms, 1, UNBOUNDED);
        if !max_ejection.is_zero() {
            self.at_most(
                "health.base_ejection_ms",
                base_ejection,
                "health.max_ejection_ms",
                max_ejection,
            );
        }
        HealthChecks {
            interval: self.millis("health.interval_ms", raw.interval_ms, 1, UNBOUNDED),
            deep_interval: self.millis(
                "health.deep_interval_ms",
                raw.deep_interval_ms,
                1,
                UNBOUNDED,
            ),
            deep_timeout: self.millis("health.deep_timeout_ms", raw.deep_timeout_ms, 1, UNBOUNDED),
            eject_after_failures: self.int_in(
                "health.eject_after_failures",
                raw.eject_after_failures,
                1,
                U32_MAX,
            ),
            base_ejection,
            max_ejection,
            healthy_after_successes: self.int_in(
                "health.healthy_after_successes",
                raw.healthy_after_successes,
                1,
                U32_MAX,
            ),
        }
    }

    fn health_channel(&mut self, raw: &RawHealthChannel) -> HealthChannel {
        const FIELD: &str = "relay.health_channel";
        let interval = self.millis(
            &format!("{FIELD}.interval_ms"),
            raw.interval_ms,
            100,
            60_000,
        );
        let validity = self.millis(
            &format!("{FIELD}.validity_ms"),
            raw.validity_ms,
            100,
            600_000,
        );
        // A report must outlive the wait for the next one, or the region blinks unknown
        // between every two reports.
        if !validity.is_zero() {
            self.at_most(
                &format!("{FIELD}.interval_ms"),
                interval,
                &format!("{FIELD}.validity_ms"),
                validity,
            );
        }
        let nodes_field = format!("{FIELD}.node");
        if raw.nodes.is_empty() {
            self.report(&nodes_field, Problem::EmptyList);
        }
        let mut first_id: HashMap<&str, String> = HashMap::new();
        let mut first_address: HashMap<SocketAddr, String> = HashMap::new();
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (i, node) in raw.nodes.iter().enumerate() {
            let base = format!("{nodes_field}[{i}]");
            let id_field = format!("{base}.id");
            if !is_id(&node.id) {
                self.report(
                    &id_field,
                    Problem::InvalidName {
                        name: node.id.clone(),
                        reason: "a DNS node id is 1 to 63 characters from a-z, 0-9 and -".into(),
                    },
                );
            }
            if let Some(first) = first_id.get(node.id.as_str()) {
                self.report(
                    &id_field,
                    Problem::Duplicate {
                        value: node.id.clone(),
                        first: first.clone(),
                    },
                );
            } else {
                first_id.insert(&node.id, id_field);
            }

            let address_field = format!("{base}.address");
            let address = self.address(&address_field, &node.address);
            if let Some(address) = address {
                if address.port() == 0 {
                    self.report(
                        &address_field,
                        Problem::IntegerOutOfRange {
                            value: 0,
                            min: 1,
                            max: i64::from(u16::MAX),
                        },
                    );
                } else if let Some(first) = first_address.get(&address) {
                    self.report(
                        &address_field,
                        Problem::Duplicate {
                            value: node.address.clone(),
                            first: first.clone(),
                        },
                    );
                } else {
                    first_address.insert(address, address_field);
                }
            }

            if rustls_pki_types::ServerName::try_from(node.server_name.as_str()).is_err() {
                self.report(
                    format!("{base}.server_name"),
                    Problem::InvalidName {
                        name: node.server_name.clone(),
                        reason: "a certificate is checked against a DNS name or an IP address"
                            .into(),
                    },
                );
            }
            nodes.push(HealthChannelNode {
                id: Arc::from(node.id.as_str()),
                address: address.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                server_name: node.server_name.clone(),
            });
        }
        HealthChannel {
            ca: self.path(&format!("{FIELD}.ca"), &raw.ca),
            cert: self.path(&format!("{FIELD}.cert"), &raw.cert),
            key: self.path(&format!("{FIELD}.key"), &raw.key),
            interval,
            validity,
            nodes,
        }
    }
}

fn millis_i64(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Two listeners clash when binding one would make binding the other fail: same port (other
/// than 0, which picks a free one) on the same or a wildcard address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Region and backend ids: 1 to 63 of `a-z`, `0-9`, `-` (a DNS label's length, and safe in
/// metrics labels and log fields).
fn is_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn backend_kind(kind: RawBackendKind) -> BackendKind {
    match kind {
        RawBackendKind::Vllm => BackendKind::Vllm,
        RawBackendKind::Sglang => BackendKind::Sglang,
        RawBackendKind::Tgi => BackendKind::Tgi,
        RawBackendKind::Llamacpp => BackendKind::Llamacpp,
        RawBackendKind::Ollama => BackendKind::Ollama,
        RawBackendKind::Openai => BackendKind::Openai,
    }
}

/// A backend's base URL, normalised: scheme and host lower case, no trailing `/` on the path
/// prefix. Without a prefix the path is `/`, since an absolute `http::Uri` always has one.
///
/// Equal normalised URLs are the same backend, which is how duplicates are found.
pub(super) fn backend_url(text: &str) -> Result<http::Uri, UrlProblem> {
    // `http::Uri` silently drops a fragment; refuse it before parsing.
    if text.contains('#') {
        return Err(UrlProblem::Fragment);
    }
    let uri: http::Uri = text.parse().map_err(|_| UrlProblem::Unparsable)?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .filter(|scheme| scheme == "http" || scheme == "https")
        .ok_or(UrlProblem::Scheme)?;
    let authority = uri.authority().ok_or(UrlProblem::Unparsable)?;
    if authority.as_str().contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    if authority.port_u16().is_none() {
        return Err(UrlProblem::NoPort);
    }
    if uri.query().is_some() {
        return Err(UrlProblem::Query);
    }
    let prefix = uri.path().trim_end_matches('/');
    let authority = authority.as_str().to_ascii_lowercase();
    format!("{scheme}://{authority}{prefix}")
        .parse()
        .map_err(|_| UrlProblem::Unparsable)
}
