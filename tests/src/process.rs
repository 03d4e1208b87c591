//! Running the real binaries: log capture, readiness waits, kill on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768 and up), so no outgoing connection can take it between this check
/// and the moment a test's server binds it. Each process walks its own
/// sequence; a port that does not bind is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = 20000 + (n % 12000) as u16;
        // Each probe socket is closed before the next is tried.
        let loopback = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if loopback && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with `input` on its standard input.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A program may exit without reading all of it; its output still tells.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("wait for output")
}

/// The number of descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's /proc entry")
        .count() as u64
}

/// CPU time process `pid` has used (user + system, all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Sets process `pid`'s RLIMIT_NOFILE with prlimit(1), to run it out of descriptors.
pub fn set_fd_limit(pid: u32, limit: u64) {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux) is installed");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.1 GET (admin port); `None` when nothing answers.
pub fn plain_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process whose stdout and stderr go to a log file; killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let dir = tempfile::tempdir().expect("log dir");
        let log = dir.path().join("output.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    /// Sends a signal by name, e.g. `TERM`, with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} {}", self.child.id());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sidecar binary running on loopback with direct listeners.
pub struct Sidecar {
    pub proc: Proc,
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts `kube-mtls-sidecar --cert-dir <dir> --listen <listen:app,...> <extra...>`
    /// (no `--listen` when `listen` is empty, so `extra` may give its own)
    /// with free inbound and admin ports, and waits until `/ready` says 200.
    pub fn start(cert_dir: &Path, listen: &[(u16, u16)], extra: &[&str]) -> Sidecar {
        let sidecar = Sidecar::spawn(cert_dir, listen, extra);
        let ready = wait_until(Duration::from_secs(20), || {
            plain_get(sidecar.admin, "/ready").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            ready,
            "sidecar never became ready; output:\n{}",
            sidecar.proc.logs()
        );
        sidecar
    }

    /// Starts the sidecar without waiting (for tests of start-up failures).
    pub fn spawn(cert_dir: &Path, listen: &[(u16, u16)], extra: &[&str]) -> Sidecar {
        let admin_port = free_port();
        let listen_arg = listen
            .iter()
            .map(|(l, a)| format!("{l}:{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(crate::bins::bin("kube-mtls-sidecar"));
        cmd.arg("--cert-dir")
            .arg(cert_dir)
            .arg("--inbound-port")
            .arg(free_port().to_string())
            .arg("--outbound-port")
            .arg("0")
            .arg("--admin-port")
            .arg(admin_port.to_string())
            .args((!listen.is_empty()).then(|| format!("--listen={listen_arg}")))
            .arg("--log-format")
            .arg("text")
            .args(extra)
            .env_remove("RUST_LOG");
        Sidecar {
            proc: Proc::spawn(cmd),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        }
    }
}
