//! The trust bundle as data, and how it moves on: pure functions, no I/O.
//!
//! A bundle is every CA certificate a workload certificate still in use may
//! chain to, each with its retention: `current` while the issuer's CA Secret
//! holds it, else the moment it may leave. [`merge`] takes the bundle as the
//! master ConfigMap holds it and the CA certificates the issuer has now:
//!
//! - a CA seen now is current (a new one is added);
//! - a CA that was current and is not seen any more (a rotation, or its
//!   Secret deleted and made anew with a new key) stays until the moment it
//!   stopped being current plus the longest workload certificate lifetime, as
//!   no leaf it signed can outlive that, capped by its own notAfter;
//! - a CA whose retention has passed leaves.
//!
//! When nothing is seen (the Secret is missing or unreadable) nothing changes:
//! a bundle is never emptied because a read failed. The same CAs seen again
//! give the same bundle, rendered byte for byte the same, so the controller
//! writes nothing. [`retire`] drops previous CAs early, on request, and never
//! the current one.
//!
//! Rendered into the master ConfigMap as [`TRUST_BUNDLE_KEY`] (the PEM, in
//! fingerprint order) and [`TRUST_RETENTION_KEY`] (JSON: fingerprint ->
//! subject, notAfter, retainUntil or `current`).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube_mtls_contract::names::{TRUST_BUNDLE_KEY, TRUST_RETENTION_KEY};
use serde::{Deserialize, Serialize};

use super::der::CaCert;

/// How long a CA stays in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// The issuer signs with it now.
    Current,
    /// A previous CA, kept until then (seconds since the epoch).
    Until(i64),
}

/// One CA of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ca: CaCert,
    pub retain: Retain,
}

/// The bundle: its CAs by SHA-256 fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub cas: BTreeMap<String, Entry>,
}

/// What the master ConfigMap records of one CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub subject: String,
    pub not_after: String,
    /// `current`, or an RFC 3339 time.
    pub retain_until: String,
}

/// The word [`Record::retain_until`] has for the current CA.
pub const CURRENT: &str = "current";

/// Seconds since the epoch as RFC 3339 (`2030-01-01T00:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// RFC 3339 in seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// The bundle after the issuer's CA certificates were seen as `seen` at
/// `now`; `retention` is the longest workload certificate lifetime, in seconds.
pub fn merge(state: &Bundle, seen: &[CaCert], now: i64, retention: i64) -> Bundle {
    let is_seen = |fp: &str| seen.iter().any(|c| c.fingerprint == fp);
    let mut cas = BTreeMap::new();
    for (fp, e) in &state.cas {
        let retain = match e.retain {
            _ if is_seen(fp) => Retain::Current,
            kept if seen.is_empty() => kept,
            Retain::Current => Retain::Until(now.saturating_add(retention).min(e.ca.not_after)),
            Retain::Until(t) => Retain::Until(t),
        };
        if matches!(retain, Retain::Until(t) if t <= now) {
            continue;
        }
        let entry = Entry {
            ca: e.ca.clone(),
            retain,
        };
        cas.insert(fp.clone(), entry);
    }
    for ca in seen {
        cas.entry(ca.fingerprint.clone()).or_insert_with(|| Entry {
            ca: ca.clone(),
            retain: Retain::Current,
        });
    }
    Bundle { cas }
}

/// What became of one early retirement asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retirement {
    Retired {
        fingerprint: String,
        subject: String,
    },
    /// The issuer signs with it now: never dropped.
    RefusedCurrent {
        fingerprint: String,
        subject: String,
    },
    /// Not in the bundle (already gone, or a typo).
    Unknown(String),
    /// The prefix names more than one CA.
    Ambiguous(String),
    /// Not at least 8 hex digits.
    Invalid(String),
}

impl std::fmt::Display for Retirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ann = kube_mtls_contract::names::TRUST_RETIRE;
        match self {
            Retirement::Retired {
                fingerprint,
                subject,
            } => {
                write!(
                    f,
                    "CA {subject} ({fingerprint}) retired early, as {ann} asks"
                )
            }
            Retirement::RefusedCurrent {
                fingerprint,
                subject,
            } => write!(
                f,
                "{ann} names {subject} ({fingerprint}), the CA the issuer signs with now: it stays. Fix: rotate the CA first, then retire the previous one"
            ),
            Retirement::Unknown(p) => write!(f, "{ann}: no CA in the bundle has fingerprint {p}"),
            Retirement::Ambiguous(p) => write!(
                f,
                "{ann}: {p} is the start of more than one fingerprint. Fix: give more digits"
            ),
            Retirement::Invalid(p) => write!(
                f,
                "{ann}: {p:?} is not a SHA-256 fingerprint (at least 8 hex digits, colons allowed)"
            ),
        }
    }
}

/// The fingerprints (or prefixes) a `kube-mtls.io/retire` value names.
pub fn retire_requests(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|p| p.replace(':', "").to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The bundle without the previous CAs `requests` name; the current CA stays.
pub fn retire(state: &Bundle, requests: &[String]) -> (Bundle, Vec<Retirement>) {
    let mut out = state.clone();
    let mut notes = Vec::new();
    for p in requests {
        if p.len() < 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            notes.push(Retirement::Invalid(p.clone()));
            continue;
        }
        let matching: Vec<&String> = out.cas.keys().filter(|fp| fp.starts_with(p)).collect();
        let fp = match matching.as_slice() {
            [] => {
                notes.push(Retirement::Unknown(p.clone()));
                continue;
            }
            [one] => (*one).clone(),
            _ => {
                notes.push(Retirement::Ambiguous(p.clone()));
                continue;
            }
        };
        let Some(entry) = out.cas.get(&fp) else {
            continue;
        };
        let subject = entry.ca.subject.clone();
        if entry.retain == Retain::Current {
            notes.push(Retirement::RefusedCurrent {
                fingerprint: fp,
                subject,
            });
        } else {
            out.cas.remove(&fp);
            notes.push(Retirement::Retired {
                fingerprint: fp,
                subject,
            });
        }
    }
    (out, notes)
}

impl Bundle {
    /// Every CA's PEM, in fingerprint order.
    pub fn pem(&self) -> String {
        self.cas.values().map(|e| e.ca.pem.as_str()).collect()
    }

    /// The retention record, as JSON (keys sorted, one CA a line or so).
    pub fn retention_json(&self) -> String {
        let records: BTreeMap<&str, Record> = self
            .cas
            .iter()
            .map(|(fp, e)| (fp.as_str(), e.record()))
            .collect();
        serde_json::to_string_pretty(&records).unwrap_or_default() + "\n"
    }

    /// The master ConfigMap's `data`.
    pub fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TRUST_BUNDLE_KEY.to_owned(), self.pem()),
            (TRUST_RETENTION_KEY.to_owned(), self.retention_json()),
        ])
    }

    /// Reads the master ConfigMap's `data`. A PEM block that does not parse,
    /// or a record that cannot be read, is left out with a warning; a CA
    /// without a record stays until its notAfter (retire it to drop it).
    pub fn from_data(data: &BTreeMap<String, String>) -> (Bundle, Vec<String>) {
        let mut warnings = Vec::new();
        let pem = data.get(TRUST_BUNDLE_KEY).map(String::as_str).unwrap_or("");
        let records: BTreeMap<String, Record> = match data.get(TRUST_RETENTION_KEY) {
            None => BTreeMap::new(),
            Some(json) => serde_json::from_str(json).unwrap_or_else(|e| {
                warnings.push(format!("{TRUST_RETENTION_KEY} does not parse ({e}): every CA is kept until its notAfter"));
                BTreeMap::new()
            }),
        };
        let mut bundle = Bundle::default();
        for block in pem_blocks(pem) {
            let ca = match super::der::pem_certs(block) {
                Ok(mut certs) if certs.len() == 1 => certs.remove(0),
                _ => {
                    warnings.push(format!(
                        "{TRUST_BUNDLE_KEY}: a block is not a certificate; left out"
                    ));
                    continue;
                }
            };
            let retain = match records.get(&ca.fingerprint) {
                Some(r) if r.retain_until == CURRENT => Retain::Current,
                Some(r) => Retain::Until(parse_rfc3339(&r.retain_until).unwrap_or(ca.not_after)),
                None => Retain::Until(ca.not_after),
            };
            bundle
                .cas
                .insert(ca.fingerprint.clone(), Entry { ca, retain });
        }
        (bundle, warnings)
    }

    /// The CAs the issuer signs with now.
    pub fn current(&self) -> impl Iterator<Item = &Entry> {
        self.cas.values().filter(|e| e.retain == Retain::Current)
    }
}

impl Entry {
    pub fn record(&self) -> Record {
        Record {
            subject: self.ca.subject.clone(),
            not_after: rfc3339(self.ca.not_after),
            retain_until: match self.retain {
                Retain::Current => CURRENT.to_owned(),
                Retain::Until(t) => rfc3339(t),
            },
        }
    }
}

/// Each `-----BEGIN ...-----` to `-----END ...-----` block of a PEM text.
fn pem_blocks(pem: &str) -> Vec<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::der::pem_certs;
    use kube_mtls_tests::certs::{TestCa, Validity};

    const HOUR: i64 = 3_600;
    const NOW: i64 = 1_893_456_000; // 2030-01-01
    const DAY: i64 = 24 * HOUR;

    fn cert(ca: &TestCa) -> CaCert {
        pem_certs(&ca.cert_pem).expect("parses").remove(0)
    }

    fn retain_of(b: &Bundle, ca: &CaCert) -> Option<Retain> {
        b.cas.get(&ca.fingerprint).map(|e| e.retain)
    }

    #[test]
    fn the_first_ca_is_current() {
        let a = cert(&TestCa::new("A"));
        let b = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        assert_eq!(b.cas.len(), 1);
        assert_eq!(retain_of(&b, &a), Some(Retain::Current));
        assert_eq!(b.pem(), a.pem);
    }

    #[test]
    fn a_rotation_keeps_the_previous_ca_for_one_certificate_lifetime_and_adds_the_new() {
        let (a, new) = (cert(&TestCa::new("A")), cert(&TestCa::new("A")));
        let before = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let after = merge(&before, std::slice::from_ref(&new), NOW + HOUR, DAY);
        assert_eq!(retain_of(&after, &new), Some(Retain::Current));
        assert_eq!(retain_of(&after, &a), Some(Retain::Until(NOW + HOUR + DAY)));
        // Seen again later: the retention is not pushed out.
        let later = merge(&after, std::slice::from_ref(&new), NOW + 2 * HOUR, DAY);
        assert_eq!(later, after);
    }

    #[test]
    fn the_retention_is_capped_by_the_previous_cas_own_expiry() {
        let mut a = cert(&TestCa::new("A"));
        a.not_after = NOW + HOUR;
        let new = cert(&TestCa::new("A"));
        let before = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let after = merge(&before, std::slice::from_ref(&new), NOW, DAY);
        assert_eq!(retain_of(&after, &a), Some(Retain::Until(NOW + HOUR)));
    }

    #[test]
    fn a_previous_ca_leaves_when_its_retention_has_passed() {
        let (a, new) = (cert(&TestCa::new("A")), cert(&TestCa::new("A")));
        let before = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let rotated = merge(&before, std::slice::from_ref(&new), NOW, DAY);
        let just_before = merge(&rotated, std::slice::from_ref(&new), NOW + DAY - 1, DAY);
        assert!(just_before.cas.contains_key(&a.fingerprint));
        let gone = merge(&rotated, std::slice::from_ref(&new), NOW + DAY, DAY);
        assert_eq!(gone.cas.keys().collect::<Vec<_>>(), [&new.fingerprint]);
    }

    #[test]
    fn the_same_ca_seen_again_changes_nothing_not_even_a_byte() {
        let a = cert(&TestCa::new("A"));
        let once = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let twice = merge(&once, &[a.clone(), a.clone()], NOW + DAY * 30, DAY);
        assert_eq!(once, twice);
        assert_eq!(once.data(), twice.data());
        let (read, warnings) = Bundle::from_data(&once.data());
        assert_eq!((read, warnings), (once, Vec::<String>::new()));
    }

    #[test]
    fn nothing_seen_changes_nothing() {
        let (a, new) = (cert(&TestCa::new("A")), cert(&TestCa::new("A")));
        let b = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let rotated = merge(&b, std::slice::from_ref(&new), NOW, DAY);
        assert_eq!(merge(&rotated, &[], NOW + HOUR, DAY), rotated);
        // But an expired previous CA still leaves.
        let later = merge(&rotated, &[], NOW + 2 * DAY, DAY);
        assert_eq!(later.cas.keys().collect::<Vec<_>>(), [&new.fingerprint]);
    }

    #[test]
    fn an_intermediate_ca_is_trusted_with_its_root_and_rolls_alone() {
        let root = TestCa::new("root");
        let first = root.intermediate("intermediate 1", Validity::Current);
        let second = root.intermediate("intermediate 2", Validity::Current);
        let (r, i1, i2) = (cert(&root), cert(&first), cert(&second));
        let b = merge(&Bundle::default(), &[r.clone(), i1.clone()], NOW, DAY);
        assert_eq!(b.current().count(), 2);
        let rolled = merge(&b, &[r.clone(), i2.clone()], NOW, DAY);
        assert_eq!(
            retain_of(&rolled, &r),
            Some(Retain::Current),
            "the root stays"
        );
        assert_eq!(retain_of(&rolled, &i2), Some(Retain::Current));
        assert_eq!(retain_of(&rolled, &i1), Some(Retain::Until(NOW + DAY)));
        assert_eq!(rolled.pem().matches("BEGIN CERTIFICATE").count(), 3);
    }

    #[test]
    fn an_early_retirement_drops_a_previous_ca_and_never_the_current_one() {
        let (a, new) = (cert(&TestCa::new("A")), cert(&TestCa::new("A")));
        let b = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let rotated = merge(&b, std::slice::from_ref(&new), NOW, DAY);
        let req = retire_requests(&format!("{}, {}", &a.fingerprint[..12], new.fingerprint));
        let (out, notes) = retire(&rotated, &req);
        assert_eq!(out.cas.keys().collect::<Vec<_>>(), [&new.fingerprint]);
        assert!(
            matches!(&notes[0], Retirement::Retired { fingerprint, .. } if *fingerprint == a.fingerprint)
        );
        assert!(matches!(&notes[1], Retirement::RefusedCurrent { .. }));
        assert!(notes[1].to_string().contains("stays"), "{}", notes[1]);
        // Retired, it does not come back: the issuer does not have it.
        assert_eq!(merge(&out, std::slice::from_ref(&new), NOW, DAY), out);
        let (same, notes) = retire(&out, &retire_requests("zz, 1234, deadbeefdeadbeef"));
        assert_eq!(same, out);
        assert!(matches!(notes[0], Retirement::Invalid(_)));
        assert!(matches!(notes[1], Retirement::Invalid(_)));
        assert!(matches!(notes[2], Retirement::Unknown(_)));
    }

    #[test]
    fn the_record_reads_back_and_a_damaged_one_keeps_every_ca() {
        let (a, new) = (cert(&TestCa::new("A")), cert(&TestCa::new("A")));
        let b = merge(&Bundle::default(), std::slice::from_ref(&a), NOW, DAY);
        let rotated = merge(&b, std::slice::from_ref(&new), NOW, DAY);
        let data = rotated.data();
        assert!(data[TRUST_RETENTION_KEY].contains(CURRENT));
        assert!(data[TRUST_RETENTION_KEY].contains("2030-01-02T00:00:00Z"));
        assert_eq!(Bundle::from_data(&data).0, rotated);
        let mut damaged = data.clone();
        damaged.insert(TRUST_RETENTION_KEY.into(), "{".into());
        damaged.insert(
            TRUST_BUNDLE_KEY.into(),
            format!(
                "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                rotated.pem()
            ),
        );
        let (read, warnings) = Bundle::from_data(&damaged);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(read.cas.len(), 2);
        assert!(
            read.cas
                .values()
                .all(|e| e.retain == Retain::Until(e.ca.not_after))
        );
    }
}
