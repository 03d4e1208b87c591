//! Everything this plugin takes from the rest of kube-mtls, in one module:
//! annotation names, the naming rule of identities, the injected containers'
//! names, annotation resolution and the allow-list decision are the webhook's
//! and the sidecar's own items, re-exported here, so the plugin can never
//! disagree with what was injected or what the sidecar enforces.
//!
//! The webhook Deployment's flags are read with the webhook's own parser
//! ([`kube_mtls_webhook::cli`]), so their names, variables and defaults are
//! the binary's. What no shared crate exposes yet is declared below, once: the
//! chart's label and Pod Security Admission's labels.

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

pub use kube_mtls_contract::names::{
    CNI_BINARY, MODE, POLICY, TRUST_BUNDLE_KEY, TRUST_CONFIGMAP, TRUST_MASTER_CONFIGMAP,
    TRUST_RETIRE, VALIDATE_NAME, VALIDATION_FAILED_EXIT,
};
pub use kube_mtls_webhook::certificate::MANAGED_BY;
use kube_mtls_webhook::cli::{Cli, Command, FlagError};
pub use kube_mtls_webhook::cli::{InjectionFlags, NATIVE_SIDECAR_MINOR, has_native_sidecars};
/// The trust bundle as the webhook's controller writes and reads it.
pub use kube_mtls_webhook::trust::TrustSource;
pub use kube_mtls_webhook::trust::bundle::{Bundle, Retain};

/// The label the chart puts on everything it installs.
pub const CHART_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kube-mtls");

/// The labels of the pods of the chart's CNI agent DaemonSet (CNI mode).
pub const CNI_AGENT_LABELS: [(&str, &str); 2] =
    [CHART_LABEL, ("app.kubernetes.io/component", "cni-agent")];

/// Pod Security Admission's namespace labels (enforce, warn, audit).
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
pub const PSA_WARN: &str = "pod-security.kubernetes.io/warn";
pub const PSA_AUDIT: &str = "pod-security.kubernetes.io/audit";

/// The webhook's settings that shape injected pods, read from its container.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFlags {
    /// The sidecar image, identities, issuer, native sidecar, mode and policy.
    #[serde(flatten)]
    pub injection: InjectionFlags,
    /// Where the serving certificate is mounted.
    pub tls_dir: String,
}

/// Why a webhook container's flags cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// What the webhook says of its args: it does not start with them.
    #[error("{}", first_line(.0))]
    Parse(#[from] clap::Error),
    #[error("the container runs `kube-mtls-webhook {0}`, not `serve`")]
    NotServe(&'static str),
}

/// clap's message without its prefix, usage and help hint.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

impl WebhookFlags {
    /// The webhook's defaults, for a cluster where it is not installed yet.
    pub fn defaults() -> Self {
        Self::from_command_line(&["serve".into()], |_| None).expect("`serve` without flags parses")
    }

    /// The flags of the webhook's container, read as `kube-mtls-webhook` reads
    /// them: its args (the image runs `serve` without any), else its env, else
    /// the webhook's default.
    pub fn from_container(c: &Container) -> Result<Self, FlagsError> {
        let serve = ["serve".to_owned()];
        let args = c.args.as_deref().unwrap_or(&serve);
        let env = c.env.as_deref().unwrap_or_default();
        Self::from_command_line(args, |var| {
            env.iter()
                .find(|e| e.name == var)
                .and_then(|e| e.value.clone())
        })
    }

    fn from_command_line(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, FlagsError> {
        let argv = std::iter::once("kube-mtls-webhook").chain(args.iter().map(String::as_str));
        match Cli::try_parse_with_env(argv, env)?.command {
            Command::Serve(s) => Ok(WebhookFlags {
                injection: s.injection,
                tls_dir: s.tls_dir.display().to_string(),
            }),
            Command::Inject(_) => Err(FlagsError::NotServe("inject")),
            Command::Crd => Err(FlagsError::NotServe("crd")),
        }
    }

    /// The issuer as a reference (the webhook refuses to start without one).
    pub fn issuer_ref(&self) -> Result<IssuerRef, String> {
        self.injection.issuer.parse()
    }

    /// The webhook's resolution defaults, as it builds them (`auto`: native).
    pub fn resolution_defaults(&self) -> Result<Defaults, FlagError> {
        let native = self.injection.native_sidecar.explicit().unwrap_or(true);
        self.injection.resolution_defaults(native)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    fn container(args: &[&str], env: &[(&str, &str)]) -> Container {
        Container {
            args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
            env: Some(
                env.iter()
                    .map(|(k, v)| EnvVar {
                        name: (*k).into(),
                        value: Some((*v).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn flags_come_from_args_then_env_then_the_webhooks_defaults() {
        let c = container(
            &[
                "serve",
                "--sidecar-image=reg/sidecar:2",
                "--trust-domain",
                "example.org",
                "--log-format=json",
            ],
            &[
                ("KUBE_MTLS_ISSUER", "Issuer/mine"),
                ("KUBE_MTLS_TRUST_DOMAIN", "from-env.org"),
                ("KUBE_MTLS_DEFAULT_POLICY", "audit"),
            ],
        );
        let f = WebhookFlags::from_container(&c).expect("the flags parse");
        assert_eq!(f.injection.sidecar_image, "reg/sidecar:2");
        assert_eq!(f.injection.trust_domain, "example.org");
        assert_eq!(f.injection.issuer, "Issuer/mine");
        assert_eq!(f.injection.default_policy.as_str(), "audit");
        assert_eq!(
            f.injection.cert_duration,
            InjectionFlags::unset().cert_duration
        );
        assert_eq!(f.issuer_ref().map(|i| i.kind), Ok("Issuer".into()));
        let d = WebhookFlags::defaults();
        assert_eq!(d.injection, InjectionFlags::unset());
        assert_eq!(d.injection.issuer, "ClusterIssuer/kube-mtls-ca");
        assert!(
            d.injection
                .sidecar_image
                .ends_with(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn a_container_without_args_runs_the_images_serve() {
        let c = Container {
            env: Some(vec![EnvVar {
                name: "KUBE_MTLS_WEBHOOK_TLS_DIR".into(),
                value: Some("/tls".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let f = WebhookFlags::from_container(&c).expect("the flags parse");
        assert_eq!(f.tls_dir, "/tls");
        assert_eq!(f.injection, InjectionFlags::unset());
    }

    #[test]
    fn args_the_webhook_refuses_are_an_error_that_names_them() {
        let unknown = container(&["serve", "--trust-domian=x"], &[]);
        let e = WebhookFlags::from_container(&unknown).expect_err("an unknown flag");
        assert!(e.to_string().contains("--trust-domian"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        let bad = container(&["serve"], &[("KUBE_MTLS_DEFAULT_MODE", "loose")]);
        let e = WebhookFlags::from_container(&bad).expect_err("a mode that is none");
        assert!(e.to_string().contains("loose"), "{e}");
        let inject = container(&["inject", "-f", "x.yaml"], &[]);
        let e = WebhookFlags::from_container(&inject).expect_err("not serve");
        assert!(matches!(e, FlagsError::NotServe("inject")), "{e}");
    }

    #[test]
    fn resolution_takes_the_flags_and_refuses_a_malformed_issuer() {
        let c = container(
            &[
                "serve",
                "--native-sidecar=false",
                "--default-mode=permissive",
            ],
            &[],
        );
        let d = WebhookFlags::from_container(&c)
            .expect("the flags parse")
            .resolution_defaults()
            .expect("a valid issuer");
        assert!(!d.native_sidecar);
        assert_eq!(d.mode.as_str(), "permissive");
        assert_eq!(d.issuer.to_string(), InjectionFlags::unset().issuer);
        let c = container(&["serve", "--issuer=kube-mtls-ca"], &[]);
        let f = WebhookFlags::from_container(&c).expect("the flags parse");
        assert!(f.issuer_ref().is_err());
        let e = f.resolution_defaults().expect_err("no kind");
        assert!(e.to_string().contains("--issuer"), "{e}");
    }
}
