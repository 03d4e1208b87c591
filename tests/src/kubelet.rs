//! A stand-in kubelet for injected pods: runs a pod spec exactly as the webhook
//! wrote it, in a network-namespace [`Pod`]. The init container runs its
//! command and arguments with only the capabilities it asks for; the sidecar
//! runs its command, arguments and environment under its UID, with the
//! certificate Secret laid out as kubelet does (`..data` symlinks) and mounted
//! where the spec says (a private bind mount in its own mount namespace). A
//! pod that mounts the trust bundle (`kube-mtls-trust`) gets the Secret's
//! `ca.crt` as its `ca-bundle.crt`: the bundle the controller would keep for
//! a cluster with one CA.
//!
//! Used for pods the offline injector printed and for pods read back from a
//! real API server, so both run through the same steps.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bins::bin;
use crate::certs::{Issued, KubeletDir};
use crate::netns::Pod;
use crate::process::output;

/// The certificate volume the webhook adds.
pub const CERT_VOLUME: &str = "kube-mtls-certs";
/// The trust bundle volume the webhook adds (a ConfigMap).
pub const TRUST_VOLUME: &str = "kube-mtls-trust";

/// An injected pod running in a network namespace.
pub struct RunningPod {
    pub pod: Pod,
    /// The Secret volume, for rotating it as kubelet would.
    pub certs: KubeletDir,
    /// The pod spec it runs.
    pub spec: Value,
}

/// Runs `spec`'s app (the echo app on `app_ports`), init container and sidecar,
/// with `secret` as the contents of the certificate Secret; waits until the
/// sidecar is ready.
pub fn run_injected(spec: &Value, secret: &Issued, app_ports: &[u16]) -> RunningPod {
    let mut pod = Pod::create();
    let certs = KubeletDir::create(&pod.dir.join("secret"), secret).expect("Secret volume");
    pod.start_app(app_ports);
    run_init(&pod, container(spec, "initContainers", "kube-mtls-init"));
    let sidecar = container(spec, "initContainers", "kube-mtls-sidecar");
    let mut mounts = vec![(mount_path(sidecar, CERT_VOLUME), certs.path.clone())];
    if sidecar["volumeMounts"].to_string().contains(TRUST_VOLUME) {
        let trust = pod.dir.join("trust");
        std::fs::create_dir_all(&trust).expect("trust bundle volume");
        std::fs::write(trust.join("ca-bundle.crt"), &secret.ca_pem).expect("ca-bundle.crt");
        mounts.push((mount_path(sidecar, TRUST_VOLUME), trust));
    }
    start_sidecar(&mut pod, sidecar, &mounts);
    RunningPod {
        pod,
        certs,
        spec: spec.clone(),
    }
}

/// The container `name` in `spec[list]`.
pub fn container<'a>(spec: &'a Value, list: &str, name: &str) -> &'a Value {
    spec[list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The workspace binary a container's `command[0]` names.
fn command_bin(c: &Value) -> std::path::PathBuf {
    let command = strings(&c["command"]);
    let first = command.first().expect("the container has a command");
    let name = Path::new(first)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("command is a file name");
    bin(name)
}

/// Runs the init container to completion with exactly the capabilities it adds.
fn run_init(pod: &Pod, init: &Value) {
    let caps: Vec<String> = strings(&init["securityContext"]["capabilities"]["add"])
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    assert_eq!(init["securityContext"]["capabilities"]["drop"][0], "ALL");
    let cap_set = format!("-all,{}", caps.join(","));
    let out = output(
        pod.command("setpriv")
            .arg(format!("--inh-caps={cap_set}"))
            .arg(format!("--bounding-set={cap_set}"))
            .arg(command_bin(init))
            .args(strings(&init["args"])),
    );
    assert!(
        out.status.success(),
        "init container failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where the sidecar mounts the volume `name`.
fn mount_path(sidecar: &Value, name: &str) -> String {
    sidecar["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("the sidecar does not mount {name}"))
        .to_owned()
}

/// Starts the sidecar under its UID with each `(mount path, directory)` bound.
fn start_sidecar(pod: &mut Pod, sidecar: &Value, mounts: &[(String, PathBuf)]) {
    let uid = sidecar["securityContext"]["runAsUser"]
        .as_u64()
        .expect("the sidecar sets runAsUser");
    let mut script = String::new();
    for (mount, dir) in mounts {
        script.push_str(&format!(
            "mkdir -p {mount} && mount --bind {} {mount} && ",
            dir.display()
        ));
    }
    script.push_str(&format!(
        "exec setpriv --reuid={uid} --regid={uid} --clear-groups {}",
        command_bin(sidecar).display()
    ));
    for a in strings(&sidecar["args"]) {
        script.push_str(&format!(" '{a}'"));
    }
    let mut cmd = pod.command("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    for e in sidecar["env"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) else {
            panic!("the stand-in kubelet fills only literal env values, not {e}");
        };
        cmd.env(name, value);
    }
    cmd.env("KUBE_MTLS_LOG_FORMAT", "text");
    pod.start_sidecar_cmd(cmd);
}

impl RunningPod {
    /// Publishes a new Secret content, as kubelet does when the Secret changes.
    pub fn rotate(&mut self, next: &Issued) {
        self.certs.swap(next).expect("swap Secret volume");
    }
}
