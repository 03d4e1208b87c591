//! A real one-node Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager, cert-manager's controller and cainjector, built
//! from their published Go modules by `e2e/cluster/build.sh`.
//!
//! Everything runs inside one network namespace the harness creates, so the
//! Service ClusterIPs it routes (see [`Cluster::route_service`]) and every
//! port it opens stay there. The API server listens on [`API_IP`] in that
//! namespace; `kubectl` and `helm` run there too ([`Cluster::kubectl`]).
//! Readiness is polled, never slept for. Dropping the cluster stops every
//! process it started (also when a test panics) and leaves their logs under
//! `target/cluster/logs/<run>/` for the test report.

mod compare;
pub mod demo;
mod node;
mod pki;
mod workload;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub use compare::contained_in;
pub use node::{DNS_IP, NODE_NAME, POD_CIDR};
pub use pki::Pki;
pub use workload::Workload;

use crate::certs::{Leaf, TestCa};
use crate::process::{output_with_input, wait_until};

/// The control plane's address inside its namespace (a veth end).
pub const API_IP: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 1);
/// Service ClusterIPs; routed to that veth, then DNATed per Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Pod addresses of the whole cluster; node IPAM gives the node its /24
/// ([`POD_CIDR`]) from it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Every binary the cluster runs, built by `e2e/cluster/build.sh`.
const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "cert-manager-controller",
    "cert-manager-cainjector",
];

/// Where `e2e/cluster/build.sh` puts the binaries (`KUBE_MTLS_CLUSTER_BIN` overrides).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("KUBE_MTLS_CLUSTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cluster/bin"))
}

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Why the cluster cannot start here, naming the fix; `Ok` when it can.
pub fn preflight() -> Result<(), String> {
    crate::netns::available()?;
    let dir = bin_dir();
    for b in BINARIES {
        if !dir.join(b).is_file() {
            return Err(format!(
                "{} is missing: run e2e/cluster/build.sh (or `make cluster-test`)",
                dir.join(b).display()
            ));
        }
    }
    if !dir.join("cert-manager-crds").is_dir() {
        return Err("cert-manager CRDs missing: run e2e/cluster/build.sh".into());
    }
    let helm = Command::new("helm").arg("version").output();
    if !helm.is_ok_and(|o| o.status.success()) {
        return Err("helm is not installed: run scripts/install-helm.sh /usr/local/bin".into());
    }
    Ok(())
}

/// A process the cluster started, with its log file.
struct Started {
    name: String,
    child: Child,
}

/// The running control plane.
pub struct Cluster {
    pub netns: String,
    /// State: PKI, kubeconfigs, etcd's data, Secret volumes of workloads.
    pub dir: PathBuf,
    /// One `<component>.log` per process; kept after the run.
    pub logs: PathBuf,
    /// The admin's kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
    pub pki: Pki,
    /// Signs component certificates (the node's among them).
    ca: TestCa,
    /// The kubelet's cgroup root under every hierarchy, once a node runs.
    cgroup: Option<String>,
    /// Network namespaces that existed before containerd started; the ones
    /// its CNI made for pods are removed with the cluster.
    netns_before: Option<Vec<String>>,
    procs: Vec<Started>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd, the API server, the controller manager, cert-manager's CRDs,
    /// controller and cainjector, waiting for each to be ready.
    pub fn start() -> Cluster {
        if let Err(why) = preflight() {
            panic!("the cluster test cannot run: {why}");
        }
        let mut c = Cluster::create_namespace();
        c.start_etcd();
        c.start_apiserver();
        c.start_controller_manager();
        c.install_cert_manager();
        c
    }

    fn create_namespace() -> Cluster {
        let run = format!("kmtls-cluster-{}", std::process::id());
        let logs = repo_root().join("target/cluster/logs").join(&run);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("log dir");
        let tmp = tempfile::tempdir().expect("cluster dir");
        let dir = tmp.path().to_owned();
        let (pki, ca) = Pki::create(&dir.join("pki"), &[API_IP.into(), service_ip(1).into()])
            .expect("control-plane PKI");
        let admin = pki
            .write(
                "admin",
                &ca,
                &Leaf::kube_user("kube-mtls-admin", "system:masters"),
            )
            .expect("admin cert");
        let kcm = pki
            .write(
                "kcm",
                &ca,
                &Leaf::kube_user("system:kube-controller-manager", ""),
            )
            .expect("controller-manager cert");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &pki.ca_pem,
            User::Cert(&admin.cert, &admin.key),
        );
        write_kubeconfig(
            &dir.join("kcm.kubeconfig"),
            &pki.ca_pem,
            User::Cert(&kcm.cert, &kcm.key),
        );
        let c = Cluster {
            netns: run,
            dir,
            logs,
            kubeconfig,
            pki,
            ca,
            cgroup: None,
            netns_before: None,
            procs: Vec::new(),
            _tmp: tmp,
        };
        c.network();
        c
    }

    /// The namespace, with the control plane's address on a veth pair of its
    /// own (this kernel may lack the dummy device) and a route for ClusterIPs.
    fn network(&self) {
        let run = &self.netns;
        let _ = Command::new("ip").args(["netns", "del", run]).output();
        for args in [
            vec!["netns", "add", run],
            vec!["-n", run, "link", "set", "lo", "up"],
            vec![
                "-n", run, "link", "add", "kmtls0", "type", "veth", "peer", "name", "kmtls1",
            ],
            vec!["-n", run, "addr", "add", "10.215.0.1/24", "dev", "kmtls0"],
            vec!["-n", run, "link", "set", "kmtls1", "up"],
            vec!["-n", run, "link", "set", "kmtls0", "up"],
            vec!["-n", run, "route", "add", SERVICE_CIDR, "dev", "kmtls0"],
        ] {
            must(Command::new("ip").args(&args), "ip");
        }
    }

    /// Starts `binary` (from the cluster's bin dir, or a path) inside the
    /// namespace, its output in `<name>.log`.
    pub fn spawn(&mut self, name: &str, binary: &Path, args: &[String], env: &[(String, String)]) {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).expect("log file");
        let mut cmd = self.command(binary);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Started {
            name: name.to_owned(),
            child,
        });
    }

    /// Stops the process started as `name` (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(i);
            terminate(&mut p.child);
        }
    }

    /// Polls `cond` until it holds; panics naming `what` and the log tails otherwise.
    pub fn wait(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut(&Cluster) -> bool) {
        let mut exited = None;
        let ok = wait_until(timeout, || {
            exited = self.exited();
            exited.is_none() && cond(self)
        });
        if !ok {
            let why = exited.map_or_else(|| "timed out".to_owned(), |n| format!("{n} exited"));
            panic!("waiting for {what}: {why}\n{}", self.log_tails());
        }
    }

    /// The name of a started process that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        for p in &mut self.procs {
            if p.child.try_wait().ok().flatten().is_some() {
                return Some(p.name.clone());
            }
        }
        None
    }

    /// The last lines of every component's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = format!("logs: {}\n", self.logs.display());
        for p in &self.procs {
            let log = std::fs::read_to_string(self.logs.join(format!("{}.log", p.name)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", p.name));
        }
        out
    }

    /// A command run inside the cluster's network namespace. Only the
    /// network namespace changes (`nsenter --net`, not `ip netns exec`, which
    /// remounts /sys and would hide the cgroup mounts the kubelet needs).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        c
    }

    /// `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command(bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// `kubectl` that must succeed; its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get <args> -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl JSON")
    }

    /// `kubectl get <args> -o json`, or `None` when it fails (e.g. not found).
    pub fn try_get_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `kubectl apply -f -` with `manifest` on standard input.
    pub fn apply(&self, manifest: &str) -> Output {
        self.kubectl_stdin(&["apply", "-f", "-"], manifest)
    }

    /// `kubectl <args>` with `input` on standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = self.command(bin_dir().join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        output_with_input(&mut cmd, input.as_bytes())
    }

    /// `helm` as the admin, with its caches inside the cluster's directory.
    pub fn helm(&self, args: &[&str]) -> Output {
        self.command("helm")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .output()
            .expect("run helm")
    }

    fn start_etcd(&mut self) {
        let data = self.dir.join("etcd");
        let args = [
            "--name=default",
            &format!("--data-dir={}", data.display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
        ]
        .map(str::to_owned);
        self.spawn("etcd", &bin_dir().join("etcd"), &args, &[]);
        self.wait("etcd /health", Duration::from_secs(60), |c| {
            let out = c
                .command("curl")
                .args(["-sf", "http://127.0.0.1:2379/health"])
                .output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""))
        });
    }

    fn start_apiserver(&mut self) {
        let p = |f: &str| self.pki.path(f).display().to_string();
        let args = vec![
            "--etcd-servers=http://127.0.0.1:2379".to_owned(),
            "--bind-address=0.0.0.0".to_owned(),
            "--secure-port=6443".to_owned(),
            format!("--advertise-address={API_IP}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--enable-admission-plugins=NodeRestriction".to_owned(),
            format!("--kubelet-client-certificate={}", p("admin.crt")),
            format!("--kubelet-client-key={}", p("admin.key")),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
        ];
        self.spawn(
            "kube-apiserver",
            &bin_dir().join("kube-apiserver"),
            &args,
            &[],
        );
        self.wait("kube-apiserver /readyz", Duration::from_secs(120), |c| {
            c.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    fn start_controller_manager(&mut self) {
        let p = |f: &str| self.pki.path(f).display().to_string();
        let args = vec![
            format!("--kubeconfig={}", self.dir.join("kcm.kubeconfig").display()),
            // Every controller a cluster runs by default (DaemonSets,
            // StatefulSets, CronJobs among them), as on any real cluster.
            "--controllers=*".to_owned(),
            // What two of them need to do anything: the CSR signer a CA of
            // its own, node IPAM the pod range it hands the node its
            // `podCIDR` from (the node's bridge serves that same /24).
            format!("--cluster-signing-cert-file={}", p("csr-signer.crt")),
            format!("--cluster-signing-key-file={}", p("csr-signer.key")),
            "--allocate-node-cidrs=true".to_owned(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24".to_owned(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            // Each controller acts as its own service account, with the
            // bootstrap RBAC roles the API server creates for it.
            "--use-service-account-credentials=true".to_owned(),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        ];
        self.spawn(
            "kube-controller-manager",
            &bin_dir().join("kube-controller-manager"),
            &args,
            &[],
        );
        // The service-account controller creates `default` in every namespace.
        self.wait(
            "the controller manager (default service account)",
            Duration::from_secs(120),
            |c| {
                c.kubectl(&["get", "serviceaccount", "default"])
                    .status
                    .success()
            },
        );
    }

    fn install_cert_manager(&mut self) {
        let crds = bin_dir().join("cert-manager-crds");
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ]);
        self.kubectl_ok(&["create", "namespace", "cert-manager"]);
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let controller = vec![
            kubeconfig.clone(),
            "--cluster-resource-namespace=cert-manager".to_owned(),
            "--leader-elect=false".to_owned(),
            "--healthz-listen-address=127.0.0.1:9403".to_owned(),
        ];
        self.spawn(
            "cert-manager-controller",
            &bin_dir().join("cert-manager-controller"),
            &controller,
            &[],
        );
        let cainjector = vec![
            kubeconfig,
            "--leader-elect=false".to_owned(),
            "--healthz-listen-address=127.0.0.1:9404".to_owned(),
        ];
        self.spawn(
            "cert-manager-cainjector",
            &bin_dir().join("cert-manager-cainjector"),
            &cainjector,
            &[],
        );
        for port in [9403, 9404] {
            self.wait("cert-manager /readyz", Duration::from_secs(120), |c| {
                let url = format!("http://127.0.0.1:{port}/readyz");
                let out = c.command("curl").args(["-sf", &url]).output();
                out.is_ok_and(|o| o.status.success())
            });
        }
    }

    /// Plays kube-proxy for one Service: its ClusterIP ports lead to `target`
    /// ports on [`API_IP`] (where the harness runs the Service's workload).
    pub fn route_service(&self, namespace: &str, name: &str, target: &[(u16, u16)]) -> Ipv4Addr {
        let svc = self.get_json(&["-n", namespace, "get", "service", name]);
        let ip: Ipv4Addr = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("service {namespace}/{name} has no ClusterIP: {svc}"));
        for (port, to) in target {
            let out = self
                .command("iptables")
                .args(["-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d"])
                .arg(ip.to_string())
                .args([
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "DNAT",
                    "--to-destination",
                ])
                .arg(format!("{API_IP}:{to}"))
                .output()
                .expect("run iptables");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ip
    }
}

/// The `n`th address of the service CIDR (1 is the `kubernetes` Service).
fn service_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, n)
}

fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} {:?}: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    let ended = wait_until(Duration::from_secs(10), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// How a kubeconfig's user authenticates.
pub enum User<'a> {
    Cert(&'a Path, &'a Path),
    Token(&'a str),
}

/// Writes a kubeconfig (JSON, which kubeconfig readers accept) for the API server.
pub fn write_kubeconfig(path: &Path, ca_pem: &str, user: User) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let user = match user {
        User::Cert(cert, key) => json!({
            "client-certificate": cert, "client-key": key,
        }),
        User::Token(token) => json!({ "token": token }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": format!("https://{API_IP}:6443"),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    });
    std::fs::write(path, config.to_string()).expect("write kubeconfig");
}

/// Whether `o` has condition `kind` with status True.
pub fn has_condition(o: &Value, kind: &str) -> bool {
    o["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

impl Cluster {
    /// Unmounts what containerd and the kubelet mounted under the cluster's
    /// directory and removes the kubelet's cgroups.
    fn clean_node(&mut self) {
        unmount_under(&self.dir);
        if let Some(before) = self.netns_before.take() {
            let pods: Vec<String> = netns_names()
                .into_iter()
                .filter(|ns| ns.starts_with("cni-") && !before.contains(ns))
                .collect();
            for ns in &pods {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
            eprintln!("removed the pods' network namespaces: {pods:?}");
        }
        // containerd's shims for this node's containers (named by its socket),
        // then whatever still runs in the node's cgroups.
        let socket = self.containerd_socket().display().to_string();
        kill_where(|cmdline| cmdline.contains(&socket));
        if let Some(name) = self.cgroup.take() {
            for h in node::cgroup_hierarchies() {
                let dir = h.join(&name);
                kill_cgroup(&dir);
                // A cgroup goes once its killed processes have exited.
                wait_until(Duration::from_secs(10), || {
                    remove_cgroup(&dir);
                    !dir.exists()
                });
            }
        }
    }
}

/// The names of the network namespaces in /var/run/netns.
pub(crate) fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Unmounts everything mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

/// Every process's id and command line (arguments joined by spaces).
pub(crate) fn processes() -> Vec<(u32, String)> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// SIGKILLs every process whose command line satisfies `matches`.
fn kill_where(matches: impl Fn(&str) -> bool) {
    for (pid, cmdline) in processes() {
        if matches(&cmdline) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .output();
        }
    }
}

/// SIGKILLs every process in a cgroup and its children.
fn kill_cgroup(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_cgroup(&entry.path());
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        let _ = Command::new("kill").args(["-s", "KILL", pid]).output();
    }
}

/// Removes a cgroup and its children, deepest first (cgroups go with rmdir).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.procs.iter().any(|p| p.name == "containerd") {
            // The kubelet first, or it restarts the containers being stopped.
            self.stop("kubelet");
            self.stop_containers();
        }
        while let Some(mut p) = self.procs.pop() {
            terminate(&mut p.child);
        }
        self.clean_node();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        eprintln!("cluster logs: {}", self.logs.display());
    }
}
