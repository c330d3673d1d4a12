//! The wire format of the relay→DNS report channel (design §4).
//!
//! A frame is a fixed 10-byte header followed by a payload:
//!
//! ```text
//!  0      4        5      6                10
//!  | MRDN | version | kind | payload length | payload (≤ MAX_FRAME_BYTES)
//!                          (u32 big-endian)
//! ```
//!
//! **Transport.** Each report travels as exactly one frame on its own QUIC *unidirectional*
//! stream of the relay's long-lived connection (ALPN [`super::pki::HEALTH_ALPN`]); the sender
//! finishes the stream after the frame. A stream per report means a lost or slow report never
//! holds up the next one (no head-of-line blocking behind a retransmission), and a malformed
//! stream is dropped without tearing down the connection. Streams may then arrive out of order;
//! the report's sequence number puts them back in order (see [`super::ledger`]). The receiver
//! reads at most [`HEADER_LEN`] + [`MAX_FRAME_BYTES`] bytes from a stream and requires the frame
//! to fill it exactly. The header still carries its own length so the same frames can be sent
//! back to back on one stream should that ever be needed, which is why [`decode`] is
//! incremental.
//!
//! **Payload.** A `Report` frame carries JSON: `{"validity_ms": N, "report": {…}}`, where the
//! report is the relay's [`crate::relay::report::RegionReport`] and `validity_ms` is how long
//! after *receipt* the sender vouches for it. The receiver decodes only the fields the DNS tier
//! uses ([`ReceivedReport`]) and ignores the rest, so a relay may add fields without breaking
//! older DNS nodes; an incompatible change bumps [`crate::relay::report::REPORT_VERSION`] (the
//! report) or [`FRAME_VERSION`] (this framing).
//!
//! This module is pure: bytes in, values out. It does no IO, and it does not decide whether a
//! report is trusted: the region identity comes from the sender's certificate, and ordering and
//! freshness belong to the ledger.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::relay::report::REPORT_VERSION;

pub const MAGIC: [u8; 4] = *b"MRDN";
pub const FRAME_VERSION: u8 = 1;
/// magic (4) + version (1) + kind (1) + payload length (4).
pub const HEADER_LEN: usize = 10;
/// Largest payload accepted, checked from the header before anything is buffered or parsed.
/// A region report with a full client-RTT table is a few KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What a frame carries. The discriminant is the kind byte on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Report = 1,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Report),
            _ => None,
        }
    }
}

/// A decoded frame. No hello or acknowledgement exists: the certificate already says who is
/// talking, and every report supersedes the previous one, so nothing needs confirming.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Report(ReportFrame),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Report(_) => FrameKind::Report,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportFrame {
    /// How long after receipt the report may be trusted, as the sender sees it; the receiver
    /// caps it with its own limit.
    pub validity_ms: u32,
    pub report: ReceivedReport,
}

/// The part of a relay's region report the DNS tier acts on. Unknown fields are ignored;
/// fields added after version 1 must be `#[serde(default)]` here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedReport {
    pub version: u32,
    /// The region the body claims. Never an identity: the receiver checks it against the
    /// region of the sender's certificate and rejects a mismatch.
    pub region: String,
    pub sequence: u64,
    pub state: ReportedState,
    pub accept_new: bool,
    pub saturation: f64,
    pub capacity_units: u64,
    pub headroom_units: f64,
    pub headroom_fraction: f64,
    #[serde(default)]
    pub models: BTreeMap<String, ReceivedModel>,
    #[serde(default)]
    pub rates: ReceivedRates,
    #[serde(default)]
    pub client_rtt: Vec<ReceivedClientRtt>,
}

/// Mirrors [`crate::relay::report::RegionState`]. An unknown state fails the frame rather than
/// being guessed at: a DNS node must not steer on a state it does not understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedState {
    Ok,
    Degraded,
    Draining,
    Down,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedModel {
    pub healthy_backends: u32,
    pub total_backends: u32,
    pub capacity_units: u64,
    pub headroom_units: f64,
    pub headroom_fraction: f64,
    pub saturation: f64,
    pub ttft_p95_ms: f64,
    #[serde(default)]
    pub inter_token_p95_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceivedRates {
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub timeouts_per_s: f64,
    pub sheds_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedClientRtt {
    /// The client prefix as the relay aggregates it (e.g. `203.0.113.0/24`), left as text:
    /// one unparsable entry must not cost the whole report.
    pub prefix: String,
    pub rtt_ms: f64,
    pub samples: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not an error in the bytes: at least `needed` more are required to go on.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("bad magic {found:02x?} (expected \"MRDN\")")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported frame version {version} (this node speaks {FRAME_VERSION})")]
    UnsupportedVersion { version: u8 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("bad payload: {reason}")]
    BadPayload { reason: String },
    #[error("unsupported report version {version} (this node reads {REPORT_VERSION})")]
    UnsupportedReportVersion { version: u32 },
}

#[derive(Serialize)]
struct OutgoingReport<'a, R> {
    validity_ms: u32,
    report: &'a R,
}

/// Frames a report for sending: the relay passes its `RegionReport`, tests a
/// [`ReceivedReport`]. Fails only when the payload would exceed [`MAX_FRAME_BYTES`] (or the
/// report cannot be serialized), so a sender learns of an oversized report before the
/// receiver rejects it.
pub fn encode_report<R: Serialize>(report: &R, validity_ms: u32) -> Result<Bytes, FrameError> {
    let payload = serde_json::to_vec(&OutgoingReport {
        validity_ms,
        report,
    })
    .map_err(|error| FrameError::BadPayload {
        reason: error.to_string(),
    })?;
    frame_bytes(FrameKind::Report, &payload)
}

pub fn encode(frame: &Frame) -> Result<Bytes, FrameError> {
    match frame {
        Frame::Report(report) => encode_report(&report.report, report.validity_ms),
    }
}

fn frame_bytes(kind: FrameKind, payload: &[u8]) -> Result<Bytes, FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_BYTES,
        })?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_slice(&MAGIC);
    out.put_u8(FRAME_VERSION);
    out.put_u8(kind as u8);
    out.put_u32(len);
    out.put_slice(payload);
    Ok(out.freeze())
}

/// Decodes the frame at the start of `buf`, returning it and the number of bytes it used.
///
/// The header is checked byte by byte as it arrives, so a wrong magic, version, kind or an
/// oversized length is reported as soon as the offending byte is seen, before waiting for (or
/// allocating) a payload.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    let magic_seen = buf.len().min(MAGIC.len());
    if buf[..magic_seen] != MAGIC[..magic_seen] {
        return Err(FrameError::BadMagic {
            found: buf[..magic_seen].to_vec(),
        });
    }
    if let Some(&version) = buf.get(4)
        && version != FRAME_VERSION
    {
        return Err(FrameError::UnsupportedVersion { version });
    }
    let kind = match buf.get(5) {
        Some(&byte) => {
            Some(FrameKind::from_byte(byte).ok_or(FrameError::UnknownKind { kind: byte })?)
        }
        None => None,
    };
    let (Some(kind), Some(len)) = (kind, buf.get(6..HEADER_LEN)) else {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    let end = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Err(FrameError::Incomplete {
            needed: end - buf.len(),
        });
    };
    let frame = match kind {
        FrameKind::Report => Frame::Report(decode_report(payload)?),
    };
    Ok((frame, end))
}

fn decode_report(payload: &[u8]) -> Result<ReportFrame, FrameError> {
    let frame: ReportFrame =
        serde_json::from_slice(payload).map_err(|error| FrameError::BadPayload {
            reason: error.to_string(),
        })?;
    if frame.report.version != REPORT_VERSION {
        return Err(FrameError::UnsupportedReportVersion {
            version: frame.report.version,
        });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn report(sequence: u64) -> ReceivedReport {
        ReceivedReport {
            version: REPORT_VERSION,
            region: "eu-west".into(),
            sequence,
            state: ReportedState::Degraded,
            accept_new: true,
            saturation: 0.42,
            capacity_units: 16,
            headroom_units: 9.28,
            headroom_fraction: 0.58,
            models: BTreeMap::from([(
                "llama-3-8b".to_string(),
                ReceivedModel {
                    healthy_backends: 1,
                    total_backends: 2,
                    capacity_units: 16,
                    headroom_units: 9.28,
                    headroom_fraction: 0.58,
                    saturation: 0.42,
                    ttft_p95_ms: 180.5,
                    inter_token_p95_ms: 21.0,
                },
            )]),
            rates: ReceivedRates {
                requests_per_s: 12.5,
                errors_per_s: 0.1,
                timeouts_per_s: 0.0,
                sheds_per_s: 0.0,
            },
            client_rtt: vec![ReceivedClientRtt {
                prefix: "203.0.113.0/24".into(),
                rtt_ms: 23.4,
                samples: 17,
            }],
        }
    }

    fn frame(sequence: u64) -> Frame {
        Frame::Report(ReportFrame {
            validity_ms: 3000,
            report: report(sequence),
        })
    }

    fn with_payload(payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([FRAME_VERSION, FrameKind::Report as u8]);
        bytes.extend((payload.len() as u32).to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn round_trips_and_reports_what_it_consumed() {
        let bytes = encode(&frame(7)).unwrap();
        assert_eq!(&bytes[..4], b"MRDN");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 1);
        let len = u32::from_be_bytes(bytes[6..10].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_LEN);

        let mut two = bytes.to_vec();
        two.extend_from_slice(&encode(&frame(8)).unwrap());
        let (first, used) = decode(&two).unwrap();
        assert_eq!((first, used), (frame(7), bytes.len()));
        let (second, _) = decode(&two[used..]).unwrap();
        assert_eq!(second, frame(8));
    }

    /// The relay's own report type is what actually goes on the wire: it must decode here.
    #[test]
    fn decodes_what_the_relay_sends_ignoring_fields_it_does_not_use() {
        let relay_json = serde_json::json!({
            "version": 1, "region": "us-east", "sequence": 3, "state": "draining",
            "accept_new": false, "saturation": 0.0, "capacity_units": 8,
            "headroom_units": 8.0, "headroom_fraction": 1.0,
            "models": {"m": {
                "healthy_backends": 2, "total_backends": 2, "capacity_units": 8,
                "headroom_units": 8.0, "headroom_fraction": 1.0, "saturation": 0.0,
                "waiting": 0.0, "kv_usage": null, "ttft_p50_ms": 1.0, "ttft_p95_ms": 2.0,
                "inter_token_p50_ms": 0.5, "inter_token_p95_ms": 0.9}},
            "rates": {"requests_per_s": 1.0, "errors_per_s": 0.0, "timeouts_per_s": 0.0,
                      "sheds_per_s": 0.0},
            "client_rtt": [],
            "added_in_a_later_relay": {"x": 1}
        });
        let bytes = encode_report(&relay_json, 2500).unwrap();
        let (Frame::Report(got), _) = decode(&bytes).unwrap();
        assert_eq!(got.validity_ms, 2500);
        assert_eq!(got.report.region, "us-east");
        assert_eq!(got.report.state, ReportedState::Draining);
        assert!(!got.report.accept_new);
        assert_eq!(got.report.models["m"].ttft_p95_ms, 2.0);
    }

    #[test]
    fn header_errors_carry_their_diagnosis() {
        let good = encode(&frame(1)).unwrap().to_vec();
        let patched = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            bytes
        };
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            (
                "magic",
                patched(0, b'X'),
                FrameError::BadMagic {
                    found: b"XRDN".to_vec(),
                },
            ),
            (
                "magic, early",
                b"MRX".to_vec(),
                FrameError::BadMagic {
                    found: b"MRX".to_vec(),
                },
            ),
            (
                "version",
                patched(4, 2),
                FrameError::UnsupportedVersion { version: 2 },
            ),
            ("kind", patched(5, 9), FrameError::UnknownKind { kind: 9 }),
            (
                "length over the cap, before any payload arrived",
                [&good[..6], &(MAX_FRAME_BYTES as u32 + 1).to_be_bytes()].concat(),
                FrameError::TooLarge {
                    len: MAX_FRAME_BYTES + 1,
                    max: MAX_FRAME_BYTES,
                },
            ),
            (
                "length u32::MAX",
                [&good[..6], &u32::MAX.to_be_bytes()[..]].concat(),
                FrameError::TooLarge {
                    len: u32::MAX as usize,
                    max: MAX_FRAME_BYTES,
                },
            ),
            ("empty", vec![], FrameError::Incomplete { needed: 10 }),
            (
                "header only",
                good[..HEADER_LEN].to_vec(),
                FrameError::Incomplete {
                    needed: good.len() - HEADER_LEN,
                },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn payload_errors() {
        let mut newer = serde_json::to_value(match frame(1) {
            Frame::Report(r) => r,
        })
        .unwrap();
        newer["report"]["version"] = 2.into();
        let mut odd_state = newer.clone();
        odd_state["report"]["version"] = 1.into();
        odd_state["report"]["state"] = "sideways".into();
        let mut no_sequence = odd_state.clone();
        no_sequence["report"]["state"] = "ok".into();
        no_sequence["report"]
            .as_object_mut()
            .unwrap()
            .remove("sequence");

        let decoded =
            |value: &serde_json::Value| decode(&with_payload(value.to_string().as_bytes()));
        assert_eq!(
            decoded(&newer).unwrap_err(),
            FrameError::UnsupportedReportVersion { version: 2 }
        );
        for (name, value) in [("unknown state", &odd_state), ("no sequence", &no_sequence)] {
            assert!(
                matches!(decoded(value), Err(FrameError::BadPayload { .. })),
                "{name}"
            );
        }
        assert!(matches!(
            decode(&with_payload(b"not json")),
            Err(FrameError::BadPayload { .. })
        ));
        assert!(matches!(
            decode(&with_payload(b"")),
            Err(FrameError::BadPayload { .. })
        ));
    }

    #[test]
    fn refuses_to_encode_an_oversized_report() {
        let mut big = report(1);
        big.client_rtt = (0..5000)
            .map(|i| ReceivedClientRtt {
                prefix: format!("10.{}.{}.0/24", i / 256, i % 256),
                rtt_ms: 1.0,
                samples: 1,
            })
            .collect();
        assert!(matches!(
            encode_report(&big, 1000),
            Err(FrameError::TooLarge {
                max: MAX_FRAME_BYTES,
                ..
            })
        ));
    }

    /// Decimal values with few digits, as the relay rounds them: these survive JSON exactly.
    fn decimal() -> impl Strategy<Value = f64> {
        (0u32..10_000_000).prop_map(|n| f64::from(n) / 1000.0)
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let state = prop_oneof![
            Just(ReportedState::Ok),
            Just(ReportedState::Degraded),
            Just(ReportedState::Draining),
            Just(ReportedState::Down),
        ];
        let model = (
            (0u32..64, 0u32..64, any::<u64>()),
            (decimal(), decimal(), decimal(), decimal(), decimal()),
        )
            .prop_map(
                |((healthy, total, units), (headroom, fraction, saturation, ttft, itl))| {
                    ReceivedModel {
                        healthy_backends: healthy,
                        total_backends: total,
                        capacity_units: units,
                        headroom_units: headroom,
                        headroom_fraction: fraction,
                        saturation,
                        ttft_p95_ms: ttft,
                        inter_token_p95_ms: itl,
                    }
                },
            );
        let rtt =
            ("[a-z0-9./:]{1,20}", decimal(), any::<u64>()).prop_map(|(prefix, rtt_ms, samples)| {
                ReceivedClientRtt {
                    prefix,
                    rtt_ms,
                    samples,
                }
            });
        (
            any::<u64>(),
            "[a-z0-9-]{1,20}",
            state,
            any::<bool>(),
            decimal(),
            proptest::collection::btree_map("\\PC{0,12}", model, 0..4),
            proptest::collection::vec(rtt, 0..8),
            any::<u32>(),
        )
            .prop_map(
                |(sequence, region, state, accept_new, x, models, client_rtt, validity_ms)| {
                    Frame::Report(ReportFrame {
                        validity_ms,
                        report: ReceivedReport {
                            version: REPORT_VERSION,
                            region,
                            sequence,
                            state,
                            accept_new,
                            saturation: x,
                            capacity_units: sequence / 3,
                            headroom_units: x,
                            headroom_fraction: x,
                            models,
                            rates: ReceivedRates {
                                requests_per_s: x,
                                ..ReceivedRates::default()
                            },
                            client_rtt,
                        },
                    })
                },
            )
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(frame in arb_frame()) {
            let bytes = encode(&frame).unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), (frame, bytes.len()));
        }

        #[test]
        fn every_truncation_is_incomplete(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&frame).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert_eq!(
                decode(&bytes[..cut]).unwrap_err(),
                FrameError::Incomplete { needed: if cut < HEADER_LEN { HEADER_LEN - cut } else { bytes.len() - cut } }
            );
        }

        #[test]
        fn byte_flips_never_panic(
            frame in arb_frame(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = encode(&frame).unwrap().to_vec();
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            // A flip inside a string or a digit can leave a valid frame; it must not read past
            // the input.
            if let Ok((_, used)) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let mut framed = with_payload(&bytes);
            let _ = decode(&framed);
            framed.truncate(framed.len() / 2);
            let _ = decode(&framed);
        }
    }
}
