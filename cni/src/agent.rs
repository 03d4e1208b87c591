//! The node agent: what the DaemonSet runs from the `kube-mtls-cni` binary.
//!
//! - `agent`: installs the plugin on the node ([`install`]: binary, kubeconfig,
//!   conflist entry), keeps it installed every `--sync-interval`, serves its
//!   metrics ([`metrics`]), repairs pods that started before it
//!   ([`repair`]), and on SIGTERM or SIGINT removes the entry first, then the
//!   binary and the kubeconfig.
//! - `ready`: the DaemonSet's readiness probe: binary installed and entry in
//!   the primary configuration.
//! - `repair-netns` (hidden): applies one pod's rules in its network
//!   namespace. It runs as a child of the agent, before any thread exists,
//!   because only a single-threaded process can join a network namespace.

pub mod conflist;
pub mod files;
pub mod install;
pub mod kubeconfig;
pub mod metrics;
pub mod netns;
pub mod repair;
pub mod settings;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use install::Installer;
use metrics::Metrics;
use settings::{AgentArgs, Cli, Command, DirArgs, RepairNetnsArgs};

/// Runs the subcommand on the command line.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kube_mtls_telemetry::init(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Ready(dirs) => ready(&dirs),
        Command::RepairNetns(args) => repair_netns(&args),
        Command::Agent(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(run(args)),
    }
}

/// `ready`: exit 0 when installed, 1 naming what is missing.
fn ready(dirs: &DirArgs) -> anyhow::Result<()> {
    match install::ready(dirs) {
        Ok(path) => {
            println!(
                "ready: the plugin is installed and listed in {}",
                path.display()
            );
            Ok(())
        }
        Err(missing) => {
            eprintln!("not ready: {missing}");
            std::process::exit(1);
        }
    }
}

/// `repair-netns`: the pod's rules, applied in its namespace by the plugin's code.
fn repair_netns(args: &RepairNetnsArgs) -> anyhow::Result<()> {
    let applied = crate::plugin::init_args_from_annotation(&args.args)
        .and_then(|init_args| crate::plugin::apply_in_netns(&args.netns, &init_args));
    if let Err(e) = applied {
        // One line on stderr: the agent puts it in the pod's RepairFailed Event.
        eprintln!("{e}");
        std::process::exit(1);
    }
    Ok(())
}

/// `agent`: install, keep, repair, and remove on SIGTERM.
async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node = args.repair_node()?.map(str::to_owned);
    let source = args.source()?;
    let server = kubeconfig::server_from_env()?;
    let metrics = Arc::new(Metrics::new());
    if args.metrics_port != 0 {
        let listener = metrics::bind(args.metrics_port).await?;
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let mut installer = Installer::new(
        &args.dirs,
        source,
        server,
        &args.service_account_dir,
        metrics.clone(),
    );
    installer.install_binary()?;
    if let Some(node) = node {
        let client = kube::Client::try_default().await.context(
            "cannot reach the Kubernetes API for the repair controller (run in the DaemonSet, or pass --repair off)",
        )?;
        let exe =
            std::env::current_exe().context("cannot find this executable to run repair-netns")?;
        let ctx = repair::Context::new(
            client,
            args.repair,
            node,
            exe,
            metrics.clone(),
            installer.installed.clone(),
        );
        tokio::spawn(repair::run(ctx));
    }
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut tick = tokio::time::interval(args.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        bin_dir = %args.dirs.cni_bin_dir.display(),
        conf_dir = %args.dirs.cni_conf_dir.display(),
        repair = args.repair.as_str(),
        "kube-mtls-cni agent running"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => installer.sync(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: removing the plugin from this node");
    installer.uninstall()?;
    Ok(())
}
