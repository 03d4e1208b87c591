//! A load generator that presents a client certificate, and the upstream it
//! measures through: the two halves of `bench/run.py`.
//!
//! wrk, ab and h2load cannot present a client certificate, and a TLS tunnel in
//! front of them would itself be the bottleneck, so the benchmark brings its
//! own. Everything runs on one thread per process (`current_thread` runtimes),
//! but for the fixed-rate scenario's pacer ([`pacer`]):
//! the benchmark pins the load generator and upstream to one core and the proxy
//! under test to another, and a single-threaded client wastes none of its core
//! on cross-thread wake-ups.

pub mod certs;
pub mod client;
pub mod load;
pub mod pacer;
pub mod tcp;
pub mod upstream;
