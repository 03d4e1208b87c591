//! Throwaway certificates for tests: a CA per test, and workload certificates
//! with the SANs, usages and validity windows each test needs.
//!
//! Nothing here is ever committed: every key is generated when the test runs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

/// Which extended key usages a leaf certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ServerAndClient,
    ServerOnly,
    ClientOnly,
}

/// Validity window of a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// 2024 to 2090.
    Current,
    /// Ended in 2021.
    Expired,
    /// Starts in 2090.
    NotYetValid,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub common_name: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub usage: Usage,
    pub validity: Validity,
    /// The subject's O; Kubernetes reads it as the client's groups.
    pub organization: String,
}

impl Leaf {
    /// A workload certificate for a SPIFFE ID, usable as client and server,
    /// with `localhost` and 127.0.0.1 so test clients can verify it as a server.
    pub fn spiffe(id: &str) -> Leaf {
        Leaf {
            common_name: id.rsplit('/').next().unwrap_or("workload").to_owned(),
            uris: vec![id.to_owned()],
            dns: vec!["localhost".to_owned()],
            ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            usage: Usage::ServerAndClient,
            validity: Validity::Current,
            organization: "kube-mtls tests".to_owned(),
        }
    }

    /// A certificate whose only identity is a DNS name.
    pub fn dns(name: &str) -> Leaf {
        Leaf {
            common_name: name.to_owned(),
            uris: Vec::new(),
            dns: vec![name.to_owned()],
            ips: Vec::new(),
            usage: Usage::ServerAndClient,
            validity: Validity::Current,
            organization: "kube-mtls tests".to_owned(),
        }
    }

    /// A client certificate for a Kubernetes user `name` in group `group`.
    pub fn kube_user(name: &str, group: &str) -> Leaf {
        let mut leaf = Leaf::dns(name).usage(Usage::ClientOnly);
        leaf.dns.clear();
        leaf.organization = group.to_owned();
        leaf
    }

    /// Adds IP address SANs.
    pub fn ips(mut self, ips: &[std::net::IpAddr]) -> Leaf {
        self.ips.extend_from_slice(ips);
        self
    }

    /// Adds DNS name SANs.
    pub fn dns_names(mut self, names: &[&str]) -> Leaf {
        self.dns.extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    pub fn usage(mut self, usage: Usage) -> Leaf {
        self.usage = usage;
        self
    }

    pub fn validity(mut self, validity: Validity) -> Leaf {
        self.validity = validity;
        self
    }
}

/// A certificate and its key, in PEM, with the CA that signed it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Issued {
    /// Writes `tls.crt`, `tls.key`, `ca.crt` into `dir` (created if missing), the
    /// layout of a cert-manager Secret; files are world-readable so a sidecar
    /// running under its own UID can read them.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, data) in [
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
            ("ca.crt", &self.ca_pem),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)?;
        }
        make_readable(dir)
    }
}

fn make_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// A test certificate authority: a root, or an intermediate under one.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's own certificate.
    pub cert_pem: String,
    /// Certificates from this CA up to (not including) the root, this CA's
    /// first; appended to every leaf's `cert_pem`. Empty for a root.
    chain_pem: String,
    /// The root at the top of the chain: what `Issued::ca_pem` holds.
    root_pem: String,
}

fn ca_params(name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = match validity {
        Validity::Current => (date_time_ymd(2024, 1, 1), date_time_ymd(2095, 1, 1)),
        Validity::Expired => (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
        Validity::NotYetValid => (date_time_ymd(2090, 1, 1), date_time_ymd(2095, 1, 1)),
    };
    params
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let params = ca_params(name, Validity::Current);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one. Leaves it issues carry the chain
    /// up to the root in `cert_pem` (leaf first), and the root as `ca_pem`.
    pub fn intermediate(&self, name: &str, validity: Validity) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let params = ca_params(name, validity);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate CA");
        TestCa {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            root_pem: self.root_pem.clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf certificate signed by this CA.
    pub fn issue(&self, leaf: &Leaf) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name.as_str());
        if !leaf.organization.is_empty() {
            dn.push(DnType::OrganizationName, leaf.organization.as_str());
        }
        params.distinguished_name = dn;
        for u in &leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.as_str().try_into().expect("URI SAN")));
        }
        for d in &leaf.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into().expect("DNS SAN")));
        }
        for ip in &leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match leaf.usage {
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ClientOnly => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        (params.not_before, params.not_after) = match leaf.validity {
            Validity::Current => (date_time_ymd(2024, 1, 1), date_time_ymd(2090, 1, 1)),
            Validity::Expired => (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
            Validity::NotYetValid => (date_time_ymd(2090, 1, 1), date_time_ymd(2094, 1, 1)),
        };
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            ca_pem: self.root_pem.clone(),
        }
    }
}

/// A certificate directory laid out the way kubelet mounts a Secret:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<generation>/`, updated by
/// writing a new generation and atomically renaming a new `..data` link over
/// the old one.
pub struct KubeletDir {
    pub path: PathBuf,
    generation: u32,
}

impl KubeletDir {
    pub fn create(path: &Path, first: &Issued) -> std::io::Result<KubeletDir> {
        std::fs::create_dir_all(path)?;
        make_readable(path)?;
        let mut dir = KubeletDir {
            path: path.to_owned(),
            generation: 0,
        };
        dir.swap(first)?;
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), path.join(name))?;
        }
        Ok(dir)
    }

    /// Publishes a new set with one atomic rename, as kubelet does.
    pub fn swap(&mut self, next: &Issued) -> std::io::Result<()> {
        self.generation += 1;
        let gen_name = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        next.write_dir(&self.path.join(&gen_name))?;
        let tmp = self.path.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&gen_name, &tmp)?;
        std::fs::rename(&tmp, self.path.join("..data"))
    }

    /// Publishes raw file contents (e.g. a corrupt certificate) the same way.
    pub fn swap_raw(&mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> std::io::Result<()> {
        self.swap(&Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
        })
    }
}
