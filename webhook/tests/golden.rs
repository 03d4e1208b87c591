//! Golden tests: realistic manifests through the real `kube-mtls-webhook inject`
//! binary, compared with the committed expected output, re-injected to prove
//! idempotence, and validated in strict mode against the Kubernetes schema.
//! An input with a sibling `<name>.args` is injected with those flags (one a
//! line), e.g. `cni-mode-restricted.args` holds `--cni-mode`.
//!
//! `KUBE_MTLS_BLESS=1 cargo test -p kube-mtls-webhook --test golden` rewrites the
//! expected files after a deliberate change; review the diff before committing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The extra `inject` flags of a golden input: its sibling `<name>.args`, one
/// flag a line (e.g. `--cni-mode`); none without one.
fn args_for(input: &Path) -> Vec<String> {
    std::fs::read_to_string(input.with_extension("args"))
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `kube-mtls-webhook inject` on a golden input, with its `.args`.
fn inject(input: &Path) -> String {
    inject_with(input, &args_for(input))
}

fn inject_with(input: &Path, args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-mtls-webhook"))
        .args(["--log-format", "text", "inject"])
        .args(args)
        .arg("-f")
        .arg(input)
        .output()
        .expect("run kube-mtls-webhook inject");
    assert!(
        out.status.success(),
        "inject {} {args:?}: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|d| !d.is_null())
        .collect()
}

/// The documents of a stream as written, cut at its `---` lines.
fn text_documents(yaml: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in yaml.split_inclusive('\n') {
        if line.trim_end() == "---" {
            out.push(&yaml[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    out.push(&yaml[start..]);
    out.retain(|d| !d.trim().is_empty());
    out
}

/// `kube-mtls-webhook inject` with `args` on `input`: status, stdout, stderr.
fn inject_args(input: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kube-mtls-webhook"))
        .args(["--log-format", "text", "inject"])
        .args(args)
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run kube-mtls-webhook inject");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every document as PyYAML (a YAML 1.1 reader, like kubectl) reads it.
fn yaml_1_1_docs(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (pip install kubernetes-validate brings it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML cannot read the output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".out.yaml")
        })
        .collect();
    v.sort();
    assert!(v.len() >= 8, "golden inputs missing");
    v
}

fn expected_path(input: &Path) -> PathBuf {
    input.with_extension("out.yaml")
}

#[test]
fn outputs_match_the_golden_files_and_reinjection_changes_nothing() {
    let bless = std::env::var("KUBE_MTLS_BLESS").as_deref() == Ok("1");
    for input in inputs() {
        let out = inject(&input);
        let expected = expected_path(&input);
        if bless {
            std::fs::write(&expected, &out).unwrap();
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_else(|_| {
            panic!("{} missing; run with KUBE_MTLS_BLESS=1", expected.display())
        });
        assert_eq!(
            out,
            want,
            "{} differs from {}",
            input.display(),
            expected.display()
        );

        // Injecting the output again is a no-op: no second copy of anything.
        let dir = tempfile::tempdir().unwrap();
        let again_in = dir.path().join("again.yaml");
        std::fs::write(&again_in, &out).unwrap();
        assert_eq!(
            docs(&inject_with(&again_in, &args_for(&input))),
            docs(&out),
            "{}: second injection changed the output",
            input.display()
        );
    }
}

/// Every pod template in a document, with its JSON pointer.
fn pod_specs(doc: &Value) -> Option<&Value> {
    match doc.get("kind")?.as_str()? {
        "Pod" => doc.get("spec"),
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => doc.pointer("/spec/template/spec"),
    }
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn injected_pods_are_what_a_user_wants() {
    let out = docs(&inject(
        &golden_dir().join("deployment-multi-container.yaml"),
    ));
    assert_eq!(
        out[0]["kind"], "ConfigMap",
        "unrelated objects pass through"
    );
    let spec = pod_specs(&out[1]).unwrap();
    assert_eq!(
        names(spec.get("initContainers")),
        vec!["kube-mtls-init", "kube-mtls-sidecar"]
    );
    assert_eq!(
        names(spec.get("containers")),
        vec!["api", "metrics"],
        "app containers stay where they were"
    );
    let init_args = spec.pointer("/initContainers/0/args").unwrap().to_string();
    assert!(
        init_args.contains("--inbound-ports=8080,9100"),
        "declared and named ports: {init_args}"
    );
    let sidecar = &spec["initContainers"][1];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 15337);
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        sidecar["args"]
            .to_string()
            .contains("--allowed-clients=spiffe://cluster.local/ns/web/sa/*,reports.example.com")
    );
    // Probes on captured ports now go to the admin port, and the sidecar knows
    // the original targets (named port resolved, headers kept).
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/api/readiness"
    );
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["port"],
        15020
    );
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["periodSeconds"], 5,
        "probe timings kept"
    );
    assert_eq!(
        spec["containers"][1]["livenessProbe"]["httpGet"]["path"],
        "/app-health/metrics/liveness"
    );
    let probes: Value = serde_json::from_str(
        sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KUBE_MTLS_APP_PROBES")
            .unwrap()["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(probes["api/readiness"]["httpGet"]["port"], 8080);
    assert_eq!(
        probes["api/readiness"]["httpGet"]["httpHeaders"][0]["name"],
        "X-Probe"
    );
    assert_eq!(probes["metrics/liveness"]["tcpSocket"]["port"], 9100);
    let cert = out
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .expect("a Certificate for the identity");
    assert_eq!(
        cert["spec"]["uris"][0],
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
    assert_eq!(cert["spec"]["dnsNames"][1], "orders.shop.svc.cluster.local");
    assert_eq!(cert["spec"]["privateKey"]["algorithm"], "ECDSA");

    let out = docs(&inject(&golden_dir().join("pod-probe-kinds.yaml")));
    let spec = pod_specs(&out[0]).unwrap();
    assert_eq!(
        names(spec.get("initContainers")),
        vec!["kube-mtls-init", "kube-mtls-sidecar", "migrate"]
    );
    assert_eq!(
        spec["containers"][0]["startupProbe"]["httpGet"]["path"],
        "/app-health/server/startup"
    );
    assert!(spec["containers"][0]["startupProbe"].get("grpc").is_none());
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/server/readiness"
    );
    assert!(
        spec["containers"][0]["livenessProbe"].get("exec").is_some(),
        "exec probes untouched"
    );
    assert_eq!(
        spec["containers"][1]["livenessProbe"]["httpGet"]["port"], 9443,
        "a probe on a skipped port is left alone"
    );
    assert_eq!(
        names(spec.get("volumes")),
        vec![
            "data",
            "kube-mtls-certs",
            "kube-mtls-trust",
            "kube-mtls-xtables"
        ]
    );

    let out = docs(&inject(&golden_dir().join("statefulset-tcp-legacy.yaml")));
    let spec = pod_specs(&out[0]).unwrap();
    assert_eq!(names(spec.get("initContainers")), vec!["kube-mtls-init"]);
    assert_eq!(
        names(spec.get("containers")),
        vec!["kube-mtls-sidecar", "postgres"],
        "legacy sidecar first"
    );
    assert!(
        spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"]
            .to_string()
            .contains("--wait-ready")
    );
    assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], "50m");
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["memory"],
        "128Mi"
    );
    assert_eq!(spec["volumes"][0]["secret"]["secretName"], "pg-mtls");
    assert!(
        !out.iter().any(|d| d["kind"] == "Certificate"),
        "an existing Secret needs no Certificate"
    );

    let input = docs(&std::fs::read_to_string(golden_dir().join("unchanged.yaml")).unwrap());
    assert_eq!(docs(&inject(&golden_dir().join("unchanged.yaml"))), input);
}

/// The sidecar's trust: `Some(path)` of its `--trust-bundle`, and whether the
/// pod mounts the namespace's `kube-mtls-trust` ConfigMap there.
fn trust_of(spec: &Value) -> (Option<String>, bool) {
    let sidecar = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .find(|c| c["name"] == "kube-mtls-sidecar")
        .expect("a sidecar");
    let flag = sidecar["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--trust-bundle="))
        .map(str::to_owned);
    let mounted = sidecar["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| {
            m["name"] == "kube-mtls-trust"
                && m["mountPath"] == "/var/run/kube-mtls/trust"
                && m["readOnly"] == true
        });
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["name"] == "kube-mtls-trust" && v["configMap"]["name"] == "kube-mtls-trust");
    (flag, mounted && volume)
}

#[test]
fn sidecars_trust_the_namespaces_bundle_unless_told_to_trust_their_own_ca_crt() {
    let input = golden_dir().join("trust-bundle-secret.yaml");
    assert_eq!(args_for(&input), ["--trust-bundle-source=secret"]);
    let bundle = docs(&inject_with(&input, &[]));
    let spec = pod_specs(&bundle[0]).unwrap();
    assert_eq!(
        trust_of(spec),
        (
            Some("/var/run/kube-mtls/trust/ca-bundle.crt".to_owned()),
            true
        )
    );
    let own = docs(&inject(&input));
    let spec = pod_specs(&own[0]).unwrap();
    assert_eq!(trust_of(spec), (None, false));
    assert_eq!(
        names(spec.get("volumes")),
        ["kube-mtls-certs", "kube-mtls-xtables"]
    );
    let status: Value = serde_json::from_str(
        own[0]
            .pointer("/spec/template/metadata/annotations/kube-mtls.io~1status")
            .and_then(Value::as_str)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["trust"], "secret");
    // A pod that brings its own Secret trusts its own ca.crt either way.
    let legacy = docs(&inject(&golden_dir().join("statefulset-tcp-legacy.yaml")));
    assert_eq!(trust_of(pod_specs(&legacy[0]).unwrap()), (None, false));
}

#[test]
fn in_cni_mode_the_check_comes_first_and_the_plugin_gets_the_init_args() {
    let input = golden_dir().join("cni-mode-restricted.yaml");
    assert_eq!(args_for(&input), ["--cni-mode"]);
    let cni = docs(&inject(&input));
    let init_mode = docs(&inject_with(&input, &[]));
    let (checkout, ledger) = (pod_specs(&cni[0]).unwrap(), pod_specs(&cni[1]).unwrap());
    assert_eq!(
        names(checkout.get("initContainers")),
        ["kube-mtls-validate", "kube-mtls-sidecar"]
    );
    assert_eq!(
        names(ledger.get("initContainers")),
        ["kube-mtls-validate", "wait-for-db"],
        "the check stays first before the app's init containers"
    );
    assert_eq!(
        names(ledger.get("containers")),
        ["kube-mtls-sidecar", "ledger"]
    );
    for (i, doc) in cni.iter().take(2).enumerate() {
        let spec = pod_specs(doc).unwrap();
        let check = &spec["initContainers"][0];
        let args: Vec<&str> = check["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args.last(), Some(&"--validate"), "{check}");
        assert_eq!(check["securityContext"]["runAsUser"], 15337);
        assert_eq!(
            names(spec.get("volumes")),
            ["kube-mtls-certs", "kube-mtls-trust"],
            "no xtables volume"
        );
        // The plugin's args are exactly the init container's in init mode,
        // and the pod's own value was replaced.
        let template = doc.pointer("/spec/template/metadata/annotations").unwrap();
        let redirect: Value =
            serde_json::from_str(template["kube-mtls.io/cni-redirect"].as_str().unwrap()).unwrap();
        let init_spec = pod_specs(&init_mode[i]).unwrap();
        assert_eq!(init_spec["initContainers"][0]["name"], "kube-mtls-init");
        assert_eq!(redirect, init_spec["initContainers"][0]["args"]);
        assert_eq!(json_args(&redirect).len() + 1, args.len());
        let status: Value =
            serde_json::from_str(template["kube-mtls.io/status"].as_str().unwrap()).unwrap();
        assert_eq!(status["redirect"], "cni");
    }
}

fn json_args(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn every_output_validates_against_the_kubernetes_schema_in_strict_mode() {
    let have = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        if std::env::var("KUBE_MTLS_SKIP_SCHEMA").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
            );
            return;
        }
        panic!(
            "kubernetes-validate is not installed: pip install kubernetes-validate (or KUBE_MTLS_SKIP_SCHEMA=1)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for input in inputs() {
        let out = inject(&input);
        // cert-manager's Certificate is a custom resource the validator cannot
        // know. The rest is validated as written: re-serialising it would
        // hide how a YAML 1.1 reader (kubectl, PyYAML) takes its values.
        let core: Vec<&str> = text_documents(&out)
            .into_iter()
            .filter(|d| !d.lines().any(|l| l == "kind: Certificate"))
            .collect();
        let file = dir.path().join(input.file_name().unwrap());
        std::fs::write(&file, core.join("---\n")).unwrap();
        for version in ["1.29.0", "1.33.0"] {
            let v = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                v.status.success(),
                "{} fails strict validation for {version}:\n{}{}",
                input.display(),
                String::from_utf8_lossy(&v.stdout),
                String::from_utf8_lossy(&v.stderr)
            );
        }
    }
}

#[test]
fn offline_rejections_name_the_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    kube-mtls.io/inject: enabled\n    kube-mtls.io/tcp-ports: \"5432,postgres\"\nspec:\n  containers:\n  - name: c\n    image: x\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kube-mtls-webhook"))
        .args(["inject", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kube-mtls.io/tcp-ports") && err.contains("\"postgres\""),
        "{err}"
    );
}

#[test]
fn documents_not_opted_in_come_out_byte_for_byte_and_injected_values_keep_their_meaning() {
    let input = std::fs::read_to_string(golden_dir().join("yaml11-values.yaml")).unwrap();
    let (ok, out, err) = inject_args(&input, &[]);
    assert!(ok, "{err}");
    let untouched = &input[..input.find("---\n# The injected one.").unwrap()];
    assert!(
        out.starts_with(untouched),
        "the document that is not opted in changed:\n{out}"
    );
    let docs = yaml_1_1_docs(&out);
    let legacy = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(legacy["containers"][0]["env"][0]["value"], "yes");
    assert_eq!(legacy["volumes"][0]["secret"]["defaultMode"], 256);
    let billing = &docs[1]["spec"]["template"];
    let env: Vec<&Value> = billing["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["value"])
        .collect();
    assert_eq!(
        env,
        ["yes", "on", "0400", "1e3", "12:30", "set -e\necho ready\n"],
        "string values stay strings for a YAML 1.1 reader"
    );
    assert_eq!(
        billing["spec"]["volumes"][0]["secret"]["defaultMode"], 256,
        "0400 is octal, as kubectl reads it"
    );
    assert_eq!(
        billing["spec"]["containers"][0]["volumeMounts"][0]["readOnly"],
        true
    );
    assert_eq!(billing["metadata"]["labels"]["on"], "yes");
    assert_eq!(
        billing["spec"]["initContainers"][1]["name"], "kube-mtls-sidecar",
        "injected"
    );
}

const NO_NAMESPACE: &str = "# no namespace here
apiVersion: v1
kind: Pod
metadata:
  name: orders
  annotations:
    kube-mtls.io/inject: enabled
spec:
  serviceAccountName: orders
  containers:
  - name: app
    image: example/orders:1
    ports:
    - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: not-a-workload
";

#[test]
fn a_document_without_a_namespace_takes_it_from_dash_n_and_is_refused_without() {
    let (ok, out, err) = inject_args(NO_NAMESPACE, &[]);
    assert!(!ok, "injected without knowing the namespace:\n{out}");
    assert!(
        err.contains("-n/--namespace")
            && err.contains("metadata.namespace")
            && err.contains("Pod orders")
            && err.contains("Fix:"),
        "{err}"
    );

    let (ok, out, err) = inject_args(NO_NAMESPACE, &["-n", "shop"]);
    assert!(ok, "{err}");
    let docs = docs(&out);
    assert!(
        docs[0].pointer("/metadata/namespace").is_none(),
        "the workload still follows kubectl's -n"
    );
    let cert = docs.iter().find(|d| d["kind"] == "Certificate").unwrap();
    assert_eq!(cert["metadata"]["namespace"], "shop");
    assert_eq!(
        cert["spec"]["uris"][0],
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
    assert!(
        err.contains("warning:") && err.contains("apply it with -n shop"),
        "{err}"
    );

    let elsewhere = NO_NAMESPACE.replace("  name: orders\n", "  name: orders\n  namespace: web\n");
    let (ok, _, err) = inject_args(&elsewhere, &["--namespace", "shop"]);
    assert!(
        !ok && err.contains("differs from -n/--namespace shop"),
        "{err}"
    );

    let not_opted_in = NO_NAMESPACE.replace("enabled", "disabled");
    let (ok, out, err) = inject_args(&not_opted_in, &[]);
    assert!(ok, "{err}");
    assert_eq!(out, not_opted_in, "nothing to inject, nothing asked");
}

#[test]
fn opted_in_workloads_inside_a_list_are_injected() {
    let out = docs(&inject(&golden_dir().join("list.yaml")));
    assert_eq!(out[0]["kind"], "List");
    assert_eq!(out[0]["items"][0]["data"]["enabled"], "true");
    let spec = &out[0]["items"][1]["spec"]["template"]["spec"];
    assert_eq!(
        names(spec.get("initContainers")),
        vec!["kube-mtls-init", "kube-mtls-sidecar"]
    );
    let cert = out
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .expect("the list item's Certificate is appended");
    assert_eq!(
        cert["spec"]["uris"][0],
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
}

#[test]
fn admission_warnings_are_printed_by_offline_inject() {
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: payments
  namespace: shop
  annotations:
    kube-mtls.io/inject: enabled
    kube-mtls.io/native-sidecar: \"false\"
    kube-mtls.io/outbound-ports: \"5432\"
spec:
  initContainers:
  - {name: migrate, image: example/migrate:1}
  containers:
  - name: server
    image: example/payments:1
    ports:
    - {name: grpc, containerPort: 9000}
";
    let (ok, _, err) = inject_args(pod, &[]);
    assert!(ok, "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("port 9000") && w.contains("kube-mtls.io/h2-ports")),
        "{err}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("migrate") && w.contains("5432")),
        "{err}"
    );
}
