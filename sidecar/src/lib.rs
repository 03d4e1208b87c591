//! The kube-mtls proxy: terminates inbound mutual TLS in front of a pod's app.
