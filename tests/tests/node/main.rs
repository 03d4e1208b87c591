//! Cluster test II: the end-to-end scenario (`e2e/scenario/run.sh`, the same
//! one `e2e/run.sh` runs on kind) on a real node: the kubelet runs the pods
//! with containerd and runc, kube-proxy routes Services, CoreDNS resolves
//! them, and the images are the ones `Dockerfile.sidecar` and
//! `Dockerfile.webhook` build (`e2e/cluster/images.sh`). The webhook runs
//! in-cluster as the chart deploys it.
//!
//! Run it alone with `make cluster-test`.

use std::process::Stdio;

use kube_mtls_tests::cluster::{Cluster, bin_dir, repo_root};

#[test]
#[ignore = "needs root, containerd, and e2e/cluster/build.sh and images.sh: run `make cluster-test`"]
fn the_end_to_end_scenario_on_a_real_node() {
    let mut c = Cluster::start();
    c.start_node();
    c.load_images_and_dns(&repo_root().join("target/cluster/images"));
    let out = c
        .command("bash")
        .arg(repo_root().join("e2e/scenario/run.sh"))
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KUBECTL", bin_dir().join("kubectl"))
        .env("HELM_CACHE_HOME", c.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", c.dir.join("helm/config"))
        .env("HELM_DATA_HOME", c.dir.join("helm/data"))
        .stdin(Stdio::null())
        .output()
        .expect("run the scenario");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the scenario failed\n{}",
        c.log_tails()
    );
}
