//! The pod's annotations from the API server, for runtimes that do not pass
//! them to the plugin: a GET of the pod's metadata through the kubeconfig the
//! agent writes, retried a bounded number of times (the pod, its token, or the
//! API server may lag the runtime by a moment).
//!
//! The lookup runs on a current-thread tokio runtime that is dropped before
//! the plugin enters the pod's network namespace, so the process is back to
//! one thread, in the host's namespaces, when it does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::PluginError;
use super::protocol::PodRef;

/// How long one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and how persistently to look the pod up.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub kubeconfig: PathBuf,
    /// At least one.
    pub attempts: u32,
    pub interval: Duration,
}

/// The pod's annotations, or the error naming the pod and the last failure.
pub fn annotations(lookup: &Lookup, pod: &PodRef) -> Result<BTreeMap<String, String>, PluginError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PluginError::PodLookup {
            attempts: 0,
            interval_ms: 0,
            last: format!("cannot start the lookup's runtime: {e}"),
            kubeconfig: lookup.kubeconfig.clone(),
        })?;
    let found = runtime.block_on(retry(lookup, pod));
    drop(runtime);
    found
}

async fn retry(lookup: &Lookup, pod: &PodRef) -> Result<BTreeMap<String, String>, PluginError> {
    let attempts = lookup.attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, get_once(&lookup.kubeconfig, pod)).await {
            Ok(Ok(annotations)) => return Ok(annotations),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
        tracing::warn!(%pod, attempt, attempts, error = %last, "pod lookup failed");
        if attempt < attempts {
            tokio::time::sleep(lookup.interval).await;
        }
    }
    Err(PluginError::PodLookup {
        attempts,
        interval_ms: u64::try_from(lookup.interval.as_millis()).unwrap_or(u64::MAX),
        last,
        kubeconfig: lookup.kubeconfig.clone(),
    })
}

/// One GET; the kubeconfig is read each time, so a token the agent has just
/// renewed is used at once.
async fn get_once(kubeconfig: &Path, pod: &PodRef) -> Result<BTreeMap<String, String>, String> {
    let shown = kubeconfig.display();
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("cannot read the kubeconfig {shown}: {}", chain(&e)))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("the kubeconfig {shown} is not usable: {}", chain(&e)))?;
    let server = config.cluster_url.to_string();
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(ATTEMPT_TIMEOUT);
    let client = Client::try_from(config)
        .map_err(|e| format!("no client from the kubeconfig {shown}: {}", chain(&e)))?;
    let meta = Api::<Pod>::namespaced(client, &pod.namespace)
        .get_metadata(&pod.name)
        .await
        .map_err(|e| format!("GET pod {pod} from {server}: {}", chain(&e)))?;
    Ok(meta.metadata.annotations.unwrap_or_default())
}

/// An error and its sources, `outer: inner: innermost`, each said once.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_says_each_cause_once() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(chain(&e), "outer: connection refused");
    }
}
