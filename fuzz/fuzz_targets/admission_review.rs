//! AdmissionReview bytes → the webhook's `POST /mutate` handler logic
//! (`Admission::review`, standalone: no API client, no Events, an empty
//! cluster view) → the AdmissionReview response.
//!
//! Why: this is the input that anyone allowed to create a pod controls end to
//! end, and the webhook runs with failurePolicy=Fail, so a panic here blocks
//! pod creation in every opted-in namespace. Checks: no panic; a response
//! answers the request's uid; a returned patch is base64 RFC 6902 JSON Patch
//! that applies to the pod it was made for, the patched pod reads as already
//! injected, and the injected init and sidecar accept their own args
//! (`kube_mtls_fuzz::check_injection`; probe targets aside, since a fuzzed
//! pod need not pass the API server's validation).
//!
//! Seeds: `fuzz/corpus/admission_review/`, AdmissionReviews around the pods
//! of `webhook/tests/golden/*.yaml`; `fuzz/dicts/admission_review.dict`.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine;
use kube_mtls_fuzz::{OWN_NAMESPACE, check_injection};
use kube_mtls_webhook::admission::Admission;
use kube_mtls_webhook::cli::unset_defaults;
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn admission() -> &'static Admission {
    static A: OnceLock<Admission> = OnceLock::new();
    A.get_or_init(|| Admission {
        defaults: unset_defaults(true),
        own_namespace: OWN_NAMESPACE.into(),
        view: ClusterView::empty(),
        client: None,
        metrics: Arc::new(Metrics::new()),
        events: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let a = admission();
    // No client and no recorder: nothing in `review` awaits I/O.
    let Ok(resp) = futures::executor::block_on(a.review(data)) else {
        return; // a 400 for a body that is not an AdmissionReview
    };
    let req: Value = serde_json::from_slice(data).expect("review accepted a body that is not JSON");
    let req = &req["request"];
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(
        resp["response"]["uid"], req["uid"],
        "the response answers another uid"
    );
    assert!(
        resp["response"]["allowed"].is_boolean(),
        "no allowed: {resp}"
    );
    let Some(patch) = resp["response"].get("patch") else {
        return;
    };
    assert_eq!(
        resp["response"]["allowed"], true,
        "a patch on a refusal: {resp}"
    );
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let ops: Value = serde_json::from_slice(&bytes).expect("patch is JSON");
    let pod = &req["object"];
    let namespace = req
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    // Once found by fuzzing: a pod without `spec.containers` got a patch that
    // did not apply; it is refused now. fuzz/regressions/admission_review/no-containers-*.json.
    check_injection(pod, &ops, namespace, &a.view, &a.defaults, false);
});
