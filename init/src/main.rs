//! The `kube-mtls-init` binary: flags in, rules installed (or printed, or removed).

use clap::Parser;
use kube_mtls_contract::names::VALIDATION_FAILED_EXIT;
use kube_mtls_init::config::{Args, Config, Ipv6Choice};
use kube_mtls_init::rules::{self, Existing, Family};
use kube_mtls_init::{apply, backend, validate};

/// How long the redirected probe connection may take: it stays on loopback,
/// so anything near this long means it went out unredirected.
const VALIDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kube_mtls_telemetry::init(args.log_format, &args.log_level)?;
    let cfg = Config::from_args(&args)?;

    if args.dry_run {
        // The plan needs no privileges and no iptables: print both families.
        let families = match args.ipv6 {
            Ipv6Choice::Off => vec![Family::V4],
            _ => vec![Family::V4, Family::V6],
        };
        for family in families {
            let plan = rules::plan(&cfg, family);
            let tool = match family {
                Family::V4 => "iptables-restore --noflush",
                Family::V6 => "ip6tables-restore --noflush",
            };
            println!("# {tool}");
            print!("{}", rules::render_install(&plan, &Existing::default()));
        }
        return Ok(());
    }

    if args.validate {
        if let Err(e) = validate::validate(cfg.admin_port, VALIDATE_TIMEOUT) {
            tracing::error!("{e}");
            eprintln!("kube-mtls-init: {e}");
            let code = match e {
                validate::ValidateError::NotRedirected { .. } => VALIDATION_FAILED_EXIT,
                validate::ValidateError::Listen { .. } => 1,
            };
            std::process::exit(code);
        }
        tracing::info!("the pod's traffic is redirected through the sidecar");
        return Ok(());
    }

    // Checked first: without NET_ADMIN even reading the rules fails, with a less clear message.
    if !apply::has_net_admin() {
        return Err(apply::ApplyError::NoNetAdmin.into());
    }
    let backend = backend::choose(args.backend)?;
    let families = apply::families(args.ipv6, backend)?;
    if args.cleanup {
        apply::cleanup(backend, &families)?;
    } else {
        apply::install(&cfg, backend, &families)?;
    }
    Ok(())
}
