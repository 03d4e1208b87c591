//! The flags of `kube-mtls-cni` when no container runtime runs it: the node
//! agent (`agent`), its readiness check (`ready`) and the child process that
//! repairs one pod (`repair-netns`). Each flag also reads a `KUBE_MTLS_*`
//! environment variable, so the DaemonSet sets them from the chart's values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube_mtls_contract::LogFormat;
use kube_mtls_contract::duration::parse_duration;

/// `kube-mtls-cni` outside a container runtime.
#[derive(Debug, Parser)]
#[command(
    name = "kube-mtls-cni",
    version,
    about = "kube-mtls CNI mode: the node agent that installs the kube-mtls-cni plugin, and its readiness check (run by a container runtime with CNI_COMMAND set, the same binary is the plugin)"
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
    /// Log filter, e.g. `info` or `kube_mtls_cni=debug`.
    #[arg(
        long,
        global = true,
        env = "KUBE_MTLS_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

/// What the binary does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the plugin on this node (binary, kubeconfig, conflist entry),
    /// keep it installed, repair pods that started before it, and remove it
    /// on SIGTERM.
    Agent(AgentArgs),
    /// Readiness check: exit 0 when the plugin binary is installed and the
    /// primary CNI configuration lists it, 1 (naming what is missing) otherwise.
    Ready(DirArgs),
    /// Apply a pod's redirect rules inside its network namespace (run by the
    /// agent as a child process: joining a namespace needs a fresh process).
    #[command(hide = true)]
    RepairNetns(RepairNetnsArgs),
}

/// Where the node's container runtime looks for CNI plugins and configuration.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// The directory CNI plugin binaries are installed in, as the container runtime sees it.
    #[arg(long, env = "KUBE_MTLS_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The directory of CNI network configurations; the first by name is the one the runtime uses.
    #[arg(long, env = "KUBE_MTLS_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
}

/// What the agent does with a pod whose first init container found no redirect rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepairMode {
    /// Install the rules in the running pod's network namespace; the kubelet
    /// then restarts the failed init container, which passes.
    Reinstall,
    /// Delete the pod; its controller makes a new one, which the plugin sets up.
    Delete,
    /// Leave such pods failing.
    Off,
}

impl RepairMode {
    /// The metric label and the word in Events.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairMode::Reinstall => "reinstall",
            RepairMode::Delete => "delete",
            RepairMode::Off => "off",
        }
    }
}

/// The node agent's flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// This node's name (from the downward API, spec.nodeName): the repair
    /// controller watches the pods scheduled here.
    #[arg(long, env = "KUBE_MTLS_NODE_NAME")]
    pub node_name: Option<String>,
    /// A pod that started before the plugin was installed: reinstall its
    /// rules in place, delete it, or off.
    #[arg(long, env = "KUBE_MTLS_CNI_REPAIR", value_enum, default_value_t = RepairMode::Reinstall)]
    pub repair: RepairMode,
    /// Port of the plain-HTTP Prometheus endpoint (GET /metrics); 0 turns it off.
    #[arg(long, env = "KUBE_MTLS_METRICS_PORT", default_value_t = 15090)]
    pub metrics_port: u16,
    /// The agent's service account files (token, ca.crt), from which the
    /// plugin's kubeconfig is written.
    #[arg(
        long,
        env = "KUBE_MTLS_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
    /// How often the binary, the kubeconfig and the conflist entry are checked
    /// and put back (500ms, 1s, 5s...).
    #[arg(long, env = "KUBE_MTLS_CNI_SYNC_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub sync_interval: Duration,
    /// The plugin binary to install; by default this executable.
    #[arg(long, env = "KUBE_MTLS_CNI_SOURCE")]
    pub source: Option<PathBuf>,
}

/// The flags the agent cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--node-name (KUBE_MTLS_NODE_NAME) is not set, and --repair is {0}: the repair controller watches the pods of its own node. Fix: set KUBE_MTLS_NODE_NAME from the downward API (fieldRef spec.nodeName), or pass --repair off"
    )]
    NoNodeName(&'static str),
    #[error(
        "--source (KUBE_MTLS_CNI_SOURCE) is not set and the running executable cannot be found ({0}). Fix: pass --source with the path of the kube-mtls-cni binary"
    )]
    NoSource(std::io::Error),
}

impl AgentArgs {
    /// The node whose pods are repaired, or `None` when repair is off.
    pub fn repair_node(&self) -> Result<Option<&str>, SettingsError> {
        match (self.repair, self.node_name.as_deref()) {
            (RepairMode::Off, _) => Ok(None),
            (mode, None | Some("")) => Err(SettingsError::NoNodeName(mode.as_str())),
            (_, Some(node)) => Ok(Some(node)),
        }
    }

    /// The binary to install: `--source`, or this executable.
    pub fn source(&self) -> Result<PathBuf, SettingsError> {
        match &self.source {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe().map_err(SettingsError::NoSource),
        }
    }
}

/// The hidden child's flags. They have no environment variables: the child
/// inherits the agent's environment, which must not choose its namespace.
#[derive(Debug, Clone, Args)]
pub struct RepairNetnsArgs {
    /// The pod's network namespace (`/proc/<pid>/ns/net`).
    #[arg(long)]
    pub netns: PathBuf,
    /// The pod's `kube-mtls-init` arguments, as a JSON list of strings (the
    /// value of its `kube-mtls.io/cni-redirect` annotation).
    #[arg(long, allow_hyphen_values = true)]
    pub args: String,
}

/// `--sync-interval`: a duration above zero.
fn parse_interval(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("the interval must be above zero; write e.g. 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kube-mtls-cni").chain(args.iter().copied()))
    }

    #[test]
    fn agent_defaults() {
        let cli = parse(&["agent"]).expect("parses");
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.dirs.cni_bin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(a.dirs.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(a.repair, RepairMode::Reinstall);
        assert_eq!(a.metrics_port, 15090);
        assert_eq!(a.sync_interval, Duration::from_secs(1));
    }

    #[test]
    fn repair_needs_a_node_unless_off() {
        let cli = parse(&["agent"]).expect("parses");
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        let err = a.repair_node().expect_err("no node name");
        assert!(err.to_string().contains("KUBE_MTLS_NODE_NAME"), "{err}");
        let cli = parse(&["agent", "--repair", "off"]).expect("parses");
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.repair_node().expect("off needs none"), None);
    }

    #[test]
    fn zero_interval_is_refused() {
        let err = parse(&["agent", "--sync-interval", "0s"]).expect_err("zero");
        assert!(err.to_string().contains("above zero"), "{err}");
    }
}
