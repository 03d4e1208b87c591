//! The control plane's own credentials, generated for every run: a cluster CA,
//! the API server's serving certificate, client certificates for the admin and
//! the controller manager, the service-account signing key pair, and the CA
//! the controller manager signs CertificateSigningRequests with.
//!
//! Nothing is committed; every key is new each run.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::certs::{Leaf, TestCa, Usage};

/// Files of the control plane's PKI, under one directory.
pub struct Pki {
    pub dir: PathBuf,
    /// The cluster CA: signs every component certificate; clients trust it.
    pub ca_pem: String,
}

/// A certificate and key pair on disk.
pub struct KeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Writes the CA, the API server certificate (valid for `api_ips` and the
    /// in-cluster names) and the service-account keys into `dir`.
    pub fn create(dir: &Path, api_ips: &[IpAddr]) -> std::io::Result<(Pki, TestCa)> {
        std::fs::create_dir_all(dir)?;
        let ca = TestCa::new("kube-mtls test cluster CA");
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
        let pki = Pki {
            dir: dir.to_owned(),
            ca_pem: ca.cert_pem.clone(),
        };
        let serving = Leaf::dns("kube-apiserver")
            .dns_names(&[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ])
            .ips(api_ips)
            .usage(Usage::ServerOnly);
        pki.write("apiserver", &ca, &serving)?;
        let sa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(std::io::Error::other)?;
        std::fs::write(dir.join("sa.key"), sa.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
        csr_signer(dir)?;
        Ok((pki, ca))
    }

    /// Issues `leaf` and writes `<name>.crt` and `<name>.key`.
    pub fn write(&self, name: &str, ca: &TestCa, leaf: &Leaf) -> std::io::Result<KeyFiles> {
        let issued = ca.issue(leaf);
        let files = KeyFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &issued.cert_pem)?;
        std::fs::write(&files.key, &issued.key_pem)?;
        Ok(files)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// `csr-signer.crt` and `.key`: a CA for the controller manager's CSR signer
/// (kept apart from the cluster CA, whose key never touches the disk).
fn csr_signer(dir: &Path) -> std::io::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(std::io::Error::other)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(std::io::Error::other)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-mtls test cluster CSR signer");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("csr-signer.crt"), cert.pem())?;
    std::fs::write(dir.join("csr-signer.key"), key.serialize_pem())
}
