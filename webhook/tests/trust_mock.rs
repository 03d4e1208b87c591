//! The trust bundle's controller and admission against a mock API server, in
//! the style of controller_mock.rs: each test scripts the requests it expects
//! (method, path, body) and the answers the API server gives.
//!
//! The story is a CA rotation: the issuer's CA Secret changes (renewed with a
//! new key, or deleted and made anew), the master ConfigMap and every
//! namespace's `kube-mtls-trust` get the new CA while keeping the old one,
//! and a reconcile that finds nothing to change sends nothing.

mod api_mock;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube_mtls_tests::certs::TestCa;
use kube_mtls_webhook::admission::Admission;
use kube_mtls_webhook::cli::unset_defaults;
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::metrics::Metrics;
use kube_mtls_webhook::profile::{IssuerRef, MtlsProfile};
use kube_mtls_webhook::trust::bundle::{self, Bundle};
use kube_mtls_webhook::trust::controller::{
    Located, Snapshot, TrustContext, locate_ca, reconcile_trust,
};
use kube_mtls_webhook::trust::der::{CaCert, pem_certs};
use kube_mtls_webhook::trust::{TrustShared, TrustView};
use serde_json::{Value, json};

use api_mock::{ApiHandle, expect, mock, reply};

const NOW: i64 = 1_893_456_000; // 2030-01-01
const DAY: i64 = 86_400;
const MASTER: &str = "/api/v1/namespaces/kube-mtls/configmaps/kube-mtls-trust-bundle";

/// Answers a server-side apply with what was sent, and returns it.
async fn applied(api: &mut ApiHandle, path: &str) -> Value {
    let (body, query, send) = expect(api, Method::PATCH, path).await;
    assert!(
        query.contains("fieldManager=kube-mtls-webhook") && query.contains("force=true"),
        "{query}"
    );
    reply(send, StatusCode::OK, body.clone());
    body
}

/// Asserts nothing more was sent once the caller dropped its client.
async fn no_more_requests(mut api: ApiHandle) {
    let next = tokio::time::timeout(Duration::from_secs(30), api.next_request())
        .await
        .expect("the client was not dropped");
    assert!(next.is_none(), "unexpected request");
}

fn ctx(client: Client) -> TrustContext {
    TrustContext {
        client,
        namespace: "kube-mtls".into(),
        issuer: IssuerRef {
            kind: "ClusterIssuer".into(),
            name: "kube-mtls-ca".into(),
        },
        cluster_resource_namespace: "cert-manager".into(),
        min_retention: DAY,
        shared: Arc::new(TrustShared::default()),
        events: None,
    }
}

fn cert(ca: &TestCa) -> CaCert {
    pem_certs(&ca.cert_pem).unwrap().remove(0)
}

/// The CA Secret cert-manager writes for a self-signed CA Certificate.
fn ca_secret(ca: &TestCa) -> Secret {
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), b(&ca.cert_pem)),
            ("tls.key".to_owned(), b("key")),
            ("ca.crt".to_owned(), b(&ca.cert_pem)),
        ])),
        ..Secret::default()
    }
}

fn configmap(ns: &str, name: &str, data: BTreeMap<String, String>, rv: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "data": data,
    }))
    .unwrap()
}

/// The master as the controller left it with `cas` current at `at`.
fn master_with(cas: &[CaCert], at: i64) -> (Bundle, ConfigMap) {
    let b = bundle::merge(&Bundle::default(), cas, at, DAY);
    let cm = configmap("kube-mtls", "kube-mtls-trust-bundle", b.data(), "5");
    (b, cm)
}

fn trust_cm(ns: &str, pem: &str) -> ConfigMap {
    let data = BTreeMap::from([("ca-bundle.crt".to_owned(), pem.to_owned())]);
    configmap(ns, "kube-mtls-trust", data, "9")
}

#[tokio::test]
async fn a_new_ca_reaches_the_master_and_every_namespace_and_the_old_one_stays() {
    let (old, new) = (TestCa::new("workload CA"), TestCa::new("workload CA"));
    let (before, master) = master_with(&[cert(&old)], NOW - 30 * DAY);
    let snap = Snapshot {
        ca_secret: Some(ca_secret(&new)),
        master: Some(master),
        configmaps: vec![trust_cm("shop", &before.pem())],
        namespaces: BTreeSet::from(["shop".to_owned(), "web".to_owned()]),
        retention: 2 * DAY,
    };
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let master = applied(&mut api, MASTER).await;
        let shop = applied(
            &mut api,
            "/api/v1/namespaces/shop/configmaps/kube-mtls-trust",
        )
        .await;
        let web = applied(
            &mut api,
            "/api/v1/namespaces/web/configmaps/kube-mtls-trust",
        )
        .await;
        (master, shop, web)
    });
    let c = ctx(client);
    let outcome = reconcile_trust(&c, &snap, NOW).await.unwrap();
    let (master, shop, web) = server.await.unwrap();

    assert!(outcome.master);
    assert_eq!(outcome.namespaces, ["shop", "web"]);
    assert_eq!(outcome.cas, 2);
    assert_eq!(master["metadata"]["resourceVersion"], "5", "no lost update");
    assert_eq!(
        master["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kube-mtls"
    );
    let pem = master["data"]["ca-bundle.crt"].as_str().unwrap();
    assert!(pem.contains(&cert(&old).pem) && pem.contains(&cert(&new).pem));
    let retention: Value =
        serde_json::from_str(master["data"]["retention.json"].as_str().unwrap()).unwrap();
    assert_eq!(retention[&cert(&new).fingerprint]["retainUntil"], "current");
    assert_eq!(
        retention[&cert(&old).fingerprint]["retainUntil"],
        bundle::rfc3339(NOW + 2 * DAY),
        "kept for the longest certificate lifetime after it stopped being current"
    );
    for ns in [&shop, &web] {
        assert_eq!(ns["data"]["ca-bundle.crt"], pem);
        assert_eq!(
            ns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kube-mtls"
        );
    }
    assert_eq!(c.shared.bundle().as_deref(), Some(pem));
}

#[tokio::test]
async fn the_same_ca_seen_again_sends_nothing() {
    let ca = TestCa::new("workload CA");
    let (b, master) = master_with(&[cert(&ca)], NOW - DAY);
    let snap = Snapshot {
        ca_secret: Some(ca_secret(&ca)),
        master: Some(master),
        configmaps: vec![trust_cm("shop", &b.pem())],
        namespaces: BTreeSet::from(["shop".to_owned()]),
        retention: DAY,
    };
    let (client, api) = mock();
    let server = tokio::spawn(no_more_requests(api));
    let c = ctx(client);
    let outcome = reconcile_trust(&c, &snap, NOW).await.unwrap();
    assert_eq!((outcome.master, outcome.namespaces.len()), (false, 0));
    assert_eq!(c.shared.bundle().as_deref(), Some(b.pem().as_str()));
    drop(c);
    server.await.unwrap();
}

#[tokio::test]
async fn a_deleted_ca_secret_keeps_the_bundle_and_a_remade_one_is_added() {
    let (old, remade) = (TestCa::new("workload CA"), TestCa::new("workload CA"));
    let (b, master) = master_with(&[cert(&old)], NOW - DAY);
    let mut snap = Snapshot {
        ca_secret: None,
        master: Some(master),
        configmaps: vec![trust_cm("shop", &b.pem())],
        namespaces: BTreeSet::from(["shop".to_owned()]),
        retention: DAY,
    };
    let (client, api) = mock();
    let server = tokio::spawn(no_more_requests(api));
    let c = ctx(client);
    let outcome = reconcile_trust(&c, &snap, NOW).await.unwrap();
    assert!(!outcome.master && outcome.namespaces.is_empty());
    drop(c);
    server.await.unwrap();

    // Made anew with a new key: the old CA stays from what the master holds.
    snap.ca_secret = Some(ca_secret(&remade));
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let master = applied(&mut api, MASTER).await;
        applied(
            &mut api,
            "/api/v1/namespaces/shop/configmaps/kube-mtls-trust",
        )
        .await;
        master
    });
    reconcile_trust(&ctx(client), &snap, NOW).await.unwrap();
    let master = server.await.unwrap();
    let pem = master["data"]["ca-bundle.crt"].as_str().unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(pem.contains(&cert(&old).pem));
}

#[tokio::test]
async fn the_first_ca_creates_the_master_and_the_namespace_copies() {
    let ca = TestCa::new("workload CA");
    let snap = Snapshot {
        ca_secret: Some(ca_secret(&ca)),
        namespaces: BTreeSet::from(["shop".to_owned(), "kube-mtls".to_owned()]),
        retention: DAY,
        ..Snapshot::default()
    };
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let master = applied(&mut api, MASTER).await;
        applied(
            &mut api,
            "/api/v1/namespaces/shop/configmaps/kube-mtls-trust",
        )
        .await;
        no_more_requests(api).await;
        master
    });
    let outcome = reconcile_trust(&ctx(client), &snap, NOW).await.unwrap();
    let master = server.await.unwrap();
    assert!(master["metadata"].get("resourceVersion").is_none());
    assert_eq!(
        outcome.namespaces,
        ["shop"],
        "never into the webhook's own namespace"
    );
}

#[tokio::test]
async fn an_early_retirement_removes_the_old_ca_and_never_the_current_one() {
    let (old, new) = (TestCa::new("workload CA"), TestCa::new("workload CA"));
    let (b, _) = master_with(&[cert(&old)], NOW - DAY);
    let rotated = bundle::merge(&b, &[cert(&new)], NOW - DAY / 2, DAY);
    let mut master = configmap("kube-mtls", "kube-mtls-trust-bundle", rotated.data(), "7");
    let retire = format!(
        "{},{}",
        &cert(&old).fingerprint[..16],
        cert(&new).fingerprint
    );
    master.metadata.annotations =
        Some(BTreeMap::from([("kube-mtls.io/retire".to_owned(), retire)]));
    let snap = Snapshot {
        ca_secret: Some(ca_secret(&new)),
        master: Some(master),
        configmaps: vec![trust_cm("shop", &rotated.pem())],
        namespaces: BTreeSet::from(["shop".to_owned()]),
        retention: DAY,
    };
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let master = applied(&mut api, MASTER).await;
        let shop = applied(
            &mut api,
            "/api/v1/namespaces/shop/configmaps/kube-mtls-trust",
        )
        .await;
        (master, shop)
    });
    let outcome = reconcile_trust(&ctx(client), &snap, NOW).await.unwrap();
    let (master, shop) = server.await.unwrap();
    assert_eq!(outcome.cas, 1);
    assert_eq!(master["data"]["ca-bundle.crt"], cert(&new).pem);
    assert_eq!(shop["data"]["ca-bundle.crt"], cert(&new).pem);
    assert!(
        master["metadata"].get("annotations").is_none(),
        "the annotation stays the user's"
    );
}

#[tokio::test]
async fn an_issuer_that_is_not_a_ca_issuer_falls_back_and_says_how_to_fix_it() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(
            &mut api,
            Method::GET,
            "/apis/cert-manager.io/v1/clusterissuers/kube-mtls-ca",
        )
        .await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
                "metadata": {"name": "kube-mtls-ca"}, "spec": {"vault": {"server": "https://vault"}}}),
        );
        let (_, _, send) = expect(
            &mut api,
            Method::GET,
            "/apis/cert-manager.io/v1/clusterissuers/kube-mtls-ca",
        )
        .await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
                "metadata": {"name": "kube-mtls-ca"}, "spec": {"ca": {"secretName": "kube-mtls-ca"}}}),
        );
    });
    let c = ctx(client);
    assert_eq!(locate_ca(&c).await, Located::NotCa);
    let why = c.shared.fallback().expect("a reason");
    assert!(
        why.contains("--trust-bundle-source")
            && why.contains("KUBE_MTLS_TRUST_BUNDLE_SOURCE")
            && why.contains("has vault"),
        "{why}"
    );
    match locate_ca(&c).await {
        Located::Ca(at) => assert_eq!(at.to_string(), "cert-manager/kube-mtls-ca"),
        other => panic!("{other:?}"),
    }
    server.await.unwrap();
}

/// An AdmissionReview creating an opted-in pod in `shop`.
fn review() -> Vec<u8> {
    let pod = json!({"metadata": {"name": "orders-1", "annotations": {"kube-mtls.io/inject": "enabled"}},
        "spec": {"serviceAccountName": "orders", "containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}]}});
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod}}))
    .unwrap()
}

/// A live view whose trust bundle is `pem` and whose ConfigMap cache holds `cached`.
fn live_view(pem: &str, cached: Option<ConfigMap>) -> ClusterView {
    let (configmaps, mut writer) = reflector::store::<ConfigMap>();
    if let Some(cm) = cached {
        writer.apply_watcher_event(&watcher::Event::Apply(cm));
    }
    let shared = Arc::new(TrustShared::default());
    shared.set_bundle(pem.to_owned());
    let (profiles, _): (Store<MtlsProfile>, _) = reflector::store();
    let (namespaces, _): (Store<Namespace>, _) = reflector::store();
    ClusterView::Live {
        profiles,
        namespaces,
        trust: Some(TrustView { shared, configmaps }),
    }
}

fn admission(client: Client, view: ClusterView) -> Admission {
    Admission {
        defaults: unset_defaults(true),
        own_namespace: "kube-mtls".into(),
        view,
        client: Some(client),
        metrics: Arc::new(Metrics::new()),
        events: None,
    }
}

const CERT: &str = "/apis/cert-manager.io/v1/namespaces/shop/certificates/kube-mtls-orders";

#[tokio::test]
async fn the_first_pod_of_a_namespace_creates_its_trust_configmap_and_later_ones_send_nothing_more()
{
    let ca = TestCa::new("workload CA");
    let pem = cert(&ca).pem;
    let (client, mut api) = mock();
    let p = pem.clone();
    let server = tokio::spawn(async move {
        applied(&mut api, CERT).await;
        let cm = applied(
            &mut api,
            "/api/v1/namespaces/shop/configmaps/kube-mtls-trust",
        )
        .await;
        assert_eq!(cm["data"]["ca-bundle.crt"], p);
    });
    let a = admission(client, live_view(&pem, None));
    let r = a.review(&review()).await.unwrap();
    assert_eq!(r["response"]["allowed"], true, "{r}");
    drop(a);
    server.await.unwrap();

    // In the cache: only the Certificate is applied, as before the bundle.
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        applied(&mut api, CERT).await;
        no_more_requests(api).await;
    });
    let a = admission(client, live_view(&pem, Some(trust_cm("shop", &pem))));
    let r = a.review(&review()).await.unwrap();
    assert_eq!(r["response"]["allowed"], true, "{r}");
    drop(a);
    server.await.unwrap();
}

#[tokio::test]
async fn until_there_is_a_bundle_pods_trust_their_own_ca_crt() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        applied(&mut api, CERT).await;
        no_more_requests(api).await;
    });
    let (configmaps, _) = reflector::store::<ConfigMap>();
    let (profiles, _): (Store<MtlsProfile>, _) = reflector::store();
    let (namespaces, _): (Store<Namespace>, _) = reflector::store();
    let shared = Arc::new(TrustShared::default());
    shared.set_fallback(
        "--trust-bundle-source=configmap (KUBE_MTLS_TRUST_BUNDLE_SOURCE): not a CA issuer".into(),
    );
    let view = ClusterView::Live {
        profiles,
        namespaces,
        trust: Some(TrustView { shared, configmaps }),
    };
    let a = admission(client, view);
    let r = a.review(&review()).await.unwrap();
    let warnings = r["response"]["warnings"].to_string();
    assert!(
        warnings.contains("own Secret's ca.crt")
            && warnings.contains("KUBE_MTLS_TRUST_BUNDLE_SOURCE"),
        "{r}"
    );
    let patch = r["response"]["patch"].as_str().unwrap();
    let ops = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, patch).unwrap();
    let ops = String::from_utf8(ops).unwrap();
    assert!(
        !ops.contains("kube-mtls-trust") && !ops.contains("--trust-bundle"),
        "{ops}"
    );
    drop(a);
    server.await.unwrap();
}
