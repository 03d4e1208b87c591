//! The kube-mtls admission webhook: injects the init container (in CNI mode,
//! `--cni-mode`, an unprivileged check that the CNI plugin's rules are in
//! place) and the mTLS sidecar into opted-in pods, and keeps their
//! identities' certificates.
//!
//! - [`admission`]: the policy (skip, inject, reject) and the AdmissionReview wire format.
//! - [`annotations`]: `kube-mtls.io/*` annotations; [`resolve`]: the settings they resolve to.
//! - [`patch`]: the RFC 6902 operations on the pod's raw JSON.
//! - [`certificate`]: the cert-manager Certificate of an identity.
//! - [`controller`]: keeps those Certificates in line, removes orphans.
//! - [`profile`]: the `MtlsProfile` CRD. [`cluster`]: profiles and namespaces from reflectors.
//! - [`cli`]: the binary's flags.
//! - [`checks`]: what the pod's spec means for the injection (proxy UID, soft gaps).
//! - [`resources`]: the sidecar's resource requests and limits, kept consistent.
//! - [`offline`]: `inject -f` for GitOps, over [`yaml`] that reads and writes
//!   values as kubectl does. [`server`]: HTTPS and health ports.
//! - [`trust`]: the trust bundle (every CA a live workload certificate may
//!   chain to), kept by a controller and mounted into injected pods.
//! - [`events`], [`metrics`]. [`docs`]: the generated docs/contract.md.

pub mod admission;
pub mod annotations;
pub mod certificate;
pub mod checks;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod docs;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod offline;
pub mod patch;
pub mod profile;
pub mod resolve;
pub mod resources;
pub mod server;
pub mod skip;
pub mod trust;
pub mod yaml;
