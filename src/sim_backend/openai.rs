//! The OpenAI-compatible wire format as the simulator speaks it: parsing the request fields it
//! acts on, and building the JSON it answers with (completions, stream chunks, embeddings,
//! model lists, errors). Pure: no IO, no clock (`created` is passed in).

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Which generation endpoint a request came to: decides the JSON objects of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
}

/// The fields of a generation request the simulator acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationRequest {
    pub model: String,
    pub stream: bool,
    /// `None` when the request leaves it to the server.
    pub max_tokens: Option<u32>,
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// A rough prompt size for `usage`, deterministic for the same body.
    pub prompt_tokens: u32,
}

/// Why a request was refused before any work: each maps to one OpenAI-style error answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid JSON body: {detail}")]
    InvalidJson { detail: String },
    #[error("the `model` field is required")]
    MissingModel,
    #[error("the model `{model}` does not exist")]
    UnknownModel { model: String },
    #[error("max_tokens must be at least 1, got {value}")]
    InvalidMaxTokens { value: i64 },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            RequestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::InvalidJson { .. }
            | RequestError::MissingModel
            | RequestError::InvalidMaxTokens { .. } => StatusCode::BAD_REQUEST,
        }
    }

    pub fn to_json(&self) -> Value {
        let (kind, param, code) = match self {
            RequestError::InvalidJson { .. } => ("invalid_request_error", None, None),
            RequestError::MissingModel => ("invalid_request_error", Some("model"), None),
            RequestError::UnknownModel { .. } => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            RequestError::InvalidMaxTokens { .. } => {
                ("invalid_request_error", Some("max_tokens"), None)
            }
            RequestError::BodyTooLarge { .. } => ("invalid_request_error", None, None),
        };
        error_json(&self.to_string(), kind, param, code)
    }
}

/// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<i64>,
    /// The chat API's newer name for `max_tokens`.
    max_completion_tokens: Option<i64>,
    stream_options: Option<StreamOptions>,
    messages: Option<Value>,
    prompt: Option<Value>,
    input: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Parses a generation (or embedding) request and checks its model is one of `models`.
pub fn parse_request(body: &[u8], models: &[String]) -> Result<GenerationRequest, RequestError> {
    let raw: RawRequest =
        serde_json::from_slice(body).map_err(|error| RequestError::InvalidJson {
            detail: error.to_string(),
        })?;
    let model = raw.model.ok_or(RequestError::MissingModel)?;
    if !models.contains(&model) {
        return Err(RequestError::UnknownModel { model });
    }
    let max_tokens = match raw.max_tokens.or(raw.max_completion_tokens) {
        None => None,
        Some(value) if value < 1 => return Err(RequestError::InvalidMaxTokens { value }),
        Some(value) => Some(u32::try_from(value).unwrap_or(u32::MAX)),
    };
    let prompt = [&raw.messages, &raw.prompt, &raw.input]
        .into_iter()
        .flatten()
        .map(|value| value.to_string().len())
        .sum::<usize>();
    Ok(GenerationRequest {
        model,
        stream: raw.stream,
        max_tokens,
        include_usage: raw
            .stream_options
            .is_some_and(|options| options.include_usage),
        // About four bytes of JSON per token; at least one so usage never reads as empty.
        prompt_tokens: u32::try_from(prompt.div_ceil(4).max(1)).unwrap_or(u32::MAX),
    })
}

/// The text of token `index` (0-based): "tok1 ", "tok2 ", …, so tests can check order.
pub fn token_text(index: u32) -> String {
    format!("tok{} ", u64::from(index) + 1)
}

/// What stays the same across one answer's chunks.
#[derive(Clone, Debug)]
pub struct Completion {
    pub endpoint: Endpoint,
    pub id: String,
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    pub prompt_tokens: u32,
}

impl Completion {
    fn object(&self, streaming: bool) -> &'static str {
        match (self.endpoint, streaming) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn usage(&self, completion_tokens: u32) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": u64::from(self.prompt_tokens) + u64::from(completion_tokens),
        })
    }

    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The stream chunk carrying token `index`.
    pub fn token_chunk(&self, index: u32) -> Value {
        let text = token_text(index);
        let choice = match self.endpoint {
            Endpoint::Chat if index == 0 => json!({
                "index": 0,
                "delta": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": null,
            }),
            Endpoint::Chat => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": null,
                "finish_reason": null,
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": null,
            }),
        };
        self.envelope(json!([choice]))
    }

    /// The last stream chunk: no content, the finish reason. The simulator always stops at
    /// `max_tokens`, so the reason is always "length".
    pub fn finish_chunk(&self) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "length"})
            }
        };
        self.envelope(json!([choice]))
    }

    /// The chunk `stream_options.include_usage` asks for: no choices, the usage.
    pub fn usage_chunk(&self, completion_tokens: u32) -> Value {
        let mut chunk = self.envelope(json!([]));
        chunk["usage"] = self.usage(completion_tokens);
        chunk
    }

    /// The whole non-streaming answer.
    pub fn full(&self, tokens: u32) -> Value {
        let text: String = (0..tokens).map(token_text).collect();
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": "length",
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": "length",
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(tokens),
        })
    }
}

/// One server-sent event carrying `value`.
pub fn sse_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// A small deterministic embedding: the same input always gives the same unit-length vector
/// (seeded by the input's size: a simulator needs stable numbers, not meaning).
pub fn embeddings(model: &str, prompt_tokens: u32) -> Value {
    const DIMENSIONS: u32 = 8;
    let raw: Vec<f64> = (0..DIMENSIONS)
        .map(|i| f64::from((prompt_tokens.wrapping_mul(31).wrapping_add(i * 17)) % 97) + 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let vector: Vec<f64> = raw.iter().map(|x| x / norm).collect();
    json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// `GET /v1/models`.
pub fn model_list(models: &[String], created: u64) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|model| json!({"id": model, "object": "model", "created": created, "owned_by": "meridian-sim"}))
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["llama".to_string(), "qwen".to_string()]
    }

    #[test]
    fn parse_table() {
        type Fields = (&'static str, bool, Option<u32>, bool);
        let cases: Vec<(&str, Result<Fields, RequestError>)> = vec![
            (
                r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#,
                Ok(("llama", false, None, false)),
            ),
            (
                r#"{"model":"qwen","prompt":"hi","stream":true,"max_tokens":7}"#,
                Ok(("qwen", true, Some(7), false)),
            ),
            (
                r#"{"model":"qwen","stream":true,"max_completion_tokens":3,"stream_options":{"include_usage":true}}"#,
                Ok(("qwen", true, Some(3), true)),
            ),
            (
                r#"{"model":"llama","max_tokens":99999999999}"#,
                Ok(("llama", false, Some(u32::MAX), false)),
            ),
            (
                r#"{"model":"gpt-9","prompt":"x"}"#,
                Err(RequestError::UnknownModel {
                    model: "gpt-9".into(),
                }),
            ),
            (r#"{"prompt":"x"}"#, Err(RequestError::MissingModel)),
            (
                r#"{"model":"llama","max_tokens":0}"#,
                Err(RequestError::InvalidMaxTokens { value: 0 }),
            ),
            (
                r#"{"model":"llama","max_tokens":-3}"#,
                Err(RequestError::InvalidMaxTokens { value: -3 }),
            ),
        ];
        for (body, expected) in cases {
            let got = parse_request(body.as_bytes(), &models()).map(|parsed| {
                (
                    parsed.model,
                    parsed.stream,
                    parsed.max_tokens,
                    parsed.include_usage,
                )
            });
            let expected = expected.map(|(model, stream, max_tokens, usage)| {
                (model.to_string(), stream, max_tokens, usage)
            });
            assert_eq!(got, expected, "{body}");
        }
    }

    #[test]
    fn bad_json_is_a_400_with_an_openai_error() {
        for body in ["{", "[]", r#"{"model": 3}"#, ""] {
            let error = parse_request(body.as_bytes(), &models()).unwrap_err();
            assert!(
                matches!(error, RequestError::InvalidJson { .. }),
                "{body}: {error:?}"
            );
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            let json = error.to_json();
            assert_eq!(json["error"]["type"], "invalid_request_error");
            assert!(json["error"]["message"].is_string());
        }
    }

    #[test]
    fn unknown_model_error_shape() {
        let error = RequestError::UnknownModel {
            model: "nope".into(),
        };
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            error.to_json(),
            json!({"error": {
                "message": "the model `nope` does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }})
        );
    }

    #[test]
    fn chunks_and_full_answers_have_the_openai_shape() {
        let chat = Completion {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-sim-1".into(),
            model: "llama".into(),
            created: 1_700_000_000,
            prompt_tokens: 5,
        };
        let first = chat.token_chunk(0);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "tok1 ");
        assert_eq!(
            chat.token_chunk(1)["choices"][0]["delta"]["content"],
            "tok2 "
        );
        assert!(chat.token_chunk(1)["choices"][0]["delta"]["role"].is_null());
        assert_eq!(chat.finish_chunk()["choices"][0]["finish_reason"], "length");
        assert_eq!(chat.usage_chunk(3)["usage"]["total_tokens"], 8);
        let full = chat.full(3);
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(full["choices"][0]["message"]["content"], "tok1 tok2 tok3 ");
        assert_eq!(full["usage"]["completion_tokens"], 3);

        let text = Completion {
            endpoint: Endpoint::Completions,
            ..chat
        };
        assert_eq!(text.token_chunk(0)["object"], "text_completion");
        assert_eq!(text.token_chunk(0)["choices"][0]["text"], "tok1 ");
        assert_eq!(text.full(2)["choices"][0]["text"], "tok1 tok2 ");
        assert_eq!(
            sse_event(&json!({"a": 1})),
            "data: {\"a\":1}\n\n".to_string()
        );
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embeddings("e", 10);
        assert_eq!(a, embeddings("e", 10));
        assert_eq!(a["usage"]["prompt_tokens"], 10);
        assert_ne!(
            a["data"][0]["embedding"],
            embeddings("e", 11)["data"][0]["embedding"]
        );
        let norm: f64 = a["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum();
        assert!((norm - 1.0).abs() < 1e-9);
    }

    #[test]
    fn model_list_shape() {
        let list = model_list(&models(), 1);
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"][1]["id"], "qwen");
        assert_eq!(list["data"][0]["object"], "model");
    }
}
