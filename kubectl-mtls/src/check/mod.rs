//! `kubectl mtls check`: pre-flight before `helm install` and health after it.
//! Every check reads the cluster and gives lines of pass, warn or fail, each
//! warn and fail with the fix; a check that does not apply yet (before the
//! install) says so as skip. Any fail makes the command exit non-zero.
//!
//! - [`platform`]: the API server's version, cert-manager, issuers, the CRD.
//! - [`webhook`]: the webhook's replicas, a dry-run admission, the caBundle and
//!   the serving certificate.
//! - [`selectors`]: what the webhook configuration sends to the webhook.
//! - [`nodes`]: in CNI mode, the CNI agent on every node.
//! - [`namespaces`]: Pod Security of every opted-in namespace.
//! - [`trust`]: the trust bundle's CAs and where a CA rotation stands.

pub mod namespaces;
pub mod nodes;
pub mod platform;
pub mod selectors;
pub mod trust;
pub mod webhook;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::contract::INJECT;
use crate::install::{self, Install};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    /// Does not apply (yet): nothing to check.
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Pass => "PASS",
            Level::Skip => "SKIP",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// What was checked, e.g. `cert-manager` or `pod-security/shop`.
    pub check: String,
    pub level: Level,
    pub message: String,
    /// How to fix a warn or fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Line {
    pub fn pass(check: impl Into<String>, message: impl Into<String>) -> Line {
        Line::new(check, Level::Pass, message, None)
    }
    pub fn skip(check: impl Into<String>, message: impl Into<String>) -> Line {
        Line::new(check, Level::Skip, message, None)
    }
    pub fn warn(
        check: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Line {
        Line::new(check, Level::Warn, message, Some(fix.into()))
    }
    pub fn fail(
        check: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Line {
        Line::new(check, Level::Fail, message, Some(fix.into()))
    }
    fn new(
        check: impl Into<String>,
        level: Level,
        message: impl Into<String>,
        fix: Option<String>,
    ) -> Line {
        Line {
            check: check.into(),
            level,
            message: message.into(),
            fix,
        }
    }
}

/// Settings of the checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the dry-run admission creates its pod.
    pub probe_namespace: String,
    /// A certificate with less than this many seconds left is a warning.
    pub expiry_warning_secs: i64,
    /// Seconds since the epoch: certificate validity is judged at this time.
    pub now: i64,
}

/// What every check reads: the installation, the namespaces, which of them opted in.
pub struct Cluster {
    pub client: Client,
    /// `None` before `helm install`.
    pub install: Option<Install>,
    pub namespaces: Vec<Namespace>,
    /// Namespaces labelled `kube-mtls.io/inject=enabled` or with pods labelled so.
    pub opted_in: BTreeSet<String>,
}

impl Cluster {
    pub async fn read(client: &Client) -> Result<Cluster, kube::Error> {
        let install = install::discover(client).await?;
        let namespaces = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let mut opted_in: BTreeSet<String> = namespaces
            .iter()
            .filter(|n| n.labels().get(INJECT).map(String::as_str) == Some("enabled"))
            .map(ResourceExt::name_any)
            .collect();
        // Pods opted in by their own label; without the right to list pods
        // everywhere, the labelled namespaces are still judged.
        let labelled = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{INJECT}=enabled")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        opted_in.extend(labelled.iter().filter_map(|p| p.namespace()));
        if let Some(own) = install.as_ref().and_then(Install::namespace) {
            opted_in.remove(own);
        }
        Ok(Cluster {
            client: client.clone(),
            install,
            namespaces,
            opted_in,
        })
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name_any() == name)
    }
}

/// Runs every check, in the order a user fixes things.
pub async fn run(client: &Client, opts: &Options) -> Result<Vec<Line>, kube::Error> {
    let c = Cluster::read(client).await?;
    let mut lines = vec![platform::api_server(&c).await];
    let cert_manager = platform::cert_manager(&c).await;
    let has_cert_manager = cert_manager.level == Level::Pass;
    lines.push(cert_manager);
    lines.extend(platform::issuers(&c, has_cert_manager).await);
    lines.push(platform::crd(&c).await);
    lines.extend(webhook::all(&c, opts).await);
    lines.extend(selectors::check(&c));
    lines.extend(nodes::cni_agents(&c).await);
    lines.extend(namespaces::pod_security(&c));
    lines.extend(trust::rotation(&c, opts).await);
    Ok(lines)
}

/// Whether any line failed: the command's exit status.
pub fn failed(lines: &[Line]) -> bool {
    lines.iter().any(|l| l.level == Level::Fail)
}

/// An API error in a line: its message, without kube's wrapping.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}
