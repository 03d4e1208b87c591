//! Pod annotations (`kube-mtls.io/*`) and the settings they resolve to.
//!
//! Resolution order, first that says something wins: the pod's annotation, the
//! profile the pod names, the namespace's default profile, the webhook's flags.
//! Every parse error names the annotation and how to fix it; the pod is then
//! rejected rather than injected with a guess.

use std::collections::BTreeSet;

use ipnet::IpNet;
use kube_mtls_contract::names::{Identity, SIDECAR_PORTS};
use kube_mtls_contract::pattern::{AllowedClients, IdentityPattern, PATTERN_FIX};
use kube_mtls_contract::ports::{self, InboundPorts, InboundPortsError, PortSet};
use serde_json::Value;

use crate::cluster::ClusterView;
use crate::profile::{IssuerRef, MtlsProfileSpec};
use crate::resources;

pub use kube_mtls_contract::names::{
    ADMIN_PORT, INBOUND_PORT, INJECT, OUTBOUND_PORT, PREFIX, PROFILE, PROXY_UID, STATUS,
};

/// Every annotation a pod may set, with what it means and its default: the
/// README's table is written from this list.
pub const DOCUMENTED: &[(&str, &str, &str)] = &[
    (
        "inject",
        "`enabled` or `disabled`: opt this pod in or out",
        "namespace label `kube-mtls.io/inject`",
    ),
    (
        "inbound-ports",
        "ports captured inbound, comma-separated numbers or container port names, or `*`",
        "the pod's declared container ports; `*` if none",
    ),
    (
        "skip-inbound-ports",
        "ports that bypass the sidecar",
        "none",
    ),
    (
        "tcp-ports",
        "ports proxied as raw TCP (databases, non-HTTP)",
        "none: HTTP",
    ),
    (
        "h2-ports",
        "ports whose app speaks HTTP/2 cleartext (gRPC)",
        "none",
    ),
    (
        "allowed-clients",
        "allowed caller identities: SPIFFE ID patterns (`*` = one segment) or DNS names",
        "any identity in the trust domain",
    ),
    (
        "outbound-ports",
        "destination ports whose plaintext calls leave as mTLS",
        "none",
    ),
    (
        "skip-outbound-cidrs",
        "destinations never captured outbound",
        "none",
    ),
    (
        "dns-names",
        "extra DNS names in the pod's certificate",
        "none",
    ),
    (
        "issuer",
        "`ClusterIssuer/<name>` or `Issuer/<name>` that signs the certificate",
        "webhook `--issuer`",
    ),
    (
        "secret",
        "an existing Secret (tls.crt, tls.key, ca.crt) to use; no Certificate is made",
        "`kube-mtls-<service account>-tls`",
    ),
    (
        "sidecar-cpu-request",
        "sidecar CPU request; set alone above the limit, it raises the limit (with a warning)",
        "`10m`",
    ),
    (
        "sidecar-memory-request",
        "sidecar memory request; set alone above the limit, it raises the limit (with a warning)",
        "`16Mi`",
    ),
    (
        "sidecar-cpu-limit",
        "sidecar CPU limit; set alone below the request, it lowers the request (with a warning); set with a larger request: rejected",
        "none",
    ),
    (
        "sidecar-memory-limit",
        "sidecar memory limit; set alone below the request, it lowers the request (with a warning); set with a larger request: rejected",
        "`64Mi`",
    ),
    (
        "profile",
        "name of an `MtlsProfile` in the pod's namespace",
        "the namespace annotation `kube-mtls.io/profile`",
    ),
    (
        "native-sidecar",
        "`true`: sidecar as a native sidecar (init container, Kubernetes >= 1.29); `false`: a regular container",
        "from the API server version",
    ),
];

/// Settings from the webhook's flags.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub sidecar_image: String,
    pub trust_domain: String,
    pub issuer: IssuerRef,
    pub cert_duration: String,
    pub cert_renew_before: String,
    pub native_sidecar: bool,
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
    pub trust_domain: String,
    pub cert_duration: String,
    pub cert_renew_before: String,
    pub sidecar_image: String,
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

/// A pod the webhook must refuse, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{subject}: {problem}. Fix: {fix}")]
pub struct Rejection {
    /// e.g. `annotation kube-mtls.io/tcp-ports`.
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

pub(crate) fn reject(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Rejection {
    Rejection {
        subject: format!("annotation {PREFIX}{name}"),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The pod's annotations.
pub fn annotations(pod: &Value) -> serde_json::Map<String, Value> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn annotation<'a>(
    ann: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Option<&'a str> {
    ann.get(&format!("{PREFIX}{name}"))
        .and_then(Value::as_str)
        .map(str::trim)
}

/// Named container ports of the pod's app containers (name -> number).
fn named_ports(pod: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(num)) = (
                p.get("name").and_then(Value::as_str),
                p.get("containerPort").and_then(Value::as_u64),
            ) && let Ok(num) = u16::try_from(num)
            {
                out.push((name.to_owned(), num));
            }
        }
    }
    out
}

/// The pod's declared TCP container ports.
pub fn declared_ports(pod: &Value) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tcp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP");
            if tcp
                && let Some(n) = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
            {
                out.insert(n);
            }
        }
    }
    out
}

/// What to write instead of a bad port annotation.
const PORTS_FIX: &str =
    "list port numbers (1-65535) or names of the pod's container ports, separated by commas";

fn ports(
    pod: &Value,
    ann: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<PortSet>, Rejection> {
    let Some(value) = annotation(ann, name) else {
        return Ok(None);
    };
    let named = named_ports(pod);
    ports::parse_ports_with(value, |item| {
        named.iter().find(|(n, _)| n == item).map(|(_, p)| *p)
    })
    .map(Some)
    .map_err(|e| {
        reject(
            name,
            format!(
                "{:?} is neither a port number nor the name of a container port",
                e.item
            ),
            PORTS_FIX,
        )
    })
}

fn check_not_sidecar_ports(name: &str, ports: &PortSet) -> Result<(), Rejection> {
    for own in SIDECAR_PORTS {
        if ports.contains(&own) {
            return Err(reject(
                name,
                format!(
                    "port {own} is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)"
                ),
                "move the app off ports 15001, 15006 and 15020, or leave this port out",
            ));
        }
    }
    Ok(())
}

/// A port list from the MtlsProfile `profile`, checked like the annotation
/// that overrides it: the CRD allows any u16, but the init container refuses
/// port 0 (and the sidecar's own ports where `no_sidecar_ports`).
fn profile_ports(
    profile: Option<&str>,
    namespace: &str,
    field: &str,
    value: &Option<Vec<u16>>,
    no_sidecar_ports: bool,
) -> Result<Option<BTreeSet<u16>>, Rejection> {
    let Some(value) = value else {
        return Ok(None);
    };
    let name = profile.unwrap_or_default();
    let set: BTreeSet<u16> = value.iter().copied().collect();
    let bad = |problem: String, fix: &str| Rejection {
        subject: format!("MtlsProfile {name} field {field}"),
        problem,
        fix: format!("{fix} in {field} (kubectl edit mtlsprofile {name} -n {namespace})"),
    };
    if set.contains(&0) {
        return Err(bad(
            "port 0 is not a port".into(),
            "list port numbers from 1 to 65535",
        ));
    }
    if no_sidecar_ports {
        for own in SIDECAR_PORTS {
            if set.contains(&own) {
                return Err(bad(
                    format!(
                        "port {own} is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)"
                    ),
                    "leave out ports 15001, 15006 and 15020",
                ));
            }
        }
    }
    Ok(Some(set))
}

fn strings(ann: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<String>> {
    annotation(ann, name).map(|v| ports::items(v).map(str::to_owned).collect())
}

/// Reads the pod's annotations and profiles into the settings for its patch.
pub fn resolve(
    pod: &Value,
    namespace: &str,
    view: &ClusterView,
    defaults: &Defaults,
) -> Result<(Resolved, Vec<String>), Rejection> {
    let ann = annotations(pod);
    let mut warnings = Vec::new();

    // Profile: named by the pod, else the namespace's default.
    let (profile_name, named_by_pod) = match annotation(&ann, "profile") {
        Some(p) => (Some(p.to_owned()), true),
        None => (view.namespace_default_profile(namespace), false),
    };
    let profile: MtlsProfileSpec = match &profile_name {
        Some(name) => match view.profile(namespace, name) {
            Some(p) => p,
            None if named_by_pod => {
                return Err(reject(
                    "profile",
                    format!("no MtlsProfile {name:?} in namespace {namespace}"),
                    "create the MtlsProfile, or name an existing one (kubectl get mtlsprofiles -n <namespace>)",
                ));
            }
            None => {
                return Err(Rejection {
                    subject: format!("namespace {namespace} annotation {PROFILE}"),
                    problem: format!("the default MtlsProfile {name:?} does not exist"),
                    fix: "create the MtlsProfile or remove the namespace annotation".into(),
                });
            }
        },
        None => MtlsProfileSpec::default(),
    };
    let from_profile = |field: &str, v: &Option<Vec<u16>>, no_sidecar_ports: bool| {
        profile_ports(
            profile_name.as_deref(),
            namespace,
            field,
            v,
            no_sidecar_ports,
        )
    };

    let inbound = match annotation(&ann, "inbound-ports") {
        Some(value) => {
            let named = named_ports(pod);
            let inbound = InboundPorts::parse_with(value, |item| {
                named.iter().find(|(n, _)| n == item).map(|(_, p)| *p)
            })
            .map_err(|e| match e {
                InboundPortsError::Empty => reject(
                    "inbound-ports",
                    "no ports given",
                    "list ports, or `*` for all",
                ),
                InboundPortsError::Port(e) => reject(
                    "inbound-ports",
                    format!(
                        "{:?} is neither a port number nor the name of a container port",
                        e.item
                    ),
                    PORTS_FIX,
                ),
            })?;
            if let InboundPorts::Only(p) = &inbound {
                check_not_sidecar_ports("inbound-ports", p)?;
            }
            inbound
        }
        None => match from_profile("inboundPorts", &profile.inbound_ports, true)? {
            Some(p) if !p.is_empty() => InboundPorts::Only(p),
            _ => {
                let declared = declared_ports(pod);
                if declared.is_empty() {
                    warnings.push(format!(
                        "kube-mtls: the pod declares no container ports, so all inbound TCP ports are captured; set {PREFIX}inbound-ports to choose"
                    ));
                    InboundPorts::All
                } else {
                    for own in SIDECAR_PORTS {
                        if declared.contains(&own) {
                            return Err(Rejection {
                                subject: format!("container port {own}"),
                                problem: "it is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)".into(),
                                fix: "move the app to another port".into(),
                            });
                        }
                    }
                    InboundPorts::Only(declared)
                }
            }
        },
    };
    // The annotation's checks cover the profile's list too (none for the
    // sidecar's ports in skip-inbound-ports, which the init accepts).
    let skip_inbound = match ports(pod, &ann, "skip-inbound-ports")? {
        Some(p) => p,
        None => from_profile("skipInboundPorts", &profile.skip_inbound_ports, false)?
            .unwrap_or_default(),
    };
    let tcp_ports = match ports(pod, &ann, "tcp-ports")? {
        Some(p) => p,
        None => from_profile("tcpPorts", &profile.tcp_ports, true)?.unwrap_or_default(),
    };
    let h2_ports = ports(pod, &ann, "h2-ports")?.unwrap_or_default();
    check_not_sidecar_ports("tcp-ports", &tcp_ports)?;
    check_not_sidecar_ports("h2-ports", &h2_ports)?;
    if let Some(p) = tcp_ports.intersection(&h2_ports).next() {
        return Err(reject(
            "h2-ports",
            format!("port {p} is also in {PREFIX}tcp-ports"),
            "a port is TCP or HTTP/2, not both",
        ));
    }
    let outbound_ports = match ports(pod, &ann, "outbound-ports")? {
        Some(p) => p,
        None => from_profile("outboundPorts", &profile.outbound_ports, true)?.unwrap_or_default(),
    };
    check_not_sidecar_ports("outbound-ports", &outbound_ports)?;

    let allowed_clients = match annotation(&ann, "allowed-clients") {
        Some(v) => v.parse::<AllowedClients>(),
        None => profile
            .allowed_clients
            .as_deref()
            .unwrap_or_default()
            .join(",")
            .parse(),
    }
    .map_err(|e| reject("allowed-clients", e.to_string(), PATTERN_FIX))?;
    let cidrs = annotation(&ann, "skip-outbound-cidrs")
        .map(str::to_owned)
        .or_else(|| profile.skip_outbound_cidrs.as_ref().map(|c| c.join(",")))
        .unwrap_or_default();
    let skip_outbound_cidrs = kube_mtls_contract::init::parse_cidrs(&cidrs).map_err(|problem| {
        reject(
            "skip-outbound-cidrs",
            problem,
            kube_mtls_contract::init::CIDRS_FIX,
        )
    })?;
    let dns_names = strings(&ann, "dns-names").unwrap_or_default();
    for d in &dns_names {
        if !matches!(d.parse(), Ok(IdentityPattern::Dns { .. })) {
            return Err(reject(
                "dns-names",
                format!("{d:?} is not a DNS name"),
                "list DNS names such as orders.shop.svc (labels of 1-63 characters, 253 in all)",
            ));
        }
    }
    let issuer = match annotation(&ann, "issuer") {
        Some(v) => match v.split_once('/') {
            Some((kind @ ("ClusterIssuer" | "Issuer"), name)) if !name.is_empty() => IssuerRef {
                kind: kind.to_owned(),
                name: name.to_owned(),
            },
            _ => {
                return Err(reject(
                    "issuer",
                    format!("{v:?} is not <kind>/<name>"),
                    "write ClusterIssuer/<name> or Issuer/<name>",
                ));
            }
        },
        None => profile
            .issuer
            .clone()
            .unwrap_or_else(|| defaults.issuer.clone()),
    };
    let secret = annotation(&ann, "secret").map(str::to_owned);
    if let Some(s) = &secret {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(reject(
                "secret",
                format!("{s:?} is not a Secret name"),
                "give the name of a Secret in the pod's namespace",
            ));
        }
    }

    let (resources, mut adjusted) = resources::sidecar(&ann, &profile, profile_name.as_deref())?;
    warnings.append(&mut adjusted);

    let native_sidecar = match annotation(&ann, "native-sidecar") {
        None => defaults.native_sidecar,
        Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(reject(
                "native-sidecar",
                format!("{v:?} is not true or false"),
                "write true or false",
            ));
        }
    };

    let service_account = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let trust_domain = profile
        .trust_domain
        .clone()
        .unwrap_or_else(|| defaults.trust_domain.clone());

    let resolved = Resolved {
        namespace: namespace.to_owned(),
        service_account,
        inbound,
        skip_inbound,
        tcp_ports,
        h2_ports,
        allowed_clients,
        outbound_ports,
        skip_outbound_cidrs,
        dns_names,
        issuer,
        secret,
        resources,
        profile: profile_name,
        native_sidecar,
        trust_domain,
        cert_duration: profile
            .certificate_duration
            .clone()
            .unwrap_or_else(|| defaults.cert_duration.clone()),
        cert_renew_before: profile
            .certificate_renew_before
            .clone()
            .unwrap_or_else(|| defaults.cert_renew_before.clone()),
        sidecar_image: defaults.sidecar_image.clone(),
    };
    Ok((resolved, warnings))
}

#[cfg(test)]
impl Defaults {
    /// Settings for unit tests: a test image and issuer, the flags' lifetimes.
    pub(crate) fn for_tests(native_sidecar: bool) -> Defaults {
        Defaults {
            sidecar_image: "sidecar:test".into(),
            trust_domain: "cluster.local".into(),
            issuer: IssuerRef {
                kind: "ClusterIssuer".into(),
                name: "ca".into(),
            },
            cert_duration: "24h".into(),
            cert_renew_before: "8h".into(),
            native_sidecar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::MtlsProfile;
    use serde_json::json;

    fn defaults() -> Defaults {
        Defaults::for_tests(true)
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
}
