//! Keeps workload Certificates in line with current settings, and removes them
//! when their service account is gone.
//!
//! A kube-runtime controller watches the Certificates this webhook manages
//! (label `app.kubernetes.io/managed-by=kube-mtls`) and the service accounts
//! they belong to. Reconciling one Certificate:
//! 1. its service account no longer exists → delete the Certificate;
//! 2. its spec differs from what the current settings make of it (someone
//!    edited it, or the lifetimes changed) → apply the desired spec again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::certificate::{self, DesiredCertificate, FIELD_MANAGER, MANAGED_BY};

/// What reconciling needs.
pub struct Context {
    pub client: Client,
    pub duration: String,
    pub renew_before: String,
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
    let current = cert.data.get("spec").cloned().unwrap_or_default();
    if current == desired.spec() {
        return Ok(Outcome::InLine);
    }
    certs
        .patch(
            &cert.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired.object()),
        )
        .await?;
    tracing::info!(namespace = %desired.namespace, certificate = %cert.name_any(), "Certificate brought in line with current settings");
    Ok(Outcome::Updated)
}

async fn reconcile(cert: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    reconcile_certificate(&cert, &ctx).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn error_policy(_: Arc<DynamicObject>, err: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "Certificate reconcile failed; retrying");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the controller until the stream ends.
pub async fn run(ctx: Context) {
    let ar = certificate::api_resource();
    let certs: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ar);
    let accounts: Api<ServiceAccount> = Api::all(ctx.client.clone());
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let ar_for_map = ar.clone();
    Controller::new_with(certs, watcher::Config::default().labels(&selector), ar)
        .watches(
            accounts,
            watcher::Config::default(),
            move |sa: ServiceAccount| {
                let ns = sa.namespace()?;
                Some(
                    ObjectRef::new_with(
                        &format!("kube-mtls-{}", sa.name_any()),
                        ar_for_map.clone(),
                    )
                    .within(&ns),
                )
            },
        )
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
