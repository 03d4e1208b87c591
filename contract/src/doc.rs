//! Markdown flag tables rendered from a binary's clap definition, so that the
//! documentation (docs/contract.md) lists exactly the flags the binary takes.

use clap::Command;

use crate::names::*;

/// The fixed names and numbers as a table: what, and its value.
pub fn fixed_names() -> String {
    let rows = [
        ("annotation / label prefix", format!("`{PREFIX}`")),
        (
            "opt-in",
            format!(
                "pod annotation or label `{INJECT}: enabled`, or namespace label `{INJECT}=enabled` (pod annotation `disabled` opts out)"
            ),
        ),
        (
            "status annotation written by the webhook",
            format!("`{STATUS}` (JSON: injector version, names of what was injected)"),
        ),
        (
            "profile",
            format!(
                "pod annotation `{PROFILE}`, or the namespace annotation `{PROFILE}` as the default"
            ),
        ),
        (
            "identity",
            format!(
                "`{}`",
                Identity {
                    trust_domain: "<trust domain>",
                    namespace: "<namespace>",
                    service_account: "<service account>",
                }
                .spiffe_id()
            ),
        ),
        (
            "sidecar ports",
            format!(
                "{INBOUND_PORT} inbound, {OUTBOUND_PORT} outbound (127.0.0.1 only), {ADMIN_PORT} admin (plain HTTP)"
            ),
        ),
        ("sidecar UID / GID", format!("{PROXY_UID} / {PROXY_GID}")),
        (
            "init container",
            format!("`{INIT_NAME}` (first init container), binary `{INIT_BINARY}`"),
        ),
        (
            "sidecar container",
            format!("`{SIDECAR_NAME}`, binary `{SIDECAR_BINARY}`"),
        ),
        (
            "certificate volume",
            format!(
                "`{CERT_VOLUME}`, a Secret volume (`{}`) mounted read-only at `{CERT_DIR}`",
                CERT_FILES.join("`, `")
            ),
        ),
        (
            "iptables lock volume",
            format!("`{RUN_VOLUME}`, in memory, mounted at `/run` in the init container"),
        ),
        ("Certificate / Secret per identity", {
            let id = Identity {
                trust_domain: "",
                namespace: "",
                service_account: "<service account>",
            };
            format!(
                "Certificate `{}` in the pod's namespace, Secret `{}`",
                id.certificate_name(),
                id.secret_name()
            )
        }),
        ("default trust domain", format!("`{DEFAULT_TRUST_DOMAIN}`")),
    ];
    let mut out = String::from("| what | value |\n|---|---|\n");
    for (what, value) in rows {
        out.push_str(&format!("| {what} | {value} |\n"));
    }
    out
}

/// A table of `command`'s flags: flag, environment variable, default, meaning.
pub fn flag_table(command: &Command) -> String {
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = match defaults.as_slice() {
            [] => String::new(),
            [v] if v.is_empty() => "empty".to_owned(),
            [v] if v == "false" && !arg.get_action().takes_values() => String::new(),
            vs => format!("`{}`", vs.join(",")),
        };
        let mut help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| one_line(&h.to_string()))
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|_| arg.get_action().takes_values())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !values.iter().all(|v| help.contains(v.as_str())) {
            let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
            help = format!("{help} (one of {})", quoted.join(", "));
        }
        out.push_str(&format!(
            "| `--{long}` | {env} | {default} | {} |\n",
            help.trim()
        ));
    }
    out
}

/// Joins a help text's lines and escapes what would break a table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_in_the_table_with_its_environment_variable() {
        for command in [
            crate::init::Args::command(),
            crate::sidecar::Args::command(),
        ] {
            let table = super::flag_table(&command);
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "help" || long == "version" {
                    continue;
                }
                assert!(
                    table.contains(&format!("| `--{long}` |")),
                    "--{long} missing:\n{table}"
                );
                if let Some(env) = arg.get_env() {
                    assert!(table.contains(&*env.to_string_lossy()), "{env:?} missing");
                }
            }
        }
    }
}
