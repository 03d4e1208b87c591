//! The sidecar container's resource requests and limits.
//!
//! They start from the pod's MtlsProfile (or the built-in defaults) and the
//! `kube-mtls.io/sidecar-{cpu,memory}-{request,limit}` annotations override
//! them one by one. The API server refuses a container whose request is above
//! its limit, so after the overrides each resource is made consistent:
//!
//! - one side set by annotation, the other from the profile or defaults: the
//!   other side follows it (a request above the limit raises the limit, a limit
//!   below the request lowers the request), with a warning saying so;
//! - both sides set by annotation and in conflict: rejected, naming both;
//! - a profile in conflict with itself: rejected, naming the profile.
//!
//! Quantities are compared by value ([`quantity`]): `1Gi` is above `1000Mi`.

use serde_json::{Map, Value, json};

use crate::annotations::{PREFIX, Rejection, annotation, reject};
use crate::profile::MtlsProfileSpec;

/// The built-in sidecar resources, when no profile sets them.
fn defaults() -> Value {
    json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
}

/// A Kubernetes quantity (`500m`, `64Mi`, `1.5G`, `2e3`, `3`) in base units.
pub fn quantity(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(n * scale)
}

/// Where the sidecar's resources came from, for messages.
struct Source<'a> {
    profile: Option<&'a str>,
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self.profile {
            Some(p) => format!("from MtlsProfile {p}"),
            None => "the default".into(),
        }
    }
}

/// The sidecar's resources for a pod, and warnings about what was adjusted.
pub fn sidecar(
    ann: &Map<String, Value>,
    profile: &MtlsProfileSpec,
    profile_name: Option<&str>,
) -> Result<(Value, Vec<String>), Rejection> {
    let (mut resources, source) = match &profile.sidecar_resources {
        Some(r) => (
            serde_json::to_value(r).unwrap_or_else(|_| json!({})),
            Source {
                profile: profile_name,
            },
        ),
        None => (defaults(), Source { profile: None }),
    };
    for (name, section, key) in [
        ("sidecar-cpu-request", "requests", "cpu"),
        ("sidecar-memory-request", "requests", "memory"),
        ("sidecar-cpu-limit", "limits", "cpu"),
        ("sidecar-memory-limit", "limits", "memory"),
    ] {
        if let Some(q) = annotation(ann, name) {
            if quantity(q).is_none() {
                return Err(reject(
                    name,
                    format!("{q:?} is not a resource quantity"),
                    "write e.g. 50m for CPU or 64Mi for memory",
                ));
            }
            if let Some(obj) = resources.as_object_mut() {
                let entry = obj.entry(section).or_insert_with(|| json!({}));
                entry[key] = json!(q);
            }
        }
    }
    let mut warnings = Vec::new();
    for resource in ["cpu", "memory"] {
        let given = |side: &str| annotation(ann, &format!("sidecar-{resource}-{side}")).is_some();
        let sides = (given("request"), given("limit"));
        if let Some(w) = consistent(&mut resources, resource, sides, &source)? {
            warnings.push(w);
        }
    }
    Ok((resources, warnings))
}

/// Makes `resource`'s request at most its limit (see the module header).
/// `given`: whether the request and the limit were set by annotation.
fn consistent(
    resources: &mut Value,
    resource: &str,
    given: (bool, bool),
    source: &Source<'_>,
) -> Result<Option<String>, Rejection> {
    let read = |r: &Value, side: &str| {
        r.pointer(&format!("/{side}/{resource}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(request), Some(limit)) = (read(resources, "requests"), read(resources, "limits"))
    else {
        return Ok(None);
    };
    let (Some(rq), Some(lq)) = (quantity(&request), quantity(&limit)) else {
        return Ok(None);
    };
    if rq <= lq {
        return Ok(None);
    }
    let req_ann = format!("{PREFIX}sidecar-{resource}-request");
    let lim_ann = format!("{PREFIX}sidecar-{resource}-limit");
    match given {
        (true, true) => Err(Rejection {
            subject: format!("annotations {req_ann} and {lim_ann}"),
            problem: format!(
                "the request {request} is above the limit {limit}, which the API server refuses"
            ),
            fix: format!("make {req_ann} at most {lim_ann}, or leave one of them out"),
        }),
        (true, false) => {
            resources["limits"][resource] = json!(request);
            Ok(Some(format!(
                "kube-mtls: {req_ann} {request} is above the sidecar's {resource} limit {limit} ({}), so the limit is raised to {request}; set {lim_ann} to choose the limit",
                source.describe()
            )))
        }
        (false, true) => {
            resources["requests"][resource] = json!(limit);
            Ok(Some(format!(
                "kube-mtls: {lim_ann} {limit} is below the sidecar's {resource} request {request} ({}), so the request is lowered to {limit}; set {req_ann} to choose the request",
                source.describe()
            )))
        }
        (false, false) => Err(Rejection {
            subject: format!(
                "MtlsProfile {} spec.sidecarResources",
                source.profile.unwrap_or("(none)")
            ),
            problem: format!("the {resource} request {request} is above the limit {limit}"),
            fix: "make the profile's request at most its limit".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), json!(v)))
            .collect()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<(Value, Vec<String>), Rejection> {
        sidecar(&ann(pairs), &MtlsProfileSpec::default(), None)
    }

    #[test]
    fn quantities_compare_by_value() {
        assert_eq!(quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(quantity("5m"), Some(0.005));
        assert_eq!(quantity("1.5G"), Some(1.5e9));
        assert_eq!(quantity("2e3"), Some(2000.0));
        assert_eq!(quantity("1"), Some(1.0));
        assert!(quantity("1Gi") > quantity("1000Mi"));
        assert!(quantity("1G") < quantity("1Gi"));
        for bad in ["", "Mi", "-1", "1MB", "1.2.3", "."] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_alone_above_the_default_limit_raises_the_limit_with_a_warning() {
        let (r, w) = resolve(&[("sidecar-memory-request", "128Mi")]).unwrap();
        assert_eq!(r["requests"]["memory"], "128Mi");
        assert_eq!(r["limits"]["memory"], "128Mi");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("kube-mtls.io/sidecar-memory-limit"), "{w:?}");
    }

    #[test]
    fn a_limit_alone_below_the_default_request_lowers_the_request_with_a_warning() {
        let (r, w) = resolve(&[("sidecar-cpu-limit", "5m")]).unwrap();
        assert_eq!(r["requests"]["cpu"], "5m");
        assert_eq!(r["limits"]["cpu"], "5m");
        assert!(w[0].contains("kube-mtls.io/sidecar-cpu-request"), "{w:?}");
        let (r, w) = resolve(&[("sidecar-cpu-limit", "0.5")]).unwrap();
        assert_eq!((r["requests"]["cpu"].as_str(), w.len()), (Some("10m"), 0));
    }

    #[test]
    fn an_explicit_conflicting_pair_is_rejected_naming_both() {
        let err = resolve(&[
            ("sidecar-memory-request", "1Gi"),
            ("sidecar-memory-limit", "1000Mi"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kube-mtls.io/sidecar-memory-request")
                && err.contains("kube-mtls.io/sidecar-memory-limit")
                && err.contains("Fix:"),
            "{err}"
        );
        assert!(
            resolve(&[
                ("sidecar-memory-request", "64Mi"),
                ("sidecar-memory-limit", "64Mi")
            ])
            .is_ok()
        );
    }
}
