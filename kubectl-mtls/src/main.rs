//! The `kubectl-mtls` binary: kubectl runs it as `kubectl mtls`. Flags, the
//! client and exit codes live here; what is checked and shown is in the library.
//!
//! Exit codes: 0 done (for `check`: nothing failed), 1 a check failed,
//! 2 bad flags, 3 the cluster could not be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kubectl_mtls::check::{self, Options};
use kubectl_mtls::output::{self, Format, Style};
use kubectl_mtls::workloads::{self, Scope};
use kubectl_mtls::{policy, status};

#[derive(Parser)]
#[command(
    name = "kubectl-mtls",
    bin_name = "kubectl mtls",
    version,
    about = "Check kube-mtls, show injected workloads and who may call whom"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-flight before install, health after it: pass/warn/fail with the fix; exits 1 on any fail.
    Check(CheckArgs),
    /// Injected workloads: identity, mode, policy, allowed clients, certificate expiry, outdated sidecars.
    Status(StatusArgs),
    /// Who may call whom: callers x servers, from annotations and profiles.
    Policy(PolicyArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "KUBE_MTLS_OUTPUT"
    )]
    output: Format,
    /// Namespace where a dry-run pod checks that the webhook injects.
    #[arg(long, env = "KUBE_MTLS_PROBE_NAMESPACE", default_value = "default")]
    probe_namespace: String,
    /// Warn when the webhook's serving certificate expires within this (e.g. 7d, 48h).
    #[arg(long, env = "KUBE_MTLS_EXPIRY_WARNING", default_value = "7d")]
    expiry_warning: String,
}

#[derive(Args)]
struct StatusArgs {
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "KUBE_MTLS_OUTPUT"
    )]
    output: Format,
}

/// Formats of `policy`: the table, JSON, YAML, or a Graphviz graph.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyFormat {
    Table,
    Json,
    Yaml,
    Dot,
}

#[derive(Args)]
struct PolicyArgs {
    /// Namespace of the servers (default: every namespace); callers come from every namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// One caller's row: `<namespace>/<workload>`, or `<workload>` with -n.
    #[arg(long = "for")]
    for_workload: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: PolicyFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.is::<Usage>() { 2 } else { 3 })
        }
    }
}

/// A flag's value is wrong: exit code 2, as for clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

async fn client(cli: &Cli) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options).await?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer()
            .await
            .context("no kubeconfig found: set KUBECONFIG or --kubeconfig")?,
    };
    Ok(Client::try_from(config)?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Flags first: a bad value is exit code 2 before any connection.
    let expiry_warning = match &cli.command {
        Command::Check(a) => duration(&a.expiry_warning).ok_or_else(|| {
            Usage(format!(
                "--expiry-warning (KUBE_MTLS_EXPIRY_WARNING): {:?} is not a duration such as 7d, 48h or 30m",
                a.expiry_warning
            ))
        })?,
        _ => 0,
    };
    let client = client(&cli).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match cli.command {
        Command::Check(args) => check_cmd(&client, args, expiry_warning, now).await,
        Command::Status(args) => status_cmd(&client, args, now).await,
        Command::Policy(args) => policy_cmd(&client, args).await,
    }
}

async fn check_cmd(
    client: &Client,
    args: CheckArgs,
    expiry_warning: i64,
    now: i64,
) -> anyhow::Result<ExitCode> {
    let opts = Options {
        probe_namespace: args.probe_namespace,
        expiry_warning_secs: expiry_warning,
        now,
    };
    let lines = check::run(client, &opts)
        .await
        .context("cannot read the cluster")?;
    match args.output {
        Format::Table => print!("{}", output::check_report(&lines, Style::detect())),
        f => print!("{}", output::serialized(&lines, f)?),
    }
    Ok(if check::failed(&lines) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn status_cmd(client: &Client, args: StatusArgs, now: i64) -> anyhow::Result<ExitCode> {
    let scope = match (args.all_namespaces, args.namespace) {
        (true, _) => Scope::All,
        (false, Some(ns)) => Scope::Namespace(ns),
        (false, None) => Scope::Namespace(client.default_namespace().to_owned()),
    };
    let inv = workloads::read(client, &scope)
        .await
        .context("cannot read the injected workloads")?;
    match args.output {
        Format::Table => print!("{}", status::render(&inv, args.all_namespaces, now)),
        f => print!("{}", output::serialized(&inv, f)?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy_cmd(client: &Client, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let m = policy_matrix(
        client,
        args.namespace.as_deref(),
        args.for_workload.as_deref(),
    )
    .await?;
    match args.output {
        PolicyFormat::Table => print!("{}", m.table()),
        PolicyFormat::Json => print!("{}", output::serialized(&m, Format::Json)?),
        PolicyFormat::Yaml => print!("{}", output::serialized(&m, Format::Yaml)?),
        PolicyFormat::Dot => print!("{}", m.dot()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Servers in `namespace` (or all), callers from every namespace (or only
/// `namespace` when the others cannot be listed); `--for` keeps one caller.
async fn policy_matrix(
    client: &Client,
    namespace: Option<&str>,
    for_workload: Option<&str>,
) -> anyhow::Result<policy::Matrix> {
    let all = match workloads::read(client, &Scope::All).await {
        Ok(inv) => inv,
        Err(e) => match namespace {
            Some(ns) => {
                eprintln!(
                    "warning: callers from this namespace only: cannot list pods in every namespace: {e}"
                );
                workloads::read(client, &Scope::Namespace(ns.to_owned())).await?
            }
            None => return Err(e).context("cannot read the injected workloads"),
        },
    };
    let servers: Vec<_> = all
        .workloads
        .iter()
        .filter(|w| namespace.is_none_or(|ns| w.namespace == ns))
        .collect();
    let mut callers: Vec<_> = all.workloads.iter().collect();
    if let Some(want) = for_workload {
        let key = match (want.contains('/'), namespace) {
            (true, _) => want.to_owned(),
            (false, Some(ns)) => format!("{ns}/{want}"),
            (false, None) => bail!(Usage(format!(
                "--for {want:?}: write <namespace>/<workload>, or pass -n"
            ))),
        };
        callers.retain(|w| w.key() == key);
        if callers.is_empty() {
            bail!(Usage(format!(
                "--for {want:?}: no injected workload {key} (kubectl mtls status -A lists them)"
            )));
        }
    }
    Ok(policy::matrix(&servers, &callers))
}

/// `7d`, `48h`, `30m`, `90s` in seconds.
fn duration(s: &str) -> Option<i64> {
    let (n, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let scale = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(duration("7d"), Some(604_800));
        assert_eq!(duration("48h"), Some(172_800));
        assert_eq!(duration("90s"), Some(90));
        for bad in ["", "7", "d", "7w", "1h30m", "-1d"] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }
}
