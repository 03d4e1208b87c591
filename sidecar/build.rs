//! Links the sidecar's release binary with the functions it runs packed
//! together, in the order of `symbol-order.txt`.
//!
//! The kernel maps a binary's pages 64 KiB around each page a process touches,
//! so the few hundred functions a sidecar runs, spread over 4 MB of text, would
//! make nearly all of it resident; packed, they keep about a third of it. The
//! list comes from `scripts/symbol-order.sh`. Only where the linker is known
//! to take it: release builds for x86_64-unknown-linux-gnu, which Rust links
//! with its bundled lld. `KUBE_MTLS_SYMBOL_ORDER=off` builds without it (for a
//! linker that refuses `--symbol-ordering-file`, such as GNU ld).
//!
//! The list names the functions of `cargo build --release -p kube-mtls-sidecar`
//! run alone, as the image and the benchmark build it: built together with
//! other packages, shared crates can get other features, and their functions
//! other names, which the linker then does not find (nothing breaks; fewer
//! functions are packed).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=KUBE_MTLS_SYMBOL_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    let profile = env::var("PROFILE").unwrap_or_default();
    let off = env::var("KUBE_MTLS_SYMBOL_ORDER").is_ok_and(|v| v == "off");
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("symbol-order.txt");
    if target != "x86_64-unknown-linux-gnu" || profile != "release" || off || !order.is_file() {
        return;
    }
    let bin = "cargo:rustc-link-arg-bin=kube-mtls-sidecar";
    println!("{bin}=-Wl,--symbol-ordering-file={}", order.display());
    // Functions renamed since the list was made are simply not packed.
    println!("{bin}=-Wl,--no-warn-symbol-ordering");
}
