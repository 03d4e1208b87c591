//! What the MutatingWebhookConfiguration sends to the webhook, judged by
//! evaluating its namespace and object selectors as the API server does:
//! opted-in namespaces and pods are sent, opted-out pods and the webhook's
//! own namespace are not, and every labelled namespace really is selected.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::{Cluster, Line};
use crate::contract::INJECT;

type Labels = BTreeMap<String, String>;

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether `labels` match a selector (a missing selector matches everything).
pub fn matches(selector: Option<&LabelSelector>, labels: &Labels) -> bool {
    let Some(s) = selector else { return true };
    let by_label = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    by_label && by_expr
}

/// Whether the webhook's rules send Pod CREATE to it.
fn intercepts_pod_create(w: &MutatingWebhook) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| {
        list.iter().flatten().any(|v| v == want || v == "*")
    };
    w.rules.iter().flatten().any(|r| {
        has(&r.api_groups, "")
            && has(&r.api_versions, "v1")
            && has(&r.operations, "CREATE")
            && has(&r.resources, "pods")
    })
}

/// Whether a pod with `pod` labels in a namespace with `ns` labels is sent to the webhook.
pub fn selected_by(hooks: &MutatingWebhookConfiguration, ns: &Labels, pod: &Labels) -> bool {
    hooks.webhooks.iter().flatten().any(|w| {
        intercepts_pod_create(w)
            && matches(w.namespace_selector.as_ref(), ns)
            && matches(w.object_selector.as_ref(), pod)
    })
}

/// A namespace's labels, with the name label the API server always sets.
pub fn namespace_labels(n: &Namespace) -> Labels {
    let mut l = n.labels().clone();
    l.insert(NAME_LABEL.into(), n.name_any());
    l
}

fn synthetic(name: &str, opted_in: bool) -> Labels {
    let mut l = Labels::from([(NAME_LABEL.to_owned(), name.to_owned())]);
    if opted_in {
        l.insert(INJECT.into(), "enabled".into());
    }
    l
}

fn pod(value: Option<&str>) -> Labels {
    value
        .map(|v| Labels::from([(INJECT.to_owned(), v.to_owned())]))
        .unwrap_or_default()
}

/// A problem: whether it fails the check (else it warns), and what it is.
type Problem = (bool, String);

/// The chart's promises, asked of the selectors with made-up namespaces and pods.
fn promises(hooks: &MutatingWebhookConfiguration, own: &str) -> Vec<Problem> {
    let probe = "kubectl-mtls-check-probe";
    // (namespace labels, pod labels, must be sent, fails when broken, problem)
    let cases = [
        (
            synthetic(probe, true),
            pod(None),
            true,
            true,
            format!("pods in namespaces labelled {INJECT}=enabled are not sent to the webhook"),
        ),
        (
            synthetic(probe, false),
            pod(Some("enabled")),
            true,
            false,
            format!(
                "pods labelled {INJECT}=enabled outside opted-in namespaces are not sent to the webhook"
            ),
        ),
        (
            synthetic(probe, true),
            pod(Some("disabled")),
            false,
            false,
            format!("pods labelled {INJECT}=disabled are still sent to the webhook"),
        ),
        (
            synthetic(own, true),
            pod(Some("enabled")),
            false,
            true,
            format!(
                "the webhook's own namespace {own} is sent to the webhook: its own pods cannot start while it is down"
            ),
        ),
        (
            synthetic("kube-system", true),
            pod(Some("enabled")),
            false,
            false,
            "kube-system is sent to the webhook".to_owned(),
        ),
    ];
    cases
        .into_iter()
        .filter(|(ns, pod, want, _, _)| selected_by(hooks, ns, pod) != *want)
        .map(|(_, _, _, fails, problem)| (fails, problem))
        .collect()
}

/// Opted-in namespaces the configuration does not send.
fn excluded_opted_in(c: &Cluster, hooks: &MutatingWebhookConfiguration) -> Vec<Problem> {
    c.opted_in
        .iter()
        .filter_map(|ns| c.namespace(ns).map(|n| (ns, n)))
        .filter(|(_, n)| {
            let labelled = n.labels().get(INJECT).map(String::as_str) == Some("enabled");
            let pod_labels = if labelled { pod(None) } else { pod(Some("enabled")) };
            !selected_by(hooks, &namespace_labels(n), &pod_labels)
        })
        .map(|(ns, _)| (false, format!("namespace {ns} opted in, but the webhook configuration excludes it: its pods run without mTLS")))
        .collect()
}

/// Opt-in webhooks that let pods through unmutated while the webhook is down.
fn ignore_policies(hooks: &MutatingWebhookConfiguration) -> Vec<Problem> {
    let by_label = |w: &MutatingWebhook| {
        w.object_selector.as_ref().is_some_and(|s| {
            s.match_expressions
                .iter()
                .flatten()
                .any(|e| e.key == INJECT && e.operator == "In")
        })
    };
    hooks
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.failure_policy.as_deref() == Some("Ignore") && by_label(w))
        .map(|w| (false, format!("{} has failurePolicy Ignore: opted-in pods created while the webhook is down run without mTLS", w.name)))
        .collect()
}

/// The selectors' lines: one pass, or one line per problem.
pub fn check(c: &Cluster) -> Vec<Line> {
    let Some(install) = &c.install else {
        return vec![Line::skip("selectors", "not installed yet")];
    };
    let hooks = &install.hooks;
    let own = install.namespace().unwrap_or("kube-mtls");
    let fix = "helm upgrade --install with the chart's templates, or restore the webhook configuration's selectors (kubectl get mutatingwebhookconfiguration -o yaml)";
    let mut problems = promises(hooks, own);
    problems.extend(excluded_opted_in(c, hooks));
    problems.extend(ignore_policies(hooks));
    if problems.is_empty() {
        let names: Vec<&str> = hooks
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.as_str())
            .collect();
        return vec![Line::pass(
            "selectors",
            format!(
                "{} send opted-in pods, skip opted-out ones, {own} and kube-system",
                names.join(", ")
            ),
        )];
    }
    problems
        .into_iter()
        .map(|(fails, msg)| {
            if fails {
                Line::fail("selectors", msg, fix)
            } else {
                Line::warn("selectors", msg, fix)
            }
        })
        .collect()
}
