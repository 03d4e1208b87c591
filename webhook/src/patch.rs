//! The injection as RFC 6902 operations on the pod's raw JSON.
//!
//! The pod is never deserialized into typed structs: fields newer than our
//! Kubernetes API types would be lost on the way back. Instead each change is
//! one targeted operation (add a container here, replace a probe there), and
//! everything else in the pod stays byte-for-byte what the user wrote.
//!
//! Operations that address containers by index come before the ones that
//! insert containers, so every index refers to the pod as submitted.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::annotations::{
    ADMIN_PORT, INBOUND_PORT, Inbound, OUTBOUND_PORT, PROXY_UID, Resolved, STATUS,
};

pub const INIT_NAME: &str = "kube-mtls-init";
pub const SIDECAR_NAME: &str = "kube-mtls-sidecar";
pub const CERT_VOLUME: &str = "kube-mtls-certs";
pub const RUN_VOLUME: &str = "kube-mtls-xtables";
pub const CERT_DIR: &str = "/var/run/kube-mtls/certs";
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
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn join(ports: &std::collections::BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn init_container(r: &Resolved) -> Value {
    let inbound = match &r.inbound {
        Inbound::All => "*".to_owned(),
        Inbound::Only(p) => join(p),
    };
    let mut args = vec![
        format!("--inbound-ports={inbound}"),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--admin-port={ADMIN_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--proxy-uid={PROXY_UID}"),
    ];
    if !r.skip_inbound.is_empty() {
        args.push(format!("--skip-inbound-ports={}", join(&r.skip_inbound)));
    }
    if !r.outbound_ports.is_empty() {
        args.push(format!("--outbound-ports={}", join(&r.outbound_ports)));
    }
    if !r.skip_outbound_cidrs.is_empty() {
        args.push(format!(
            "--skip-outbound-cidrs={}",
            r.skip_outbound_cidrs.join(",")
        ));
    }
    args.push("--log-format=json".to_owned());
    json!({
        "name": INIT_NAME,
        "image": r.sidecar_image,
        "command": ["kube-mtls-init"],
        "args": args,
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

fn sidecar_container(r: &Resolved, probes: &BTreeMap<String, Value>) -> Value {
    let mut args = vec![
        format!("--trust-domain={}", r.trust_domain),
        format!("--cert-dir={CERT_DIR}"),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--admin-port={ADMIN_PORT}"),
    ];
    if !r.allowed_clients.is_empty() {
        args.push(format!("--allowed-clients={}", r.allowed_clients.join(",")));
    }
    if !r.tcp_ports.is_empty() {
        args.push(format!("--tcp-ports={}", join(&r.tcp_ports)));
    }
    if !r.h2_ports.is_empty() {
        args.push(format!("--h2-ports={}", join(&r.h2_ports)));
    }
    args.push(if r.outbound_ports.is_empty() {
        "--outbound-port=0".to_owned()
    } else {
        format!("--outbound-port={OUTBOUND_PORT}")
    });
    let mut env = vec![json!({"name": "KUBE_MTLS_LOG_FORMAT", "value": "json"})];
    if !probes.is_empty() {
        env.push(json!({"name": "KUBE_MTLS_APP_PROBES", "value": serde_json::to_string(probes).unwrap_or_default()}));
    }
    let http =
        |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"}});
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": r.sidecar_image,
        "command": ["kube-mtls-sidecar"],
        "args": args,
        "env": env,
        "ports": [{"name": "kube-mtls-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "resources": r.resources,
        "volumeMounts": [{"name": CERT_VOLUME, "mountPath": CERT_DIR, "readOnly": true}],
        "readinessProbe": http("/ready"),
        "livenessProbe": http("/live"),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
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
        c["lifecycle"] = json!({"postStart": {"exec": {"command": ["kube-mtls-sidecar", "--wait-ready", format!("--admin-port={ADMIN_PORT}")]}}});
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

/// Rewrites the probes of app containers that target captured ports, so kubelet
/// reaches them through the sidecar's admin port. Returns the operations and the
/// probe targets for the sidecar's `KUBE_MTLS_APP_PROBES`.
fn rewrite_probes(
    pod: &Value,
    r: &Resolved,
    warnings: &mut Vec<String>,
) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut ops = Vec::new();
    let mut targets = BTreeMap::new();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
        for (field, kind) in PROBES {
            let Some(probe) = c.get(field) else { continue };
            let (target, port) = if let Some(h) = probe.get("httpGet") {
                if h.get("host")
                    .and_then(Value::as_str)
                    .is_some_and(|h| !h.is_empty())
                {
                    continue; // probes another host: not ours to forward
                }
                let Some(port) = h.get("port").and_then(|p| probe_port(p, c)) else {
                    warnings.push(format!(
                        "kube-mtls: {cname} {kind} probe port cannot be resolved; left as is"
                    ));
                    continue;
                };
                // Written with the API server's defaults filled in, so a pod
                // injected offline and one defaulted by the API server get
                // the same target.
                let mut t = json!({
                    "port": port,
                    "path": h.get("path").cloned().unwrap_or(json!("/")),
                    "scheme": h.get("scheme").cloned().unwrap_or(json!("HTTP")),
                });
                if let Some(hd) = h.get("httpHeaders") {
                    t["httpHeaders"] = hd.clone();
                }
                (json!({"httpGet": t}), port)
            } else if let Some(t) = probe.get("tcpSocket") {
                let Some(port) = t.get("port").and_then(|p| probe_port(p, c)) else {
                    warnings.push(format!(
                        "kube-mtls: {cname} {kind} probe port cannot be resolved; left as is"
                    ));
                    continue;
                };
                (json!({"tcpSocket": {"port": port}}), port)
            } else if let Some(g) = probe.get("grpc") {
                let Some(port) = g.get("port").and_then(|p| probe_port(p, c)) else {
                    continue;
                };
                let service = g.get("service").cloned().unwrap_or(json!(""));
                (json!({"grpc": {"port": port, "service": service}}), port)
            } else {
                continue; // exec probes run inside the container: unaffected
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

    let init = init_container(r);
    let sidecar = sidecar_container(r, &probes);
    let has_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some();
    match (has_init, r.native_sidecar) {
        (false, true) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, sidecar]}))
        }
        (false, false) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}))
        }
        (true, native) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
            if native {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": sidecar}));
            }
        }
    }
    if !r.native_sidecar {
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": sidecar_container(r, &probes)}));
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
        "initContainers": if r.native_sidecar { json!([INIT_NAME, SIDECAR_NAME]) } else { json!([INIT_NAME]) },
        "containers": if r.native_sidecar { json!([]) } else { json!([SIDECAR_NAME]) },
        "volumes": [CERT_VOLUME, RUN_VOLUME],
        "probes": probes.keys().collect::<Vec<_>>(),
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
    Injection { ops, warnings }
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
