//! The injection contract of kube-mtls, in one crate that all three binaries use.
//!
//! The webhook writes an init container and a sidecar into a pod; the init
//! container and the sidecar read everything from their flags. Before this
//! crate the two sides agreed only through copied strings. Here each fact has
//! one place:
//!
//! - [`names`]: fixed names, ports, UID/GID, paths, container names, the
//!   annotation names, and the naming rule of an identity.
//! - [`ports`]: port lists and the inbound-ports choice (`*` or a list).
//! - [`pattern`]: the allowed-clients grammar (SPIFFE ID patterns, DNS names).
//! - [`probe`]: the probe targets the sidecar forwards kubelet's probes to.
//! - [`init`] and [`sidecar`]: each binary's clap `Args`, its validated
//!   `Settings`, and the rendering of settings back into the exact args and
//!   environment the webhook writes ([`Rendered`]).
//! - [`duration`], [`LogFormat`], [`ConfigError`]: shared by both.
//! - [`doc`]: flag tables rendered from the clap definitions (docs/contract.md).
//!
//! A settings value rendered and parsed back through the binary's own `Args`
//! and validation gives the same value; the webhook's tests check that for
//! every container it can write.

pub mod doc;
pub mod duration;
pub mod init;
pub mod names;
pub mod pattern;
pub mod ports;
pub mod probe;
pub mod sidecar;

mod error;
mod render;

pub use error::ConfigError;
pub use render::{Rendered, parse_container};

/// How a binary writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// Text on a terminal, JSON otherwise.
    #[default]
    Auto,
}

impl LogFormat {
    /// The flag value, as `--log-format` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
            LogFormat::Auto => "auto",
        }
    }
}
