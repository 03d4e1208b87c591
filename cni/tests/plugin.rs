//! The `kube-mtls-cni` binary run as a container runtime runs a chained CNI
//! plugin (`CNI_*` variables, the network configuration on stdin), against
//! real network namespaces and real iptables: the rules it installs are the
//! ones `kube-mtls-init` installs, it fails closed with a CNI error that names
//! the cause, and it passes the previous result and every other pod through.

use std::process::{Command, Output};

use kube_mtls_contract::init::{BackendChoice, Ipv6Choice, Settings};
use kube_mtls_contract::names::CNI_REDIRECT;
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::output_with_input;
use kube_mtls_tests::require_netns;
use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kube-mtls-cni");
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=orders-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee";
const ANNOTATIONS_KEY: &str = "io.kubernetes.cri.pod-annotations";
const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Runs the plugin with `CNI_COMMAND=command`, only the given `CNI_*`
/// variables (and PATH, for iptables), and `stdin`.
fn cni(command: &str, vars: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(vars.iter().copied());
    output_with_input(&mut cmd, stdin.as_bytes())
}

fn netns_path(pod: &Pod) -> String {
    format!("/run/netns/{}", pod.name)
}

/// ADD in `netns` for the pod shop/orders-0, as containerd runs it.
fn add_in(netns: &str, conf: &Value) -> Output {
    let vars = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", POD_ARGS),
    ];
    cni("ADD", &vars, &conf.to_string())
}

fn add(pod: &Pod, conf: &Value) -> Output {
    add_in(&netns_path(pod), conf)
}

/// What a bridge plugin before this one returned.
fn prev_result(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/run/netns/x"}
        ],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]}
    })
}

/// The plugin's configuration as the runtime hands it over: the conflist
/// entry, the previous result, and `runtime_config`.
fn conf(version: &str, runtime_config: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "kube-mtls-cni",
        "capabilities": {ANNOTATIONS_KEY: true},
        "kubeconfig": "/etc/cni/net.d/kube-mtls-cni.kubeconfig",
        "prevResult": prev_result(version),
        "runtimeConfig": runtime_config,
    })
}

/// `runtimeConfig` with the pod's annotations, ours holding `args`.
fn annotated(args: &[String]) -> Value {
    let value = serde_json::to_string(args).unwrap();
    json!({ANNOTATIONS_KEY: {CNI_REDIRECT: value, "kubectl.kubernetes.io/default-container": "app"}})
}

/// The stdout of a successful run, as JSON.
fn result_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "plugin failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The CNI error of a failed run: its code and msg.
fn cni_error(out: &Output) -> (u64, String) {
    assert!(
        !out.status.success(),
        "plugin succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not the CNI error ({err}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        e["cniVersion"].is_string() && e["details"].is_string(),
        "{e}"
    );
    let code = e["code"].as_u64().expect("a code");
    (code, e["msg"].as_str().expect("a msg").to_owned())
}

/// Our rule lines (chains and rules) in `iptables-save` output, counters stripped.
fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains("KUBE_MTLS"))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect()
}

fn nat6(pod: &Pod, backend: &str) -> String {
    let out = pod.run(&format!("ip6tables-{backend}-save"), &["-t", "nat"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_nothing_installed(pod: &Pod) {
    for backend in ["nft", "legacy"] {
        let rules = pod.nat_rules(backend);
        assert!(ours(&rules).is_empty(), "{backend}: {rules}");
    }
}

/// The args the webhook writes for `settings`.
fn webhook_args(settings: &Settings) -> Vec<String> {
    settings.render().args
}

/// ADD in one namespace and `kube-mtls-init` in another, with the same args,
/// leave the same rules; the previous result comes back unchanged.
fn same_rules_as_init(settings: &Settings, backend: &str, version: &str) {
    let args = webhook_args(settings);
    let by_plugin = Pod::create();
    let by_init = Pod::create();

    let out = add(&by_plugin, &conf(version, annotated(&args)));
    assert_eq!(result_of(&out), prev_result(version));

    let init_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = by_init.init(&init_args);
    assert!(
        out.status.success(),
        "kube-mtls-init: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plugin_rules = ours(&by_plugin.nat_rules(backend));
    assert_eq!(plugin_rules, ours(&by_init.nat_rules(backend)));
    let jumps = plugin_rules
        .iter()
        .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
        .count();
    assert_eq!(jumps, 2, "{plugin_rules:#?}");
    assert!(
        plugin_rules
            .iter()
            .any(|l| l.contains("--dport 8080") && l.contains("REDIRECT")),
        "{plugin_rules:#?}"
    );
    if settings.ipv6 == Ipv6Choice::On {
        let v6 = ours(&nat6(&by_plugin, backend));
        assert!(!v6.is_empty(), "no IPv6 rules");
        assert_eq!(v6, ours(&nat6(&by_init, backend)));
    }
}

#[test]
fn add_installs_the_rules_kube_mtls_init_installs() {
    require_netns!();
    let settings = Settings {
        inbound: "8080,9090".parse().unwrap(),
        outbound: [443, 5432].into(),
        skip_outbound: kube_mtls_contract::init::parse_cidrs("10.0.0.0/8").unwrap(),
        ..Settings::default()
    };
    // auto: nft in a fresh namespace.
    same_rules_as_init(&settings, "nft", "1.0.0");
}

#[test]
fn add_installs_the_rules_kube_mtls_init_installs_legacy_and_ipv6() {
    require_netns!();
    let settings = Settings {
        inbound: "8080".parse().unwrap(),
        skip_inbound: [22].into(),
        outbound: [443].into(),
        backend: BackendChoice::Legacy,
        ipv6: Ipv6Choice::On,
        ..Settings::default()
    };
    same_rules_as_init(&settings, "legacy", "0.4.0");
}

#[test]
fn add_twice_leaves_one_copy_of_the_rules() {
    require_netns!();
    let pod = Pod::create();
    let args = webhook_args(&Settings {
        inbound: "8080".parse().unwrap(),
        ..Settings::default()
    });
    let c = conf("1.1.0", annotated(&args));
    result_of(&add(&pod, &c));
    let first = pod.nat_rules("nft");
    assert!(!ours(&first).is_empty(), "{first}");
    result_of(&add(&pod, &c));
    assert_eq!(pod.nat_rules("nft"), first);
}

#[test]
fn a_pod_without_the_annotation_passes_untouched() {
    require_netns!();
    let pod = Pod::create();
    // The runtime passed the pod's annotations; ours is not among them.
    let c = conf(
        "1.0.0",
        json!({ANNOTATIONS_KEY: {"app": "x"}, "portMappings": []}),
    );
    assert_eq!(result_of(&add(&pod, &c)), prev_result("1.0.0"));
    assert_nothing_installed(&pod);

    // No annotations from the runtime and no pod in CNI_ARGS: not a
    // Kubernetes pod, nothing to look up. First in its chain: an empty result.
    let c = json!({"cniVersion": "0.3.1", "name": "n", "type": "kube-mtls-cni"});
    let netns = netns_path(&pod);
    let vars = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let out = cni("ADD", &vars, &c.to_string());
    assert_eq!(result_of(&out), json!({"cniVersion": "0.3.1", "dns": {}}));
    assert_nothing_installed(&pod);
}

#[test]
fn an_annotation_that_cannot_be_used_fails_the_add_and_installs_nothing() {
    require_netns!();
    let pod = Pod::create();
    let bad = vec!["--inbound-ports=http".to_owned()];
    let (code, msg) = cni_error(&add(&pod, &conf("1.0.0", annotated(&bad))));
    assert_eq!(code, 100);
    for part in [
        "shop/orders-0",
        &netns_path(&pod),
        CNI_REDIRECT,
        "--inbound-ports",
        "KUBE_MTLS_INBOUND_PORTS",
        "\"http\"",
        "Fix:",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }

    let unknown = vec!["--no-such-flag=1".to_owned()];
    let (code, msg) = cni_error(&add(&pod, &conf("1.0.0", annotated(&unknown))));
    assert_eq!(code, 100);
    assert!(msg.contains("--no-such-flag"), "{msg}");

    let not_a_list = json!({ANNOTATIONS_KEY: {CNI_REDIRECT: "--inbound-ports=8080"}});
    let (code, msg) = cni_error(&add(&pod, &conf("1.0.0", not_a_list)));
    assert_eq!(code, 100);
    assert!(msg.contains("not a JSON list of strings"), "{msg}");
    assert_nothing_installed(&pod);
}

fn write_kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kube-mtls-cni.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_pod_lookup_that_fails_fails_the_add() {
    require_netns!();
    let pod = Pod::create();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), "https://127.0.0.1:1");
    let mut c = conf("1.0.0", json!({"portMappings": []}));
    c["kubeconfig"] = json!(kubeconfig);
    c["podLookupAttempts"] = json!(2);
    c["podLookupIntervalMs"] = json!(50);
    let out = add(&pod, &c);
    let (code, msg) = cni_error(&out);
    assert_eq!(code, 101);
    for part in [
        "shop/orders-0",
        "cannot read the pod from the API server",
        "2 attempts, 50 ms apart",
        "127.0.0.1:1",
        &kubeconfig.display().to_string(),
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    // Each attempt was logged.
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(logs.matches("pod lookup failed").count(), 2, "{logs}");
    assert_nothing_installed(&pod);

    // No annotations from the runtime, and no kubeconfig to look the pod up with.
    let mut c = conf("1.0.0", json!({}));
    c.as_object_mut().unwrap().remove("kubeconfig");
    let (code, msg) = cni_error(&add(&pod, &c));
    assert_eq!(code, 7);
    assert!(
        msg.contains("shop/orders-0") && msg.contains("names no kubeconfig"),
        "{msg}"
    );
}

#[test]
fn an_injected_pod_whose_namespace_is_gone_fails_the_add() {
    let args = webhook_args(&Settings::default());
    let gone = "/run/netns/kube-mtls-cni-test-no-such-netns";
    let (code, msg) = cni_error(&add_in(gone, &conf("1.0.0", annotated(&args))));
    assert_eq!(code, 102);
    assert!(
        msg.contains("shop/orders-0") && msg.contains(gone) && msg.contains("cannot open"),
        "{msg}"
    );
}

#[test]
fn del_and_check_succeed_without_any_state() {
    let gone = "/run/netns/kube-mtls-cni-test-no-such-netns";
    let vars = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", gone),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", POD_ARGS),
    ];
    let args = webhook_args(&Settings::default());
    let c = conf("1.0.0", annotated(&args)).to_string();

    let out = cni("DEL", &vars, &c);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    // Not even a namespace or a configuration.
    let out = cni("DEL", &[("CNI_CONTAINERID", "c0ffee")], "");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    assert_eq!(result_of(&cni("CHECK", &vars, &c)), prev_result("1.0.0"));
    let out = cni("CHECK", &vars, "");
    assert!(out.status.success(), "{out:?}");
    // CHECK came with 0.4.0.
    let c = conf("0.3.1", annotated(&args)).to_string();
    assert_eq!(cni_error(&cni("CHECK", &vars, &c)).0, 1);

    for command in ["GC", "STATUS"] {
        let out = cni(command, &[], r#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert!(out.status.success(), "{command}: {out:?}");
    }
}

#[test]
fn version_and_incompatible_versions() {
    let out = cni("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(
        result_of(&out),
        json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED})
    );
    let out = cni("VERSION", &[], "");
    assert_eq!(result_of(&out)["cniVersion"], "1.1.0");

    for version in ["0.2.0", "2.0.0"] {
        let (code, msg) = cni_error(&add_in("/run/netns/x", &conf(version, json!({}))));
        assert_eq!(code, 1, "{msg}");
        assert!(
            msg.contains("incompatible CNI version") && msg.contains(version),
            "{msg}"
        );
    }
}

#[test]
fn add_needs_its_variables_and_a_known_command() {
    let args = webhook_args(&Settings::default());
    let c = conf("1.0.0", annotated(&args)).to_string();
    let vars = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", POD_ARGS),
    ];
    let (code, msg) = cni_error(&cni("ADD", &vars, &c));
    assert_eq!(code, 4);
    assert!(msg.starts_with("CNI_NETNS is not set"), "{msg}");

    let (code, msg) = cni_error(&cni("FROB", &vars, &c));
    assert_eq!(code, 4);
    assert!(
        msg.contains("\"FROB\"") && msg.contains("ADD, DEL"),
        "{msg}"
    );

    let (code, _) = cni_error(&cni("ADD", &vars, "not json"));
    assert_eq!(code, 6);
}

/// A stand-in API server on 127.0.0.1 (plain HTTP): answers the n-th request
/// with the n-th of `replies` (the last one repeated), and records each
/// request line.
fn stand_in_api_server(
    replies: Vec<(u16, Value)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            // The headers, up to the empty line (a GET has no body).
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            log.lock().unwrap().push(request.trim().to_owned());
            let (status, body) = &replies[n.min(replies.len() - 1)];
            let body = body.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn without_annotations_from_the_runtime_the_pod_is_looked_up() {
    require_netns!();
    let pod = Pod::create();
    let args = webhook_args(&Settings {
        inbound: "8080".parse().unwrap(),
        ..Settings::default()
    });
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "pods \"orders-0\" not found"});
    let found = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "orders-0", "namespace": "shop",
            "annotations": {CNI_REDIRECT: serde_json::to_string(&args).unwrap()}}});
    // The first answer is not the pod: the plugin tries again.
    let (url, seen) = stand_in_api_server(vec![(404, not_found), (200, found)]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = conf("1.0.0", json!({"portMappings": []}));
    c["kubeconfig"] = json!(write_kubeconfig(dir.path(), &url));
    c["podLookupAttempts"] = json!(3);
    c["podLookupIntervalMs"] = json!(50);

    assert_eq!(result_of(&add(&pod, &c)), prev_result("1.0.0"));
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[1].starts_with("GET /api/v1/namespaces/shop/pods/orders-0"),
        "{requests:?}"
    );
    let rules = ours(&pod.nat_rules("nft"));
    assert!(
        rules
            .iter()
            .any(|l| l.contains("--dport 8080") && l.contains("REDIRECT")),
        "{rules:#?}"
    );

    // A pod the webhook did not mark: looked up, passed through.
    let other = Pod::create();
    let plain = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "orders-0", "namespace": "shop", "annotations": {"a": "b"}}});
    let (url, _) = stand_in_api_server(vec![(200, plain)]);
    c["kubeconfig"] = json!(write_kubeconfig(dir.path(), &url));
    assert_eq!(result_of(&add(&other, &c)), prev_result("1.0.0"));
    assert_nothing_installed(&other);
}
