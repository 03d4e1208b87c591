//! The settings a pod's injection is made from, resolved from its annotations,
//! its MtlsProfile and the webhook's flags.
//!
//! Resolution order, first that says something wins: the pod's annotation, the
//! profile the pod names, the namespace's default profile, the webhook's flags.
//! Every parse error names the annotation (or profile field) and how to fix
//! it; the pod is then rejected rather than injected with a guess. One
//! resolver per concern: [`ports`], [`identities`], [`issuer`] (and the
//! Secret and lifetime), [`modes`] (permissive, audit) and
//! [`crate::resources`].

pub mod identities;
pub mod issuer;
pub mod modes;
pub mod ports;

use ipnet::IpNet;
use kube_mtls_contract::names::Identity;
use kube_mtls_contract::pattern::AllowedClients;
use kube_mtls_contract::ports::{InboundPorts, PortSet};
use kube_mtls_contract::sidecar::{MtlsMode, Policy};
use serde_json::{Map, Value};

use crate::annotations::{PROFILE, Rejection, annotation, annotations, reject};
use crate::cluster::{ClusterView, TrustAvailability};
use crate::profile::{IssuerRef, MtlsProfileSpec};
use crate::resources;
use crate::trust::TrustSource;

/// Settings from the webhook's flags.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub sidecar_image: String,
    pub trust_domain: String,
    pub issuer: IssuerRef,
    pub cert_duration: String,
    pub cert_renew_before: String,
    pub native_sidecar: bool,
    /// `--cni-mode`: the CNI plugin redirects, the pod gets only the
    /// unprivileged check. Nothing in a pod or profile changes it.
    pub cni_mode: bool,
    /// For pods that set no mode.
    pub mode: MtlsMode,
    /// For pods that set no policy.
    pub policy: Policy,
    /// `--trust-bundle-source`: what the flag asks for; pods get the bundle
    /// only when the cluster view has one (see [`Resolved::trust_bundle`]).
    pub trust_source: TrustSource,
}

/// Everything the patch needs for one pod.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub namespace: String,
    pub service_account: String,
    pub inbound: InboundPorts,
    pub skip_inbound: PortSet,
    pub tcp_ports: PortSet,
    pub h2_ports: PortSet,
    pub allowed_clients: AllowedClients,
    pub outbound_ports: PortSet,
    pub skip_outbound_cidrs: Vec<IpNet>,
    pub dns_names: Vec<String>,
    pub issuer: IssuerRef,
    /// A Secret the user provides; `None`: the webhook's Certificate makes one.
    pub secret: Option<String>,
    pub resources: Value,
    pub profile: Option<String>,
    pub native_sidecar: bool,
    /// The webhook's `--cni-mode`, as it is: a pod cannot weaken it.
    pub cni_mode: bool,
    pub trust_domain: String,
    pub cert_duration: String,
    pub cert_renew_before: String,
    pub sidecar_image: String,
    /// Whether plaintext callers are let in.
    pub mode: MtlsMode,
    /// Whether callers off the allow-list are refused or only counted.
    pub policy: Policy,
    /// Whether the sidecar trusts the trust bundle (ConfigMap
    /// `kube-mtls-trust`) rather than its own Secret's `ca.crt`: asked for by
    /// `--trust-bundle-source=configmap`, there is a bundle, and the bundle
    /// follows this pod's CA (its certificate comes from the webhook's
    /// `--issuer`, not from a Secret of its own or another issuer).
    pub trust_bundle: bool,
}

impl Resolved {
    /// The names of the pod's identity.
    pub fn names(&self) -> Identity<'_> {
        Identity {
            trust_domain: &self.trust_domain,
            namespace: &self.namespace,
            service_account: &self.service_account,
        }
    }

    /// The pod's SPIFFE ID.
    pub fn identity(&self) -> String {
        self.names().spiffe_id()
    }

    /// The pod's own Secret if it names one, else the Certificate's.
    pub fn secret_name(&self) -> String {
        self.secret
            .clone()
            .unwrap_or_else(|| self.names().secret_name())
    }

    /// Whether inbound traffic to `port` goes through the sidecar.
    pub fn captures(&self, port: u16) -> bool {
        !self.skip_inbound.contains(&port) && self.inbound.contains(port)
    }
}

/// What every resolver reads: the pod, its annotations, its profile.
pub struct Input<'a> {
    pub pod: &'a Value,
    pub ann: Map<String, Value>,
    pub namespace: &'a str,
    /// The profile's name, named by the pod or the namespace's default.
    pub profile_name: Option<String>,
    /// The profile's settings (all `None` without a profile).
    pub profile: MtlsProfileSpec,
}

/// The profile a pod uses: the one it names, else its namespace's default.
/// A named profile that does not exist is an error, not a silent default.
fn profile(
    ann: &Map<String, Value>,
    namespace: &str,
    view: &ClusterView,
) -> Result<(Option<String>, MtlsProfileSpec), Rejection> {
    let (name, named_by_pod) = match annotation(ann, "profile") {
        Some(p) => (p.to_owned(), true),
        None => match view.namespace_default_profile(namespace) {
            Some(p) => (p, false),
            None => return Ok((None, MtlsProfileSpec::default())),
        },
    };
    match view.profile(namespace, &name) {
        Some(p) => Ok((Some(name), p)),
        None if named_by_pod => Err(reject(
            "profile",
            format!("no MtlsProfile {name:?} in namespace {namespace}"),
            "create the MtlsProfile, or name an existing one (kubectl get mtlsprofiles -n <namespace>)",
        )),
        None => Err(Rejection {
            subject: format!("namespace {namespace} annotation {PROFILE}"),
            problem: format!("the default MtlsProfile {name:?} does not exist"),
            fix: "create the MtlsProfile or remove the namespace annotation".into(),
        }),
    }
}

/// `kube-mtls.io/native-sidecar`, else the flags' choice.
fn native_sidecar(input: &Input<'_>, defaults: &Defaults) -> Result<bool, Rejection> {
    match annotation(&input.ann, "native-sidecar") {
        None => Ok(defaults.native_sidecar),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(reject(
            "native-sidecar",
            format!("{v:?} is not true or false"),
            "write true or false",
        )),
    }
}

/// Reads the pod's annotations and profiles into the settings for its patch,
/// with warnings about what was adjusted or guessed.
pub fn resolve(
    pod: &Value,
    namespace: &str,
    view: &ClusterView,
    defaults: &Defaults,
) -> Result<(Resolved, Vec<String>), Rejection> {
    let ann = annotations(pod);
    let (profile_name, profile) = profile(&ann, namespace, view)?;
    let input = Input {
        pod,
        ann,
        namespace,
        profile_name,
        profile,
    };
    let mut warnings = Vec::new();
    let ports = ports::resolve(&input, &mut warnings)?;
    let ids = identities::resolve(&input, defaults)?;
    let cert = issuer::resolve(&input, defaults)?;
    let (resources, mut adjusted) =
        resources::sidecar(&input.ann, &input.profile, input.profile_name.as_deref())?;
    warnings.append(&mut adjusted);
    let native_sidecar = native_sidecar(&input, defaults)?;
    let modes = modes::resolve(&input, defaults, &ports.tcp, &mut warnings)?;
    let trust_bundle = trust_bundle(&cert, view, defaults, &mut warnings);
    let resolved = Resolved {
        namespace: namespace.to_owned(),
        service_account: ids.service_account,
        inbound: ports.inbound,
        skip_inbound: ports.skip_inbound,
        tcp_ports: ports.tcp,
        h2_ports: ports.h2,
        allowed_clients: ids.allowed_clients,
        outbound_ports: ports.outbound,
        skip_outbound_cidrs: ports.skip_outbound_cidrs,
        dns_names: ids.dns_names,
        issuer: cert.issuer,
        secret: cert.secret,
        resources,
        profile: input.profile_name,
        native_sidecar,
        cni_mode: defaults.cni_mode,
        trust_domain: ids.trust_domain,
        cert_duration: cert.duration,
        cert_renew_before: cert.renew_before,
        sidecar_image: defaults.sidecar_image.clone(),
        mode: modes.mode,
        policy: modes.policy,
        trust_bundle,
    };
    Ok((resolved, warnings))
}

/// Whether the pod's sidecar trusts the trust bundle; a warning when
/// `--trust-bundle-source=configmap` asked for it and this pod cannot have it.
fn trust_bundle(
    cert: &issuer::CertificateSource,
    view: &ClusterView,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
) -> bool {
    if defaults.trust_source != TrustSource::ConfigMap || cert.secret.is_some() {
        return false;
    }
    if cert.issuer != defaults.issuer {
        warnings.push(format!(
            "kube-mtls: the pod's issuer {} is not the webhook's --issuer {}, whose CA the trust bundle follows: its sidecar trusts its own Secret's ca.crt, so rotating that CA cuts its traffic until every workload is re-issued",
            cert.issuer, defaults.issuer
        ));
        return false;
    }
    if defaults.issuer.kind != "ClusterIssuer" {
        let why = crate::trust::issuer::NotCa::Namespaced {
            issuer: defaults.issuer.to_string(),
        };
        let reason = crate::trust::controller::fallback_message(&why);
        warnings.push(format!(
            "kube-mtls: this pod's sidecar trusts its own Secret's ca.crt, not the trust bundle: {reason}"
        ));
        return false;
    }
    match view.trust_bundle() {
        TrustAvailability::Ready => true,
        TrustAvailability::Pending => false,
        TrustAvailability::Unavailable(why) => {
            warnings.push(format!(
                "kube-mtls: this pod's sidecar trusts its own Secret's ca.crt, not the trust bundle: {why}"
            ));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::PREFIX;
    use std::collections::BTreeSet;

    use crate::annotations::PROFILE;
    use crate::profile::MtlsProfile;
    use serde_json::json;

    fn defaults() -> Defaults {
        crate::fixtures::defaults(true)
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}]},
        })
    }

    fn view_with(name: &str, spec: MtlsProfileSpec) -> ClusterView {
        let mut p = MtlsProfile::new(name, spec);
        p.metadata.namespace = Some("shop".into());
        ClusterView::Fixed {
            profiles: vec![p],
            namespaces: Vec::new(),
        }
    }

    #[test]
    fn profile_ports_that_are_zero_or_the_sidecars_own_are_rejected_naming_the_profile() {
        let cases: [(&str, MtlsProfileSpec); 6] = [
            (
                "inboundPorts",
                MtlsProfileSpec {
                    inbound_ports: Some(vec![0]),
                    ..Default::default()
                },
            ),
            (
                "inboundPorts",
                MtlsProfileSpec {
                    inbound_ports: Some(vec![8080, 15006]),
                    ..Default::default()
                },
            ),
            (
                "skipInboundPorts",
                MtlsProfileSpec {
                    skip_inbound_ports: Some(vec![0]),
                    ..Default::default()
                },
            ),
            (
                "tcpPorts",
                MtlsProfileSpec {
                    tcp_ports: Some(vec![15020]),
                    ..Default::default()
                },
            ),
            (
                "outboundPorts",
                MtlsProfileSpec {
                    outbound_ports: Some(vec![0]),
                    ..Default::default()
                },
            ),
            (
                "outboundPorts",
                MtlsProfileSpec {
                    outbound_ports: Some(vec![15001]),
                    ..Default::default()
                },
            ),
        ];
        for (field, spec) in cases {
            let view = view_with("strict", spec.clone());
            let p = pod(json!({PROFILE: "strict"}));
            let err = resolve(&p, "shop", &view, &defaults())
                .map(|(r, _)| r)
                .expect_err(&format!("{field} {spec:?} was accepted"));
            let msg = err.to_string();
            assert!(
                err.subject == format!("MtlsProfile strict field {field}")
                    && msg.contains("Fix:")
                    && msg.contains("strict"),
                "{field}: {msg}"
            );
        }
        // The same profile with ordinary ports is fine.
        let ok = MtlsProfileSpec {
            inbound_ports: Some(vec![8080]),
            skip_inbound_ports: Some(vec![9090]),
            tcp_ports: Some(vec![5432]),
            outbound_ports: Some(vec![443]),
            ..Default::default()
        };
        let view = view_with("strict", ok);
        let (r, _) = resolve(&pod(json!({PROFILE: "strict"})), "shop", &view, &defaults())
            .expect("valid profile rejected");
        assert_eq!(r.inbound, InboundPorts::Only(BTreeSet::from([8080])));
    }

    #[test]
    fn allowed_clients_dns_labels_longer_than_63_are_rejected_like_the_sidecar_does() {
        let long = format!("{}.example.com", "a".repeat(64));
        let p = pod(json!({"kube-mtls.io/allowed-clients": long}));
        let err = resolve(&p, "shop", &ClusterView::empty(), &defaults())
            .map(|(r, _)| r)
            .expect_err("a 64-character label was accepted");
        assert_eq!(err.subject, "annotation kube-mtls.io/allowed-clients");
        assert!(err.to_string().contains("1-63"), "{err}");

        let max = format!("*.{}.example.com", "a".repeat(63));
        let p = pod(json!({"kube-mtls.io/allowed-clients": max}));
        assert!(resolve(&p, "shop", &ClusterView::empty(), &defaults()).is_ok());

        let too_long = vec!["a".repeat(63); 4].join("."); // 255 characters
        let p = pod(json!({"kube-mtls.io/allowed-clients": too_long}));
        assert!(resolve(&p, "shop", &ClusterView::empty(), &defaults()).is_err());
    }

    /// A profile that sets what the `profile` row checks.
    fn strict_view() -> ClusterView {
        use crate::fixtures::{profile, view};
        let p = profile(
            "strict",
            json!({"trustDomain": "shop.example", "certificateDuration": "48h", "issuer": {"kind": "Issuer", "name": "shop-ca"}}),
        );
        view(vec![p], vec![])
    }

    type Check = fn(&Resolved) -> bool;

    /// Each annotation with a value and what it must do to the settings.
    const REACHES: &[(&str, &str, Check)] = &[
        ("inject", "enabled", |r| r.service_account == "orders"),
        ("inbound-ports", "http,9090", |r| {
            r.inbound == InboundPorts::Only([8080, 9090].into())
        }),
        ("skip-inbound-ports", "22", |r| {
            r.skip_inbound == PortSet::from([22])
        }),
        ("tcp-ports", "5432", |r| {
            r.tcp_ports == PortSet::from([5432])
        }),
        ("h2-ports", "http", |r| r.h2_ports == PortSet::from([8080])),
        (
            "allowed-clients",
            "spiffe://cluster.local/ns/web/sa/*,API.example.com",
            |r| {
                r.allowed_clients.to_string()
                    == "spiffe://cluster.local/ns/web/sa/*,api.example.com"
            },
        ),
        ("outbound-ports", "443", |r| {
            r.outbound_ports == PortSet::from([443])
        }),
        ("skip-outbound-cidrs", "10.0.0.1", |r| {
            r.skip_outbound_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                == ["10.0.0.1/32"]
        }),
        ("dns-names", "orders.shop.svc", |r| {
            r.dns_names == ["orders.shop.svc"]
        }),
        ("issuer", "Issuer/local", |r| {
            r.issuer.to_string() == "Issuer/local"
        }),
        ("secret", "orders-tls", |r| r.secret_name() == "orders-tls"),
        ("sidecar-cpu-request", "5m", |r| {
            r.resources["requests"]["cpu"] == "5m"
        }),
        ("sidecar-memory-request", "32Mi", |r| {
            r.resources["requests"]["memory"] == "32Mi"
        }),
        ("sidecar-cpu-limit", "500m", |r| {
            r.resources["limits"]["cpu"] == "500m"
        }),
        ("sidecar-memory-limit", "128Mi", |r| {
            r.resources["limits"]["memory"] == "128Mi"
        }),
        ("profile", "strict", |r| {
            r.profile.as_deref() == Some("strict")
                && r.identity() == "spiffe://shop.example/ns/shop/sa/orders"
                && r.cert_duration == "48h"
                && r.issuer.to_string() == "Issuer/shop-ca"
        }),
        ("native-sidecar", "false", |r| !r.native_sidecar),
        ("mode", "permissive", |r| r.mode == MtlsMode::Permissive),
        ("policy", "audit", |r| r.policy == Policy::Audit),
    ];

    /// Each annotation (but `inject`, which `decide` reads) with a value it refuses.
    const REFUSES: &[(&str, &str)] = &[
        ("inbound-ports", "web"),
        ("skip-inbound-ports", "ssh"),
        ("tcp-ports", "15006"),
        ("h2-ports", "0"),
        ("allowed-clients", "spiffe://cluster.local/ns/fr*/sa/x"),
        ("outbound-ports", "15001"),
        ("skip-outbound-cidrs", "10.0.0.0/33"),
        ("dns-names", "spiffe://cluster.local/ns/a/sa/b"),
        ("issuer", "Vault/x"),
        ("secret", "Not_A_Name"),
        ("sidecar-cpu-request", "lots"),
        ("sidecar-memory-request", "1MB"),
        ("sidecar-cpu-limit", "-1"),
        ("sidecar-memory-limit", "x"),
        ("profile", "missing"),
        ("native-sidecar", "yes"),
        ("mode", "open"),
        ("policy", "Audit"),
    ];

    #[test]
    fn every_annotation_reaches_its_setting() {
        use crate::annotations::DOCUMENTED;
        use crate::fixtures::{NS, defaults, pod};
        for (name, _, _) in DOCUMENTED {
            assert!(REACHES.iter().any(|(n, _, _)| n == name), "{name} untested");
            assert!(
                *name == "inject" || REFUSES.iter().any(|(n, _)| n == name),
                "{name}: no refused value tested"
            );
        }
        let base = resolve(&pod().build(), NS, &strict_view(), &defaults(true))
            .expect("the plain pod resolves")
            .0;
        for (name, value, check) in REACHES {
            let p = pod().annotate(name, value).build();
            let (r, _) = resolve(&p, NS, &strict_view(), &defaults(true))
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            assert!(check(&r), "{name}={value} did not reach its setting: {r:?}");
            if *name != "inject" {
                assert!(
                    !check(&base),
                    "{name}: the check passes without the annotation"
                );
            }
        }
        for (name, value) in REFUSES {
            let p = pod().annotate(name, value).build();
            let err = resolve(&p, NS, &strict_view(), &defaults(true))
                .map(|(r, _)| r)
                .expect_err(&format!("{name}={value} was accepted"));
            assert_eq!(err.subject, format!("annotation {PREFIX}{name}"), "{err}");
            assert!(err.to_string().contains("Fix:"), "{err}");
        }
    }

    #[test]
    fn a_namespace_default_profile_applies_and_a_missing_one_is_named() {
        use crate::fixtures::{NS, defaults, namespace, pod, profile, view};
        let with = |default: &str| {
            view(
                vec![profile("base", json!({"tcpPorts": [5432]}))],
                vec![namespace(NS, &[], &[(PROFILE, default)])],
            )
        };
        let (r, _) = resolve(&pod().build(), NS, &with("base"), &defaults(true)).unwrap();
        assert_eq!(
            (r.profile.as_deref(), r.tcp_ports),
            (Some("base"), PortSet::from([5432]))
        );
        let err = resolve(&pod().build(), NS, &with("gone"), &defaults(true))
            .map(|(r, _)| r)
            .unwrap_err();
        assert_eq!(err.subject, format!("namespace {NS} annotation {PROFILE}"));
    }

    #[test]
    fn without_declared_ports_everything_is_captured_with_a_warning() {
        use crate::fixtures::{NS, container, defaults, pod};
        let p = pod().containers(vec![container("app").build()]).build();
        let (r, w) = resolve(&p, NS, &ClusterView::empty(), &defaults(true)).unwrap();
        assert_eq!(r.inbound, InboundPorts::All);
        assert!(w.iter().any(|w| w.contains("inbound-ports")), "{w:?}");
        let own = pod()
            .containers(vec![container("app").port("admin", 15020).build()])
            .build();
        let err = resolve(&own, NS, &ClusterView::empty(), &defaults(true))
            .map(|(r, _)| r)
            .unwrap_err();
        assert_eq!(err.subject, "container port 15020");
    }
}
