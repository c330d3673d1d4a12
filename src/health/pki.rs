//! The deployment PKI of the health plane: one private CA per deployment, a certificate per
//! region's relay and per DNS node, and the TLS configurations that use them (design §4).
//!
//! **Identity.** A relay certificate carries its region as a subject-alternative-name URI
//! `meridian:region:<id>`; that URI is the only authoritative source of a sender's region
//! ([`region_of`]). The subject common name repeats the id for people reading certificates and
//! is never consulted. A relay certificate has both the `clientAuth` usage (it authenticates the
//! relay to the DNS nodes' health listeners) and `serverAuth` (the same certificate can serve
//! the relay's public HTTPS for names such as `api.example.test`). A DNS node certificate is
//! `serverAuth` only, so it cannot pose as a relay: rustls' verifier refuses, for client
//! authentication, a certificate whose extended key usages lack `clientAuth`.
//!
//! **Trust.** The health listener trusts exactly one root, the deployment CA, and requires a
//! client certificate; relays trust the same CA, and only it, for the DNS nodes' certificates.
//!
//! This module generates keys and certificates and builds rustls/quinn configurations; apart
//! from [`write_deployment`] it does no IO. It does not decide what an authenticated region
//! may report (that is the ledger).

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::{
    RootCertStore,
    client::danger::ServerCertVerifier,
    crypto::CryptoProvider,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use super::der::{self, DerError};

/// ALPN of the health channel; bump the suffix with [`super::frame::FRAME_VERSION`]-breaking
/// changes that need a different handshake.
pub const HEALTH_ALPN: &[u8] = b"meridian-health/1";
/// Prefix of the SAN URI naming a relay's region.
pub const REGION_URI_PREFIX: &str = "meridian:region:";
/// Prefix of the SAN URI naming a DNS node (informational: nodes are found by address).
pub const NODE_URI_PREFIX: &str = "meridian:dns-node:";

/// Start of validity this far before `now`, so a host whose clock is a little behind the
/// issuer's still accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// A deployment CA outlives many leaf rotations.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PkiError {
    #[error("invalid region id {id:?} (expected 1-63 of a-z, 0-9, '-')")]
    InvalidRegionId { id: String },
    #[error("invalid DNS node id {id:?} (expected 1-63 of a-z, 0-9, '-')")]
    InvalidNodeId { id: String },
    #[error("{name:?} is neither a DNS name nor an IP address")]
    InvalidName { name: String },
    #[error("a DNS node certificate needs at least one DNS name or IP address ({node})")]
    NoServerName { node: String },
    #[error("cannot generate a certificate: {error}")]
    Generate { error: rcgen::Error },
    #[error("{what}: malformed PEM: {reason}")]
    MalformedPem { what: &'static str, reason: String },
    #[error("{what}: {error}")]
    Certificate { what: &'static str, error: DerError },
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate has no common name (not made by `create_ca`?)")]
    CaWithoutCommonName,
    #[error("the issued certificate does not verify against the CA: {reason}")]
    NotIssuedByCa { reason: String },
    #[error("the certificate names no region (no {REGION_URI_PREFIX}<id> URI)")]
    NoRegion,
    #[error("the certificate names several regions: {found:?}")]
    AmbiguousRegion { found: Vec<String> },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("TLS configuration: {error}")]
    Tls { error: rustls::Error },
    #[error("certificate verifier: {reason}")]
    Verifier { reason: String },
    #[error("the TLS configuration has no cipher suite QUIC can start with")]
    NoQuicCipherSuite,
    #[error("{}: already exists; refusing to overwrite a deployment's keys", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {kind}", path.display())]
    Io { path: PathBuf, kind: io::ErrorKind },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// When a certificate is valid. Issuing takes it as a parameter so tests can make expired and
/// not-yet-valid certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub fn ca(now: SystemTime) -> Validity {
        Validity::lasting(now, CA_LIFETIME)
    }

    pub fn leaf(now: SystemTime) -> Validity {
        Validity::lasting(now, LEAF_LIFETIME)
    }

    fn lasting(now: SystemTime, lifetime: Duration) -> Validity {
        Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + lifetime.max(DAY),
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A loaded deployment CA, ready to issue.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Creates a deployment CA named `name` (its subject common name).
pub fn create_ca(name: &str, validity: Validity) -> Result<PemPair, PkiError> {
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = ca_params(name);
    validity.apply(&mut params);
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The CA's subject and usages. [`Ca::from_pem`] rebuilds the issuer from these and the common
/// name read back from the certificate (rcgen cannot parse certificates without `x509-parser`),
/// so both must come from this one function.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// Loads a CA made by [`create_ca`]: the key must match the certificate.
    pub fn from_pem(ca: &PemPair) -> Result<Ca, PkiError> {
        let cert_der = parse_cert(&ca.cert_pem, "CA certificate")?;
        let key = KeyPair::from_pem(&ca.key_pem).map_err(|error| PkiError::MalformedPem {
            what: "CA key",
            reason: error.to_string(),
        })?;
        let parts = der::cert_parts(&cert_der).map_err(|error| PkiError::Certificate {
            what: "CA certificate",
            error,
        })?;
        if parts.spki != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch);
        }
        let names = der::common_names(&parts).map_err(|error| PkiError::Certificate {
            what: "CA certificate",
            error,
        })?;
        let name = match names.as_slice() {
            [name] => std::str::from_utf8(name).map_err(|_| PkiError::CaWithoutCommonName)?,
            _ => return Err(PkiError::CaWithoutCommonName),
        };
        Ok(Ca {
            issuer: Issuer::new(ca_params(name), key),
            cert_der,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        // Checked when loaded: a certificate we parsed and whose key we hold.
        let _ = roots.add(self.cert_der.clone());
        Arc::new(roots)
    }
}

/// Issues the certificate of `region`'s relay: client authentication to the DNS nodes, and
/// server authentication for `names` (DNS names or IP addresses; may be empty).
pub fn issue_relay_cert(
    ca: &Ca,
    region: &str,
    names: &[&str],
    validity: Validity,
) -> Result<PemPair, PkiError> {
    if !is_id(region) {
        return Err(PkiError::InvalidRegionId { id: region.into() });
    }
    let mut params = leaf_params(region, names, validity)?;
    params
        .subject_alt_names
        .push(SanType::URI(ia5(&format!("{REGION_URI_PREFIX}{region}"))?));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let (pair, der) = sign(ca, params)?;
    // Only possible if the CA files are not what `create_ca` made; better now than at the
    // first handshake.
    let verifier = client_verifier_for(ca.roots())?;
    verifier
        .verify_client_cert(
            &der,
            &[],
            UnixTime::since_unix_epoch(unix(validity.not_before)),
        )
        .map_err(|error| PkiError::NotIssuedByCa {
            reason: error.to_string(),
        })?;
    Ok(pair)
}

/// Issues the certificate of DNS node `node`'s health listener (server authentication only)
/// for `names` (DNS names or IP addresses the relays connect to; at least one).
pub fn issue_dns_node_cert(
    ca: &Ca,
    node: &str,
    names: &[&str],
    validity: Validity,
) -> Result<PemPair, PkiError> {
    if !is_id(node) {
        return Err(PkiError::InvalidNodeId { id: node.into() });
    }
    let Some(first) = names.first() else {
        return Err(PkiError::NoServerName { node: node.into() });
    };
    let mut params = leaf_params(node, names, validity)?;
    params
        .subject_alt_names
        .push(SanType::URI(ia5(&format!("{NODE_URI_PREFIX}{node}"))?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (pair, der) = sign(ca, params)?;
    let server_name = server_name(first)?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(ca.roots(), provider())
            .build()
            .map_err(verifier_error)?;
    verifier
        .verify_server_cert(
            &der,
            &[],
            &server_name,
            &[],
            UnixTime::since_unix_epoch(unix(validity.not_before)),
        )
        .map_err(|error| PkiError::NotIssuedByCa {
            reason: error.to_string(),
        })?;
    Ok(pair)
}

fn leaf_params(
    common_name: &str,
    names: &[&str],
    validity: Validity,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    for name in names {
        params.subject_alt_names.push(match server_name(name)? {
            ServerName::IpAddress(ip) => SanType::IpAddress(std::net::IpAddr::from(ip)),
            _ => SanType::DnsName(ia5(name)?),
        });
    }
    Ok(params)
}

fn sign(
    ca: &Ca,
    params: CertificateParams,
) -> Result<(PemPair, CertificateDer<'static>), PkiError> {
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;
    Ok((
        PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        cert.der().clone(),
    ))
}

/// The region a relay's certificate names: its single `meridian:region:<id>` SAN URI.
///
/// Call it on a certificate the TLS layer has verified against the deployment CA; it reads,
/// it does not verify.
pub fn region_of(cert_der: &[u8]) -> Result<String, PkiError> {
    let malformed = |error| PkiError::Certificate {
        what: "peer certificate",
        error,
    };
    let parts = der::cert_parts(cert_der).map_err(malformed)?;
    let found: Vec<String> = der::san_uris(&parts)
        .map_err(malformed)?
        .into_iter()
        .filter_map(|uri| uri.strip_prefix(REGION_URI_PREFIX.as_bytes()))
        .map(|id| String::from_utf8_lossy(id).into_owned())
        .collect();
    match found.as_slice() {
        [] => Err(PkiError::NoRegion),
        [id] if is_id(id) => Ok(id.clone()),
        [id] => Err(PkiError::InvalidRegionId { id: id.clone() }),
        _ => Err(PkiError::AmbiguousRegion { found }),
    }
}

/// The region of the relay at the other end of an authenticated health connection.
pub fn peer_region(connection: &quinn::Connection) -> Result<String, PkiError> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PkiError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(PkiError::NoPeerCertificate)?;
    region_of(leaf)
}

/// A verifier that requires a client certificate chaining to the deployment CA (the only
/// root) and valid for client authentication.
pub fn client_verifier(ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    client_verifier_for(roots(ca_pem)?)
}

fn client_verifier_for(roots: Arc<RootCertStore>) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(verifier_error)
}

/// The DNS node's health listener: TLS 1.3, ALPN [`HEALTH_ALPN`], presenting `identity`, and
/// requiring a relay certificate from the CA in `ca_pem`.
pub fn server_config_with_client_auth(
    ca_pem: &str,
    identity: &PemPair,
) -> Result<quinn::ServerConfig, PkiError> {
    let (chain, key) = identity_der(identity)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(client_verifier(ca_pem)?)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![HEALTH_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|_| PkiError::NoQuicCipherSuite)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A relay's health client: trusts only the CA in `ca_pem` for the DNS nodes, presents
/// `identity`, ALPN [`HEALTH_ALPN`].
pub fn client_config_with_identity(
    ca_pem: &str,
    identity: &PemPair,
) -> Result<quinn::ClientConfig, PkiError> {
    let (chain, key) = identity_der(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![HEALTH_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|_| PkiError::NoQuicCipherSuite)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(parse_cert(ca_pem, "CA certificate")?)
        .map_err(tls_error)?;
    Ok(Arc::new(roots))
}

fn identity_der(
    identity: &PemPair,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PkiError::MalformedPem {
            what: "certificate",
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PkiError::MalformedPem {
            what: "certificate",
            reason: "no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|error| {
        PkiError::MalformedPem {
            what: "private key",
            reason: error.to_string(),
        }
    })?;
    Ok((chain, key))
}

fn parse_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| PkiError::MalformedPem {
        what,
        reason: error.to_string(),
    })
}

/// A relay or DNS node of a deployment: its id and the names its certificate is valid for.
/// Parsed from `ID[=NAME,NAME…]`, e.g. `eu-west=api.example.test,127.0.1.1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub names: Vec<String>,
}

impl FromStr for Member {
    type Err = PkiError;

    fn from_str(spec: &str) -> Result<Member, PkiError> {
        let (id, names) = spec.split_once('=').unwrap_or((spec, ""));
        let names: Vec<String> = names
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        for name in &names {
            server_name(name)?;
        }
        Ok(Member {
            id: id.trim().to_owned(),
            names,
        })
    }
}

/// Creates a deployment in `out` (created if missing): `ca.pem`, `ca-key.pem`, and for each
/// region `relay-<id>.pem` / `relay-<id>-key.pem`, for each node `dns-<id>.pem` /
/// `dns-<id>-key.pem`. Keys are written readable by their owner only. A node without names
/// gets its id as its DNS name. Nothing is overwritten: if any of the files exists, nothing is
/// written. Returns the paths written.
pub fn write_deployment(
    out: &Path,
    regions: &[Member],
    nodes: &[Member],
    now: SystemTime,
) -> Result<Vec<PathBuf>, PkiError> {
    let ca_pair = create_ca("Meridian deployment CA", Validity::ca(now))?;
    let ca = Ca::from_pem(&ca_pair)?;
    let mut files = vec![("ca".to_string(), ca_pair)];
    for region in regions {
        let names: Vec<&str> = region.names.iter().map(String::as_str).collect();
        let pair = issue_relay_cert(&ca, &region.id, &names, Validity::leaf(now))?;
        files.push((format!("relay-{}", region.id), pair));
    }
    for node in nodes {
        let mut names: Vec<&str> = node.names.iter().map(String::as_str).collect();
        if names.is_empty() {
            names.push(&node.id);
        }
        let pair = issue_dns_node_cert(&ca, &node.id, &names, Validity::leaf(now))?;
        files.push((format!("dns-{}", node.id), pair));
    }

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error: io::Error| PkiError::Io {
            path,
            kind: error.kind(),
        }
    };
    fs::create_dir_all(out).map_err(io(out))?;
    let paths: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|(stem, _)| {
            (
                out.join(format!("{stem}.pem")),
                out.join(format!("{stem}-key.pem")),
            )
        })
        .collect();
    if let Some(path) = paths
        .iter()
        .flat_map(|(cert, key)| [cert, key])
        .find(|path| path.exists())
    {
        return Err(PkiError::Exists { path: path.clone() });
    }
    let mut written = Vec::new();
    for ((_, pair), (cert, key)) in files.iter().zip(paths) {
        write_new(&cert, pair.cert_pem.as_bytes(), 0o644).map_err(io(&cert))?;
        write_new(&key, pair.key_pem.as_bytes(), 0o600).map_err(io(&key))?;
        written.extend([cert, key]);
    }
    Ok(written)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The region id rule of the DNS config (`config::validate`), which also keeps ids safe in
/// file names and URIs.
fn is_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn server_name(name: &str) -> Result<ServerName<'static>, PkiError> {
    ServerName::try_from(name.to_owned()).map_err(|_| PkiError::InvalidName { name: name.into() })
}

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(text)
        .map_err(|_| PkiError::InvalidName { name: text.into() })
}

fn unix(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn generate(error: rcgen::Error) -> PkiError {
    PkiError::Generate { error }
}

fn tls_error(error: rustls::Error) -> PkiError {
    PkiError::Tls { error }
}

fn verifier_error(error: rustls::server::VerifierBuilderError) -> PkiError {
    PkiError::Verifier {
        reason: error.to_string(),
    }
}

/// A private-key file that every local user may read or write.
///
/// The policy (docs/security.md, "Files on disk"): bearer tokens and TSIG secrets must be
/// private to their owner and are refused otherwise ([`crate::admin::AdminToken::from_file`]);
/// TLS private keys may be group-readable, because a dedicated group is how the deployments
/// hand them out (`SupplementaryGroups=meridian-tls` with a 0640 key in deploy/systemd, the
/// kubelet's 0440 + `fsGroup` for Secret volumes), and a key others can read is warned about
/// at start and by `meridian check` rather than refused: a certificate renewal that lands
/// with a loose mode must not take a region's front down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is readable or writable by every local user (mode {mode:04o}); restrict it: \
     chmod 600 (or chmod 640 and a group only the service is in)",
    path.display()
)]
pub struct KeyFileExposed {
    pub path: PathBuf,
    pub mode: u32,
}

/// `Some` when the private key at `path` is readable or writable by others (symbolic links
/// followed, as the kubelet's Secret volumes are links). A file that cannot be inspected is
/// not reported here: reading it reports that.
#[cfg(unix)]
pub fn key_file_exposure(path: &Path) -> Option<KeyFileExposed> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o006 != 0).then(|| KeyFileExposed {
        path: path.to_path_buf(),
        mode,
    })
}

#[cfg(not(unix))]
pub fn key_file_exposure(_path: &Path) -> Option<KeyFileExposed> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn keys_others_can_read_or_write_are_reported_group_readable_ones_are_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("relay-key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        for (mode, exposed) in [
            (0o600, false),
            (0o400, false),
            (0o640, false),
            (0o440, false),
            (0o644, true),
            (0o604, true),
            (0o602, true),
            (0o666, true),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let found = key_file_exposure(&key);
            assert_eq!(found.is_some(), exposed, "mode {mode:o}: {found:?}");
            if let Some(found) = found {
                assert_eq!(found.mode, mode);
                let message = found.to_string();
                assert!(message.contains("chmod 600"), "{message}");
                assert!(!message.contains("BEGIN"), "{message}");
            }
        }
        // Followed through a link, as in a Kubernetes Secret volume.
        let link = dir.path().join("tls.key");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert_eq!(key_file_exposure(&link).map(|e| e.mode), Some(0o666));
        assert_eq!(key_file_exposure(&dir.path().join("missing")), None);
    }

    #[test]
    fn private_keys_never_show_in_debug_output() {
        let (ca_pair, ca) = new_ca();
        let relay =
            issue_relay_cert(&ca, "eu-west", &["127.0.0.1"], Validity::leaf(now())).unwrap();
        for (what, shown, key) in [
            ("CA pair", format!("{ca_pair:?}"), &ca_pair.key_pem),
            ("CA", format!("{ca:?}"), &ca_pair.key_pem),
            ("relay pair", format!("{relay:?}"), &relay.key_pem),
        ] {
            let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(!shown.contains("PRIVATE KEY"), "{what}: {shown}");
            assert!(!shown.contains(&body[..32]), "{what}: {shown}");
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600) // 2026-01-01
    }

    fn new_ca() -> (PemPair, Ca) {
        let pair = create_ca("test CA", Validity::ca(now())).unwrap();
        let ca = Ca::from_pem(&pair).unwrap();
        (pair, ca)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn at(time: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(unix(time))
    }

    #[test]
    fn relay_certificates_name_their_region_and_pass_client_verification() {
        let (ca_pair, ca) = new_ca();
        let relay = issue_relay_cert(
            &ca,
            "eu-west",
            &["api.example.test", "127.0.1.1"],
            Validity::leaf(now()),
        )
        .unwrap();
        assert_eq!(region_of(&der(&relay.cert_pem)), Ok("eu-west".to_string()));

        let verifier = client_verifier(&ca_pair.cert_pem).unwrap();
        assert!(verifier.client_auth_mandatory());
        assert!(
            verifier
                .verify_client_cert(&der(&relay.cert_pem), &[], at(now()))
                .is_ok()
        );
        // The same certificate serves the relay's HTTPS names.
        let server =
            rustls::client::WebPkiServerVerifier::builder_with_provider(ca.roots(), provider())
                .build()
                .unwrap();
        for name in ["api.example.test", "127.0.1.1"] {
            let name = ServerName::try_from(name).unwrap();
            assert!(
                server
                    .verify_server_cert(&der(&relay.cert_pem), &[], &name, &[], at(now()))
                    .is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn client_verification_refuses_what_is_not_a_current_relay_of_this_ca() {
        let (ca_pair, ca) = new_ca();
        let (_, other_ca) = new_ca();
        let year = Duration::from_secs(365 * 86_400);
        let expired = Validity {
            not_before: now() - 2 * year,
            not_after: now() - year,
        };
        let not_yet = Validity {
            not_before: now() + year,
            not_after: now() + 2 * year,
        };
        let cases = [
            (
                "another CA",
                issue_relay_cert(&other_ca, "eu-west", &[], Validity::leaf(now())),
            ),
            ("expired", issue_relay_cert(&ca, "eu-west", &[], expired)),
            (
                "not yet valid",
                issue_relay_cert(&ca, "eu-west", &[], not_yet),
            ),
            (
                "server-only usage",
                issue_dns_node_cert(&ca, "dns1", &["dns1.example.test"], Validity::leaf(now())),
            ),
        ];
        let verifier = client_verifier(&ca_pair.cert_pem).unwrap();
        for (name, issued) in cases {
            let cert = der(&issued.unwrap().cert_pem);
            assert!(
                verifier.verify_client_cert(&cert, &[], at(now())).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn dns_node_certificates_carry_no_region() {
        let (_, ca) = new_ca();
        let node = issue_dns_node_cert(&ca, "dns1", &["127.0.0.1", "dns1"], Validity::leaf(now()))
            .unwrap();
        assert_eq!(region_of(&der(&node.cert_pem)), Err(PkiError::NoRegion));
    }

    #[test]
    fn issuing_refuses_bad_ids_and_names() {
        let (_, ca) = new_ca();
        let leaf = Validity::leaf(now());
        let cases = [
            (
                issue_relay_cert(&ca, "EU-West", &[], leaf),
                PkiError::InvalidRegionId {
                    id: "EU-West".into(),
                },
            ),
            (
                issue_relay_cert(&ca, "", &[], leaf),
                PkiError::InvalidRegionId { id: "".into() },
            ),
            (
                issue_relay_cert(&ca, "../etc", &[], leaf),
                PkiError::InvalidRegionId {
                    id: "../etc".into(),
                },
            ),
            (
                issue_relay_cert(&ca, "eu-west", &["bad name!"], leaf),
                PkiError::InvalidName {
                    name: "bad name!".into(),
                },
            ),
            (
                issue_dns_node_cert(&ca, "dns1", &[], leaf),
                PkiError::NoServerName {
                    node: "dns1".into(),
                },
            ),
            (
                issue_dns_node_cert(&ca, "dns/1", &["a.test"], leaf),
                PkiError::InvalidNodeId { id: "dns/1".into() },
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap_err(), want);
        }
    }

    #[test]
    fn a_ca_loads_only_with_its_own_key() {
        let (pair, _) = new_ca();
        let (other, _) = new_ca();
        let mixed = PemPair {
            cert_pem: pair.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert_eq!(Ca::from_pem(&mixed).unwrap_err(), PkiError::KeyMismatch);
        let garbage = PemPair {
            cert_pem: "not pem".into(),
            key_pem: pair.key_pem,
        };
        assert!(matches!(
            Ca::from_pem(&garbage),
            Err(PkiError::MalformedPem {
                what: "CA certificate",
                ..
            })
        ));
    }

    /// Certificates from elsewhere: several region URIs, or a malformed one, are refused.
    #[test]
    fn region_of_requires_exactly_one_well_formed_region() {
        let cert_with = |uris: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            for uri in uris {
                params
                    .subject_alt_names
                    .push(SanType::URI(ia5(uri).unwrap()));
            }
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let cases: [(&[&str], Result<String, PkiError>); 5] = [
            (
                &["https://x.test/", "meridian:region:ap-south"],
                Ok("ap-south".into()),
            ),
            (&["https://x.test/"], Err(PkiError::NoRegion)),
            (&[], Err(PkiError::NoRegion)),
            (
                &["meridian:region:eu-west", "meridian:region:us-east"],
                Err(PkiError::AmbiguousRegion {
                    found: vec!["eu-west".into(), "us-east".into()],
                }),
            ),
            (
                &["meridian:region:EU"],
                Err(PkiError::InvalidRegionId { id: "EU".into() }),
            ),
        ];
        for (uris, want) in cases {
            assert_eq!(region_of(&cert_with(uris)), want, "{uris:?}");
        }
        assert!(matches!(
            region_of(b"\x30\x03\x02\x01"),
            Err(PkiError::Certificate { .. })
        ));
    }

    #[test]
    fn members_parse_from_the_command_line() {
        let cases = [
            ("eu-west", Ok(("eu-west", vec![]))),
            (
                "eu-west=api.example.test,127.0.1.1",
                Ok(("eu-west", vec!["api.example.test", "127.0.1.1"])),
            ),
            ("dns1=", Ok(("dns1", vec![]))),
            (
                "dns1=bad name",
                Err(PkiError::InvalidName {
                    name: "bad name".into(),
                }),
            ),
        ];
        for (spec, want) in cases {
            let want = want.map(|(id, names): (&str, Vec<&str>)| Member {
                id: id.into(),
                names: names.into_iter().map(String::from).collect(),
            });
            assert_eq!(spec.parse::<Member>(), want, "{spec}");
        }
    }

    #[test]
    fn writes_a_deployment_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let regions: Vec<Member> = ["eu-west=api.example.test", "us-east"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let nodes = vec!["dns1=127.0.0.1".parse().unwrap()];
        let written = write_deployment(&out, &regions, &nodes, SystemTime::now()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "relay-eu-west.pem",
                "relay-eu-west-key.pem",
                "relay-us-east.pem",
                "relay-us-east-key.pem",
                "dns-dns1.pem",
                "dns-dns1-key.pem"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in &written {
                let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
                let private = path.to_string_lossy().ends_with("-key.pem");
                assert_eq!(mode & 0o077 == 0, private, "{}", path.display());
            }
        }
        let read = |name: &str| fs::read_to_string(out.join(name)).unwrap();
        let ca = Ca::from_pem(&PemPair {
            cert_pem: read("ca.pem"),
            key_pem: read("ca-key.pem"),
        })
        .unwrap();
        // The loaded CA keeps issuing certificates that chain to the written one.
        issue_relay_cert(&ca, "ap-south", &[], Validity::leaf(SystemTime::now())).unwrap();
        assert_eq!(
            region_of(&der(&read("relay-us-east.pem"))),
            Ok("us-east".into())
        );

        let before = read("ca.pem");
        assert_eq!(
            write_deployment(&out, &regions, &nodes, SystemTime::now()).unwrap_err(),
            PkiError::Exists {
                path: out.join("ca.pem")
            }
        );
        assert_eq!(read("ca.pem"), before);
    }
}
