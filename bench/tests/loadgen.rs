//! The load generator through the real sidecar to its own upstreams: every
//! scenario (HTTP and raw TCP) completes without errors over mTLS, a fixed
//! rate and a request budget send exactly the scheduled requests, and a
//! client without a certificate is counted as failing rather than as
//! throughput.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use kube_mtls_tests::process::{Proc, Sidecar, free_port, wait_until};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_kube-mtls-loadgen");

struct Setup {
    _upstream: Proc,
    _sidecar: Sidecar,
    /// The sidecar's HTTP listener.
    proxy: u16,
    /// Its raw-TCP listener (`--tcp-ports`), in front of the TCP upstream.
    tcp_proxy: u16,
    certs: tempfile::TempDir,
}

fn setup() -> Setup {
    let certs = tempfile::tempdir().expect("temp dir");
    let status = Command::new(LOADGEN)
        .arg("gen-certs")
        .arg(certs.path())
        .status()
        .expect("run gen-certs");
    assert!(status.success(), "gen-certs failed");
    for file in ["tls.crt", "tls.key", "ca.crt", "combined.pem"] {
        assert!(certs.path().join("server").join(file).is_file(), "{file}");
    }

    let upstream_port = free_port();
    let tcp_upstream = free_port();
    let mut cmd = Command::new(LOADGEN);
    cmd.args([
        "upstream",
        "--listen",
        &format!("127.0.0.1:{upstream_port}"),
        "--tcp-listen",
        &format!("127.0.0.1:{tcp_upstream}"),
    ]);
    let upstream = Proc::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            upstream_port
        ))
        .is_ok()),
        "upstream did not listen:\n{}",
        upstream.logs()
    );

    let (proxy, tcp_proxy) = (free_port(), free_port());
    let tcp_ports = format!("--tcp-ports={tcp_upstream}");
    let sidecar = Sidecar::start(
        &certs.path().join("server"),
        &[(proxy, upstream_port), (tcp_proxy, tcp_upstream)],
        &["--workers", "1", &tcp_ports],
    );
    Setup {
        _upstream: upstream,
        _sidecar: sidecar,
        proxy,
        tcp_proxy,
        certs,
    }
}

fn run(setup: &Setup, with_cert: bool, args: &[&str]) -> Value {
    run_on(setup, setup.proxy, with_cert, args)
}

fn run_on(setup: &Setup, port: u16, with_cert: bool, args: &[&str]) -> Value {
    let client = setup.certs.path().join("client");
    let mut cmd = Command::new(LOADGEN);
    cmd.args(["run", "--target", &format!("127.0.0.1:{port}")])
        .arg("--ca")
        .arg(client.join("ca.crt"));
    if with_cert {
        cmd.arg("--cert")
            .arg(client.join("tls.crt"))
            .arg("--key")
            .arg(client.join("tls.key"));
    }
    let out = cmd.args(args).output().expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

fn assert_clean(report: &Value) {
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(report["p99_us"].as_u64().unwrap_or(0) >= report["p50_us"].as_u64().unwrap_or(0));
}

#[test]
fn every_scenario_runs_cleanly_through_the_sidecar() {
    let setup = setup();
    for scenario in ["keepalive", "handshake", "h2"] {
        let report = run(
            &setup,
            true,
            &[
                "--scenario",
                scenario,
                "--seconds",
                "0.3",
                "--connections",
                "4",
                "--streams",
                "4",
            ],
        );
        assert_eq!(report["scenario"], scenario);
        assert_clean(&report);
    }
}

#[test]
fn fixed_rate_sends_exactly_the_scheduled_requests() {
    let setup = setup();
    // 200 req/s over 4 connections for 0.5 s: one request due every 5 ms,
    // the connections in turn, 100 before the deadline.
    let report = run(
        &setup,
        true,
        &[
            "--scenario",
            "rate",
            "--rate",
            "200",
            "--connections",
            "4",
            "--seconds",
            "0.5",
        ],
    );
    assert_clean(&report);
    assert_eq!(report["requests"], 100, "{report}");
    assert!(report["pacing_p99_us"].as_u64().is_some(), "{report}");
    assert!(
        report["p999_us"].as_u64() >= report["p99_us"].as_u64(),
        "{report}"
    );
}

#[test]
fn a_request_budget_sends_exactly_that_many() {
    let setup = setup();
    let report = run(
        &setup,
        true,
        &[
            "--scenario",
            "keepalive",
            "--requests",
            "37",
            "--connections",
            "4",
        ],
    );
    assert_clean(&report);
    assert_eq!(report["requests"], 37, "{report}");
}

#[test]
fn the_tcp_scenarios_run_cleanly_through_the_sidecars_tcp_mode() {
    let setup = setup();
    for scenario in ["tcp", "tcp-handshake"] {
        let args = [
            "--scenario",
            scenario,
            "--seconds",
            "0.3",
            "--connections",
            "4",
        ];
        let report = run_on(&setup, setup.tcp_proxy, true, &args);
        assert_eq!(report["scenario"], scenario);
        assert_clean(&report);
    }
    let args = ["--scenario", "tcp-bulk", "--bytes", "20000000"];
    let report = run_on(&setup, setup.tcp_proxy, true, &args);
    assert_clean(&report);
    assert_eq!(report["requests"], 1, "{report}");
    assert!(
        report["rate"].as_f64().unwrap_or(0.0) > 0.0,
        "MB/s: {report}"
    );
    // Without a client certificate, no byte reaches the upstream.
    let report = run_on(&setup, setup.tcp_proxy, false, &args);
    assert_eq!(report["errors"], 1, "{report}");
}

#[test]
fn a_client_without_certificate_counts_as_errors() {
    let setup = setup();
    let report = run(
        &setup,
        false,
        &[
            "--scenario",
            "handshake",
            "--seconds",
            "0.2",
            "--connections",
            "2",
        ],
    );
    assert_eq!(report["requests"], 0, "{report}");
    assert!(report["errors"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(report["first_error"].is_string(), "{report}");
}

#[test]
fn bad_arguments_are_refused_with_the_flag_named() {
    for (flag, value) in [("--rate", "0"), ("--path", "/not a path")] {
        let out = Command::new(LOADGEN)
            .args([
                "run",
                "--scenario",
                "rate",
                "--target",
                "127.0.0.1:9",
                flag,
                value,
            ])
            .output()
            .expect("run loadgen");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value:?} was accepted");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}
