//! Everything this plugin takes from the rest of kube-mtls, in one module:
//! annotation names, the naming rule of identities, the injected containers'
//! names, annotation resolution and the allow-list decision are the webhook's
//! and the sidecar's own items, re-exported here, so the plugin can never
//! disagree with what was injected or what the sidecar enforces.
//!
//! What no shared crate exposes yet is declared below, once: the `mode` and
//! `policy` annotations, the chart's label, and how to read the webhook
//! Deployment's flags (their names and defaults are those of
//! `kube-mtls-webhook serve`, docs/contract.md). When those move into a shared
//! crate, only this module changes.

use k8s_openapi::api::core::v1::Container;

pub use kube_mtls_contract::names::certificate_name;
pub use kube_mtls_sidecar::identity::{AllowList, PeerIdentity, SpiffeId};
pub use kube_mtls_webhook::annotations::{INJECT, PREFIX, Rejection, STATUS};
pub use kube_mtls_webhook::certificate::api_resource as certificate_resource;
pub use kube_mtls_webhook::cluster::ClusterView;
pub use kube_mtls_webhook::patch::{INIT_NAME, SIDECAR_NAME};
pub use kube_mtls_webhook::profile::{IssuerRef, MtlsProfile};
pub use kube_mtls_webhook::resolve::{Defaults, Resolved};

/// Resolves a pod's settings exactly as the webhook does at admission.
pub use kube_mtls_webhook::resolve::resolve;

pub use kube_mtls_contract::names::{MODE, POLICY};
use kube_mtls_contract::sidecar::{MtlsMode, Policy};
/// What a pod that sets no mode gets from a webhook with default flags.
pub const MODE_DEFAULT: &str = MtlsMode::Strict.as_str();
/// What a pod that sets no policy gets from a webhook with default flags.
pub const POLICY_DEFAULT: &str = Policy::Enforce.as_str();

/// The label the chart puts on everything it installs.
pub const CHART_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kube-mtls");

/// The first Kubernetes minor version with native sidecars (init containers
/// with `restartPolicy: Always`), which the webhook's `--native-sidecar=auto`
/// chooses from.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Pod Security Admission's namespace labels (enforce, warn, audit).
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
pub const PSA_WARN: &str = "pod-security.kubernetes.io/warn";
pub const PSA_AUDIT: &str = "pod-security.kubernetes.io/audit";

/// The webhook's settings that shape injected pods, read from its container.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFlags {
    /// The sidecar image injected now; pods with another one need a restart.
    pub sidecar_image: String,
    pub trust_domain: String,
    /// `ClusterIssuer/<name>` or `Issuer/<name>`.
    pub issuer: String,
    pub cert_duration: String,
    pub cert_renew_before: String,
    /// `auto`, `true` or `false`.
    pub native_sidecar: String,
    /// Where the serving certificate is mounted.
    pub tls_dir: String,
    /// `strict` or `permissive`, for pods that set no mode.
    pub default_mode: String,
    /// `enforce` or `audit`, for pods that set no policy.
    pub default_policy: String,
}

/// (flag, environment variable, default) of `kube-mtls-webhook serve`.
const FLAGS: [(&str, &str, &str); 9] = [
    (
        "sidecar-image",
        "KUBE_MTLS_SIDECAR_IMAGE",
        concat!(
            "ghcr.io/kube-mtls/kube-mtls-sidecar:",
            env!("CARGO_PKG_VERSION")
        ),
    ),
    ("trust-domain", "KUBE_MTLS_TRUST_DOMAIN", "cluster.local"),
    ("issuer", "KUBE_MTLS_ISSUER", "ClusterIssuer/kube-mtls-ca"),
    ("cert-duration", "KUBE_MTLS_CERT_DURATION", "24h"),
    ("cert-renew-before", "KUBE_MTLS_CERT_RENEW_BEFORE", "8h"),
    ("native-sidecar", "KUBE_MTLS_NATIVE_SIDECAR", "auto"),
    (
        "tls-dir",
        "KUBE_MTLS_WEBHOOK_TLS_DIR",
        "/var/run/kube-mtls/webhook-tls",
    ),
    ("default-mode", "KUBE_MTLS_DEFAULT_MODE", MODE_DEFAULT),
    ("default-policy", "KUBE_MTLS_DEFAULT_POLICY", POLICY_DEFAULT),
];

impl WebhookFlags {
    /// The webhook's defaults, for a cluster where it is not installed yet.
    pub fn defaults() -> Self {
        Self::from_lookup(|_, _| None)
    }

    /// The flags of the webhook's container: its args (`--flag=v` or
    /// `--flag v`), else its env, else the webhook's default.
    pub fn from_container(c: &Container) -> Self {
        let args = c.args.clone().unwrap_or_default();
        let env = c.env.clone().unwrap_or_default();
        Self::from_lookup(|flag, var| {
            let long = format!("--{flag}");
            let from_args = args.iter().enumerate().find_map(|(i, a)| {
                if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                    Some(v.to_owned())
                } else if *a == long {
                    args.get(i + 1).cloned()
                } else {
                    None
                }
            });
            from_args.or_else(|| {
                env.iter()
                    .find(|e| e.name == var)
                    .and_then(|e| e.value.clone())
            })
        })
    }

    fn from_lookup(get: impl Fn(&str, &str) -> Option<String>) -> Self {
        let [
            image,
            td,
            issuer,
            duration,
            renew,
            native,
            tls,
            mode,
            policy,
        ] = FLAGS.map(|(flag, var, default)| get(flag, var).unwrap_or_else(|| default.to_owned()));
        WebhookFlags {
            sidecar_image: image,
            trust_domain: td,
            issuer,
            cert_duration: duration,
            cert_renew_before: renew,
            native_sidecar: native,
            tls_dir: tls,
            default_mode: mode,
            default_policy: policy,
        }
    }

    /// The issuer as a reference; `None` when the flag is malformed (the
    /// webhook itself refuses to start then).
    pub fn issuer_ref(&self) -> Option<IssuerRef> {
        match self.issuer.split_once('/') {
            Some((kind @ ("ClusterIssuer" | "Issuer"), name)) if !name.is_empty() => {
                Some(IssuerRef {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The webhook's resolution defaults, as its `serve` builds them.
    pub fn resolution_defaults(&self) -> Defaults {
        Defaults {
            sidecar_image: self.sidecar_image.clone(),
            trust_domain: self.trust_domain.clone(),
            issuer: self.issuer_ref().unwrap_or(IssuerRef {
                kind: "ClusterIssuer".into(),
                name: self.issuer.clone(),
            }),
            cert_duration: self.cert_duration.clone(),
            cert_renew_before: self.cert_renew_before.clone(),
            native_sidecar: self.native_sidecar != "false",
            mode: clap::ValueEnum::from_str(&self.default_mode, false).unwrap_or_default(),
            policy: clap::ValueEnum::from_str(&self.default_policy, false).unwrap_or_default(),
        }
    }
}

/// The minor version from the API server's `/version` (`"29+"` on some clouds).
pub fn minor_version(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<u32> {
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    #[test]
    fn flags_come_from_args_then_env_then_the_webhooks_defaults() {
        let c = Container {
            args: Some(vec![
                "serve".into(),
                "--sidecar-image=reg/sidecar:2".into(),
                "--trust-domain".into(),
                "example.org".into(),
            ]),
            env: Some(vec![EnvVar {
                name: "KUBE_MTLS_ISSUER".into(),
                value: Some("Issuer/mine".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let f = WebhookFlags::from_container(&c);
        assert_eq!(f.sidecar_image, "reg/sidecar:2");
        assert_eq!(f.trust_domain, "example.org");
        assert_eq!(f.issuer, "Issuer/mine");
        assert_eq!(f.cert_duration, "24h");
        assert_eq!(f.issuer_ref().map(|i| i.kind), Some("Issuer".into()));
        let d = WebhookFlags::defaults();
        assert_eq!(d.issuer, "ClusterIssuer/kube-mtls-ca");
        assert!(d.sidecar_image.ends_with(env!("CARGO_PKG_VERSION")));
    }
}
