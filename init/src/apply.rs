//! Applying a plan: capability check, IPv6 detection, install and cleanup.

use crate::backend::{Backend, IptablesError};
use crate::config::{Config, Ipv6Choice};
use crate::rules::{self, Existing, Family};

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "NET_ADMIN capability missing: this process cannot change the pod's packet filter. Fix: add NET_ADMIN and NET_RAW to the init container's securityContext.capabilities.add and run it as root (runAsUser: 0)"
    )]
    NoNetAdmin,
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error("--ipv6 (KUBE_MTLS_IPV6) is on but {0}")]
    Ipv6Unavailable(String),
}

const CAP_NET_ADMIN: u32 = 12;

/// Reads the effective capability set from /proc/self/status.
pub fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Not Linux-like: let iptables itself say whether it may.
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Whether this namespace has IPv6 on an interface other than lo.
pub fn namespace_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last().is_some_and(|dev| dev != "lo"))
        })
        .unwrap_or(false)
}

/// The families to program.
pub fn families(choice: Ipv6Choice, backend: Backend) -> Result<Vec<Family>, ApplyError> {
    let v6 = match choice {
        Ipv6Choice::Off => false,
        Ipv6Choice::On => {
            if backend.save(Family::V6).is_err() {
                return Err(ApplyError::Ipv6Unavailable(format!(
                    "{} does not work here; install ip6tables or set --ipv6 off",
                    backend.binary(Family::V6, "save")
                )));
            }
            true
        }
        Ipv6Choice::Auto => {
            if !namespace_has_ipv6() {
                false
            } else if backend.save(Family::V6).is_err() {
                tracing::warn!(
                    "the pod has IPv6 but ip6tables is unusable; installing IPv4 rules only"
                );
                false
            } else {
                true
            }
        }
    };
    Ok(if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    })
}

/// Installs the rules for every family, replacing what an earlier run left.
pub fn install(cfg: &Config, backend: Backend, families: &[Family]) -> Result<(), ApplyError> {
    if !has_net_admin() {
        return Err(ApplyError::NoNetAdmin);
    }
    for &family in families {
        let existing = Existing::from_save(&backend.save(family)?);
        let plan = rules::plan(cfg, family);
        backend.restore(family, &rules::render_install(&plan, &existing))?;
        tracing::info!(
            ?family,
            backend = backend.name(),
            rules = plan.rules.len(),
            "rules installed"
        );
    }
    Ok(())
}

/// Removes every rule and chain of ours.
pub fn cleanup(backend: Backend, families: &[Family]) -> Result<(), ApplyError> {
    if !has_net_admin() {
        return Err(ApplyError::NoNetAdmin);
    }
    for &family in families {
        let existing = Existing::from_save(&backend.save(family)?);
        match rules::render_cleanup(&existing) {
            Some(input) => {
                backend.restore(family, &input)?;
                tracing::info!(?family, backend = backend.name(), "rules removed");
            }
            None => tracing::info!(?family, backend = backend.name(), "no rules to remove"),
        }
    }
    Ok(())
}
