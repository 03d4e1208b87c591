//! What the webhook knows of the cluster: MtlsProfiles and namespaces, read
//! from kube-runtime reflector caches (never from the API server per request),
//! or given as plain values for offline injection and tests; and, live, the
//! trust bundle's state from its controller.

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::profile::{MtlsProfile, MtlsProfileSpec};
use crate::trust::TrustView;
use kube_mtls_contract::names::{INJECT, PROFILE};

/// Profiles and namespaces, live or fixed.
#[derive(Clone)]
pub enum ClusterView {
    /// Reflector caches kept current by watches.
    Live {
        profiles: Store<MtlsProfile>,
        namespaces: Store<Namespace>,
        /// The trust bundle's controller; `None`: there is none.
        trust: Option<TrustView>,
    },
    /// Fixed values (offline injection, tests).
    Fixed {
        profiles: Vec<MtlsProfile>,
        namespaces: Vec<Namespace>,
    },
}

/// Whether injected pods can be given the trust bundle now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAvailability {
    /// The controller has one (always, offline: the controller will).
    Ready,
    /// Not yet: pods trust their own Secret's `ca.crt` meanwhile.
    Pending,
    /// The issuer's CA cannot be followed: why, with the fix.
    Unavailable(String),
}

impl ClusterView {
    /// A view with no profiles and no namespaces.
    pub fn empty() -> Self {
        ClusterView::Fixed {
            profiles: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    pub fn profile(&self, namespace: &str, name: &str) -> Option<MtlsProfileSpec> {
        match self {
            ClusterView::Live { profiles, .. } => profiles
                .get(&ObjectRef::new(name).within(namespace))
                .map(|p| p.spec.clone()),
            ClusterView::Fixed { profiles, .. } => profiles
                .iter()
                .find(|p| {
                    p.metadata.name.as_deref() == Some(name)
                        && p.metadata.namespace.as_deref() == Some(namespace)
                })
                .map(|p| p.spec.clone()),
        }
    }

    fn namespace_meta<T>(&self, namespace: &str, f: impl Fn(&Namespace) -> Option<T>) -> Option<T> {
        match self {
            ClusterView::Live { namespaces, .. } => namespaces
                .get(&ObjectRef::new(namespace))
                .and_then(|n| f(&n)),
            ClusterView::Fixed { namespaces, .. } => namespaces
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(namespace))
                .and_then(f),
        }
    }

    /// Whether pods can be given the trust bundle (no API call: in memory).
    pub fn trust_bundle(&self) -> TrustAvailability {
        let trust = match self {
            ClusterView::Fixed { .. } => return TrustAvailability::Ready,
            ClusterView::Live { trust: None, .. } => return TrustAvailability::Pending,
            ClusterView::Live { trust: Some(t), .. } => t,
        };
        if trust.shared.bundle().is_some() {
            return TrustAvailability::Ready;
        }
        match trust.shared.fallback() {
            Some(why) => TrustAvailability::Unavailable(why),
            None => TrustAvailability::Pending,
        }
    }

    /// The live trust bundle's view, for admission to create a missing ConfigMap.
    pub fn trust(&self) -> Option<&TrustView> {
        match self {
            ClusterView::Live { trust, .. } => trust.as_ref(),
            ClusterView::Fixed { .. } => None,
        }
    }

    /// Whether the namespace carries the label `kube-mtls.io/inject=enabled`.
    pub fn namespace_opted_in(&self, namespace: &str) -> bool {
        self.namespace_meta(namespace, |n| {
            n.metadata
                .labels
                .as_ref()?
                .get(INJECT)
                .map(|v| v == "enabled")
        })
        .unwrap_or(false)
    }

    /// The namespace's default profile (annotation `kube-mtls.io/profile`).
    pub fn namespace_default_profile(&self, namespace: &str) -> Option<String> {
        self.namespace_meta(namespace, |n| {
            n.metadata.annotations.as_ref()?.get(PROFILE).cloned()
        })
    }
}
