//! Who the pod is and who may call it: its service account and trust domain
//! (hence its SPIFFE ID), the extra DNS names in its certificate, and the
//! allowed clients, parsed with the sidecar's own grammar.

use kube_mtls_contract::pattern::{AllowedClients, IdentityPattern, PATTERN_FIX};
use serde_json::Value;

use super::{Defaults, Input};
use crate::annotations::{Rejection, annotation, reject, strings};

/// The resolved identity settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Identities {
    pub service_account: String,
    pub trust_domain: String,
    pub allowed_clients: AllowedClients,
    pub dns_names: Vec<String>,
}

/// `allowed-clients`, else the profile's list: the sidecar's parser decides.
fn allowed_clients(input: &Input<'_>) -> Result<AllowedClients, Rejection> {
    let value = match annotation(&input.ann, "allowed-clients") {
        Some(v) => v.to_owned(),
        None => input
            .profile
            .allowed_clients
            .as_deref()
            .unwrap_or_default()
            .join(","),
    };
    value
        .parse()
        .map_err(|e: kube_mtls_contract::pattern::PatternError| {
            reject("allowed-clients", e.to_string(), PATTERN_FIX)
        })
}

/// `dns-names`: names of the allowed-clients grammar's DNS kind.
fn dns_names(input: &Input<'_>) -> Result<Vec<String>, Rejection> {
    let names = strings(&input.ann, "dns-names").unwrap_or_default();
    for d in &names {
        if !matches!(d.parse(), Ok(IdentityPattern::Dns { .. })) {
            return Err(reject(
                "dns-names",
                format!("{d:?} is not a DNS name"),
                "list DNS names such as orders.shop.svc (labels of 1-63 characters, 253 in all)",
            ));
        }
    }
    Ok(names)
}

/// Resolves who the pod is and who may call it.
pub fn resolve(input: &Input<'_>, defaults: &Defaults) -> Result<Identities, Rejection> {
    let service_account = input
        .pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let trust_domain = input
        .profile
        .trust_domain
        .clone()
        .unwrap_or_else(|| defaults.trust_domain.clone());
    Ok(Identities {
        service_account,
        trust_domain,
        allowed_clients: allowed_clients(input)?,
        dns_names: dns_names(input)?,
    })
}
