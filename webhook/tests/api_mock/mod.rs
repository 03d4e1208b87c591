//! A scripted API server for the controller tests (controller_mock.rs,
//! trust_mock.rs): each test takes the requests the code sends, one at a
//! time, checks method and path, and answers as the API server would.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A client whose every request arrives at the returned handle.
pub fn mock() -> (Client, ApiHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

/// Takes the next request, checks method and path, returns its JSON body and query.
pub async fn expect(
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

/// Answers a request with `status` and a JSON body.
pub fn reply(send: SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}
