//! Prints docs/contract.md (scripts/generate.sh writes it with this).

fn main() {
    print!("{}", kube_mtls_webhook::docs::contract_page());
}
