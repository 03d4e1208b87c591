//! The kube-mtls admission webhook: injects the init container and mTLS sidecar into opted-in pods.
