//! The kube-mtls init container: installs the packet-filter rules that route a
//! pod's traffic through its sidecar, so nothing reaches the app around it.
//!
//! - [`config`]: flags and validation.
//! - [`rules`]: the pure plan and its `iptables-restore` rendering.
//! - [`backend`]: nft or legacy, detection and the commands.
//! - [`apply`]: capability check, IPv6 detection, install and cleanup.
//! - [`validate`]: CNI mode's unprivileged check that the rules are in place.

pub mod apply;
pub mod backend;
pub mod config;
pub mod rules;
pub mod validate;
