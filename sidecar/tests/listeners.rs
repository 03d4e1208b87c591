//! The sidecar's listeners when the process runs out of file descriptors: the
//! real binary under a real RLIMIT_NOFILE (set on it with prlimit(1)), real
//! TCP clients filling it up, then freeing it.
//!
//! Out of descriptors, `accept` fails with EMFILE while the listening socket
//! stays readable; a listener that retried at once would spin a core and never
//! get anywhere. Each listener must back off, and serve again once
//! descriptors are free.

use std::net::TcpStream;
use std::time::Duration;

use kube_mtls_tests::process::{cpu_ticks, open_fds, plain_get, set_fd_limit, wait_until};
use kube_mtls_tests::sidecar_env::{CLIENT_ID, SidecarEnv as Env, sample};
use kube_mtls_tests::tls::get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_every_listener_backs_off_and_serves_again() {
    let env = Env::start(&[
        "--handshake-timeout",
        "120s",
        "--max-handshakes-per-source",
        "1000",
    ])
    .await;
    let cfg = env.client(&env.caller(CLIENT_ID));
    assert_eq!(
        get(env.addr, cfg.clone(), "/before", &[])
            .await
            .unwrap()
            .status,
        200
    );
    let pid = env.sidecar.proc.pid();
    set_fd_limit(pid, open_fds(pid) + 4);

    // Silent clients take the last descriptors; the rest wait in the backlog,
    // where the listener cannot take them.
    let silent: Vec<TcpStream> = (0..32)
        .map(|_| {
            TcpStream::connect_timeout(&env.addr, Duration::from_secs(5))
                .expect("the kernel queues the connection")
        })
        .collect();
    let logs = || env.sidecar.proc.logs();
    let failing = |n: usize| {
        wait_until(Duration::from_secs(10), || {
            logs().matches("accept failed").count() >= n
        })
    };
    assert!(failing(1), "no failed accept logged:\n{}", logs());
    // The admin port is out of descriptors too: this probe waits in its
    // backlog (for at most plain_get's deadline).
    let admin = env.sidecar.admin;
    let (probe_tx, probe) = std::sync::mpsc::channel();
    std::thread::spawn(move || probe_tx.send(plain_get(admin, "/ready")));
    assert!(
        failing(2),
        "the admin listener logged no failed accept:\n{}",
        logs()
    );

    // While it lasts, the sidecar waits rather than spins: over a second it
    // uses a small fraction of a core (a spinning listener takes all of one).
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 20,
        "{used} ticks of CPU in 1 s out of descriptors:\n{}",
        logs()
    );

    // Descriptors come free: the sidecar serves again, admin port included.
    drop(silent);
    assert!(
        env.sidecar
            .proc
            .wait_for_log("accepting connections again", Duration::from_secs(10)),
        "{}",
        logs()
    );
    let ready = probe
        .recv_timeout(Duration::from_secs(30))
        .expect("the admin probe's answer");
    assert_eq!(ready.map(|(s, _)| s), Some(200), "{}", logs());
    let after = get(env.addr, cfg, "/after", &[]).await.unwrap();
    assert_eq!(after.status, 200, "{}", after.body);
    let m = env.metrics();
    for listener in ["listen", "admin"] {
        let label = format!("kube_mtls_sidecar_accept_errors_total{{listener=\"{listener}\"}}");
        assert!(sample(&m, &label) >= 1.0, "{label}:\n{m}");
    }
}
