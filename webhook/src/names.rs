//! The naming rule of a workload identity, in one place: the admission patch,
//! the Certificate and the controller all name things through these functions,
//! so they cannot drift apart (docs/contract.md, "Fixed names").

/// The cert-manager Certificate of a service account: `kube-mtls-<sa>`.
pub fn certificate_name(service_account: &str) -> String {
    format!("kube-mtls-{service_account}")
}

/// The Secret that Certificate writes: `kube-mtls-<sa>-tls`.
pub fn secret_name(service_account: &str) -> String {
    format!("kube-mtls-{service_account}-tls")
}

/// The SPIFFE ID of a service account: `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naming_rule() {
        assert_eq!(certificate_name("orders"), "kube-mtls-orders");
        assert_eq!(secret_name("orders"), "kube-mtls-orders-tls");
        assert_eq!(
            spiffe_id("cluster.local", "shop", "orders"),
            "spiffe://cluster.local/ns/shop/sa/orders"
        );
    }
}
