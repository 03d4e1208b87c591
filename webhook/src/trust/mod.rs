//! The trust bundle: every CA a workload certificate still in use may chain
//! to, so a CA rotation never cuts traffic between a re-issued workload and
//! one that is not yet (issue 22).
//!
//! Who keeps it: the webhook's controller ([`controller`]). It watches the
//! issuer of `--issuer`; for a cert-manager CA issuer it reads the CA
//! Secret's certificates ([`issuer`]) and merges them into the master
//! ConfigMap `kube-mtls-trust-bundle` in its own namespace ([`bundle`]: a new
//! CA is added, a previous one kept until no leaf it signed can still be
//! valid). How it reaches pods: a ConfigMap `kube-mtls-trust` in every
//! namespace with injected workloads, kept equal to the master, mounted into
//! each injected pod at `/var/run/kube-mtls/trust` and named by the sidecar's
//! `--trust-bundle`.
//!
//! `--trust-bundle-source` ([`TrustSource`]) chooses: `configmap` (that) or
//! `secret` (each pod trusts its own Secret's `ca.crt`, for issuers whose CA
//! the webhook cannot read). With `configmap`, a pod is given the bundle only
//! once the controller has one ([`TrustShared`]); until then, and for an
//! issuer that is not a CA issuer, pods get `secret`, with a warning.

pub mod bundle;
pub mod controller;
pub mod der;
pub mod issuer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use kube_mtls_contract::names::TRUST_CONFIGMAP;

/// Where an injected sidecar takes the CAs it verifies peers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustSource {
    /// The ConfigMap `kube-mtls-trust` the webhook's controller keeps from the
    /// issuer's CA (a cert-manager CA issuer): CA rotations cut no traffic.
    #[default]
    #[value(name = "configmap")]
    ConfigMap,
    /// The pod's own Secret's `ca.crt`: for issuers that are not CA issuers
    /// (Vault, ACME, external issuers), whose CA the webhook cannot read.
    Secret,
}

impl TrustSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustSource::ConfigMap => "configmap",
            TrustSource::Secret => "secret",
        }
    }
}

/// What the controller knows that admission needs: the bundle once there is
/// one, or why there cannot be one. Shared between them in memory, read on
/// every admission without an API call.
#[derive(Debug, Default)]
pub struct TrustShared {
    state: RwLock<SharedState>,
    settled: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct SharedState {
    pem: Option<Arc<str>>,
    fallback: Option<String>,
}

impl TrustShared {
    /// The bundle's PEM, when pods can be given it.
    pub fn bundle(&self) -> Option<Arc<str>> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.pem.clone().filter(|_| s.fallback.is_none())
    }

    /// Why pods get their own Secret's `ca.crt` although `configmap` was asked for.
    pub fn fallback(&self) -> Option<String> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.fallback.clone()
    }

    /// The controller wrote `pem` (non-empty) to the master.
    pub fn set_bundle(&self, pem: String) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.pem = Some(pem.into());
        s.fallback = None;
    }

    /// The issuer's CA cannot be read; returns whether the reason changed.
    pub fn set_fallback(&self, reason: String) -> bool {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let changed = s.fallback.as_deref() != Some(reason.as_str());
        s.fallback = Some(reason);
        changed
    }

    /// The controller has made its first decision (bundle or fallback).
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }
}

/// The trust bundle as admission sees it: the shared state, and the
/// `kube-mtls-trust` ConfigMaps of every namespace from the controller's
/// reflector (so that one missing is created at admission, and one present
/// costs nothing).
#[derive(Clone)]
pub struct TrustView {
    pub shared: Arc<TrustShared>,
    pub configmaps: Store<ConfigMap>,
}

impl TrustView {
    /// Whether `namespace` has its `kube-mtls-trust` ConfigMap (from the cache).
    pub fn has_configmap(&self, namespace: &str) -> bool {
        self.configmaps
            .get(&ObjectRef::new(TRUST_CONFIGMAP).within(namespace))
            .is_some()
    }
}
