//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! The main one is [`check_injection`]: a patch the webhook returns must apply
//! to the pod it was made for, the patched pod must read as already injected,
//! and the init container's and the sidecar's arguments, as injected, must be
//! accepted by `kube-mtls-init`'s and `kube-mtls-sidecar`'s own flag parsers
//! (otherwise the pod is admitted and then crash-loops).

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Parser;
use kube_mtls_contract::names::{CNI_REDIRECT, VALIDATE_NAME};
use kube_mtls_webhook::admission::{self, Decision, Skip};
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::patch::{INIT_NAME, SIDECAR_NAME};
use kube_mtls_webhook::resolve::Defaults;
use serde_json::Value;

/// The webhook's namespace in every target.
pub const OWN_NAMESPACE: &str = "kube-mtls";

/// A directory with empty `tls.crt`, `tls.key`, `ca.crt` and `ca-bundle.crt`
/// (the trust bundle): the sidecar's flag validation only checks that they
/// are files.
fn cert_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kube-mtls-fuzz-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz cert dir");
        for f in ["tls.crt", "tls.key", "ca.crt", "ca-bundle.crt"] {
            std::fs::write(dir.join(f), b"").expect("write a fuzz cert file");
        }
        dir
    })
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod.pointer(&format!("/spec/{list}"))?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn args(c: &Value) -> Vec<String> {
    c.get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| a.as_str().expect("an injected arg is a string").to_owned())
        .collect()
}

/// Applies `ops` to `pod` and checks what the patched pod says (see the module header).
/// Panics with the offending ops/args when a check fails.
///
/// `api_valid`: whether `pod` is one the API server's validation accepts
/// (after mutation). Only then are the probe targets the webhook copies
/// from it (`KUBE_MTLS_APP_PROBES`) held to the sidecar's parser: an invalid
/// probe (say an `httpHeaders` entry without `value`) is refused by the API
/// server before any sidecar runs.
pub fn check_injection(
    pod: &Value,
    ops: &Value,
    namespace: &str,
    view: &ClusterView,
    defaults: &Defaults,
    api_valid: bool,
) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(ops.clone())
        .unwrap_or_else(|e| panic!("the patch is not RFC 6902 JSON Patch: {e}\nops: {ops}"));
    let mut patched = pod.clone();
    if let Err(e) = json_patch::patch(&mut patched, &patch) {
        panic!("the patch does not apply to the pod it was made for: {e}\npod: {pod}\nops: {ops}");
    }

    // A reinvocation (reinvocationPolicy: IfNeeded) or a resubmission of the
    // injected pod must be a no-op.
    match admission::decide(&patched, namespace, OWN_NAMESPACE, view, defaults) {
        Decision::Skip(Skip::AlreadyInjected) => {}
        other => panic!("the injected pod is not seen as injected: {other:?}\npatched: {patched}"),
    }

    check_redirect(&patched);

    // The sidecar: args and env (as flags), the cert dir and the trust
    // bundle swapped for ones that exist.
    let sidecar = container(&patched, "initContainers", SIDECAR_NAME)
        .or_else(|| container(&patched, "containers", SIDECAR_NAME))
        .unwrap_or_else(|| panic!("no {SIDECAR_NAME} in the patched pod: {patched}"));
    let all_args = args(sidecar);
    let bundle = all_args.iter().any(|a| a.starts_with("--trust-bundle="));
    let mut sidecar_args: Vec<String> = all_args
        .into_iter()
        .filter(|a| !a.starts_with("--cert-dir=") && !a.starts_with("--trust-bundle="))
        .collect();
    sidecar_args.push(format!("--cert-dir={}", cert_dir().display()));
    if bundle {
        sidecar_args.push(format!(
            "--trust-bundle={}",
            cert_dir().join("ca-bundle.crt").display()
        ));
    }
    let mut env = Vec::new();
    for e in sidecar
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(value)) = (
            e.get("name").and_then(Value::as_str),
            e.get("value").and_then(Value::as_str),
        ) else {
            continue;
        };
        if name == "KUBE_MTLS_APP_PROBES" && !api_valid {
            continue;
        }
        env.push((name.to_owned(), value.to_owned()));
    }
    // Once found by fuzzing: a DNS label over 63 characters that the webhook
    // took and the sidecar refused. fuzz/regressions/admission_review/long-dns-label.json.
    let parsed: kube_mtls_sidecar::config::Args =
        kube_mtls_contract::parse_container(SIDECAR_NAME, &sidecar_args, &env).unwrap_or_else(
            |e| panic!("kube-mtls-sidecar refuses its injected args {sidecar_args:?} {env:?}: {e}"),
        );
    if let Err(e) = kube_mtls_sidecar::config::Config::from_args(&parsed) {
        panic!("kube-mtls-sidecar refuses its injected args {sidecar_args:?} {env:?}: {e}");
    }
    patched
}

/// `kube-mtls-init`'s args through its own parser and validation.
fn init_accepts(init_args: &[String], what: &str) {
    let parsed = kube_mtls_init::config::Args::try_parse_from(
        std::iter::once("kube-mtls-init".to_owned()).chain(init_args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("kube-mtls-init refuses {what} {init_args:?}: {e}"));
    if let Err(e) = kube_mtls_init::config::Config::from_args(&parsed) {
        panic!("kube-mtls-init refuses {what} {init_args:?}: {e}");
    }
}

/// Whichever way the pod's rules come: the init container's args, or (CNI
/// mode) the validation container's args and the annotation the CNI plugin
/// applies, with no capability added to any container of the pod.
fn check_redirect(patched: &Value) {
    if let Some(validate) = container(patched, "initContainers", VALIDATE_NAME) {
        let validate_args = args(validate);
        assert!(
            validate_args.iter().any(|a| a == "--validate"),
            "{validate_args:?}"
        );
        init_accepts(&validate_args, "the validation container's args");
        let annotation = patched
            .pointer(&format!(
                "/metadata/annotations/{}",
                CNI_REDIRECT.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("CNI mode without {CNI_REDIRECT}: {patched}"));
        let listed: Vec<String> = serde_json::from_str(annotation).unwrap_or_else(|e| {
            panic!("{CNI_REDIRECT} is not a list of strings: {e}: {annotation}")
        });
        init_accepts(&listed, "the CNI plugin's annotation");
        assert!(
            container(patched, "initContainers", INIT_NAME).is_none(),
            "{patched}"
        );
        assert!(
            !patched.to_string().contains("NET_ADMIN"),
            "CNI mode added NET_ADMIN: {patched}"
        );
        return;
    }
    let init = container(patched, "initContainers", INIT_NAME)
        .unwrap_or_else(|| panic!("no {INIT_NAME} in the patched pod: {patched}"));
    init_accepts(&args(init), "its injected args");
}
