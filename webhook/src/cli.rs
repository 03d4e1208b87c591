//! The flags of `kube-mtls-webhook`, each also read from a `KUBE_MTLS_*`
//! environment variable. They live in the library so that the generated
//! contract page (docs/contract.md) lists exactly what the binary takes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube_mtls_contract::LogFormat;
use kube_mtls_contract::names::DEFAULT_TRUST_DOMAIN;
use kube_mtls_contract::sidecar::{MtlsMode, Policy};

/// Whether the sidecar is injected as a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum NativeSidecar {
    /// `serve`: from the API server version (>= 1.29: native); `inject`: native.
    #[default]
    Auto,
    True,
    False,
}

impl NativeSidecar {
    /// `Some` when the flag decides, `None` for `auto`.
    pub fn explicit(self) -> Option<bool> {
        match self {
            NativeSidecar::Auto => None,
            NativeSidecar::True => Some(true),
            NativeSidecar::False => Some(false),
        }
    }
}

/// `kube-mtls-webhook`: a subcommand and the log flags.
#[derive(Parser)]
#[command(
    name = "kube-mtls-webhook",
    version,
    about = "kube-mtls admission webhook and offline injector"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: json, text (coloured only on a terminal), or auto (text on a terminal, JSON otherwise).
    #[arg(
        long,
        global = true,
        env = "KUBE_MTLS_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `kube_mtls_webhook=debug`.
    #[arg(
        long,
        global = true,
        env = "KUBE_MTLS_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

/// What the binary does.
#[derive(Subcommand)]
pub enum Command {
    /// Serve the admission webhook and run the Certificate controller.
    Serve(ServeArgs),
    /// Inject manifests offline: reads YAML, prints it injected.
    Inject(InjectArgs),
    /// Print the MtlsProfile CRD.
    Crd,
}

/// Settings that shape the injected pod.
#[derive(Args, Clone)]
pub struct InjectionFlags {
    /// The image of the init container and the sidecar (it holds both binaries).
    #[arg(long, env = "KUBE_MTLS_SIDECAR_IMAGE", default_value = concat!("ghcr.io/kube-mtls/kube-mtls-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// SPIFFE trust domain of the identities (a pod's MtlsProfile may set another).
    #[arg(long, env = "KUBE_MTLS_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The cert-manager issuer of workload certificates: `ClusterIssuer/<name>` or `Issuer/<name>`.
    #[arg(
        long,
        env = "KUBE_MTLS_ISSUER",
        default_value = "ClusterIssuer/kube-mtls-ca"
    )]
    pub issuer: String,
    /// Lifetime of workload certificates (a pod's MtlsProfile may set another).
    #[arg(long, env = "KUBE_MTLS_CERT_DURATION", default_value = "24h")]
    pub cert_duration: String,
    /// How long before expiry cert-manager renews a workload certificate.
    #[arg(long, env = "KUBE_MTLS_CERT_RENEW_BEFORE", default_value = "8h")]
    pub cert_renew_before: String,
    /// Whether the sidecar is a native sidecar (an init container with
    /// restartPolicy Always, Kubernetes >= 1.29): auto (serve: from the API
    /// server version; inject: true), true or false.
    #[arg(long, env = "KUBE_MTLS_NATIVE_SIDECAR", value_enum, default_value_t)]
    pub native_sidecar: NativeSidecar,
    /// Mode of pods that set none (annotation `kube-mtls.io/mode`, or their
    /// MtlsProfile): strict (mTLS only) or permissive (plaintext callers too).
    #[arg(long, env = "KUBE_MTLS_DEFAULT_MODE", value_enum, default_value_t)]
    pub default_mode: MtlsMode,
    /// Policy of pods that set none (annotation `kube-mtls.io/policy`, or
    /// their MtlsProfile): enforce (refuse callers off the allow-list) or
    /// audit (let them through, count them as would_deny).
    #[arg(long, env = "KUBE_MTLS_DEFAULT_POLICY", value_enum, default_value_t)]
    pub default_policy: Policy,
}

/// Flags of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub injection: InjectionFlags,
    /// HTTPS port for /mutate.
    #[arg(long, env = "KUBE_MTLS_WEBHOOK_PORT", default_value_t = 8443)]
    pub port: u16,
    /// Plain port for /healthz, /readyz, /metrics.
    #[arg(long, env = "KUBE_MTLS_METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// Directory with the serving certificate (tls.crt, tls.key).
    #[arg(
        long,
        env = "KUBE_MTLS_WEBHOOK_TLS_DIR",
        default_value = "/var/run/kube-mtls/webhook-tls"
    )]
    pub tls_dir: PathBuf,
    /// The webhook's own namespace, never injected.
    #[arg(long, env = "KUBE_MTLS_NAMESPACE", default_value = "kube-mtls")]
    pub namespace: String,
    /// Serve without a Kubernetes API connection: no MtlsProfiles, no
    /// namespace labels, no Certificates, no Events.
    #[arg(long, env = "KUBE_MTLS_STANDALONE")]
    pub standalone: bool,
}

/// Flags of `inject`.
#[derive(Args)]
pub struct InjectArgs {
    #[command(flatten)]
    pub injection: InjectionFlags,
    /// Manifest file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: String,
    /// Do not append the cert-manager Certificates for the identities.
    #[arg(long)]
    pub no_certificates: bool,
    /// The namespace the output will be applied to, for documents without
    /// metadata.namespace (like kubectl's -n): identities and Certificates
    /// depend on it.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}
