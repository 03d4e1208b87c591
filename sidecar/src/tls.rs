//! The pod's key pair and its trust bundle, turned into rustls configurations,
//! and swapped in place when their files change.
//!
//! The key pair (`tls.crt`, `tls.key` in `--cert-dir`) says who this pod is;
//! the trust bundle (`--trust-bundle`, or `<cert-dir>/ca.crt` without it, see
//! [`crate::trust`]) says whom it believes, in both directions. They are
//! loaded, refused and replaced independently: during a CA rotation the bundle
//! changes first, then each pod's key pair, and a bad file of one never holds
//! back the other.
//!
//! A connection takes a cheap snapshot (`Arc`) of the current [`TlsState`] when it
//! starts: a reload never touches connections already open, and a reload
//! that fails leaves the previous state serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::PeerIdentity;
use crate::metrics::{HandshakeFailure, Metrics};
use crate::trust::{TrustBundle, TrustError};
use crate::verify::{self, SpiffeServerVerifier};

/// Why a key pair was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    #[error("the certificate set is not usable: {0}")]
    Rustls(String),
}

/// The pod's own certificate chain and key, and what the metrics and
/// headers say about them.
pub struct KeyPair {
    /// tls.crt, leaf first.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Our own identity, for the `By` field of XFCC.
    pub own: PeerIdentity,
    /// When the served chain (every certificate in tls.crt, not just the
    /// leaf) stops being valid: the earliest `not_after`, seconds since the epoch.
    pub not_after: i64,
    /// When the whole served chain is valid from: the latest `not_before`.
    pub not_before: i64,
    /// The serial number of the served leaf certificate, in hex as
    /// `openssl x509 -serial` prints it, so a rotation can be seen on /metrics.
    pub serial: String,
    /// The DN of the CA that issued the leaf.
    pub issuer: String,
    /// Digest of both files, to skip reloading identical content.
    digest: [u8; 32],
}

impl KeyPair {
    /// Loads `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<KeyPair, TlsError> {
        let (crt_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (crt_pem, key_pem) = (read(&crt_path)?, read(&key_path)?);
        let parse_err = |path: &Path, problem: String| TlsError::Parse {
            path: path.to_owned(),
            problem,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| parse_err(&crt_path, format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(parse_err(&crt_path, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| parse_err(&key_path, format!("not a PEM private key: {e}")))?;
        // Refuse a key that does not belong to the certificate before anything is built.
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
                other => TlsError::Rustls(other.to_string()),
            },
        )?;
        let (not_before, not_after) =
            chain_validity(&chain).map_err(|problem| parse_err(&crt_path, problem))?;
        let own = PeerIdentity::from_der(&chain[0]).map_err(|e| parse_err(&crt_path, e))?;
        let (_, leaf) = X509Certificate::from_der(&chain[0])
            .map_err(|e| parse_err(&crt_path, format!("the certificate does not parse: {e}")))?;
        Ok(KeyPair {
            serial: serial_of(&leaf),
            issuer: leaf.issuer().to_string(),
            own,
            not_after,
            not_before,
            digest: digest_of(&[&crt_pem, &key_pem]),
            chain,
            key,
        })
    }

    /// True while every certificate we serve is inside its validity window:
    /// one expired intermediate fails every client's verification.
    pub fn valid_now(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.not_before <= now && now < self.not_after
    }
}

/// One key pair with one trust bundle, and the configs built from them.
pub struct TlsState {
    /// For HTTP ports: ALPN offers h2 and http/1.1.
    pub http: Arc<ServerConfig>,
    /// For TCP ports: no ALPN, so clients offering another protocol are not refused.
    pub tcp: Arc<ServerConfig>,
    /// For outbound HTTP connections (ALPN http/1.1): presents our certificate,
    /// verifies the peer's chain and that its SPIFFE ID is in our trust domain.
    pub client_http: Arc<ClientConfig>,
    /// For outbound TCP connections (no ALPN).
    pub client_tcp: Arc<ClientConfig>,
    pub key_pair: Arc<KeyPair>,
    /// The CAs peers' certificates are verified against, in both directions.
    pub trust: Arc<TrustBundle>,
}

impl TlsState {
    /// Builds the configs; only the key pair can make this fail (a bundle
    /// is checked when it is loaded).
    fn build(
        key_pair: Arc<KeyPair>,
        trust: Arc<TrustBundle>,
        trust_domain: &str,
    ) -> Result<TlsState, TlsError> {
        let provider = provider();
        let client_verifier =
            verify::client_verifier(trust.roots.clone(), provider.clone()).map_err(rustls_err)?;
        let server_verifier = Arc::new(SpiffeServerVerifier {
            roots: trust.roots.clone(),
            trust_domain: trust_domain.to_ascii_lowercase(),
            provider: provider.clone(),
        });
        let h2_h1 = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsState {
            http: server_config(&key_pair, &client_verifier, &provider, h2_h1)?,
            tcp: server_config(&key_pair, &client_verifier, &provider, Vec::new())?,
            client_http: client_config(
                &key_pair,
                &server_verifier,
                &provider,
                vec![b"http/1.1".to_vec()],
            )?,
            client_tcp: client_config(&key_pair, &server_verifier, &provider, Vec::new())?,
            key_pair,
            trust,
        })
    }

    /// True while every certificate we serve is inside its validity window.
    pub fn valid_now(&self) -> bool {
        self.key_pair.valid_now()
    }
}

fn rustls_err(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}

fn server_config(
    key_pair: &KeyPair,
    verifier: &Arc<dyn ClientCertVerifier>,
    provider: &Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(key_pair.chain.clone(), key_pair.key.clone_key())
        .map_err(rustls_err)?;
    cfg.alpn_protocols = alpn;
    // Tickets keep repeat handshakes cheap for clients that resume. Each
    // state has a cache of its own: after a bundle change no session
    // resumes past the new bundle's verification.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(Arc::new(cfg))
}

fn client_config(
    key_pair: &KeyPair,
    verifier: &Arc<SpiffeServerVerifier>,
    provider: &Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier: Arc<dyn ServerCertVerifier> = verifier.clone();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(key_pair.chain.clone(), key_pair.key.clone_key())
        .map_err(rustls_err)?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// The provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn digest_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The serial number of a certificate in upper-case hex without the DER sign
/// byte, as `openssl x509 -serial` prints it (e.g. `5A0F...`).
pub(crate) fn serial_of(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// The window in which every certificate of a chain is valid: (latest
/// `not_before`, earliest `not_after`), seconds since the epoch.
fn chain_validity(chain: &[CertificateDer<'_>]) -> Result<(i64, i64), String> {
    let mut window = (i64::MIN, i64::MAX);
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
        window.0 = window.0.max(cert.validity().not_before.timestamp());
        window.1 = window.1.min(cert.validity().not_after.timestamp());
    }
    Ok(window)
}

/// Why the sidecar cannot start with its certificate files; each names the
/// flag, its variable and the fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "--cert-dir (KUBE_MTLS_CERT_DIR): the certificate set in {dir} cannot be used: {error}. Fix: mount the pod's certificate Secret (tls.crt, tls.key) there"
    )]
    KeyPair { dir: PathBuf, error: TlsError },
    #[error(
        "--trust-bundle (KUBE_MTLS_TRUST_BUNDLE): {error}. Fix: point it at a PEM file of the CA certificates peers' certificates come from (the ca-bundle.crt key of the namespace's trust bundle ConfigMap), or leave it empty to trust <cert-dir>/ca.crt"
    )]
    Bundle { error: TrustError },
    #[error(
        "--cert-dir (KUBE_MTLS_CERT_DIR): {error}. Fix: ca.crt of the certificate Secret must hold the CA that issues the pods' certificates, or give the trusted CAs in a file of their own with --trust-bundle (KUBE_MTLS_TRUST_BUNDLE)"
    )]
    CaFile { error: TrustError },
}

/// The current key pair and trust bundle, shared by every listener.
pub struct TlsStore {
    dir: PathBuf,
    /// `--trust-bundle`, or `<dir>/ca.crt`.
    trust_path: PathBuf,
    trust_domain: String,
    current: ArcSwap<TlsState>,
}

/// What a reload did to one of the two sources.
#[derive(Debug)]
pub enum Outcome<E> {
    /// The file is what is already serving.
    Unchanged,
    /// New content is serving.
    Replaced,
    /// The file was refused; what served before keeps serving.
    Refused(E),
}

impl<E> Outcome<E> {
    pub fn replaced(&self) -> bool {
        matches!(self, Outcome::Replaced)
    }
}

/// What a reload did to the key pair and to the trust bundle.
#[derive(Debug)]
pub struct Reload {
    pub key_pair: Outcome<TlsError>,
    pub trust: Outcome<TrustError>,
}

impl TlsStore {
    /// Loads the key pair from `dir` and the bundle from `trust_bundle`
    /// (`<dir>/ca.crt` without one); at start-up a failure is fatal.
    pub fn open(
        dir: &Path,
        trust_bundle: Option<&Path>,
        trust_domain: &str,
    ) -> Result<Self, OpenError> {
        let key_pair = |error| OpenError::KeyPair {
            dir: dir.to_owned(),
            error,
        };
        let pair = KeyPair::load(dir).map_err(key_pair)?;
        let trust_path = trust_bundle.map_or_else(|| dir.join("ca.crt"), Path::to_owned);
        let trust = TrustBundle::load(&trust_path).map_err(|error| match trust_bundle {
            Some(_) => OpenError::Bundle { error },
            None => OpenError::CaFile { error },
        })?;
        let state =
            TlsState::build(Arc::new(pair), Arc::new(trust), trust_domain).map_err(key_pair)?;
        Ok(TlsStore {
            dir: dir.to_owned(),
            trust_path,
            trust_domain: trust_domain.to_owned(),
            current: ArcSwap::from_pointee(state),
        })
    }

    /// A snapshot of the serving state; lock-free.
    pub fn current(&self) -> Arc<TlsState> {
        self.current.load_full()
    }

    /// Loads both sources again; each one refused leaves its previous
    /// content serving, beside whatever the other one loaded.
    pub fn reload(&self) -> Reload {
        let cur = self.current.load_full();
        let (pair, key_pair) = match KeyPair::load(&self.dir) {
            Ok(k) if k.digest == cur.key_pair.digest => (cur.key_pair.clone(), Outcome::Unchanged),
            Ok(k) => (Arc::new(k), Outcome::Replaced),
            Err(e) => (cur.key_pair.clone(), Outcome::Refused(e)),
        };
        let (bundle, trust) = match TrustBundle::load(&self.trust_path) {
            Ok(t) if t.same_content(&cur.trust) => (cur.trust.clone(), Outcome::Unchanged),
            Ok(t) => (Arc::new(t), Outcome::Replaced),
            Err(e) => (cur.trust.clone(), Outcome::Refused(e)),
        };
        let mut done = Reload { key_pair, trust };
        if !done.key_pair.replaced() && !done.trust.replaced() {
            return done;
        }
        match TlsState::build(pair, bundle.clone(), &self.trust_domain) {
            Ok(state) => self.current.store(Arc::new(state)),
            Err(e) => {
                // The new key pair is what failed: the bundle goes ahead alone.
                done.key_pair = Outcome::Refused(e);
                if done.trust.replaced() {
                    match TlsState::build(cur.key_pair.clone(), bundle, &self.trust_domain) {
                        Ok(state) => self.current.store(Arc::new(state)),
                        Err(e) => {
                            done.trust = Outcome::Refused(TrustError::Invalid {
                                path: self.trust_path.clone(),
                                problem: e.to_string(),
                            })
                        }
                    }
                }
            }
        }
        done
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trust bundle's file: `--trust-bundle`, or `<cert-dir>/ca.crt`.
    pub fn trust_path(&self) -> &Path {
        &self.trust_path
    }

    /// The directories whose changes can change what is served: the cert
    /// dir and the bundle's directory (a ConfigMap volume is updated by a
    /// `..data` symlink swap there, as a Secret's is).
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.dir.clone()];
        let parent = match self.trust_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if parent != self.dir {
            dirs.push(parent);
        }
        dirs
    }
}

/// Warns when the pod's own certificate does not chain to a CA of the
/// bundle: peers that trust the same bundle refuse it. It still serves:
/// during a rotation a certificate from the new CA may arrive a moment
/// before the bundle that holds the new CA.
pub fn warn_if_own_issuer_untrusted(state: &TlsState) {
    let Err(e) = verify::chains_to(&state.key_pair.chain, &state.trust.roots, &provider()) else {
        return;
    };
    if verify::classify(&e) == HandshakeFailure::UntrustedIssuer {
        tracing::warn!(
            issuer = %state.key_pair.issuer,
            file = %state.trust.path.display(),
            trusted = %state.trust.subjects(),
            error = %e,
            "this pod's certificate (tls.crt) was issued by a CA the trust bundle does not hold: peers that trust the same bundle refuse it until the bundle holds that CA (expected for a moment during a CA rotation); serving it all the same"
        );
    }
}

/// Starts inotify on `dirs`; `None` (logged) where that is impossible, and
/// the periodic check is all there is.
fn watch_dirs(
    dirs: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| changes_files(&event.kind)) {
            // A full channel already means "reload pending".
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a file watcher; checking every 30s instead");
            return None;
        }
    };
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch this directory; checking it every 30s instead");
        }
    }
    Some(watcher)
}

/// Watches the certificate directory and the trust bundle's, and reloads on change.
///
/// kubelet updates a mounted Secret or ConfigMap by writing a new timestamped
/// directory and atomically renaming a `..data` symlink onto it; its files
/// then change all at once. inotify on the directory sees that rename, and
/// also plain in-place writes. A short settle delay lets a multi-file update
/// finish before the files are read, and a periodic check catches anything
/// inotify missed.
pub async fn watch(store: Arc<TlsStore>, metrics: Arc<Metrics>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let _watcher = watch_dirs(&store.watched_dirs(), tx);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        let done = store.reload();
        let changed = done.key_pair.replaced() || done.trust.replaced();
        let state = store.current();
        report_key_pair(&state, &metrics, done.key_pair);
        report_trust(&state, &metrics, &store, done.trust);
        if changed {
            warn_if_own_issuer_untrusted(&state);
        }
    }
}

fn report_key_pair(state: &TlsState, metrics: &Metrics, outcome: Outcome<TlsError>) {
    let pair = &state.key_pair;
    match outcome {
        Outcome::Unchanged => {}
        Outcome::Replaced => {
            metrics.cert_reload_ok.inc();
            metrics.cert_expiry.set(pair.not_after);
            metrics.set_certificate(&pair.serial);
            tracing::info!(identity = %pair.own.display_name(), not_after = pair.not_after, serial = %pair.serial, issuer = %pair.issuer, "certificate reloaded");
            if !pair.valid_now() {
                tracing::warn!(
                    not_before = pair.not_before,
                    not_after = pair.not_after,
                    "the reloaded chain (tls.crt) is not valid now: clients cannot verify it, and /ready answers 503"
                );
            }
        }
        Outcome::Refused(e) => {
            metrics.cert_reload_refused.inc();
            tracing::error!(error = %e, "rotated certificate refused; the previous certificate keeps serving");
        }
    }
}

fn report_trust(
    state: &TlsState,
    metrics: &Metrics,
    store: &TlsStore,
    outcome: Outcome<TrustError>,
) {
    match outcome {
        Outcome::Unchanged => {}
        Outcome::Replaced => {
            metrics.trust_reload_ok.inc();
            metrics.set_trusted_cas(&state.trust.cas);
            tracing::info!(file = %state.trust.path.display(), trusted = %state.trust.subjects(), "trust bundle reloaded");
        }
        Outcome::Refused(e) => {
            metrics.trust_reload_refused.inc();
            tracing::error!(
                file = %store.trust_path().display(),
                error = %e,
                trusted = %state.trust.subjects(),
                "trust bundle refused; the previous bundle keeps serving"
            );
        }
    }
}

/// Whether a file event can mean new certificate files. Reads are not: the
/// reload itself opens and reads the files, and reacting to that would reload
/// again and again.
fn changes_files(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    )
}

/// Hex SHA-256 of a DER certificate, as XFCC's `Hash` field wants it.
pub fn cert_hash_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{Outcome, TlsStore, changes_files, serial_of};
    use kube_mtls_tests::certs::{Leaf, TestCa};
    use notify::Watcher;
    use std::time::Duration;
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// A serial with its top bit set is stored with a leading 0x00 in DER;
    /// openssl prints it without, and so must the metric.
    #[test]
    fn serials_print_as_openssl_prints_them() {
        for (serial, printed) in [(vec![0x80, 0x01], "8001"), (vec![0x05, 0xAB], "05AB")] {
            let mut params =
                rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("certificate");
            let (_, parsed) = X509Certificate::from_der(cert.der()).expect("parses");
            assert_eq!(serial_of(&parsed), printed);
        }
    }

    /// The key pair and the bundle are loaded, refused and replaced each on
    /// its own: a bad bundle keeps the previous one beside a new key pair.
    #[test]
    fn key_pair_and_bundle_reload_independently() {
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        let (one, two) = (TestCa::new("ca one"), TestCa::new("ca two"));
        let certs = tempfile::tempdir().expect("temp dir");
        one.issue(&Leaf::spiffe(id))
            .write_dir(certs.path())
            .expect("certs");
        let bundle = certs.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", one.cert_pem, two.cert_pem)).expect("bundle");
        let store = TlsStore::open(certs.path(), Some(&bundle), "cluster.local").expect("opens");
        assert_eq!(store.current().trust.cas.len(), 2);
        let unchanged = store.reload();
        assert!(matches!(
            (&unchanged.key_pair, &unchanged.trust),
            (Outcome::Unchanged, Outcome::Unchanged)
        ));

        std::fs::write(&bundle, "garbage").expect("bundle");
        two.issue(&Leaf::spiffe(id))
            .write_dir(certs.path())
            .expect("certs");
        let done = store.reload();
        assert!(done.key_pair.replaced(), "{done:?}");
        let Outcome::Refused(e) = &done.trust else {
            panic!("garbage taken for a bundle: {done:?}");
        };
        assert!(e.to_string().contains("bundle.pem"), "{e}");
        let state = store.current();
        assert_eq!(state.key_pair.issuer, "CN=ca two");
        assert_eq!(state.trust.subjects(), "CN=ca one; CN=ca two");

        std::fs::write(&bundle, &two.cert_pem).expect("bundle");
        std::fs::write(certs.path().join("tls.key"), "not a key").expect("key");
        let done = store.reload();
        assert!(matches!(done.key_pair, Outcome::Refused(_)), "{done:?}");
        assert!(done.trust.replaced(), "{done:?}");
        let state = store.current();
        assert_eq!(state.trust.subjects(), "CN=ca two");
        assert_eq!(state.key_pair.issuer, "CN=ca two");

        // A key pair from a CA the bundle does not hold (yet) still serves.
        one.issue(&Leaf::spiffe(id))
            .write_dir(certs.path())
            .expect("certs");
        let store = TlsStore::open(certs.path(), Some(&bundle), "cluster.local");
        let state = store.expect("opens all the same").current();
        assert_eq!(
            (
                state.key_pair.issuer.as_str(),
                state.trust.subjects().as_str()
            ),
            ("CN=ca one", "CN=ca two")
        );
    }

    /// Real inotify: reading the certificate files (what every reload does)
    /// must not look like a change, or the watcher would reload forever; a
    /// new file in the directory must.
    #[test]
    fn reads_are_not_changes_but_new_files_are() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "pem").expect("write");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                let _ = tx.send(event);
            }
        })
        .expect("watcher");
        watcher
            .watch(dir.path(), notify::RecursiveMode::NonRecursive)
            .expect("watch");

        for _ in 0..3 {
            std::fs::read(&cert).expect("read");
        }
        let marker = dir.path().join("..data_tmp");
        std::fs::write(&marker, "").expect("marker");

        let mut reads = 0;
        loop {
            let event = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the new file was never reported");
            if event.paths.iter().any(|p| p == &marker) {
                assert!(changes_files(&event.kind), "{event:?}");
                break;
            }
            assert!(
                !changes_files(&event.kind),
                "a read counted as a change: {event:?}"
            );
            reads += 1;
        }
        assert!(reads > 0, "inotify reported no access events for the reads");
    }
}
