//! Where the issuer's CA certificates are: a cert-manager CA issuer
//! (`spec.ca.secretName`) signs with the key pair in that Secret, which lives
//! in cert-manager's cluster resource namespace for a ClusterIssuer and in
//! the issuer's own namespace for an Issuer. Any other issuer (Vault, ACME,
//! Venafi, selfSigned, an external issuer) keeps its CA where the webhook
//! cannot read it: for those, pods trust their own Secret's `ca.crt`.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::der::{CaCert, DerError, pem_certs};
use crate::profile::IssuerRef;

/// The Secret a CA issuer signs with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaSecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for CaSecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why the issuer's CA cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCa {
    #[error(
        "{issuer} is not a cert-manager CA issuer (it has no spec.ca.secretName; its spec has {kinds}), so the webhook cannot read its CA"
    )]
    OtherKind { issuer: String, kinds: String },
    #[error(
        "{issuer} is an Issuer: each namespace has its own, each with its own CA, and one bundle cannot follow them"
    )]
    Namespaced { issuer: String },
}

/// The CA Secret of `issuer`, whose object's `spec` is `spec`.
/// `cluster_resource_namespace`: where cert-manager reads a ClusterIssuer's Secrets.
pub fn ca_secret(
    issuer: &IssuerRef,
    spec: &Value,
    cluster_resource_namespace: &str,
) -> Result<CaSecretRef, NotCa> {
    if issuer.kind != "ClusterIssuer" {
        return Err(NotCa::Namespaced {
            issuer: issuer.to_string(),
        });
    }
    match spec.pointer("/ca/secretName").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(CaSecretRef {
            namespace: cluster_resource_namespace.to_owned(),
            name: name.to_owned(),
        }),
        _ => {
            let kinds: Vec<&str> = spec
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            Err(NotCa::OtherKind {
                issuer: issuer.to_string(),
                kinds: if kinds.is_empty() {
                    "nothing".to_owned()
                } else {
                    kinds.join(", ")
                },
            })
        }
    }
}

/// The CA certificates of a CA issuer's Secret: every certificate of
/// `ca.crt` (the root, when the CA is an intermediate) and the first of
/// `tls.crt` (the CA itself).
pub fn ca_certs(secret: &Secret) -> Result<Vec<CaCert>, DerError> {
    let data = secret.data.as_ref();
    let text = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|ByteString(b)| String::from_utf8_lossy(b).into_owned())
    };
    let own = text("tls.crt").ok_or(DerError("the CA Secret has no tls.crt"))?;
    let mut certs = pem_certs(&text("ca.crt").unwrap_or_default())?;
    let first = pem_certs(&own)?
        .into_iter()
        .next()
        .ok_or(DerError("the CA Secret's tls.crt holds no certificate"))?;
    certs.push(first);
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_mtls_tests::certs::{TestCa, Validity};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn cluster(name: &str) -> IssuerRef {
        IssuerRef {
            kind: "ClusterIssuer".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_ca_cluster_issuer_reads_its_secret_from_the_cluster_resource_namespace() {
        let spec = json!({"ca": {"secretName": "kube-mtls-ca"}});
        assert_eq!(
            ca_secret(&cluster("kube-mtls-ca"), &spec, "cert-manager"),
            Ok(CaSecretRef {
                namespace: "cert-manager".into(),
                name: "kube-mtls-ca".into()
            })
        );
    }

    #[test]
    fn other_issuers_say_what_they_are() {
        let e = ca_secret(&cluster("vault"), &json!({"vault": {}}), "cert-manager")
            .expect_err("not a CA issuer");
        assert!(e.to_string().contains("has vault"), "{e}");
        let namespaced = IssuerRef {
            kind: "Issuer".into(),
            name: "team".into(),
        };
        let spec = json!({"ca": {"secretName": "team-ca"}});
        assert!(matches!(
            ca_secret(&namespaced, &spec, "cert-manager"),
            Err(NotCa::Namespaced { .. })
        ));
    }

    fn secret(tls: &str, ca: &str) -> Secret {
        let data = BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(tls.as_bytes().to_vec())),
            ("ca.crt".to_owned(), ByteString(ca.as_bytes().to_vec())),
        ]);
        Secret {
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn an_intermediate_brings_its_root_and_a_root_itself_once() {
        let root = TestCa::new("root");
        let mid = root.intermediate("intermediate", Validity::Current);
        let chain = format!("{}{}", mid.cert_pem, root.cert_pem);
        let certs = ca_certs(&secret(&chain, &root.cert_pem)).expect("reads");
        let subjects: Vec<&str> = certs.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(subjects, ["CN=root", "CN=intermediate"]);
        let own = ca_certs(&secret(&root.cert_pem, &root.cert_pem)).expect("reads");
        assert_eq!(own[0], own[1], "merge keeps one: same fingerprint");
        assert!(ca_certs(&Secret::default()).is_err());
    }
}
