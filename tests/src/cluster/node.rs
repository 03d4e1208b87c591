//! A real node for the cluster: containerd (Debian's) with runc and the CNI
//! bridge plugin, the kubelet, kube-proxy and kube-scheduler, all in the
//! cluster's network namespace, so pods get addresses on a bridge there and
//! Services are routed by the real kube-proxy. The node's CNI directories
//! (plugins, configuration) are its own, under the cluster's directory, so a
//! CNI DaemonSet that installs a plugin there leaves the host untouched.
//!
//! What this machine needs, and why:
//! - cgroup v1: the kubelet runs with `failCgroupV1: false` and the cgroupfs
//!   driver (containerd 1.6 cannot report its driver), under a cgroup root of
//!   its own that the harness creates and removes.
//! - no CAP_SYS_RESOURCE: containerd's `restrict_oom_score_adj` keeps runc from
//!   lowering a container's OOM score below its own, which it may not do here.
//! - no registry: every image is imported into containerd ([`Cluster::import_image`]),
//!   and pods use `imagePullPolicy: Never` or images already present.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{API_IP, Cluster, User, bin_dir, write_kubeconfig};
use crate::certs::{Leaf, Usage};

/// The node's name, as it registers.
pub const NODE_NAME: &str = "kmtls-node";
/// Pod addresses on the node's bridge.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The cluster DNS Service's ClusterIP.
pub const DNS_IP: &str = "10.96.0.10";
/// Where containernetworking-plugins (Debian's) puts the CNI plugins.
const HOST_CNI_BIN: &str = "/usr/lib/cni";

impl Cluster {
    /// Starts containerd, the kubelet, kube-scheduler and kube-proxy, and waits
    /// until the node is Ready.
    pub fn start_node(&mut self) {
        for (tool, package) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("/usr/lib/cni/bridge", "containernetworking-plugins"),
            ("/usr/lib/cni/portmap", "containernetworking-plugins"),
        ] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "the node needs {tool}: apt-get install {package}");
        }
        self.node_credentials();
        self.start_containerd();
        self.start_kubelet();
        self.start_scheduler();
        self.start_kube_proxy();
        self.wait("the node to be Ready", Duration::from_secs(120), |c| {
            let node = c.try_get_json(&["get", "node", NODE_NAME]);
            node.is_some_and(|n| super::has_condition(&n, "Ready"))
        });
    }

    /// Imports every OCI archive `e2e/cluster/images.sh` wrote, and starts the
    /// cluster DNS (`e2e/cluster/manifests/coredns.yaml`).
    pub fn load_images_and_dns(&mut self, images: &Path) {
        let archives = std::fs::read_dir(images)
            .unwrap_or_else(|e| panic!("{}: {e}: run e2e/cluster/images.sh", images.display()));
        for a in archives.flatten() {
            if a.path().extension().is_some_and(|x| x == "tar") {
                self.import_image(&a.path());
            }
        }
        let dns = super::repo_root().join("e2e/cluster/manifests/coredns.yaml");
        self.kubectl_ok(&["apply", "-f", &dns.display().to_string()]);
        self.kubectl_ok(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            "--timeout=120s",
        ]);
    }

    fn node_dir(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.node_dir().join("containerd.sock")
    }

    fn node_credentials(&self) {
        let ca = &self.ca;
        let kubeconfig = |name: &str, user: &str, group: &str| {
            let files = self
                .pki
                .write(name, ca, &Leaf::kube_user(user, group))
                .expect("component cert");
            let path = self.dir.join(format!("{name}.kubeconfig"));
            write_kubeconfig(&path, &self.pki.ca_pem, User::Cert(&files.cert, &files.key));
        };
        kubeconfig(
            "kubelet",
            &format!("system:node:{NODE_NAME}"),
            "system:nodes",
        );
        kubeconfig("scheduler", "system:kube-scheduler", "");
        kubeconfig("proxy", "system:kube-proxy", "");
        let serving = Leaf::dns(NODE_NAME)
            .ips(&[API_IP.into()])
            .usage(Usage::ServerOnly);
        self.pki
            .write("kubelet-serving", ca, &serving)
            .expect("kubelet serving cert");
    }

    /// The node's CNI plugin directory (containerd's `bin_dir`): links to the
    /// host's plugins (containernetworking-plugins), and whatever a CNI
    /// DaemonSet installs, which so never writes into the host's /usr/lib/cni.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.node_dir().join("cni-bin")
    }

    /// The node's CNI configuration directory (containerd's `conf_dir`).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.node_dir().join("cni")
    }

    /// The node's primary conflist (bridge, portmap): what a chained plugin's
    /// installer appends its entry to.
    pub fn cni_conflist(&self) -> PathBuf {
        self.cni_conf_dir().join("10-bridge.conflist")
    }

    fn start_containerd(&mut self) {
        let dir = self.node_dir();
        let cni = self.cni_conf_dir();
        std::fs::create_dir_all(&cni).expect("node dir");
        link_host_plugins(&self.cni_bin_dir());
        std::fs::write(self.cni_conflist(), cni_config(&dir)).expect("CNI config");
        let config = containerd_config(&dir, &self.containerd_socket(), &self.cni_bin_dir(), &cni);
        std::fs::write(dir.join("containerd.toml"), config).expect("containerd config");
        let args = vec![format!(
            "--config={}",
            dir.join("containerd.toml").display()
        )];
        self.netns_before = Some(super::netns_names());
        self.spawn("containerd", Path::new("containerd"), &args, &[]);
        self.wait("containerd", Duration::from_secs(30), |c| {
            c.ctr(&["version"]).status.success()
        });
        let out = self
            .command("sysctl")
            .args(["-w", "net.ipv4.ip_forward=1"])
            .output();
        assert!(
            out.is_ok_and(|o| o.status.success()),
            "cannot enable forwarding"
        );
    }

    /// `ctr` in containerd's `k8s.io` namespace (the one the kubelet uses).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.command("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Imports an OCI archive into containerd, for the kubelet to run.
    pub fn import_image(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", &archive.display().to_string()]);
        assert!(
            out.status.success(),
            "import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_kubelet(&mut self) {
        let root = self.cgroup_root();
        let dir = self.node_dir();
        let config = kubelet_config(self, &root);
        std::fs::write(dir.join("kubelet.yaml"), config).expect("kubelet config");
        let args = vec![
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!(
                "--kubeconfig={}",
                self.dir.join("kubelet.kubeconfig").display()
            ),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={API_IP}"),
        ];
        self.spawn("kubelet", &bin_dir().join("kubelet"), &args, &[]);
    }

    /// A cgroup of the harness's own under every v1 hierarchy, for the kubelet.
    fn cgroup_root(&mut self) -> String {
        let name = self.netns.clone();
        for hierarchy in cgroup_hierarchies() {
            std::fs::create_dir_all(hierarchy.join(&name)).expect("create cgroup root");
        }
        self.cgroup = Some(name.clone());
        format!("/{name}")
    }

    fn start_scheduler(&mut self) {
        let args = vec![
            format!(
                "--kubeconfig={}",
                self.dir.join("scheduler.kubeconfig").display()
            ),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
        ];
        self.spawn(
            "kube-scheduler",
            &bin_dir().join("kube-scheduler"),
            &args,
            &[],
        );
    }

    fn start_kube_proxy(&mut self) {
        let dir = self.node_dir();
        let config = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clientConnection: {{kubeconfig: {}}}\nmode: iptables\nclusterCIDR: {POD_CIDR}\n\
             hostnameOverride: {NODE_NAME}\nbindAddress: {API_IP}\n\
             metricsBindAddress: 127.0.0.1:10249\nhealthzBindAddress: 127.0.0.1:10256\n\
             conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}\n",
            self.dir.join("proxy.kubeconfig").display()
        );
        std::fs::write(dir.join("kube-proxy.yaml"), config).expect("kube-proxy config");
        let args = vec![format!(
            "--config={}",
            dir.join("kube-proxy.yaml").display()
        )];
        self.spawn("kube-proxy", &bin_dir().join("kube-proxy"), &args, &[]);
    }

    /// Kills every container the node runs, so nothing outlives the cluster.
    pub(super) fn stop_containers(&self) {
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        let _ = crate::process::wait_until(Duration::from_secs(20), || {
            let left = self.ctr(&["tasks", "ls", "-q"]);
            String::from_utf8_lossy(&left.stdout).trim().is_empty()
        });
    }
}

/// The v1 cgroup hierarchies mounted here (cpu, memory, pids, ...).
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup").then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Links every plugin of the host's /usr/lib/cni into `bin`.
fn link_host_plugins(bin: &Path) {
    std::fs::create_dir_all(bin).expect("CNI bin dir");
    let host = std::fs::read_dir(HOST_CNI_BIN).unwrap_or_else(|e| panic!("{HOST_CNI_BIN}: {e}"));
    for plugin in host.flatten() {
        std::os::unix::fs::symlink(plugin.path(), bin.join(plugin.file_name()))
            .expect("link a CNI plugin");
    }
}

fn cni_config(dir: &Path) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "bridge", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
            "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}"#,
        dir.join("ipam").display()
    )
}

fn containerd_config(dir: &Path, socket: &Path, bin: &Path, cni: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{cni}"
"#,
        root = dir.join("containerd").display(),
        state = dir.join("containerd-state").display(),
        socket = socket.display(),
        bin = bin.display(),
        cni = cni.display(),
    )
}

fn kubelet_config(c: &Cluster, cgroup_root: &str) -> String {
    let pki = |f: &str| c.pki.path(f).display().to_string();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         failCgroupV1: false\ncgroupDriver: cgroupfs\ncgroupRoot: {cgroup_root}\n\
         containerRuntimeEndpoint: unix://{socket}\n\
         authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: true}}, x509: {{clientCAFile: {ca}}}}}\n\
         authorization: {{mode: Webhook}}\n\
         tlsCertFile: {crt}\ntlsPrivateKeyFile: {key}\naddress: {API_IP}\n\
         clusterDomain: cluster.local\nclusterDNS: [{DNS_IP}]\nresolvConf: \"\"\n\
         failSwapOn: false\nmakeIPTablesUtilChains: false\nlocalStorageCapacityIsolation: false\n\
         evictionHard: {{memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%}}\n\
         imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
         serializeImagePulls: false\nsyncFrequency: 5s\n",
        socket = c.containerd_socket().display(),
        ca = pki("ca.crt"),
        crt = pki("kubelet-serving.crt"),
        key = pki("kubelet-serving.key"),
    )
}
