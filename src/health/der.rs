//! Just enough DER to read three things out of an X.509 certificate: the subject's common
//! name, the subject public key info, and the URIs of the subject alternative names.
//!
//! The crate has no X.509 parser (rustls and webpki verify certificates but do not expose
//! their contents), and these reads do not justify one. Every read is bounds-checked and
//! returns [`DerError`] on anything unexpected; nothing here verifies a signature: callers
//! read certificates that rustls has already verified, or that they have just issued.

/// What was wrong, for the error message; the input is not echoed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(pub &'static str);

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const ISSUER_UID: u8 = 0x81;
const SUBJECT_UID: u8 = 0x82;
const EXTENSIONS: u8 = 0xa3;
const SAN_URI: u8 = 0x86;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

/// 2.5.29.17
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.4.3
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One tag-length-value: its tag, its contents, and the whole encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    whole: &'a [u8],
}

/// Reads one TLV from the start of `input`, returning it and what follows.
fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tag"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        // 0x80 is BER's indefinite length; more than 4 length bytes is beyond any certificate.
        if count == 0 || count > 4 {
            return Err(DerError("unsupported length encoding"));
        }
        let (bytes, after) = rest
            .split_at_checked(count)
            .ok_or(DerError("truncated length"))?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte))
    };
    let (contents, rest) = rest
        .split_at_checked(len)
        .ok_or(DerError("length beyond the input"))?;
    let header = input.len() - rest.len() - len;
    Ok((
        Tlv {
            tag,
            contents,
            whole: &input[..header + len],
        },
        rest,
    ))
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Tlv<'a>, &'a [u8]), DerError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(DerError(what));
    }
    Ok((tlv, rest))
}

/// The parts of a certificate's `tbsCertificate` this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertParts<'a> {
    /// Contents of the subject `Name` (the RDN sequence).
    pub subject: &'a [u8],
    /// The whole `SubjectPublicKeyInfo` encoding.
    pub spki: &'a [u8],
    /// Contents of the `Extensions` sequence, if the certificate has one.
    pub extensions: Option<&'a [u8]>,
}

pub fn cert_parts(der: &[u8]) -> Result<CertParts<'_>, DerError> {
    let (cert, _) = expect(der, SEQUENCE, "certificate is not a sequence")?;
    let (tbs, _) = expect(cert.contents, SEQUENCE, "tbsCertificate is not a sequence")?;
    let mut rest = tbs.contents;
    let (first, after) = read_tlv(rest)?;
    if first.tag == VERSION {
        rest = after;
    }
    let (_, rest) = expect(rest, INTEGER, "serial number is not an integer")?;
    let (_, rest) = expect(rest, SEQUENCE, "signature algorithm is not a sequence")?;
    let (_, rest) = expect(rest, SEQUENCE, "issuer is not a sequence")?;
    let (_, rest) = expect(rest, SEQUENCE, "validity is not a sequence")?;
    let (subject, rest) = expect(rest, SEQUENCE, "subject is not a sequence")?;
    let (spki, mut rest) = expect(rest, SEQUENCE, "subject public key info is not a sequence")?;
    let mut extensions = None;
    while !rest.is_empty() {
        let (field, after) = read_tlv(rest)?;
        match field.tag {
            ISSUER_UID | SUBJECT_UID => {}
            EXTENSIONS => {
                let (list, _) = expect(field.contents, SEQUENCE, "extensions are not a sequence")?;
                extensions = Some(list.contents);
            }
            _ => return Err(DerError("unexpected field in tbsCertificate")),
        }
        rest = after;
    }
    Ok(CertParts {
        subject: subject.contents,
        spki: spki.whole,
        extensions,
    })
}

/// The URIs among the subject alternative names, as raw IA5 bytes.
pub fn san_uris<'a>(parts: &CertParts<'a>) -> Result<Vec<&'a [u8]>, DerError> {
    let mut uris = Vec::new();
    let mut rest = parts.extensions.unwrap_or_default();
    while !rest.is_empty() {
        let (extension, after) = expect(rest, SEQUENCE, "extension is not a sequence")?;
        rest = after;
        let (oid, mut fields) = expect(extension.contents, OID, "extension id is not an OID")?;
        if oid.contents != OID_SUBJECT_ALT_NAME {
            continue;
        }
        let (maybe_critical, after) = read_tlv(fields)?;
        if maybe_critical.tag == BOOLEAN {
            fields = after;
        }
        let (value, _) = expect(
            fields,
            OCTET_STRING,
            "extension value is not an octet string",
        )?;
        let (names, _) = expect(
            value.contents,
            SEQUENCE,
            "alternative names are not a sequence",
        )?;
        let mut names = names.contents;
        while !names.is_empty() {
            let (name, after) = read_tlv(names)?;
            if name.tag == SAN_URI {
                uris.push(name.contents);
            }
            names = after;
        }
    }
    Ok(uris)
}

/// The subject's common names (normally one).
pub fn common_names<'a>(parts: &CertParts<'a>) -> Result<Vec<&'a [u8]>, DerError> {
    let mut names = Vec::new();
    let mut rdns = parts.subject;
    while !rdns.is_empty() {
        let (rdn, after) = expect(rdns, SET, "relative distinguished name is not a set")?;
        rdns = after;
        let mut attributes = rdn.contents;
        while !attributes.is_empty() {
            let (attribute, after) = expect(attributes, SEQUENCE, "attribute is not a sequence")?;
            attributes = after;
            let (oid, value) = expect(attribute.contents, OID, "attribute type is not an OID")?;
            if oid.contents != OID_COMMON_NAME {
                continue;
            }
            let (value, _) = read_tlv(value)?;
            if !matches!(value.tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING) {
                return Err(DerError("common name is not a text string"));
            }
            names.push(value.contents);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;

    use super::*;

    #[test]
    fn reads_lengths_in_both_forms_and_refuses_the_rest() {
        let long: Vec<u8> = [&[0x04, 0x81, 0x80][..], &[7u8; 128]].concat();
        // (name, input, (tag, contents length, bytes left after the TLV))
        type Case = (&'static str, Vec<u8>, Result<(u8, usize, usize), DerError>);
        let cases: Vec<Case> = vec![
            ("short", vec![0x04, 0x02, 1, 2, 9], Ok((0x04, 2, 1))),
            ("empty contents", vec![0x05, 0x00], Ok((0x05, 0, 0))),
            ("long form", long.clone(), Ok((0x04, 128, 0))),
            ("no tag", vec![], Err(DerError("truncated tag"))),
            ("no length", vec![0x04], Err(DerError("truncated length"))),
            (
                "indefinite",
                vec![0x30, 0x80, 0, 0],
                Err(DerError("unsupported length encoding")),
            ),
            (
                "five length bytes",
                vec![0x04, 0x85, 0, 0, 0, 0, 1, 0],
                Err(DerError("unsupported length encoding")),
            ),
            (
                "long length cut",
                vec![0x04, 0x82, 0x01],
                Err(DerError("truncated length")),
            ),
            (
                "contents cut",
                vec![0x04, 0x03, 1, 2],
                Err(DerError("length beyond the input")),
            ),
            (
                "huge length",
                vec![0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0],
                Err(DerError("length beyond the input")),
            ),
            (
                "multi-byte tag",
                vec![0x1f, 0x01, 0x00],
                Err(DerError("multi-byte tag")),
            ),
        ];
        for (name, input, want) in cases {
            let got = read_tlv(&input).map(|(tlv, rest)| (tlv.tag, tlv.contents.len(), rest.len()));
            assert_eq!(got, want, "{name}");
            if let Ok((tlv, rest)) = read_tlv(&input) {
                assert_eq!(tlv.whole.len() + rest.len(), input.len(), "{name}");
            }
        }
    }

    #[test]
    fn reads_names_and_key_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["api.example.test".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Meridian");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "eu-west");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "meridian:region:eu-west".try_into().unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::URI(
            "https://example.test/".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();

        let parts = cert_parts(cert.der()).unwrap();
        assert_eq!(parts.spki, key.subject_public_key_info());
        assert_eq!(common_names(&parts).unwrap(), vec![b"eu-west".as_slice()]);
        assert_eq!(
            san_uris(&parts).unwrap(),
            vec![
                b"meridian:region:eu-west".as_slice(),
                b"https://example.test/".as_slice()
            ]
        );
    }

    /// No truncation of a real certificate panics, and none parses into something else.
    #[test]
    fn every_truncation_of_a_certificate_fails_cleanly() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            assert!(cert_parts(&der[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn relay_cert_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["api.example.test".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "meridian:region:eu-west".try_into().unwrap(),
        ));
        params.self_signed(&key).unwrap().der().to_vec()
    }

    proptest::proptest! {
        /// Reading a damaged certificate gives an answer or an error, never a panic.
        #[test]
        fn byte_flips_in_a_certificate_never_panic(
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut der = relay_cert_der();
            let at = at.index(der.len());
            der[at] ^= flip;
            if let Ok(parts) = cert_parts(&der) {
                let _ = san_uris(&parts);
                let _ = common_names(&parts);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(parts) = cert_parts(&bytes) {
                let _ = san_uris(&parts);
                let _ = common_names(&parts);
            }
        }
    }
}
