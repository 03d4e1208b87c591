//! The Certificate logic and the controller's reconcile against a mock API
//! server: each test scripts the requests it expects (method, path, body) and
//! the answers the API server gives.
//!
//! The Certificate here was made for a pod whose MtlsProfile asked for a
//! 720h/240h lifetime, while the webhook's flags say 24h/8h: the controller
//! must keep the profile's lifetime, not fall back to the flags.

mod api_mock;

use std::time::Duration;

use http::{Method, StatusCode};
use kube::Client;
use kube::api::DynamicObject;
use kube_mtls_webhook::certificate::{DesiredCertificate, ensure_certificate};
use kube_mtls_webhook::controller::{Context, Outcome, reconcile_certificate};
use kube_mtls_webhook::profile::IssuerRef;
use serde_json::{Value, json};

use api_mock::{ApiHandle, expect, mock, reply};

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{what} not found"), "reason": "NotFound", "code": 404})
}

fn desired() -> DesiredCertificate {
    DesiredCertificate {
        namespace: "shop".into(),
        service_account: "orders".into(),
        trust_domain: "cluster.local".into(),
        dns_names: vec!["orders.shop.svc".into()],
        issuer: IssuerRef {
            kind: "ClusterIssuer".into(),
            name: "kube-mtls-ca".into(),
        },
        duration: "720h".into(),
        renew_before: "240h".into(),
    }
}

const CERT_PATH: &str = "/apis/cert-manager.io/v1/namespaces/shop/certificates/kube-mtls-orders";
const SA_PATH: &str = "/api/v1/namespaces/shop/serviceaccounts/orders";

#[tokio::test]
async fn ensure_certificate_server_side_applies_the_identity() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (body, query, send) = expect(&mut api, Method::PATCH, CERT_PATH).await;
        assert!(
            query.contains("fieldManager=kube-mtls-webhook") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(body["kind"], "Certificate");
        assert_eq!(
            body["spec"]["uris"],
            json!(["spiffe://cluster.local/ns/shop/sa/orders"])
        );
        assert_eq!(body["spec"]["secretName"], "kube-mtls-orders-tls");
        assert_eq!(
            body["spec"]["usages"],
            json!([
                "digital signature",
                "key encipherment",
                "server auth",
                "client auth"
            ])
        );
        assert_eq!(
            body["spec"]["privateKey"],
            json!({"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"})
        );
        assert_eq!(body["spec"]["duration"], "720h");
        assert_eq!(body["spec"]["renewBefore"], "240h");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kube-mtls"
        );
        assert_eq!(
            body["metadata"]["annotations"],
            json!({
                "kube-mtls.io/trust-domain": "cluster.local",
                "kube-mtls.io/dns-names": "orders.shop.svc",
                "kube-mtls.io/issuer": "ClusterIssuer/kube-mtls-ca",
                "kube-mtls.io/duration": "720h",
                "kube-mtls.io/renew-before": "240h",
            }),
            "everything the controller rebuilds from is recorded"
        );
        reply(send, StatusCode::OK, body);
    });
    ensure_certificate(&client, &desired()).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn ensure_certificate_reports_api_errors() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut api, Method::PATCH, CERT_PATH).await;
        reply(
            send,
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "certificates.cert-manager.io is forbidden", "reason": "Forbidden", "code": 403}),
        );
    });
    let err = ensure_certificate(&client, &desired()).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    server.await.unwrap();
}

fn existing(spec: Value) -> DynamicObject {
    let mut obj = desired().object();
    obj["spec"] = spec;
    obj["metadata"]["resourceVersion"] = json!("7");
    serde_json::from_value(obj).unwrap()
}

/// The webhook's flags: not what the Certificate was made with.
fn ctx(client: Client) -> Context {
    Context {
        client,
        duration: "24h".into(),
        renew_before: "8h".into(),
        metrics: std::sync::Arc::new(kube_mtls_webhook::metrics::Metrics::new()),
    }
}

/// Answers the service account look-up every live reconcile starts with.
async fn service_account_exists(api: &mut ApiHandle) {
    let (_, _, send) = expect(api, Method::GET, SA_PATH).await;
    reply(
        send,
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "orders", "namespace": "shop"}}),
    );
}

/// Asserts the reconcile sent nothing more: the request stream ends once the
/// caller drops its client (bounded, so a leaked client fails the test).
async fn no_more_requests(mut api: ApiHandle) {
    let next = tokio::time::timeout(Duration::from_secs(30), api.next_request())
        .await
        .expect("the client was not dropped after the reconcile");
    assert!(
        next.is_none(),
        "unexpected request after an in-line reconcile"
    );
}

#[tokio::test]
async fn certificate_of_a_deleted_service_account_is_removed() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut api, Method::GET, SA_PATH).await;
        reply(
            send,
            StatusCode::NOT_FOUND,
            not_found("serviceaccounts \"orders\""),
        );
        let (_, _, send) = expect(&mut api, Method::DELETE, CERT_PATH).await;
        reply(
            send,
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        );
    });
    let outcome = reconcile_certificate(&existing(desired().spec()), &ctx(client))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Deleted);
    server.await.unwrap();
}

#[tokio::test]
async fn the_profiles_lifetime_is_kept_not_reverted_to_the_flags() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        no_more_requests(api).await;
    });
    let cert = existing(desired().spec());
    assert_eq!(cert.data["spec"]["duration"], "720h");
    let outcome = reconcile_certificate(&cert, &ctx(client)).await.unwrap();
    assert_eq!(outcome, Outcome::InLine);
    server.await.unwrap();
}

#[tokio::test]
async fn a_hand_edited_certificate_gets_its_recorded_values_back() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        let (body, query, send) = expect(&mut api, Method::PATCH, CERT_PATH).await;
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(body["spec"]["duration"], "720h", "the recorded duration");
        assert_eq!(body["spec"]["renewBefore"], "240h");
        assert_eq!(
            body["spec"]["uris"],
            json!(["spiffe://cluster.local/ns/shop/sa/orders"])
        );
        assert_eq!(body["spec"]["dnsNames"], json!(["orders.shop.svc"]));
        assert_eq!(
            body["metadata"]["annotations"]["kube-mtls.io/duration"],
            "720h"
        );
        reply(send, StatusCode::OK, body);
    });
    let mut edited = desired().spec();
    edited["duration"] = json!("8760h");
    edited["uris"] = json!(["spiffe://cluster.local/ns/shop/sa/admin"]);
    let outcome = reconcile_certificate(&existing(edited), &ctx(client))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Updated);
    server.await.unwrap();
}

/// A Certificate made before the lifetime was recorded: what its spec says.
fn made_before_the_lifetime_was_recorded() -> DynamicObject {
    let mut obj = desired().object();
    let ann = obj["metadata"]["annotations"].as_object_mut().unwrap();
    ann.remove("kube-mtls.io/duration");
    ann.remove("kube-mtls.io/renew-before");
    obj["spec"]["duration"] = json!("48h");
    obj["spec"]["renewBefore"] = json!("16h");
    serde_json::from_value(obj).unwrap()
}

#[tokio::test]
async fn an_older_certificate_keeps_its_lifetime_and_has_it_recorded() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        let (body, _, send) = expect(&mut api, Method::PATCH, CERT_PATH).await;
        assert_eq!(body["spec"]["duration"], "48h", "kept, not the flags' 24h");
        assert_eq!(body["spec"]["renewBefore"], "16h");
        assert_eq!(
            body["metadata"]["annotations"]["kube-mtls.io/duration"],
            "48h"
        );
        assert_eq!(
            body["metadata"]["annotations"]["kube-mtls.io/renew-before"],
            "16h"
        );
        reply(send, StatusCode::OK, body.clone());
        body
    });
    let flags = ctx(client);
    let old = made_before_the_lifetime_was_recorded();
    let outcome = reconcile_certificate(&old, &flags).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    let applied = server.await.unwrap();

    // Once recorded, the next reconcile settles.
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        no_more_requests(api).await;
    });
    let flags = Context { client, ..flags };
    let recorded: DynamicObject = serde_json::from_value(applied).unwrap();
    let outcome = reconcile_certificate(&recorded, &flags).await.unwrap();
    assert_eq!(outcome, Outcome::InLine);
    drop(flags); // the mock sees the end of requests once the client is gone
    server.await.unwrap();
}

#[tokio::test]
async fn certificate_in_line_is_left_alone() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        no_more_requests(api).await;
    });
    let outcome = reconcile_certificate(&existing(desired().spec()), &ctx(client))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::InLine);
    server.await.unwrap();
}

/// The Certificate as a real API server returns it: server metadata, fields
/// cert-manager defaults, another manager's annotation, a status.
fn as_the_api_server_returns_it() -> DynamicObject {
    let mut obj = desired().object();
    let meta = &mut obj["metadata"];
    meta["uid"] = json!("5f1c1b8e-0d0e-4c53-9d1e-2f7d3c9a0b11");
    meta["resourceVersion"] = json!("4711");
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    meta["managedFields"] = json!([{"manager": "kube-mtls-webhook", "operation": "Apply",
        "apiVersion": "cert-manager.io/v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!("{}");
    obj["spec"]["privateKey"]["encoding"] = json!("PKCS1");
    obj["spec"]["revisionHistoryLimit"] = json!(1);
    obj["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}], "revision": 1});
    serde_json::from_value(obj).unwrap()
}

#[tokio::test]
async fn fields_the_server_adds_do_not_cause_an_apply() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        service_account_exists(&mut api).await;
        no_more_requests(api).await;
    });
    let outcome = reconcile_certificate(&as_the_api_server_returns_it(), &ctx(client))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::InLine);
    server.await.unwrap();
}

#[tokio::test]
async fn certificates_not_made_by_us_are_ignored() {
    let (client, api) = mock();
    let foreign: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "shop"}, "spec": {"secretName": "web-tls"}
    }))
    .unwrap();
    assert_eq!(
        reconcile_certificate(&foreign, &ctx(client)).await.unwrap(),
        Outcome::Ignored
    );
    drop(api);
}
