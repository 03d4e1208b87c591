//! Who is calling, and may they?
//!
//! A caller's identity is read from its verified client certificate: the SPIFFE
//! ID in its URI SAN (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`) and its DNS
//! SANs. The allow-list decides once per connection, right after the handshake,
//! so the per-request path only reads a precomputed verdict.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use kube_mtls_contract::pattern::PatternError;
use kube_mtls_contract::pattern::{AllowedClients, IdentityPattern as Pattern};

/// The callers a pod accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowList {
    /// Parsed by the contract's grammar, the one the webhook checks annotations with.
    patterns: Vec<Pattern>,
    /// With no patterns: any SPIFFE ID in this trust domain.
    trust_domain: String,
}

impl AllowList {
    /// Parses a comma-separated list; an empty list allows the pod's own trust domain.
    pub fn parse(list: &str, trust_domain: &str) -> Result<Self, PatternError> {
        Ok(AllowList::new(list.parse()?, trust_domain))
    }

    /// The allow-list of already parsed patterns.
    pub fn new(clients: AllowedClients, trust_domain: &str) -> Self {
        AllowList {
            patterns: clients.0,
            trust_domain: trust_domain.to_ascii_lowercase(),
        }
    }

    /// Decides whether a verified peer may call; `Err` carries the reason for the log.
    pub fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        if self.patterns.is_empty() {
            return match &peer.spiffe {
                Some(id) if id.trust_domain.eq_ignore_ascii_case(&self.trust_domain) => Ok(()),
                Some(id) => Err(format!(
                    "trust domain {:?} is not {:?} and no allow-list is set",
                    id.trust_domain, self.trust_domain
                )),
                None => Err("certificate has no SPIFFE ID and no allow-list is set".to_owned()),
            };
        }
        let allowed = self.patterns.iter().any(|p| match p {
            Pattern::Spiffe {
                trust_domain,
                segments,
            } => peer.spiffe.as_ref().is_some_and(|id| {
                id.trust_domain.eq_ignore_ascii_case(trust_domain)
                    && id.segments.len() == segments.len()
                    && id
                        .segments
                        .iter()
                        .zip(segments)
                        .all(|(have, want)| want.as_ref().is_none_or(|w| w == have))
            }),
            Pattern::Dns { wildcard, name } => peer.dns.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                if *wildcard {
                    d.split_once('.')
                        .is_some_and(|(first, rest)| !first.is_empty() && rest == name)
                } else {
                    d == *name
                }
            }),
        });
        if allowed {
            Ok(())
        } else {
            Err("identity is not on the allow-list".to_owned())
        }
    }
}

/// A parsed SPIFFE ID.
#[derive(Debug, Clone, PartialEq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub segments: Vec<String>,
}

impl SpiffeId {
    /// Parses `spiffe://<td>/<path>`; `None` when it is not a SPIFFE ID.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        if td.is_empty() || path.split('/').any(str::is_empty) {
            return None;
        }
        Some(SpiffeId {
            trust_domain: td.to_ascii_lowercase(),
            segments: path.split('/').map(str::to_owned).collect(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}",
            self.trust_domain,
            self.segments.join("/")
        )
    }
}

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerIdentity {
    pub spiffe: Option<SpiffeId>,
    /// Every URI SAN, as written.
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// RFC 4514 form, e.g. `CN=frontend,O=shop`.
    pub subject: String,
}

impl PeerIdentity {
    /// Reads the SANs and subject of a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let mut id = PeerIdentity {
            subject: cert.subject().to_string(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        // An SVID has exactly one SPIFFE URI; two would make the identity ambiguous.
        let mut spiffe = id.uris.iter().filter_map(|u| SpiffeId::parse(u));
        id.spiffe = spiffe.next();
        if spiffe.next().is_some() {
            id.spiffe = None;
        }
        Ok(id)
    }

    /// A short name for logs: the SPIFFE ID, else the first DNS name, else the subject.
    pub fn display_name(&self) -> String {
        match (&self.spiffe, self.dns.first()) {
            (Some(id), _) => id.to_string(),
            (None, Some(d)) => format!("dns:{d}"),
            (None, None) => format!("subject:{}", self.subject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spiffe: &str, dns: &[&str]) -> PeerIdentity {
        PeerIdentity {
            spiffe: SpiffeId::parse(spiffe),
            uris: vec![spiffe.to_owned()],
            dns: dns.iter().map(|s| s.to_string()).collect(),
            subject: String::new(),
        }
    }

    #[test]
    fn wildcard_matches_one_segment() {
        let a =
            AllowList::parse("spiffe://cluster.local/ns/frontend/sa/*", "cluster.local").unwrap();
        assert!(
            a.authorize(&peer("spiffe://cluster.local/ns/frontend/sa/web", &[]))
                .is_ok()
        );
        assert!(
            a.authorize(&peer("spiffe://cluster.local/ns/backend/sa/web", &[]))
                .is_err()
        );
        assert!(
            a.authorize(&peer("spiffe://cluster.local/ns/frontend/sa/web/x", &[]))
                .is_err()
        );
        assert!(
            a.authorize(&peer("spiffe://other.domain/ns/frontend/sa/web", &[]))
                .is_err()
        );
    }

    #[test]
    fn empty_list_allows_own_trust_domain_only() {
        let a = AllowList::parse("", "cluster.local").unwrap();
        assert!(
            a.authorize(&peer("spiffe://cluster.local/ns/a/sa/b", &[]))
                .is_ok()
        );
        assert!(
            a.authorize(&peer("spiffe://evil.example/ns/a/sa/b", &[]))
                .is_err()
        );
        assert!(a.authorize(&PeerIdentity::default()).is_err());
    }

    #[test]
    fn dns_patterns() {
        let a = AllowList::parse("api.example.com, *.svc.example.com", "cluster.local").unwrap();
        assert!(a.authorize(&peer("", &["API.example.com"])).is_ok());
        assert!(a.authorize(&peer("", &["orders.svc.example.com"])).is_ok());
        assert!(a.authorize(&peer("", &["a.b.svc.example.com"])).is_err());
        assert!(a.authorize(&peer("", &["svc.example.com"])).is_err());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "spiffe://cluster.local",
            "spiffe:///ns/a",
            "spiffe://cluster.local/ns//sa",
            "spiffe://cluster.local/ns/fr*/sa/x",
            "https://x/y",
            "a..b",
            "foo.*.com",
        ] {
            assert!(AllowList::parse(bad, "cluster.local").is_err(), "{bad}");
        }
    }
}
