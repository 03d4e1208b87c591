//! `headers::strip_hop_by_hop` then `headers::set_forwarding`, as the inbound
//! proxy runs them on every request, on arbitrary header names and values.
//!
//! Why: the app trusts `X-Forwarded-Client-Cert` (and X-Forwarded-*,
//! X-Real-IP, Forwarded) to say who called; a client that gets its own copy
//! past the sidecar impersonates any identity. Checks: afterwards, no header
//! whose name reads as one of those (in any case, with `-` or `_` in any
//! position, as CGI/WSGI servers read `X_Forwarded_Client_Cert`) remains,
//! except exactly one of each the sidecar sets itself (XFCC,
//! X-Forwarded-For, X-Forwarded-Proto), holding the sidecar's values; and no
//! hop-by-hop header is left but `TE: trailers`.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use kube_mtls_sidecar::headers::{set_forwarding, strip_hop_by_hop};
use libfuzzer_sys::fuzz_target;

/// The identity-bearing headers the sidecar owns.
const OWNED: [&str; 7] = [
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];
/// The ones it sets itself, and to what (see below).
const SET: [&str; 3] = [
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
];
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
];

#[derive(Debug, Arbitrary)]
enum Name {
    /// An owned or hop-by-hop name with its characters' case flipped and
    /// dashes turned into underscores where the masks say.
    Spelling {
        index: u8,
        case_mask: u32,
        underscore_mask: u32,
    },
    Raw(Vec<u8>),
}

impl Name {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Name::Spelling {
                index,
                case_mask,
                underscore_mask,
            } => {
                let all: Vec<&str> = OWNED.iter().chain(&HOP_BY_HOP).copied().collect();
                let base = all[*index as usize % all.len()];
                base.bytes()
                    .enumerate()
                    .map(|(i, b)| {
                        let bit = 1u32 << (i % 32);
                        if b == b'-' && underscore_mask & bit != 0 {
                            b'_'
                        } else if case_mask & bit != 0 {
                            b.to_ascii_uppercase()
                        } else {
                            b
                        }
                    })
                    .collect()
            }
            Name::Raw(b) => b.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    /// `Connection` values naming other headers.
    connection: Vec<Vec<Name>>,
}

fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&name.bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        headers.append(n, v);
    }
    for names in &input.connection {
        let list: Vec<u8> = names
            .iter()
            .map(Name::bytes)
            .collect::<Vec<_>>()
            .join(&b", "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&list) {
            headers.append(http::header::CONNECTION, v);
        }
    }

    let xfcc = HeaderValue::from_static(
        "By=spiffe://cluster.local/ns/shop/sa/orders;Hash=ab;Subject=\"CN=sidecar-set\"",
    );
    let client_ip = HeaderValue::from_static("10.0.0.9");
    strip_hop_by_hop(&mut headers);
    set_forwarding(&mut headers, &xfcc, &client_ip);

    for name in headers.keys() {
        let n = normalized(name.as_str());
        if OWNED.contains(&n.as_str()) {
            assert!(
                SET.contains(&name.as_str()),
                "a client's {name} survived sanitising: {headers:?}"
            );
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            assert_eq!(
                name.as_str(),
                "te",
                "hop-by-hop {name} survived: {headers:?}"
            );
        }
    }
    for (name, want) in [
        ("x-forwarded-client-cert", &xfcc),
        ("x-forwarded-for", &client_ip),
        ("x-forwarded-proto", &HeaderValue::from_static("https")),
    ] {
        let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        assert_eq!(
            got,
            vec![want],
            "{name} is not only the sidecar's: {headers:?}"
        );
    }
    let te: Vec<&HeaderValue> = headers.get_all("te").iter().collect();
    assert!(
        te.is_empty() || te == vec![&HeaderValue::from_static("trailers")],
        "TE: {te:?}"
    );
});
