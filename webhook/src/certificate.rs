//! The cert-manager `Certificate` of a workload identity.
//!
//! One Certificate per service account and namespace, named
//! `kube-mtls-<service account>`, writing the Secret `kube-mtls-<sa>-tls` that
//! injected pods mount. The inputs that came from the pod (trust domain, DNS
//! names, issuer) are recorded on the Certificate as annotations, so the
//! controller can rebuild the same desired object later without the pod.

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use crate::annotations::Resolved;

pub const FIELD_MANAGER: &str = "kube-mtls-webhook";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kube-mtls");
pub const SA_LABEL: &str = "kube-mtls.io/service-account";
const ANN_TRUST_DOMAIN: &str = "kube-mtls.io/trust-domain";
const ANN_DNS_NAMES: &str = "kube-mtls.io/dns-names";
const ANN_ISSUER: &str = "kube-mtls.io/issuer";

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
    /// `ClusterIssuer/<name>` or `Issuer/<name>`.
    pub issuer: (String, String),
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
            issuer: (r.issuer.kind.clone(), r.issuer.name.clone()),
            duration: r.cert_duration.clone(),
            renew_before: r.cert_renew_before.clone(),
        }
    }

    /// Rebuilds the inputs recorded on an existing Certificate, with the
    /// lifetimes from the current settings.
    pub fn from_existing(cert: &DynamicObject, duration: &str, renew_before: &str) -> Option<Self> {
        let ann = cert.metadata.annotations.as_ref()?;
        let sa = cert.metadata.labels.as_ref()?.get(SA_LABEL)?.clone();
        let (kind, name) = ann.get(ANN_ISSUER)?.split_once('/')?;
        Some(DesiredCertificate {
            namespace: cert.metadata.namespace.clone()?,
            service_account: sa,
            trust_domain: ann.get(ANN_TRUST_DOMAIN)?.clone(),
            dns_names: ann
                .get(ANN_DNS_NAMES)
                .map(|d| {
                    d.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            issuer: (kind.to_owned(), name.to_owned()),
            duration: duration.to_owned(),
            renew_before: renew_before.to_owned(),
        })
    }

    pub fn name(&self) -> String {
        format!("kube-mtls-{}", self.service_account)
    }

    pub fn secret_name(&self) -> String {
        format!("kube-mtls-{}-tls", self.service_account)
    }

    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
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
            "issuerRef": {"group": "cert-manager.io", "kind": self.issuer.0, "name": self.issuer.1},
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
                    ANN_ISSUER: format!("{}/{}", self.issuer.0, self.issuer.1),
                },
            },
            "spec": self.spec(),
        })
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
