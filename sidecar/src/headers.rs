//! Headers the app can trust.
//!
//! The client controls every header it sends, so anything that claims to say who
//! the client is (XFCC, X-Forwarded-*, X-Real-IP, Forwarded) is removed before the
//! request reaches the app and replaced with what the sidecar itself saw. That
//! includes spellings with underscores (`X_Forwarded_Client_Cert`), which
//! CGI/WSGI-style servers read as the same header. The caller's XFCC value is built once per connection, since the certificate cannot
//! change within it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::identity::PeerIdentity;

pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Makes a certificate field safe for a header: every byte of a non-ASCII
/// character, and every ASCII control character (HTAB and DEL included), is
/// percent-encoded (`%DF%9F`, `%01`), so the value is visible ASCII and spaces
/// only, and `HeaderValue::to_str` always works. They are encoded, not dropped,
/// so `.../sa/admin\u{200b}` cannot read as `.../sa/admin`. A `%` already in the
/// field is kept as is.
fn push_safe(out: &mut String, c: char) {
    if c.is_ascii() && !c.is_ascii_control() {
        out.push(c);
    } else {
        for b in c.encode_utf8(&mut [0; 4]).bytes() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Pushes `v` in double quotes, with `"` and `\` escaped.
fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        push_safe(out, c);
    }
    out.push('"');
}

/// Quotes a value for XFCC when it holds a separator, a quote or a backslash, as
/// Envoy does, or starts or ends with a space, which a receiver would strip.
/// Non-ASCII and control characters are percent-encoded (see `push_safe`).
fn push_value(out: &mut String, v: &str) {
    // Only a space survives `push_safe` as whitespace (HTAB and non-ASCII
    // spaces are encoded), so only a space at either end needs the quotes.
    if v.contains([',', ';', '=', '"', '\\']) || v.starts_with(' ') || v.ends_with(' ') {
        push_quoted(out, v);
    } else {
        v.chars().for_each(|c| push_safe(out, c));
    }
}

/// The `X-Forwarded-Client-Cert` value in Envoy's format:
/// `By=<our URI>;Hash=<sha256 of the client cert>;Subject="...";URI=...;DNS=...`.
pub fn xfcc_value(own: &PeerIdentity, peer: &PeerIdentity, peer_cert_hash: &str) -> HeaderValue {
    let mut s = String::with_capacity(256);
    if let Some(by) = own.uris.first() {
        s.push_str("By=");
        push_value(&mut s, by);
        s.push(';');
    }
    s.push_str("Hash=");
    peer_cert_hash.chars().for_each(|c| push_safe(&mut s, c));
    s.push_str(";Subject=");
    push_quoted(&mut s, &peer.subject);
    for uri in &peer.uris {
        s.push_str(";URI=");
        push_value(&mut s, uri);
    }
    for dns in &peer.dns {
        s.push_str(";DNS=");
        push_value(&mut s, dns);
    }
    // Every field went through `push_safe`, so `s` is visible ASCII and spaces:
    // always a valid header value (the fallback is unreachable), and `to_str()`
    // works on it.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The classic hop-by-hop set (RFC 9110 §7.6.1), besides what `Connection` names.
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
    ]
}

/// Removes the headers `doomed` picks. The headers are walked once and only
/// those present are removed: every lookup in a header map hashes the name,
/// and a request usually carries none of the names a sanitizer looks for.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it
/// names, plus the classic hop-by-hop set. `TE: trailers` survives, since gRPC
/// needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    remove_where(headers, |n| {
        hop_by_hop().contains(&n) || (named.contains(n) && n != header::TE)
    });
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The identity-bearing headers the sidecar owns: whatever the client sends
/// under these names (or their underscore spellings) never reaches the app.
fn owned() -> [&'static HeaderName; 7] {
    [
        &XFCC,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PORT,
        &X_REAL_IP,
        &FORWARDED,
    ]
}

/// True for a name with an underscore that reads as an owned header once
/// underscores are taken for dashes, as CGI and WSGI do.
fn underscore_spelling_of_owned(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_')
        && owned().iter().any(|o| {
            o.as_str().len() == name.len()
                && o.as_str()
                    .bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        })
}

/// Removes every identity-bearing header the client sent, in any spelling.
fn strip_identity(headers: &mut HeaderMap) {
    remove_where(headers, |n| {
        owned().contains(&n) || underscore_spelling_of_owned(n)
    });
}

/// Replaces every identity-bearing header the client sent with what the sidecar knows.
pub fn set_forwarding(headers: &mut HeaderMap, xfcc: &HeaderValue, client_ip: &HeaderValue) {
    strip_identity(headers);
    headers.insert(XFCC.clone(), xfcc.clone());
    headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
}

/// For a plaintext caller (permissive mode): removes every identity-bearing
/// header and adds no XFCC, so nothing the app sees claims an identity; only
/// the address and `X-Forwarded-Proto: http` are said.
pub fn set_plaintext_forwarding(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    strip_identity(headers);
    headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113 §6.5.2):
/// every field's name and value plus 32 bytes, pseudo-header fields included.
pub fn list_size(req: &http::Request<impl Sized>) -> usize {
    const OVERHEAD: usize = 32;
    let pseudo = [
        ":method".len() + req.method().as_str().len(),
        ":path".len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()),
        ":scheme".len() + req.uri().scheme_str().map_or(0, str::len),
        ":authority".len() + req.uri().authority().map_or(0, |a| a.as_str().len()),
    ];
    let fields = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + OVERHEAD);
    pseudo.iter().map(|p| p + OVERHEAD).chain(fields).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    #[test]
    fn xfcc_format() {
        let own = PeerIdentity {
            uris: vec!["spiffe://cluster.local/ns/shop/sa/orders".into()],
            ..Default::default()
        };
        let peer = PeerIdentity {
            spiffe: SpiffeId::parse("spiffe://cluster.local/ns/web/sa/front"),
            uris: vec!["spiffe://cluster.local/ns/web/sa/front".into()],
            dns: vec!["front.web.svc".into()],
            subject: "CN=front,O=web".into(),
        };
        let v = xfcc_value(&own, &peer, "ab12");
        assert_eq!(
            v.to_str().unwrap(),
            "By=spiffe://cluster.local/ns/shop/sa/orders;Hash=ab12;Subject=\"CN=front,O=web\";URI=spiffe://cluster.local/ns/web/sa/front;DNS=front.web.svc"
        );
    }

    fn peer_with(uris: &[&str], dns: &[&str], subject: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe: None,
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            subject: subject.to_owned(),
        }
    }

    #[test]
    fn xfcc_quotes_values_with_leading_or_trailing_whitespace() {
        let own = PeerIdentity::default();
        let peer = peer_with(&["spiffe://cluster.local/ns/a/sa/b "], &[], "CN=b");
        let v = xfcc_value(&own, &peer, "ab12");
        assert_eq!(
            v.to_str().unwrap(),
            "Hash=ab12;Subject=\"CN=b\";URI=\"spiffe://cluster.local/ns/a/sa/b \""
        );
        let peer = peer_with(&[], &["b.a.svc ", " c.a.svc"], "CN=b");
        let v = xfcc_value(&own, &peer, "ab12");
        assert_eq!(
            v.to_str().unwrap(),
            "Hash=ab12;Subject=\"CN=b\";DNS=\"b.a.svc \";DNS=\" c.a.svc\""
        );
        // A backslash is quoted and escaped too.
        let peer = peer_with(&[], &["b\\c"], "CN=b");
        let v = xfcc_value(&own, &peer, "ab12");
        assert_eq!(
            v.to_str().unwrap(),
            "Hash=ab12;Subject=\"CN=b\";DNS=\"b\\\\c\""
        );
    }

    #[test]
    fn xfcc_percent_encodes_non_ascii_and_control_characters() {
        let own = PeerIdentity {
            uris: vec!["spiffe://cluster.local/ns/a/sa/own\u{7f}".into()],
            ..Default::default()
        };
        let peer = peer_with(
            &["spiffe://cluster.local/ns/a/sa/b\u{7df}"],
            &["b\u{1}.a.svc", "c.a.svc\t"],
            "CN=caf\u{e9}\u{1b}",
        );
        let v = xfcc_value(&own, &peer, "ab12");
        assert!(
            v.as_bytes().iter().all(|b| (b' '..=b'~').contains(b)),
            "{v:?}"
        );
        assert_eq!(
            v.to_str().unwrap(),
            "By=spiffe://cluster.local/ns/a/sa/own%7F;Hash=ab12;Subject=\"CN=caf%C3%A9%1B\";\
             URI=spiffe://cluster.local/ns/a/sa/b%DF%9F;DNS=b%01.a.svc;DNS=c.a.svc%09"
        );
        // Non-ASCII alone (no control character) used to go out as raw UTF-8.
        let peer = peer_with(&["spiffe://cluster.local/ns/a/sa/b\u{7df}"], &[], "CN=b");
        let v = xfcc_value(&PeerIdentity::default(), &peer, "ab12");
        assert_eq!(
            v.to_str().unwrap(),
            "Hash=ab12;Subject=\"CN=b\";URI=spiffe://cluster.local/ns/a/sa/b%DF%9F"
        );
    }

    #[test]
    fn spoofed_and_hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("By=evil"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        set_forwarding(
            &mut h,
            &HeaderValue::from_static("By=real"),
            &HeaderValue::from_static("10.0.0.9"),
        );
        assert!(
            h.get("connection").is_none()
                && h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get_all("x-forwarded-client-cert").iter().count(), 1);
        assert_eq!(h.get("x-forwarded-client-cert").unwrap(), "By=real");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert!(h.get("x-real-ip").is_none() && h.get("forwarded").is_none());
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn a_plaintext_request_carries_no_identity() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("URI=spiffe://cluster.local/ns/admin/sa/root"),
        );
        h.insert("x_forwarded_client_cert", HeaderValue::from_static("evil"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        h.insert("x-app", HeaderValue::from_static("kept"));
        set_plaintext_forwarding(&mut h, &HeaderValue::from_static("10.0.0.9"));
        assert!(h.get("x-forwarded-client-cert").is_none(), "{h:?}");
        assert!(h.get("x_forwarded_client_cert").is_none() && h.get("forwarded").is_none());
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn underscore_spellings_of_owned_headers_go() {
        let mut h = HeaderMap::new();
        for name in [
            "x_forwarded_client_cert",
            "x-forwarded_for",
            "x_real_ip",
            "x_forwarded_proto",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x_app_mode", HeaderValue::from_static("kept"));
        h.insert("x_forwarded_client_certs", HeaderValue::from_static("kept"));
        set_forwarding(
            &mut h,
            &HeaderValue::from_static("By=real"),
            &HeaderValue::from_static("10.0.0.9"),
        );
        assert!(h.values().all(|v| v != "evil"), "{h:?}");
        assert_eq!(h.get("x_app_mode").unwrap(), "kept");
        assert_eq!(h.get("x_forwarded_client_certs").unwrap(), "kept");
        assert_eq!(h.get("x-forwarded-client-cert").unwrap(), "By=real");
    }
}
