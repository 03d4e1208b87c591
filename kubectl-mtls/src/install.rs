//! Finds what `helm install` put in the cluster, without knowing the release
//! name: the MutatingWebhookConfiguration carrying the chart's label, the
//! Service its webhooks call, the Deployment behind that Service's selector,
//! and the webhook container's flags.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::contract::{CHART_LABEL, WebhookFlags};

/// kube-mtls as installed.
#[derive(Debug, Clone)]
pub struct Install {
    /// The webhook configuration: selectors, caBundle, the Service it calls.
    pub hooks: MutatingWebhookConfiguration,
    /// Namespace and name of the Service the webhooks call.
    pub service: Option<(String, String)>,
    /// The webhook Deployment; `None` when no Deployment matches the Service.
    pub deployment: Option<Deployment>,
    /// What the webhook injects now (its defaults when no Deployment was
    /// found, or when its flags cannot be read).
    pub flags: WebhookFlags,
    /// Why the webhook container's flags cannot be read: the webhook does
    /// not start with them (or is newer than this plugin).
    pub flags_error: Option<String>,
}

impl Install {
    /// The webhook's namespace (the Service's), never injected.
    pub fn namespace(&self) -> Option<&str> {
        self.service.as_ref().map(|(ns, _)| ns.as_str())
    }

    /// `namespace/name` of the Deployment, for messages.
    pub fn deployment_name(&self) -> Option<String> {
        let d = self.deployment.as_ref()?;
        Some(format!(
            "{}/{}",
            d.namespace().unwrap_or_default(),
            d.name_any()
        ))
    }
}

/// The webhook container of a Deployment: the one running `serve`.
pub fn webhook_container(d: &Deployment) -> Option<&Container> {
    let cs = &d.spec.as_ref()?.template.spec.as_ref()?.containers;
    cs.iter()
        .find(|c| {
            c.args
                .as_ref()
                .is_some_and(|a| a.first().map(String::as_str) == Some("serve"))
        })
        .or_else(|| cs.first())
}

/// kube-mtls's installation, or `None` when no webhook configuration of the chart exists.
pub async fn discover(client: &Client) -> Result<Option<Install>, kube::Error> {
    let selector = format!("{}={}", CHART_LABEL.0, CHART_LABEL.1);
    let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await?;
    let Some(hooks) = hooks.items.into_iter().next() else {
        return Ok(None);
    };
    let service = hooks
        .webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.service.as_ref())
        .map(|s| (s.namespace.clone(), s.name.clone()));
    let deployment = match &service {
        Some((ns, name)) => find_deployment(client, ns, name).await?,
        None => None,
    };
    let read = deployment
        .as_ref()
        .and_then(webhook_container)
        .map(WebhookFlags::from_container);
    let (flags, flags_error) = match read {
        Some(Ok(flags)) => (flags, None),
        Some(Err(e)) => (WebhookFlags::defaults(), Some(e.to_string())),
        None => (WebhookFlags::defaults(), None),
    };
    Ok(Some(Install {
        hooks,
        service,
        deployment,
        flags,
        flags_error,
    }))
}

/// The Deployment in `ns` whose pod labels the Service `name` selects.
async fn find_deployment(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Deployment>, kube::Error> {
    let Some(svc) = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let selector: BTreeMap<String, String> = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    if selector.is_empty() {
        return Ok(None);
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(deployments.items.into_iter().find(|d| {
        let labels = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }))
}
