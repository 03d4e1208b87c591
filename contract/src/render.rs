//! A container's command line as the webhook writes it, and the reading of
//! one back through a binary's own clap parser.

use clap::Parser;

/// The args and environment of one container, in the order they are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// `--flag=value` items, after the binary's name.
    pub args: Vec<String>,
    /// `KUBE_MTLS_*` variables, for values that read better outside the args.
    pub env: Vec<(String, String)>,
}

impl Rendered {
    /// Adds `--flag=value`.
    pub(crate) fn arg(&mut self, flag: &str, value: impl std::fmt::Display) {
        self.args.push(format!("--{flag}={value}"));
    }
}

/// Parses a container's `args` and `env` as the binary `A` would, in process:
/// each environment variable is handed to clap as the flag that reads it
/// (unless the args already give that flag, which wins as it does at run
/// time). Variables no flag reads are ignored, as the binary ignores them.
pub fn parse_container<A: Parser>(
    binary: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<A, clap::Error> {
    let command = A::command();
    let mut argv = vec![binary.to_owned()];
    argv.extend(args.iter().cloned());
    for (name, value) in env {
        let Some(long) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .and_then(|a| a.get_long())
        else {
            continue;
        };
        let given = args
            .iter()
            .any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
        if !given {
            argv.push(format!("--{long}={value}"));
        }
    }
    A::try_parse_from(argv)
}
