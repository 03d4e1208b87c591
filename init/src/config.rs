//! Flags of `kube-mtls-init` and their validation into a [`Config`].
//!
//! Both live in the contract crate (`kube_mtls_contract::init`), beside the
//! rendering the webhook writes the init container's args with, so the
//! webhook and this binary read one definition. `Config` is the contract's
//! validated settings under the name the rule plan uses.

pub use kube_mtls_contract::ConfigError;
pub use kube_mtls_contract::init::{Args, BackendChoice, Ipv6Choice, Settings as Config};
pub use kube_mtls_contract::ports::InboundPorts;
