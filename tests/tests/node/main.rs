//! Cluster test II: the end-to-end scenario (`e2e/scenario/run.sh`, the same
//! one `e2e/run.sh` runs on kind) on a real node: the kubelet runs the pods
//! with containerd and runc, kube-proxy routes Services, CoreDNS resolves
//! them, and the images are the ones `Dockerfile.sidecar` and
//! `Dockerfile.webhook` build (`e2e/cluster/images.sh`). The webhook runs
//! in-cluster as the chart deploys it.
//!
//! The scenario runs twice on the one node: in the default mode (a
//! kube-mtls-init container per pod), then in CNI mode (the chart's node
//! agent chains kube-mtls-cni after the node's bridge; the app's namespaces
//! enforce Pod Security `restricted`; a pod that started before the plugin
//! is repaired; uninstall leaves the node's CNI configuration clean and new
//! pods start). The app pod's nat rules, captured in each, must be the same.
//! The default-mode pass also rotates the workload CA's key under traffic
//! (`e2e/scenario/ca-rotation.sh`, CA_ROTATION=1): 0 failed calls, and the
//! retired CA's certificates refused.
//!
//! Run it alone with `make cluster-test`. `demo` tests `make demo` on the
//! same kind of cluster.

mod demo;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_mtls_tests::cluster::{Cluster, bin_dir, repo_root};
use kube_mtls_tests::process::Proc;

#[test]
#[ignore = "needs root, containerd, and e2e/cluster/build.sh and images.sh: run `make cluster-test`"]
fn the_end_to_end_scenario_on_a_real_node_in_both_modes() {
    let mut c = Cluster::start();
    c.start_node();
    c.load_images_and_dns(&repo_root().join("target/cluster/images"));
    // The default mode first: its helm uninstall leaves the node as it was,
    // so CNI mode starts on a node that never had the plugin.
    let init = scenario(&c, Mode::Init);
    let cni = scenario(&c, Mode::Cni);
    same_rules(&init, &cni);
}

/// How the chart is installed: what puts the redirect rules into a pod.
#[derive(Clone, Copy)]
enum Mode {
    /// The default: a privileged `kube-mtls-init` container in every injected pod.
    Init,
    /// `cni.enabled`: the node agent chains kube-mtls-cni after the node's bridge.
    Cni,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Cni => "cni",
        }
    }
}

/// Runs `e2e/scenario/run.sh` in `mode`, with a capture of the node's bridge
/// (only TLS leaves the allowed caller); returns the file holding the nat
/// rules of the app's network namespace.
fn scenario(c: &Cluster, mode: Mode) -> PathBuf {
    let started = Instant::now();
    // Everything that crosses the node's bridge to port 8080 (the app's).
    let pcap = c.dir.join(format!("bridge-{}.pcap", mode.name()));
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
    let rules = c.dir.join(format!("nat-rules-{}.txt", mode.name()));
    let mut run = c.command("bash");
    run.arg(repo_root().join("e2e/scenario/run.sh"))
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KUBECTL", bin_dir().join("kubectl"))
        .env("HELM_CACHE_HOME", c.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", c.dir.join("helm/config"))
        .env("HELM_DATA_HOME", c.dir.join("helm/data"))
        .env("RULES_OUT", &rules)
        .stdin(Stdio::null());
    match mode {
        // The CA key rotation under traffic (e2e/scenario/ca-rotation.sh) in
        // one mode only: it exercises the trust bundle, not the redirect.
        Mode::Init => {
            run.env("CA_ROTATION", "1").env(
                "KUBECTL_MTLS",
                repo_root().join("target/debug/kubectl-mtls"),
            );
        }
        Mode::Cni => {
            run.env("KUBE_MTLS_CNI", "1")
                .env("CNI_BIN_DIR", c.cni_bin_dir())
                .env("CNI_CONF_DIR", c.cni_conf_dir());
        }
    }
    let out = run.output().expect("run the scenario");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the scenario failed in {} mode\n{}",
        mode.name(),
        c.log_tails()
    );
    capture.signal("INT");
    drop(capture);
    let caller = text
        .lines()
        .find_map(|l| l.strip_prefix("caller web/client has IP "))
        .expect("the scenario names the caller's IP");
    only_tls_from(&pcap, caller.trim());
    eprintln!(
        "the scenario passed in {} mode in {:.0?}",
        mode.name(),
        started.elapsed()
    );
    rules
}

/// The app pod's nat rules are the same whether its init container or the
/// CNI plugin installed them: the same plan from the same code.
fn same_rules(init: &Path, cni: &Path) {
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (a, b) = (read(init), read(cni));
    if a != b {
        let diff = Command::new("diff")
            .args(["-u"])
            .arg(init)
            .arg(cni)
            .output()
            .expect("run diff");
        panic!(
            "check (rules): the orders pod's nat rules differ between the modes (- init container, + CNI plugin):\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    eprintln!("the orders pod's nat rules are the same in both modes:\n{a}");
}

/// The allowed caller's plaintext calls crossed the wire as TLS only.
fn only_tls_from(pcap: &Path, ip: &str) {
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
