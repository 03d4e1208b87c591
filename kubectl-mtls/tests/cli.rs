//! The binary's exit codes, which scripts rely on: 2 for bad flags (before
//! any connection), 3 when the cluster cannot be read.

use std::process::Command;

fn kubectl_mtls(args: &[&str], kubeconfig: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-mtls"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBE_MTLS_OUTPUT")
        .output()
        .expect("run kubectl-mtls")
}

/// A kubeconfig for an API server that is not there (port 1 on loopback).
fn unreachable() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config");
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&path, config.to_string()).expect("write kubeconfig");
    (dir, path)
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let (_dir, config) = unreachable();
    let out = kubectl_mtls(&["check", "--expiry-warning", "soon"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--expiry-warning") && err.contains("KUBE_MTLS_EXPIRY_WARNING"),
        "{err}"
    );

    let out = kubectl_mtls(&["status", "-n", "shop", "-A"], &config);
    assert_eq!(out.status.code(), Some(2));
    let out = kubectl_mtls(&["check", "-o", "dot"], &config);
    assert_eq!(out.status.code(), Some(2), "only policy draws a graph");
}

#[test]
fn an_unreachable_cluster_exits_3() {
    let (_dir, config) = unreachable();
    for cmd in [&["check"][..], &["status", "-A"], &["policy"]] {
        let out = kubectl_mtls(cmd, &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(out.stdout.is_empty(), "{cmd:?} printed a result");
    }
}
