//! The one request-rewrite path, shared by inbound and outbound forwarding.
//!
//! A request passed on by the sidecar is aimed at a new authority (the app on
//! 127.0.0.1:<port> inbound, the original destination outbound) with the
//! HTTP version that connection speaks, keeps its path and query, keeps the
//! host the client meant as a `Host` header (an HTTP/2 client sends it only
//! as `:authority`), and loses its hop-by-hop headers. What each direction adds
//! on top (the identity headers inbound) stays with that direction.

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};

use crate::headers;

/// Why a request cannot be passed on.
#[derive(Debug, thiserror::Error)]
#[error("the request target cannot be sent to {authority}: {source}")]
pub struct BadTarget {
    authority: String,
    source: http::Error,
}

/// An authority requests are re-aimed at, parsed once (per connection).
pub fn authority(addr: impl std::fmt::Display) -> Result<Authority, BadTarget> {
    let text = addr.to_string();
    Authority::try_from(text.as_str()).map_err(|e| BadTarget {
        authority: text.clone(),
        source: e.into(),
    })
}

/// The authority of a socket address, which is always one (`[v6]:port` for IPv6).
pub fn socket_authority(addr: std::net::SocketAddr) -> Authority {
    authority(addr).unwrap_or_else(|_| Authority::from_static("127.0.0.1"))
}

/// How the request line names its target on the connection it goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `http://<authority>/path`: for a client that picks the connection from
    /// the URI (hyper-util's pool).
    Absolute,
    /// `/path` (the authority itself for `CONNECT`): written as is on an
    /// HTTP/1.1 connection of the sidecar's own, so a request that names no
    /// host gets the authority's as its `Host`.
    Origin,
}

/// Re-aims `req` at `authority` over `version`, its target in `form`.
pub fn retarget<B>(req: &mut Request<B>, authority: &Authority, version: Version, form: Form) {
    if !req.headers().contains_key(header::HOST)
        && let Some(original) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(original.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    match form {
        Form::Absolute => absolute_form(req, authority),
        Form::Origin => origin_form(req, authority),
    }
    *req.version_mut() = version;
    headers::strip_hop_by_hop(req.headers_mut());
}

fn absolute_form<B>(req: &mut Request<B>, authority: &Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, so the parts always form a URI.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

/// What hyper-util's pooled client does before writing a request on an
/// HTTP/1.1 connection, done here for the connections the sidecar holds itself.
fn origin_form<B>(req: &mut Request<B>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST) {
        let host = if authority.port_u16() == Some(80) {
            authority.host()
        } else {
            authority.as_str()
        };
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let uri = if req.method() == Method::CONNECT {
        Uri::from(authority.clone())
    } else {
        let path = req.uri().path_and_query().cloned();
        Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")))
    };
    *req.uri_mut() = uri;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_path_and_host_and_drops_hop_by_hop_headers() {
        let mut req = Request::builder()
            .uri("https://orders.shop:8443/a/b?x=1")
            .version(Version::HTTP_2)
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("x-app", "kept")
            .body(())
            .unwrap();
        retarget(
            &mut req,
            &authority("127.0.0.1:8080").unwrap(),
            Version::HTTP_11,
            Form::Absolute,
        );
        assert_eq!(req.uri(), "http://127.0.0.1:8080/a/b?x=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "orders.shop:8443");
        assert!(req.headers().get("x-hop").is_none());
        assert_eq!(req.headers()["x-app"], "kept");
    }

    #[test]
    fn an_existing_host_header_wins() {
        let mut req = Request::builder()
            .uri("/x")
            .header("host", "front.web")
            .body(())
            .unwrap();
        retarget(
            &mut req,
            &authority("10.0.0.7:80").unwrap(),
            Version::HTTP_11,
            Form::Absolute,
        );
        assert_eq!(req.headers()["host"], "front.web");
        assert_eq!(req.uri(), "http://10.0.0.7:80/x");
        assert!(authority("not a host").is_err());
    }

    #[test]
    fn origin_form_keeps_the_path_and_names_a_host() {
        let app = authority("127.0.0.1:8080").unwrap();
        let mut bare = Request::builder()
            .uri("/a?x=1")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        retarget(&mut bare, &app, Version::HTTP_11, Form::Origin);
        assert_eq!(bare.uri(), "/a?x=1");
        assert_eq!(bare.headers()["host"], "127.0.0.1:8080");

        let mut named = Request::builder()
            .uri("https://orders.shop/b")
            .body(())
            .unwrap();
        retarget(&mut named, &app, Version::HTTP_11, Form::Origin);
        assert_eq!(named.uri(), "/b");
        assert_eq!(named.headers()["host"], "orders.shop");
    }
}
