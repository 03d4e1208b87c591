//! Markdown flag tables rendered from a binary's clap definition, so that the
//! documentation (docs/contract.md) lists exactly the flags the binary takes.

use clap::Command;

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
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !help.contains(&values.join(", ")) {
            help = format!("{help} One of {}.", values.join(", "));
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
