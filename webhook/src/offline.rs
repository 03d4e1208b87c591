//! Offline injection: `kube-mtls-webhook inject -f deploy.yaml` prints the same
//! manifests with the same injection the admission webhook would apply, for
//! GitOps pipelines that commit rendered output and for anyone without a
//! cluster. Each workload's pod template gets the patch; one cert-manager
//! Certificate per identity is appended, since no webhook will create it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::{Decision, decide};
use crate::annotations::Defaults;
use crate::certificate::DesiredCertificate;
use crate::cluster::ClusterView;
use crate::patch;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({kind} {name}): {problem}")]
    Rejected {
        index: usize,
        kind: String,
        name: String,
        problem: String,
    },
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every opted-in workload in a multi-document YAML stream.
/// Returns the output YAML and warnings.
pub fn inject_yaml(
    input: &str,
    defaults: &Defaults,
    certificates: bool,
) -> Result<(String, Vec<String>), OfflineError> {
    let view = ClusterView::empty();
    let mut docs = Vec::new();
    let mut warnings = Vec::new();
    let mut certs: BTreeMap<(String, String), DesiredCertificate> = BTreeMap::new();
    for (index, de) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let doc = Value::deserialize(de).map_err(|source| OfflineError::Yaml { index, source })?;
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(path) = template_path(&kind) else {
            docs.push(doc);
            continue;
        };
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let Some(template) = doc.pointer(path).cloned() else {
            docs.push(doc);
            continue;
        };
        // The template as a pod, so the offline path runs the very same decision.
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        });
        match decide(&pod, &namespace, "", &view, defaults) {
            Decision::Skip(_) => docs.push(doc),
            Decision::Reject(r) => {
                return Err(OfflineError::Rejected {
                    index,
                    kind,
                    name,
                    problem: r.to_string(),
                });
            }
            Decision::Inject(boxed) => {
                let (injection, resolved) = *boxed;
                let patched = patch::apply(&pod, &injection.ops).map_err(|problem| {
                    OfflineError::Rejected {
                        index,
                        kind: kind.clone(),
                        name: name.clone(),
                        problem: format!("patch does not apply: {problem}"),
                    }
                })?;
                let mut doc = doc;
                if path.is_empty() {
                    doc["metadata"] = patched["metadata"].clone();
                    doc["spec"] = patched["spec"].clone();
                } else if let Some(t) = doc.pointer_mut(path) {
                    t["metadata"] = patched["metadata"].clone();
                    t["spec"] = patched["spec"].clone();
                }
                warnings.extend(
                    injection
                        .warnings
                        .into_iter()
                        .map(|w| format!("{kind} {name}: {w}")),
                );
                if resolved.secret.is_none() {
                    let c = DesiredCertificate::from_resolved(&resolved);
                    certs.insert((c.namespace.clone(), c.service_account.clone()), c);
                }
                docs.push(doc);
            }
        }
    }
    if certificates {
        docs.extend(certs.values().map(DesiredCertificate::object));
    }
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&doc)
                .map_err(|source| OfflineError::Yaml { index: 0, source })?,
        );
    }
    Ok((out, warnings))
}
