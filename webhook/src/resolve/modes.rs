//! Whether the pod's sidecar lets plaintext callers in (`mode`) and whether
//! it refuses callers off the allow-list or only counts them (`policy`): the
//! annotation, else the profile, else the webhook's flags.

use clap::ValueEnum;
use kube_mtls_contract::ports::PortSet;
use kube_mtls_contract::sidecar::{MtlsMode, Policy};

use super::{Defaults, Input};
use crate::annotations::{Rejection, annotation, reject};

/// The resolved modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub mode: MtlsMode,
    pub policy: Policy,
}

/// An annotation's value as one of a flag's values, named in the rejection.
fn choice<T: ValueEnum>(input: &Input<'_>, name: &str) -> Result<Option<T>, Rejection> {
    let Some(value) = annotation(&input.ann, name) else {
        return Ok(None);
    };
    T::from_str(value, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        reject(
            name,
            format!("{value:?} is not one of {}", names.join(", ")),
            format!("write {}", names.join(" or ")),
        )
    })
}

/// Resolves the pod's mode and policy. Permissive mode never applies to
/// `tcp-ports` (the sidecar cannot tell a plaintext client of a
/// server-speaks-first protocol from a slow TLS one): a warning says so.
pub fn resolve(
    input: &Input<'_>,
    defaults: &Defaults,
    tcp_ports: &PortSet,
    warnings: &mut Vec<String>,
) -> Result<Modes, Rejection> {
    let mode = choice(input, "mode")?
        .or(input.profile.mode)
        .unwrap_or(defaults.mode);
    let policy = choice(input, "policy")?
        .or(input.profile.policy)
        .unwrap_or(defaults.policy);
    if mode == MtlsMode::Permissive && !tcp_ports.is_empty() {
        let ports: Vec<String> = tcp_ports.iter().map(u16::to_string).collect();
        warnings.push(format!(
            "permissive mode: TCP ports {} stay mTLS-only",
            ports.join(",")
        ));
    }
    Ok(Modes { mode, policy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NS, defaults, pod};
    use crate::profile::MtlsProfileSpec;
    use crate::resolve::resolve;

    fn view(spec: MtlsProfileSpec) -> crate::cluster::ClusterView {
        let mut p = crate::profile::MtlsProfile::new("rollout", spec);
        p.metadata.namespace = Some(NS.into());
        crate::cluster::ClusterView::Fixed {
            profiles: vec![p],
            namespaces: Vec::new(),
        }
    }

    fn modes_of(p: serde_json::Value, view: &crate::cluster::ClusterView, d: &Defaults) -> Modes {
        let (r, _) = resolve(&p, NS, view, d).expect("resolves");
        Modes {
            mode: r.mode,
            policy: r.policy,
        }
    }

    #[test]
    fn annotation_then_profile_then_flags() {
        let spec = MtlsProfileSpec {
            mode: Some(MtlsMode::Permissive),
            policy: Some(Policy::Audit),
            ..Default::default()
        };
        let with_profile = view(spec);
        let none = view(MtlsProfileSpec::default());
        let d = defaults(true);
        let strict = Modes {
            mode: MtlsMode::Strict,
            policy: Policy::Enforce,
        };
        assert_eq!(modes_of(pod().build(), &none, &d), strict);
        let named = pod().annotate("profile", "rollout").build();
        let loose = Modes {
            mode: MtlsMode::Permissive,
            policy: Policy::Audit,
        };
        assert_eq!(modes_of(named.clone(), &with_profile, &d), loose);
        let overridden = pod()
            .annotate("profile", "rollout")
            .annotate("mode", "strict")
            .annotate("policy", "enforce")
            .build();
        assert_eq!(modes_of(overridden, &with_profile, &d), strict);
        let flags = Defaults {
            mode: MtlsMode::Permissive,
            policy: Policy::Audit,
            ..defaults(true)
        };
        assert_eq!(modes_of(pod().build(), &none, &flags), loose);
    }

    #[test]
    fn a_bad_value_names_the_annotation_and_the_choices() {
        let p = pod().annotate("mode", "PERMISSIVE").build();
        let e = resolve(&p, NS, &view(MtlsProfileSpec::default()), &defaults(true)).unwrap_err();
        assert_eq!(e.subject, "annotation kube-mtls.io/mode");
        assert!(e.problem.contains("strict, permissive"), "{e}");
        assert_eq!(e.fix, "write strict or permissive");
    }

    #[test]
    fn permissive_warns_that_tcp_ports_stay_mtls_only() {
        let p = pod()
            .annotate("mode", "permissive")
            .annotate("tcp-ports", "8080")
            .build();
        let (r, warnings) =
            resolve(&p, NS, &view(MtlsProfileSpec::default()), &defaults(true)).expect("resolves");
        assert_eq!(r.mode, MtlsMode::Permissive);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("TCP ports 8080 stay mTLS-only")),
            "{warnings:?}"
        );
    }
}
