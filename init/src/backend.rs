//! Which iptables: nft or legacy, and the commands of each.
//!
//! Both implementations can be present in one image, but a namespace should be
//! driven by the one its other tenants (kubelet, the CNI plugin) already use, or
//! the rules of one are invisible to the other. As Kubernetes' iptables-wrapper
//! does, count the rules each one's `-save` shows and take the busier one,
//! preferring nft when neither has rules.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::BackendChoice;
use crate::rules::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// Why running iptables failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error(
        "{binary} not found: {source}. Fix: install iptables (it provides both iptables-nft and iptables-legacy) in the image, or choose the other backend with --backend"
    )]
    Missing {
        binary: String,
        source: std::io::Error,
    },
    #[error(
        "NET_ADMIN capability missing: {binary} was refused ({detail}). Fix: add NET_ADMIN and NET_RAW to the init container's securityContext.capabilities.add and run it as root"
    )]
    Permission { binary: String, detail: String },
    #[error("{binary} failed: {detail}")]
    Failed { binary: String, detail: String },
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// e.g. `ip6tables-legacy-restore`.
    pub fn binary(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}-{tool}", self.name())
    }

    /// `-save -t nat` output.
    pub fn save(self, family: Family) -> Result<String, IptablesError> {
        let binary = self.binary(family, "save");
        let out = run(&binary, &["-t", "nat"], None)?;
        Ok(out)
    }

    /// Feeds `input` to `-restore --noflush` as one transaction.
    pub fn restore(self, family: Family, input: &str) -> Result<(), IptablesError> {
        let binary = self.binary(family, "restore");
        run(&binary, &["--noflush"], Some(input)).map(|_| ())
    }
}

fn run(binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Missing {
            binary: binary.to_owned(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| IptablesError::Failed {
                binary: binary.to_owned(),
                detail: e.to_string(),
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| IptablesError::Failed {
            binary: binary.to_owned(),
            detail: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        let lower = stderr.to_ascii_lowercase();
        if lower.contains("permission denied")
            || lower.contains("operation not permitted")
            || lower.contains("you must be root")
        {
            return Err(IptablesError::Permission {
                binary: binary.to_owned(),
                detail: stderr,
            });
        }
        return Err(IptablesError::Failed {
            binary: binary.to_owned(),
            detail: if stderr.is_empty() {
                format!("exit status {}", out.status)
            } else {
                stderr
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rules (`-A` lines) in a save output, across all tables.
fn rule_count(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Chooses the backend: the override, or the one the namespace already uses.
pub fn choose(choice: BackendChoice) -> Result<Backend, IptablesError> {
    match choice {
        BackendChoice::Nft => return Ok(Backend::Nft),
        BackendChoice::Legacy => return Ok(Backend::Legacy),
        BackendChoice::Auto => {}
    }
    let count = |b: Backend| -> Result<usize, IptablesError> {
        let out = run(&b.binary(Family::V4, "save"), &[], None)?;
        Ok(rule_count(&out))
    };
    match (count(Backend::Legacy), count(Backend::Nft)) {
        (Ok(legacy), Ok(nft)) => Ok(if legacy > nft {
            Backend::Legacy
        } else {
            Backend::Nft
        }),
        (Ok(_), Err(_)) => Ok(Backend::Legacy),
        (Err(_), Ok(_)) => Ok(Backend::Nft),
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(
            Backend::Nft.binary(Family::V4, "restore"),
            "iptables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.binary(Family::V6, "save"),
            "ip6tables-legacy-save"
        );
    }

    #[test]
    fn counts_rules() {
        assert_eq!(
            rule_count("*nat\n:A - [0:0]\n-A PREROUTING -j X\n-A OUTPUT -j Y\nCOMMIT\n"),
            2
        );
    }
}
