//! Pod annotations (`kube-mtls.io/*`, arbitrary names and values) and
//! MtlsProfiles → `resolve::resolve` → `patch::inject`.
//!
//! Why: annotations are free text written by app teams, and every one of them
//! is parsed by the webhook (ports, port names, CIDRs, SPIFFE patterns,
//! quantities, issuer refs). A panic is a failed admission; a value the
//! webhook accepts but the init container or sidecar refuses is a pod that
//! is admitted and then crash-loops. Input is built with `arbitrary` into a
//! pod the API server would accept (DNS-label container names, IANA port
//! names) with arbitrary annotation values, and up to three MtlsProfiles
//! with arbitrary fields. Checks: no panic; when resolved, the settings keep
//! their documented invariants (no sidecar port captured or proxied, a port
//! is TCP or HTTP/2 not both) and the injection passes
//! `kube_mtls_fuzz::check_injection`.
#![no_main]

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_mtls_contract::names::SIDECAR_PORTS;
use kube_mtls_contract::ports::InboundPorts;
use kube_mtls_fuzz::check_injection;
use kube_mtls_webhook::annotations::{self, DOCUMENTED, PREFIX, PROFILE};
use kube_mtls_webhook::cli::unset_defaults;
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::patch;
use kube_mtls_webhook::profile::{IssuerRef, MtlsProfile, MtlsProfileSpec};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";

/// A lowercase DNS label (container and port names in a valid pod).
#[derive(Debug)]
struct Label(String);

impl<'a> Arbitrary<'a> for Label {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        let len = u.int_in_range(1..=15)?;
        let mut s = String::new();
        for i in 0..len {
            let c = *u.choose(ALPHABET)?;
            s.push(if c == b'-' && (i == 0 || i == len - 1) {
                'x'
            } else {
                c as char
            });
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            s.insert(0, 'p'); // an IANA port name has a letter
        }
        Ok(Label(s))
    }
}

#[derive(Debug, Arbitrary)]
enum Token {
    Port(u16),
    Big(u32),
    Own(u8),
    PortName(u8),
    Star,
    V4(u32, u8),
    V6(u128, u8),
    Spiffe(Vec<Option<String>>),
    SpiffeIn(String, Vec<Option<Label>>),
    Dns(Vec<Label>, bool),
    Quantity(u32, u8),
    Text(String),
}

const SUFFIXES: &[&str] = &[
    "", "m", "Mi", "Gi", "k", "M", "e3", "E-2", "n", "Ki", ".5", "x",
];

impl Token {
    fn render(&self, port_names: &[String]) -> String {
        match self {
            Token::Port(p) => p.to_string(),
            Token::Big(p) => p.to_string(),
            Token::Own(i) => SIDECAR_PORTS[*i as usize % SIDECAR_PORTS.len()].to_string(),
            Token::PortName(i) if !port_names.is_empty() => {
                port_names[*i as usize % port_names.len()].clone()
            }
            Token::PortName(_) => "http".into(),
            Token::Star => "*".into(),
            Token::V4(a, p) => format!("{}/{}", std::net::Ipv4Addr::from(*a), p % 40),
            Token::V6(a, p) => format!("{}/{}", std::net::Ipv6Addr::from(*a), p % 140),
            Token::Spiffe(segs) => {
                render_spiffe("cluster.local", segs.iter().map(|s| s.as_deref()))
            }
            Token::SpiffeIn(td, segs) => {
                render_spiffe(td, segs.iter().map(|s| s.as_ref().map(|l| l.0.as_str())))
            }
            Token::Dns(labels, wild) => {
                let name = labels
                    .iter()
                    .map(|l| l.0.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                if *wild { format!("*.{name}") } else { name }
            }
            Token::Quantity(n, s) => format!("{n}{}", SUFFIXES[*s as usize % SUFFIXES.len()]),
            Token::Text(s) => s.clone(),
        }
    }
}

fn render_spiffe<'a>(td: &str, segs: impl Iterator<Item = Option<&'a str>>) -> String {
    let path = segs.map(|s| s.unwrap_or("*")).collect::<Vec<_>>().join("/");
    format!("spiffe://{td}/{path}")
}

#[derive(Debug, Arbitrary)]
enum AnnotationValue {
    /// A comma-separated list of tokens, with `sep` between them.
    List(Vec<Token>, bool),
    Text(String),
    /// Not a string: annotation values are strings, but a hostile
    /// AdmissionReview may say otherwise.
    Number(i64),
    Null,
}

#[derive(Debug, Arbitrary)]
enum AnnotationName {
    Documented(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum PortRef {
    Number(u32),
    Name(u8),
    NumberString(u16),
}

#[derive(Debug, Arbitrary)]
enum Probe {
    HttpGet {
        port: PortRef,
        host: bool,
        headers: bool,
    },
    Tcp(PortRef),
    Grpc(PortRef),
    Exec,
}

#[derive(Debug, Arbitrary)]
struct Port {
    name: Option<Label>,
    number: u16,
    udp: bool,
    app_protocol: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct Container {
    name: Label,
    ports: Vec<Port>,
    probes: [Option<Probe>; 3],
    run_as_user: Option<i64>,
}

#[derive(Debug, Arbitrary)]
struct Profile {
    name: u8,
    inbound: Option<Vec<u16>>,
    skip_inbound: Option<Vec<u16>>,
    tcp: Option<Vec<u16>>,
    outbound: Option<Vec<u16>>,
    allowed_clients: Option<Vec<Token>>,
    skip_outbound_cidrs: Option<Vec<Token>>,
    trust_domain: Option<Label>,
    issuer: Option<(bool, Label)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    annotations: Vec<(AnnotationName, AnnotationValue)>,
    containers: Vec<Container>,
    init_containers: Option<Vec<Container>>,
    volumes: bool,
    service_account: Option<Label>,
    profiles: Vec<Profile>,
    namespace_default_profile: Option<u8>,
    native_default: bool,
    /// The webhook's --cni-mode.
    cni_mode: bool,
}

const PROBE_FIELDS: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
const APP_PROTOCOLS: [&str; 4] = ["grpc", "h2c", "kubernetes.io/h2c", "http"];

fn port_ref(p: &PortRef, names: &[String]) -> Value {
    match p {
        PortRef::Number(n) => json!(n),
        PortRef::Name(i) if !names.is_empty() => json!(names[*i as usize % names.len()]),
        PortRef::Name(_) => json!("http"),
        PortRef::NumberString(n) => json!(n.to_string()),
    }
}

fn container(c: &Container) -> Value {
    let names: Vec<String> = c
        .ports
        .iter()
        .filter_map(|p| p.name.as_ref().map(|n| n.0.clone()))
        .collect();
    let ports: Vec<Value> = c
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.number.max(1)});
            if let Some(n) = &p.name {
                v["name"] = json!(n.0);
            }
            if p.udp {
                v["protocol"] = json!("UDP");
            }
            if let Some(a) = p.app_protocol {
                v["appProtocol"] = json!(APP_PROTOCOLS[a as usize % APP_PROTOCOLS.len()]);
            }
            v
        })
        .collect();
    let mut v = json!({"name": c.name.0, "image": "example/app:1"});
    if !ports.is_empty() {
        v["ports"] = json!(ports);
    }
    for (field, probe) in PROBE_FIELDS.iter().zip(&c.probes) {
        let Some(probe) = probe else { continue };
        v[*field] = match probe {
            Probe::HttpGet {
                port,
                host,
                headers,
            } => {
                let mut h = json!({"path": "/healthz", "port": port_ref(port, &names)});
                if *host {
                    h["host"] = json!("10.0.0.1");
                }
                if *headers {
                    h["httpHeaders"] = json!([{"name": "X-Probe", "value": "kubelet"}]);
                }
                json!({"httpGet": h})
            }
            Probe::Tcp(p) => json!({"tcpSocket": {"port": port_ref(p, &names)}}),
            Probe::Grpc(p) => json!({"grpc": {"port": port_ref(p, &names)}}),
            Probe::Exec => json!({"exec": {"command": ["/bin/true"]}}),
        };
    }
    if let Some(uid) = c.run_as_user {
        v["securityContext"] = json!({"runAsUser": uid});
    }
    v
}

fn profile_name(i: u8) -> String {
    format!("p{}", i % 3)
}

fn profile(p: &Profile, port_names: &[String]) -> MtlsProfile {
    let strings = |t: &Option<Vec<Token>>| {
        t.as_ref()
            .map(|t| t.iter().map(|t| t.render(port_names)).collect())
    };
    let spec = MtlsProfileSpec {
        issuer: p.issuer.as_ref().map(|(cluster, name)| IssuerRef {
            kind: if *cluster { "ClusterIssuer" } else { "Issuer" }.into(),
            name: name.0.clone(),
        }),
        trust_domain: p.trust_domain.as_ref().map(|l| format!("{}.local", l.0)),
        inbound_ports: p.inbound.clone(),
        skip_inbound_ports: p.skip_inbound.clone(),
        tcp_ports: p.tcp.clone(),
        allowed_clients: strings(&p.allowed_clients),
        outbound_ports: p.outbound.clone(),
        skip_outbound_cidrs: strings(&p.skip_outbound_cidrs),
        ..Default::default()
    };
    let mut mp = MtlsProfile::new(&profile_name(p.name), spec);
    mp.metadata.namespace = Some(NAMESPACE.into());
    mp
}

fuzz_target!(|input: Input| {
    let containers: Vec<Value> = input.containers.iter().map(container).collect();
    let port_names: Vec<String> = input
        .containers
        .iter()
        .flat_map(|c| {
            c.ports
                .iter()
                .filter_map(|p| p.name.as_ref().map(|n| n.0.clone()))
        })
        .collect();
    let mut ann = serde_json::Map::new();
    for (name, value) in &input.annotations {
        let key = match name {
            AnnotationName::Documented(i) => {
                format!("{PREFIX}{}", DOCUMENTED[*i as usize % DOCUMENTED.len()].0)
            }
            AnnotationName::Other(s) => format!("{PREFIX}{s}"),
        };
        let value = match value {
            AnnotationValue::List(tokens, spaced) => {
                let sep = if *spaced { ", " } else { "," };
                json!(
                    tokens
                        .iter()
                        .map(|t| t.render(&port_names))
                        .collect::<Vec<_>>()
                        .join(sep)
                )
            }
            AnnotationValue::Text(s) => json!(s),
            AnnotationValue::Number(n) => json!(n),
            AnnotationValue::Null => Value::Null,
        };
        ann.insert(key, value);
    }
    // Opted in whatever the annotations above say, so resolution is reached.
    ann.insert(annotations::INJECT.into(), json!("enabled"));
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": NAMESPACE, "annotations": ann},
        "spec": {"containers": containers},
    });
    if let Some(sa) = &input.service_account {
        pod["spec"]["serviceAccountName"] = json!(sa.0);
    }
    if let Some(init) = &input.init_containers {
        pod["spec"]["initContainers"] = json!(init.iter().map(container).collect::<Vec<_>>());
    }
    if input.volumes {
        pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    }

    let mut namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some(p) = input.namespace_default_profile {
        namespace.metadata.annotations = Some([(PROFILE.to_owned(), profile_name(p))].into());
    }
    let view = ClusterView::Fixed {
        profiles: input
            .profiles
            .iter()
            .take(3)
            .map(|p| profile(p, &port_names))
            .collect(),
        namespaces: vec![namespace],
    };
    let mut defaults = unset_defaults(input.native_default);
    defaults.cni_mode = input.cni_mode;

    let Ok((resolved, _warnings)) =
        kube_mtls_webhook::resolve::resolve(&pod, NAMESPACE, &view, &defaults)
    else {
        return; // refused with a reason: fine
    };
    let own = SIDECAR_PORTS;
    if let InboundPorts::Only(p) = &resolved.inbound {
        assert!(!p.is_empty(), "no inbound ports captured: {resolved:?}");
        assert!(
            own.iter().all(|o| !p.contains(o)),
            "a sidecar port is captured inbound: {resolved:?}"
        );
    }
    for set in [
        &resolved.tcp_ports,
        &resolved.h2_ports,
        &resolved.outbound_ports,
    ] {
        assert!(
            own.iter().all(|o| !set.contains(o)),
            "a sidecar port in a port list: {resolved:?}"
        );
        assert!(!set.contains(&0), "port 0 in a port list: {resolved:?}");
    }
    assert!(
        resolved.tcp_ports.is_disjoint(&resolved.h2_ports),
        "a port is TCP and HTTP/2: {resolved:?}"
    );

    // The same path `decide` takes after resolving (checks::proxy_uid aside).
    if kube_mtls_webhook::checks::proxy_uid(&pod).is_err() {
        return;
    }
    let injection = patch::inject(&pod, &resolved);
    // `decide` refuses, with the flag's message, what the binaries' parsers refuse.
    if patch::parse_back(&injection).is_err() {
        return;
    }
    check_injection(
        &pod,
        &json!(injection.ops),
        NAMESPACE,
        &view,
        &defaults,
        true,
    );
});
