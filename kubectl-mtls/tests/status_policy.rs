//! `kubectl mtls status` and `policy` against the mock API server: three
//! injected workloads (a Deployment with two pods, one of them running an
//! older sidecar; a permissive pod; a pod whose allow-list and audit policy
//! come from its MtlsProfile), read and resolved as the webhook resolves them.

mod common;

use common::{Fake, NOW_2030, SIDECAR_IMAGE};
use kube_mtls_tests::certs::{TestCa, Validity};
use kubectl_mtls::policy::{self, PLAINTEXT, Verdict};
use kubectl_mtls::status;
use kubectl_mtls::workloads::{self, Inventory, Scope, Workload};
use serde_json::{Value, json};

fn pod(
    ns: &str,
    name: &str,
    sa: &str,
    annotations: Value,
    owner: Option<(&str, &str, &str)>,
    image: &str,
) -> Value {
    let mut ann = annotations;
    ann["kube-mtls.io/status"] = json!("{\"version\":\"0.1.0\"}");
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": ann, "labels": {}, "creationTimestamp": "2029-12-01T00:00:00Z"},
        "spec": {"serviceAccountName": sa,
            "initContainers": [{"name": "kube-mtls-init", "image": image}, {"name": "kube-mtls-sidecar", "image": image, "restartPolicy": "Always", "ports": [{"containerPort": 15020}]}],
            "containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 8080}]}]},
    });
    if let Some((kind, owner, hash)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true}]);
        p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    }
    p
}

fn cluster() -> Fake {
    let ca = TestCa::new("webhook CA");
    let mut f = Fake::installed(&ca, Validity::Current);
    for ns in ["shop", "batch"] {
        f.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let orders = json!({"kube-mtls.io/allowed-clients": "spiffe://cluster.local/ns/web/sa/*"});
    let rs = Some(("ReplicaSet", "orders-5d4f8", "5d4f8"));
    f.put(pod(
        "shop",
        "orders-5d4f8-aaaaa",
        "orders",
        orders.clone(),
        rs,
        SIDECAR_IMAGE,
    ));
    f.put(pod(
        "shop",
        "orders-5d4f8-bbbbb",
        "orders",
        orders,
        rs,
        "ghcr.io/kube-mtls/kube-mtls-sidecar:0.0.9",
    ));
    f.put(pod(
        "web",
        "front",
        "front",
        json!({"kube-mtls.io/mode": "permissive"}),
        None,
        SIDECAR_IMAGE,
    ));
    f.put(pod(
        "batch",
        "cron-1",
        "cron",
        json!({"kube-mtls.io/profile": "jobs"}),
        Some(("Job", "cron-1", "")),
        SIDECAR_IMAGE,
    ));
    f.put(json!({"apiVersion": "kube-mtls.io/v1alpha1", "kind": "MtlsProfile", "metadata": {"name": "jobs", "namespace": "batch"},
        "spec": {"allowedClients": ["spiffe://cluster.local/ns/shop/sa/orders"]}}));
    // An annotation the profile does not set; the pod's own annotation wins over none.
    f.edit("/api/v1/namespaces/batch/pods/cron-1", |p| {
        p["metadata"]["annotations"]["kube-mtls.io/policy"] = json!("audit")
    });
    f.put(json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "kube-mtls-orders", "namespace": "shop"},
        "spec": {}, "status": {"notAfter": "2030-01-02T00:00:00Z"}}));
    // A pod the webhook never injected is not a workload of kube-mtls.
    f.put(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": "shop"}, "spec": {"containers": [{"name": "app", "image": "x"}]}}));
    f
}

async fn inventory(scope: Scope) -> Inventory {
    workloads::read(&cluster().client(), &scope)
        .await
        .expect("read")
}

fn find<'a>(inv: &'a Inventory, key: &str) -> &'a Workload {
    inv.workloads
        .iter()
        .find(|w| w.key() == key)
        .unwrap_or_else(|| panic!("no {key}: {inv:#?}"))
}

#[tokio::test]
async fn status_shows_identity_mode_policy_clients_expiry_and_outdated_sidecars() {
    let inv = inventory(Scope::All).await;
    assert_eq!(inv.workloads.len(), 3, "{inv:#?}");
    assert_eq!(inv.webhook.injection.sidecar_image, SIDECAR_IMAGE);

    let orders = find(&inv, "shop/orders");
    assert_eq!((orders.kind.as_str(), orders.pods.len()), ("Deployment", 2));
    assert_eq!(orders.identity, "spiffe://cluster.local/ns/shop/sa/orders");
    assert_eq!(
        (orders.mode.as_str(), orders.policy.as_str()),
        ("strict", "enforce")
    );
    assert_eq!(
        orders.allowed_clients,
        ["spiffe://cluster.local/ns/web/sa/*"]
    );
    assert_eq!(orders.certificate_not_after, Some(NOW_2030 + 86_400));
    let outdated: Vec<&str> = orders.outdated_pods().map(|p| p.name.as_str()).collect();
    assert_eq!(outdated, ["orders-5d4f8-bbbbb"]);

    let front = find(&inv, "web/front");
    assert_eq!(
        (front.kind.as_str(), front.mode.as_str()),
        ("Pod", "permissive")
    );
    assert!(front.allowed_clients.is_empty() && front.certificate_not_after.is_none());

    let cron = find(&inv, "batch/cron-1");
    assert_eq!(
        (
            cron.kind.as_str(),
            cron.policy.as_str(),
            cron.profile.as_deref()
        ),
        ("Job", "audit", Some("jobs"))
    );
    assert_eq!(
        cron.allowed_clients,
        ["spiffe://cluster.local/ns/shop/sa/orders"],
        "from the profile"
    );

    let table = status::render(&inv, true, NOW_2030);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAMESPACE")
            && header.contains("ALLOWED CLIENTS")
            && header.contains("CERT EXPIRES"),
        "{table}"
    );
    assert!(
        table.contains("deployment/orders")
            && table.contains("in 1d")
            && table.contains("any in cluster.local"),
        "{table}"
    );
    assert!(
        table.contains("Pods running an older sidecar")
            && table
                .contains("shop/orders-5d4f8-bbbbb   ghcr.io/kube-mtls/kube-mtls-sidecar:0.0.9"),
        "{table}"
    );
    assert!(
        table.contains("kubectl -n shop rollout restart deployment/orders"),
        "{table}"
    );
}

#[tokio::test]
async fn status_in_one_namespace_reads_only_it() {
    let inv = inventory(Scope::Namespace("web".into())).await;
    let keys: Vec<String> = inv.workloads.iter().map(Workload::key).collect();
    assert_eq!(keys, ["web/front"]);
    let table = status::render(&inv, false, NOW_2030);
    assert!(
        table.starts_with("WORKLOAD") && !table.contains("older sidecar"),
        "{table}"
    );
}

#[tokio::test]
async fn a_workload_whose_profile_is_gone_is_shown_unresolved() {
    let mut f = cluster();
    f.remove("/apis/kube-mtls.io/v1alpha1/namespaces/batch/mtlsprofiles/jobs");
    let inv = workloads::read(&f.client(), &Scope::All).await.unwrap();
    let cron = find(&inv, "batch/cron-1");
    assert!(
        cron.error
            .as_deref()
            .is_some_and(|e| e.contains("no MtlsProfile \"jobs\"")),
        "{cron:#?}"
    );
    assert!(status::render(&inv, true, NOW_2030).contains("(unresolved)"));
    let all: Vec<&Workload> = inv.workloads.iter().collect();
    let m = policy::matrix(&all, &all);
    // No caller is shown as allowed; its audit policy still lets callers through.
    let cron_edges: Vec<Verdict> = m
        .edges
        .iter()
        .filter(|e| e.server == "batch/cron-1")
        .map(|e| e.verdict)
        .collect();
    assert_eq!(
        cron_edges,
        [
            Verdict::Audit,
            Verdict::Audit,
            Verdict::Audit,
            Verdict::Deny
        ]
    );
    assert!(
        m.table()
            .contains("batch/cron-1: its annotations do not resolve")
    );
}

#[tokio::test]
async fn policy_resolves_who_may_call_whom() {
    let inv = inventory(Scope::All).await;
    let all: Vec<&Workload> = inv.workloads.iter().collect();
    let m = policy::matrix(&all, &all);
    let verdict = |caller: &str, server: &str| {
        m.edges
            .iter()
            .find(|e| e.caller == caller && e.server == server)
            .map(|e| e.verdict)
            .unwrap_or_else(|| panic!("{caller} -> {server}"))
    };
    assert_eq!(verdict("web/front", "shop/orders"), Verdict::Allow);
    assert_eq!(verdict("batch/cron-1", "shop/orders"), Verdict::Deny);
    assert_eq!(verdict(PLAINTEXT, "shop/orders"), Verdict::Deny);
    // front's empty allow-list: any identity in its trust domain.
    assert_eq!(verdict("batch/cron-1", "web/front"), Verdict::Allow);
    assert_eq!(
        verdict(PLAINTEXT, "web/front"),
        Verdict::Allow,
        "permissive takes plaintext"
    );
    // cron: the profile allows orders only; audit lets the others through.
    assert_eq!(verdict("shop/orders", "batch/cron-1"), Verdict::Allow);
    assert_eq!(verdict("web/front", "batch/cron-1"), Verdict::Audit);
    assert_eq!(verdict(PLAINTEXT, "batch/cron-1"), Verdict::Deny);

    let table = m.table();
    let row = table
        .lines()
        .find(|l| l.starts_with("web/front"))
        .expect("front's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    // Columns: batch/cron-1, shop/orders, web/front.
    assert_eq!(cells, ["web/front", "audit", "allow", "allow"], "{table}");
    assert!(table.lines().any(|l| l.starts_with(PLAINTEXT)), "{table}");

    let dot = m.dot();
    assert!(
        dot.starts_with("digraph")
            && dot.contains("\"web/front\" -> \"shop/orders\" [label=\"allow\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("\"web/front\" -> \"batch/cron-1\" [label=\"audit\" style=dashed]"),
        "{dot}"
    );
    assert!(
        !dot.contains("\"batch/cron-1\" -> \"shop/orders\""),
        "{dot}"
    );
    let json: Value = serde_json::to_value(&m).unwrap();
    assert_eq!(json["servers"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn policy_for_one_caller_is_its_row() {
    let inv = inventory(Scope::All).await;
    let servers: Vec<&Workload> = inv
        .workloads
        .iter()
        .filter(|w| w.namespace == "shop")
        .collect();
    let callers: Vec<&Workload> = inv
        .workloads
        .iter()
        .filter(|w| w.key() == "batch/cron-1")
        .collect();
    let table = policy::matrix(&servers, &callers).table();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "header, cron, plaintext: {table}");
    assert!(
        rows[0].contains("shop/orders") && !rows[0].contains("web/front"),
        "{table}"
    );
    assert_eq!(
        rows[1].split_whitespace().collect::<Vec<_>>(),
        ["batch/cron-1", "-"]
    );
}
