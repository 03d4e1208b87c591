//! The sidecar's allow-list (`--allowed-clients`, `kube-mtls.io/allowed-clients`):
//! `AllowList::parse` and `AllowList::authorize` on arbitrary patterns and
//! peer identities.
//!
//! Why: the allow-list is the sidecar's whole authorization decision. Besides
//! no panic on any pattern or SAN, this checks the matcher against a model:
//! a SPIFFE pattern without `*` admits exactly the SPIFFE IDs equal to it
//! (trust domain compared case-insensitively, path exactly); a pattern with
//! `*` segments admits exactly the IDs of the same length that agree on
//! every other segment; a DNS pattern without `*.` admits exactly the DNS
//! names equal to it ignoring ASCII case.
#![no_main]

use arbitrary::Arbitrary;
use kube_mtls_sidecar::identity::{AllowList, PeerIdentity, SpiffeId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Seg {
    Star,
    Name(String),
}

#[derive(Debug, Arbitrary)]
enum PatternInput {
    /// `spiffe://<td>/<segments>`: mostly well-formed, so the matcher is reached.
    Spiffe {
        td: String,
        segs: Vec<Seg>,
    },
    Raw(String),
}

impl PatternInput {
    fn render(&self) -> String {
        match self {
            PatternInput::Spiffe { td, segs } => {
                let path: Vec<&str> = segs
                    .iter()
                    .map(|s| match s {
                        Seg::Star => "*",
                        Seg::Name(n) => n.as_str(),
                    })
                    .collect();
                format!("spiffe://{td}/{}", path.join("/"))
            }
            PatternInput::Raw(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// The whole `--allowed-clients` value, and the pod's trust domain.
    list: String,
    trust_domain: String,
    /// One pattern, for the model checks.
    pattern: PatternInput,
    /// The caller: URI SANs (the first SPIFFE one is its ID) and DNS SANs.
    uris: Vec<String>,
    dns: Vec<String>,
    /// Fillers for the `*` segments of `pattern`.
    fillers: Vec<String>,
}

fn peer(uris: Vec<String>, dns: Vec<String>) -> PeerIdentity {
    // As `PeerIdentity::from_der`: exactly one SPIFFE URI makes the ID.
    let mut ids = uris.iter().filter_map(|u| SpiffeId::parse(u));
    let spiffe = match (ids.next(), ids.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    };
    PeerIdentity {
        spiffe,
        uris,
        dns,
        subject: String::new(),
    }
}

fuzz_target!(|input: Input| {
    let caller = peer(input.uris.clone(), input.dns.clone());
    if let Ok(list) = AllowList::parse(&input.list, &input.trust_domain) {
        let _ = list.authorize(&caller);
        let _ = caller.display_name();
    }

    let pattern = input.pattern.render();
    // One entry: no list separator, nothing trimmed away.
    if pattern.contains(',') || pattern.trim() != pattern || pattern.is_empty() {
        return;
    }
    let Ok(list) = AllowList::parse(&pattern, &input.trust_domain) else {
        return;
    };
    let allowed = |p: &PeerIdentity| list.authorize(p).is_ok();

    if let Some(rest) = pattern.strip_prefix("spiffe://") {
        let (td, path) = rest
            .split_once('/')
            .expect("a parsed SPIFFE pattern has a path");
        let want: Vec<&str> = path.split('/').collect();
        // The model: same trust domain (ASCII case-insensitive), same number of
        // segments, equal wherever the pattern is not `*`.
        let model = |id: &SpiffeId| {
            id.trust_domain.eq_ignore_ascii_case(td)
                && id.segments.len() == want.len()
                && id
                    .segments
                    .iter()
                    .zip(&want)
                    .all(|(h, w)| *w == "*" || h == w)
        };
        // The identity spelled like the pattern, `*` filled in, is admitted.
        let mut fillers = input
            .fillers
            .iter()
            .filter(|f| !f.is_empty() && !f.contains('/'));
        let filled: Vec<String> = want
            .iter()
            .map(|w| {
                if *w == "*" {
                    fillers.next().cloned().unwrap_or_else(|| "x".into())
                } else {
                    (*w).to_owned()
                }
            })
            .collect();
        let uri = format!("spiffe://{td}/{}", filled.join("/"));
        let id = SpiffeId::parse(&uri)
            .unwrap_or_else(|| panic!("pattern {pattern:?} parses but {uri:?} is not a SPIFFE ID"));
        assert!(model(&id));
        assert!(
            allowed(&peer(vec![uri.clone()], vec![])),
            "pattern {pattern:?} refuses {uri:?}"
        );
        // Any other caller: admitted exactly when the model says so. DNS SANs
        // never satisfy a SPIFFE pattern.
        let expected = caller.spiffe.as_ref().is_some_and(model);
        assert_eq!(
            allowed(&caller),
            expected,
            "pattern {pattern:?}, caller {:?}",
            caller.spiffe
        );
    } else {
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        if !wildcard {
            assert!(
                allowed(&peer(vec![], vec![pattern.to_ascii_uppercase()])),
                "DNS pattern {pattern:?} refuses its own name"
            );
        }
        let model = |d: &String| {
            let d = d.to_ascii_lowercase();
            let name = name.to_ascii_lowercase();
            if wildcard {
                d.split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == name)
            } else {
                d == name
            }
        };
        let expected = caller.dns.iter().any(model);
        assert_eq!(
            allowed(&caller),
            expected,
            "pattern {pattern:?}, caller DNS {:?}",
            caller.dns
        );
    }
});
