use std::io::IsTerminal;

use clap::Parser;
use kube_mtls_init::config::{Args, Config, Ipv6Choice};
use kube_mtls_init::rules::{self, Existing, Family};
use kube_mtls_init::{apply, backend};

fn init_logging(format: &str) -> anyhow::Result<()> {
    let json = match format {
        "json" => true,
        "text" => false,
        "auto" => !std::io::stderr().is_terminal(),
        other => anyhow::bail!(
            "--log-format (KUBE_MTLS_LOG_FORMAT): {other:?} is not json, text or auto"
        ),
    };
    let b = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format.as_str())?;
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
