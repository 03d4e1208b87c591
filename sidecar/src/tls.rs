//! The pod's certificate, key and trust bundle, turned into rustls configurations,
//! and swapped in place when the files change.
//!
//! A connection takes a cheap snapshot (`Arc`) of the current [`TlsState`] when it
//! starts: a rotation never touches connections already open, and a rotation
//! that fails to load leaves the previous state serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::PeerIdentity;

/// Why a certificate set was not loaded.
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

/// One loaded certificate set and everything derived from it.
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
    /// Digest of the three files, to skip reloading identical content.
    digest: [u8; 32],
}

impl TlsState {
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

/// Loads `tls.crt`, `tls.key` and `ca.crt` from `dir` and builds the configs.
pub fn load(dir: &Path, trust_domain: &str) -> Result<TlsState, TlsError> {
    let (crt_path, key_path, ca_path) =
        (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    let (crt_pem, key_pem, ca_pem) = (read(&crt_path)?, read(&key_path)?, read(&ca_path)?);
    let digest = {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&crt_pem, &key_pem, &ca_pem] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    };
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
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| parse_err(&ca_path, format!("not PEM certificates: {e}")))?;
    let mut roots = RootCertStore::empty();
    let anchors = cas
        .iter()
        .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(&ca_path, format!("not a usable CA certificate: {e}")))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| parse_err(&ca_path, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(parse_err(&ca_path, "no CA certificate in the file".into()));
    }

    let provider = provider();
    // Refuse a key that does not belong to the certificate before anything is built.
    let certified =
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
            other => TlsError::Rustls(other.to_string()),
        })?;
    drop(certified);

    let (not_before, not_after) =
        chain_validity(&chain).map_err(|problem| parse_err(&crt_path, problem))?;
    let own = PeerIdentity::from_der(&chain[0]).map_err(|e| parse_err(&crt_path, e))?;
    let serial = serial_hex(&chain[0]).map_err(|problem| parse_err(&crt_path, problem))?;

    let roots = Arc::new(roots);
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let server = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(rustls_err)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_err)?;
        cfg.alpn_protocols = alpn;
        // Tickets keep repeat handshakes cheap for clients that resume.
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
        Ok(Arc::new(cfg))
    };
    let http = server(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
    let tcp = server(Vec::new())?;

    let server_verifier = Arc::new(SpiffeServerVerifier {
        anchors,
        trust_domain: trust_domain.to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let client = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(rustls_err)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(rustls_err)?;
        cfg.alpn_protocols = alpn;
        Ok(Arc::new(cfg))
    };
    let client_http = client(vec![b"http/1.1".to_vec()])?;
    let client_tcp = client(Vec::new())?;

    Ok(TlsState {
        http,
        tcp,
        client_http,
        client_tcp,
        own,
        not_after,
        not_before,
        serial,
        digest,
    })
}

/// The serial number of a certificate in upper-case hex without the DER sign
/// byte, as `openssl x509 -serial` prints it (e.g. `5A0F...`).
fn serial_hex(der: &CertificateDer<'_>) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let raw = cert.raw_serial();
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    Ok(raw[start..].iter().map(|b| format!("{b:02X}")).collect())
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

/// The current certificate set, shared by every listener.
pub struct TlsStore {
    dir: PathBuf,
    trust_domain: String,
    current: ArcSwap<TlsState>,
}

/// What a reload did.
#[derive(Debug, PartialEq)]
pub enum Reload {
    /// The files are what is already serving.
    Unchanged,
    /// A new set is serving.
    Replaced,
}

impl TlsStore {
    /// Loads the set; at start-up a failure is fatal, so it is returned.
    pub fn open(dir: &Path, trust_domain: &str) -> Result<Self, TlsError> {
        let state = load(dir, trust_domain)?;
        Ok(TlsStore {
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
            current: ArcSwap::from_pointee(state),
        })
    }

    /// A snapshot of the serving set; lock-free.
    pub fn current(&self) -> Arc<TlsState> {
        self.current.load_full()
    }

    /// Loads the files again. On error the serving set stays as it was.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let new = load(&self.dir, &self.trust_domain)?;
        if new.digest == self.current.load().digest {
            return Ok(Reload::Unchanged);
        }
        self.current.store(Arc::new(new));
        Ok(Reload::Replaced)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Watches the certificate directory and reloads on change.
///
/// kubelet updates a mounted Secret by writing a new timestamped directory and
/// atomically renaming a `..data` symlink onto it; cert-manager's files then
/// change all at once. inotify on the directory sees that rename, and also plain
/// in-place writes. A short settle delay lets a multi-file update finish before
/// the set is read, and a periodic check catches anything inotify missed.
pub async fn watch(store: Arc<TlsStore>, metrics: Arc<crate::metrics::Metrics>) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| changes_files(&event.kind)) {
            // A full channel already means "reload pending".
            let _ = tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(store.dir(), RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %store.dir().display(), "cannot watch the certificate directory; checking every 30s instead");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a file watcher; checking every 30s instead");
            None
        }
    };
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
        match store.reload() {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Replaced) => {
                let state = store.current();
                metrics.cert_reload_ok.inc();
                metrics.cert_expiry.set(state.not_after);
                metrics.set_certificate(&state.serial);
                tracing::info!(identity = %state.own.display_name(), not_after = state.not_after, serial = %state.serial, "certificate reloaded");
                if !state.valid_now() {
                    tracing::warn!(
                        not_before = state.not_before,
                        not_after = state.not_after,
                        "the reloaded chain (tls.crt) is not valid now: clients cannot verify it, and /ready answers 503"
                    );
                }
            }
            Err(e) => {
                metrics.cert_reload_refused.inc();
                tracing::error!(error = %e, "rotated certificate refused; the previous certificate keeps serving");
            }
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

/// Verifies a peer sidecar's server certificate: the chain up to our trust
/// bundle, its validity and serverAuth usage, and a SPIFFE ID in our trust
/// domain. Peers are addressed by IP and named by SPIFFE ID, not DNS, so the
/// usual host-name check does not apply; the identity check replaces it.
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(C::BadEncoding))?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => C::Expired,
                webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
                webpki::Error::UnknownIssuer => C::UnknownIssuer,
                webpki::Error::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
                _ => C::BadSignature,
            })
        })?;
        let peer = PeerIdentity::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(C::BadEncoding))?;
        match &peer.spiffe {
            Some(id) if id.trust_domain == self.trust_domain => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                C::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::{changes_files, serial_hex};
    use notify::Watcher;
    use std::time::Duration;

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
            assert_eq!(serial_hex(cert.der()).expect("serial"), printed);
        }
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
