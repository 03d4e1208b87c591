//! Certificates as the API server sees them: does a webhook configuration's
//! caBundle verify the webhook's serving certificate for the Service's DNS
//! name, and when does a certificate expire; and as a sidecar sees them:
//! does a trust bundle verify a workload's certificate chain.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CertError {
    #[error("{0} holds no PEM certificate")]
    NoPem(&'static str),
    #[error("{what} does not parse: {why}")]
    Parse { what: &'static str, why: String },
    #[error("the caBundle does not verify the serving certificate: {0}")]
    Untrusted(String),
    #[error("the serving certificate is not valid for {name}: {why}")]
    WrongName { name: String, why: String },
}

/// The DER certificates of a PEM bundle.
pub fn pem_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoPem(what));
    }
    Ok(certs)
}

/// Verifies `chain` (leaf first, then intermediates) against the caBundle's
/// certificates as the API server does for a webhook: a server certificate,
/// valid at `now`, for `dns_name`.
pub fn verify_serving(
    ca_bundle: &[CertificateDer<'_>],
    chain: &[CertificateDer<'_>],
    dns_name: &str,
    now: i64,
) -> Result<(), CertError> {
    let anchors = ca_bundle
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what: "the caBundle",
            why: format!("{e:?}"),
        })?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertError::NoPem("tls.crt"));
    };
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::Parse {
        what: "tls.crt",
        why: format!("{e:?}"),
    })?;
    let time =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0).unsigned_abs()));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| CertError::Untrusted(format!("{e:?}")))?;
    let name = ServerName::try_from(dns_name.to_owned()).map_err(|e| CertError::WrongName {
        name: dns_name.to_owned(),
        why: e.to_string(),
    })?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| CertError::WrongName {
            name: dns_name.to_owned(),
            why: format!("{e:?}"),
        })
}

/// Whether `anchors` verify the workload chain `chain` (leaf first, then what
/// the workload sends with it when `with_intermediates`) as a sidecar verifies
/// a client at `now`.
pub fn verifies(
    anchors: &[CertificateDer<'_>],
    chain: &[CertificateDer<'_>],
    with_intermediates: bool,
    now: i64,
) -> bool {
    let Ok(anchors) = anchors
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let intermediates = if with_intermediates { rest } else { &[] };
    let time =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0).unsigned_abs()));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

/// The certificate's notAfter, in seconds since the epoch.
pub fn not_after(der: &CertificateDer<'_>) -> Result<i64, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse {
        what: "the certificate",
        why: e.to_string(),
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// A duration for people: `89d`, `5h`, `12m`, `40s`.
pub fn human(secs: i64) -> String {
    let s = secs.abs();
    let text = if s >= 86_400 {
        format!("{}d", s / 86_400)
    } else if s >= 3_600 {
        format!("{}h", s / 3_600)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    };
    if secs < 0 { format!("-{text}") } else { text }
}

/// An RFC 3339 time (cert-manager's `status.notAfter`) in seconds since the epoch.
pub fn rfc3339(s: &str) -> Option<i64> {
    let t: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()?;
    Some(t.0.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(human(90 * 86_400 + 5), "90d");
        assert_eq!(human(7_200), "2h");
        assert_eq!(human(-120), "-2m");
        assert_eq!(human(5), "5s");
        assert_eq!(rfc3339("1970-01-02T00:00:00Z"), Some(86_400));
        assert_eq!(rfc3339("yesterday"), None);
    }
}
