//! Paths of the workspace's built binaries.
//!
//! `make test` builds every binary (`cargo build --workspace --bins`) before the
//! tests run. A test binary lives in `target/<profile>/deps/`, so the binaries
//! are one level up.

use std::path::PathBuf;

/// The path of a workspace binary such as `kube-mtls-sidecar`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}
