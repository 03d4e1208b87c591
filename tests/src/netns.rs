//! "Pods" built from Linux network namespaces.
//!
//! A [`Pod`] is a network namespace with `lo` up and a veth pair to the host
//! namespace (a /30 of its own in 10.213.0.0/16), so a client in the test
//! process reaches it by its pod IP, with real packets through real iptables.
//! Inside, tests run the app, `kube-mtls-init` and the sidecar (under its own
//! UID, via `setpriv`). Dropping the pod kills its processes and deletes the
//! namespace (which takes the veth pair with it).
//!
//! Creating namespaces needs root and iproute2. Use [`require_netns!`] at the
//! top of a test: it skips with a printed reason where that is impossible, and
//! fails instead when `KUBE_MTLS_REQUIRE_NETNS=1` (CI sets it), so a machine
//! that should run these tests can never pass them silently.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::deadline::PATIENCE;
use crate::process::{Proc, output, output_within, plain_get, wait_until};

/// The sidecar's UID in every pod, as the webhook writes it.
pub use kube_mtls_contract::names::PROXY_UID;

/// Why pods cannot be built here, or `Ok`; checked once per test binary.
pub fn available() -> Result<(), String> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check).clone()
}

fn check() -> Result<(), String> {
    let uid = output_within(Command::new("id").arg("-u"), b"", PATIENCE)
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("network-namespace tests need root".into());
    }
    for tool in [
        "ip",
        "setpriv",
        "iptables-nft-restore",
        "iptables-legacy-restore",
    ] {
        let found = output_within(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}")),
            b"",
            PATIENCE,
        )
        .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is not installed (apt-get install iproute2 iptables util-linux)"
            ));
        }
    }
    let probe = format!("kmtls-probe-{}", std::process::id());
    let made = output_within(
        Command::new("ip").args(["netns", "add", &probe]),
        b"",
        PATIENCE,
    )
    .map_err(|e| e.to_string())?;
    if !made.status.success() {
        return Err(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let _ = output_within(
        Command::new("ip").args(["netns", "del", &probe]),
        b"",
        PATIENCE,
    );
    Ok(())
}

/// Skips the calling test (returning early) where pods cannot be built, unless
/// `KUBE_MTLS_REQUIRE_NETNS=1`, where it fails it.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Err(why) = $crate::netns::available() {
            if std::env::var("KUBE_MTLS_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("KUBE_MTLS_REQUIRE_NETNS=1 but network-namespace tests cannot run: {why}");
            }
            eprintln!("SKIPPED (network-namespace test): {why}");
            return;
        }
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = output(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod: a network namespace reachable from the host at [`Pod::ip`].
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    host_if: String,
    procs: Vec<Proc>,
    /// World-readable scratch space (certificates for the sidecar's UID).
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Pod {
    pub fn create() -> Pod {
        let n = (std::process::id() % 256) * 64 + NEXT.fetch_add(1, Ordering::Relaxed) % 64;
        let n = n % 16384;
        let name = format!("kmtls-{}-{n}", std::process::id());
        let (host_if, pod_if) = (format!("km{n}h"), format!("km{n}p"));
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + n * 4;
        let (host_ip, pod_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        // Leftovers of an earlier, interrupted run with the same numbers.
        let _ = output(Command::new("ip").args(["link", "del", &host_if]));
        let _ = output(Command::new("ip").args(["netns", "del", &name]));

        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
        ]);
        ip(&["link", "set", &pod_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            &pod_if,
        ]);
        ip(&["-n", &name, "link", "set", &pod_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &host_ip.to_string(),
        ]);

        let tmp = tempfile::tempdir().expect("pod dir");
        let dir = tmp.path().to_owned();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod pod dir");
        Pod {
            name,
            ip: pod_ip,
            host_ip,
            host_if,
            procs: Vec::new(),
            dir,
            _tmp: tmp,
        }
    }

    /// Connects this pod and `other` with a veth pair of their own (a /30 in
    /// 10.214.0.0/16). Returns this side's address, the other side's address,
    /// and this side's interface name.
    pub fn link(&self, other: &Pod) -> (Ipv4Addr, Ipv4Addr, String) {
        let n =
            ((std::process::id() % 256) * 64 + NEXT.fetch_add(1, Ordering::Relaxed) % 64) % 16384;
        let (a_if, b_if) = (format!("kl{n}a"), format!("kl{n}b"));
        let base = u32::from(Ipv4Addr::new(10, 214, 0, 0)) + n * 4;
        let (a_ip, b_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        ip(&[
            "-n",
            &self.name,
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            &other.name,
        ]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{a_ip}/30"),
            "dev",
            &a_if,
        ]);
        ip(&[
            "-n",
            &other.name,
            "addr",
            "add",
            &format!("{b_ip}/30"),
            "dev",
            &b_if,
        ]);
        ip(&["-n", &self.name, "link", "set", &a_if, "up"]);
        ip(&["-n", &other.name, "link", "set", &b_if, "up"]);
        (a_ip, b_ip, a_if)
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// A command run inside the pod's namespace, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command run inside the pod's namespace under `uid` (and gid = uid).
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(program);
        c
    }

    /// Runs a command in the pod to completion, within [`PATIENCE`].
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        output(self.command(program).args(args))
    }

    /// Starts the echo app listening on 0.0.0.0 on each port, and waits until it answers.
    pub fn start_app(&mut self, ports: &[u16]) {
        let mut cmd = self.command(crate::bins::bin("kube-mtls-test-app"));
        cmd.args(ports.iter().map(|p| p.to_string()));
        self.procs.push(Proc::spawn(cmd));
        for p in ports {
            let up = wait_until(Duration::from_secs(10), || bash_connect(self, *p));
            assert!(up, "app on port {p} never came up");
        }
    }

    /// Runs `kube-mtls-init` in the pod with `args`, within [`PATIENCE`].
    pub fn init(&self, args: &[&str]) -> Output {
        output(
            self.command(crate::bins::bin("kube-mtls-init"))
                .args(args)
                .arg("--log-format=text"),
        )
    }

    /// Starts the sidecar in the pod under [`PROXY_UID`], with `cert_dir`
    /// (under [`Pod::dir`]) and `args`, and waits until `/ready` on the pod IP says 200.
    pub fn start_sidecar(&mut self, cert_dir: &Path, args: &[&str]) -> &Proc {
        let mut cmd = self.command_as(PROXY_UID, crate::bins::bin("kube-mtls-sidecar"));
        cmd.arg("--cert-dir")
            .arg(cert_dir)
            .arg("--log-format=text")
            .args(args);
        self.start_sidecar_cmd(cmd)
    }

    /// Starts a sidecar from a prepared command (e.g. the arguments a webhook wrote).
    pub fn start_sidecar_cmd(&mut self, cmd: Command) -> &Proc {
        let proc = Proc::spawn(cmd);
        let admin = self.addr(kube_mtls_contract::names::ADMIN_PORT);
        let ready = wait_until(Duration::from_secs(20), || {
            plain_get(admin, "/ready").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            ready,
            "sidecar in pod {} never became ready:\n{}",
            self.name,
            proc.logs()
        );
        self.procs.push(proc);
        self.procs.last().expect("just pushed")
    }

    /// `iptables-<backend>-save -t nat` inside the pod.
    pub fn nat_rules(&self, backend: &str) -> String {
        let out = self.run(&format!("iptables-{backend}-save"), &["-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            // Chain lines carry packet counters, which change with traffic.
            .map(|l| {
                if l.starts_with(':') {
                    l.split(" [").next().unwrap_or(l)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn bash_connect(pod: &Pod, port: u16) -> bool {
    pod.run(
        "bash",
        &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")],
    )
    .status
    .success()
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.procs.clear();
        let ip = |args: &[&str]| output_within(Command::new("ip").args(args), b"", PATIENCE);
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
