//! Offline injection: `kube-mtls-webhook inject -f deploy.yaml` prints the same
//! manifests with the same injection the admission webhook would apply, for
//! GitOps pipelines that commit rendered output and for anyone without a
//! cluster. Each workload's pod template gets the patch (inside a `kind: List`
//! too, as `kubectl get -o yaml` prints); one cert-manager Certificate per
//! identity is appended, since no webhook will create it.
//!
//! The output is applied with kubectl, which reads YAML 1.1, so:
//! - documents that are not injected go out byte for byte as they came in,
//!   comments included (the stream is cut at its `---` lines, [`yaml::split`]);
//! - injected documents are read with kubectl's meaning of every value
//!   ([`yaml::load`]: `0400` is 256, `yes` is true) and written so that no YAML
//!   reader can take a value for something else ([`yaml::emit`]).
//!
//! A workload's identity, `spiffe://<trust domain>/ns/<namespace>/sa/<sa>`,
//! and its Certificate's namespace depend on the namespace it is applied to.
//! A document without `metadata.namespace` takes it from `-n/--namespace`; an
//! opted-in one without either is refused, because any guess would put a
//! wrong identity in its certificate.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::admission::{Decision, decide};
use crate::certificate::DesiredCertificate;
use crate::cluster::ClusterView;
use crate::patch::{self, Injection};
use crate::resolve::{Defaults, Resolved};
use crate::yaml::{self, Chunk, emit, load};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {document}: {source}")]
    Yaml {
        document: usize,
        source: load::LoadError,
    },
    #[error("{place} ({kind} {name}): {problem}")]
    Rejected {
        place: String,
        kind: String,
        name: String,
        problem: String,
    },
}

/// What `inject` was asked for besides the injection settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Append the cert-manager Certificates (`--no-certificates` turns it off).
    pub certificates: bool,
    /// `-n/--namespace`: the namespace the output will be applied to.
    pub namespace: Option<String>,
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

fn text<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// One object's place in the input, for messages: `document 2`, `document 2 item 1`.
#[derive(Clone)]
struct Place {
    label: String,
    kind: String,
    name: String,
}

impl Place {
    fn of(label: String, doc: &Value) -> Self {
        Place {
            label,
            kind: text(doc, "/kind").to_owned(),
            name: text(doc, "/metadata/name").to_owned(),
        }
    }

    fn error(&self, problem: impl Into<String>) -> OfflineError {
        OfflineError::Rejected {
            place: self.label.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            problem: problem.into(),
        }
    }
}

/// One run over a stream: settings in, warnings and Certificates out.
struct Run<'a> {
    defaults: &'a Defaults,
    options: &'a Options,
    view: ClusterView,
    warnings: Vec<String>,
    certs: BTreeMap<(String, String), DesiredCertificate>,
}

/// Injects every opted-in workload in a multi-document YAML stream.
/// Returns the output YAML and warnings.
pub fn inject_yaml(
    input: &str,
    defaults: &Defaults,
    options: &Options,
) -> Result<(String, Vec<String>), OfflineError> {
    let mut run = Run {
        defaults,
        options,
        view: ClusterView::empty(),
        warnings: Vec::new(),
        certs: BTreeMap::new(),
    };
    let mut out = String::new();
    let mut number = 0;
    for chunk in yaml::split(input) {
        if chunk.is_empty() {
            out.push_str(chunk.text);
            continue;
        }
        number += 1;
        match run.chunk(&chunk, number)? {
            Some(rewritten) => out.push_str(&rewritten),
            None => out.push_str(chunk.text),
        }
    }
    if options.certificates && !run.certs.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for c in run.certs.values() {
            out.push_str("---\n");
            out.push_str(&emit::document(&c.object()));
        }
    }
    Ok((out, run.warnings))
}

impl Run<'_> {
    /// The chunk rewritten if any object in it was injected; `None`: as it was.
    fn chunk(&mut self, chunk: &Chunk<'_>, number: usize) -> Result<Option<String>, OfflineError> {
        let docs = load::documents(chunk.text).map_err(|source| OfflineError::Yaml {
            document: number,
            source,
        })?;
        let mut changed = false;
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            let place = Place::of(format!("document {number}"), &doc);
            match self.object(&doc, &place)? {
                Some(new) => {
                    changed = true;
                    out.push(new);
                }
                None => out.push(doc),
            }
        }
        Ok(changed.then(|| rewrite(chunk, &out)))
    }

    /// The object injected (a List: its items), or `None` if nothing changed.
    fn object(&mut self, doc: &Value, place: &Place) -> Result<Option<Value>, OfflineError> {
        let kind = text(doc, "/kind");
        if kind == "List"
            || (kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array))
        {
            return self.list(doc, place);
        }
        let Some(path) = template_path(kind) else {
            return Ok(None);
        };
        let Some(template) = doc.pointer(path) else {
            return Ok(None);
        };
        // The template as a pod, so the offline path runs the very same decision.
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        });
        let namespace = self.namespace(doc, place)?;
        let decision = decide(
            &pod,
            namespace.as_deref().unwrap_or("default"),
            "",
            &self.view,
            self.defaults,
        );
        let (injection, resolved) = match decision {
            Decision::Skip(_) => return Ok(None),
            Decision::Reject(r) => return Err(place.error(r.to_string())),
            Decision::Inject(boxed) => *boxed,
        };
        if namespace.is_none() {
            return Err(place.error(format!(
                "no metadata.namespace, and its SPIFFE identity spiffe://{}/ns/<namespace>/sa/{} and Certificate depend on the namespace. Fix: pass -n/--namespace <namespace> (the namespace you will apply it to), or set metadata.namespace",
                resolved.trust_domain, resolved.service_account
            )));
        }
        self.injected(doc, path, &pod, injection, &resolved, place)
            .map(Some)
    }

    /// `doc` with the injection in its pod template; records its warnings
    /// and Certificate.
    fn injected(
        &mut self,
        doc: &Value,
        path: &str,
        pod: &Value,
        injection: Injection,
        resolved: &Resolved,
        place: &Place,
    ) -> Result<Value, OfflineError> {
        let patched = patch::apply(pod, &injection.ops)
            .map_err(|problem| place.error(format!("patch does not apply: {problem}")))?;
        let mut doc = doc.clone();
        let target = if path.is_empty() {
            Some(&mut doc)
        } else {
            doc.pointer_mut(path)
        };
        if let Some(t) = target {
            t["metadata"] = patched["metadata"].clone();
            t["spec"] = patched["spec"].clone();
        }
        let who = format!("{} {}", place.kind, place.name);
        if doc.pointer("/metadata/namespace").is_none() {
            self.warnings.push(format!(
                "{who}: no metadata.namespace, so its identity {} and Certificate are for namespace {} (-n/--namespace): apply it with -n {}",
                resolved.identity(), resolved.namespace, resolved.namespace
            ));
        }
        self.warnings.extend(
            injection
                .warnings
                .into_iter()
                .map(|w| format!("{who}: {w}")),
        );
        if resolved.secret.is_none() {
            let c = DesiredCertificate::from_resolved(resolved);
            self.certs
                .insert((c.namespace.clone(), c.service_account.clone()), c);
        }
        Ok(doc)
    }

    /// The namespace the object will live in: its own, else `-n`.
    fn namespace(&self, doc: &Value, place: &Place) -> Result<Option<String>, OfflineError> {
        let own = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        match (own, self.options.namespace.as_deref()) {
            (Some(own), Some(flag)) if own != flag => Err(place.error(format!(
                "metadata.namespace {own} differs from -n/--namespace {flag}, and kubectl apply -n {flag} refuses it too. Fix: leave out -n, or make them the same"
            ))),
            (Some(own), _) => Ok(Some(own.to_owned())),
            (None, Some(flag)) => Ok(Some(flag.to_owned())),
            (None, None) => Ok(None),
        }
    }

    fn list(&mut self, doc: &Value, place: &Place) -> Result<Option<Value>, OfflineError> {
        let mut doc = doc.clone();
        let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) else {
            return Ok(None);
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let at = Place::of(format!("{} item {}", place.label, i + 1), item);
            if let Some(new) = self.object(item, &at)? {
                *item = new;
                changed = true;
            }
        }
        Ok(changed.then_some(doc))
    }
}

/// A changed chunk: its `---` line and leading comments kept, its documents
/// written anew.
fn rewrite(chunk: &Chunk<'_>, docs: &[Value]) -> String {
    let after_marker = chunk.separator.trim().trim_start_matches("---").trim();
    let mut out = if after_marker.is_empty() || after_marker.starts_with('#') {
        chunk.separator.to_owned()
    } else {
        "---\n".to_owned()
    };
    out.push_str(chunk.leading_comments);
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&emit::document(d));
    }
    out
}
