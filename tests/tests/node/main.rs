//! Cluster test II: the end-to-end scenario (`e2e/scenario/run.sh`, the same
//! one `e2e/run.sh` runs on kind) on a real node: the kubelet runs the pods
//! with containerd and runc, kube-proxy routes Services, CoreDNS resolves
//! them, and the images are the ones `Dockerfile.sidecar` and
//! `Dockerfile.webhook` build (`e2e/cluster/images.sh`). The webhook runs
//! in-cluster as the chart deploys it.
//!
//! Run it alone with `make cluster-test`. `demo` tests `make demo` on the
//! same kind of cluster.

mod demo;

use std::process::{Command, Stdio};
use std::time::Duration;

use kube_mtls_tests::cluster::{Cluster, bin_dir, repo_root};
use kube_mtls_tests::process::Proc;

#[test]
#[ignore = "needs root, containerd, and e2e/cluster/build.sh and images.sh: run `make cluster-test`"]
fn the_end_to_end_scenario_on_a_real_node() {
    let mut c = Cluster::start();
    c.start_node();
    c.load_images_and_dns(&repo_root().join("target/cluster/images"));
    // Everything that crosses the node's bridge to port 8080 (the app's).
    let pcap = c.dir.join("bridge.pcap");
    let mut dump = c.command("tcpdump");
    dump.args(["--immediate-mode", "-i", "cni0", "-U", "-n", "-w"])
        .arg(&pcap)
        .args(["tcp", "port", "8080"]);
    let capture = Proc::spawn(dump);
    assert!(
        capture.wait_for_log("listening on", Duration::from_secs(10)),
        "{}",
        capture.logs()
    );
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
    capture.signal("INT");
    drop(capture);
    let caller = text
        .lines()
        .find_map(|l| l.strip_prefix("caller web/client has IP "))
        .expect("the scenario names the caller's IP");
    only_tls_from(&pcap, caller.trim());
}

/// The allowed caller's plaintext calls crossed the wire as TLS only.
fn only_tls_from(pcap: &std::path::Path, ip: &str) {
    let read = Command::new("tcpdump")
        .args(["-n", "-A", "-r"])
        .arg(pcap)
        .args(["src", "host", ip])
        .output()
        .expect("tcpdump");
    let text = String::from_utf8_lossy(&read.stdout);
    let packets = text.lines().filter(|l| l.contains(" IP ")).count();
    assert!(packets > 10, "nothing captured from {ip}:\n{text}");
    for plaintext in ["GET /", "HTTP/1.1", "during-rotation", "orders.shop.svc"] {
        assert!(
            !text.contains(plaintext),
            "{plaintext:?} left {ip} in the clear:\n{text}"
        );
    }
    let raw = Command::new("tcpdump")
        .args(["-n", "-x", "-r"])
        .arg(pcap)
        .args(["src", "host", ip])
        .output()
        .expect("tcpdump");
    let hex = String::from_utf8_lossy(&raw.stdout).replace(char::is_whitespace, "");
    assert!(
        hex.contains("160303") || hex.contains("160301"),
        "no TLS handshake from {ip}"
    );
}
