//! Kubernetes Events on the pod's owner ("Injected", "Skipped", "Rejected"), so
//! `kubectl describe deployment` (or replicaset, job...) says what happened;
//! and Warnings on other objects the webhook reads (the issuer whose CA the
//! trust bundle cannot follow: `kubectl describe clusterissuer` says so).
//!
//! At admission the pod may not have a name yet, but its owner reference (set by
//! the ReplicaSet or Job controller) does. Events are best effort: a failure to
//! publish is logged, never a reason to refuse a pod.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder as KubeRecorder, Reporter};
use serde_json::Value;

pub struct Recorder {
    inner: KubeRecorder,
}

impl Recorder {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "kube-mtls-webhook".into(),
            instance,
        };
        Recorder {
            inner: KubeRecorder::new(client, reporter),
        }
    }

    /// The owner (first owner reference) of a pod as an ObjectReference.
    pub fn owner_of(pod: &Value, namespace: &str) -> Option<ObjectReference> {
        let owner = pod
            .pointer("/metadata/ownerReferences")?
            .as_array()?
            .first()?;
        let s = |k: &str| owner.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(ObjectReference {
            api_version: s("apiVersion"),
            kind: s("kind"),
            name: s("name"),
            uid: s("uid"),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        })
    }

    pub async fn publish_on_owner(&self, pod: &Value, namespace: &str, reason: &str, note: &str) {
        let Some(reference) = Self::owner_of(pod, namespace) else {
            return;
        };
        let ev = Event {
            type_: if reason == "Rejected" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Admission".into(),
            secondary: None,
        };
        if let Err(e) = self.inner.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// A Warning Event on `reference` (best effort, as every Event here).
    pub async fn warn_on(&self, reference: &ObjectReference, reason: &str, note: &str) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "TrustBundle".into(),
            secondary: None,
        };
        if let Err(e) = self.inner.publish(&ev, reference).await {
            tracing::debug!(error = %e, "event not published");
        }
    }
}
