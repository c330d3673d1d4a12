//! The relay's TLS identity: its certificate chain and key, reloaded without a restart.
//!
//! [`CertStore`] holds the current [`CertifiedKey`] in one `ArcSwap` and is the rustls
//! certificate resolver of both the TCP (h1/h2) and the QUIC (h3) server configs: a handshake
//! takes the pair current at that moment, so replacing the files changes what *new* handshakes
//! present while established connections keep the keys they negotiated. A new pair replaces the
//! old one only after it parsed and its key matched its leaf certificate; anything less keeps
//! the old pair serving and is reported.
//!
//! This module reads PEM files and builds rustls/quinn configs; it does not bind sockets or
//! know about HTTP (that is [`super::front`]).

use std::{
    collections::HashSet,
    fmt, io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::config::model::{Limits, TlsFiles};

/// ALPN of the TCP listener, preferred first.
pub const TCP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN of the QUIC listener.
pub const QUIC_ALPN: &[u8] = b"h3";

/// How long the files must stay quiet before a change triggers a reload: `mv cert; mv key`
/// (or an ACME client writing both) is one change, not two.
const SETTLE: Duration = Duration::from_millis(150);

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum TlsError {
    #[error("{}: file not found", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read: {kind}", path.display())]
    Unreadable { path: PathBuf, kind: io::ErrorKind },
    #[error("{}: malformed PEM: {reason}", path.display())]
    MalformedPem { path: PathBuf, reason: String },
    #[error("{}: no certificate in file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in file", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {error}", path.display())]
    UnusableKey { path: PathBuf, error: rustls::Error },
    #[error("{}: unusable certificate: {error}", path.display())]
    UnusableCertificate { path: PathBuf, error: rustls::Error },
    #[error("key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot build the TLS server configuration: {error}")]
    Config { error: rustls::Error },
    #[error("the TLS configuration has no cipher suite QUIC can start with")]
    NoQuicCipherSuite,
    #[error("cannot generate a self-signed certificate: {error}")]
    Generate { error: rcgen::Error },
}

/// Installs rustls' ring provider as the process default. Idempotent.
///
/// The configs built here name their provider explicitly; this is for the libraries that ask
/// rustls for the process default (and would otherwise panic on finding none, or two).
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all this function promises.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the reloads have done so far, for logs, metrics and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct CertReloads {
    /// 1 for the pair loaded at start, +1 for every pair that replaced it.
    pub generation: u64,
    /// Reloads that kept the previous pair because the new one was unusable.
    pub rejected: u64,
    pub last_error: Option<TlsError>,
}

/// The certificate and key the relay presents, swapped in one piece on reload.
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    generation: AtomicU64,
    reloads: watch::Sender<CertReloads>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; fails unless both files parse and the key matches the leaf.
    pub fn load(files: TlsFiles) -> Result<CertStore, TlsError> {
        let provider = provider();
        let pair = load_pair(&files, &provider)?;
        let (reloads, _) = watch::channel(CertReloads {
            generation: 1,
            rejected: 0,
            last_error: None,
        });
        Ok(CertStore {
            files,
            provider,
            current: ArcSwap::from_pointee(pair),
            generation: AtomicU64::new(1),
            reloads,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Follows reload outcomes (the value changes on every reload, good or bad).
    pub fn subscribe(&self) -> watch::Receiver<CertReloads> {
        self.reloads.subscribe()
    }

    /// Reads the files again and, if the pair is usable, serves it from the next handshake.
    /// On error the previous pair keeps serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load_pair(&self.files, &self.provider) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                self.reloads.send_modify(|r| {
                    r.generation = generation;
                    r.last_error = None;
                });
                Ok(())
            }
            Err(error) => {
                self.reloads.send_modify(|r| {
                    r.rejected += 1;
                    r.last_error = Some(error.clone());
                });
                Err(error)
            }
        }
    }

    /// Reloads when the certificate or key file changes, until `shutdown` turns true.
    ///
    /// Watches the files' folders, not the files: renaming a new file into place (what careful
    /// tools do) replaces the inode a file watch would be following.
    pub fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let (changed_tx, mut changed) = mpsc::channel::<()>(16);
        // Registered before returning, so a change made right after this call is seen.
        let watcher = match self.watch_files(changed_tx) {
            Ok(watcher) => watcher,
            Err(error) => {
                warn!(%error, "cannot watch the TLS files; the certificate will not reload");
                return tokio::spawn(async {});
            }
        };
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    Some(()) = changed.recv() => {
                        while let Ok(Some(())) = tokio::time::timeout(SETTLE, changed.recv()).await {}
                    }
                    () = stopped(&mut shutdown) => return,
                }
                let store = self.clone();
                match tokio::task::spawn_blocking(move || store.reload()).await {
                    Ok(Ok(())) => info!(generation = self.generation(), "TLS certificate reloaded"),
                    Ok(Err(error)) => {
                        error!(%error, "TLS certificate reload rejected; still serving the previous one");
                    }
                    Err(join_error) => error!(%join_error, "TLS certificate reload task failed"),
                }
            }
        })
    }

    fn watch_files(&self, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let files: HashSet<PathBuf> = [&self.files.cert, &self.files.key]
            .into_iter()
            .map(|f| as_reported(f))
            .collect();
        let folders: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|p| files.contains(p) || crate::reload::is_atomic_swap(p))
                {
                    // Full channel: a reload is pending already and will read this change.
                    let _ = changed.try_send(());
                }
            })?;
        for folder in &folders {
            watcher.watch(folder, RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Resolves once `shutdown` turns true, or its sender is gone (the process is exiting).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The path as the watcher reports it: canonical folder + file name.
fn as_reported(path: &Path) -> PathBuf {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    std::fs::canonicalize(folder)
        .map(|folder| folder.join(name))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::UnusableKey {
            path: files.key.clone(),
            error,
        })?;
    let pair = CertifiedKey::new(chain, signing_key);
    match pair.keys_match() {
        // Unknown: the key type cannot report its public half, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(error) => Err(TlsError::UnusableCertificate {
            path: files.cert.clone(),
            error,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_path_buf(),
        },
        kind => TlsError::Unreadable {
            path: path.to_path_buf(),
            kind,
        },
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| malformed(path, error))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        error => malformed(path, error),
    })
}

fn malformed(path: &Path, error: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::MalformedPem {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// The HTTPS (TCP) server config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn tcp_server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(store.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config { error })?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = TCP_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The HTTP/3 (QUIC) server config: TLS 1.3 only, ALPN `h3`, streams per connection from
/// `limits`.
///
/// `idle_timeout` closes a connection on which nothing at all was received for that long; it
/// must exceed the longest silence a request may legitimately have (time to first token), or
/// slow generations die with their connection.
pub fn quic_server_config(
    store: Arc<CertStore>,
    limits: &Limits,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(store.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config { error })?
        .with_no_client_auth()
        .with_cert_resolver(store);
    tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|_| TlsError::NoQuicCipherSuite)?;

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_streams_per_connection));
    // Millisecond VarInt: saturate rather than fail on absurd configured values.
    let idle_ms = u32::try_from(idle_timeout.as_millis()).unwrap_or(u32::MAX);
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(idle_ms).into()));

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A self-signed certificate for `names` (DNS names or IP addresses), as PEM
/// `(certificate, private key)`. For `meridian certs`, the demo and tests.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|error| TlsError::Generate { error })?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    impl Files {
        fn new(cert: &str, key: &str) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let files = TlsFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            Files { dir, files }
        }

        /// Replaces a file the way deploy tools do: write beside it, rename over it.
        fn replace(&self, path: &Path, contents: &str) {
            let staged = self.dir.path().join("staged.tmp");
            std::fs::write(&staged, contents).unwrap();
            std::fs::rename(&staged, path).unwrap();
        }
    }

    fn leaf(pair: &CertifiedKey) -> Vec<u8> {
        pair.end_entity_cert().unwrap().to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn loads_a_matching_pair() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let files = Files::new(&cert, &key);
        let store = CertStore::load(files.files.clone()).unwrap();
        assert_eq!(leaf(&store.current()), der(&cert));
        assert_eq!(store.generation(), 1);
    }

    #[test]
    fn rejects_unusable_pairs_naming_file_and_problem() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let (_, other_key) = self_signed(&["localhost"]).unwrap();
        let bad_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        type Expected = fn(&TlsFiles) -> TlsError;
        let cases: [(&str, &str, &str, Expected); 5] = [
            ("key as cert", &key, &key, |f| TlsError::NoCertificate {
                path: f.cert.clone(),
            }),
            ("cert as key", &cert, &cert, |f| TlsError::NoKey {
                path: f.key.clone(),
            }),
            ("other key", &cert, &other_key, |f| TlsError::KeyMismatch {
                cert: f.cert.clone(),
                key: f.key.clone(),
            }),
            ("empty cert", "", &key, |f| TlsError::NoCertificate {
                path: f.cert.clone(),
            }),
            ("garbage cert", bad_pem, &key, |f| TlsError::MalformedPem {
                path: f.cert.clone(),
                reason: String::new(),
            }),
        ];
        for (name, cert, key, expected) in cases {
            let files = Files::new(cert, key);
            let error = CertStore::load(files.files.clone()).unwrap_err();
            let mut expected = expected(&files.files);
            // The PEM parser's wording is its own; the variant and the file are ours.
            if let (
                TlsError::MalformedPem { reason, .. },
                TlsError::MalformedPem { reason: got, .. },
            ) = (&mut expected, &error)
            {
                assert!(!got.is_empty(), "{name}");
                reason.clone_from(got);
            }
            assert_eq!(error, expected, "{name}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let files = Files::new(&cert, &key);
        let mut paths = files.files.clone();
        paths.key = files.dir.path().join("absent.pem");
        assert_eq!(
            CertStore::load(paths.clone()).unwrap_err(),
            TlsError::Missing { path: paths.key }
        );
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_on_a_bad_one() {
        let (cert_a, key_a) = self_signed(&["localhost"]).unwrap();
        let (cert_b, key_b) = self_signed(&["localhost"]).unwrap();
        let files = Files::new(&cert_a, &key_a);
        let store = CertStore::load(files.files.clone()).unwrap();

        files.replace(&files.files.cert, &cert_b);
        let error = store.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert_eq!(leaf(&store.current()), der(&cert_a));
        assert_eq!(store.generation(), 1);
        assert_eq!(store.subscribe().borrow().rejected, 1);

        files.replace(&files.files.key, &key_b);
        store.reload().unwrap();
        assert_eq!(leaf(&store.current()), der(&cert_b));
        assert_eq!(store.generation(), 2);
        assert_eq!(store.subscribe().borrow().last_error, None);
    }

    #[tokio::test]
    async fn watch_reloads_when_files_are_renamed_into_place() {
        let (cert_a, key_a) = self_signed(&["localhost"]).unwrap();
        let (cert_b, key_b) = self_signed(&["localhost"]).unwrap();
        let files = Files::new(&cert_a, &key_a);
        let store = Arc::new(CertStore::load(files.files.clone()).unwrap());
        let mut reloads = store.subscribe();
        let (stop, stopped) = watch::channel(false);
        let watching = store.clone().watch(stopped);
        files.replace(&files.files.key, &key_b);
        files.replace(&files.files.cert, &cert_b);
        tokio::time::timeout(
            Duration::from_secs(5),
            reloads.wait_for(|r| r.generation == 2),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(leaf(&store.current()), der(&cert_b));

        let rejected = reloads.borrow().rejected;
        files.replace(&files.files.cert, "not a certificate");
        tokio::time::timeout(
            Duration::from_secs(5),
            reloads.wait_for(|r| r.rejected > rejected),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(leaf(&store.current()), der(&cert_b));

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watching)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn server_configs_advertise_their_protocols() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let files = Files::new(&cert, &key);
        let store = Arc::new(CertStore::load(files.files.clone()).unwrap());
        let tcp = tcp_server_config(store.clone()).unwrap();
        assert_eq!(
            tcp.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let limits = Limits {
            max_request_body_bytes: 1 << 20,
            max_request_header_bytes: 16 << 10,
            max_response_header_bytes: 16 << 10,
            max_connections: 10,
            max_streams_per_connection: 7,
            header_read_timeout: Duration::from_secs(1),
        };
        quic_server_config(store, &limits, Duration::from_secs(30)).unwrap();
    }
}
