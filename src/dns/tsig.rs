//! TSIG (RFC 8945): the shared-secret signatures zone transfers and NOTIFYs carry.
//!
//! This module owns the TSIG wire format and the MAC arithmetic: finding and checking the TSIG
//! record of a request ([`verify_request`]), signing responses, a multi-message transfer
//! included ([`ResponseSigner`]), and signing requests ([`sign_request`]). Everything but
//! [`Key::load`] is pure: messages are bytes in, bytes out, and the clock is a parameter
//! (`now`, seconds since the Unix epoch). It decides nothing about who may transfer what;
//! `super::transfer` does, and `super::notify` signs what it sends.
//!
//! A key's secret never leaves [`Key`]: its `Debug` shows the name and algorithm only, and
//! no error carries it, so it cannot reach a log line.

use std::{fmt, path::PathBuf};

use hickory_proto::{
    rr::Name,
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable},
};
use ring::hmac;

use crate::config::model::{TsigAlgorithm, TsigKey};

/// The TSIG record type (RFC 8945 §4.2).
const TYPE_TSIG: u16 = 250;
/// Class ANY, which a TSIG record must have.
const CLASS_ANY: u16 = 255;
/// Seconds of clock difference we allow and ask peers to allow (RFC 8945 §10 recommends 300).
pub const FUDGE: u16 = 300;
/// Where ARCOUNT sits in the header.
const ARCOUNT_AT: usize = 10;

/// TSIG error codes (RFC 8945 §3; the TSIG record's Error field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigError {
    /// The MAC does not verify.
    BadSig = 16,
    /// The key is unknown to us, or not the one this zone takes.
    BadKey = 17,
    /// Signed outside the fudge window around our clock.
    BadTime = 18,
}

impl fmt::Display for TsigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TsigError::BadSig => "BADSIG",
            TsigError::BadKey => "BADKEY",
            TsigError::BadTime => "BADTIME",
        })
    }
}

/// A key ready to sign and verify with. The secret stays inside.
pub struct Key {
    name: Name,
    algorithm: TsigAlgorithm,
    hmac: hmac::Key,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a key's secret could not be loaded. Never carries the secret, not even a part of it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the secret of TSIG key {name} from {path}: {source}")]
    Read {
        name: Name,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret file {path} of TSIG key {name} is readable by group or others (mode {mode:o}); make it 0600"
    )]
    Permissions {
        name: Name,
        path: PathBuf,
        mode: u32,
    },
    #[error("the secret file {path} of TSIG key {name} is not one base64 secret")]
    NotBase64 { name: Name, path: PathBuf },
    #[error("the secret file {path} of TSIG key {name} holds an empty secret")]
    Empty { name: Name, path: PathBuf },
}

impl Key {
    pub fn new(name: Name, algorithm: TsigAlgorithm, secret: &[u8]) -> Key {
        let hmac_algorithm = match algorithm {
            TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        };
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Key {
            name,
            algorithm,
            hmac: hmac::Key::new(hmac_algorithm, secret),
        }
    }

    /// Reads the key's secret file: one base64 secret (surrounding whitespace ignored), in a
    /// file no one but its owner may read. Read at each use, so a rotated secret takes effect
    /// without a reload.
    pub fn load(spec: &TsigKey) -> Result<Key, KeyError> {
        let (name, path) = (&spec.name, &spec.secret_file);
        let read_error = |source| KeyError::Read {
            name: name.clone(),
            path: path.clone(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    name: name.clone(),
                    path: path.clone(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let secret = decode_base64(text.trim()).ok_or_else(|| KeyError::NotBase64 {
            name: name.clone(),
            path: path.clone(),
        })?;
        if secret.is_empty() {
            return Err(KeyError::Empty {
                name: name.clone(),
                path: path.clone(),
            });
        }
        Ok(Key::new(name.clone(), spec.algorithm, &secret))
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    pub fn algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    fn algorithm_name(&self) -> Name {
        // The names are constants that always parse.
        Name::from_ascii(self.algorithm.name()).map_or_else(
            |_| Name::root(),
            |mut name| {
                name.set_fqdn(true);
                name
            },
        )
    }

    fn mac_len(&self) -> usize {
        self.hmac.algorithm().digest_algorithm().output_len()
    }
}

/// Standard base64 (RFC 4648 §4) with padding, as TSIG secrets are written.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut group = 0u32;
        for &c in &chunk[..4 - padding] {
            group = group << 6 | value(c)?;
        }
        group <<= 6 * padding as u32;
        let decoded = [(group >> 16) as u8, (group >> 8) as u8, group as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

/// The TSIG record of a received message, and the message as it was before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Lower-case.
    pub key_name: Name,
    /// Lower-case.
    pub algorithm: Name,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub original_id: u16,
    pub error: u16,
    pub other: Vec<u8>,
    /// The message without its TSIG record: ARCOUNT one less, the original ID restored.
    pub unsigned: Vec<u8>,
}

/// Why a message's records could not be walked to its TSIG record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: cannot locate its TSIG record")]
pub struct Malformed;

/// The TSIG record of `packet`, if its last additional record is one. A TSIG record anywhere
/// else is not a signature (RFC 8945 §5.1 puts it last), so it is not looked for.
pub fn find(packet: &[u8]) -> Result<Option<Received>, Malformed> {
    let count = |at: usize| -> Result<u16, Malformed> {
        packet
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Malformed)
    };
    let (qdcount, ancount, nscount, arcount) = (count(4)?, count(6)?, count(8)?, count(10)?);
    if arcount == 0 {
        return Ok(None);
    }
    let mut decoder = BinDecoder::new(packet);
    decoder.read_slice(12).map_err(|_| Malformed)?;
    for _ in 0..qdcount {
        Name::read(&mut decoder).map_err(|_| Malformed)?;
        decoder.read_slice(4).map_err(|_| Malformed)?;
    }
    let before_last = u32::from(ancount) + u32::from(nscount) + u32::from(arcount) - 1;
    for _ in 0..before_last {
        Name::read(&mut decoder).map_err(|_| Malformed)?;
        decoder.read_slice(8).map_err(|_| Malformed)?;
        let length = read_u16(&mut decoder)?;
        decoder
            .read_slice(usize::from(length))
            .map_err(|_| Malformed)?;
    }
    let record_at = decoder.index();
    let key_name = Name::read(&mut decoder).map_err(|_| Malformed)?;
    let rtype = read_u16(&mut decoder)?;
    let class = read_u16(&mut decoder)?;
    if rtype != TYPE_TSIG {
        return Ok(None);
    }
    decoder.read_slice(4).map_err(|_| Malformed)?; // TTL
    let length = usize::from(read_u16(&mut decoder)?);
    let rdata_at = decoder.index();
    let algorithm = Name::read(&mut decoder).map_err(|_| Malformed)?;
    let high = u64::from(read_u16(&mut decoder)?);
    let low = u64::from(read_u32(&mut decoder)?);
    let fudge = read_u16(&mut decoder)?;
    let mac_len = usize::from(read_u16(&mut decoder)?);
    let mac = read_vec(&mut decoder, mac_len)?;
    let original_id = read_u16(&mut decoder)?;
    let error = read_u16(&mut decoder)?;
    let other_len = usize::from(read_u16(&mut decoder)?);
    let other = read_vec(&mut decoder, other_len)?;
    if class != CLASS_ANY || decoder.index() != rdata_at + length || !decoder.is_empty() {
        return Err(Malformed);
    }
    let mut unsigned = packet[..record_at].to_vec();
    unsigned[..2].copy_from_slice(&original_id.to_be_bytes());
    unsigned[ARCOUNT_AT..ARCOUNT_AT + 2].copy_from_slice(&(arcount - 1).to_be_bytes());
    Ok(Some(Received {
        key_name: key_name.to_lowercase(),
        algorithm: algorithm.to_lowercase(),
        time_signed: high << 32 | low,
        fudge,
        mac,
        original_id,
        error,
        other,
        unsigned,
    }))
}

fn read_u16(decoder: &mut BinDecoder<'_>) -> Result<u16, Malformed> {
    let b = decoder.read_slice(2).map_err(|_| Malformed)?.unverified();
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn read_u32(decoder: &mut BinDecoder<'_>) -> Result<u32, Malformed> {
    let b = decoder.read_slice(4).map_err(|_| Malformed)?.unverified();
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_vec(decoder: &mut BinDecoder<'_>, length: usize) -> Result<Vec<u8>, Malformed> {
    Ok(decoder
        .read_slice(length)
        .map_err(|_| Malformed)?
        .unverified()
        .to_vec())
}

/// Why a signed request was not accepted: the TSIG error to answer with (RFC 8945 §5.2),
/// and what the error response needs of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub error: TsigError,
    pub request: Box<Received>,
}

/// Checks `request`'s TSIG record against `key`, in RFC 8945 §5.2's order: the key (name and
/// algorithm), then the MAC, then the time. `Ok`: the request's MAC, which the response's
/// MAC covers.
pub fn verify_request(key: &Key, request: Received, now: u64) -> Result<Vec<u8>, Rejection> {
    let reject = |error, request| {
        Err(Rejection {
            error,
            request: Box::new(request),
        })
    };
    if request.key_name != key.name || request.algorithm != key.algorithm_name() {
        return reject(TsigError::BadKey, request);
    }
    // Only full-length MACs: truncation (RFC 8945 §5.2.2.1) buys nothing over TCP.
    if request.mac.len() != key.mac_len() {
        return reject(TsigError::BadSig, request);
    }
    let mut signed = request.unsigned.clone();
    variables(
        &mut signed,
        key,
        request.time_signed,
        request.fudge,
        request.error,
        &request.other,
    );
    if hmac::verify(&key.hmac, &signed, &request.mac).is_err() {
        return reject(TsigError::BadSig, request);
    }
    if now.abs_diff(request.time_signed) > u64::from(request.fudge) {
        return reject(TsigError::BadTime, request);
    }
    Ok(request.mac)
}

/// The TSIG variables a first message's MAC covers (RFC 8945 §4.3.3).
fn variables(out: &mut Vec<u8>, key: &Key, time: u64, fudge: u16, error: u16, other: &[u8]) {
    emit_name(out, &key.name);
    out.extend_from_slice(&CLASS_ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    emit_name(out, &key.algorithm_name());
    timers(out, time, fudge);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(other.len() as u16).to_be_bytes());
    out.extend_from_slice(other);
}

fn timers(out: &mut Vec<u8>, time: u64, fudge: u16) {
    out.extend_from_slice(&((time >> 32) as u16).to_be_bytes());
    out.extend_from_slice(&(time as u32).to_be_bytes());
    out.extend_from_slice(&fudge.to_be_bytes());
}

/// Canonical (lower-case, uncompressed) wire form.
fn emit_name(out: &mut Vec<u8>, name: &Name) {
    // A fresh encoder has nothing to compress against; a `Name` always encodes.
    if let Ok(bytes) = name.to_lowercase().to_bytes() {
        out.extend_from_slice(&bytes);
    }
}

/// The fields of a TSIG record to append.
struct Record<'a> {
    time: u64,
    mac: &'a [u8],
    original_id: u16,
    error: u16,
    other: &'a [u8],
}

/// Appends a TSIG record to `message` and counts it in ARCOUNT.
fn append(message: &mut Vec<u8>, key_name: &Name, algorithm: &Name, record: Record<'_>) {
    let arcount = message
        .get(ARCOUNT_AT..ARCOUNT_AT + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if message.len() < 12 || arcount == u16::MAX {
        return;
    }
    message[ARCOUNT_AT..ARCOUNT_AT + 2].copy_from_slice(&(arcount + 1).to_be_bytes());
    emit_name(message, key_name);
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let length_at = message.len();
    message.extend_from_slice(&[0, 0]);
    emit_name(message, algorithm);
    timers(message, record.time, FUDGE);
    message.extend_from_slice(&(record.mac.len() as u16).to_be_bytes());
    message.extend_from_slice(record.mac);
    message.extend_from_slice(&record.original_id.to_be_bytes());
    message.extend_from_slice(&record.error.to_be_bytes());
    message.extend_from_slice(&(record.other.len() as u16).to_be_bytes());
    message.extend_from_slice(record.other);
    let length = (message.len() - length_at - 2) as u16;
    message[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
}

fn message_id(message: &[u8]) -> u16 {
    message
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// Signs `message` as a request (a NOTIFY): MAC over the message and the TSIG variables.
/// Returns the MAC, which the response's MAC covers.
pub fn sign_request(key: &Key, message: &mut Vec<u8>, now: u64) -> Vec<u8> {
    let mut signed = message.clone();
    variables(&mut signed, key, now, FUDGE, 0, &[]);
    let mac = hmac::sign(&key.hmac, &signed).as_ref().to_vec();
    let original_id = message_id(message);
    let record = Record {
        time: now,
        mac: &mac,
        original_id,
        error: 0,
        other: &[],
    };
    append(message, &key.name, &key.algorithm_name(), record);
    mac
}

/// Appends the unsigned TSIG record of a BADKEY or BADSIG response (RFC 8945 §5.3.2: the MAC
/// is empty, as the key is unknown or the request's MAC could not be trusted).
pub fn append_unsigned_error(message: &mut Vec<u8>, rejection: &Rejection) {
    let request = &rejection.request;
    let record = Record {
        time: request.time_signed,
        mac: &[],
        original_id: message_id(message),
        error: rejection.error as u16,
        other: &[],
    };
    append(message, &request.key_name, &request.algorithm, record);
}

/// Signs the messages of one response in order (RFC 8945 §5.3.1): the first message's MAC
/// covers the request's MAC, the message and the TSIG variables; each following message's
/// MAC covers the previous MAC, the message and the timers alone.
#[derive(Debug)]
pub struct ResponseSigner<'k> {
    key: &'k Key,
    /// The MAC the next message's MAC chains from: the request's, then the last sent.
    prior_mac: Vec<u8>,
    first: bool,
}

impl<'k> ResponseSigner<'k> {
    pub fn new(key: &'k Key, request_mac: Vec<u8>) -> ResponseSigner<'k> {
        ResponseSigner {
            key,
            prior_mac: request_mac,
            first: true,
        }
    }

    /// Signs the next message of the response.
    pub fn sign(&mut self, message: &mut Vec<u8>, now: u64) {
        self.sign_with(message, now, 0, &[]);
    }

    /// Signs a BADTIME response (RFC 8945 §5.2.3): the request's time signed, our clock in
    /// Other Data, so the client can see how far apart the clocks are.
    pub fn sign_bad_time(&mut self, message: &mut Vec<u8>, request_time: u64, now: u64) {
        let ours = now.to_be_bytes();
        self.sign_with(message, request_time, TsigError::BadTime as u16, &ours[2..]);
    }

    fn sign_with(&mut self, message: &mut Vec<u8>, time: u64, error: u16, other: &[u8]) {
        let mut signed = Vec::with_capacity(message.len() + 128);
        signed.extend_from_slice(&(self.prior_mac.len() as u16).to_be_bytes());
        signed.extend_from_slice(&self.prior_mac);
        signed.extend_from_slice(message);
        if self.first {
            variables(&mut signed, self.key, time, FUDGE, error, other);
        } else {
            timers(&mut signed, time, FUDGE);
        }
        let mac = hmac::sign(&self.key.hmac, &signed).as_ref().to_vec();
        let original_id = message_id(message);
        let record = Record {
            time,
            mac: &mac,
            original_id,
            error,
            other,
        };
        append(message, &self.key.name, &self.key.algorithm_name(), record);
        self.prior_mac = mac;
        self.first = false;
    }
}

/// Seconds since the Unix epoch, the clock TSIG times are in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig -y hmac-sha256:xfr-key.:c2VjcmV0…MTIzNA== example.test. AXFR` (BIND 9), as sent
    /// over TCP without the length prefix: an independent implementation's signature.
    const DIG_AXFR: &str = "4bda00200001000000000001076578616d706c6504746573740000fc0001\
        077866722d6b65790000fa00ff00000000003d0b686d61632d7368613235360000006b016b47012c\
        0020468c3d94501e42dd35c1f1d7ba66937f9eeb62f69580e354082dc87de579a8274bda00000000";
    const DIG_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
    const DIG_TIME: u64 = 0x6b01_6b47;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn dig_key() -> Key {
        let secret = decode_base64(DIG_SECRET).unwrap();
        Key::new(name("xfr-key."), TsigAlgorithm::HmacSha256, &secret)
    }

    fn verify(key: &Key, packet: &[u8], now: u64) -> Result<Vec<u8>, TsigError> {
        let received = find(packet).unwrap().expect("a TSIG record");
        verify_request(key, received, now).map_err(|rejection| rejection.error)
    }

    #[test]
    fn base64_decodes_standard_padded_text_only() {
        for (text, bytes) in [
            ("", &b""[..]),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYmFy", b"foobar"),
            ("+/+/", &[0xfb, 0xff, 0xbf]),
        ] {
            assert_eq!(decode_base64(text).as_deref(), Some(bytes), "{text}");
        }
        for bad in ["Zg", "Zg=a", "Z===", "Zg==Zg==", "Zm9v!", "-_-_"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_signed_by_dig_verifies() {
        let packet = hex(DIG_AXFR);
        let received = find(&packet).unwrap().unwrap();
        assert_eq!(received.key_name, name("xfr-key."));
        assert_eq!(received.algorithm, name("hmac-sha256."));
        assert_eq!(received.time_signed, DIG_TIME);
        assert_eq!(received.fudge, 300);
        assert_eq!(received.original_id, 0x4bda);
        // The unsigned message is the packet up to the TSIG record, ARCOUNT back to 0.
        assert_eq!(&received.unsigned[10..12], &[0, 0]);
        assert_eq!(received.unsigned[2..10], packet[2..10]);
        let mac = verify(&dig_key(), &packet, DIG_TIME).unwrap();
        assert_eq!(mac, received.mac);
        assert_eq!(mac.len(), 32);
    }

    #[test]
    fn rejections_follow_rfc_8945_in_order() {
        let packet = hex(DIG_AXFR);
        let key = dig_key();
        let secret = decode_base64(DIG_SECRET).unwrap();
        let cases: Vec<(&str, Key, u64, Result<(), TsigError>)> = vec![
            ("in the fudge, early", dig_key(), DIG_TIME - 300, Ok(())),
            ("in the fudge, late", dig_key(), DIG_TIME + 300, Ok(())),
            (
                "too late",
                dig_key(),
                DIG_TIME + 301,
                Err(TsigError::BadTime),
            ),
            (
                "too early",
                dig_key(),
                DIG_TIME - 301,
                Err(TsigError::BadTime),
            ),
            (
                "another key's name",
                Key::new(name("other."), TsigAlgorithm::HmacSha256, &secret),
                DIG_TIME,
                Err(TsigError::BadKey),
            ),
            (
                "another algorithm",
                Key::new(name("xfr-key."), TsigAlgorithm::HmacSha512, &secret),
                DIG_TIME,
                Err(TsigError::BadKey),
            ),
            (
                "another secret",
                Key::new(name("XFR-KEY."), TsigAlgorithm::HmacSha256, b"wrong"),
                DIG_TIME,
                Err(TsigError::BadSig),
            ),
            (
                // BADSIG wins over BADTIME: an unverified time means nothing.
                "another secret, late",
                Key::new(name("xfr-key."), TsigAlgorithm::HmacSha256, b"wrong"),
                DIG_TIME + 10_000,
                Err(TsigError::BadSig),
            ),
        ];
        for (what, key, now, expected) in cases {
            assert_eq!(verify(&key, &packet, now).map(drop), expected, "{what}");
        }
        // Any changed octet of the message (but its ID, which the TSIG record restores) or of
        // the TSIG record's time and fudge breaks the MAC. (Flipping bit 0 keeps the key
        // name's case out of it: names compare case-insensitively.)
        let (tsig_at, time_at) = (30, 30 + 9 + 10 + 13);
        for at in (2..tsig_at).chain([time_at + 5, time_at + 7]) {
            let mut tampered = packet.clone();
            tampered[at] ^= 0x01;
            let outcome = find(&tampered)
                .ok()
                .flatten()
                .map(|received| verify_request(&key, received, DIG_TIME).map_err(|r| r.error));
            assert!(
                !matches!(outcome, Some(Ok(_))),
                "octet {at} changed, still verified"
            );
        }
    }

    #[test]
    fn messages_without_a_final_tsig_record_have_none() {
        let packet = hex(DIG_AXFR);
        let unsigned = find(&packet).unwrap().unwrap().unsigned;
        assert_eq!(find(&unsigned), Ok(None));
        assert_eq!(find(&packet[..packet.len() - 1]), Err(Malformed));
        assert_eq!(find(&packet[..5]), Err(Malformed));
    }

    /// What a client does with a signed response (RFC 8945 §5.3.1), written from the RFC
    /// rather than from the signer.
    fn client_check(key_secret: &[u8], prior: &[u8], message: &[u8], first: bool) -> Vec<u8> {
        let received = find(message).unwrap().expect("signed");
        let mut data = (prior.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(prior);
        data.extend_from_slice(&received.unsigned);
        if first {
            data.extend_from_slice(b"\x07xfr-key\x00\x00\xff\x00\x00\x00\x00");
            data.extend_from_slice(b"\x0bhmac-sha256\x00");
        }
        data.extend_from_slice(&received.time_signed.to_be_bytes()[2..]);
        data.extend_from_slice(&received.fudge.to_be_bytes());
        if first {
            data.extend_from_slice(&received.error.to_be_bytes());
            data.extend_from_slice(&(received.other.len() as u16).to_be_bytes());
            data.extend_from_slice(&received.other);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, key_secret);
        hmac::verify(&key, &data, &received.mac).expect("the MAC verifies");
        received.mac
    }

    #[test]
    fn each_message_of_a_response_chains_from_the_previous_mac() {
        let key = dig_key();
        let secret = decode_base64(DIG_SECRET).unwrap();
        let request_mac = verify(&key, &hex(DIG_AXFR), DIG_TIME).unwrap();
        let mut signer = ResponseSigner::new(&key, request_mac.clone());
        let mut prior = request_mac;
        for i in 0..3u8 {
            // Header (id 0x4bda, QR AA), a question for the root, of a type that differs.
            let mut message = vec![0x4b, 0xda, 0x84, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, i, 0, 1];
            signer.sign(&mut message, DIG_TIME + u64::from(i));
            assert_eq!(&message[10..12], &[0, 1], "the TSIG record is counted");
            let received = find(&message).unwrap().unwrap();
            assert_eq!(received.time_signed, DIG_TIME + u64::from(i));
            assert_eq!(received.original_id, 0x4bda);
            prior = client_check(&secret, &prior, &message, i == 0);
        }
    }

    #[test]
    fn a_signed_request_verifies_and_error_records_carry_the_error() {
        let key = Key::new(name("n."), TsigAlgorithm::HmacSha512, b"0123456789");
        let mut message = vec![0x12, 0x34, 0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1];
        let mac = sign_request(&key, &mut message, 1_000);
        assert_eq!(mac.len(), 64);
        assert_eq!(verify(&key, &message, 1_000), Ok(mac));

        let rejection = verify_request(&key, find(&message).unwrap().unwrap(), 5_000).unwrap_err();
        assert_eq!(rejection.error, TsigError::BadTime);
        let mut response = vec![0x12, 0x34, 0x80, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        ResponseSigner::new(&key, rejection.request.mac.clone()).sign_bad_time(
            &mut response,
            1_000,
            5_000,
        );
        let bad_time = find(&response).unwrap().unwrap();
        assert_eq!(bad_time.error, 18);
        assert_eq!(bad_time.time_signed, 1_000);
        assert_eq!(bad_time.other, 5_000u64.to_be_bytes()[2..]);

        let mut response = vec![0x12, 0x34, 0x80, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        let bad_sig = Rejection {
            error: TsigError::BadSig,
            ..rejection
        };
        append_unsigned_error(&mut response, &bad_sig);
        let record = find(&response).unwrap().unwrap();
        assert_eq!((record.error, record.mac.len()), (16, 0));
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let key = Key::new(name("k."), TsigAlgorithm::HmacSha256, b"very-secret");
        let shown = format!("{key:?}");
        assert!(shown.contains("k.") && !shown.contains("very"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_must_be_private_and_base64() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.b64");
        let spec = TsigKey {
            name: name("k."),
            algorithm: TsigAlgorithm::HmacSha256,
            secret_file: path.clone(),
        };
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        assert!(matches!(Key::load(&spec), Err(KeyError::Read { .. })));
        write(&format!("{DIG_SECRET}\n"), 0o600);
        assert_eq!(Key::load(&spec).unwrap().name(), &name("k."));
        write(DIG_SECRET, 0o640);
        let error = Key::load(&spec).unwrap_err();
        assert!(matches!(error, KeyError::Permissions { mode: 0o640, .. }));
        assert!(!error.to_string().contains(DIG_SECRET));
        write("not base64!", 0o600);
        assert!(matches!(Key::load(&spec), Err(KeyError::NotBase64 { .. })));
        write("\n", 0o400);
        assert!(matches!(Key::load(&spec), Err(KeyError::Empty { .. })));
    }
}
