//! Every container the webhook can write is one its binary accepts.
//!
//! The init container's and the sidecar's args and environment, as injected
//! into every golden case and for every documented annotation, are read back
//! in process through `kube-mtls-init`'s and `kube-mtls-sidecar`'s own
//! argument parsers and validation (the sidecar's certificate files and
//! trust bundle are the only things swapped, for a directory that has them).
//! So are CNI mode's check (`--validate`) and its `kube-mtls.io/cni-redirect`
//! list. Where the webhook's typed settings are at hand, the settings read
//! back must equal them.

use std::path::{Path, PathBuf};

use kube_mtls_contract::names::{
    CERT_FILES, CNI_REDIRECT, INIT_NAME, SIDECAR_NAME, TRUST_BUNDLE_KEY, TRUST_BUNDLE_PATH,
    VALIDATE_NAME,
};
use kube_mtls_contract::{init, parse_container, sidecar};
use kube_mtls_webhook::admission::{Decision, decide};
use kube_mtls_webhook::annotations::{DOCUMENTED, INJECT, PREFIX};
use kube_mtls_webhook::cli::unset_defaults;
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::offline::{self, Options};
use kube_mtls_webhook::patch;
use kube_mtls_webhook::profile::{MtlsProfile, MtlsProfileSpec};
use kube_mtls_webhook::resolve::Defaults;
use serde::Deserialize;
use serde_json::{Value, json};

/// A container's `args` and `env` (literal values only, as the webhook writes them).
fn command_line(c: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let strings = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let args = strings(c.get("args"))
        .iter()
        .map(|a| a.as_str().expect("an arg is a string").to_owned())
        .collect();
    let env = strings(c.get("env"))
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().expect("a literal env value").to_owned();
            (s("name"), s("value"))
        })
        .collect();
    (args, env)
}

/// The init container's command line through `kube-mtls-init`'s own parser and validation.
fn init_accepts(c: &Value) -> init::Settings {
    let (args, env) = command_line(c);
    let parsed: kube_mtls_init::config::Args = parse_container(INIT_NAME, &args, &env)
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?} {env:?}: {e}"));
    kube_mtls_init::config::Config::from_args(&parsed)
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?}: {e}"))
}

/// CNI mode's check through `kube-mtls-init`'s own parser and validation:
/// it runs `--validate`, with the settings of the same args without it.
fn check_accepts(c: &Value) -> init::Settings {
    let (args, env) = command_line(c);
    let parsed: kube_mtls_init::config::Args = parse_container(INIT_NAME, &args, &env)
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?} {env:?}: {e}"));
    assert!(
        parsed.validate && !parsed.cleanup && !parsed.dry_run,
        "{args:?}"
    );
    let without = args.iter().filter(|a| *a != "--validate").count();
    assert_eq!(without + 1, args.len(), "--validate once: {args:?}");
    kube_mtls_init::config::Config::from_args(&parsed)
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?}: {e}"))
}

/// The `kube-mtls.io/cni-redirect` list through `kube-mtls-init`'s own
/// parser and validation: what the CNI plugin installs.
fn redirect_accepts(annotations: &Value) -> init::Settings {
    let text = annotations[CNI_REDIRECT]
        .as_str()
        .unwrap_or_else(|| panic!("no {CNI_REDIRECT} in {annotations}"));
    let args: Vec<String> = serde_json::from_str(text).expect("a JSON list of strings");
    let parsed: kube_mtls_init::config::Args = parse_container(INIT_NAME, &args, &[])
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?}: {e}"));
    assert!(
        !parsed.validate && !parsed.cleanup && !parsed.dry_run,
        "{args:?}"
    );
    kube_mtls_init::config::Config::from_args(&parsed)
        .unwrap_or_else(|e| panic!("kube-mtls-init refuses {args:?}: {e}"))
}

/// The webhook's settings given no flags but `--cni-mode=<cni>`.
fn defaults(native: bool, cni: bool) -> Defaults {
    Defaults {
        cni_mode: cni,
        ..unset_defaults(native)
    }
}

/// The sidecar's command line through `kube-mtls-sidecar`'s own parser and
/// validation, with `certs` for the mounted certificate directory.
fn sidecar_accepts(c: &Value, certs: &Path) -> sidecar::Settings {
    let (args, env) = command_line(c);
    let parsed: kube_mtls_sidecar::config::Args = parse_container(SIDECAR_NAME, &args, &env)
        .unwrap_or_else(|e| panic!("kube-mtls-sidecar refuses {args:?} {env:?}: {e}"));
    let settings = sidecar::Settings::from_args(&parsed)
        .unwrap_or_else(|e| panic!("kube-mtls-sidecar refuses {args:?} {env:?}: {e}"));
    let mut local = parsed.clone();
    local.cert_dir = certs.to_owned();
    if !local.trust_bundle.is_empty() {
        assert_eq!(local.trust_bundle, TRUST_BUNDLE_PATH, "{args:?}");
        local.trust_bundle = certs.join(TRUST_BUNDLE_KEY).display().to_string();
    }
    if let Err(e) = kube_mtls_sidecar::config::Config::from_args(&local) {
        panic!("kube-mtls-sidecar refuses {args:?} {env:?}: {e}");
    }
    if let Some(hook) = c.pointer("/lifecycle/postStart/exec/command") {
        let (command, _) = command_line(&json!({"args": hook}));
        let hook: kube_mtls_sidecar::config::Args =
            parse_container(SIDECAR_NAME, &command[1..], &[])
                .unwrap_or_else(|e| panic!("the postStart hook {command:?} does not parse: {e}"));
        assert!(hook.wait_ready && hook.admin_port == settings.admin_port);
    }
    settings
}

/// A directory with the certificate files the sidecar checks for.
fn cert_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    for f in CERT_FILES.into_iter().chain([TRUST_BUNDLE_KEY]) {
        std::fs::write(dir.path().join(f), "").expect("write");
    }
    let path = dir.path().to_owned();
    (dir, path)
}

fn named<'a>(spec: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    spec.get(list)?
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// Every pod spec in a document, a `kind: List`'s items included.
fn pod_specs(doc: &Value, out: &mut Vec<Value>) {
    for item in doc
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pod_specs(item, out);
    }
    for pointer in [
        "/spec/containers",
        "/spec/template/spec/containers",
        "/spec/jobTemplate/spec/template/spec/containers",
    ] {
        if doc.pointer(pointer).is_some() {
            let spec = &pointer[..pointer.len() - "/containers".len()];
            out.extend(doc.pointer(spec).cloned());
        }
    }
}

#[test]
fn every_golden_case_writes_containers_their_binaries_accept() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let (_keep, certs) = cert_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).expect("golden dir") {
        let path = entry.expect("entry").path();
        let name = path.to_string_lossy();
        if !name.ends_with(".yaml") || name.ends_with(".out.yaml") {
            continue;
        }
        let input = std::fs::read_to_string(&path).expect("read");
        for (native, cni) in [(true, false), (false, false), (true, true), (false, true)] {
            let (out, _) =
                offline::inject_yaml(&input, &defaults(native, cni), &Options::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut specs = Vec::new();
            for doc in serde_yaml::Deserializer::from_str(&out) {
                pod_specs(&Value::deserialize(doc).expect("YAML"), &mut specs);
            }
            for spec in specs {
                let first = if cni { VALIDATE_NAME } else { INIT_NAME };
                let Some(init) = named(&spec, "initContainers", first) else {
                    continue;
                };
                assert_eq!(spec["initContainers"][0]["name"], first, "{name}");
                if cni {
                    check_accepts(init);
                } else {
                    init_accepts(init);
                }
                let side = named(&spec, "initContainers", SIDECAR_NAME)
                    .or_else(|| named(&spec, "containers", SIDECAR_NAME))
                    .unwrap_or_else(|| panic!("{name}: an init container without a sidecar"));
                sidecar_accepts(side, &certs);
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 24,
        "only {checked} injected pods in the golden cases"
    );
}

/// Values for every annotation: each is injected, alone, in a pod with named ports.
const SAMPLES: &[(&str, &[&str])] = &[
    ("inject", &["enabled"]),
    ("inbound-ports", &["*", "8080", "http,9090", "8080, grpc"]),
    ("skip-inbound-ports", &["22", "metrics,22"]),
    ("tcp-ports", &["5432", "9090,grpc"]),
    ("h2-ports", &["grpc", "9000"]),
    (
        "allowed-clients",
        &[
            "spiffe://cluster.local/ns/web/sa/*",
            "spiffe://Other.Domain/ns/*/sa/*,API.example.com,*.svc.example.com",
        ],
    ),
    ("outbound-ports", &["443", "5432,6379"]),
    (
        "skip-outbound-cidrs",
        &["10.96.0.0/12", "10.0.0.1,fd00::/8"],
    ),
    ("dns-names", &["orders.shop.svc", "*.orders.example.com"]),
    ("issuer", &["Issuer/local", "ClusterIssuer/other"]),
    ("secret", &["orders-tls"]),
    ("sidecar-cpu-request", &["50m", "2"]),
    ("sidecar-memory-request", &["32Mi", "1Gi"]),
    ("sidecar-cpu-limit", &["500m", "1m"]),
    ("sidecar-memory-limit", &["128Mi", "8Mi"]),
    ("profile", &["everything"]),
    ("native-sidecar", &["true", "false"]),
    ("mode", &["strict", "permissive"]),
    ("policy", &["enforce", "audit"]),
];

fn app_pod(annotations: Value) -> Value {
    json!({
        "metadata": {"name": "orders", "namespace": "shop", "annotations": annotations},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [{
                "name": "app",
                "image": "example/app:1",
                "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "grpc", "containerPort": 9000},
                    {"name": "metrics", "containerPort": 9100}
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]}},
                "livenessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"grpc": {"port": 9000}}
            }]
        }
    })
}

/// A profile that sets every field, named `everything` in namespace `shop`.
fn view() -> ClusterView {
    let spec: MtlsProfileSpec = serde_json::from_value(json!({
        "issuer": {"kind": "Issuer", "name": "shop-ca"},
        "trustDomain": "shop.example",
        "inboundPorts": [8080, 9000],
        "skipInboundPorts": [9100],
        "tcpPorts": [9000],
        "allowedClients": ["spiffe://shop.example/ns/web/sa/*", "reports.example.com"],
        "outboundPorts": [5432],
        "skipOutboundCidrs": ["10.0.0.0/8"],
        "certificateDuration": "48h",
        "certificateRenewBefore": "16h",
        "mode": "permissive",
        "policy": "audit",
        "sidecarResources": {"requests": {"cpu": "20m", "memory": "24Mi"}, "limits": {"memory": "96Mi"}}
    }))
    .expect("a profile");
    let mut profile = MtlsProfile::new("everything", spec);
    profile.metadata.namespace = Some("shop".into());
    ClusterView::Fixed {
        profiles: vec![profile],
        namespaces: Vec::new(),
    }
}

#[test]
fn every_annotation_writes_containers_their_binaries_accept_with_the_settings_it_meant() {
    for (name, _, _) in DOCUMENTED {
        assert!(
            SAMPLES.iter().any(|(n, _)| n == name),
            "annotation {PREFIX}{name} has no sample here"
        );
    }
    let (_keep, certs) = cert_dir();
    let view = view();
    for (name, values) in SAMPLES {
        for value in *values {
            for (native, cni) in [(true, false), (false, false), (true, true), (false, true)] {
                let pod = app_pod(json!({INJECT: "enabled", format!("{PREFIX}{name}"): value}));
                let Decision::Inject(b) =
                    decide(&pod, "shop", "kube-mtls", &view, &defaults(native, cni))
                else {
                    panic!("{PREFIX}{name}: {value:?} was not injected");
                };
                let (injection, _) = *b;
                let patched = patch::apply(&pod, &injection.ops).expect("the patch applies");
                let spec = &patched["spec"];
                if cni {
                    let check = named(spec, "initContainers", VALIDATE_NAME).expect("the check");
                    assert_eq!(check_accepts(check), injection.init, "{name}={value}");
                    let annotations = &patched["metadata"]["annotations"];
                    assert_eq!(
                        redirect_accepts(annotations),
                        injection.init,
                        "{name}={value}"
                    );
                    assert!(named(spec, "initContainers", INIT_NAME).is_none());
                } else {
                    let init = named(spec, "initContainers", INIT_NAME).expect("init container");
                    assert_eq!(init_accepts(init), injection.init, "{name}={value}");
                }
                let side = named(spec, "initContainers", SIDECAR_NAME)
                    .or_else(|| named(spec, "containers", SIDECAR_NAME))
                    .expect("sidecar");
                assert_eq!(
                    sidecar_accepts(side, &certs),
                    injection.sidecar,
                    "{name}={value}"
                );
            }
        }
    }
}

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_contract_page_is_generated_from_the_flags() {
    assert_eq!(
        repo_file("docs/contract.md"),
        kube_mtls_webhook::docs::contract_page(),
        "docs/contract.md is stale: run scripts/generate.sh"
    );
}

/// The flags of `command` (and of its subcommands when `deep`) without help/version.
fn longs(command: &clap::Command, deep: bool) -> Vec<String> {
    let mut out: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("`--{l}`"))
        .collect();
    if deep {
        for sub in command
            .get_subcommands()
            .filter(|s| s.get_name() == "serve")
        {
            out.extend(longs(sub, false));
        }
    }
    out
}

#[test]
fn the_readme_lists_every_flag_of_every_binary() {
    use clap::CommandFactory;
    let readme = repo_file("README.md");
    let section = |name: &str| {
        let start = readme
            .find(&format!("<!-- section: {name} -->"))
            .unwrap_or_else(|| panic!("no README section {name}"));
        let end = readme[start..]
            .find(&format!("<!-- /section: {name} -->"))
            .unwrap_or_else(|| panic!("README section {name} is not closed"));
        &readme[start..start + end]
    };
    let cases = [
        (
            "sidecar",
            longs(&kube_mtls_sidecar::config::Args::command(), false),
        ),
        (
            "init",
            longs(&kube_mtls_init::config::Args::command(), false),
        ),
        (
            "webhook",
            longs(&kube_mtls_webhook::cli::Cli::command(), true),
        ),
    ];
    for (name, flags) in cases {
        let text = section(name);
        for flag in flags {
            assert!(
                text.contains(&flag),
                "README section {name} does not mention {flag}"
            );
        }
    }
}
