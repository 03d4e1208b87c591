//! The kube-mtls proxy: terminates inbound mutual TLS in front of a pod's app.
//!
//! - [`config`]: flags and their validation.
//! - [`identity`]: SPIFFE/DNS identities and the allow-list.
//! - [`tls`]: the key pair and the trust bundle as rustls configs, hot reload.
//! - [`trust`]: the trust bundle, the CAs peers' certificates must chain to.
//! - [`verify`]: peers' certificates checked against it, and why a handshake
//!   failed.
//! - [`original_dst`]: where a redirected connection was going.
//! - [`shared`]: what every listener and connection shares (state, response
//!   bodies, the connections to the app).
//! - [`proxy`]: the inbound path, HTTP and TCP.
//! - [`permissive`]: permissive mode's plaintext detection and logging.
//! - [`outbound`]: the app's plaintext calls leave as mTLS.
//! - [`conn`]: serving HTTP on one connection, for both directions; [`clock`]:
//!   its timer.
//! - [`rewrite`]: the request rewrite both directions share.
//! - [`upstream`]: the connections to the app, without a pool in the way.
//! - [`headers`]: XFCC and the headers a client may not forge.
//! - [`admin`]: `/ready`, `/live`, `/metrics`, `/app-health/...`.
//! - [`limits`]: handshakes in progress, overall and per client address.
//! - [`body`]: request and response bodies as the proxy passes them on.
//! - [`metrics`], [`io`] (idle timeout, lingering close, read-ahead), [`server`]
//!   (start-up and drain).

pub mod admin;
pub mod body;
pub mod clock;
pub mod config;
pub mod conn;
pub mod headers;
pub mod identity;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod permissive;
pub mod proxy;
pub mod rewrite;
pub mod server;
pub mod shared;
pub mod tls;
pub mod trust;
pub mod upstream;
pub mod verify;
