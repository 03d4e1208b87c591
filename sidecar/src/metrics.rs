//! Prometheus metrics, all prefixed `kube_mtls_sidecar_`.
//!
//! Labelled counters are resolved once here, at start-up, and kept as plain
//! handles: incrementing one on the hot path is a single atomic add, with no
//! label hashing and no lock.

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
struct Direction {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
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
    let timeouts = Family::<Direction, Counter>::default();
    registry.register(
            "upstream_timeouts",
            "Requests answered 504 because the app sent no response headers within --upstream-timeout (also counted in upstream_errors)",
            timeouts.clone(),
        );
    let upstream_timeouts = timeouts
        .get_or_create(&Direction {
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
    let accepted = Family::<Direction, Counter>::default();
    registry.register(
        "connections",
        "Connections accepted, by direction (inbound: from callers; outbound: from the app)",
        accepted.clone(),
    );
    let active = Family::<Direction, Gauge>::default();
    registry.register(
        "active_connections",
        "Connections open now, by direction",
        active.clone(),
    );
    let of = |direction: &str| {
        let label = Direction {
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
    pub handshakes_ok: Counter,
    refusals: Vec<Counter>,
    pub upstream_errors: Counter,
    pub outbound_errors: Counter,
    pub upstream_timeouts: Counter,
    client_errors: Vec<Counter>,
    pub cert_expiry: Gauge,
    pub cert_reload_ok: Counter,
    pub cert_reload_refused: Counter,
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
        let handshakes = Family::<Result_, Counter>::default();
        registry.register(
            "handshakes",
            "Completed mTLS handshakes",
            handshakes.clone(),
        );
        let handshakes_ok = handshakes
            .get_or_create(&Result_ {
                result: "ok".into(),
            })
            .clone();
        let refusal_family = Family::<Reason, Counter>::default();
        registry.register(
            "refusals",
            "Connections or requests refused, by reason",
            refusal_family.clone(),
        );
        let refusals = Refusal::ALL
            .iter()
            .map(|r| {
                refusal_family
                    .get_or_create(&Reason {
                        reason: r.as_str().into(),
                    })
                    .clone()
            })
            .collect();
        let errors = Family::<Direction, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failures to reach the app (inbound) or a peer (outbound)",
            errors.clone(),
        );
        let upstream_errors = errors
            .get_or_create(&Direction {
                direction: "inbound".into(),
            })
            .clone();
        let outbound_errors = errors
            .get_or_create(&Direction {
                direction: "outbound".into(),
            })
            .clone();
        let (upstream_timeouts, client_errors) = register_request_outcomes(&mut registry);
        let cert_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the served chain (tls.crt) stops being valid: the earliest not_after of its certificates, seconds since the epoch",
            cert_expiry.clone(),
        );
        let reloads = Family::<Result_, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Certificate reloads by result",
            reloads.clone(),
        );
        let cert_reload_ok = reloads
            .get_or_create(&Result_ {
                result: "ok".into(),
            })
            .clone();
        let cert_reload_refused = reloads
            .get_or_create(&Result_ {
                result: "refused".into(),
            })
            .clone();
        Metrics {
            registry,
            requests,
            inbound,
            outbound,
            accept_errors,
            handshakes_ok,
            refusals,
            upstream_errors,
            outbound_errors,
            upstream_timeouts,
            client_errors,
            cert_expiry,
            cert_reload_ok,
            cert_reload_refused,
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
