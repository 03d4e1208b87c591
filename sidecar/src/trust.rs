//! The trust bundle: the CA certificates a peer's certificate must chain to,
//! in both directions, kept apart from the pod's own key pair.
//!
//! A CA rotation must not cut traffic (issue 22): while workloads are
//! re-issued one by one, some present a certificate from the new CA and some
//! from the old, so every sidecar has to trust both. The bundle
//! (`--trust-bundle`, a ConfigMap the webhook's controller keeps) holds every
//! CA that may have signed a certificate still in use; without the flag the
//! sidecar trusts `<cert-dir>/ca.crt` as before. Either file is read here,
//! checked (PEM, CA certificates only, at least one), and described for the
//! metrics and for the errors that name what the sidecar trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a trust bundle was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the trust bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the trust bundle {path} is refused: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// One CA certificate of the bundle, as the metrics and messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCa {
    /// The subject DN, e.g. `CN=kube-mtls-ca`.
    pub subject: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// A loaded bundle: the roots every verifier is built from.
pub struct TrustBundle {
    /// The file it was read from.
    pub path: PathBuf,
    pub roots: Arc<RootCertStore>,
    /// In the file's order.
    pub cas: Vec<TrustedCa>,
    /// Digest of the file, to skip reloading identical content.
    digest: [u8; 32],
}

impl TrustBundle {
    /// Reads and checks the bundle at `path`.
    pub fn load(path: &Path) -> Result<TrustBundle, TrustError> {
        let pem = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &pem).map_err(|problem| TrustError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    fn parse(path: &Path, pem: &[u8]) -> Result<TrustBundle, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("it holds no CA certificate (no PEM CERTIFICATE block)".into());
        }
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::with_capacity(certs.len());
        for (i, der) in certs.into_iter().enumerate() {
            let ca =
                describe_ca(&der).map_err(|problem| format!("certificate {}: {problem}", i + 1))?;
            roots.add(der).map_err(|e| {
                format!(
                    "certificate {} ({}) is not a usable CA certificate: {e}",
                    i + 1,
                    ca.subject
                )
            })?;
            cas.push(ca);
        }
        Ok(TrustBundle {
            path: path.to_owned(),
            roots: Arc::new(roots),
            cas,
            digest: ring_digest(pem),
        })
    }

    /// True when `other` was read from the same content.
    pub fn same_content(&self, other: &TrustBundle) -> bool {
        self.digest == other.digest
    }

    /// The subjects of the trusted CAs, for messages: `CN=a; CN=b`.
    pub fn subjects(&self) -> String {
        let names: Vec<&str> = self.cas.iter().map(|c| c.subject.as_str()).collect();
        names.join("; ")
    }

    /// What the bundle holds, said to someone whose certificate from
    /// `issuer` was not trusted. A CA of the same name in the bundle means
    /// its key is not the one that signed: what a rotation of the CA's key
    /// without a bundle looks like.
    pub fn trusted_for(&self, issuer: &str) -> String {
        let subjects = self.subjects();
        if self.cas.iter().any(|c| c.subject == issuer) {
            format!(
                "{subjects}; a CA of that name is trusted, but not the key that signed this certificate: was the CA's key rotated without adding the new CA to the trust bundle?"
            )
        } else {
            subjects
        }
    }
}

/// The subject, serial and expiry of a CA certificate, or why it is not one.
fn describe_ca(der: &CertificateDer<'_>) -> Result<TrustedCa, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("does not parse: {e}"))?;
    let subject = cert.subject().to_string();
    if !cert.is_ca() {
        return Err(format!(
            "{subject} is not a CA certificate (basicConstraints CA:TRUE is missing); a trust bundle holds CA certificates only"
        ));
    }
    Ok(TrustedCa {
        subject,
        serial: crate::tls::serial_of(&cert),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ring_digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_mtls_tests::certs::{Leaf, TestCa};

    fn parse(pem: &str) -> Result<TrustBundle, String> {
        TrustBundle::parse(Path::new("/trust/ca-bundle.crt"), pem.as_bytes())
    }

    #[test]
    fn every_ca_of_the_bundle_is_described() {
        let (one, two) = (TestCa::new("ca one"), TestCa::new("ca two"));
        let b = parse(&format!("{}{}", one.cert_pem, two.cert_pem)).expect("a bundle");
        let subjects: Vec<&str> = b.cas.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(subjects, ["CN=ca one", "CN=ca two"]);
        assert_eq!(b.roots.len(), 2);
        // 2095-01-01T00:00:00Z, as TestCa makes them.
        assert!(
            b.cas.iter().all(|c| c.not_after == 3_944_678_400),
            "{:?}",
            b.cas
        );
        assert_ne!(b.cas[0].serial, b.cas[1].serial);
        assert_eq!(b.subjects(), "CN=ca one; CN=ca two");
    }

    #[test]
    fn a_bundle_without_a_ca_certificate_is_refused_saying_why() {
        let ca = TestCa::new("ca");
        let leaf = ca.issue(&Leaf::spiffe("spiffe://cluster.local/ns/a/sa/b"));
        let cases = [
            ("", "holds no CA certificate"),
            ("garbage\n", "holds no CA certificate"),
            (leaf.key_pem.as_str(), "holds no CA certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                "not PEM certificates",
            ),
            (leaf.cert_pem.as_str(), "is not a CA certificate"),
        ];
        for (pem, expected) in cases {
            let Err(problem) = parse(pem) else {
                panic!("{pem:?} was taken for a bundle");
            };
            assert!(problem.contains(expected), "{pem:?}: {problem}");
        }
        let err = TrustBundle::load(Path::new("/nonexistent/ca-bundle.crt"))
            .err()
            .expect("no file");
        assert!(
            err.to_string().contains("/nonexistent/ca-bundle.crt"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_of_the_issuers_name_is_called_out() {
        let b = parse(&TestCa::new("cluster CA").cert_pem).expect("a bundle");
        assert_eq!(b.trusted_for("CN=other"), "CN=cluster CA");
        assert!(
            b.trusted_for("CN=cluster CA")
                .contains("not the key that signed"),
            "{}",
            b.trusted_for("CN=cluster CA")
        );
    }
}
