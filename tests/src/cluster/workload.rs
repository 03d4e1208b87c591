//! Runs a Deployment's container the way kubelet would, as a process in the
//! cluster's namespace: its arguments and environment as stored in the API
//! server, its Secret volumes laid out as kubelet lays them out, and the
//! credentials of its ServiceAccount (a token from the TokenRequest API), so
//! the RBAC that the chart grants is exactly what the process gets.
//!
//! The control plane has no node, so this is how the chart's own webhook
//! Deployment runs: as this repository's binary, configured by the chart.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::{Cluster, User, write_kubeconfig};
use crate::certs::{Issued, KubeletDir};
use crate::kubelet::strings;

/// A Deployment's container started by [`Cluster::run_deployment`].
pub struct Workload {
    /// The process name in the cluster's logs (`<deployment>.log`).
    pub name: String,
    /// Mount path in the spec → where its Secret is laid out here.
    pub mounts: Vec<(String, PathBuf)>,
}

impl Cluster {
    /// Starts `container` of Deployment `namespace/name` from `binary`, with the
    /// Deployment's args and env, its Secret volumes and its ServiceAccount's token.
    pub fn run_deployment(
        &mut self,
        namespace: &str,
        name: &str,
        container: &str,
        binary: &Path,
    ) -> Workload {
        let deploy = self.get_json(&["-n", namespace, "get", "deployment", name]);
        let spec = &deploy["spec"]["template"]["spec"];
        let c = spec["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .unwrap_or_else(|| panic!("deployment {name} has no container {container}"));
        let mounts = self.lay_out_secrets(namespace, name, spec, c);
        let mut args: Vec<String> = strings(&c["args"]);
        for a in &mut args {
            for (path, local) in &mounts {
                *a = a.replace(path.as_str(), &local.display().to_string());
            }
        }
        let mut env = container_env(c, namespace);
        let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
        env.push(("KUBECONFIG".into(), self.token_kubeconfig(namespace, sa)));
        self.spawn(name, binary, &args, &env);
        Workload {
            name: name.to_owned(),
            mounts,
        }
    }

    /// A kubeconfig carrying a fresh token of service account `namespace/sa`.
    pub fn token_kubeconfig(&self, namespace: &str, sa: &str) -> String {
        let token = self.kubectl_ok(&["-n", namespace, "create", "token", sa, "--duration=2h"]);
        let path = self.dir.join(format!("{namespace}-{sa}.kubeconfig"));
        write_kubeconfig(&path, &self.pki.ca_pem, User::Token(token.trim()));
        path.display().to_string()
    }

    fn lay_out_secrets(
        &self,
        namespace: &str,
        workload: &str,
        spec: &Value,
        c: &Value,
    ) -> Vec<(String, PathBuf)> {
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let volume = spec["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]))
                .unwrap_or_else(|| panic!("no volume for mount {m}"));
            let Some(secret) = volume["secret"]["secretName"].as_str() else {
                panic!("the stand-in kubelet mounts only Secret volumes, not {volume}");
            };
            let local = self.dir.join("volumes").join(workload).join(secret);
            KubeletDir::create(&local, &self.secret_files(namespace, secret))
                .expect("lay out Secret volume");
            let path = m["mountPath"].as_str().expect("mountPath").to_owned();
            mounts.push((path, local));
        }
        mounts
    }

    /// The `tls.crt`, `tls.key` and `ca.crt` of a cert-manager Secret.
    pub fn secret_files(&self, namespace: &str, secret: &str) -> Issued {
        let s = self.get_json(&["-n", namespace, "get", "secret", secret]);
        let field = |k: &str| {
            let b64 = s["data"][k].as_str().unwrap_or_default();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("secret {secret} key {k}: {e}"));
            String::from_utf8(raw).unwrap_or_else(|e| panic!("secret {secret} key {k}: {e}"))
        };
        Issued {
            cert_pem: field("tls.crt"),
            key_pem: field("tls.key"),
            ca_pem: field("ca.crt"),
        }
    }
}

/// A container's env: literal values and the pod's namespace from the downward API.
fn container_env(c: &Value, namespace: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_owned(),
            (None, Some("metadata.namespace")) => namespace.to_owned(),
            _ => panic!("the stand-in kubelet cannot fill env {e}"),
        };
        env.push((name, value));
    }
    env
}
