//! Where the pod's certificate comes from: the cert-manager issuer and the
//! lifetime of the Certificate the webhook makes, or a Secret the pod brings.

use super::{Defaults, Input};
use crate::annotations::{Rejection, annotation, reject};
use crate::profile::IssuerRef;

/// The resolved certificate settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSource {
    pub issuer: IssuerRef,
    /// A Secret the pod names; `None`: the webhook's Certificate makes one.
    pub secret: Option<String>,
    pub duration: String,
    pub renew_before: String,
}

/// `secret`: a Secret name (lower-case letters, digits, '-', '.').
fn secret(input: &Input<'_>) -> Result<Option<String>, Rejection> {
    let Some(s) = annotation(&input.ann, "secret") else {
        return Ok(None);
    };
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !ok {
        return Err(reject(
            "secret",
            format!("{s:?} is not a Secret name"),
            "give the name of a Secret in the pod's namespace",
        ));
    }
    Ok(Some(s.to_owned()))
}

/// Resolves the issuer, the Secret and the lifetime.
pub fn resolve(input: &Input<'_>, defaults: &Defaults) -> Result<CertificateSource, Rejection> {
    let p = &input.profile;
    let issuer = match annotation(&input.ann, "issuer") {
        Some(v) => v.parse::<IssuerRef>().map_err(|problem| {
            reject(
                "issuer",
                problem,
                "write ClusterIssuer/<name> or Issuer/<name>",
            )
        })?,
        None => p.issuer.clone().unwrap_or_else(|| defaults.issuer.clone()),
    };
    Ok(CertificateSource {
        issuer,
        secret: secret(input)?,
        duration: p
            .certificate_duration
            .clone()
            .unwrap_or_else(|| defaults.cert_duration.clone()),
        renew_before: p
            .certificate_renew_before
            .clone()
            .unwrap_or_else(|| defaults.cert_renew_before.clone()),
    })
}
