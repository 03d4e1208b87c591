//! Running the real binaries: log capture, readiness waits, kill on drop,
//! and child processes run to completion within a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::deadline::PATIENCE;

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

/// Runs `cmd` to completion with `input` on its standard input, within [`PATIENCE`].
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    output_within(cmd, input, PATIENCE).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` to completion within [`PATIENCE`], standard input empty.
pub fn output(cmd: &mut Command) -> Output {
    output_with_input(cmd, b"")
}

/// Runs `cmd` with `input` on its standard input (then closed) and collects
/// its output, as [`Command::output`] does, but for at most `limit`: a child
/// still running then is killed, and the error names the command and what it
/// printed so far. So is a child that exits while something it started keeps
/// its output open. Fails as `output` does when `cmd` cannot start.
pub fn output_within(cmd: &mut Command, input: &[u8], limit: Duration) -> std::io::Result<Output> {
    let deadline = Instant::now() + limit;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // Written from a thread of its own: a child that prints before it has read
    // everything must not wait on this side, nor this side on it.
    std::thread::spawn(move || {
        // A program may exit without reading all of it; its output still tells.
        let _ = stdin.write_all(&input);
    });
    let pipes = Pipes::drain(child.stdout.take(), child.stderr.take());
    let timed_out = |what: String, pipes: &Pipes| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{cmd:?} {what} within {limit:?}; {}", pipes.so_far()),
        )
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out("did not finish".into(), &pipes));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    pipes
        .collect(deadline, status)
        .map_err(|pipes| timed_out("exited but its output stayed open".into(), &pipes))
}

/// A child's stdout and stderr, each read to its end on a thread of its own.
struct Pipes {
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<Vec<u8>>,
    /// What has been read so far, for the message when the deadline passes.
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pipes {
    fn drain(out: Option<ChildStdout>, err: Option<ChildStderr>) -> Pipes {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        Pipes {
            out: read_to_end_on_a_thread(out, seen.clone()),
            err: read_to_end_on_a_thread(err, seen.clone()),
            seen,
        }
    }

    /// Both pipes' contents once both have ended, or `Err(self)` if either is
    /// still open at `deadline`.
    fn collect(self, deadline: Instant, status: ExitStatus) -> Result<Output, Pipes> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let Ok(stdout) = self.out.recv_timeout(left()) else {
            return Err(self);
        };
        let Ok(stderr) = self.err.recv_timeout(left()) else {
            return Err(self);
        };
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn so_far(&self) -> String {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        format!("its output so far:\n{}", String::from_utf8_lossy(&seen))
    }
}

fn read_to_end_on_a_thread(
    pipe: Option<impl Read + Send + 'static>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        let Some(mut pipe) = pipe else {
            let _ = tx.send(all);
            return;
        };
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            all.extend_from_slice(&buf[..n]);
            if let Ok(mut seen) = seen.lock() {
                seen.extend_from_slice(&buf[..n]);
            }
        }
        let _ = tx.send(all);
    });
    rx
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
    let out = output(
        Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            .arg(format!("--nofile={limit}:{limit}")),
    );
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.1 GET (admin port); `None` when nothing answers in full
/// within 15 s.
pub fn plain_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let buf = String::from_utf8_lossy(&read_to_end_by(&mut s, deadline)?).into_owned();
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Everything `s` sends until it closes, or `None` if it has not closed by
/// `deadline` (a read timeout alone bounds each read, not all of them).
fn read_to_end_by(s: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
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
        let out = output(
            Command::new("kill")
                .arg("-s")
                .arg(sig)
                .arg(self.child.id().to_string()),
        );
        assert!(
            out.status.success(),
            "kill -s {sig} {}: {}",
            self.child.id(),
            String::from_utf8_lossy(&out.stderr)
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_finishes_in_time_gives_its_output() {
        let out = output_within(&mut Command::new("cat"), b"to and fro", PATIENCE).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"to and fro");
    }

    #[test]
    fn a_child_past_its_deadline_is_killed_and_named() {
        let start = Instant::now();
        let err = output_within(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            b"",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "{err}");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let msg = err.to_string();
        assert!(
            msg.contains("did not finish") && msg.contains("sleep") && msg.contains("started"),
            "{msg}"
        );
    }

    #[test]
    fn output_held_open_by_a_grandchild_ends_the_wait_at_the_deadline() {
        let err = output_within(
            Command::new("sh").args(["-c", "sleep 3 &"]),
            b"",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(err.to_string().contains("output stayed open"), "{err}");
    }

    #[test]
    fn a_server_that_never_closes_ends_the_read_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let start = Instant::now();
        let got = read_to_end_by(&mut client, Instant::now() + Duration::from_millis(200));
        assert_eq!(got, None);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
