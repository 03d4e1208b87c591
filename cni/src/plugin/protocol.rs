//! The CNI protocol as this plugin speaks it (spec 0.3.0 to 1.1.0): the
//! invocation's environment, the network configuration on stdin, the result
//! passed through on stdout, and the error object a runtime reads when the
//! plugin fails. Pure functions of their input, so every rule of the spec the
//! plugin relies on is unit-tested here.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The spec versions this plugin reads and writes, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST_VERSION: &str = "1.1.0";
/// The key of `runtimeConfig` under which containerd (1.5 and later) passes
/// the pod's annotations to plugins that declare the capability.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

const DEFAULT_LOOKUP_ATTEMPTS: u32 = 30;
const DEFAULT_LOOKUP_INTERVAL_MS: u64 = 1000;

/// The CNI error codes this plugin returns (spec, "Error codes").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (stdin).
    pub const IO: u32 = 5;
    /// Failed to decode content (stdin is not the configuration).
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// The pod's settings (its annotation) cannot be used.
    pub const SETTINGS: u32 = 100;
    /// The pod's settings could not be learnt from the API server.
    pub const POD_LOOKUP: u32 = 101;
    /// The pod's network namespace cannot be entered.
    pub const NETNS: u32 = 102;
    /// The redirect rules could not be installed.
    pub const RULES: u32 = 103;
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    /// The command a `CNI_COMMAND` value names, if any.
    pub fn parse(value: &str) -> Option<Command> {
        Some(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// A failure as the runtime reads it: `{"cniVersion","code","msg","details"}`
/// on stdout, and a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// The version to answer in: the configuration's when it is supported.
    pub version: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
            version: LATEST_VERSION.to_owned(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Answers in `version` when this plugin speaks it.
    pub fn in_version(mut self, version: &str) -> CniError {
        if is_supported(version) {
            self.version = version.to_owned();
        }
        self
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cniVersion": self.version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND` as given.
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as given.
    pub args: Option<String>,
}

impl Invocation {
    /// Reads the variables through `var` (the process environment in the binary);
    /// an empty value counts as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Invocation {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        Invocation {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }

    /// The variables ADD cannot do without; the error names the first missing.
    pub fn require_for_add(&self) -> Result<&std::path::Path, CniError> {
        let missing = |name: &str, what: &str| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "{name} is not set: ADD needs {what}. Fix: run kube-mtls-cni from a container runtime, chained in the node's CNI configuration (conflist)"
                ),
            )
        };
        if self.container_id.is_none() {
            return Err(missing("CNI_CONTAINERID", "the container's ID"));
        }
        if self.ifname.is_none() {
            return Err(missing("CNI_IFNAME", "the interface name"));
        }
        self.netns
            .as_deref()
            .ok_or_else(|| missing("CNI_NETNS", "the pod's network namespace"))
    }

    /// The Kubernetes pod named by `CNI_ARGS`, if it names one.
    pub fn pod(&self) -> Result<Option<PodRef>, CniError> {
        let Some(raw) = &self.args else {
            return Ok(None);
        };
        let pairs = parse_cni_args(raw).map_err(|e| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: {e}. Fix: write KEY=VALUE pairs separated by `;`"),
            )
        })?;
        let find = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        Ok(match (find("K8S_POD_NAMESPACE"), find("K8S_POD_NAME")) {
            (Some(namespace), Some(name)) => Some(PodRef { namespace, name }),
            _ => None,
        })
    }
}

/// A pod by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, in order. Empty items are
/// skipped; a value may itself contain `=`.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(';')
        .filter(|item| !item.trim().is_empty())
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(format!("{item:?} is not KEY=VALUE")),
        })
        .collect()
}

/// Whether this plugin speaks `version`.
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Whether `version` has CHECK (0.4.0 and later).
pub fn has_check(version: &str) -> bool {
    SUPPORTED_VERSIONS
        .iter()
        .position(|v| *v == version)
        .is_some_and(|i| i >= 2)
}

/// The network configuration on stdin: the spec's keys this plugin reads,
/// and its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Map<String, Value>>,
    /// The kubeconfig the agent writes, for the pod lookup.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default = "default_attempts")]
    pub pod_lookup_attempts: u32,
    #[serde(default = "default_interval")]
    pub pod_lookup_interval_ms: u64,
    #[serde(default)]
    pub log_level: Option<String>,
}

fn default_attempts() -> u32 {
    DEFAULT_LOOKUP_ATTEMPTS
}

fn default_interval() -> u64 {
    DEFAULT_LOOKUP_INTERVAL_MS
}

impl NetConf {
    /// Decodes stdin; does not check the version (see [`NetConf::check_version`]).
    pub fn decode(stdin: &str) -> Result<NetConf, CniError> {
        serde_json::from_str(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not valid: {e}. Fix: check the kube-mtls-cni entry of the node's conflist"),
            )
        })
    }

    /// The CNI "incompatible version" error when this plugin does not speak
    /// the configuration's `cniVersion`.
    pub fn check_version(&self) -> Result<(), CniError> {
        if is_supported(&self.cni_version) {
            return Ok(());
        }
        let given = if self.cni_version.is_empty() {
            "no cniVersion".to_owned()
        } else {
            format!("cniVersion {:?}", self.cni_version)
        };
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version: the network configuration has {given}; kube-mtls-cni supports {}. Fix: set the conflist's cniVersion to one of them",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }

    /// The pod annotations the runtime passed (`runtimeConfig`), `None` when
    /// it passed none.
    pub fn runtime_annotations(&self) -> Result<Option<Map<String, Value>>, CniError> {
        let Some(value) = self
            .runtime_config
            .as_ref()
            .and_then(|rc| rc.get(POD_ANNOTATIONS_CAPABILITY))
        else {
            return Ok(None);
        };
        match value {
            Value::Object(map) => Ok(Some(map.clone())),
            Value::Null => Ok(None),
            other => Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtimeConfig[{POD_ANNOTATIONS_CAPABILITY:?}] is not an object of annotations but {other}. Fix: check the container runtime's CNI set-up"
                ),
            )
            .in_version(&self.cni_version)),
        }
    }

    /// What ADD and CHECK print: the previous result in this configuration's
    /// version, or, first in a chain, an empty result of that version.
    pub fn passthrough(&self) -> Result<Value, CniError> {
        let mut result = match &self.prev_result {
            None | Some(Value::Null) => json!({ "dns": {} }),
            Some(Value::Object(map)) => Value::Object(map.clone()),
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("prevResult is not a result object but {other}. Fix: check the plugins chained before kube-mtls-cni"),
                )
                .in_version(&self.cni_version));
            }
        };
        if let Value::Object(map) = &mut result {
            map.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        Ok(result)
    }
}

/// VERSION's answer: the version asked in (the stdin's `cniVersion` when this
/// plugin speaks it, else the newest) and every version it speaks.
pub fn version_info(stdin: &str) -> Value {
    let asked = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| is_supported(v));
    json!({
        "cniVersion": asked.as_deref().unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &str) -> Vec<(String, String)> {
        parse_cni_args(raw).unwrap()
    }

    #[test]
    fn cni_args_are_pairs_in_order() {
        assert_eq!(
            pairs(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=orders-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
            ),
            vec![
                ("IgnoreUnknown".to_owned(), "1".to_owned()),
                ("K8S_POD_NAMESPACE".to_owned(), "shop".to_owned()),
                ("K8S_POD_NAME".to_owned(), "orders-0".to_owned()),
                ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), "abc".to_owned()),
                ("K8S_POD_UID".to_owned(), "u-1".to_owned()),
            ]
        );
        // Empty items and a trailing separator; a value holding `=`.
        assert_eq!(
            pairs(";A=1;;B=x=y;"),
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned())
            ]
        );
        assert_eq!(pairs(""), vec![]);
        assert!(parse_cni_args("A=1;B").unwrap_err().contains("\"B\""));
        assert!(parse_cni_args("=1").is_err());
    }

    fn invocation(args: &str) -> Invocation {
        Invocation {
            args: Some(args.to_owned()),
            ..Invocation::default()
        }
    }

    #[test]
    fn the_pod_comes_from_cni_args() {
        let pod = invocation("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=orders-0")
            .pod()
            .unwrap();
        assert_eq!(
            pod,
            Some(PodRef {
                namespace: "shop".into(),
                name: "orders-0".into()
            })
        );
        assert_eq!(pod.unwrap().to_string(), "shop/orders-0");
        // Not a Kubernetes pod: no name, or no namespace.
        assert_eq!(invocation("K8S_POD_NAME=x").pod().unwrap(), None);
        assert_eq!(Invocation::default().pod().unwrap(), None);
        let e = invocation("K8S_POD_NAME").pod().unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.starts_with("CNI_ARGS:"), "{}", e.msg);
    }

    #[test]
    fn add_names_the_missing_variable() {
        let vars = |missing: &'static str| {
            Invocation::from_vars(move |name| {
                (name != missing).then(|| match name {
                    "CNI_NETNS" => "/run/netns/x".to_owned(),
                    _ => "v".to_owned(),
                })
            })
        };
        for name in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            let e = vars(name).require_for_add().unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV);
            assert!(e.msg.starts_with(name), "{}", e.msg);
        }
        assert_eq!(
            vars("none").require_for_add().unwrap(),
            std::path::Path::new("/run/netns/x")
        );
        // An empty value is no value.
        let empty = Invocation::from_vars(|name| (name == "CNI_NETNS").then(String::new));
        assert_eq!(empty.netns, None);
    }

    fn conf(value: Value) -> NetConf {
        NetConf::decode(&value.to_string()).unwrap()
    }

    #[test]
    fn the_previous_result_passes_through_in_the_configs_version() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]},
        });
        let c = conf(
            json!({"cniVersion": "1.0.0", "name": "k8s", "type": "kube-mtls-cni", "prevResult": prev}),
        );
        let mut expected = prev.clone();
        expected["cniVersion"] = json!("1.0.0");
        assert_eq!(c.passthrough().unwrap(), expected);

        // First in a chain: an empty result of the configuration's version.
        let first = conf(json!({"cniVersion": "0.4.0", "name": "k8s", "type": "kube-mtls-cni"}));
        assert_eq!(
            first.passthrough().unwrap(),
            json!({"cniVersion": "0.4.0", "dns": {}})
        );

        let bad = conf(json!({"cniVersion": "1.0.0", "prevResult": [1]}));
        assert_eq!(bad.passthrough().unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn our_keys_and_their_defaults() {
        let c = conf(
            json!({"cniVersion": "1.0.0", "kubeconfig": "/etc/cni/net.d/kube-mtls-cni.kubeconfig"}),
        );
        assert_eq!(c.pod_lookup_attempts, 30);
        assert_eq!(c.pod_lookup_interval_ms, 1000);
        assert_eq!(c.log_level, None);
        let c = conf(
            json!({"cniVersion": "1.0.0", "podLookupAttempts": 2, "podLookupIntervalMs": 50, "logLevel": "debug"}),
        );
        assert_eq!((c.pod_lookup_attempts, c.pod_lookup_interval_ms), (2, 50));
        assert_eq!(NetConf::decode("{").unwrap_err().code, code::DECODE);
    }

    #[test]
    fn versions() {
        for v in SUPPORTED_VERSIONS {
            conf(json!({ "cniVersion": v })).check_version().unwrap();
        }
        for v in ["0.2.0", "2.0.0", ""] {
            let e = conf(json!({ "cniVersion": v }))
                .check_version()
                .unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
            assert!(e.msg.contains("1.1.0"), "{}", e.msg);
        }
        assert!(!has_check("0.3.1") && has_check("0.4.0") && has_check("1.1.0"));
        assert_eq!(
            version_info(r#"{"cniVersion":"0.4.0"}"#),
            json!({"cniVersion": "0.4.0", "supportedVersions": SUPPORTED_VERSIONS})
        );
        assert_eq!(version_info("")["cniVersion"], "1.1.0");
    }

    #[test]
    fn runtime_annotations() {
        let c = conf(json!({"cniVersion": "1.0.0", "runtimeConfig": {
            POD_ANNOTATIONS_CAPABILITY: {"a": "b"}, "portMappings": []}}));
        assert_eq!(c.runtime_annotations().unwrap().unwrap()["a"], "b");
        let none = conf(json!({"cniVersion": "1.0.0", "runtimeConfig": {"portMappings": []}}));
        assert_eq!(none.runtime_annotations().unwrap(), None);
        let bad = conf(
            json!({"cniVersion": "1.0.0", "runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: "x"}}),
        );
        assert_eq!(
            bad.runtime_annotations().unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn error_object() {
        let e = CniError::new(code::RULES, "m")
            .details("d")
            .in_version("0.4.0");
        assert_eq!(
            e.to_json(),
            json!({"cniVersion": "0.4.0", "code": 103, "msg": "m", "details": "d"})
        );
        assert_eq!(CniError::new(1, "m").in_version("9.9.9").version, "1.1.0");
    }
}
