//! How a peer's certificate is verified against the trust bundle, in both
//! directions, and why a handshake failed, said so that an operator can act:
//! an untrusted issuer is not "does not speak mTLS".
//!
//! rustls reports a refused certificate as a bare `UnknownIssuer` or
//! `BadSignature`, without the certificate. The verifiers here add what the
//! messages need (the certificate's subject and issuer) as a [`Rejection`],
//! kept in a task-local slot that only the handshake future of one connection
//! ([`capture`]) sets up; the error rustls sees stays its own, so the alert
//! the peer gets (e.g. `unknown_ca`) is unchanged. A successful handshake
//! never parses the certificate a second time.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::PeerIdentity;
use crate::metrics::HandshakeFailure;

/// A peer certificate a verifier refused, as the messages name it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub failure: HandshakeFailure,
    /// The refused certificate's subject DN.
    pub subject: String,
    /// Its issuer's DN.
    pub issuer: String,
    /// What was wrong beyond the rustls error, e.g. a foreign trust domain.
    pub detail: Option<String>,
}

tokio::task_local! {
    static REJECTION: Cell<Option<Rejection>>;
}

/// Runs a handshake future and returns, with its output, the certificate
/// a verifier refused during it, if any.
pub async fn capture<F: Future>(handshake: F) -> (F::Output, Option<Rejection>) {
    let fut = REJECTION.scope(Cell::new(None), handshake);
    tokio::pin!(fut);
    let out = (&mut fut).await;
    let rejection = fut.as_mut().take_value().and_then(Cell::into_inner);
    (out, rejection)
}

/// Notes a refused certificate for [`capture`] (nothing outside one).
fn record(end_entity: &CertificateDer<'_>, error: &rustls::Error, detail: Option<String>) {
    let (subject, issuer) = match X509Certificate::from_der(end_entity) {
        Ok((_, cert)) => (cert.subject().to_string(), cert.issuer().to_string()),
        Err(_) => ("(unparsable)".to_owned(), "(unknown)".to_owned()),
    };
    let rejection = Rejection {
        failure: classify(error),
        subject,
        issuer,
        detail,
    };
    let _ = REJECTION.try_with(|slot| slot.set(Some(rejection)));
}

/// Why a handshake failed, from the error rustls gave.
pub fn classify(error: &rustls::Error) -> HandshakeFailure {
    use CertificateError as C;
    use HandshakeFailure as F;
    match error {
        rustls::Error::NoCertificatesPresented => F::NoCertificate,
        rustls::Error::InvalidCertificate(ce) => match ce {
            // A CA of the issuer's name whose key did not sign the certificate
            // is as untrusted as no CA of that name.
            C::UnknownIssuer | C::BadSignature => F::UntrustedIssuer,
            C::Expired | C::ExpiredContext { .. } => F::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => F::NotYetValid,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => F::BadUsage,
            _ => F::BadCertificate,
        },
        rustls::Error::AlertReceived(alert) if refuses_certificate(*alert) => F::PeerRefused,
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::NoApplicationProtocol
        | rustls::Error::DecryptError
        | rustls::Error::AlertReceived(_) => F::Protocol,
        _ => F::Other,
    }
}

/// Why a handshake failed, from the I/O error tokio-rustls gave.
pub fn classify_io(error: &std::io::Error) -> HandshakeFailure {
    match rustls_error(error) {
        Some(e) => classify(e),
        // The peer closed the connection part-way: not a TLS peer, or one
        // that gave up on us.
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => HandshakeFailure::Protocol,
        None => HandshakeFailure::Other,
    }
}

/// The rustls error inside an I/O error from tokio-rustls.
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Alerts a peer sends when it does not accept our certificate.
fn refuses_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// A certificate alert from the peer somewhere in an error's chain: with
/// TLS 1.3 a server refuses our certificate after our side of the handshake
/// is done, so the alert comes with the first read of a request.
pub fn peer_refusal(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cause = Some(error);
    while let Some(c) = cause {
        // io::Error's source() skips the error it wraps: look inside.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(rustls_error)
            .or_else(|| c.downcast_ref::<rustls::Error>());
        if let Some(e @ rustls::Error::AlertReceived(alert)) = inner {
            return refuses_certificate(*alert).then(|| e.clone());
        }
        cause = c.source();
    }
    None
}

/// The inbound verifier: rustls' own (chain to the bundle, validity,
/// clientAuth usage), noting what it refuses for the log line.
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok(Arc::new(NotingClientVerifier { inner }))
}

#[derive(Debug)]
struct NotingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NotingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| record(end_entity, e, None))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a peer sidecar's server certificate: the chain up to the trust
/// bundle, its validity and serverAuth usage, and a SPIFFE ID in our trust
/// domain. Peers are addressed by IP and named by SPIFFE ID, not DNS, so the
/// usual host-name check does not apply; the identity check replaces it.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    pub roots: Arc<RootCertStore>,
    /// Lower-case.
    pub trust_domain: String,
    pub provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// The SPIFFE check, after the chain's: a peer of another trust domain
    /// (or none) is refused, saying which.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        let peer = PeerIdentity::from_der(end_entity)?;
        match &peer.spiffe {
            Some(id) if id.trust_domain == self.trust_domain => Ok(()),
            _ => Err(format!(
                "its identity {} is not a SPIFFE ID in trust domain {}",
                peer.display_name(),
                self.trust_domain
            )),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = ParsedCertificate::try_from(end_entity).and_then(|parsed| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        });
        if let Err(e) = chain {
            record(end_entity, &e, None);
            return Err(e);
        }
        self.check_identity(end_entity).map_err(|detail| {
            let e =
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
            record(end_entity, &e, Some(detail));
            e
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `chain` (leaf first) chains to a CA of `roots` now; the error
/// says why not. For the warning when the pod's own certificate comes from
/// a CA the bundle does not hold yet.
pub fn chains_to(
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
) -> Result<(), rustls::Error> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(rustls::Error::NoCertificatesPresented);
    };
    let parsed = ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_mtls_tests::certs::{Leaf, TestCa, Validity};
    use rustls_pki_types::pem::PemObject;

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM")
    }

    fn roots(pem: &str) -> RootCertStore {
        let mut r = RootCertStore::empty();
        for c in chain(pem) {
            r.add(c).expect("CA");
        }
        r
    }

    /// Issue 22: the CA's key rotated, its name kept. The new CA's
    /// certificates fail with BadSignature, which is an untrusted issuer, not
    /// a protocol problem.
    #[test]
    fn a_rotated_ca_key_of_the_same_name_is_an_untrusted_issuer() {
        let provider = crate::tls::provider();
        let (old, new) = (TestCa::new("cluster CA"), TestCa::new("cluster CA"));
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        let leaf = chain(&new.issue(&Leaf::spiffe(id)).cert_pem);
        let err = chains_to(&leaf, &roots(&old.cert_pem), &provider).unwrap_err();
        assert_eq!(classify(&err), HandshakeFailure::UntrustedIssuer, "{err}");
        let other = chain(&TestCa::new("other CA").issue(&Leaf::spiffe(id)).cert_pem);
        let err = chains_to(&other, &roots(&old.cert_pem), &provider).unwrap_err();
        assert_eq!(classify(&err), HandshakeFailure::UntrustedIssuer, "{err}");
        let expired = chain(
            &old.issue(&Leaf::spiffe(id).validity(Validity::Expired))
                .cert_pem,
        );
        let err = chains_to(&expired, &roots(&old.cert_pem), &provider).unwrap_err();
        assert_eq!(classify(&err), HandshakeFailure::Expired, "{err}");
        assert!(chains_to(&leaf, &roots(&new.cert_pem), &provider).is_ok());
    }

    #[test]
    fn protocol_problems_and_certificate_alerts_are_told_apart() {
        use rustls::Error as E;
        let alert = E::AlertReceived(AlertDescription::UnknownCA);
        assert_eq!(classify(&alert), HandshakeFailure::PeerRefused);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert.clone());
        assert_eq!(classify_io(&io), HandshakeFailure::PeerRefused);
        assert!(matches!(peer_refusal(&io), Some(E::AlertReceived(_))));
        let hs = E::AlertReceived(AlertDescription::HandshakeFailure);
        assert_eq!(classify(&hs), HandshakeFailure::Protocol);
        assert!(peer_refusal(&hs).is_none());
        let junk = E::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(classify(&junk), HandshakeFailure::Protocol);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(&eof), HandshakeFailure::Protocol);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset), HandshakeFailure::Other);
        assert_eq!(
            classify(&E::NoCertificatesPresented),
            HandshakeFailure::NoCertificate
        );
    }

    #[tokio::test]
    async fn a_rejection_is_kept_only_for_the_handshake_that_made_it() {
        let ca = TestCa::new("someone's CA");
        let leaf = chain(&ca.issue(&Leaf::spiffe("spiffe://x/ns/a/sa/b")).cert_pem);
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let ((), r) = capture(async { record(&leaf[0], &e, None) }).await;
        let r = r.expect("a rejection");
        assert_eq!(r.issuer, "CN=someone's CA");
        assert_eq!(r.failure, HandshakeFailure::UntrustedIssuer);
        // Outside a capture, nothing is kept (and nothing fails).
        record(&leaf[0], &e, None);
        let ((), r) = capture(async {}).await;
        assert!(r.is_none());
    }
}
