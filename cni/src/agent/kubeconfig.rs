//! The kubeconfig the plugin reads pods with, when the runtime does not hand
//! it the pod's annotations. The plugin runs on the host, outside any pod, so
//! the agent writes its own service account's credentials into a file in the
//! CNI configuration directory: the API server's service address, its CA and
//! the agent's token. The kubelet rotates the projected token; the agent
//! rewrites the file whenever what it would write differs from what is there,
//! so the plugin never holds an expired token for longer than a sync interval.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::json;

use super::files::{self, FileError, Ownership};

/// The kubeconfig's file name in the CNI configuration directory (its
/// extension is not one a runtime loads as a network configuration).
pub const FILE_NAME: &str = "kube-mtls-cni.kubeconfig";

/// The credentials hold a token: only root reads them.
const MODE: u32 = 0o600;

/// The kubeconfig cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(
        "{0} is not set: the agent runs in a pod, where the kubelet sets it to the API server's service. Fix: run the agent in its DaemonSet (or set {0} for a test)"
    )]
    NoServer(&'static str),
    #[error(
        "cannot read the service account's {file} in {dir} (--service-account-dir, KUBE_MTLS_SERVICE_ACCOUNT_DIR): {source}. Fix: mount the service account token (automountServiceAccountToken: true)"
    )]
    Account {
        file: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// The API server's address, from the variables the kubelet sets in every pod.
pub fn server_from_env() -> Result<String, KubeconfigError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| KubeconfigError::NoServer("KUBERNETES_SERVICE_HOST"))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .map_err(|_| KubeconfigError::NoServer("KUBERNETES_SERVICE_PORT"))?;
    Ok(server_url(&host, &port))
}

/// `https://host:port`, with an IPv6 host in brackets.
pub fn server_url(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// The kubeconfig's text (YAML) for `server`, a PEM CA and a token.
pub fn render(server: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "kube-mtls-cni", "user": {"token": token.trim()}}],
        "contexts": [{"name": "kube-mtls-cni", "context": {"cluster": "local", "user": "kube-mtls-cni"}}],
        "current-context": "kube-mtls-cni",
    });
    serde_yaml::to_string(&config).unwrap_or_default()
}

/// Writes the kubeconfig and keeps it current.
pub struct Kubeconfig {
    pub path: PathBuf,
    server: String,
    account_dir: PathBuf,
}

impl Kubeconfig {
    /// The kubeconfig at `<conf_dir>/kube-mtls-cni.kubeconfig` for `server`,
    /// with the credentials in `account_dir`.
    pub fn new(conf_dir: &Path, server: String, account_dir: &Path) -> Self {
        Kubeconfig {
            path: conf_dir.join(FILE_NAME),
            server,
            account_dir: account_dir.to_owned(),
        }
    }

    fn read(&self, file: &'static str) -> Result<Vec<u8>, KubeconfigError> {
        std::fs::read(self.account_dir.join(file)).map_err(|source| KubeconfigError::Account {
            file,
            dir: self.account_dir.clone(),
            source,
        })
    }

    /// Writes the file when it differs from what the credentials make now;
    /// returns whether it was written.
    pub fn sync(&self) -> Result<bool, KubeconfigError> {
        let token = self.read("token")?;
        let ca = self.read("ca.crt")?;
        let text = render(&self.server, &ca, &String::from_utf8_lossy(&token));
        if files::read_if_present(&self.path)?.as_deref() == Some(text.as_bytes()) {
            return Ok(false);
        }
        files::write_atomic(&self.path, text.as_bytes(), Ownership::mode(MODE))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(server_url("10.96.0.1", "443"), "https://10.96.0.1:443");
        assert_eq!(server_url("fd00::1", "443"), "https://[fd00::1]:443");
    }

    #[test]
    fn render_reads_back_as_a_kubeconfig() {
        let text = render("https://10.96.0.1:443", b"PEM", "tok\n");
        let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.96.0.1:443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(v["current-context"], "kube-mtls-cni");
        let parsed = kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig kube reads");
        assert_eq!(parsed.current_context.as_deref(), Some("kube-mtls-cni"));
    }
}
