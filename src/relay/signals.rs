//! Load signals a backend reports about itself, read from its own exposition (design §4).
//!
//! This module owns the mapping from each server's metric names to [`BackendSignals`]: vLLM,
//! SGLang, TGI and llama.cpp publish Prometheus text on `/metrics` (llama.cpp also a `/slots`
//! JSON array); Ollama and generic OpenAI-compatible servers publish nothing, and the relay's
//! own in-flight count stands in for them. It is pure: text in, numbers out. Fetching the text
//! belongs to [`super::probe`], and turning the numbers into a load score to [`super::pool`].
//!
//! The Prometheus text format is parsed by `prometheus-parse`. Its name pattern is `\w+`, so it
//! silently drops every sample whose name holds a `:` — which is every vLLM, SGLang and
//! llama.cpp metric. Before parsing, the `:` of metric names (never of label values) is
//! replaced by [`COLON_STAND_IN`], a letter no valid metric name can contain, and the names we
//! look up are spelled the same way. That keeps the mapping exact instead of guessing that
//! `vllm_x` and `vllm:x` never coexist.

use std::borrow::Cow;

use crate::relay::config::model::BackendKind;

/// What a backend says about its own load. `None` where it does not publish that signal.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendSignals {
    /// Requests accepted but not yet scheduled (the backend's own queue).
    pub waiting: Option<f64>,
    /// Requests being generated, from every client of the backend, not only this relay.
    pub running: Option<f64>,
    /// KV-cache (or token pool) in use, as a fraction `0..=1`.
    pub kv_usage: Option<f64>,
    /// llama.cpp: slots processing a request.
    pub slots_busy: Option<f64>,
    /// llama.cpp: slots the server was started with.
    pub slots_total: Option<f64>,
}

impl BackendSignals {
    /// Adds what llama.cpp's `/slots` says to what its `/metrics` said.
    pub fn with_slots(self, slots: SlotUsage) -> BackendSignals {
        BackendSignals {
            slots_busy: Some(f64::from(slots.busy)),
            slots_total: Some(f64::from(slots.total)),
            ..self
        }
    }
}

/// Occupancy of llama.cpp's slots, from `GET /slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotUsage {
    pub busy: u32,
    pub total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalsError {
    /// Wrong endpoint, wrong `kind` in the config, or metrics switched off on the backend.
    #[error("the {} exposition holds none of its load metrics {expected:?}", kind.as_str())]
    NoLoadMetrics {
        kind: BackendKind,
        expected: Vec<&'static str>,
    },
    #[error("{metric} is {problem}")]
    BadValue {
        metric: &'static str,
        problem: ValueProblem,
    },
    #[error("/slots is not JSON (line {line}, column {column})")]
    SlotsNotJson { line: usize, column: usize },
    #[error("/slots is not a JSON array")]
    SlotsNotArray,
    #[error("slot {index} has neither a boolean `is_processing` nor a numeric `state`")]
    SlotWithoutState { index: usize },
}

/// Why a published value cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    #[error("not a finite number")]
    NotFinite,
    #[error("negative")]
    Negative,
    #[error("a fraction above 1")]
    AboveOne,
}

/// Whether the kind publishes load signals at all (Ollama and generic servers do not).
pub fn publishes_signals(kind: BackendKind) -> bool {
    !gauges_of(kind).is_empty()
}

/// Reads the load signals out of a backend's `/metrics` text.
///
/// A signal the backend does not publish stays `None` (versions add and rename metrics); only
/// an exposition with none of the kind's metrics, or a value that cannot be a load, is an
/// error. For kinds without signals this returns empty signals.
pub fn parse_exposition(kind: BackendKind, text: &str) -> Result<BackendSignals, SignalsError> {
    let gauges = gauges_of(kind);
    let mut signals = BackendSignals::default();
    if gauges.is_empty() {
        return Ok(signals);
    }
    let lines = text
        .lines()
        .map(|line| Ok::<_, std::io::Error>(escape_metric_name(line).into_owned()));
    // Sample timestamps are not used; a fixed one keeps the parse free of clock reads. The
    // lines are in memory, so the reader cannot fail; an empty scrape still reports which
    // metrics were expected.
    let scrape = prometheus_parse::Scrape::parse_at(lines, Default::default()).unwrap_or(
        prometheus_parse::Scrape {
            docs: Default::default(),
            samples: Vec::new(),
        },
    );
    let mut found_any = false;
    for gauge in gauges {
        // The first name the backend publishes wins: newer spellings come first.
        let Some((metric, value)) = gauge.names.iter().find_map(|&name| {
            gauge
                .combine
                .over(samples_named(&scrape, name))
                .map(|value| (name, value))
        }) else {
            continue;
        };
        found_any = true;
        let value = gauge.check(metric, value)?;
        *gauge.signal.field(&mut signals) = Some(value);
    }
    if !found_any {
        return Err(SignalsError::NoLoadMetrics {
            kind,
            expected: gauges
                .iter()
                .flat_map(|g| g.names.iter().copied())
                .collect(),
        });
    }
    Ok(signals)
}

/// Reads llama.cpp's `GET /slots`: an array of slot objects, busy when `is_processing` is
/// true (current builds) or `state` is not 0 (older builds).
pub fn parse_slots(json: &[u8]) -> Result<SlotUsage, SignalsError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| SignalsError::SlotsNotJson {
            line: e.line(),
            column: e.column(),
        })?;
    let slots = value.as_array().ok_or(SignalsError::SlotsNotArray)?;
    let mut busy = 0u32;
    for (index, slot) in slots.iter().enumerate() {
        let processing = match (slot.get("is_processing"), slot.get("state")) {
            (Some(serde_json::Value::Bool(processing)), _) => *processing,
            (_, Some(state)) if state.is_number() => state.as_f64() != Some(0.0),
            _ => return Err(SignalsError::SlotWithoutState { index }),
        };
        busy += u32::from(processing);
    }
    Ok(SlotUsage {
        busy,
        total: u32::try_from(slots.len()).unwrap_or(u32::MAX),
    })
}

/// Stands in for `:` in metric names while `prometheus-parse` reads them: a letter (so `\w`
/// matches it) outside ASCII, where valid metric names never go (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
const COLON_STAND_IN: char = 'ː'; // U+02D0 MODIFIER LETTER TRIANGULAR COLON

/// Rewrites the metric name of a sample, `# HELP` or `# TYPE` line; label values keep their `:`.
fn escape_metric_name(line: &str) -> Cow<'_, str> {
    let trimmed = line.trim_start();
    let name_start = if let Some(comment) = trimmed.strip_prefix('#') {
        let rest = comment.trim_start();
        let Some(after_keyword) = rest
            .strip_prefix("HELP")
            .or_else(|| rest.strip_prefix("TYPE"))
        else {
            return Cow::Borrowed(line);
        };
        line.len() - after_keyword.trim_start().len()
    } else {
        line.len() - trimmed.len()
    };
    let name_len = line[name_start..]
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len() - name_start);
    let name = &line[name_start..name_start + name_len];
    if !name.contains(':') {
        return Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 8);
    escaped.push_str(&line[..name_start]);
    escaped.extend(
        name.chars()
            .map(|c| if c == ':' { COLON_STAND_IN } else { c }),
    );
    escaped.push_str(&line[name_start + name_len..]);
    Cow::Owned(escaped)
}

fn samples_named<'s>(
    scrape: &'s prometheus_parse::Scrape,
    name: &str,
) -> impl Iterator<Item = f64> + 's {
    let escaped: String = name
        .chars()
        .map(|c| if c == ':' { COLON_STAND_IN } else { c })
        .collect();
    scrape
        .samples
        .iter()
        .filter(move |sample| sample.metric == escaped)
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => None,
        })
}

#[derive(Clone, Copy)]
enum Signal {
    Waiting,
    Running,
    KvUsage,
}

impl Signal {
    fn field(self, signals: &mut BackendSignals) -> &mut Option<f64> {
        match self {
            Signal::Waiting => &mut signals.waiting,
            Signal::Running => &mut signals.running,
            Signal::KvUsage => &mut signals.kv_usage,
        }
    }
}

/// How the label sets of one metric (per `model_name`, per data-parallel `engine`) add up.
#[derive(Clone, Copy)]
enum Combine {
    /// Request counts: the backend's load is the sum over its engines and models.
    Sum,
    /// Usage fractions: summing fractions of separate caches means nothing; the fullest cache
    /// is the one that stalls admissions first.
    Max,
}

impl Combine {
    fn over(self, values: impl Iterator<Item = f64>) -> Option<f64> {
        // NaN must survive to the range check rather than vanish in `f64::max`.
        values.reduce(|acc, v| match self {
            Combine::Sum => acc + v,
            Combine::Max if acc.is_nan() || v.is_nan() => f64::NAN,
            Combine::Max => acc.max(v),
        })
    }
}

/// One signal of one kind: the metric names that carry it, newest spelling first.
struct Gauge {
    signal: Signal,
    names: &'static [&'static str],
    combine: Combine,
}

impl Gauge {
    const fn count(signal: Signal, names: &'static [&'static str]) -> Gauge {
        Gauge {
            signal,
            names,
            combine: Combine::Sum,
        }
    }

    const fn fraction(names: &'static [&'static str]) -> Gauge {
        Gauge {
            signal: Signal::KvUsage,
            names,
            combine: Combine::Max,
        }
    }

    fn check(&self, metric: &'static str, value: f64) -> Result<f64, SignalsError> {
        let problem = if !value.is_finite() {
            ValueProblem::NotFinite
        } else if value < 0.0 {
            ValueProblem::Negative
        } else if matches!(self.signal, Signal::KvUsage) && value > 1.0 {
            // A percentage (0..100) here would read as "always full"; refuse it loudly.
            ValueProblem::AboveOne
        } else {
            return Ok(value);
        };
        Err(SignalsError::BadValue { metric, problem })
    }
}

const VLLM: &[Gauge] = &[
    Gauge::count(Signal::Waiting, &["vllm:num_requests_waiting"]),
    Gauge::count(Signal::Running, &["vllm:num_requests_running"]),
    // Despite "perc", both are fractions; the GPU name is vLLM's v0 spelling.
    Gauge::fraction(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
];

const SGLANG: &[Gauge] = &[
    Gauge::count(Signal::Waiting, &["sglang:num_queue_reqs"]),
    Gauge::count(Signal::Running, &["sglang:num_running_reqs"]),
    Gauge::fraction(&["sglang:token_usage"]),
];

const TGI: &[Gauge] = &[
    Gauge::count(Signal::Waiting, &["tgi_queue_size"]),
    Gauge::count(Signal::Running, &["tgi_batch_current_size"]),
];

const LLAMACPP: &[Gauge] = &[
    Gauge::count(Signal::Waiting, &["llamacpp:requests_deferred"]),
    Gauge::count(Signal::Running, &["llamacpp:requests_processing"]),
    // Published by older builds only.
    Gauge::fraction(&["llamacpp:kv_cache_usage_ratio"]),
];

fn gauges_of(kind: BackendKind) -> &'static [Gauge] {
    match kind {
        BackendKind::Vllm => VLLM,
        BackendKind::Sglang => SGLANG,
        BackendKind::Tgi => TGI,
        BackendKind::Llamacpp => LLAMACPP,
        BackendKind::Ollama | BackendKind::Openai => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM_V1: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.61
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 57.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 57.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.25
# HELP vllm:spec_decode_draft_acceptance_rate Speculative token acceptance rate.
# TYPE vllm:spec_decode_draft_acceptance_rate gauge
vllm:spec_decode_draft_acceptance_rate{model_name="m"} NaN
"#;

    const VLLM_V0: &str = r#"# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="Qwen/Qwen2.5-7B"} 2.0
vllm:num_requests_running{model_name="lora:sql-adapter"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="Qwen/Qwen2.5-7B"} 0.0
vllm:num_requests_waiting{model_name="lora:sql-adapter"} 6.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-7B"} 0.875
"#;

    const SGLANG_TEXT: &str = r#"# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen/qwen2.5-0.5b-instruct"} 9.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen/qwen2.5-0.5b-instruct"} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen/qwen2.5-0.5b-instruct"} 0.28
# HELP sglang:e2e_request_latency_seconds Histogram of End-to-end request latency in seconds
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="qwen/qwen2.5-0.5b-instruct"} 314.0
"#;

    const TGI_TEXT: &str = r#"# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="+Inf"} 120
tgi_request_duration_sum 88.5
tgi_request_duration_count 120
"#;

    const LLAMACPP_TEXT: &str = r#"# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 9318
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"#;

    fn signals(
        waiting: Option<f64>,
        running: Option<f64>,
        kv_usage: Option<f64>,
    ) -> BackendSignals {
        BackendSignals {
            waiting,
            running,
            kv_usage,
            ..BackendSignals::default()
        }
    }

    #[test]
    fn expositions_map_to_signals() {
        let cases: &[(
            &str,
            BackendKind,
            &str,
            Result<BackendSignals, SignalsError>,
        )] = &[
            (
                "vLLM v1: counts summed over engines, fraction = fullest engine",
                BackendKind::Vllm,
                VLLM_V1,
                Ok(signals(Some(5.0), Some(15.0), Some(0.61))),
            ),
            (
                "vLLM v0: summed over model_name (base + LoRA), old KV name",
                BackendKind::Vllm,
                VLLM_V0,
                Ok(signals(Some(6.0), Some(3.0), Some(0.875))),
            ),
            (
                "SGLang",
                BackendKind::Sglang,
                SGLANG_TEXT,
                Ok(signals(Some(2.0), Some(9.0), Some(0.28))),
            ),
            (
                "TGI, unlabelled and without HELP",
                BackendKind::Tgi,
                TGI_TEXT,
                Ok(signals(Some(5.0), Some(16.0), None)),
            ),
            (
                "llama.cpp",
                BackendKind::Llamacpp,
                LLAMACPP_TEXT,
                Ok(signals(Some(1.0), Some(3.0), None)),
            ),
            (
                "partial vLLM: missing signals stay None",
                BackendKind::Vllm,
                "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 2\n",
                Ok(signals(Some(2.0), None, None)),
            ),
            (
                "Ollama publishes nothing",
                BackendKind::Ollama,
                "whatever 1\n",
                Ok(BackendSignals::default()),
            ),
            (
                "vLLM text read as SGLang",
                BackendKind::Sglang,
                VLLM_V1,
                Err(SignalsError::NoLoadMetrics {
                    kind: BackendKind::Sglang,
                    expected: vec![
                        "sglang:num_queue_reqs",
                        "sglang:num_running_reqs",
                        "sglang:token_usage",
                    ],
                }),
            ),
            (
                "empty body",
                BackendKind::Tgi,
                "",
                Err(SignalsError::NoLoadMetrics {
                    kind: BackendKind::Tgi,
                    expected: vec!["tgi_queue_size", "tgi_batch_current_size"],
                }),
            ),
            (
                "NaN load",
                BackendKind::Vllm,
                "vllm:num_requests_waiting{model_name=\"m\"} NaN\n",
                Err(SignalsError::BadValue {
                    metric: "vllm:num_requests_waiting",
                    problem: ValueProblem::NotFinite,
                }),
            ),
            (
                "NaN in one engine poisons the fraction",
                BackendKind::Vllm,
                "vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\nvllm:kv_cache_usage_perc{engine=\"1\"} NaN\n",
                Err(SignalsError::BadValue {
                    metric: "vllm:kv_cache_usage_perc",
                    problem: ValueProblem::NotFinite,
                }),
            ),
            (
                "+Inf queue",
                BackendKind::Tgi,
                "tgi_queue_size +Inf\n",
                Err(SignalsError::BadValue {
                    metric: "tgi_queue_size",
                    problem: ValueProblem::NotFinite,
                }),
            ),
            (
                "negative count",
                BackendKind::Sglang,
                "sglang:num_queue_reqs -1\n",
                Err(SignalsError::BadValue {
                    metric: "sglang:num_queue_reqs",
                    problem: ValueProblem::Negative,
                }),
            ),
            (
                "a percentage where a fraction belongs",
                BackendKind::Vllm,
                "vllm:kv_cache_usage_perc{model_name=\"m\"} 87.5\n",
                Err(SignalsError::BadValue {
                    metric: "vllm:kv_cache_usage_perc",
                    problem: ValueProblem::AboveOne,
                }),
            ),
            (
                "unparseable value is as good as absent",
                BackendKind::Tgi,
                "tgi_queue_size lots\ntgi_batch_current_size 2\n",
                Ok(signals(None, Some(2.0), None)),
            ),
        ];
        for (name, kind, text, expected) in cases {
            assert_eq!(&parse_exposition(*kind, text), expected, "{name}");
        }
    }

    #[test]
    fn colons_are_escaped_only_in_metric_names() {
        let cases = [
            (
                "vllm:a{model_name=\"x:y\"} 1",
                "vllmːa{model_name=\"x:y\"} 1",
            ),
            ("  vllm:a 1", "  vllmːa 1"),
            ("# TYPE vllm:a gauge", "# TYPE vllmːa gauge"),
            (
                "# HELP vllm:a Usage: 1 = full",
                "# HELP vllmːa Usage: 1 = full",
            ),
            ("# some comment: here", "# some comment: here"),
            ("tgi_queue_size 5", "tgi_queue_size 5"),
            ("", ""),
        ];
        for (line, expected) in cases {
            assert_eq!(escape_metric_name(line), expected, "{line:?}");
        }
    }

    #[test]
    fn slots_json() {
        let cases: &[(&str, &str, Result<SlotUsage, SignalsError>)] = &[
            (
                "current builds: is_processing",
                r#"[{"id":0,"n_ctx":4096,"is_processing":true,"params":{}},
                    {"id":1,"n_ctx":4096,"is_processing":false},
                    {"id":2,"n_ctx":4096,"is_processing":true}]"#,
                Ok(SlotUsage { busy: 2, total: 3 }),
            ),
            (
                "older builds: state 0 idle, 1 processing",
                r#"[{"id":0,"state":1},{"id":1,"state":0}]"#,
                Ok(SlotUsage { busy: 1, total: 2 }),
            ),
            ("no slots", "[]", Ok(SlotUsage { busy: 0, total: 0 })),
            (
                "error object (slots endpoint disabled)",
                r#"{"error":{"code":501,"message":"This server does not support slots endpoint."}}"#,
                Err(SignalsError::SlotsNotArray),
            ),
            (
                "slot without state",
                r#"[{"id":0,"is_processing":false},{"id":1}]"#,
                Err(SignalsError::SlotWithoutState { index: 1 }),
            ),
            (
                "truncated",
                "[{\"id\":0,\n\"is_pro",
                Err(SignalsError::SlotsNotJson { line: 2, column: 7 }),
            ),
        ];
        for (name, json, expected) in cases {
            assert_eq!(&parse_slots(json.as_bytes()), expected, "{name}");
        }
    }

    #[test]
    fn slots_add_to_metrics() {
        let from_metrics = signals(Some(1.0), Some(3.0), None);
        let merged = from_metrics.with_slots(SlotUsage { busy: 3, total: 4 });
        assert_eq!(
            merged,
            BackendSignals {
                slots_busy: Some(3.0),
                slots_total: Some(4.0),
                ..from_metrics
            }
        );
    }

    #[test]
    fn which_kinds_publish() {
        let cases = [
            (BackendKind::Vllm, true),
            (BackendKind::Sglang, true),
            (BackendKind::Tgi, true),
            (BackendKind::Llamacpp, true),
            (BackendKind::Ollama, false),
            (BackendKind::Openai, false),
        ];
        for (kind, expected) in cases {
            assert_eq!(publishes_signals(kind), expected, "{kind:?}");
        }
    }
}
