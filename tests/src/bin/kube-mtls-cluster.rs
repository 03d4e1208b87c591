//! `kube-mtls-cluster`: the cluster tests' real control plane and node, kept
//! running for people (`make demo`, `make demo-down`).
//!
//! ```text
//! kube-mtls-cluster up       start it in the background; returns once it is ready
//! kube-mtls-cluster status   exit 0 and say so if one runs, 1 if none does
//! kube-mtls-cluster down     stop it and check that nothing of it is left
//! ```
//!
//! `up` starts a second copy of itself (`hold`) in its own process group,
//! which owns the cluster and tears it down on SIGTERM with the same code the
//! tests use. Needs root, and `e2e/cluster/build.sh` and `images.sh` done.

use std::io::{BufRead, Seek};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube_mtls_tests::cluster::demo::{self, State};
use kube_mtls_tests::cluster::{self, Cluster};

/// How long `up` waits for a cold start (node, images, DNS) before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `down` waits for the teardown before it forces one.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let result = match cmd.as_str() {
        "up" => up(),
        "hold" => hold(),
        "down" => down(),
        "status" => return status(),
        _ => Err(anyhow::anyhow!(
            "usage: kube-mtls-cluster up|status|down (got {cmd:?})"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-mtls-cluster {cmd}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status() -> ExitCode {
    match State::load() {
        Some(s) if s.alive() => {
            println!(
                "a demo cluster is running (pid {}); export KUBECONFIG={}; `make demo-down` stops it",
                s.pid,
                s.kubeconfig.display()
            );
            ExitCode::SUCCESS
        }
        _ => {
            println!("no demo cluster is running");
            ExitCode::FAILURE
        }
    }
}

/// Starts the holder and relays its progress lines until the cluster is ready.
fn up() -> anyhow::Result<()> {
    if let Some(s) = State::load() {
        if s.alive() {
            bail!(
                "a demo cluster already runs (pid {}): `make demo-down` first",
                s.pid
            );
        }
        println!("==> a previous demo cluster ended without `down`: cleaning up after it");
        stop(&s)?;
    }
    cluster::preflight().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(demo::demo_dir())?;
    let log_path = demo::demo_dir().join("cluster.log");
    let log = std::fs::File::create(&log_path).context("create the cluster log")?;
    let mut holder = Command::new(std::env::current_exe()?)
        .arg("hold")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the cluster's holder")?;
    let mut progress = std::io::BufReader::new(std::fs::File::open(&log_path)?);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        relay(&mut progress)?;
        if State::load().is_some_and(|s| s.pid == holder.id()) {
            return Ok(());
        }
        if let Some(code) = holder.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the cluster did not start ({code}):\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not start within {START_TIMEOUT:?}: see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the holder's new `==> ` lines.
fn relay(log: &mut std::io::BufReader<std::fs::File>) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        let at = log.stream_position()?;
        line.clear();
        if log.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            // Half a line: read it again once it is complete.
            log.seek(std::io::SeekFrom::Start(at))?;
            return Ok(());
        }
        if line.starts_with("==> ") {
            print!("    {line}");
        }
    }
}

/// Owns the cluster: starts it, records where it is, waits for SIGTERM or
/// SIGINT, then drops it (the tests' teardown).
fn hold() -> anyhow::Result<()> {
    let iptables_before = demo::host_iptables();
    println!("==> control plane: etcd, kube-apiserver, kube-controller-manager, cert-manager");
    let mut c = Cluster::start();
    println!("==> node: containerd, kubelet, kube-scheduler, kube-proxy");
    c.start_node();
    println!("==> images (sidecar, webhook, test app) and cluster DNS");
    c.load_images_and_dns(&cluster::repo_root().join("target/cluster/images"));
    c.expose_to_host().map_err(anyhow::Error::msg)?;
    let kubeconfig = demo::demo_dir().join("kubeconfig");
    std::fs::copy(&c.kubeconfig, &kubeconfig).context("copy the kubeconfig")?;
    let state = c.demo_state(&kubeconfig, iptables_before);
    state.save().context("write the demo's state")?;
    println!("==> ready: logs in {}", c.logs.display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    println!("==> stopping");
    drop(c);
    Ok(())
}

/// Stops the demo cluster, if one was started, and checks what is left.
fn down() -> anyhow::Result<()> {
    let Some(s) = State::load() else {
        println!("no demo cluster is running");
        return Ok(());
    };
    stop(&s)
}

fn stop(s: &State) -> anyhow::Result<()> {
    if s.alive() {
        signal(s.pid, "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while s.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if s.alive() {
            eprintln!("the cluster did not stop within {STOP_TIMEOUT:?}: killing it");
            signal(s.pid, "KILL");
        }
    }
    if !demo::leftovers(s).is_empty() {
        demo::force_clean(s);
    }
    let left = demo::leftovers(s);
    if !left.is_empty() {
        bail!("left behind:\n  {}", left.join("\n  "));
    }
    let _ = std::fs::remove_file(State::path());
    let _ = std::fs::remove_file(&s.kubeconfig);
    println!(
        "stopped: no process, network namespace, link, mount, cgroup or iptables rule of it is left (logs: {})",
        s.logs.display()
    );
    Ok(())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status();
}
