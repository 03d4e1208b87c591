//! The load generator through the real sidecar to its own upstream: every
//! scenario completes without errors over mTLS, a fixed rate sends exactly
//! the scheduled requests, and a client without a certificate is counted as
//! failing rather than as throughput.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use kube_mtls_tests::process::{Proc, Sidecar, free_port, wait_until};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_kube-mtls-loadgen");

struct Setup {
    _upstream: Proc,
    _sidecar: Sidecar,
    proxy: u16,
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
    let mut cmd = Command::new(LOADGEN);
    cmd.args([
        "upstream",
        "--listen",
        &format!("127.0.0.1:{upstream_port}"),
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

    let proxy = free_port();
    let sidecar = Sidecar::start(
        &certs.path().join("server"),
        &[(proxy, upstream_port)],
        &["--workers", "1"],
    );
    Setup {
        _upstream: upstream,
        _sidecar: sidecar,
        proxy,
        certs,
    }
}

fn run(setup: &Setup, with_cert: bool, args: &[&str]) -> Value {
    let client = setup.certs.path().join("client");
    let mut cmd = Command::new(LOADGEN);
    cmd.args(["run", "--target", &format!("127.0.0.1:{}", setup.proxy)])
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
    // 200 req/s over 4 connections for 0.5 s: each connection is due every
    // 20 ms from its offset (0, 5, 10, 15 ms), 25 times before the deadline.
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
