//! Test harness shared by the kube-mtls crates.
//!
//! - [`bins`]: paths of the workspace's built binaries.
//! - [`certs`]: a throwaway CA and workload certificates, generated per test.
//! - [`netns`]: "pods" built from Linux network namespaces.
