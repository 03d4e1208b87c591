//! Small builders for the unit tests: pods, containers, namespaces, profiles
//! and the cluster view they make, so each test states only what it is about.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::cluster::ClusterView;
use crate::profile::{MtlsProfile, MtlsProfileSpec};
use crate::resolve::Defaults;

/// The namespace every fixture lives in unless told otherwise.
pub const NS: &str = "shop";
/// The webhook's own namespace in the fixtures.
pub const OWN_NS: &str = "kube-mtls";

/// A pod under construction.
#[derive(Debug, Clone)]
pub struct Pod(Value);

/// A pod named `orders` in [`NS`] with service account `orders` and one app
/// container `app` (port `http` 8080), opted in by annotation.
pub fn pod() -> Pod {
    Pod(json!({
        "metadata": {"name": "orders", "namespace": NS, "annotations": {"kube-mtls.io/inject": "enabled"}},
        "spec": {"serviceAccountName": "orders", "containers": [container("app").port("http", 8080).build()]},
    }))
}

impl Pod {
    /// Sets annotation `kube-mtls.io/<name>` (`inject` included).
    pub fn annotate(mut self, name: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][format!("kube-mtls.io/{name}")] = json!(value);
        self
    }

    /// Removes annotation `kube-mtls.io/<name>`.
    pub fn unannotate(mut self, name: &str) -> Self {
        if let Some(a) = self.0["metadata"]["annotations"].as_object_mut() {
            a.remove(&format!("kube-mtls.io/{name}"));
        }
        self
    }

    /// Sets a pod label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Replaces the app containers.
    pub fn containers(mut self, containers: Vec<Value>) -> Self {
        self.0["spec"]["containers"] = json!(containers);
        self
    }

    /// Sets the init containers.
    pub fn init_containers(mut self, containers: Vec<Value>) -> Self {
        self.0["spec"]["initContainers"] = json!(containers);
        self
    }

    /// Sets `spec.<key>`.
    pub fn spec(mut self, key: &str, value: Value) -> Self {
        self.0["spec"][key] = value;
        self
    }

    pub fn build(self) -> Value {
        self.0
    }
}

/// A container under construction.
#[derive(Debug, Clone)]
pub struct Container(Value);

/// A container with an image and no ports.
pub fn container(name: &str) -> Container {
    Container(json!({"name": name, "image": "example/app:1"}))
}

impl Container {
    /// Adds a named TCP port.
    pub fn port(mut self, name: &str, number: u16) -> Self {
        let ports = self.0["ports"].as_array().cloned().unwrap_or_default();
        let mut ports = ports;
        ports.push(json!({"name": name, "containerPort": number}));
        self.0["ports"] = json!(ports);
        self
    }

    /// Sets a probe field (`readinessProbe`, ...) to `probe`.
    pub fn probe(mut self, field: &str, probe: Value) -> Self {
        self.0[field] = probe;
        self
    }

    pub fn build(self) -> Value {
        self.0
    }
}

/// A namespace with `labels` and `annotations`.
pub fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
    let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// An MtlsProfile `name` in [`NS`] with the spec `spec` (JSON, camelCase).
pub fn profile(name: &str, spec: Value) -> MtlsProfile {
    let spec: MtlsProfileSpec = serde_json::from_value(spec).expect("a profile spec");
    let mut p = MtlsProfile::new(name, spec);
    p.metadata.namespace = Some(NS.to_owned());
    p
}

/// A cluster view of `profiles` and `namespaces`.
pub fn view(profiles: Vec<MtlsProfile>, namespaces: Vec<Namespace>) -> ClusterView {
    ClusterView::Fixed {
        profiles,
        namespaces,
    }
}

/// The settings of a webhook given no flags.
pub fn defaults(native_sidecar: bool) -> Defaults {
    crate::cli::unset_defaults(native_sidecar)
}
