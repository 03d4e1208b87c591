//! The injection as RFC 6902 operations on the pod's raw JSON.
//!
//! The pod is never deserialized into typed structs: fields newer than our
//! Kubernetes API types would be lost on the way back. Instead each change is
//! one targeted operation (add a container here, replace a probe there), and
//! everything else in the pod stays byte-for-byte what the user wrote.
//!
//! Operations that address containers by index come before the ones that
//! insert containers, so every index refers to the pod as submitted.
//!
//! The first init container is `kube-mtls-init`, which installs the redirect
//! rules with NET_ADMIN and NET_RAW, or in CNI mode `kube-mtls-validate`,
//! which only checks that the CNI plugin installed them, beside the
//! `kube-mtls.io/cni-redirect` annotation the plugin reads them from.
//!
//! With the trust bundle ([`Resolved::trust_bundle`]) the sidecar mounts the
//! namespace's ConfigMap `kube-mtls-trust` read-only at
//! `/var/run/kube-mtls/trust` and verifies peers against its `ca-bundle.crt`
//! (`--trust-bundle`), not its own Secret's `ca.crt`.

use kube_mtls_contract::names::{
    ADMIN_PORT, CERT_DIR, CNI_REDIRECT, INBOUND_PORT, INIT_BINARY, OUTBOUND_PORT, PROXY_GID,
    PROXY_UID, SIDECAR_BINARY, STATUS, TRUST_BUNDLE_PATH, TRUST_CONFIGMAP, TRUST_DIR,
};
use kube_mtls_contract::probe::{
    AppProbes, GrpcProbe, HttpGetProbe, ProbeHeader, ProbeTarget, TcpSocketProbe,
};
use kube_mtls_contract::{LogFormat, Rendered, init, sidecar};
use serde_json::{Value, json};

use crate::resolve::Resolved;

pub use kube_mtls_contract::names::{
    CERT_VOLUME, INIT_NAME, RUN_VOLUME, SIDECAR_NAME, TRUST_VOLUME, VALIDATE_NAME,
};
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
    /// CNI mode: the `kube-mtls.io/cni-redirect` annotation written (the
    /// init settings' args as a JSON list); `None` in init mode.
    pub cni_redirect: Option<String>,
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
        trust_bundle: r.trust_bundle.then(|| TRUST_BUNDLE_PATH.into()),
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

/// CNI mode's first init container: as unprivileged as the sidecar, it only
/// checks (`--validate`) that the CNI plugin installed the rules the init
/// container would have, and exits with VALIDATION_FAILED_EXIT when not.
fn validate_container(r: &Resolved, settings: &init::Settings) -> Value {
    json!({
        "name": VALIDATE_NAME,
        "image": r.sidecar_image,
        "command": [INIT_BINARY],
        "args": validate_args(settings),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
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
    })
}

/// The sidecar's mounts: its certificates, and the trust bundle when it has one.
fn mounts(r: &Resolved) -> Value {
    let mut m = vec![json!({"name": CERT_VOLUME, "mountPath": CERT_DIR, "readOnly": true})];
    if r.trust_bundle {
        m.push(json!({"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true}));
    }
    Value::Array(m)
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
        "volumeMounts": mounts(r),
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

/// How a pod's traffic gets redirected: the status annotation's `redirect`.
pub fn redirect_mode(r: &Resolved) -> &'static str {
    if r.cni_mode { "cni" } else { "init" }
}

/// Where the sidecar takes the CAs it trusts: the status annotation's `trust`.
pub fn trust_mode(r: &Resolved) -> &'static str {
    if r.trust_bundle {
        "configmap"
    } else {
        "secret"
    }
}

/// The first init container's name: the privileged init, or CNI mode's check.
pub fn first_init_name(r: &Resolved) -> &'static str {
    if r.cni_mode { VALIDATE_NAME } else { INIT_NAME }
}

/// Adds `first` as the first init container, then the sidecar where its mode says.
fn place_containers(pod: &Value, r: &Resolved, first: Value, sidecar: Value, ops: &mut Vec<Value>) {
    let has_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some();
    match (has_init, r.native_sidecar) {
        (false, true) => ops.push(
            json!({"op": "add", "path": "/spec/initContainers", "value": [first, sidecar.clone()]}),
        ),
        (false, false) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [first]}))
        }
        (true, native) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": first}));
            if native {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": sidecar.clone()}));
            }
        }
    }
    if !r.native_sidecar {
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": sidecar}));
    }
}

/// The volumes the injection adds: the certificates, the trust bundle (the
/// namespace's ConfigMap, which the webhook's controller keeps), and in init
/// mode the init container's xtables lock directory.
fn volumes(r: &Resolved) -> Vec<Value> {
    let mut v = vec![
        json!({"name": CERT_VOLUME, "secret": {"secretName": r.secret_name(), "defaultMode": 0o444}}),
    ];
    if r.trust_bundle {
        v.push(json!({"name": TRUST_VOLUME, "configMap": {"name": TRUST_CONFIGMAP, "defaultMode": 0o444}}));
    }
    if !r.cni_mode {
        v.push(json!({"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}));
    }
    v
}

fn add_volumes(pod: &Value, volumes: Vec<Value>, ops: &mut Vec<Value>) {
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
}

/// Adds the annotations `values` (an existing key is replaced, so a pod
/// cannot bring its own value), whether or not the pod has annotations or
/// metadata yet.
fn add_annotations(pod: &Value, values: &[(&str, String)], ops: &mut Vec<Value>) {
    if pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some()
    {
        for (key, value) in values {
            let path = format!("/metadata/annotations/{}", escape(key));
            ops.push(json!({"op": "add", "path": path, "value": value}));
        }
        return;
    }
    let map: serde_json::Map<String, Value> = values
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    if pod.get("metadata").is_some_and(Value::is_object) {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata", "value": {"annotations": map}}));
    }
}

/// The status annotation: what was injected, and how traffic is redirected.
fn status(r: &Resolved, volumes: &[Value], probe_keys: &[String]) -> String {
    let first = first_init_name(r);
    let volume_names: Vec<&Value> = volumes.iter().map(|v| &v["name"]).collect();
    json!({
        "version": VERSION,
        "identity": r.identity(),
        "secret": r.secret_name(),
        "mode": r.mode.as_str(),
        "policy": r.policy.as_str(),
        "redirect": redirect_mode(r),
        "trust": trust_mode(r),
        "initContainers": if r.native_sidecar { json!([first, SIDECAR_NAME]) } else { json!([first]) },
        "containers": if r.native_sidecar { json!([]) } else { json!([SIDECAR_NAME]) },
        "volumes": volume_names,
        "probes": probe_keys,
    })
    .to_string()
}

/// The args of CNI mode's check: the init settings' args, and `--validate`.
pub fn validate_args(settings: &init::Settings) -> Vec<String> {
    let mut args = settings.render().args;
    args.push("--validate".to_owned());
    args
}

/// The `kube-mtls.io/cni-redirect` value: the init settings' args as a JSON list.
pub fn cni_redirect(settings: &init::Settings) -> String {
    Value::from(settings.render().args).to_string()
}

/// Builds the operations that inject `r` into `pod`.
pub fn inject(pod: &Value, r: &Resolved) -> Injection {
    let mut warnings = Vec::new();
    let (mut ops, probes) = rewrite_probes(pod, r, &mut warnings);
    let probe_keys: Vec<String> = probes.keys().cloned().collect();
    let init_settings = init_settings(r);
    let sidecar_settings = sidecar_settings(r, probes);

    let first = if r.cni_mode {
        validate_container(r, &init_settings)
    } else {
        init_container(r, &init_settings)
    };
    let sidecar = sidecar_container(r, &sidecar_settings);
    place_containers(pod, r, first, sidecar, &mut ops);
    let volumes = volumes(r);
    let status = status(r, &volumes, &probe_keys);
    add_volumes(pod, volumes, &mut ops);
    let cni_redirect = r.cni_mode.then(|| cni_redirect(&init_settings));
    let mut annotations = vec![(STATUS, status)];
    if let Some(args) = &cni_redirect {
        annotations.push((CNI_REDIRECT, args.clone()));
    }
    add_annotations(pod, &annotations, &mut ops);
    Injection {
        ops,
        warnings,
        init: init_settings,
        sidecar: sidecar_settings,
        cni_redirect,
    }
}

/// `args` through `kube-mtls-init`'s parser and validation; `Err` names `what`.
fn init_parses(
    what: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<init::Args, String> {
    let parsed = kube_mtls_contract::parse_container::<init::Args>(INIT_BINARY, args, env)
        .map_err(|e| e.to_string())
        .and_then(|a| {
            init::Settings::from_args(&a)
                .map(|_| a)
                .map_err(|e| e.to_string())
        });
    parsed.map_err(|e| format!("{what}: {}", e.trim()))
}

/// Reads the init container's and the sidecar's rendered args back through
/// their own parsers and validation (the contract's), so that a pod is never
/// admitted with settings its sidecar would refuse at start. In CNI mode the
/// check's args (with `--validate`) and the `kube-mtls.io/cni-redirect` list
/// the CNI plugin applies are read back too. `Err` names the container (or
/// annotation) and the flag.
pub fn parse_back(injection: &Injection) -> Result<(), String> {
    let init = injection.init.render();
    init_parses(INIT_NAME, &init.args, &init.env)?;
    if let Some(redirect) = &injection.cni_redirect {
        let args: Vec<String> = serde_json::from_str(redirect)
            .map_err(|e| format!("{CNI_REDIRECT}: not a JSON list of strings: {e}"))?;
        let plan = init_parses(CNI_REDIRECT, &args, &[])?;
        if plan.cleanup || plan.dry_run || plan.validate {
            return Err(format!(
                "{CNI_REDIRECT}: the rules to install, not --cleanup, --dry-run or --validate"
            ));
        }
        let check = init_parses(VALIDATE_NAME, &validate_args(&injection.init), &init.env)?;
        if !check.validate {
            return Err(format!("{VALIDATE_NAME}: --validate is not set"));
        }
    }
    let side = injection.sidecar.render();
    kube_mtls_contract::parse_container::<sidecar::Args>(SIDECAR_BINARY, &side.args, &side.env)
        .map_err(|e| e.to_string())
        .and_then(|a| sidecar::Settings::from_args(&a).map_err(|e| e.to_string()))
        .map_err(|e| format!("{SIDECAR_NAME}: {}", e.trim()))?;
    Ok(())
}

/// Whether the pod already carries our injection (resubmission, reinvocation),
/// in either redirect mode.
pub fn already_injected(pod: &Value) -> bool {
    let has_status = pod
        .pointer(&format!("/metadata/annotations/{}", escape(STATUS)))
        .is_some();
    let ours = [SIDECAR_NAME, VALIDATE_NAME];
    let named = |path: &str| {
        pod.pointer(path)
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| ours.contains(&n))
                })
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
        injected_with(p, &defaults(native))
    }

    fn injected_with(p: &Value, d: &crate::resolve::Defaults) -> (Value, Injection) {
        let (r, _) = resolve(p, NS, &ClusterView::empty(), d).expect("resolves");
        let injection = inject(p, &r);
        (apply(p, &injection.ops).expect("applies"), injection)
    }

    /// A webhook's settings with `--cni-mode`.
    fn cni(native: bool) -> crate::resolve::Defaults {
        crate::resolve::Defaults {
            cni_mode: true,
            ..defaults(native)
        }
    }

    /// Every container the pod runs, init containers first.
    fn all_containers(p: &Value) -> Vec<&Value> {
        ["initContainers", "containers"]
            .iter()
            .filter_map(|l| p["spec"][l].as_array())
            .flatten()
            .collect()
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
            ["data", CERT_VOLUME, TRUST_VOLUME, RUN_VOLUME]
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

    #[test]
    fn cni_mode_puts_the_unprivileged_check_first_in_either_placement() {
        let with_init = pod()
            .init_containers(vec![container("migrate").build()])
            .build();
        let cases = [
            (pod().build(), true, vec![VALIDATE_NAME, SIDECAR_NAME]),
            (pod().build(), false, vec![VALIDATE_NAME]),
            (
                with_init.clone(),
                true,
                vec![VALIDATE_NAME, SIDECAR_NAME, "migrate"],
            ),
            (with_init, false, vec![VALIDATE_NAME, "migrate"]),
        ];
        for (p, native, want) in cases {
            let (patched, injection) = injected_with(&p, &cni(native));
            assert_eq!(names(&patched["spec"]["initContainers"]), want);
            let check = &patched["spec"]["initContainers"][0];
            let args = injection.init.render().args;
            assert_eq!(
                check["args"],
                json!([args.clone(), vec!["--validate".to_owned()]].concat())
            );
            assert_eq!(check["command"], json!([INIT_BINARY]));
            assert!(check.get("volumeMounts").is_none(), "{check}");
            let sc = &check["securityContext"];
            assert_eq!(
                (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()),
                (Some(PROXY_UID.into()), Some(PROXY_GID.into()))
            );
            assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            for c in all_containers(&patched) {
                let sc = &c["securityContext"];
                assert!(sc["capabilities"].get("add").is_none(), "{c}");
                assert_ne!(sc["runAsUser"], 0, "{c}");
                assert_ne!(c["name"], INIT_NAME);
            }
            assert!(!names(&patched["spec"]["volumes"]).contains(&RUN_VOLUME));
            let ann = &patched["metadata"]["annotations"];
            let written: Vec<String> =
                serde_json::from_str(ann[CNI_REDIRECT].as_str().expect("cni-redirect"))
                    .expect("a JSON list");
            assert_eq!(written, args);
            let (init_mode, _) = injected(&p, native);
            assert_eq!(
                json!(written),
                init_mode["spec"]["initContainers"][0]["args"],
                "exactly what {INIT_NAME} gets in init mode"
            );
            let status: Value =
                serde_json::from_str(ann[STATUS].as_str().expect("status")).expect("JSON");
            assert_eq!(status["redirect"], "cni");
            assert_eq!(status["initContainers"][0], VALIDATE_NAME);
            assert_eq!(status["volumes"], json!([CERT_VOLUME, TRUST_VOLUME]));
            assert!(already_injected(&patched));
            assert_eq!(parse_back(&injection), Ok(()));
        }
        let (default, _) = injected(&pod().build(), true);
        let status: Value = serde_json::from_str(
            default["metadata"]["annotations"][STATUS]
                .as_str()
                .expect("status"),
        )
        .expect("JSON");
        assert_eq!(status["redirect"], "init");
        assert!(
            default["metadata"]["annotations"]
                .get(CNI_REDIRECT)
                .is_none()
        );
    }

    #[test]
    fn a_pod_cannot_take_cni_mode_back_or_bring_its_own_redirect() {
        let p = pod()
            .annotate("native-sidecar", "false")
            .annotate("cni-mode", "false")
            .annotate("cni-redirect", r#"["--proxy-uid=1000"]"#)
            .build();
        let (patched, injection) = injected_with(&p, &cni(true));
        assert_eq!(names(&patched["spec"]["initContainers"]), [VALIDATE_NAME]);
        assert_eq!(
            patched["metadata"]["annotations"][CNI_REDIRECT],
            json!(cni_redirect(&injection.init)),
            "the webhook's value replaces the pod's"
        );
        assert!(
            !patched["metadata"]["annotations"][CNI_REDIRECT]
                .to_string()
                .contains("1000")
        );
        // Without any metadata, both annotations still arrive.
        let bare = json!({"spec": pod().build()["spec"].clone()});
        let (r, _) = resolve(&bare, NS, &ClusterView::empty(), &cni(true)).expect("resolves");
        let out = apply(&bare, &inject(&bare, &r).ops).expect("applies");
        assert!(
            out["metadata"]["annotations"][CNI_REDIRECT].is_string(),
            "{out}"
        );
        assert!(out["metadata"]["annotations"][STATUS].is_string(), "{out}");
    }

    /// The sidecar container of an injected pod (native or not).
    fn sidecar_of(p: &Value) -> &Value {
        all_containers(p)
            .into_iter()
            .find(|c| c["name"] == SIDECAR_NAME)
            .expect("a sidecar")
    }

    #[test]
    fn the_sidecar_trusts_the_namespaces_bundle_mounted_read_only() {
        for native in [true, false] {
            let (patched, injection) = injected(&pod().build(), native);
            let volume = patched["spec"]["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == TRUST_VOLUME))
                .expect("the trust volume");
            assert_eq!(
                volume["configMap"],
                json!({"name": TRUST_CONFIGMAP, "defaultMode": 0o444})
            );
            let side = sidecar_of(&patched);
            assert!(
                side["volumeMounts"].as_array().is_some_and(|m| m.contains(
                    &json!({"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true})
                )),
                "{side}"
            );
            assert_eq!(
                injection.sidecar.trust_bundle.as_deref(),
                Some(std::path::Path::new(TRUST_BUNDLE_PATH))
            );
            assert!(
                side["args"]
                    .to_string()
                    .contains(&format!("--trust-bundle={TRUST_BUNDLE_PATH}")),
                "{side}"
            );
            assert_eq!(parse_back(&injection), Ok(()));
            let status: Value = serde_json::from_str(
                patched["metadata"]["annotations"][STATUS]
                    .as_str()
                    .expect("status"),
            )
            .expect("JSON");
            assert_eq!(status["trust"], "configmap");
        }
    }

    #[test]
    fn with_the_secret_source_or_a_secret_of_its_own_the_pod_trusts_its_ca_crt() {
        let secret_source = crate::resolve::Defaults {
            trust_source: crate::trust::TrustSource::Secret,
            ..defaults(true)
        };
        let own = pod().annotate("secret", "orders-tls").build();
        for (p, d) in [(pod().build(), &secret_source), (own, &defaults(true))] {
            let (patched, injection) = injected_with(&p, d);
            assert!(!names(&patched["spec"]["volumes"]).contains(&TRUST_VOLUME));
            let side = sidecar_of(&patched);
            assert_eq!(
                side["volumeMounts"],
                json!([{"name": CERT_VOLUME, "mountPath": CERT_DIR, "readOnly": true}])
            );
            assert_eq!(injection.sidecar.trust_bundle, None);
            assert!(
                !side["args"].to_string().contains("--trust-bundle"),
                "{side}"
            );
        }
    }

    #[test]
    fn a_pod_of_another_issuer_trusts_its_ca_crt_and_is_told_why() {
        let p = pod().annotate("issuer", "ClusterIssuer/team-ca").build();
        let (r, warnings) =
            resolve(&p, NS, &ClusterView::empty(), &defaults(true)).expect("resolves");
        assert!(!r.trust_bundle);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("ClusterIssuer/team-ca") && w.contains("ca.crt")),
            "{warnings:?}"
        );
    }

    #[test]
    fn with_a_namespaced_issuer_there_is_no_bundle_to_follow_and_the_pod_is_told() {
        let d = crate::resolve::Defaults {
            issuer: "Issuer/team-ca".parse().expect("an issuer"),
            ..defaults(true)
        };
        let (r, warnings) =
            resolve(&pod().build(), NS, &ClusterView::empty(), &d).expect("resolves");
        assert!(!r.trust_bundle);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("--trust-bundle-source=secret") && w.contains("Issuer/team-ca")),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_cni_pod_is_recognised_as_injected_even_without_its_status() {
        let (patched, _) = injected_with(&pod().build(), &cni(false));
        let mut stripped = patched.clone();
        if let Some(a) = stripped["metadata"]["annotations"].as_object_mut() {
            a.remove(STATUS);
        }
        stripped["spec"]["containers"] = json!([container("app").build()]);
        assert!(already_injected(&stripped), "the check alone marks it");
    }

    #[test]
    fn parse_back_names_a_redirect_annotation_the_init_would_refuse() {
        let (_, mut injection) = injected_with(&pod().build(), &cni(true));
        injection.cni_redirect = Some("--inbound-ports=8080".into());
        let e = parse_back(&injection).expect_err("not a JSON list");
        assert!(
            e.starts_with(CNI_REDIRECT) && e.contains("JSON list"),
            "{e}"
        );
        injection.cni_redirect = Some(r#"["--proxy-uid=0"]"#.into());
        let e = parse_back(&injection).expect_err("UID 0");
        assert!(
            e.starts_with(CNI_REDIRECT) && e.contains("proxy-uid"),
            "{e}"
        );
        injection.cni_redirect = Some(r#"["--cleanup"]"#.into());
        let e = parse_back(&injection).expect_err("not an install");
        assert!(e.contains("--cleanup"), "{e}");
    }
}
