//! The `kube-mtls-init` binary: flags in, rules installed (or printed, or removed).

use clap::Parser;
use kube_mtls_init::config::{Args, Config, Ipv6Choice};
use kube_mtls_init::rules::{self, Existing, Family};
use kube_mtls_init::{apply, backend};

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
