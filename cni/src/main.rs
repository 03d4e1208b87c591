//! The `kube-mtls-cni` binary: the CNI plugin when a container runtime runs it
//! (`CNI_COMMAND` set), the node agent (`agent`) or its readiness check
//! (`ready`) when the DaemonSet does.

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CNI_COMMAND").is_some() {
        // The runtime reads the result or the error from stdout; the exit code says which.
        std::process::exit(kube_mtls_cni::plugin::main());
    }
    kube_mtls_cni::agent::main()
}
