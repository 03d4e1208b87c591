//! Pod Security Standards: an injected pod whose own containers comply passes
//! the `restricted` profile in CNI mode, and fails it in the default (init
//! container) mode, where `kube-mtls-init` adds NET_ADMIN and NET_RAW.
//!
//! [`restricted`] checks a pod as the Pod Security Standards define the
//! baseline and restricted levels (kubernetes.io/docs/concepts/security/
//! pod-security-standards): it is checked itself first, against pods that
//! break each rule, so that a pass means something.

use std::process::Command;

use kube_mtls_webhook::admission::{Decision, decide};
use kube_mtls_webhook::cli::unset_defaults;
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::patch;
use kube_mtls_webhook::resolve::Defaults;
use serde::Deserialize;
use serde_json::{Value, json};

/// Capabilities the baseline level lets a container add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline level allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Every container of a pod spec (init and ephemeral ones included).
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

/// The baseline level's pod-wide rules: host namespaces, hostPath, sysctls,
/// and what a container may not set regardless of the pod.
fn baseline(spec: &Value, out: &mut Vec<String>) {
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[ns] == true {
            out.push(format!("pod: {ns} is true"));
        }
    }
    let sc = &spec["securityContext"];
    if sc.pointer("/windowsOptions/hostProcess") == Some(&json!(true)) {
        out.push("pod: windowsOptions.hostProcess".into());
    }
    for s in sc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&n) {
            out.push(format!("pod: sysctl {n} is not a safe one"));
        }
    }
    selinux("pod", sc, out);
    if sc.pointer("/seccompProfile/type") == Some(&json!("Unconfined")) {
        out.push("pod: seccompProfile Unconfined".into());
    }
    for c in containers(spec) {
        let who = format!("container {}", name(c));
        let csc = &c["securityContext"];
        if csc["privileged"] == true {
            out.push(format!("{who}: privileged"));
        }
        if csc.pointer("/windowsOptions/hostProcess") == Some(&json!(true)) {
            out.push(format!("{who}: windowsOptions.hostProcess"));
        }
        for cap in csc
            .pointer("/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                out.push(format!("{who}: adds capability {cap}"));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                out.push(format!("{who}: hostPort {}", p["hostPort"]));
            }
        }
        if csc["procMount"].as_str().is_some_and(|m| m != "Default") {
            out.push(format!("{who}: procMount {}", csc["procMount"]));
        }
        if csc.pointer("/appArmorProfile/type") == Some(&json!("Unconfined")) {
            out.push(format!("{who}: appArmorProfile Unconfined"));
        }
        selinux(&who, csc, out);
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if v.get("hostPath").is_some() {
            out.push(format!("volume {}: hostPath", name(v)));
        }
    }
}

/// SELinux: only the container types, and no user or role.
fn selinux(who: &str, sc: &Value, out: &mut Vec<String>) {
    let opts = &sc["seLinuxOptions"];
    let allowed = [
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    if opts["type"].as_str().is_some_and(|t| !allowed.contains(&t)) {
        out.push(format!("{who}: seLinuxOptions.type {}", opts["type"]));
    }
    for k in ["user", "role"] {
        if opts.get(k).is_some() {
            out.push(format!("{who}: seLinuxOptions.{k}"));
        }
    }
}

/// What a pod spec breaks of the restricted level (baseline included);
/// empty when it passes.
fn restricted(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    baseline(spec, &mut out);
    let pod = &spec["securityContext"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let kind = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| *k != "name")
            .unwrap_or("");
        if !RESTRICTED_VOLUMES.contains(&kind) {
            out.push(format!("volume {}: type {kind}", name(v)));
        }
    }
    if pod["runAsUser"] == 0 {
        out.push("pod: runAsUser 0".into());
    }
    for c in containers(spec) {
        let who = format!("container {}", name(c));
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!("{who}: allowPrivilegeEscalation is not false"));
        }
        let non_root = match sc.get("runAsNonRoot") {
            Some(v) => *v == true,
            None => pod["runAsNonRoot"] == true,
        };
        if !non_root {
            out.push(format!("{who}: runAsNonRoot is not true"));
        }
        if sc["runAsUser"] == 0 {
            out.push(format!("{who}: runAsUser 0"));
        }
        let seccomp = sc
            .pointer("/seccompProfile/type")
            .or_else(|| pod.pointer("/seccompProfile/type"));
        if !matches!(
            seccomp.and_then(Value::as_str),
            Some("RuntimeDefault" | "Localhost")
        ) {
            out.push(format!(
                "{who}: seccompProfile is not RuntimeDefault or Localhost"
            ));
        }
        let caps = &sc["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all {
            out.push(format!("{who}: capabilities do not drop ALL"));
        }
        for cap in caps["add"].as_array().into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                out.push(format!("{who}: adds capability {cap}"));
            }
        }
    }
    out
}

/// A pod that complies with `restricted` on its own: an app container with
/// a probe on a captured port, and an init container of its own.
fn compliant_pod() -> Value {
    let hardened = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders", "namespace": "shop", "annotations": {
            "kube-mtls.io/inject": "enabled",
            "kube-mtls.io/outbound-ports": "443",
        }},
        "spec": {
            "serviceAccountName": "orders",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "migrate", "image": "example/migrate:1", "securityContext": hardened}],
            "containers": [{
                "name": "app",
                "image": "example/orders:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "securityContext": hardened,
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    })
}

/// The pod as the webhook with `defaults` admits it.
fn injected(pod: &Value, defaults: &Defaults) -> Value {
    match decide(pod, "shop", "kube-mtls", &ClusterView::empty(), defaults) {
        Decision::Inject(b) => patch::apply(pod, &b.0.ops).expect("the patch applies"),
        other => panic!("not injected: {other:?}"),
    }
}

fn cni_defaults(native: bool) -> Defaults {
    Defaults {
        cni_mode: true,
        ..unset_defaults(native)
    }
}

#[test]
fn the_checks_catch_each_rule_they_are_written_for() {
    let spec = compliant_pod()["spec"].clone();
    assert_eq!(restricted(&spec), Vec::<String>::new());
    type Break = fn(&mut Value);
    let breaks: &[(&str, Break)] = &[
        ("hostNetwork", |s| s["hostNetwork"] = json!(true)),
        ("hostPID", |s| s["hostPID"] = json!(true)),
        ("hostPath", |s| {
            s["volumes"][0] = json!({"name": "h", "hostPath": {"path": "/"}})
        }),
        ("type nfs", |s| {
            s["volumes"][0] = json!({"name": "n", "nfs": {"server": "x", "path": "/"}})
        }),
        ("privileged", |s| {
            s["containers"][0]["securityContext"]["privileged"] = json!(true)
        }),
        ("allowPrivilegeEscalation", |s| {
            s["initContainers"][0]["securityContext"]
                .as_object_mut()
                .map(|o| o.remove("allowPrivilegeEscalation"));
        }),
        ("adds capability NET_ADMIN", |s| {
            s["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"])
        }),
        ("do not drop ALL", |s| {
            s["containers"][0]["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"])
        }),
        ("runAsNonRoot", |s| {
            s["securityContext"]["runAsNonRoot"] = json!(false)
        }),
        ("runAsUser 0", |s| {
            s["containers"][0]["securityContext"]["runAsUser"] = json!(0)
        }),
        ("seccompProfile", |s| {
            s["securityContext"]
                .as_object_mut()
                .map(|o| o.remove("seccompProfile"));
        }),
        ("hostPort", |s| {
            s["containers"][0]["ports"][0]["hostPort"] = json!(8080)
        }),
        ("sysctl", |s| {
            s["securityContext"]["sysctls"] = json!([{"name": "kernel.msgmax", "value": "1"}])
        }),
    ];
    for (what, change) in breaks {
        let mut s = spec.clone();
        change(&mut s);
        let found = restricted(&s);
        assert!(
            found.iter().any(|f| f.contains(what)),
            "{what} not caught: {found:?}"
        );
    }
    // NET_BIND_SERVICE is the one capability restricted lets a container add.
    let mut s = spec;
    s["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE"]);
    assert_eq!(restricted(&s), Vec::<String>::new());
}

#[test]
fn an_injected_pod_passes_restricted_in_cni_mode_and_fails_it_on_net_admin_otherwise() {
    let pod = compliant_pod();
    for native in [true, false] {
        let cni = injected(&pod, &cni_defaults(native));
        assert_eq!(
            restricted(&cni["spec"]),
            Vec::<String>::new(),
            "native {native}: {cni:#}"
        );
        let init = injected(&pod, &unset_defaults(native));
        let found = restricted(&init["spec"]);
        for want in [
            "container kube-mtls-init: adds capability NET_ADMIN",
            "container kube-mtls-init: adds capability NET_RAW",
            "container kube-mtls-init: runAsNonRoot is not true",
            "container kube-mtls-init: runAsUser 0",
        ] {
            assert!(found.iter().any(|f| f == want), "{want}: {found:?}");
        }
        assert!(
            found
                .iter()
                .all(|f| f.starts_with("container kube-mtls-init:")),
            "only the init container breaks restricted: {found:?}"
        );
    }
}

#[test]
fn the_cni_mode_golden_output_passes_restricted() {
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/cni-mode-restricted.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_kube-mtls-webhook"))
        .args(["--log-format", "text", "inject", "--cni-mode", "-f"])
        .arg(&input)
        .output()
        .expect("run kube-mtls-webhook inject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut specs = 0;
    for doc in serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout)) {
        let doc = Value::deserialize(doc).expect("YAML");
        let Some(spec) = doc.pointer("/spec/template/spec") else {
            continue;
        };
        assert_eq!(restricted(spec), Vec::<String>::new(), "{doc:#}");
        specs += 1;
    }
    assert_eq!(specs, 2, "both workloads checked");
}
