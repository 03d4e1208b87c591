//! Test harness shared by the kube-mtls crates.
//!
//! - [`bins`]: paths of the workspace's built binaries.
//! - [`deadline`]: a deadline for every wait, so a test fails instead of hanging.
//! - [`certs`]: a throwaway CA and workload certificates, generated per test.
//! - [`tls`]: an mTLS HTTP client (rustls + hyper).
//! - [`app`]: a stand-in app that echoes what it received.
//! - [`netns`]: "pods" built from network namespaces, with real iptables.
//! - [`kubelet`]: a stand-in kubelet that runs injected pod specs in those pods.
//! - [`cluster`]: a real control plane (etcd, API server, controller manager, cert-manager).
//! - [`process`]: running the real binaries, waiting for readiness, reading their logs.
//! - [`sidecar_env`]: a sidecar with direct listeners in front of the echo app.

pub mod app;
pub mod bins;
pub mod certs;
pub mod cluster;
pub mod deadline;
pub mod kubelet;
pub mod netns;
pub mod process;
pub mod sidecar_env;
pub mod tls;
