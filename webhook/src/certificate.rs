//! The cert-manager `Certificate` of a workload identity.
//!
//! One Certificate per service account and namespace, named `kube-mtls-<sa>`
//! and writing the Secret `kube-mtls-<sa>-tls` (labelled, like the
//! Certificate, `app.kubernetes.io/managed-by=kube-mtls`) that injected pods mount (the
//! rule is `kube_mtls_contract::names::Identity`). Everything resolved for the pod at admission
//! is recorded on the Certificate as `kube-mtls.io/*` annotations: trust
//! domain, DNS names, issuer, and the lifetime (`kube-mtls.io/duration`,
//! `kube-mtls.io/renew-before`) that the pod's MtlsProfile or, failing that,
//! the flags gave. The controller rebuilds the desired object from that record
//! alone ([`DesiredCertificate::from_existing`]), without the pod, so it never
//! replaces what a profile asked for with the webhook's flag defaults.
//!
//! Certificates made before the lifetime was recorded carry no
//! `kube-mtls.io/duration` / `kube-mtls.io/renew-before`. They keep the
//! `spec.duration` / `spec.renewBefore` they have: the controller never changes
//! a Certificate's lifetime on its own, and the flags may no longer be what the
//! Certificate was made with. The controller's next apply records those kept
//! values, and from then on they are what it restores. Only a Certificate that
//! says nothing in either place gets the flag value (the webhook always set
//! one, and cert-manager's own default is 90 days).
//!
//! [`DesiredCertificate::in_line`] compares only what the webhook sets (its
//! labels, its annotations, its spec fields): fields the API server or
//! cert-manager add to a Certificate do not count as a difference, so the
//! controller settles instead of applying again on every reconcile.

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use kube_mtls_contract::names::Identity;
use kube_mtls_contract::ports;

use crate::profile::IssuerRef;
use crate::resolve::Resolved;

pub const FIELD_MANAGER: &str = "kube-mtls-webhook";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kube-mtls");
pub const SA_LABEL: &str = "kube-mtls.io/service-account";
const ANN_TRUST_DOMAIN: &str = "kube-mtls.io/trust-domain";
const ANN_DNS_NAMES: &str = "kube-mtls.io/dns-names";
const ANN_ISSUER: &str = "kube-mtls.io/issuer";
const ANN_DURATION: &str = "kube-mtls.io/duration";
const ANN_RENEW_BEFORE: &str = "kube-mtls.io/renew-before";

/// cert-manager's Certificate kind.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// Everything a workload Certificate is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredCertificate {
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub dns_names: Vec<String>,
    pub issuer: IssuerRef,
    pub duration: String,
    pub renew_before: String,
}

impl DesiredCertificate {
    pub fn from_resolved(r: &Resolved) -> Self {
        DesiredCertificate {
            namespace: r.namespace.clone(),
            service_account: r.service_account.clone(),
            trust_domain: r.trust_domain.clone(),
            dns_names: r.dns_names.clone(),
            issuer: r.issuer.clone(),
            duration: r.cert_duration.clone(),
            renew_before: r.cert_renew_before.clone(),
        }
    }

    /// Rebuilds the desired Certificate from what is recorded on an existing
    /// one. The lifetime is the recorded one, else the one in its spec, else
    /// `flag_duration` / `flag_renew_before` (see the module header).
    /// `None`: not one of ours, or a record is missing.
    pub fn from_existing(
        cert: &DynamicObject,
        flag_duration: &str,
        flag_renew_before: &str,
    ) -> Option<Self> {
        let ann = cert.metadata.annotations.as_ref()?;
        let sa = cert.metadata.labels.as_ref()?.get(SA_LABEL)?.clone();
        let issuer = ann.get(ANN_ISSUER)?.parse().ok()?;
        let lifetime = |annotation: &str, field: &str, flag: &str| {
            recorded(cert, annotation, field).unwrap_or_else(|| flag.to_owned())
        };
        Some(DesiredCertificate {
            namespace: cert.metadata.namespace.clone()?,
            service_account: sa,
            trust_domain: ann.get(ANN_TRUST_DOMAIN)?.clone(),
            dns_names: ann
                .get(ANN_DNS_NAMES)
                .map(|d| ports::items(d).map(str::to_owned).collect())
                .unwrap_or_default(),
            issuer,
            duration: lifetime(ANN_DURATION, "duration", flag_duration),
            renew_before: lifetime(ANN_RENEW_BEFORE, "renewBefore", flag_renew_before),
        })
    }

    /// The names of the identity this Certificate is for.
    pub fn names(&self) -> Identity<'_> {
        Identity {
            trust_domain: &self.trust_domain,
            namespace: &self.namespace,
            service_account: &self.service_account,
        }
    }

    pub fn name(&self) -> String {
        self.names().certificate_name()
    }

    pub fn secret_name(&self) -> String {
        self.names().secret_name()
    }

    pub fn spiffe_id(&self) -> String {
        self.names().spiffe_id()
    }

    /// Whether `cert` already has every label, annotation and spec field this
    /// webhook sets, with the same values. What else it has is not ours.
    pub fn in_line(&self, cert: &DynamicObject) -> bool {
        let current = json!({
            "metadata": {
                "labels": cert.metadata.labels,
                "annotations": cert.metadata.annotations,
            },
            "spec": cert.data.get("spec"),
        });
        let desired = self.object();
        let owned = json!({
            "metadata": {
                "labels": desired["metadata"]["labels"],
                "annotations": desired["metadata"]["annotations"],
            },
            "spec": desired["spec"],
        });
        contains(&current, &owned)
    }

    /// The `spec` of the Certificate.
    pub fn spec(&self) -> Value {
        let mut spec = json!({
            "secretName": self.secret_name(),
            "duration": self.duration,
            "renewBefore": self.renew_before,
            "uris": [self.spiffe_id()],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "issuerRef": {"group": "cert-manager.io", "kind": self.issuer.kind, "name": self.issuer.name},
            // The Secret carries the label too, so `kubectl mtls check` lists
            // workload Secrets by label (which CA issued each, mid-rotation).
            "secretTemplate": {"labels": {MANAGED_BY.0: MANAGED_BY.1}},
        });
        if !self.dns_names.is_empty() {
            spec["dnsNames"] = json!(self.dns_names);
        }
        spec
    }

    /// The whole object, as server-side apply sends it.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {
                "name": self.name(),
                "namespace": self.namespace,
                "labels": {MANAGED_BY.0: MANAGED_BY.1, SA_LABEL: self.service_account},
                "annotations": {
                    ANN_TRUST_DOMAIN: self.trust_domain,
                    ANN_DNS_NAMES: self.dns_names.join(","),
                    ANN_ISSUER: self.issuer.to_string(),
                    ANN_DURATION: self.duration,
                    ANN_RENEW_BEFORE: self.renew_before,
                },
            },
            "spec": self.spec(),
        })
    }
}

/// A lifetime value recorded in annotation `annotation`, else the one in
/// `spec.<field>`; empty values count as absent.
fn recorded(cert: &DynamicObject, annotation: &str, field: &str) -> Option<String> {
    let from_annotation = cert
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .map(String::as_str);
    let from_spec = || cert.data.pointer(&format!("/spec/{field}"))?.as_str();
    from_annotation
        .filter(|v| !v.is_empty())
        .or_else(|| from_spec().filter(|v| !v.is_empty()))
        .map(str::to_owned)
}

/// Whether every field of `desired` is in `current` with an equal value.
/// Objects are compared field by field, recursively, so fields only `current`
/// has (server defaults, other field managers) do not count; anything else,
/// arrays included, is compared whole. Numbers compare by value (`256` and
/// `256.0` are equal).
pub fn contains(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| c.get(k).is_some_and(|cv| contains(cv, dv))),
        (Value::Number(c), Value::Number(d)) => c == d || c.as_f64() == d.as_f64(),
        _ => current == desired,
    }
}

/// Creates or updates the Certificate by server-side apply.
pub async fn ensure_certificate(
    client: &Client,
    desired: &DesiredCertificate,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &desired.namespace, &api_resource());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&desired.name(), &params, &Patch::Apply(desired.object()))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredCertificate {
        DesiredCertificate {
            namespace: "shop".into(),
            service_account: "orders".into(),
            trust_domain: "cluster.local".into(),
            dns_names: vec!["orders.shop.svc".into()],
            issuer: IssuerRef {
                kind: "ClusterIssuer".into(),
                name: "kube-mtls-ca".into(),
            },
            duration: "720h".into(),
            renew_before: "240h".into(),
        }
    }

    /// The object as the API server returns it after `edit` changed it.
    fn stored(edit: impl FnOnce(&mut Value)) -> DynamicObject {
        let mut obj = desired().object();
        obj["metadata"]["uid"] = json!("0b5e");
        obj["metadata"]["resourceVersion"] = json!("7");
        obj["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        edit(&mut obj);
        serde_json::from_value(obj).expect("a Certificate")
    }

    #[test]
    fn the_recorded_lifetime_is_rebuilt_not_the_flags() {
        let back = DesiredCertificate::from_existing(&stored(|_| {}), "24h", "8h");
        assert_eq!(back, Some(desired()));
    }

    #[test]
    fn a_certificate_without_a_recorded_lifetime_keeps_its_spec() {
        let old = stored(|o| {
            let ann = o["metadata"]["annotations"].as_object_mut().expect("map");
            ann.remove(ANN_DURATION);
            ann.remove(ANN_RENEW_BEFORE);
            o["spec"]["duration"] = json!("48h");
            o["spec"]["renewBefore"] = json!("16h");
        });
        let back = DesiredCertificate::from_existing(&old, "24h", "8h").expect("ours");
        assert_eq!(
            (back.duration.as_str(), back.renew_before.as_str()),
            ("48h", "16h")
        );
    }

    #[test]
    fn a_certificate_that_says_nothing_gets_the_flags() {
        let bare = stored(|o| {
            let ann = o["metadata"]["annotations"].as_object_mut().expect("map");
            ann.insert(ANN_DURATION.into(), json!(""));
            ann.remove(ANN_RENEW_BEFORE);
            let spec = o["spec"].as_object_mut().expect("spec");
            spec.remove("duration");
            spec.remove("renewBefore");
        });
        let back = DesiredCertificate::from_existing(&bare, "24h", "8h").expect("ours");
        assert_eq!(
            (back.duration.as_str(), back.renew_before.as_str()),
            ("24h", "8h")
        );
    }

    #[test]
    fn fields_the_server_adds_do_not_count_as_a_difference() {
        let defaulted = stored(|o| {
            o["spec"]["privateKey"]["encoding"] = json!("PKCS1");
            o["spec"]["revisionHistoryLimit"] = json!(1);
            o["spec"]["privateKey"]["size"] = json!(256.0);
            o["metadata"]["labels"]["team"] = json!("shop");
            o["metadata"]["annotations"]["cert-manager.io/issue-temporary-certificate"] =
                json!("true");
        });
        assert!(desired().in_line(&stored(|_| {})));
        assert!(desired().in_line(&defaulted));
    }

    #[test]
    fn a_changed_or_missing_field_of_ours_is_a_difference() {
        let edits: [fn(&mut Value); 6] = [
            |o| o["spec"]["duration"] = json!("8760h"),
            |o| o["spec"]["privateKey"]["size"] = json!(384),
            |o| o["spec"]["usages"] = json!(["server auth", "client auth"]),
            |o| o["spec"]["dnsNames"] = json!(["orders.shop.svc", "evil.example.com"]),
            |o| {
                o["metadata"]["annotations"]
                    .as_object_mut()
                    .map(|a| a.remove(ANN_DURATION));
            },
            |o| {
                o["spec"].as_object_mut().map(|s| s.remove("renewBefore"));
            },
        ];
        for (i, edit) in edits.into_iter().enumerate() {
            assert!(!desired().in_line(&stored(edit)), "edit {i} went unnoticed");
        }
    }

    #[test]
    fn arrays_are_compared_whole() {
        assert!(contains(
            &json!({"a": [1, 2], "b": 0}),
            &json!({"a": [1, 2]})
        ));
        assert!(!contains(&json!({"a": [1, 2, 3]}), &json!({"a": [1, 2]})));
        assert!(!contains(
            &json!({"a": [{"x": 1, "y": 2}]}),
            &json!({"a": [{"x": 1}]})
        ));
        assert!(!contains(&json!({}), &json!({"a": null})));
    }
}
