//! The flags of `kube-mtls-webhook`, each also read from a `KUBE_MTLS_*`
//! environment variable. They live in the library so that the generated
//! contract page (docs/contract.md) lists exactly what the binary takes, and
//! so that `kubectl-mtls` reads a webhook Deployment's flags with this parser.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::Resettable;
use clap::{
    Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube_mtls_contract::LogFormat;
use kube_mtls_contract::names::DEFAULT_TRUST_DOMAIN;
use kube_mtls_contract::sidecar::{MtlsMode, Policy};

use crate::resolve::Defaults;
use crate::trust::TrustSource;

/// The first Kubernetes minor version with native sidecars (init containers
/// with `restartPolicy: Always`), which `--native-sidecar=auto` chooses from.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Whether the API server of this `/version` has native sidecars: what
/// `serve --native-sidecar=auto` chooses. The minor version may carry a
/// suffix (`"29+"` on some clouds).
pub fn has_native_sidecars(info: &Info) -> bool {
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    info.major == "1" && digits.parse().is_ok_and(|m: u32| m >= NATIVE_SIDECAR_MINOR)
}

/// Flags that parse but cannot make the settings pods are resolved with.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--issuer (KUBE_MTLS_ISSUER): {0}")]
    Issuer(String),
}

/// Whether the sidecar is injected as a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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

impl Cli {
    /// Reads a command line as the binary does, with `env` in place of the
    /// process's environment: for the flags of another process (a webhook
    /// Deployment's container), which this process's variables must not change.
    pub fn try_parse_with_env<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = with_env(Cli::command(), &env).try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

/// `cmd` and its subcommands with each flag's variable looked up in `env`
/// (its value becomes the flag's default, so the command line still wins),
/// never in the process's environment.
fn with_env(cmd: clap::Command, env: &impl Fn(&str) -> Option<String>) -> clap::Command {
    let from_env = |a: Arg| {
        let value = a.get_env().and_then(|v| v.to_str()).and_then(env);
        let a = a.env(Resettable::Reset);
        match value {
            Some(v) => a.default_value(v),
            None => a,
        }
    };
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names.into_iter().fold(cmd.mut_args(from_env), |cmd, name| {
        cmd.mut_subcommand(name, |s| with_env(s, env))
    })
}

/// Settings that shape the injected pod.
#[derive(Args, Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
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
    /// CNI mode (chart value `cni.enabled`): the kube-mtls CNI plugin sets up
    /// each injected pod's redirect rules, so no container in the pod has
    /// NET_ADMIN or NET_RAW (it passes Pod Security `restricted`); an
    /// unprivileged first init container only checks that the rules are in
    /// place. No pod annotation or MtlsProfile can turn it off. true or
    /// false; `--cni-mode` alone is true.
    #[arg(
        long,
        env = "KUBE_MTLS_CNI_MODE",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true"
    )]
    pub cni_mode: bool,
    /// Mode of pods that set none (annotation `kube-mtls.io/mode`, or their
    /// MtlsProfile): strict (mTLS only) or permissive (plaintext callers too).
    #[arg(long, env = "KUBE_MTLS_DEFAULT_MODE", value_enum, default_value_t)]
    pub default_mode: MtlsMode,
    /// Policy of pods that set none (annotation `kube-mtls.io/policy`, or
    /// their MtlsProfile): enforce (refuse callers off the allow-list) or
    /// audit (let them through, count them as would_deny).
    #[arg(long, env = "KUBE_MTLS_DEFAULT_POLICY", value_enum, default_value_t)]
    pub default_policy: Policy,
    /// Where sidecars take the CAs they verify peers with. configmap: the
    /// ConfigMap kube-mtls-trust, which the webhook's controller keeps in
    /// every namespace with injected workloads from the --issuer's CA Secret
    /// (a cert-manager CA issuer), holding every CA a live certificate may
    /// chain to, so a CA rotation cuts no traffic. secret: each pod's own
    /// Secret's ca.crt, for issuers that are not CA issuers (Vault, ACME,
    /// external issuers), whose CA the webhook cannot read; a CA rotation then
    /// cuts traffic until every workload is re-issued. With configmap and
    /// such an issuer, pods get secret, with a warning.
    #[arg(
        long,
        env = "KUBE_MTLS_TRUST_BUNDLE_SOURCE",
        value_enum,
        default_value_t
    )]
    pub trust_bundle_source: TrustSource,
}

impl InjectionFlags {
    /// The flags of a webhook given none (the process's environment is not read).
    pub fn unset() -> InjectionFlags {
        let cmd = with_env(
            InjectionFlags::augment_args(clap::Command::new("unset")),
            &|_| None,
        );
        cmd.try_get_matches_from(["unset"])
            .and_then(|m: ArgMatches| InjectionFlags::from_arg_matches(&m))
            .expect("every injection flag has a default")
    }

    /// The settings pods are resolved with, once `--native-sidecar` is
    /// decided (`auto`: `serve` asks the API server, `inject` takes native).
    pub fn resolution_defaults(&self, native_sidecar: bool) -> Result<Defaults, FlagError> {
        Ok(Defaults {
            sidecar_image: self.sidecar_image.clone(),
            trust_domain: self.trust_domain.clone(),
            issuer: self.issuer.parse().map_err(FlagError::Issuer)?,
            cert_duration: self.cert_duration.clone(),
            cert_renew_before: self.cert_renew_before.clone(),
            native_sidecar,
            cni_mode: self.cni_mode,
            mode: self.default_mode,
            policy: self.default_policy,
            trust_source: self.trust_bundle_source,
        })
    }
}

/// What a webhook given no flags resolves pods with, `native_sidecar`
/// decided: the settings of the tests and fuzz targets, and of a cluster
/// where the webhook is not installed yet.
pub fn unset_defaults(native_sidecar: bool) -> Defaults {
    InjectionFlags::unset()
        .resolution_defaults(native_sidecar)
        .expect("the default --issuer is a valid reference")
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
    /// namespace labels, no Certificates, no Events, no trust bundle (pods
    /// trust their own Secret's ca.crt).
    #[arg(long, env = "KUBE_MTLS_STANDALONE")]
    pub standalone: bool,
    /// cert-manager's cluster resource namespace, where a CA ClusterIssuer's
    /// Secret lives (cert-manager's own --cluster-resource-namespace): the
    /// trust bundle reads the --issuer's CA from there.
    #[arg(
        long,
        env = "KUBE_MTLS_CLUSTER_RESOURCE_NAMESPACE",
        default_value = "cert-manager"
    )]
    pub cluster_resource_namespace: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str], env: &[(&str, &str)]) -> (Cli, ServeArgs) {
        let argv = std::iter::once("kube-mtls-webhook").chain(args.iter().copied());
        let lookup = |var: &str| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        };
        let mut cli = Cli::try_parse_with_env(argv, lookup).expect("the command line parses");
        match std::mem::replace(&mut cli.command, Command::Crd) {
            Command::Serve(s) => (cli, s),
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn a_command_line_wins_over_the_given_env_which_wins_over_defaults() {
        let env = [
            ("KUBE_MTLS_TRUST_DOMAIN", "env.org"),
            ("KUBE_MTLS_CERT_DURATION", "48h"),
            ("KUBE_MTLS_STANDALONE", "true"),
            ("KUBE_MTLS_LOG_FORMAT", "json"),
            ("KUBE_MTLS_NATIVE_SIDECAR", "false"),
        ];
        let (cli, s) = serve(
            &["serve", "--trust-domain=args.org", "--port", "9443"],
            &env,
        );
        assert_eq!(s.injection.trust_domain, "args.org");
        assert_eq!(s.injection.cert_duration, "48h");
        assert_eq!(s.injection.native_sidecar, NativeSidecar::False);
        assert_eq!(s.port, 9443);
        assert!(s.standalone);
        assert_eq!(cli.log_format, LogFormat::Json);
        let (_, none) = serve(&["serve"], &[]);
        assert_eq!(none.injection, InjectionFlags::unset());
        assert!(!none.standalone);
    }

    #[test]
    fn the_given_env_is_checked_as_the_flag_would_be() {
        let argv = ["kube-mtls-webhook", "serve"];
        let bad = |var: &str| (var == "KUBE_MTLS_DEFAULT_POLICY").then(|| "lenient".to_owned());
        let e = Cli::try_parse_with_env(argv, bad)
            .err()
            .expect("no such policy");
        assert!(e.to_string().contains("lenient"), "{e}");
    }

    #[test]
    fn the_unset_flags_make_the_documented_defaults() {
        let d = unset_defaults(false);
        assert_eq!(d.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(d.issuer.to_string(), InjectionFlags::unset().issuer);
        assert_eq!((d.mode, d.policy), (MtlsMode::Strict, Policy::Enforce));
        assert!(!d.native_sidecar && unset_defaults(true).native_sidecar);
        let bad = InjectionFlags {
            issuer: "Secret/ca".into(),
            ..InjectionFlags::unset()
        };
        let e = bad
            .resolution_defaults(true)
            .expect_err("not an issuer kind");
        assert!(
            e.to_string().starts_with("--issuer (KUBE_MTLS_ISSUER)"),
            "{e}"
        );
    }

    #[test]
    fn cni_mode_takes_a_bare_flag_true_false_or_its_variable() {
        let cni = |args: &[&str], env: &[(&str, &str)]| serve(args, env).1.injection.cni_mode;
        assert!(!cni(&["serve"], &[]));
        assert!(cni(&["serve", "--cni-mode"], &[]));
        assert!(cni(&["serve", "--cni-mode=true"], &[]));
        assert!(!cni(&["serve", "--cni-mode=false"], &[]));
        assert!(cni(&["serve"], &[("KUBE_MTLS_CNI_MODE", "true")]));
        assert!(!cni(
            &["serve", "--cni-mode=false"],
            &[("KUBE_MTLS_CNI_MODE", "true")]
        ));
        let argv = ["kube-mtls-webhook", "serve", "--cni-mode=yes"];
        let e = Cli::try_parse_with_env(argv, |_| None)
            .err()
            .expect("not true or false");
        assert!(e.to_string().contains("--cni-mode"), "{e}");
        // The flag reaches the settings pods are resolved with.
        let (_, s) = serve(&["serve", "--cni-mode"], &[]);
        assert!(
            s.injection
                .resolution_defaults(true)
                .is_ok_and(|d| d.cni_mode)
        );
        assert!(!unset_defaults(true).cni_mode);
    }

    #[test]
    fn the_trust_bundle_source_and_cluster_resource_namespace_have_flags_and_variables() {
        let (_, none) = serve(&["serve"], &[]);
        assert_eq!(none.injection.trust_bundle_source, TrustSource::ConfigMap);
        assert_eq!(none.cluster_resource_namespace, "cert-manager");
        let (_, s) = serve(
            &["serve", "--trust-bundle-source=secret"],
            &[("KUBE_MTLS_CLUSTER_RESOURCE_NAMESPACE", "certs")],
        );
        assert_eq!(s.injection.trust_bundle_source, TrustSource::Secret);
        assert_eq!(s.cluster_resource_namespace, "certs");
        let (_, e) = serve(&["serve"], &[("KUBE_MTLS_TRUST_BUNDLE_SOURCE", "secret")]);
        assert_eq!(
            e.injection
                .resolution_defaults(true)
                .map(|d| d.trust_source)
                .ok(),
            Some(TrustSource::Secret)
        );
        let argv = ["kube-mtls-webhook", "serve", "--trust-bundle-source=bundle"];
        let err = Cli::try_parse_with_env(argv, |_| None)
            .err()
            .expect("not configmap or secret");
        assert!(err.to_string().contains("--trust-bundle-source"), "{err}");
    }

    #[test]
    fn native_sidecars_come_with_kubernetes_1_29() {
        let info = |major: &str, minor: &str| Info {
            major: major.into(),
            minor: minor.into(),
            ..Default::default()
        };
        assert!(has_native_sidecars(&info("1", "29")));
        assert!(has_native_sidecars(&info("1", "33+")));
        assert!(!has_native_sidecars(&info("1", "28+")));
        assert!(!has_native_sidecars(&info("1", "")));
        assert!(!has_native_sidecars(&info("2", "30")));
    }
}
