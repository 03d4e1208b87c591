//! The node agent as the DaemonSet runs it: the real `kube-mtls-cni agent`
//! binary on temporary CNI directories, with a service account directory of
//! its own. What a container runtime would find there is checked at every
//! step (the conflist, the binary, the kubeconfig), and the readiness probe
//! is the real `kube-mtls-cni ready`. The repair path's node-side half
//! (finding a pod's namespace, `repair-netns`) runs against a real network
//! namespace.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kube_mtls_contract::init::Settings;
use kube_mtls_tests::deadline::PATIENCE;
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::{Proc, free_port, output, plain_get, wait_until};
use kube_mtls_tests::require_netns;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kube-mtls-cni");

/// A node's CNI directories and the agent's service account files.
struct Node {
    bin: PathBuf,
    conf: PathBuf,
    account: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let (bin, conf, account) = (
            dir.path().join("bin"),
            dir.path().join("net.d"),
            dir.path().join("sa"),
        );
        for d in [&bin, &conf, &account] {
            std::fs::create_dir_all(d).expect("dir");
        }
        std::fs::write(account.join("token"), "token-one\n").expect("token");
        std::fs::write(account.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").expect("ca");
        Node {
            bin,
            conf,
            account,
            _dir: dir,
        }
    }

    fn dir_args(&self) -> [String; 4] {
        [
            "--cni-bin-dir".into(),
            self.bin.display().to_string(),
            "--cni-conf-dir".into(),
            self.conf.display().to_string(),
        ]
    }

    /// `kube-mtls-cni agent` on this node, with no cluster and no repair.
    fn agent_cmd(&self, metrics_port: u16) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("agent")
            .args(self.dir_args())
            .args(["--repair", "off", "--sync-interval", "100ms"])
            .arg(format!("--metrics-port={metrics_port}"))
            .arg("--service-account-dir")
            .arg(&self.account)
            .args(["--log-format", "text", "--log-level", "info"])
            .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            .env("KUBERNETES_SERVICE_PORT", "443")
            .env_remove("CNI_COMMAND");
        cmd
    }

    fn agent(&self) -> Proc {
        Proc::spawn(self.agent_cmd(0))
    }

    fn ready(&self) -> Output {
        output(
            Command::new(BIN)
                .arg("ready")
                .args(self.dir_args())
                .env_remove("CNI_COMMAND"),
        )
    }

    fn binary(&self) -> PathBuf {
        self.bin.join("kube-mtls-cni")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.conf.join("kube-mtls-cni.kubeconfig")
    }

    /// The entry the agent writes on this node.
    fn entry(&self) -> Value {
        json!({
            "type": "kube-mtls-cni",
            "kubeconfig": self.kubeconfig().display().to_string(),
            "capabilities": {"io.kubernetes.cri.pod-annotations": true}
        })
    }

    /// Writes `conf` at `name` with `mode`, as a network plugin's agent would.
    fn write(&self, name: &str, conf: &Value, mode: u32) -> PathBuf {
        let path = self.conf.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(conf).expect("JSON")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

fn bridge_portmap() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "kind",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn read(path: &Path) -> Option<Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn plugins(conf: &Value) -> Vec<Value> {
    conf["plugins"].as_array().cloned().unwrap_or_default()
}

fn ours(conf: &Value) -> usize {
    plugins(conf)
        .iter()
        .filter(|p| p["type"] == "kube-mtls-cni")
        .count()
}

/// Waits until the file at `path` holds exactly one entry, and returns it.
fn wait_for_entry(path: &Path, agent: &Proc) -> Value {
    let mut last = None;
    let found = wait_until(PATIENCE, || {
        last = read(path);
        last.as_ref().is_some_and(|c| ours(c) == 1)
    });
    assert!(
        found,
        "no entry in {}: {last:?}\nagent:\n{}",
        path.display(),
        agent.logs()
    );
    last.expect("read")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").mode() & 0o7777
}

fn stop(mut agent: Proc) -> String {
    agent.signal("TERM");
    let status = agent
        .wait_exit(PATIENCE)
        .expect("the agent exits on SIGTERM");
    let logs = agent.logs();
    assert!(status.success(), "exit {status}:\n{logs}");
    logs
}

#[test]
fn the_entry_is_appended_once_and_the_file_keeps_its_mode() {
    let node = Node::new();
    let path = node.write("10-kind.conflist", &bridge_portmap(), 0o640);
    let agent = node.agent();
    let conf = wait_for_entry(&path, &agent);

    // Appended last; every other key and plugin as it was.
    let mut expected = bridge_portmap();
    expected["plugins"]
        .as_array_mut()
        .expect("list")
        .push(node.entry());
    assert_eq!(conf, expected);
    assert_eq!(mode(&path), 0o640);
    // Nothing else in the directory but the kubeconfig (no temporary files).
    let mut names: Vec<String> = std::fs::read_dir(&node.conf)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["10-kind.conflist", "kube-mtls-cni.kubeconfig"]);

    // The binary is this build's, executable; the kubeconfig only root's.
    assert_eq!(
        std::fs::read(node.binary()).expect("installed binary"),
        std::fs::read(BIN).expect("built binary")
    );
    assert_eq!(mode(&node.binary()), 0o755);
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    stop(agent);
}

#[test]
fn starting_twice_leaves_one_entry_and_does_not_rewrite_the_file() {
    let node = Node::new();
    let path = node.write("10-kind.conflist", &bridge_portmap(), 0o644);
    let mut first = node.agent();
    wait_for_entry(&path, &first);
    // Killed without its cleanup, as on a node that loses power.
    first.signal("KILL");
    first.wait_exit(PATIENCE).expect("killed");
    let inode = std::fs::metadata(&path).expect("metadata").ino();

    let second = node.agent();
    assert!(
        second.wait_for_log("in place in", PATIENCE),
        "second agent never found its entry:\n{}",
        second.logs()
    );
    let conf = read(&path).expect("conflist");
    assert_eq!(ours(&conf), 1, "{conf}");
    assert_eq!(plugins(&conf).len(), 3, "{conf}");
    assert_eq!(
        std::fs::metadata(&path).expect("metadata").ino(),
        inode,
        "the file was rewritten although the entry was in place"
    );
    stop(second);
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let node = Node::new();
    let single = json!({
        "cniVersion": "0.4.0",
        "name": "mynet",
        "type": "bridge",
        "bridge": "cni0",
        "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
    });
    let conf_path = node.write("10-mynet.conf", &single, 0o600);
    let agent = node.agent();
    let list_path = node.conf.join("10-mynet.conflist");
    let list = wait_for_entry(&list_path, &agent);
    assert_eq!(
        list,
        json!({
            "cniVersion": "0.4.0",
            "name": "mynet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
                node.entry()
            ]
        })
    );
    assert!(!conf_path.exists(), "the .conf is still there");
    assert_eq!(mode(&list_path), 0o600);
    stop(agent);
}

#[test]
fn a_rewrite_by_another_agent_is_repaired_and_counted() {
    let node = Node::new();
    let path = node.write("10-kind.conflist", &bridge_portmap(), 0o644);
    let port = free_port();
    let agent = Proc::spawn(node.agent_cmd(port));
    wait_for_entry(&path, &agent);
    let metrics = || {
        plain_get(([127, 0, 0, 1], port).into(), "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    assert!(
        wait_until(PATIENCE, || metrics()
            .contains("kube_mtls_cni_entry_in_place 1")),
        "{}",
        metrics()
    );

    // The network plugin's agent writes its file again, without the entry.
    node.write("10-kind.conflist", &bridge_portmap(), 0o644);
    let conf = wait_for_entry(&path, &agent);
    assert_eq!(plugins(&conf).len(), 3, "{conf}");
    assert!(
        wait_until(PATIENCE, || metrics()
            .contains("kube_mtls_cni_conflist_reinsertions_total 1")),
        "{}",
        metrics()
    );

    // Another network plugin's file now comes first by name: the entry follows.
    let calico = node.write("05-calico.conflist", &bridge_portmap(), 0o644);
    wait_for_entry(&calico, &agent);
    let ready = node.ready();
    assert!(ready.status.success(), "{ready:?}");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("05-calico.conflist"),
        "{ready:?}"
    );

    // The uninstall removes the entry from both files.
    stop(agent);
    for p in [&path, &calico] {
        assert_eq!(read(p), Some(bridge_portmap()), "{}", p.display());
    }
}

#[test]
fn the_kubeconfig_follows_the_token() {
    let node = Node::new();
    node.write("10-kind.conflist", &bridge_portmap(), 0o644);
    let agent = node.agent();
    let kubeconfig = || std::fs::read_to_string(node.kubeconfig()).unwrap_or_default();
    assert!(
        wait_until(PATIENCE, || kubeconfig().contains("token-one")),
        "{}\n{}",
        kubeconfig(),
        agent.logs()
    );
    let text = kubeconfig();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    assert_eq!(
        parsed["clusters"][0]["cluster"]["server"],
        "https://10.96.0.1:443"
    );
    // base64 of "-----BEGIN CERTIFICATE-----\n"
    assert_eq!(
        parsed["clusters"][0]["cluster"]["certificate-authority-data"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    );
    assert_eq!(parsed["users"][0]["user"]["token"], "token-one");

    // The kubelet rotates the projected token.
    std::fs::write(node.account.join("token"), "token-two\n").expect("token");
    assert!(
        wait_until(PATIENCE, || kubeconfig().contains("token-two")),
        "{}\n{}",
        kubeconfig(),
        agent.logs()
    );
    assert!(!kubeconfig().contains("token-one"));
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    stop(agent);
}

#[test]
fn sigterm_removes_the_entry_then_the_binary_and_kubeconfig() {
    let node = Node::new();
    let path = node.write("10-kind.conflist", &bridge_portmap(), 0o640);
    let agent = node.agent();
    wait_for_entry(&path, &agent);
    assert!(node.binary().exists() && node.kubeconfig().exists());

    let logs = stop(agent);
    assert_eq!(
        read(&path),
        Some(bridge_portmap()),
        "the other plugins stay"
    );
    assert_eq!(mode(&path), 0o640);
    assert!(!node.binary().exists(), "binary left behind");
    assert!(!node.kubeconfig().exists(), "kubeconfig left behind");
    // The entry went first: an entry without its binary fails every new pod.
    let at = |needle: &str| {
        logs.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{logs}"))
    };
    assert!(at("entry removed") < at("plugin binary removed"), "{logs}");
    assert!(
        at("plugin binary removed") < at("plugin kubeconfig removed"),
        "{logs}"
    );
}

#[test]
fn ready_only_once_the_binary_and_the_entry_are_in_place() {
    let node = Node::new();
    let before = node.ready();
    assert_eq!(before.status.code(), Some(1), "{before:?}");
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("plugin binary"),
        "{before:?}"
    );

    // The agent waits for the node's network plugin to write its configuration.
    let agent = node.agent();
    assert!(
        wait_until(PATIENCE, || node.binary().exists()),
        "{}",
        agent.logs()
    );
    assert!(agent.wait_for_log("waiting for the node's network plugin", PATIENCE));
    let waiting = node.ready();
    assert_eq!(waiting.status.code(), Some(1), "{waiting:?}");
    assert!(
        String::from_utf8_lossy(&waiting.stderr).contains("no CNI configuration"),
        "{waiting:?}"
    );

    let path = node.write("10-kind.conflist", &bridge_portmap(), 0o644);
    wait_for_entry(&path, &agent);
    let after = node.ready();
    assert!(after.status.success(), "{after:?}");

    stop(agent);
    let removed = node.ready();
    assert_eq!(removed.status.code(), Some(1), "{removed:?}");
}

#[test]
fn repair_netns_installs_the_rules_in_a_running_pods_namespace() {
    require_netns!();
    let pod = Pod::create();
    // A process in the pod, as its pause container would be.
    let mut sleeper = pod.command("sleep");
    sleeper.arg("300");
    let _pause = Proc::spawn(sleeper);

    let mut netns = None;
    let found = wait_until(PATIENCE, || {
        netns = kube_mtls_cni::agent::netns::find(Path::new("/proc"), pod.ip.into())
            .expect("walk /proc");
        netns.is_some()
    });
    assert!(found, "no namespace with {}", pod.ip);
    let netns = netns.expect("found");
    let named = PathBuf::from("/var/run/netns").join(&pod.name);
    assert_eq!(
        std::fs::metadata(&netns).expect("found ns").ino(),
        std::fs::metadata(&named).expect("named ns").ino(),
        "{} is not the pod's namespace",
        netns.display()
    );

    let args = serde_json::to_string(&Settings::default().render().args).expect("JSON");
    let repair = |args: &str| {
        output(
            Command::new(BIN)
                .args(["repair-netns", "--netns"])
                .arg(&netns)
                .arg(format!("--args={args}"))
                .env_remove("CNI_COMMAND"),
        )
    };
    let bad = repair("--inbound-ports=8080");
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("kube-mtls.io/cni-redirect"),
        "{bad:?}"
    );
    let before: String = ["nft", "legacy"].map(|b| pod.nat_rules(b)).concat();
    assert!(!before.contains("KUBE_MTLS"), "{before}");

    let out = repair(&args);
    assert!(out.status.success(), "{out:?}");
    let after: String = ["nft", "legacy"].map(|b| pod.nat_rules(b)).concat();
    assert!(
        after.contains("-j KUBE_MTLS_INBOUND") && after.contains("--to-ports 15006"),
        "{after}"
    );
    // The validation's probe is redirected too: the init container now passes.
    assert!(after.contains("-d 192.0.2.1/32"), "{after}");
}
