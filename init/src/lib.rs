//! The kube-mtls init container: installs the packet-filter rules that route a pod's traffic through its sidecar.
