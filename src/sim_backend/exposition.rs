//! What each kind of backend publishes about its load: the Prometheus text of `/metrics`
//! (vLLM, SGLang, TGI, llama.cpp; Ollama has none) and llama.cpp's `/slots`. Names and types
//! follow the real servers, because the relay's scraper parses exactly these. Pure: it renders
//! the numbers it is given.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::SimKind;

/// The engine's load at one moment, as the exposition needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub running: u32,
    pub waiting: u32,
    /// Per slot, by id: whether it is generating.
    pub busy_slots: Vec<bool>,
}

impl Load {
    /// KV-cache use stand-in: the share of busy slots, 0..=1.
    fn cache_usage(&self) -> f64 {
        if self.busy_slots.is_empty() {
            0.0
        } else {
            f64::from(self.running) / self.busy_slots.len() as f64
        }
    }
}

/// The `/metrics` body for `kind`, or `None` where the real server has no such endpoint.
/// `model` labels the series the way vLLM and SGLang do (their first served model name).
pub fn metrics_text(kind: SimKind, model: &str, load: &Load) -> Option<String> {
    let labels = format!("model_name=\"{}\"", escape_label(model));
    let running = f64::from(load.running);
    let waiting = f64::from(load.waiting);
    let gauges: Vec<(&str, &str, &str, f64)> = match kind {
        SimKind::Vllm => vec![
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                &labels,
                running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                &labels,
                waiting,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                &labels,
                load.cache_usage(),
            ),
        ],
        SimKind::Sglang => vec![
            (
                "sglang:num_running_reqs",
                "The number of running requests.",
                &labels,
                running,
            ),
            (
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue.",
                &labels,
                waiting,
            ),
            (
                "sglang:token_usage",
                "The token usage.",
                &labels,
                load.cache_usage(),
            ),
        ],
        SimKind::Tgi => vec![
            (
                "tgi_queue_size",
                "Requests waiting in the queue.",
                "",
                waiting,
            ),
            (
                "tgi_batch_current_size",
                "Requests in the current batch.",
                "",
                running,
            ),
        ],
        SimKind::Llamacpp => vec![
            (
                "llamacpp:requests_processing",
                "Number of requests processing.",
                "",
                running,
            ),
            (
                "llamacpp:requests_deferred",
                "Number of requests deferred.",
                "",
                waiting,
            ),
        ],
        SimKind::Ollama | SimKind::Openai => return None,
    };
    let mut text = String::new();
    for (name, help, labels, value) in gauges {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        if labels.is_empty() {
            let _ = writeln!(text, "{name} {value}");
        } else {
            let _ = writeln!(text, "{name}{{{labels}}} {value}");
        }
    }
    Some(text)
}

/// llama.cpp's `GET /slots`: one object per slot.
pub fn slots_json(load: &Load) -> Value {
    let slots: Vec<Value> = load
        .busy_slots
        .iter()
        .enumerate()
        .map(|(id, busy)| {
            json!({
                "id": id,
                "id_task": if *busy { json!(id) } else { json!(-1) },
                "n_ctx": 4096,
                "is_processing": busy,
            })
        })
        .collect();
    Value::Array(slots)
}

/// Prometheus label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A strict reader of the exposition format for tests. Not `prometheus-parse`: its 0.2 regexes
/// take metric names as `\w+`, so every name with a colon (`vllm:…`, `sglang:…`,
/// `llamacpp:…`, valid Prometheus names) is silently skipped.
#[cfg(test)]
pub(super) fn parse_gauges(text: &str) -> Vec<(String, Option<String>, f64)> {
    use std::collections::HashSet;

    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let (mut helped, mut typed) = (HashSet::new(), HashSet::new());
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert_eq!(kind, "gauge", "{line}");
            typed.insert(name.to_string());
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, Some(labels.strip_suffix('}').expect("labels end"))),
                None => (series, None),
            };
            assert!(valid_name(name), "{line}");
            assert!(
                helped.contains(name) && typed.contains(name),
                "HELP/TYPE before {line}"
            );
            let model = labels.map(|labels| {
                let value = labels
                    .strip_prefix("model_name=\"")
                    .and_then(|rest| rest.strip_suffix('"'))
                    .expect("only a model_name label");
                value.replace("\\\"", "\"").replace("\\\\", "\\")
            });
            samples.push((name.to_string(), model, value.parse().expect("a number")));
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    use prometheus_parse::{Scrape, Value as Sample};

    fn parse(text: &str) -> Vec<(String, Option<String>, f64)> {
        parse_gauges(text)
    }

    /// Pins the limitation `parse_gauges` works around, so the day `prometheus-parse` reads
    /// colons this test fails and the workaround can go.
    #[test]
    fn prometheus_parse_skips_names_with_colons() {
        let load = Load {
            running: 1,
            waiting: 2,
            busy_slots: vec![true],
        };
        let scrape_names = |kind| {
            let text = metrics_text(kind, "m", &load).unwrap();
            let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
            scrape
                .samples
                .into_iter()
                .map(|sample| {
                    assert!(matches!(sample.value, Sample::Gauge(_)));
                    sample.metric
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(scrape_names(SimKind::Vllm), Vec::<String>::new());
        assert_eq!(
            scrape_names(SimKind::Tgi),
            ["tgi_queue_size", "tgi_batch_current_size"]
        );
    }

    #[test]
    fn each_kind_exposes_its_real_names() {
        let load = Load {
            running: 3,
            waiting: 5,
            busy_slots: vec![true, true, true, false],
        };
        let model = Some("llama".to_string());
        type Expected = Vec<(&'static str, Option<String>, f64)>;
        let cases: Vec<(SimKind, Expected)> = vec![
            (
                SimKind::Vllm,
                vec![
                    ("vllm:num_requests_running", model.clone(), 3.0),
                    ("vllm:num_requests_waiting", model.clone(), 5.0),
                    ("vllm:kv_cache_usage_perc", model.clone(), 0.75),
                ],
            ),
            (
                SimKind::Sglang,
                vec![
                    ("sglang:num_running_reqs", model.clone(), 3.0),
                    ("sglang:num_queue_reqs", model.clone(), 5.0),
                    ("sglang:token_usage", model.clone(), 0.75),
                ],
            ),
            (
                SimKind::Tgi,
                vec![
                    ("tgi_queue_size", None, 5.0),
                    ("tgi_batch_current_size", None, 3.0),
                ],
            ),
            (
                SimKind::Llamacpp,
                vec![
                    ("llamacpp:requests_processing", None, 3.0),
                    ("llamacpp:requests_deferred", None, 5.0),
                ],
            ),
        ];
        for (kind, expected) in cases {
            let text = metrics_text(kind, "llama", &load).unwrap();
            let expected: Vec<(String, Option<String>, f64)> = expected
                .into_iter()
                .map(|(name, label, value)| (name.to_string(), label, value))
                .collect();
            assert_eq!(parse(&text), expected, "{kind:?}");
            for (name, _, _) in &expected {
                assert!(text.contains(&format!("# TYPE {name} gauge")), "{kind:?}");
                assert!(text.contains(&format!("# HELP {name} ")), "{kind:?}");
            }
        }
        assert_eq!(metrics_text(SimKind::Ollama, "llama", &load), None);
        assert_eq!(metrics_text(SimKind::Openai, "llama", &load), None);
    }

    #[test]
    fn model_names_are_escaped_in_labels() {
        let load = Load {
            running: 0,
            waiting: 0,
            busy_slots: vec![],
        };
        let text = metrics_text(SimKind::Vllm, "a\"b\\c", &load).unwrap();
        let samples = parse(&text);
        assert!(text.contains(r#"model_name="a\"b\\c""#), "{text}");
        assert_eq!(samples[0].1.as_deref(), Some("a\"b\\c"));
        // No slots at all reads as an empty cache, not NaN.
        assert_eq!(samples[2].2, 0.0);
    }

    #[test]
    fn slots_list_each_slot_with_its_state() {
        let load = Load {
            running: 1,
            waiting: 0,
            busy_slots: vec![false, true],
        };
        let slots = slots_json(&load);
        assert_eq!(slots[0]["id"], 0);
        assert_eq!(slots[0]["is_processing"], false);
        assert_eq!(slots[1]["id"], 1);
        assert_eq!(slots[1]["is_processing"], true);
        assert_eq!(slots.as_array().map(Vec::len), Some(2));
    }
}
