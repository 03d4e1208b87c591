//! `kubectl mtls`: a kubectl plugin that checks a kube-mtls installation and
//! shows its injected workloads and who may call whom.
//!
//! - [`check`]: pre-flight and health checks, pass/warn/fail with the fix.
//! - [`status`]: injected workloads, and pods with an outdated sidecar.
//! - [`policy`]: the callers × servers matrix.
//! - [`workloads`]: injected workloads read from their pods, resolved as the webhook does.
//! - [`install`]: finds the chart's webhook configuration, Service and Deployment.
//! - [`contract`]: what the plugin takes from the webhook and sidecar crates.
//! - [`certs`], [`output`].

pub mod certs;
pub mod check;
pub mod contract;
pub mod install;
pub mod output;
pub mod policy;
pub mod status;
pub mod workloads;
