//! `make demo` after its builds: `kube-mtls-cluster up` (the cluster left
//! running, reachable from the host), the demo's calls and their outcomes
//! (`e2e/scenario/demo.sh`), a second `up` refused, then `down`, which must
//! leave no process, network namespace, link, mount, cgroup or iptables rule.

use std::process::{Command, Output};

use kube_mtls_tests::cluster::demo::{self, State};
use kube_mtls_tests::cluster::{bin_dir, repo_root};

const CLUSTER: &str = env!("CARGO_BIN_EXE_kube-mtls-cluster");

/// Stops the demo cluster also when a check panics.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(CLUSTER).arg("down").output();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs root, containerd, and e2e/cluster/build.sh and images.sh: run `make cluster-test`"]
fn the_demo_runs_and_demo_down_leaves_nothing_behind() {
    assert!(
        State::load().is_none_or(|s| !s.alive()),
        "a demo cluster already runs here: `make demo-down` first"
    );
    let up = Command::new(CLUSTER).arg("up").output().expect("run up");
    let _down = Down;
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let state = State::load().expect("up records the cluster's state");

    let again = Command::new(CLUSTER).arg("up").output().expect("run up");
    assert!(
        !again.status.success(),
        "a second up started:\n{}",
        text(&again)
    );
    assert!(text(&again).contains("already runs"), "{}", text(&again));

    // kubectl on the host reaches the API server with the printed kubeconfig.
    let kubectl = Command::new(bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&state.kubeconfig)
        .args(["get", "node", "-o", "name"])
        .output()
        .expect("kubectl");
    assert_eq!(
        text(&kubectl).trim(),
        "node/kmtls-node",
        "{}",
        text(&kubectl)
    );

    let run = Command::new("bash")
        .arg(repo_root().join("e2e/scenario/demo.sh"))
        .env("KUBECONFIG", &state.kubeconfig)
        .env("KUBECTL", bin_dir().join("kubectl"))
        .output()
        .expect("run the demo");
    let shown = text(&run);
    eprintln!("{shown}");
    assert!(run.status.success(), "the demo failed:\n{shown}");
    for outcome in [
        "web/front   -> orders: HTTP 200; the app saw the caller as URI=spiffe://cluster.local/ns/web/sa/front",
        "batch/cron  -> orders: HTTP 403",
        "plain/client (no sidecar, plaintext) -> orders: refused",
        "spiffe://cluster.local/ns/shop/sa/orders",
    ] {
        assert!(shown.contains(outcome), "{outcome:?} not shown:\n{shown}");
    }

    let down = Command::new(CLUSTER)
        .arg("down")
        .output()
        .expect("run down");
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    let left = demo::leftovers(&state);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        State::load().is_none(),
        "the state file outlived the cluster"
    );
}
