//! Keeps workload Certificates as they were made at admission, and removes
//! them when their service account is gone.
//!
//! A kube-runtime controller watches the Certificates this webhook manages
//! (label `app.kubernetes.io/managed-by=kube-mtls`) and the service accounts
//! they belong to. Reconciling one Certificate:
//! 1. its service account no longer exists → delete the Certificate;
//! 2. a label, annotation or spec field the webhook sets differs from the
//!    desired object (someone edited it) → apply the desired object again.
//!
//! The desired object is rebuilt from what admission recorded on the
//! Certificate (`kube-mtls.io/*` annotations, lifetime included), not from the
//! webhook's current flags: a duration an MtlsProfile asked for stays. New
//! flag or profile values reach a Certificate when a pod of its service account
//! is next admitted. Certificates older than the recorded lifetime keep the
//! lifetime in their spec; see [`crate::certificate`]. Only the fields the
//! webhook sets are compared ([`DesiredCertificate::in_line`]), so defaults the
//! API server or cert-manager fill in do not make it apply on every reconcile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::certificate::{self, DesiredCertificate, FIELD_MANAGER, MANAGED_BY};
use crate::metrics::Metrics;
use kube_mtls_contract::names;

/// What reconciling needs.
pub struct Context {
    pub client: Client,
    /// The flags' lifetime, only for a Certificate that records none and has
    /// none in its spec.
    pub duration: String,
    pub renew_before: String,
    /// Counts reconciles by outcome.
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What a reconcile did, for logs and tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Deleted,
    Updated,
    InLine,
    /// Not one of ours, or missing the annotations it was made with.
    Ignored,
}

/// Reconciles one Certificate.
pub async fn reconcile_certificate(
    cert: &DynamicObject,
    ctx: &Context,
) -> Result<Outcome, ReconcileError> {
    let Some(desired) = DesiredCertificate::from_existing(cert, &ctx.duration, &ctx.renew_before)
    else {
        return Ok(Outcome::Ignored);
    };
    let ar = certificate::api_resource();
    let certs: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &desired.namespace, &ar);
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &desired.namespace);
    if accounts.get_opt(&desired.service_account).await?.is_none() {
        certs
            .delete(&cert.name_any(), &DeleteParams::default())
            .await?;
        tracing::info!(namespace = %desired.namespace, certificate = %cert.name_any(), "service account gone; Certificate deleted");
        return Ok(Outcome::Deleted);
    }
    if desired.in_line(cert) {
        return Ok(Outcome::InLine);
    }
    certs
        .patch(
            &cert.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired.object()),
        )
        .await?;
    tracing::info!(namespace = %desired.namespace, certificate = %cert.name_any(), "Certificate brought back in line with what was recorded on it");
    Ok(Outcome::Updated)
}

impl Outcome {
    /// The metric label of this outcome.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Deleted => "deleted",
            Outcome::Updated => "updated",
            Outcome::InLine => "in_line",
            Outcome::Ignored => "ignored",
        }
    }
}

async fn reconcile(cert: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let outcome = reconcile_certificate(&cert, &ctx).await?;
    ctx.metrics.reconciled(outcome.as_str());
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn error_policy(_: Arc<DynamicObject>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciled("error");
    tracing::warn!(error = %err, "Certificate reconcile failed; retrying");
    Action::requeue(Duration::from_secs(30))
}

/// Builds the controller: the store of the Certificates it watches (the
/// trust bundle's controller reads their namespaces from it), and the future
/// that runs it until the stream ends.
pub fn start(ctx: Context) -> (Store<DynamicObject>, impl std::future::Future<Output = ()>) {
    let ar = certificate::api_resource();
    let certs: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ar);
    let accounts: Api<ServiceAccount> = Api::all(ctx.client.clone());
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let ar_for_map = ar.clone();
    let controller = Controller::new_with(certs, watcher::Config::default().labels(&selector), ar)
        .watches(
            accounts,
            watcher::Config::default(),
            move |sa: ServiceAccount| {
                let ns = sa.namespace()?;
                let name = names::certificate_name(&sa.name_any());
                Some(ObjectRef::new_with(&name, ar_for_map.clone()).within(&ns))
            },
        );
    let store = controller.store();
    let run = controller
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        });
    (store, run)
}
