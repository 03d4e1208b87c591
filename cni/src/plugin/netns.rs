//! From the pod's annotation to rules in its network namespace: the
//! annotation read as `kube-mtls-init`'s args, then the same backend choice,
//! family detection and install as `kube-mtls-init` (its library, not a
//! copy), run after moving this thread into the pod's namespace.

use std::os::fd::AsFd;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};
use kube_mtls_contract::init::{Args, Settings};
use kube_mtls_contract::names::{CNI_REDIRECT, INIT_BINARY};
use kube_mtls_init::{apply, backend};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::PluginError;

/// The `kube-mtls-init` args the webhook wrote in the pod's
/// [`CNI_REDIRECT`] annotation (a JSON list of strings).
pub fn init_args_from_annotation(value: &str) -> Result<Vec<String>, PluginError> {
    serde_json::from_str::<Vec<String>>(value).map_err(|e| PluginError::Annotation {
        annotation: CNI_REDIRECT,
        value: value.chars().take(200).collect(),
        reason: e.to_string(),
    })
}

/// Parses `args` as `kube-mtls-init` does and validates them. Only the args
/// count: no `KUBE_MTLS_*` variable of this process fills a flag they leave
/// out, so the plan is the one the pod's own init container would install.
/// The modes that install nothing (`--cleanup`, `--dry-run`, `--validate`)
/// are refused.
pub fn settings_from_args(args: &[String]) -> Result<(Args, Settings), PluginError> {
    let command = Args::command().mut_args(|a| a.env(None::<&str>));
    let argv = std::iter::once(INIT_BINARY.to_owned()).chain(args.iter().cloned());
    let parsed = command
        .try_get_matches_from(argv)
        .and_then(|m| Args::from_arg_matches(&m))
        .map_err(|e| PluginError::Args(clap_message(&e)))?;
    for (on, flag) in [
        (parsed.cleanup, "cleanup"),
        (parsed.dry_run, "dry-run"),
        (parsed.validate, "validate"),
    ] {
        if on {
            return Err(PluginError::Mode(flag));
        }
    }
    let settings = Settings::from_args(&parsed)?;
    Ok((parsed, settings))
}

/// clap's message without its `error:` prefix, usage and help lines.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.trim_start_matches("error:").trim().to_owned()
}

/// Moves this thread into the network namespace at `path`. Called only on
/// the main thread: iptables reads `/proc/self/net` (the main thread's
/// namespace), and the commands it runs inherit this thread's.
pub fn enter(path: &Path) -> Result<(), PluginError> {
    if std::thread::current().name() != Some("main") {
        return Err(PluginError::NotMainThread);
    }
    let file = std::fs::File::open(path).map_err(|source| PluginError::NetnsOpen {
        path: path.to_owned(),
        source,
    })?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
        PluginError::NetnsEnter {
            path: path.to_owned(),
            source: e.into(),
        }
    })
}

/// Installs the plan of `args` and `settings` in the current network
/// namespace, as `kube-mtls-init` does.
pub fn install(args: &Args, settings: &Settings) -> Result<(), PluginError> {
    let backend = backend::choose(args.backend).map_err(apply::ApplyError::from)?;
    let families = apply::families(args.ipv6, backend)?;
    apply::install(settings, backend, &families)?;
    Ok(())
}

/// Enters the network namespace at `netns` and installs the plan of
/// `init_args` there. The args are checked first: nothing changes when they
/// are wrong.
///
/// The whole process is then in that namespace for good (its main thread
/// is), so call this from a fresh single-threaded process that exits after it
/// (the plugin on ADD, or the agent's `repair-netns` subcommand), on its main
/// thread, before any runtime or thread is started.
pub fn apply_in_netns(netns: &Path, init_args: &[String]) -> Result<(), PluginError> {
    let (args, settings) = settings_from_args(init_args)?;
    enter(netns)?;
    install(&args, &settings)?;
    tracing::debug!(netns = %netns.display(), "redirect rules installed in the pod's network namespace");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_annotation_is_a_json_list_of_strings() {
        assert_eq!(
            init_args_from_annotation(r#"["--inbound-ports=8080","--proxy-uid=1337"]"#).unwrap(),
            strings(&["--inbound-ports=8080", "--proxy-uid=1337"])
        );
        for bad in ["--inbound-ports=8080", "[1]", r#"{"a":"b"}"#, ""] {
            let e = init_args_from_annotation(bad).unwrap_err().to_string();
            assert!(e.contains(CNI_REDIRECT), "{e}");
        }
    }

    #[test]
    fn settings_are_the_webhooks_rendering_read_back() {
        let s = Settings {
            inbound: "8080,9090".parse().unwrap(),
            outbound: [443].into(),
            ..Settings::default()
        };
        let (args, settings) = settings_from_args(&s.render().args).unwrap();
        assert_eq!(settings, s);
        assert_eq!(args.inbound_ports, "8080,9090");
    }

    #[test]
    fn errors_name_the_flag() {
        let e = settings_from_args(&strings(&["--inbound-ports=http"])).unwrap_err();
        assert!(matches!(e, PluginError::Settings(_)));
        let e = e.to_string();
        assert!(
            e.contains("--inbound-ports") && e.contains("KUBE_MTLS_INBOUND_PORTS"),
            "{e}"
        );
        let e = settings_from_args(&strings(&["--no-such-flag"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--no-such-flag") && !e.contains("Usage"), "{e}");
        let e = settings_from_args(&strings(&["--cleanup"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cleanup"), "{e}");
    }

    #[test]
    fn only_the_main_thread_enters() {
        let e = std::thread::spawn(|| enter(Path::new("/proc/self/ns/net")))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, PluginError::NotMainThread), "{e}");
    }
}
