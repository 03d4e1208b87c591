//! Fixed names and numbers every component agrees on, and the naming rule of a
//! workload identity.

/// Prefix of every annotation and label kube-mtls reads or writes.
pub const PREFIX: &str = "kube-mtls.io/";
/// Opt-in: pod annotation or label, or namespace label; `enabled` / `disabled`.
pub const INJECT: &str = "kube-mtls.io/inject";
/// Written by the webhook on an injected pod: what was injected (JSON).
pub const STATUS: &str = "kube-mtls.io/status";
/// The MtlsProfile a pod names, or a namespace's default one.
pub const PROFILE: &str = "kube-mtls.io/profile";
/// `strict` or `permissive`: whether plaintext callers are let in (the sidecar's `--mode`).
pub const MODE: &str = "kube-mtls.io/mode";
/// `enforce` or `audit`: whether callers off the allow-list are refused (the sidecar's `--policy`).
pub const POLICY: &str = "kube-mtls.io/policy";
/// Written by the webhook in CNI mode: the `kube-mtls-init` args (a JSON list
/// of strings) that the CNI plugin applies in the pod's network namespace.
/// A pod without it is not the plugin's to touch.
pub const CNI_REDIRECT: &str = "kube-mtls.io/cni-redirect";

/// The sidecar's listener for redirected inbound connections.
pub const INBOUND_PORT: u16 = 15006;
/// The sidecar's outbound listener on 127.0.0.1.
pub const OUTBOUND_PORT: u16 = 15001;
/// The sidecar's plain-HTTP admin port (`/ready`, `/live`, `/metrics`, `/app-health/...`).
pub const ADMIN_PORT: u16 = 15020;
/// The sidecar's own ports, which no app port may use.
pub const SIDECAR_PORTS: [u16; 3] = [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT];
/// The sidecar's UID: the init rules never redirect its traffic.
pub const PROXY_UID: u32 = 15337;
/// The sidecar's GID.
pub const PROXY_GID: u32 = 15337;

/// The init container's name (the pod's first init container).
pub const INIT_NAME: &str = "kube-mtls-init";
/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "kube-mtls-sidecar";
/// CNI mode's first init container: unprivileged, it proves that the pod's
/// traffic is redirected (`kube-mtls-init --validate`) before anything else runs.
pub const VALIDATE_NAME: &str = "kube-mtls-validate";
/// The exit code of `kube-mtls-init --validate` when redirection is not in
/// place; the node agent's repair controller looks for it.
pub const VALIDATION_FAILED_EXIT: i32 = 97;
/// The address the validation connects to (TEST-NET-1, RFC 5737: never
/// routed). The outbound chain redirects it, on the admin port, to the pod's
/// own admin port, where the validation listens.
pub const VALIDATION_PROBE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
/// The CNI plugin's binary, and its `type` in the CNI configuration.
pub const CNI_BINARY: &str = "kube-mtls-cni";
/// The init binary in the sidecar image.
pub const INIT_BINARY: &str = "kube-mtls-init";
/// The sidecar binary in the sidecar image.
pub const SIDECAR_BINARY: &str = "kube-mtls-sidecar";
/// The Secret volume with the pod's certificate.
pub const CERT_VOLUME: &str = "kube-mtls-certs";
/// The in-memory volume iptables-legacy takes its lock in (mounted at `/run`).
pub const RUN_VOLUME: &str = "kube-mtls-xtables";
/// Where the certificate volume is mounted, read-only.
pub const CERT_DIR: &str = "/var/run/kube-mtls/certs";
/// The files of a certificate set, as cert-manager writes a Secret.
pub const CERT_FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];
/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The ConfigMap, in every namespace with injected workloads, that holds the
/// CA certificates peers may chain to (the webhook's controller keeps it).
pub const TRUST_CONFIGMAP: &str = "kube-mtls-trust";
/// The master trust bundle, in the webhook's namespace: every namespace's
/// [`TRUST_CONFIGMAP`] is a copy of its [`TRUST_BUNDLE_KEY`].
pub const TRUST_MASTER_CONFIGMAP: &str = "kube-mtls-trust-bundle";
/// The key of the PEM bundle in both ConfigMaps, and the file's name in the pod.
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.crt";
/// The master's key recording how long each CA stays (JSON: SHA-256
/// fingerprint -> subject, notAfter, retainUntil or `current`).
pub const TRUST_RETENTION_KEY: &str = "retention.json";
/// Annotation on the master ConfigMap: SHA-256 fingerprints (or unique
/// prefixes of at least 8 hex digits), comma-separated, of previous CAs to
/// drop before their retention ends. The current CA is never dropped.
pub const TRUST_RETIRE: &str = "kube-mtls.io/retire";
/// The ConfigMap volume of [`TRUST_CONFIGMAP`] in an injected pod.
pub const TRUST_VOLUME: &str = "kube-mtls-trust";
/// Where the trust volume is mounted, read-only.
pub const TRUST_DIR: &str = "/var/run/kube-mtls/trust";
/// The bundle file the sidecar's `--trust-bundle` names: [`TRUST_DIR`]/[`TRUST_BUNDLE_KEY`].
pub const TRUST_BUNDLE_PATH: &str = "/var/run/kube-mtls/trust/ca-bundle.crt";

/// The names of one workload identity: a service account in a namespace,
/// in a trust domain. Every name derived from an identity comes from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    /// SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: &'a str,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's service account.
    pub service_account: &'a str,
}

impl Identity<'_> {
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The cert-manager Certificate: `kube-mtls-<sa>` (in the pod's namespace).
    pub fn certificate_name(&self) -> String {
        certificate_name(self.service_account)
    }

    /// The Secret that Certificate writes: `kube-mtls-<sa>-tls`.
    pub fn secret_name(&self) -> String {
        format!("{}-tls", self.certificate_name())
    }
}

/// The Certificate of a service account, `kube-mtls-<sa>`; the one rule the
/// other names build on (the controller maps service accounts with it).
pub fn certificate_name(service_account: &str) -> String {
    format!("kube-mtls-{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naming_rule() {
        let id = Identity {
            trust_domain: "cluster.local",
            namespace: "shop",
            service_account: "orders",
        };
        assert_eq!(id.certificate_name(), "kube-mtls-orders");
        assert_eq!(id.secret_name(), "kube-mtls-orders-tls");
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/orders");
    }

    #[test]
    fn the_trust_bundle_file_is_the_configmap_key_in_the_mounted_directory() {
        assert_eq!(TRUST_BUNDLE_PATH, format!("{TRUST_DIR}/{TRUST_BUNDLE_KEY}"));
    }
}
