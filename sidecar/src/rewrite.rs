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
use http::{Request, Uri, Version};

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

/// Re-aims `req` at `http://<authority><path and query>` over `version`.
pub fn retarget<B>(req: &mut Request<B>, authority: &Authority, version: Version) {
    if !req.headers().contains_key(header::HOST)
        && let Some(original) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(original.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, so the parts always form a URI.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *req.version_mut() = version;
    headers::strip_hop_by_hop(req.headers_mut());
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
        );
        assert_eq!(req.headers()["host"], "front.web");
        assert_eq!(req.uri(), "http://10.0.0.7:80/x");
        assert!(authority("not a host").is_err());
    }
}
