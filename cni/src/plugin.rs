//! The chained CNI plugin: on ADD for a pod the webhook marked with
//! [`CNI_REDIRECT`], it installs `kube-mtls-init`'s rule plan inside the
//! pod's network namespace, so the pod needs no privileged init container.
//!
//! - [`protocol`]: the CNI protocol (environment, configuration, result, errors).
//! - `pod`: the pod's annotations from the API server, when the runtime did not pass them.
//! - `netns`: the annotation read as `kube-mtls-init`'s args, and the rules
//!   installed in the pod's namespace ([`apply_in_netns`]).
//!
//! It fails closed: a pod that should be redirected and cannot be does not
//! start, and the error the runtime reports names the pod, its namespace and
//! the cause. Pods without the annotation (not injected, or injected in the
//! default mode, or the agent's own) pass through untouched. DEL, GC and
//! STATUS always succeed: the rules live and die with the pod's namespace.

mod netns;
mod pod;
pub mod protocol;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube_mtls_contract::ConfigError;
use kube_mtls_contract::names::CNI_REDIRECT;
use serde_json::{Map, Value};

pub use netns::{apply_in_netns, init_args_from_annotation, settings_from_args};
use protocol::{CniError, Command, Invocation, NetConf, PodRef, code};

/// Why the plugin could not install a pod's rules.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "the pod's {annotation} annotation is not a JSON list of strings ({reason}): {value:?}. Fix: recreate the pod, so that the kube-mtls webhook writes the annotation again"
    )]
    Annotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the pod's {CNI_REDIRECT} annotation does not hold kube-mtls-init's args: {0}. Fix: run the same kube-mtls version in the webhook and on the nodes, and recreate the pod"
    )]
    Args(String),
    #[error(
        "the pod's {CNI_REDIRECT} annotation asks for --{0}, which installs no rules. Fix: remove it (the webhook never writes it) and recreate the pod"
    )]
    Mode(&'static str),
    #[error("the pod's {CNI_REDIRECT} annotation: {0}")]
    Settings(#[from] ConfigError),
    #[error(
        "cannot open the pod's network namespace {path}: {source}. Fix: CNI_NETNS must name the pod's network namespace, and kube-mtls-cni must run in the host's mount namespace"
    )]
    NetnsOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot enter the pod's network namespace {path}: {source}. Fix: CNI_NETNS must be a network namespace, and kube-mtls-cni must run as root (the container runtime runs CNI plugins so)"
    )]
    NetnsEnter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a pod's network namespace is entered only from the main thread of a process of its own. Fix: run it through `kube-mtls-cni repair-netns`"
    )]
    NotMainThread,
    #[error(
        "installing the redirect rules failed (iptables runs from the node's PATH, as the container runtime runs the plugin): {0}"
    )]
    Rules(#[from] kube_mtls_init::apply::ApplyError),
    #[error(
        "cannot read the pod from the API server ({attempts} attempts, {interval_ms} ms apart; the runtime passed no pod annotations): {last}. Fix: check that the kube-mtls CNI agent runs on this node and that its kubeconfig {} reaches the API server, or let the runtime pass pod annotations (containerd 1.5 or later, with the capability io.kubernetes.cri.pod-annotations in the plugin's conflist entry)",
        .kubeconfig.display()
    )]
    PodLookup {
        attempts: u32,
        interval_ms: u64,
        last: String,
        kubeconfig: PathBuf,
    },
    #[error(
        "the runtime passed no pod annotations and the network configuration names no kubeconfig, so the pod's settings cannot be read. Fix: let the kube-mtls CNI agent write the plugin's conflist entry (it sets kubeconfig), or let the runtime pass pod annotations (containerd 1.5 or later)"
    )]
    NoKubeconfig,
}

impl PluginError {
    /// The CNI error code the runtime is given.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::Annotation { .. }
            | PluginError::Args(_)
            | PluginError::Mode(_)
            | PluginError::Settings(_) => code::SETTINGS,
            PluginError::NetnsOpen { .. }
            | PluginError::NetnsEnter { .. }
            | PluginError::NotMainThread => code::NETNS,
            PluginError::Rules(_) => code::RULES,
            PluginError::PodLookup { .. } => code::POD_LOOKUP,
            PluginError::NoKubeconfig => code::INVALID_CONFIG,
        }
    }
}

/// Runs one CNI command from the environment and stdin; returns the exit code.
pub fn main() -> i32 {
    let invocation = Invocation::from_vars(|name| std::env::var(name).ok());
    let stdin = match std::io::read_to_string(std::io::stdin()) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot read the network configuration from stdin: {e}");
            return fail(&CniError::new(code::IO, msg));
        }
    };
    init_logging(&stdin);
    match run(&invocation, &stdin) {
        Ok(Some(out)) => {
            print(&out);
            0
        }
        Ok(None) => 0,
        Err(e) => fail(&e),
    }
}

fn print(value: &Value) {
    // A runtime that has stopped reading has nothing left to tell.
    let _ = writeln!(std::io::stdout().lock(), "{value}");
}

fn fail(e: &CniError) -> i32 {
    tracing::error!(code = e.code, "{}", e.msg);
    print(&e.to_json());
    1
}

/// Logs go to stderr, at the configuration's `logLevel` (info by default).
/// A bad level is reported and replaced by info: logging never fails a pod.
fn init_logging(stdin: &str) {
    let level = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("logLevel").and_then(Value::as_str).map(str::to_owned));
    let format = kube_mtls_contract::LogFormat::Text;
    match level {
        Some(level) => {
            if let Err(e) = kube_mtls_telemetry::init(format, &level) {
                let _ = kube_mtls_telemetry::init(format, "info");
                tracing::warn!("logLevel in the network configuration: {e}");
            }
        }
        None => {
            let _ = kube_mtls_telemetry::init(format, "info");
        }
    }
}

/// One command: `Ok(Some)` to print, `Ok(None)` for success without output.
pub fn run(invocation: &Invocation, stdin: &str) -> Result<Option<Value>, CniError> {
    let raw = invocation.command.as_deref().unwrap_or("");
    let Some(command) = Command::parse(raw) else {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_COMMAND {raw:?} is not a CNI command. Fix: run kube-mtls-cni with one of ADD, DEL, CHECK, VERSION, GC, STATUS (or without CNI_COMMAND for the node agent)"
            ),
        ));
    };
    match command {
        Command::Version => Ok(Some(protocol::version_info(stdin))),
        Command::Add => add(invocation, stdin).map(Some),
        Command::Check => check(invocation, stdin),
        Command::Del | Command::Gc | Command::Status => {
            tracing::debug!(?command, container = ?invocation.container_id, "nothing to undo: the rules go with the pod's network namespace");
            Ok(None)
        }
    }
}

/// ADD: the previous result, after the pod's rules are installed when it
/// carries the annotation.
fn add(invocation: &Invocation, stdin: &str) -> Result<Value, CniError> {
    let conf = NetConf::decode(stdin)?;
    conf.check_version()?;
    let version = conf.cni_version.as_str();
    let result = conf.passthrough()?;
    let netns = invocation
        .require_for_add()
        .map_err(|e| e.in_version(version))?;
    let pod = invocation.pod().map_err(|e| e.in_version(version))?;
    let runtime = conf.runtime_annotations()?;
    let subject = Subject {
        pod: pod.as_ref(),
        container: invocation.container_id.as_deref().unwrap_or(""),
        netns,
    };
    let failed = |e: PluginError| subject.error(&e, version);
    let Some(value) = redirect_annotation(&conf, runtime, pod.as_ref()).map_err(failed)? else {
        tracing::info!("{subject}: no {CNI_REDIRECT} annotation, passed through");
        return Ok(result);
    };
    let args = init_args_from_annotation(&value).map_err(failed)?;
    apply_in_netns(netns, &args).map_err(failed)?;
    tracing::info!("{subject}: redirect rules installed");
    Ok(result)
}

/// The pod's [`CNI_REDIRECT`] annotation: from the annotations the runtime
/// passed, else from the API server. A container that is no Kubernetes pod
/// (no `K8S_POD_NAME` in `CNI_ARGS`) has none.
fn redirect_annotation(
    conf: &NetConf,
    runtime: Option<Map<String, Value>>,
    pod: Option<&PodRef>,
) -> Result<Option<String>, PluginError> {
    let value = match (runtime, pod) {
        (Some(mut annotations), _) => annotations.remove(CNI_REDIRECT),
        (None, None) => {
            tracing::info!(
                "no pod annotations from the runtime and no pod in CNI_ARGS: not a Kubernetes pod"
            );
            return Ok(None);
        }
        (None, Some(pod)) => {
            let kubeconfig = conf.kubeconfig.clone().ok_or(PluginError::NoKubeconfig)?;
            let lookup = pod::Lookup {
                kubeconfig,
                attempts: conf.pod_lookup_attempts.max(1),
                interval: Duration::from_millis(conf.pod_lookup_interval_ms),
            };
            pod::annotations(&lookup, pod)?
                .remove(CNI_REDIRECT)
                .map(Value::String)
        }
    };
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(PluginError::Annotation {
            annotation: CNI_REDIRECT,
            value: other.to_string(),
            reason: "not a string".into(),
        }),
    }
}

/// CHECK: the previous result. Nothing the plugin keeps can be missing (the
/// rules live in the pod's namespace), so only a version without CHECK fails.
fn check(invocation: &Invocation, stdin: &str) -> Result<Option<Value>, CniError> {
    let Ok(conf) = NetConf::decode(stdin) else {
        tracing::warn!(container = ?invocation.container_id, "CHECK without a readable network configuration: nothing to check");
        return Ok(None);
    };
    conf.check_version()?;
    if !protocol::has_check(&conf.cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK is not part of CNI {}: it came with 0.4.0. Fix: set the conflist's cniVersion to 0.4.0 or later",
                conf.cni_version
            ),
        )
        .in_version(&conf.cni_version));
    }
    Ok(conf.passthrough().ok())
}

/// What a failed ADD names: the pod (or the container), and its namespace.
struct Subject<'a> {
    pod: Option<&'a PodRef>,
    container: &'a str,
    netns: &'a Path,
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pod {
            Some(pod) => write!(f, "pod {pod}")?,
            None => write!(f, "container {}", self.container)?,
        }
        write!(f, " (netns {})", self.netns.display())
    }
}

impl Subject<'_> {
    fn error(&self, e: &PluginError, version: &str) -> CniError {
        CniError::new(e.code(), format!("kube-mtls-cni ADD for {self}: {e}"))
            .details(
                "kube-mtls-cni fails closed: a pod whose traffic must go through its kube-mtls sidecar does not start without its redirect rules",
            )
            .in_version(version)
    }
}
