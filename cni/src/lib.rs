//! CNI mode: the pod's redirect rules installed by the node, not by a
//! privileged container in every pod.
//!
//! - [`plugin`]: the chained CNI plugin (ADD, DEL, CHECK, VERSION); on ADD
//!   for a pod the webhook marked ([`kube_mtls_contract::names::CNI_REDIRECT`])
//!   it applies `kube-mtls-init`'s rule plan inside the pod's network namespace.
//! - [`agent`]: the node agent the DaemonSet runs: installs the plugin
//!   (binary, kubeconfig, conflist entry), keeps it in place, removes it on
//!   exit, and repairs pods that started before it.

pub mod agent;
pub mod plugin;
