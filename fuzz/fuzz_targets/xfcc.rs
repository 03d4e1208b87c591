//! `headers::xfcc_value`: the `X-Forwarded-Client-Cert` value the sidecar
//! builds from the caller's certificate, for hostile subjects, URI SANs and
//! DNS SANs.
//!
//! Why: those fields come from a client certificate (any CA the pod trusts
//! may have signed odd ones), and the value goes to the app in a header the
//! app trusts. Checks: the value is a valid HTTP field value (no CR, LF or
//! NUL; `HeaderValue::from_str` takes it; no
//! trailing whitespace, which a receiver strips, and visible ASCII only);
//! and it parses back, Envoy's way (`;`
//! between pairs, `,` between elements, `"..."` with `\` escapes), into one
//! element whose By, Hash, Subject, URI and DNS are exactly what went in,
//! so a quote or separator in a SAN cannot forge another field or element.
//! Characters a header cannot carry (non-ASCII, controls) are percent-encoded,
//! and nothing else.
#![no_main]

use arbitrary::Arbitrary;
use http::HeaderValue;
use kube_mtls_sidecar::headers::xfcc_value;
use kube_mtls_sidecar::identity::{PeerIdentity, SpiffeId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    own_uri: Option<String>,
    subject: String,
    uris: Vec<String>,
    dns: Vec<String>,
    hash: [u8; 32],
}

/// Splits an XFCC value into elements of (key, value) pairs, unquoting.
fn parse(v: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut elements = vec![Vec::new()];
    let mut chars = v.chars().peekable();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c @ (';' | ',' | '"')) => return Err(format!("{c:?} in a key of {v:?}")),
                Some(c) => key.push(c),
                None => return Err(format!("a key without a value in {v:?}")),
            }
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("a dangling escape")?),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("an unclosed quote in {v:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ';' || c == ',' {
                    break;
                }
                if c == '"' {
                    return Err(format!("a quote inside an unquoted value of {v:?}"));
                }
                value.push(c);
                chars.next();
            }
        }
        elements.last_mut().expect("one element").push((key, value));
        match chars.next() {
            None => return Ok(elements),
            Some(';') => {}
            Some(',') => elements.push(Vec::new()),
            Some(c) => return Err(format!("{c:?} after a quoted value in {v:?}")),
        }
    }
}

fuzz_target!(|input: Input| {
    let own = PeerIdentity {
        uris: input.own_uri.iter().cloned().collect(),
        ..Default::default()
    };
    let peer = PeerIdentity {
        spiffe: input.uris.first().and_then(|u| SpiffeId::parse(u)),
        uris: input.uris.clone(),
        dns: input.dns.clone(),
        subject: input.subject.clone(),
    };
    let hash: String = input.hash.iter().map(|b| format!("{b:02x}")).collect();

    let value = xfcc_value(&own, &peer, &hash);
    let bytes = value.as_bytes();
    assert!(
        !bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "CR, LF or NUL in XFCC: {value:?}"
    );
    assert!(
        HeaderValue::from_bytes(bytes).is_ok(),
        "not a header value: {value:?}"
    );
    let text = std::str::from_utf8(bytes).expect("XFCC is UTF-8");
    assert!(
        HeaderValue::from_str(text).is_ok(),
        "not a header value: {text:?}"
    );
    // A receiver strips whitespace at either end of a header value (RFC 9110),
    // so a trailing space in a SAN must be quoted, never the value's last byte.
    // fuzz/regressions/xfcc/trailing-space.
    assert_eq!(
        text,
        text.trim_matches([' ', '\t']),
        "XFCC starts or ends with whitespace, which a receiver strips"
    );
    // Visible ASCII only, so `to_str()` (how a Rust app reads a header) works.
    // fuzz/regressions/xfcc/non-ascii.
    assert!(
        value.to_str().is_ok(),
        "XFCC is not visible ASCII: {value:?}"
    );

    // Every field comes through, with each byte of a non-ASCII or control
    // character percent-encoded.
    let expect = |s: &String| -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c.is_ascii() && !c.is_ascii_control() {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        out
    };
    let mut want = Vec::new();
    if let Some(by) = own.uris.first() {
        want.push(("By".to_owned(), expect(by)));
    }
    want.push(("Hash".to_owned(), hash.clone()));
    want.push(("Subject".to_owned(), expect(&peer.subject)));
    want.extend(peer.uris.iter().map(|u| ("URI".to_owned(), expect(u))));
    want.extend(peer.dns.iter().map(|d| ("DNS".to_owned(), expect(d))));
    let got = parse(text).unwrap_or_else(|e| panic!("XFCC does not parse back: {e}"));
    assert_eq!(got, vec![want], "XFCC {text:?} does not say what went in");
});
