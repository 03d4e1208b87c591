//! The few fields of an X.509 CA certificate the trust bundle records: its
//! SHA-256 fingerprint, its subject (for people) and its notAfter (for
//! retention). A small DER reader rather than a full X.509 parser: the
//! webhook only reads certificates cert-manager wrote into a CA Secret, never
//! verifies anything with them (the sidecar does), and every crate it links
//! is also linked into the fuzz targets, whose lock file is kept in step.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A certificate that is not what X.509 (RFC 5280) says it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct DerError(pub &'static str);

/// One CA certificate as the bundle keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    /// Lower-case hex SHA-256 of the DER: the certificate's name in the bundle.
    pub fingerprint: String,
    /// `CN=..., O=...` for people.
    pub subject: String,
    /// Seconds since the epoch.
    pub not_after: i64,
    /// The certificate as one PEM block.
    pub pem: String,
}

impl CaCert {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CaCert, DerError> {
        let fields = tbs_fields(der)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        Ok(CaCert {
            fingerprint: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            subject: fields.subject,
            not_after: fields.not_after,
            pem: to_pem(der),
        })
    }
}

/// Every certificate of a PEM text, in order; a block that does not parse is
/// an error (a CA Secret is either readable or not).
pub fn pem_certs(pem: &str) -> Result<Vec<CaCert>, DerError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| {
            c.map_err(|_| DerError("a PEM block does not decode"))
                .and_then(|der| CaCert::from_der(&der))
        })
        .collect()
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

struct TbsFields {
    subject: String,
    not_after: i64,
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, ... }, ... }
fn tbs_fields(der: &[u8]) -> Result<TbsFields, DerError> {
    let (cert, _) = expect(der, SEQUENCE, "the certificate is not a SEQUENCE")?;
    let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serialNumber, signature, issuer
    }
    let (validity, rest) = expect(rest, SEQUENCE, "validity is not a SEQUENCE")?;
    let (subject, _) = expect(rest, SEQUENCE, "subject is not a SEQUENCE")?;
    let after_not_before = tlv(validity)?.2;
    let (tag, not_after, _) = tlv(after_not_before)?;
    Ok(TbsFields {
        subject: name(subject)?,
        not_after: time(tag, not_after)?,
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The next element: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let short = DerError("truncated");
    let (&tag, rest) = input.split_first().ok_or(short.clone())?;
    let (&first, rest) = rest.split_first().ok_or(short.clone())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("a length is not definite DER"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(short);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(
    input: &'a [u8],
    want: u8,
    problem: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DerError> {
    let (tag, content, rest) = tlv(input)?;
    if tag != want {
        return Err(DerError(problem));
    }
    Ok((content, rest))
}

/// The attributes people know, in the order written: `CN=a, O=b`.
fn name(mut rdns: &[u8]) -> Result<String, DerError> {
    const KNOWN: [(&[u8], &str); 6] = [
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
    ];
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (mut set, rest) = expect(rdns, SET, "a name's RDN is not a SET")?;
        rdns = rest;
        while !set.is_empty() {
            let (attr, next) = expect(set, SEQUENCE, "an attribute is not a SEQUENCE")?;
            set = next;
            let (oid, value) = expect(attr, OID, "an attribute type is not an OID")?;
            let (_, text, _) = tlv(value)?;
            if let Some((_, short)) = KNOWN.iter().find(|(o, _)| *o == oid) {
                parts.push(format!("{short}={}", String::from_utf8_lossy(text)));
            }
        }
    }
    Ok(parts.join(", "))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in seconds.
fn time(tag: u8, content: &[u8]) -> Result<i64, DerError> {
    let bad = DerError("notAfter is not a UTCTime or GeneralizedTime in UTC");
    let text = std::str::from_utf8(content).map_err(|_| bad.clone())?;
    let digits = text.strip_suffix('Z').ok_or(bad.clone())?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().map_err(|_| bad.clone())?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().map_err(|_| bad.clone())?, &digits[4..]),
        _ => return Err(bad),
    };
    let field = |i: usize| -> Result<i64, DerError> {
        rest.get(i..i + 2)
            .and_then(|s| s.parse().ok())
            .ok_or(bad.clone())
    };
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    Ok(days_from_civil(year, month, day) * 86_400 + h * 3_600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, date_time_ymd};

    fn ca(cn: &str, ou: Option<&str>, until: (i32, u8, u8)) -> (String, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            dn.push(DnType::OrganizationalUnitName, ou);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), cert.der().to_vec())
    }

    #[test]
    fn subject_expiry_and_fingerprint_are_read() {
        let (pem, der) = ca("kube-mtls workload CA", Some("rotation 2"), (2030, 1, 1));
        let certs = pem_certs(&pem).expect("parses");
        assert_eq!(certs.len(), 1);
        let c = &certs[0];
        assert_eq!(c.subject, "CN=kube-mtls workload CA, OU=rotation 2");
        assert_eq!(c.not_after, 1_893_456_000, "2030-01-01T00:00:00Z");
        assert_eq!(c.fingerprint.len(), 64);
        assert_eq!(c.pem, pem.replace("\r\n", "\n"), "written back as read");
        assert_eq!(CaCert::from_der(&der).expect("DER"), *c);
    }

    #[test]
    fn generalized_time_after_2049_is_read() {
        let (pem, _) = ca("far", None, (2095, 1, 1));
        let c = &pem_certs(&pem).expect("parses")[0];
        assert_eq!(c.not_after, 3_944_678_400, "2095-01-01T00:00:00Z");
    }

    #[test]
    fn what_is_not_a_certificate_is_an_error_not_a_panic() {
        assert!(CaCert::from_der(&[]).is_err());
        assert!(CaCert::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(CaCert::from_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
        let (_, der) = ca("cut", None, (2030, 1, 1));
        for cut in [1, 10, der.len() / 2, der.len() - 1] {
            let _ = CaCert::from_der(&der[..cut]);
        }
        assert_eq!(pem_certs("no PEM here"), Ok(Vec::new()));
    }
}
