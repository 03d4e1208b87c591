//! Prometheus metrics, prefixed `kube_mtls_webhook_`: pods injected, skipped
//! (by reason), rejected, and admission latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::Skip;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub injected: Counter,
    pub rejected: Counter,
    skipped: Family<Reason, Counter>,
    latency: Histogram,
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
        Metrics {
            registry,
            injected,
            rejected,
            skipped,
            latency,
        }
    }

    pub fn skipped(&self, why: Skip) {
        self.skipped
            .get_or_create(&Reason {
                reason: why.as_str().into(),
            })
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
