//! Prometheus metrics, all prefixed `kube_mtls_sidecar_`.
//!
//! Labelled counters are resolved once here, at start-up, and kept as plain
//! handles: incrementing one on the hot path is a single atomic add, with no
//! label hashing and no lock.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    direction: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    subject: String,
    serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SerialLabel {
    serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
    policy: String,
}

/// Distinct identities `would_deny` keeps a series for; callers beyond these
/// are counted under `identity="other"` (their identity is in the log).
const MAX_WOULD_DENY_IDENTITIES: usize = 100;

/// The metrics of permissive and audit modes.
#[derive(Default)]
struct ModeMetrics {
    /// `plaintext_connections_total{port}`.
    plaintext: Family<PortLabel, Counter>,
    /// `would_deny_total{identity}`.
    would_deny: Family<IdentityLabel, Counter>,
    /// The identities `would_deny` has a series for, to bound them.
    would_deny_seen: Mutex<HashSet<String>>,
    /// `mode_info{mode,policy} 1`.
    info: Family<ModeLabels, Gauge>,
}

impl ModeMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "plaintext_connections",
            "Inbound connections served without TLS (permissive mode), by app port",
            self.plaintext.clone(),
        );
        registry.register(
            "would_deny",
            "Requests (connections on TCP ports) from authenticated callers not on the allow-list, let through by --policy audit, by caller identity",
            self.would_deny.clone(),
        );
        registry.register(
            "mode_info",
            "Always 1; the labels say whether plaintext callers are let in (mode: strict or permissive) and whether the allow-list refuses (policy: enforce or audit)",
            self.info.clone(),
        );
    }
}

/// The connection counters of one direction (`inbound` or `outbound`).
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// `kube_mtls_sidecar_connections_total{direction}`.
    pub accepted: Counter,
    /// `kube_mtls_sidecar_active_connections{direction}`.
    pub active: Gauge,
}

impl ConnMetrics {
    /// Counts a connection accepted and open until the guard is dropped.
    pub fn open(&self) -> OpenConn {
        self.accepted.inc();
        self.active.inc();
        OpenConn(self.active.clone())
    }
}

/// One open connection in `active_connections`; see [`ConnMetrics::open`].
pub struct OpenConn(Gauge);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoClientCert,
    UntrustedCert,
    ExpiredCert,
    NotYetValidCert,
    WrongKeyUsage,
    HandshakeFailed,
    HandshakeTimeout,
    NotAllowed,
    ConnectionLimit,
    HandshakeLimit,
    SourceHandshakeLimit,
    NotRedirected,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::NoClientCert,
        Refusal::UntrustedCert,
        Refusal::ExpiredCert,
        Refusal::NotYetValidCert,
        Refusal::WrongKeyUsage,
        Refusal::HandshakeFailed,
        Refusal::HandshakeTimeout,
        Refusal::NotAllowed,
        Refusal::ConnectionLimit,
        Refusal::HandshakeLimit,
        Refusal::SourceHandshakeLimit,
        Refusal::NotRedirected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoClientCert => "no_client_certificate",
            Refusal::UntrustedCert => "untrusted_certificate",
            Refusal::ExpiredCert => "expired_certificate",
            Refusal::NotYetValidCert => "not_yet_valid_certificate",
            Refusal::WrongKeyUsage => "wrong_key_usage",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::NotAllowed => "identity_not_allowed",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::SourceHandshakeLimit => "source_handshake_limit",
            Refusal::NotRedirected => "not_redirected",
        }
    }
}

/// Which way a connection goes: from a caller (`inbound`, the inbound and
/// direct listeners) or from the app to a peer (`outbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a TLS handshake failed, in either direction
/// (`handshake_failures_total{direction,reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate does not chain to a CA in the trust bundle
    /// (no CA of its issuer's name, or one whose key did not sign it).
    UntrustedIssuer,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate is not valid yet (a clock skew, or issued ahead).
    NotYetValid,
    /// The peer's certificate is not for this use (clientAuth or serverAuth missing).
    BadUsage,
    /// Any other problem with the peer's certificate: its encoding, an
    /// unsupported algorithm, or (outbound) an identity outside the trust domain.
    BadCertificate,
    /// The client sent no certificate.
    NoCertificate,
    /// The peer refused our certificate (it sent a certificate alert).
    PeerRefused,
    /// The peer does not speak TLS as we do (not TLS at all, no common
    /// version or protocol, a broken message, or a close mid-handshake).
    Protocol,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (e.g. a connection reset).
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::UntrustedIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::BadUsage,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::PeerRefused,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::UntrustedIssuer => "untrusted_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::BadUsage => "bad_usage",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::PeerRefused => "peer_refused",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// True when the peer's certificate is what failed.
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            HandshakeFailure::UntrustedIssuer
                | HandshakeFailure::Expired
                | HandshakeFailure::NotYetValid
                | HandshakeFailure::BadUsage
                | HandshakeFailure::BadCertificate
        )
    }

    /// The refusal an inbound connection that failed so is counted as
    /// (`refusals_total{reason}`, whose reasons predate this classification).
    pub fn refusal(self) -> Refusal {
        match self {
            HandshakeFailure::UntrustedIssuer | HandshakeFailure::BadCertificate => {
                Refusal::UntrustedCert
            }
            HandshakeFailure::Expired => Refusal::ExpiredCert,
            HandshakeFailure::NotYetValid => Refusal::NotYetValidCert,
            HandshakeFailure::BadUsage => Refusal::WrongKeyUsage,
            HandshakeFailure::NoCertificate => Refusal::NoClientCert,
            HandshakeFailure::Timeout => Refusal::HandshakeTimeout,
            HandshakeFailure::PeerRefused
            | HandshakeFailure::Protocol
            | HandshakeFailure::Other => Refusal::HandshakeFailed,
        }
    }
}

/// Handshakes: completed ones (`handshakes_total{result="ok"}`, inbound)
/// and failed ones by direction and reason, resolved once.
struct HandshakeMetrics {
    ok: Counter,
    /// Indexed by [`HandshakeFailure::ALL`].
    inbound: Vec<Counter>,
    outbound: Vec<Counter>,
}

impl HandshakeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let handshakes = Family::<Result_, Counter>::default();
        registry.register(
            "handshakes",
            "Completed inbound mTLS handshakes",
            handshakes.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "handshake_failures",
            "TLS handshakes that failed, by direction (inbound: a caller's; outbound: to a peer) and reason (untrusted_issuer, expired, not_yet_valid, bad_usage, bad_certificate, no_certificate, peer_refused, protocol, timeout, other)",
            failures.clone(),
        );
        let of = |direction: Direction| {
            HandshakeFailure::ALL
                .iter()
                .map(|f| {
                    failures
                        .get_or_create(&FailureLabels {
                            direction: direction.as_str().into(),
                            reason: f.as_str().into(),
                        })
                        .clone()
                })
                .collect()
        };
        HandshakeMetrics {
            ok: handshakes
                .get_or_create(&Result_ {
                    result: "ok".into(),
                })
                .clone(),
            inbound: of(Direction::Inbound),
            outbound: of(Direction::Outbound),
        }
    }
}

/// Connections or requests refused, by reason; indexed by [`Refusal::ALL`].
fn register_refusals(registry: &mut Registry) -> Vec<Counter> {
    let family = Family::<Reason, Counter>::default();
    registry.register(
        "refusals",
        "Connections or requests refused, by reason",
        family.clone(),
    );
    Refusal::ALL
        .iter()
        .map(|r| {
            family
                .get_or_create(&Reason {
                    reason: r.as_str().into(),
                })
                .clone()
        })
        .collect()
}

/// The pod's own certificate: its expiry and serial, and how reloads of
/// the key pair went.
struct CertMetrics {
    expiry: Gauge,
    info: Family<SerialLabel, Gauge>,
    reload_ok: Counter,
    reload_refused: Counter,
}

impl CertMetrics {
    fn register(registry: &mut Registry) -> Self {
        let expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the served chain (tls.crt) stops being valid: the earliest not_after of its certificates, seconds since the epoch",
            expiry.clone(),
        );
        let info = Family::<SerialLabel, Gauge>::default();
        registry.register(
            "certificate_info",
            "Always 1; the serial label is the serial number (hex, as openssl x509 -serial prints it) of the certificate served now, replaced on rotation",
            info.clone(),
        );
        let reloads = Family::<Result_, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Certificate (key pair) reloads by result",
            reloads.clone(),
        );
        let result = |r: &str| reloads.get_or_create(&Result_ { result: r.into() }).clone();
        CertMetrics {
            expiry,
            info,
            reload_ok: result("ok"),
            reload_refused: result("refused"),
        }
    }
}

/// Which CAs the sidecar trusts, and how reloads of its trust bundle went.
struct TrustMetrics {
    /// `trusted_ca_expiry_seconds{subject,serial}`: one series per CA of the
    /// bundle serving now.
    expiry: Family<CaLabels, Gauge>,
    reload_ok: Counter,
    reload_refused: Counter,
}

impl TrustMetrics {
    fn register(registry: &mut Registry) -> Self {
        let expiry = Family::<CaLabels, Gauge>::default();
        registry.register(
            "trusted_ca_expiry_seconds",
            "One series per CA certificate of the trust bundle serving now (subject, serial as openssl x509 -serial prints it): when it stops being valid (not_after), seconds since the epoch",
            expiry.clone(),
        );
        let reloads = Family::<Result_, Counter>::default();
        registry.register(
            "trust_bundle_reloads",
            "Trust bundle reloads by result; a refused bundle leaves the previous one serving",
            reloads.clone(),
        );
        let result = |r: &str| reloads.get_or_create(&Result_ { result: r.into() }).clone();
        TrustMetrics {
            expiry,
            reload_ok: result("ok"),
            reload_refused: result("refused"),
        }
    }
}

/// A request the client got wrong: answered 400, and never the app's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The request body's framing is broken (e.g. a bad chunk size).
    MalformedBody,
    /// The client stopped sending the body part-way (reset or disconnect).
    AbortedBody,
}

impl ClientError {
    pub const ALL: [ClientError; 2] = [ClientError::MalformedBody, ClientError::AbortedBody];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::MalformedBody => "malformed_body",
            ClientError::AbortedBody => "aborted_body",
        }
    }
}

/// The counters for requests that did not go through: the app too slow
/// (`upstream_timeouts`), or the client at fault (`client_errors`).
fn register_request_outcomes(registry: &mut Registry) -> (Counter, Vec<Counter>) {
    let timeouts = Family::<DirectionLabel, Counter>::default();
    registry.register(
            "upstream_timeouts",
            "Requests answered 504 because the app sent no response headers within --upstream-timeout (also counted in upstream_errors)",
            timeouts.clone(),
        );
    let upstream_timeouts = timeouts
        .get_or_create(&DirectionLabel {
            direction: "inbound".into(),
        })
        .clone();
    let client_family = Family::<Reason, Counter>::default();
    registry.register(
        "client_errors",
        "Requests the client got wrong, answered 400 without counting against the app, by reason",
        client_family.clone(),
    );
    let client_errors = ClientError::ALL
        .iter()
        .map(|r| {
            client_family
                .get_or_create(&Reason {
                    reason: r.as_str().into(),
                })
                .clone()
        })
        .collect();
    (upstream_timeouts, client_errors)
}

/// Connections accepted and open now, by direction.
fn register_connections(registry: &mut Registry) -> (ConnMetrics, ConnMetrics) {
    let accepted = Family::<DirectionLabel, Counter>::default();
    registry.register(
        "connections",
        "Connections accepted, by direction (inbound: from callers; outbound: from the app)",
        accepted.clone(),
    );
    let active = Family::<DirectionLabel, Gauge>::default();
    registry.register(
        "active_connections",
        "Connections open now, by direction",
        active.clone(),
    );
    let of = |direction: &str| {
        let label = DirectionLabel {
            direction: direction.into(),
        };
        ConnMetrics {
            accepted: accepted.get_or_create(&label).clone(),
            active: active.get_or_create(&label).clone(),
        }
    };
    (of("inbound"), of("outbound"))
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    /// Connections from callers (the inbound and direct listeners).
    pub inbound: ConnMetrics,
    /// Connections from the app (the outbound listener).
    pub outbound: ConnMetrics,
    /// Failed accepts by listener, resolved by [`Metrics::accept_errors`].
    accept_errors: Family<ListenerLabel, Counter>,
    /// Permissive and audit modes.
    modes: ModeMetrics,
    pub handshakes_ok: Counter,
    handshakes: HandshakeMetrics,
    refusals: Vec<Counter>,
    pub upstream_errors: Counter,
    pub outbound_errors: Counter,
    pub upstream_timeouts: Counter,
    client_errors: Vec<Counter>,
    pub cert_expiry: Gauge,
    /// `certificate_info{serial} 1`: one series, for the certificate served now.
    cert_info: Family<SerialLabel, Gauge>,
    pub cert_reload_ok: Counter,
    pub cert_reload_refused: Counter,
    trust: TrustMetrics,
    pub trust_reload_ok: Counter,
    pub trust_reload_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kube_mtls_sidecar");
        let requests = Counter::default();
        registry.register(
            "requests",
            "HTTP requests forwarded to the app",
            requests.clone(),
        );
        let (inbound, outbound) = register_connections(&mut registry);
        let accept_errors = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts (e.g. out of file descriptors), by listener; the listener backs off and retries",
            accept_errors.clone(),
        );
        let handshakes = HandshakeMetrics::register(&mut registry);
        let refusals = register_refusals(&mut registry);
        let errors = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failures to reach the app (inbound) or a peer (outbound)",
            errors.clone(),
        );
        let upstream_errors = errors
            .get_or_create(&DirectionLabel {
                direction: "inbound".into(),
            })
            .clone();
        let outbound_errors = errors
            .get_or_create(&DirectionLabel {
                direction: "outbound".into(),
            })
            .clone();
        let (upstream_timeouts, client_errors) = register_request_outcomes(&mut registry);
        let modes = ModeMetrics::default();
        modes.register(&mut registry);
        let cert = CertMetrics::register(&mut registry);
        let trust = TrustMetrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            inbound,
            outbound,
            accept_errors,
            modes,
            handshakes_ok: handshakes.ok.clone(),
            handshakes,
            refusals,
            upstream_errors,
            outbound_errors,
            upstream_timeouts,
            client_errors,
            cert_expiry: cert.expiry,
            cert_info: cert.info,
            cert_reload_ok: cert.reload_ok,
            cert_reload_refused: cert.reload_refused,
            trust_reload_ok: trust.reload_ok.clone(),
            trust_reload_refused: trust.reload_refused.clone(),
            trust,
        }
    }

    /// The failed-accept counter of one listener (`inbound`, `listen`,
    /// `outbound`, `admin`), taken once when the listener is set up.
    pub fn accept_errors(&self, listener: &str) -> Counter {
        self.accept_errors
            .get_or_create(&ListenerLabel {
                listener: listener.into(),
            })
            .clone()
    }

    /// Says which certificate is served now (`certificate_info`), replacing
    /// the one served before.
    pub fn set_certificate(&self, serial: &str) {
        self.cert_info.clear();
        self.cert_info
            .get_or_create(&SerialLabel {
                serial: serial.into(),
            })
            .set(1);
    }

    /// Says which CAs are trusted now (`trusted_ca_expiry_seconds`), one
    /// series per CA, replacing those of the bundle trusted before.
    pub fn set_trusted_cas(&self, cas: &[crate::trust::TrustedCa]) {
        self.trust.expiry.clear();
        for ca in cas {
            self.trust
                .expiry
                .get_or_create(&CaLabels {
                    subject: ca.subject.clone(),
                    serial: ca.serial.clone(),
                })
                .set(ca.not_after);
        }
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, direction: Direction, failure: HandshakeFailure) {
        let counters = match direction {
            Direction::Inbound => &self.handshakes.inbound,
            Direction::Outbound => &self.handshakes.outbound,
        };
        if let Some(i) = HandshakeFailure::ALL.iter().position(|f| *f == failure) {
            counters[i].inc();
        }
    }

    /// Says which mode and policy the sidecar runs with (`mode_info`).
    pub fn set_modes(&self, mode: &str, policy: &str) {
        self.modes.info.clear();
        self.modes
            .info
            .get_or_create(&ModeLabels {
                mode: mode.into(),
                policy: policy.into(),
            })
            .set(1);
    }

    /// Counts a plaintext connection to `port` (permissive mode).
    pub fn plaintext_connection(&self, port: u16) {
        self.modes
            .plaintext
            .get_or_create(&PortLabel {
                port: port.to_string(),
            })
            .inc();
    }

    /// The `would_deny` counter for a caller, taken once per connection.
    pub fn would_deny(&self, identity: &str) -> Counter {
        let mut seen = self
            .modes
            .would_deny_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label = if seen.contains(identity) || seen.len() < MAX_WOULD_DENY_IDENTITIES {
            seen.insert(identity.to_owned());
            identity
        } else {
            "other"
        };
        self.modes
            .would_deny
            .get_or_create(&IdentityLabel {
                identity: label.into(),
            })
            .clone()
    }

    pub fn refused(&self, reason: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == reason) {
            self.refusals[i].inc();
        }
    }

    pub fn client_error(&self, kind: ClientError) {
        if let Some(i) = ClientError::ALL.iter().position(|k| *k == kind) {
            self.client_errors[i].inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
