//! Prometheus metrics, prefixed `kube_mtls_webhook_`: pods injected, skipped
//! (by reason), rejected, admission latency, Certificate reconciles (by
//! outcome: a controller that keeps re-applying shows as a growing `updated`)
//! and failed accepts.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::skip::Skip;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileOutcome {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub injected: Counter,
    pub rejected: Counter,
    skipped: Family<Reason, Counter>,
    latency: Histogram,
    reconciles: Family<ReconcileOutcome, Counter>,
    /// Failed accepts on the HTTPS port (out of file descriptors).
    pub accept_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kube_mtls_webhook");
        let injected = Counter::default();
        registry.register("injected", "Pods injected", injected.clone());
        let rejected = Counter::default();
        registry.register("rejected", "Pods rejected", rejected.clone());
        let skipped = Family::<Reason, Counter>::default();
        registry.register("skipped", "Pods left alone, by reason", skipped.clone());
        let latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview",
            latency.clone(),
        );
        let reconciles = Family::<ReconcileOutcome, Counter>::default();
        registry.register(
            "certificate_reconciles",
            "Certificate reconciles, by outcome (deleted, updated, in_line, ignored, error)",
            reconciles.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts on the HTTPS port (out of file descriptors); the webhook backs off and retries",
            accept_errors.clone(),
        );
        Metrics {
            registry,
            injected,
            rejected,
            skipped,
            latency,
            reconciles,
            accept_errors,
        }
    }

    pub fn skipped(&self, why: Skip) {
        self.skipped
            .get_or_create(&Reason {
                reason: why.as_str().into(),
            })
            .inc();
    }

    /// Counts one Certificate reconcile that ended in `outcome`.
    pub fn reconciled(&self, outcome: &'static str) {
        self.reconciles
            .get_or_create(&ReconcileOutcome { outcome })
            .inc();
    }

    pub fn observe_latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
