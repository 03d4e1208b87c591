//! The injection as RFC 6902 operations on the pod's raw JSON.
//!
//! The pod is never deserialized into typed structs: fields newer than our
//! Kubernetes API types would be lost on the way back. Instead each change is
//! one targeted operation (add a container here, replace a probe there), and
//! everything else in the pod stays byte-for-byte what the user wrote.
//!
//! Operations that address containers by index come before the ones that
//! insert containers, so every index refers to the pod as submitted.

use kube_mtls_contract::names::{
    ADMIN_PORT, CERT_DIR, INBOUND_PORT, INIT_BINARY, OUTBOUND_PORT, PROXY_GID, PROXY_UID,
    SIDECAR_BINARY, STATUS,
};
use kube_mtls_contract::probe::{
    AppProbes, GrpcProbe, HttpGetProbe, ProbeHeader, ProbeTarget, TcpSocketProbe,
};
use kube_mtls_contract::{LogFormat, Rendered, init, sidecar};
use serde_json::{Value, json};

use crate::resolve::Resolved;

pub use kube_mtls_contract::names::{CERT_VOLUME, INIT_NAME, RUN_VOLUME, SIDECAR_NAME};
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// The operations, and warnings for kubectl.
#[derive(Debug, Clone)]
pub struct Injection {
    pub ops: Vec<Value>,
    pub warnings: Vec<String>,
    /// What the init container's args say, before rendering.
    pub init: init::Settings,
    /// What the sidecar's args and environment say, before rendering.
    pub sidecar: sidecar::Settings,
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The init container's settings for `r`.
pub fn init_settings(r: &Resolved) -> init::Settings {
    init::Settings {
        inbound: r.inbound.clone(),
        skip_inbound: r.skip_inbound.clone(),
        outbound: r.outbound_ports.clone(),
        skip_outbound: r.skip_outbound_cidrs.clone(),
        inbound_port: INBOUND_PORT,
        admin_port: ADMIN_PORT,
        outbound_port: OUTBOUND_PORT,
        proxy_uid: PROXY_UID,
        log_format: LogFormat::Json,
        ..init::Settings::default()
    }
}

/// The sidecar's settings for `r`, with the probe targets it forwards.
pub fn sidecar_settings(r: &Resolved, probes: AppProbes) -> sidecar::Settings {
    sidecar::Settings {
        trust_domain: r.trust_domain.clone(),
        cert_dir: CERT_DIR.into(),
        inbound_port: INBOUND_PORT,
        admin_port: ADMIN_PORT,
        allowed_clients: r.allowed_clients.clone(),
        tcp_ports: r.tcp_ports.clone(),
        h2_ports: r.h2_ports.clone(),
        // Without outbound capture nothing reaches the outbound listener.
        outbound_port: if r.outbound_ports.is_empty() {
            0
        } else {
            OUTBOUND_PORT
        },
        app_probes: probes,
        log_format: LogFormat::Json,
        mode: r.mode,
        policy: r.policy,
        ..sidecar::Settings::default()
    }
}

fn env(rendered: &Rendered) -> Value {
    rendered
        .env
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn init_container(r: &Resolved, settings: &init::Settings) -> Value {
    json!({
        "name": INIT_NAME,
        "image": r.sidecar_image,
        "command": [INIT_BINARY],
        "args": settings.render().args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        // iptables-legacy takes a lock under /run; the root filesystem stays read-only.
        "volumeMounts": [{"name": RUN_VOLUME, "mountPath": "/run"}],
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

fn sidecar_container(r: &Resolved, settings: &sidecar::Settings) -> Value {
    let rendered = settings.render();
    let http =
        |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"}});
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": r.sidecar_image,
        "command": [SIDECAR_BINARY],
        "args": rendered.args,
        "env": env(&rendered),
        "ports": [{"name": "kube-mtls-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "resources": r.resources,
        "volumeMounts": [{"name": CERT_VOLUME, "mountPath": CERT_DIR, "readOnly": true}],
        "readinessProbe": http("/ready"),
        "livenessProbe": http("/live"),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if r.native_sidecar {
        // A native sidecar: kubelet starts the app only after this startup
        // probe passes, and Jobs complete without waiting for the proxy.
        c["restartPolicy"] = json!("Always");
        let mut startup = http("/ready");
        startup["periodSeconds"] = json!(1);
        startup["failureThreshold"] = json!(120);
        c["startupProbe"] = startup;
    } else {
        // A regular first container: kubelet runs postStart to completion
        // before starting the next container, which holds the app until ready.
        c["lifecycle"] =
            json!({"postStart": {"exec": {"command": sidecar::wait_ready_command(ADMIN_PORT)}}});
    }
    c
}

/// Resolves a probe's port (number or the container's port name).
fn probe_port(port: &Value, container: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse::<u16>().ok().or_else(|| {
            container
                .get("ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s.as_str()))?
                .get("containerPort")?
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
        }),
        _ => None,
    }
}

/// What a probe's original target is, for the sidecar.
enum Target {
    /// Forwarded by the sidecar: the target and the app port it is on.
    Forward(ProbeTarget, u16),
    /// Not ours to forward (exec probes, another host).
    Leave,
    /// Cannot be forwarded; left as is with this warning.
    Warn(String),
}

/// The warning for a probe whose port cannot be resolved.
fn unresolved(cname: &str, kind: &str) -> Target {
    Target::Warn(format!(
        "kube-mtls: {cname} {kind} probe port cannot be resolved; left as is"
    ))
}

/// The target of an `httpGet` probe `h` of container `c`.
fn http_target(h: &Value, c: &Value, cname: &str, kind: &str) -> Target {
    if h.get("host")
        .and_then(Value::as_str)
        .is_some_and(|h| !h.is_empty())
    {
        return Target::Leave; // probes another host: not ours to forward
    }
    let Some(port) = h.get("port").and_then(|p| probe_port(p, c)) else {
        return unresolved(cname, kind);
    };
    let http_headers = match h.get("httpHeaders") {
        None => Vec::new(),
        Some(hd) => match serde_json::from_value::<Vec<ProbeHeader>>(hd.clone()) {
            Ok(v) => v,
            Err(_) => {
                return Target::Warn(format!(
                    "kube-mtls: {cname} {kind} probe httpHeaders are not name/value pairs; left as is"
                ));
            }
        },
    };
    // Written with the API server's defaults filled in, so a pod injected
    // offline and one defaulted by the API server get the same target.
    let text = |key: &str, default: &str| {
        h.get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let http = HttpGetProbe {
        port,
        path: text("path", "/"),
        scheme: text("scheme", "HTTP"),
        http_headers,
    };
    let target = ProbeTarget {
        http_get: Some(http),
        ..ProbeTarget::default()
    };
    Target::Forward(target, port)
}

/// Reads the target of one probe of container `c`.
fn probe_target(probe: &Value, c: &Value, cname: &str, kind: &str) -> Target {
    if let Some(h) = probe.get("httpGet") {
        http_target(h, c, cname, kind)
    } else if let Some(t) = probe.get("tcpSocket") {
        let Some(port) = t.get("port").and_then(|p| probe_port(p, c)) else {
            return unresolved(cname, kind);
        };
        let tcp = TcpSocketProbe { port };
        Target::Forward(
            ProbeTarget {
                tcp_socket: Some(tcp),
                ..ProbeTarget::default()
            },
            port,
        )
    } else if let Some(g) = probe.get("grpc") {
        let Some(port) = g.get("port").and_then(|p| probe_port(p, c)) else {
            return Target::Leave;
        };
        let service = g.get("service").and_then(Value::as_str).unwrap_or("");
        let grpc = GrpcProbe {
            port,
            service: service.to_owned(),
        };
        Target::Forward(
            ProbeTarget {
                grpc: Some(grpc),
                ..ProbeTarget::default()
            },
            port,
        )
    } else {
        Target::Leave // exec probes run inside the container: unaffected
    }
}

/// Rewrites the probes of app containers that target captured ports, so kubelet
/// reaches them through the sidecar's admin port. Returns the operations and the
/// probe targets for the sidecar's `--app-probes`.
fn rewrite_probes(
    pod: &Value,
    r: &Resolved,
    warnings: &mut Vec<String>,
) -> (Vec<Value>, AppProbes) {
    let mut ops = Vec::new();
    let mut targets = AppProbes::new();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
        for (field, kind) in PROBES {
            let Some(probe) = c.get(field) else { continue };
            let (target, port) = match probe_target(probe, c, cname, kind) {
                Target::Forward(t, port) => (t, port),
                Target::Leave => continue,
                Target::Warn(w) => {
                    warnings.push(w);
                    continue;
                }
            };
            if !r.captures(port) {
                continue;
            }
            let mut new_probe = probe.clone();
            if let Some(obj) = new_probe.as_object_mut() {
                obj.remove("httpGet");
                obj.remove("tcpSocket");
                obj.remove("grpc");
                obj.insert(
                    "httpGet".into(),
                    json!({"path": format!("/app-health/{cname}/{kind}"), "port": ADMIN_PORT, "scheme": "HTTP"}),
                );
            }
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{i}/{field}"), "value": new_probe}));
            targets.insert(format!("{cname}/{kind}"), target);
        }
    }
    (ops, targets)
}

/// Builds the operations that inject `r` into `pod`.
pub fn inject(pod: &Value, r: &Resolved) -> Injection {
    let mut warnings = Vec::new();
    let (mut ops, probes) = rewrite_probes(pod, r, &mut warnings);
    let probe_keys: Vec<String> = probes.keys().cloned().collect();
    let init_settings = init_settings(r);
    let sidecar_settings = sidecar_settings(r, probes);

    let init = init_container(r, &init_settings);
    let sidecar = sidecar_container(r, &sidecar_settings);
    let has_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some();
    match (has_init, r.native_sidecar) {
        (false, true) => ops.push(
            json!({"op": "add", "path": "/spec/initContainers", "value": [init, sidecar.clone()]}),
        ),
        (false, false) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}))
        }
        (true, native) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
            if native {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": sidecar.clone()}));
            }
        }
    }
    if !r.native_sidecar {
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": sidecar}));
    }

    let volumes = [
        json!({"name": CERT_VOLUME, "secret": {"secretName": r.secret_name(), "defaultMode": 0o444}}),
        json!({"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ];
    if pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some()
    {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }

    let status = json!({
        "version": VERSION,
        "identity": r.identity(),
        "secret": r.secret_name(),
        "mode": r.mode.as_str(),
        "policy": r.policy.as_str(),
        "initContainers": if r.native_sidecar { json!([INIT_NAME, SIDECAR_NAME]) } else { json!([INIT_NAME]) },
        "containers": if r.native_sidecar { json!([]) } else { json!([SIDECAR_NAME]) },
        "volumes": [CERT_VOLUME, RUN_VOLUME],
        "probes": probe_keys,
    })
    .to_string();
    if pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some()
    {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(STATUS)), "value": status}));
    } else if pod.get("metadata").is_some_and(Value::is_object) {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {STATUS: status}}));
    } else {
        ops.push(
            json!({"op": "add", "path": "/metadata", "value": {"annotations": {STATUS: status}}}),
        );
    }
    Injection {
        ops,
        warnings,
        init: init_settings,
        sidecar: sidecar_settings,
    }
}

/// Reads the init container's and the sidecar's rendered args back through
/// their own parsers and validation (the contract's), so that a pod is never
/// admitted with settings its sidecar would refuse at start. `Err` names the
/// container and the flag.
pub fn parse_back(injection: &Injection) -> Result<(), String> {
    let init = injection.init.render();
    kube_mtls_contract::parse_container::<init::Args>(INIT_BINARY, &init.args, &init.env)
        .map_err(|e| e.to_string())
        .and_then(|a| init::Settings::from_args(&a).map_err(|e| e.to_string()))
        .map_err(|e| format!("{INIT_NAME}: {}", e.trim()))?;
    let side = injection.sidecar.render();
    kube_mtls_contract::parse_container::<sidecar::Args>(SIDECAR_BINARY, &side.args, &side.env)
        .map_err(|e| e.to_string())
        .and_then(|a| sidecar::Settings::from_args(&a).map_err(|e| e.to_string()))
        .map_err(|e| format!("{SIDECAR_NAME}: {}", e.trim()))?;
    Ok(())
}

/// Whether the pod already carries our injection (resubmission, reinvocation).
pub fn already_injected(pod: &Value) -> bool {
    let has_status = pod
        .pointer(&format!("/metadata/annotations/{}", escape(STATUS)))
        .is_some();
    let named = |path: &str| {
        pod.pointer(path)
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
            })
    };
    has_status || named("/spec/containers") || named("/spec/initContainers")
}

/// Applies operations to a copy of `pod` (offline injection, tests).
pub fn apply(pod: &Value, ops: &[Value]) -> Result<Value, String> {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).map_err(|e| e.to_string())?;
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterView;
    use crate::fixtures::{NS, container, defaults, pod};
    use crate::resolve::resolve;

    fn injected(p: &Value, native: bool) -> (Value, Injection) {
        let (r, _) = resolve(p, NS, &ClusterView::empty(), &defaults(native)).expect("resolves");
        let injection = inject(p, &r);
        (apply(p, &injection.ops).expect("applies"), injection)
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect()
    }

    #[test]
    fn the_sidecar_goes_where_its_mode_says() {
        let (native, _) = injected(&pod().build(), true);
        assert_eq!(
            names(&native["spec"]["initContainers"]),
            [INIT_NAME, SIDECAR_NAME]
        );
        assert_eq!(
            native["spec"]["initContainers"][1]["restartPolicy"],
            "Always"
        );
        let (regular, _) = injected(&pod().build(), false);
        assert_eq!(names(&regular["spec"]["initContainers"]), [INIT_NAME]);
        assert_eq!(names(&regular["spec"]["containers"]), [SIDECAR_NAME, "app"]);
        assert_eq!(
            regular["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"],
            json!(sidecar::wait_ready_command(ADMIN_PORT))
        );
        let with_init = pod()
            .init_containers(vec![container("migrate").build()])
            .build();
        let (p, _) = injected(&with_init, true);
        assert_eq!(
            names(&p["spec"]["initContainers"]),
            [INIT_NAME, SIDECAR_NAME, "migrate"]
        );
        let (p, _) = injected(&with_init, false);
        assert_eq!(names(&p["spec"]["initContainers"]), [INIT_NAME, "migrate"]);
    }

    #[test]
    fn the_rendered_args_are_the_settings() {
        let p = pod()
            .annotate("tcp-ports", "5432")
            .annotate("outbound-ports", "443")
            .build();
        let (patched, injection) = injected(&p, true);
        let init = &patched["spec"]["initContainers"][0];
        assert_eq!(init["args"], json!(injection.init.render().args));
        assert!(
            init["args"].to_string().contains("--outbound-ports=443"),
            "{init}"
        );
        let side = &patched["spec"]["initContainers"][1];
        assert_eq!(side["args"], json!(injection.sidecar.render().args));
        assert_eq!(injection.sidecar.outbound_port, OUTBOUND_PORT);
        assert!(
            side["args"].to_string().contains("--tcp-ports=5432"),
            "{side}"
        );
        assert_eq!(side["securityContext"]["runAsUser"], PROXY_UID);
        let (_, without) = injected(&pod().build(), true);
        assert_eq!(
            without.sidecar.outbound_port, 0,
            "no outbound capture, no listener"
        );
    }

    #[test]
    fn probes_on_captured_ports_go_through_the_admin_port_and_others_stay() {
        let app = container("app")
            .port("http", 8080)
            .port("debug", 9090)
            .probe(
                "readinessProbe",
                json!({"httpGet": {"port": "http", "path": "/ready"}, "periodSeconds": 3}),
            )
            .probe("livenessProbe", json!({"tcpSocket": {"port": 9090}}))
            .probe("startupProbe", json!({"exec": {"command": ["true"]}}))
            .build();
        let p = pod()
            .containers(vec![app])
            .annotate("inbound-ports", "8080")
            .build();
        let (patched, injection) = injected(&p, true);
        let c = &patched["spec"]["containers"][0];
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            "/app-health/app/readiness"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], ADMIN_PORT);
        assert_eq!(c["readinessProbe"]["periodSeconds"], 3);
        assert_eq!(
            c["livenessProbe"]["tcpSocket"]["port"], 9090,
            "not captured: left alone"
        );
        assert!(c["startupProbe"].get("exec").is_some());
        let probes: Vec<&String> = injection.sidecar.app_probes.keys().collect();
        assert_eq!(probes, ["app/readiness"]);
        let target = &injection.sidecar.app_probes["app/readiness"];
        assert_eq!(
            target.http_get.as_ref().map(|h| (h.port, h.path.as_str())),
            Some((8080, "/ready"))
        );
    }

    #[test]
    fn volumes_and_status_are_added_once() {
        let p = pod()
            .spec("volumes", json!([{"name": "data", "emptyDir": {}}]))
            .build();
        let (patched, _) = injected(&p, true);
        assert_eq!(
            names(&patched["spec"]["volumes"]),
            ["data", CERT_VOLUME, RUN_VOLUME]
        );
        assert_eq!(
            patched["spec"]["volumes"][1]["secret"]["secretName"],
            "kube-mtls-orders-tls"
        );
        let status: Value = serde_json::from_str(
            patched["metadata"]["annotations"][STATUS]
                .as_str()
                .expect("status"),
        )
        .expect("JSON");
        assert_eq!(
            status["identity"],
            "spiffe://cluster.local/ns/shop/sa/orders"
        );
        assert!(already_injected(&patched));
        assert!(!already_injected(&p));
    }
}
