//! The allowed-clients grammar: who may call a pod, as the sidecar's
//! `--allowed-clients` and the `kube-mtls.io/allowed-clients` annotation write
//! it. One entry is a SPIFFE ID pattern (`spiffe://<td>/<segments>`, where a
//! segment `*` matches exactly one segment) or a DNS name (exact, or `*.` for
//! one leading label). The webhook validates annotations with this parser, so
//! what it admits the sidecar accepts.

use std::fmt;
use std::str::FromStr;

/// A malformed allow-list entry.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("{0:?} is not a valid SPIFFE ID pattern: {1}")]
    Spiffe(String, &'static str),
    #[error("{0:?} is not a valid DNS name pattern: {1}")]
    Dns(String, &'static str),
}

/// What to write instead of a malformed entry.
pub const PATTERN_FIX: &str = "write spiffe://<trust domain>/ns/<namespace>/sa/<service account> (`*` for one whole segment) or a DNS name (letters, digits, '-'; labels of 1-63 characters, 253 in all; `*.` only as the first label)";

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// A SPIFFE ID pattern.
    Spiffe {
        /// Lower-cased; never empty or `*`.
        trust_domain: String,
        /// Path segments after the trust domain; `None` is a `*` wildcard.
        segments: Vec<Option<String>>,
    },
    /// A DNS name, lower-cased.
    Dns {
        /// A leading `*.`: matches exactly one label in front of `name`.
        wildcard: bool,
        name: String,
    },
}

impl FromStr for IdentityPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        match s.strip_prefix("spiffe://") {
            Some(rest) => spiffe(s, rest),
            None => dns(s),
        }
    }
}

fn spiffe(s: &str, rest: &str) -> Result<IdentityPattern, PatternError> {
    let bad = |why| PatternError::Spiffe(s.to_owned(), why);
    let (td, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("it has no path after the trust domain"))?;
    if td.is_empty() || td == "*" {
        return Err(bad("the trust domain must be a name, not empty or `*`"));
    }
    let mut segments = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" => return Err(bad("it has an empty path segment")),
            "*" => segments.push(None),
            s if s.contains('*') => return Err(bad("`*` must stand alone as a whole segment")),
            s if s.contains(',') => return Err(bad("it contains ','")),
            s => segments.push(Some(s.to_owned())),
        }
    }
    Ok(IdentityPattern::Spiffe {
        trust_domain: td.to_ascii_lowercase(),
        segments,
    })
}

fn dns(s: &str) -> Result<IdentityPattern, PatternError> {
    let bad = |why| PatternError::Dns(s.to_owned(), why);
    if s.contains("://") {
        return Err(bad("only spiffe:// URIs are supported"));
    }
    if s.len() > 253 {
        return Err(bad("a DNS name has at most 253 characters"));
    }
    let (wildcard, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(bad(
            "use letters, digits, '-' and '.', labels of 1-63 characters, with `*.` only as the first label",
        ));
    }
    Ok(IdentityPattern::Dns {
        wildcard,
        name: name.to_ascii_lowercase(),
    })
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::Spiffe {
                trust_domain,
                segments,
            } => {
                write!(f, "spiffe://{trust_domain}")?;
                for s in segments {
                    write!(f, "/{}", s.as_deref().unwrap_or("*"))?;
                }
                Ok(())
            }
            IdentityPattern::Dns { wildcard, name } => {
                if *wildcard {
                    f.write_str("*.")?;
                }
                f.write_str(name)
            }
        }
    }
}

/// The callers a pod accepts; empty: any SPIFFE ID in the pod's trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedClients(pub Vec<IdentityPattern>);

impl FromStr for AllowedClients {
    type Err = PatternError;

    /// A comma-separated list of patterns.
    fn from_str(list: &str) -> Result<Self, PatternError> {
        crate::ports::items(list)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(AllowedClients)
    }
}

impl fmt::Display for AllowedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_print_back() {
        let list: AllowedClients =
            "spiffe://Cluster.Local/ns/web/sa/*, API.example.com,*.svc.example.com"
                .parse()
                .unwrap();
        assert_eq!(
            list.to_string(),
            "spiffe://cluster.local/ns/web/sa/*,api.example.com,*.svc.example.com"
        );
        assert_eq!(list.to_string().parse::<AllowedClients>(), Ok(list));
        assert_eq!("".parse(), Ok(AllowedClients::default()));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        let too_long = vec!["a".repeat(63); 4].join(".");
        for bad in [
            "spiffe://cluster.local",
            "spiffe:///ns/a",
            "spiffe://*/ns/a",
            "spiffe://cluster.local/ns//sa",
            "spiffe://cluster.local/ns/fr*/sa/x",
            "https://x/y",
            "a..b",
            "foo.*.com",
            "*.",
            &long_label,
            &too_long,
        ] {
            assert!(bad.parse::<IdentityPattern>().is_err(), "{bad}");
        }
        let max = format!("*.{}.example.com", "a".repeat(63));
        assert!(max.parse::<IdentityPattern>().is_ok());
    }
}
