//! The Certificate logic and the controller's reconcile against a mock API
//! server: each test scripts the requests it expects (method, path, body) and
//! the answers the API server gives.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use kube_mtls_webhook::certificate::{DesiredCertificate, ensure_certificate};
use kube_mtls_webhook::controller::{Context, Outcome, reconcile_certificate};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock() -> (Client, ApiHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

/// Takes the next request, checks method and path, returns its JSON body.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, String, SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let query = req.uri().query().unwrap_or("").to_owned();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, query, send)
}

fn reply(send: SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

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
        issuer: ("ClusterIssuer".into(), "kube-mtls-ca".into()),
        duration: "24h".into(),
        renew_before: "8h".into(),
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
        assert_eq!(body["spec"]["duration"], "24h");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kube-mtls"
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

fn ctx(client: Client) -> Context {
    Context {
        client,
        duration: "24h".into(),
        renew_before: "8h".into(),
    }
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
async fn drifted_certificate_is_brought_back_in_line() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut api, Method::GET, SA_PATH).await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "orders", "namespace": "shop"}}),
        );
        let (body, _, send) = expect(&mut api, Method::PATCH, CERT_PATH).await;
        assert_eq!(
            body["spec"]["duration"], "24h",
            "the current setting is applied again"
        );
        assert_eq!(body["spec"]["dnsNames"], json!(["orders.shop.svc"]));
        reply(send, StatusCode::OK, body);
    });
    let mut drifted = desired().spec();
    drifted["duration"] = json!("8760h");
    drifted["uris"] = json!(["spiffe://cluster.local/ns/shop/sa/admin"]);
    let outcome = reconcile_certificate(&existing(drifted), &ctx(client))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Updated);
    server.await.unwrap();
}

#[tokio::test]
async fn certificate_in_line_is_left_alone() {
    let (client, mut api) = mock();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut api, Method::GET, SA_PATH).await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "orders", "namespace": "shop"}}),
        );
        // No further request may come.
        assert!(
            api.next_request().await.is_none(),
            "unexpected request after an in-line reconcile"
        );
    });
    let outcome = reconcile_certificate(&existing(desired().spec()), &ctx(client))
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
