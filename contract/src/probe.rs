//! The app probes the sidecar's admin port forwards: the webhook rewrites a
//! probe that targets a captured port to `/app-health/<container>/<probe>` on
//! the admin port and hands the original target to the sidecar
//! (`--app-probes`, as JSON keyed by `<container>/<probe>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The probe kinds kubelet knows; the last segment of `/app-health/<container>/<probe>`.
pub const PROBE_KINDS: [&str; 3] = ["liveness", "readiness", "startup"];

/// Probe targets keyed by `<container>/<probe>`.
pub type AppProbes = BTreeMap<String, ProbeTarget>;

/// A kubelet probe the admin port forwards to the app: exactly one of the three.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
}

/// An HTTP GET on the app's port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetProbe {
    pub port: u16,
    /// Absolute path, `/` when the pod gives none.
    #[serde(default = "root_path")]
    pub path: String,
    /// `HTTP` or `HTTPS` (the app's own TLS, not verified, as kubelet does).
    #[serde(default = "http_scheme")]
    pub scheme: String,
    /// Headers kubelet would send, passed on as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

/// One header of an HTTP probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

/// A TCP connect to the app's port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpSocketProbe {
    pub port: u16,
}

/// A gRPC health check on the app's port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrpcProbe {
    pub port: u16,
    /// The health service name; empty for the server as a whole.
    #[serde(default)]
    pub service: String,
}

fn root_path() -> String {
    "/".to_owned()
}

fn http_scheme() -> String {
    "HTTP".to_owned()
}

const FLAG: &str = "app-probes";
const ENV: &str = "KUBE_MTLS_APP_PROBES";
const FIX: &str =
    r#"give a JSON object such as {"app/readiness":{"httpGet":{"port":8080,"path":"/healthz"}}}"#;

/// Parses and checks `--app-probes`.
pub fn parse_app_probes(value: &str) -> Result<AppProbes, ConfigError> {
    let text = if value.trim().is_empty() { "{}" } else { value };
    let probes: AppProbes = serde_json::from_str(text)
        .map_err(|e| ConfigError::new(FLAG, ENV, format!("not valid JSON for probes: {e}"), FIX))?;
    for (key, target) in &probes {
        check_probe(key, target)?;
    }
    Ok(probes)
}

/// Checks one probe target under its key.
pub fn check_probe(key: &str, target: &ProbeTarget) -> Result<(), ConfigError> {
    let kind_ok = key
        .split_once('/')
        .is_some_and(|(c, p)| !c.is_empty() && !c.contains('/') && PROBE_KINDS.contains(&p));
    if !kind_ok {
        return Err(ConfigError::new(
            FLAG,
            ENV,
            format!("key {key:?} is not <container>/<liveness|readiness|startup>"),
            FIX,
        ));
    }
    let kinds = [
        target.http_get.is_some(),
        target.tcp_socket.is_some(),
        target.grpc.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ConfigError::new(
            FLAG,
            ENV,
            format!("probe {key:?} must have exactly one of httpGet, tcpSocket, grpc"),
            FIX,
        ));
    }
    if let Some(h) = &target.http_get {
        let scheme = h.scheme.to_ascii_uppercase();
        if scheme != "HTTP" && scheme != "HTTPS" {
            return Err(ConfigError::new(
                FLAG,
                ENV,
                format!("probe {key:?} has scheme {:?}", h.scheme),
                "use HTTP or HTTPS",
            ));
        }
        if !h.path.starts_with('/') {
            return Err(ConfigError::new(
                FLAG,
                ENV,
                format!("probe {key:?} path {:?} does not start with '/'", h.path),
                "give an absolute path such as /healthz",
            ));
        }
    }
    Ok(())
}

/// Writes probes as `--app-probes` takes them (keys sorted at every level).
pub fn render_app_probes(probes: &AppProbes) -> String {
    serde_json::to_value(probes)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_checked() {
        assert!(
            parse_app_probes(r#"{"app/readiness":{"httpGet":{"port":8080,"path":"/h"}}}"#).is_ok()
        );
        assert!(parse_app_probes(r#"{"app/ready":{"tcpSocket":{"port":1}}}"#).is_err());
        assert!(parse_app_probes(r#"{"app/startup":{}}"#).is_err());
        assert!(parse_app_probes(r#"{"app/startup":{"httpGet":{"port":1,"path":"h"}}}"#).is_err());
        assert!(parse_app_probes("nope").is_err());
    }

    #[test]
    fn rendering_parses_back() {
        let text = r#"{"a/liveness":{"grpc":{"port":9000,"service":""}},"a/readiness":{"httpGet":{"httpHeaders":[{"name":"X","value":"y"}],"path":"/h","port":8080,"scheme":"HTTP"}}}"#;
        let probes = parse_app_probes(text).unwrap();
        assert_eq!(render_app_probes(&probes), text);
    }
}
