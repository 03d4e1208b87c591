//! The cluster kept running for a person rather than a test (`make demo`):
//! the API server made reachable from the host, a state file that says
//! which cluster runs and where its kubeconfig is, and the check that
//! stopping it left nothing behind.
//!
//! One process holds the [`Cluster`] (so its `Drop` is the one teardown, for
//! tests and for the demo alike) and waits for SIGTERM; `kube-mtls-cluster
//! down` sends it and then looks for anything left over.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{Cluster, node, repo_root};

/// The host's end of the control plane's veth pair while a demo runs.
pub const HOST_LINK: &str = "kmtls-demo";
/// The host's address on that link (the API server is [`super::API_IP`]).
pub const HOST_IP: &str = "10.215.0.2/24";

/// What `down` needs to find and check a running demo cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The process holding the cluster; SIGTERM stops it.
    pub pid: u32,
    /// The cluster's network namespace.
    pub netns: String,
    /// The cluster's directory (PKI, etcd, containerd, kubelet).
    pub dir: PathBuf,
    /// A copy of the admin kubeconfig, outside `dir`, for the user.
    pub kubeconfig: PathBuf,
    pub logs: PathBuf,
    /// Pod network namespaces present before the cluster started.
    pub netns_before: Vec<String>,
    /// The host's iptables rules before the cluster started.
    pub iptables_before: String,
}

/// Where the demo keeps its state file, kubeconfig and logs.
pub fn demo_dir() -> PathBuf {
    repo_root().join("target/cluster/demo")
}

impl State {
    pub fn path() -> PathBuf {
        demo_dir().join("state.json")
    }

    /// The recorded state, if a demo was started and not stopped.
    pub fn load() -> Option<State> {
        let text = std::fs::read_to_string(State::path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(State::path(), text)
    }

    /// Whether the holding process still runs.
    pub fn alive(&self) -> bool {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains("kube-mtls-cluster")
    }
}

impl Cluster {
    /// Moves the spare end of the control plane's veth pair to the host and
    /// gives it [`HOST_IP`], so `kubectl` on the host reaches the API server.
    pub fn expose_to_host(&self) -> Result<(), String> {
        let ns = self.netns.as_str();
        let steps: [&[&str]; 4] = [
            &["-n", ns, "link", "set", "kmtls1", "name", HOST_LINK],
            &["-n", ns, "link", "set", HOST_LINK, "netns", "1"],
            &["addr", "add", HOST_IP, "dev", HOST_LINK],
            &["link", "set", HOST_LINK, "up"],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    return Err(format!(
                        "ip {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                Err(e) => return Err(format!("ip: {e}")),
            }
        }
        Ok(())
    }

    /// What `down` needs, recorded once the cluster runs.
    pub fn demo_state(&self, kubeconfig: &Path, iptables_before: String) -> State {
        State {
            pid: std::process::id(),
            netns: self.netns.clone(),
            dir: self.dir.clone(),
            kubeconfig: kubeconfig.to_owned(),
            logs: self.logs.clone(),
            netns_before: self.netns_before.clone().unwrap_or_default(),
            iptables_before,
        }
    }
}

/// The host's iptables rules (chains and rules of every table, no counters).
pub fn host_iptables() -> String {
    let out = Command::new("iptables-save").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with('*'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything of the cluster still present: processes, network namespaces,
/// links, mounts, cgroups, iptables rules. Empty when it is all gone.
pub fn leftovers(s: &State) -> Vec<String> {
    let mut left = Vec::new();
    let dir = s.dir.display().to_string();
    let netns_path = format!("/var/run/netns/{}", s.netns);
    for (pid, cmdline) in super::processes() {
        if cmdline.contains(&dir) || cmdline.contains(&netns_path) {
            left.push(format!("process {pid}: {cmdline}"));
        }
    }
    for ns in super::netns_names() {
        let new_pod = ns.starts_with("cni-") && !s.netns_before.contains(&ns);
        if ns == s.netns || new_pod {
            left.push(format!("network namespace {ns}"));
        }
    }
    if Path::new("/sys/class/net").join(HOST_LINK).exists() {
        left.push(format!("link {HOST_LINK}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if m.starts_with(&dir) || m.ends_with(&format!("/netns/{}", s.netns)) {
            left.push(format!("mount {m}"));
        }
    }
    for h in node::cgroup_hierarchies() {
        if h.join(&s.netns).exists() {
            left.push(format!("cgroup {}", h.join(&s.netns).display()));
        }
    }
    let before: std::collections::HashSet<&str> = s.iptables_before.lines().collect();
    let now = host_iptables();
    for rule in now.lines().filter(|r| !before.contains(r)) {
        left.push(format!("iptables rule {rule}"));
    }
    left
}

/// Removes what a cluster whose holder died left behind: its processes, the
/// containers in its cgroups, its mounts, pod namespaces, links and netns.
pub fn force_clean(s: &State) {
    let dir = s.dir.display().to_string();
    let netns_path = format!("/var/run/netns/{}", s.netns);
    super::kill_where(|cmdline| cmdline.contains(&dir) || cmdline.contains(&netns_path));
    for h in node::cgroup_hierarchies() {
        super::kill_cgroup(&h.join(&s.netns));
    }
    super::unmount_under(&s.dir);
    for ns in super::netns_names() {
        if ns.starts_with("cni-") && !s.netns_before.contains(&ns) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
    let _ = Command::new("ip").args(["link", "del", HOST_LINK]).output();
    let _ = Command::new("ip").args(["netns", "del", &s.netns]).output();
    for h in node::cgroup_hierarchies() {
        let cg = h.join(&s.netns);
        crate::process::wait_until(std::time::Duration::from_secs(10), || {
            super::remove_cgroup(&cg);
            !cg.exists()
        });
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}
