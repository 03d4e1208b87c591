//! CNI mode's node agents: one line per node, saying whether the agent of the
//! chart's DaemonSet runs there and is ready. The agent is ready only while
//! the `kube-mtls-cni` binary is installed and its entry is in the node's
//! CNI configuration; on a node without a ready agent, injected pods start
//! without their redirect rules and their first init container fails. Only
//! shown when the webhook runs with `--cni-mode`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Cluster, Line, api_error};
use crate::contract::{CNI_AGENT_LABELS, CNI_BINARY, VALIDATE_NAME, VALIDATION_FAILED_EXIT};

/// What the agent's pods are found by.
fn agent_selector() -> String {
    CNI_AGENT_LABELS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where the agents run and what they are called, for the lines' fixes.
struct Agents {
    namespace: String,
    /// The DaemonSet's name, when it exists.
    daemonset: Option<String>,
    /// The agent pods by node.
    by_node: BTreeMap<String, Vec<Pod>>,
}

impl Agents {
    async fn read(client: &Client, namespace: &str) -> Result<Agents, kube::Error> {
        let params = ListParams::default().labels(&agent_selector());
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&params)
            .await?
            .items;
        let daemonset = Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .list(&params)
            .await?
            .items
            .first()
            .map(ResourceExt::name_any);
        let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for p in pods {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            if let Some(node) = node {
                by_node.entry(node).or_default().push(p);
            }
        }
        Ok(Agents {
            namespace: namespace.to_owned(),
            daemonset,
            by_node,
        })
    }

    /// The command that shows why the DaemonSet has no pod on `node`.
    fn describe(&self, node: &str) -> String {
        let ns = &self.namespace;
        match &self.daemonset {
            Some(ds) => format!(
                "kubectl -n {ns} describe daemonset {ds} (its tolerations and nodeSelector must admit node {node}); kubectl describe node {node}"
            ),
            None => "helm upgrade ... --set cni.enabled=true (the chart's DaemonSet installs the plugin on every node)".into(),
        }
    }
}

/// Whether a pod's `Ready` condition is True, and else what it says.
fn pod_ready(p: &Pod) -> Result<(), String> {
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if ready.is_some_and(|c| c.status == "True") {
        return Ok(());
    }
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    Err(match (waiting, ready.and_then(|c| c.reason.clone())) {
        (Some(w), _) => format!("{phase}, {w}"),
        (None, Some(r)) => format!("{phase}, {r}"),
        (None, None) => phase,
    })
}

/// The line of one node.
fn node_line(node: &Node, agents: &Agents) -> Line {
    let name = node.name_any();
    let check = format!("cni-agent/{name}");
    let os = node.labels().get("kubernetes.io/os").map(String::as_str);
    if os.is_some_and(|os| os != "linux") {
        return Line::skip(
            check,
            format!(
                "a {} node: neither the agent nor injected pods run here",
                os.unwrap_or("")
            ),
        );
    }
    let consequence = format!(
        "injected pods that start here get no redirect rules and fail their {VALIDATE_NAME} init container (exit {VALIDATION_FAILED_EXIT})"
    );
    let pods = agents
        .by_node
        .get(&name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(p) = pods.iter().find(|p| pod_ready(p).is_ok()) {
        return Line::pass(
            check,
            format!(
                "agent {} ready: {CNI_BINARY} is installed and in the node's CNI configuration",
                p.name_any()
            ),
        );
    }
    let ns = &agents.namespace;
    match pods.first() {
        Some(p) => {
            let why = pod_ready(p).err().unwrap_or_default();
            Line::fail(
                check,
                format!(
                    "agent {} is not ready ({why}): {CNI_BINARY} is not installed or not in the node's CNI configuration, so {consequence}",
                    p.name_any()
                ),
                format!(
                    "kubectl -n {ns} logs {pod}; kubectl -n {ns} describe pod {pod} (do cni.binDir and cni.confDir match this node's container runtime?)",
                    pod = p.name_any()
                ),
            )
        }
        None => Line::fail(
            check,
            format!("no kube-mtls CNI agent runs on this node: {consequence}"),
            agents.describe(&name),
        ),
    }
}

/// One line per node in CNI mode; none otherwise.
pub async fn cni_agents(c: &Cluster) -> Vec<Line> {
    let Some(install) = c.install.as_ref().filter(|i| i.flags.injection.cni_mode) else {
        return Vec::new();
    };
    let namespace = install.namespace().unwrap_or("kube-mtls");
    let nodes = match Api::<Node>::all(c.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return vec![Line::warn(
                "cni-agent",
                format!("cannot list nodes: {}", api_error(&e)),
                "run the check with permission to list nodes",
            )];
        }
    };
    let agents = match Agents::read(&c.client, namespace).await {
        Ok(a) => a,
        Err(e) => {
            return vec![Line::warn(
                "cni-agent",
                format!(
                    "cannot read the CNI agent's pods in {namespace}: {}",
                    api_error(&e)
                ),
                format!("run the check with permission to list pods and daemonsets in {namespace}"),
            )];
        }
    };
    let mut lines = Vec::new();
    if agents.daemonset.is_none() {
        lines.push(Line::fail(
            "cni-agent",
            format!(
                "the webhook runs with --cni-mode, but {namespace} has no DaemonSet labelled {}: no node has the plugin",
                agent_selector()
            ),
            "helm upgrade ... --set cni.enabled=true (sets both the webhook's --cni-mode and the DaemonSet)",
        ));
    }
    if nodes.is_empty() {
        lines.push(Line::skip("cni-agent", "the cluster has no nodes yet"));
    }
    lines.extend(nodes.iter().map(|n| node_line(n, &agents)));
    lines
}
