//! Why a pod is left alone: the skip reasons, shared by the admission policy
//! that decides them and the metrics that count them.

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotOptedIn,
    OptedOut,
    SystemNamespace,
    OwnNamespace,
    HostNetwork,
    AlreadyInjected,
    NotPodCreate,
}

impl Skip {
    /// Every reason, for tests and dashboards.
    pub const ALL: [Skip; 7] = [
        Skip::NotOptedIn,
        Skip::OptedOut,
        Skip::SystemNamespace,
        Skip::OwnNamespace,
        Skip::HostNetwork,
        Skip::AlreadyInjected,
        Skip::NotPodCreate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not_opted_in",
            Skip::OptedOut => "opted_out",
            Skip::SystemNamespace => "system_namespace",
            Skip::OwnNamespace => "webhook_namespace",
            Skip::HostNetwork => "host_network",
            Skip::AlreadyInjected => "already_injected",
            Skip::NotPodCreate => "not_pod_create",
        }
    }
}
