//! Admission for connections that have not authenticated yet.
//!
//! A connection holds a `--max-connections` slot only once its mTLS handshake
//! has succeeded. Until then it holds a handshake permit: at most
//! `--max-handshakes` in progress overall and `--max-handshakes-per-source`
//! from any one IP address. Peers that connect and never send a ClientHello
//! therefore use up handshake permits (from their own address first), never
//! the places of callers that have proved who they are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Refusal;

/// The handshake limits, shared by every listener.
pub struct HandshakeGate {
    global: Arc<Semaphore>,
    per_source: usize,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A handshake in progress; dropping it frees its place.
pub struct HandshakePermit {
    _global: OwnedSemaphorePermit,
    _source: SourcePermit,
}

struct SourcePermit {
    ip: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = sources.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

impl HandshakeGate {
    pub fn new(max: usize, per_source: usize) -> Self {
        HandshakeGate {
            global: Arc::new(Semaphore::new(max)),
            per_source,
            sources: Arc::default(),
        }
    }

    /// A permit for one handshake from `ip`, or the limit that refuses it.
    pub fn try_enter(&self, ip: IpAddr) -> Result<HandshakePermit, Refusal> {
        let ip = canonical(ip);
        let source = {
            let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
            let n = sources.entry(ip).or_insert(0);
            if *n >= self.per_source {
                return Err(Refusal::SourceHandshakeLimit);
            }
            *n += 1;
            SourcePermit {
                ip,
                sources: self.sources.clone(),
            }
        };
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::HandshakeLimit)?;
        Ok(HandshakePermit {
            _global: global,
            _source: source,
        })
    }
}

/// IPv4 clients reaching an IPv6 socket appear as `::ffff:a.b.c.d`; count
/// them under their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_source_and_overall() {
        let gate = HandshakeGate::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = gate.try_enter(a).expect("first from a");
        let _a2 = gate.try_enter(a).expect("second from a");
        assert_eq!(gate.try_enter(a).err(), Some(Refusal::SourceHandshakeLimit));
        let _b1 = gate.try_enter(b).expect("b is another source");
        assert_eq!(gate.try_enter(b).err(), Some(Refusal::HandshakeLimit));
        drop(a1);
        assert!(gate.try_enter(b).is_ok(), "a freed place is free again");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        assert_eq!(canonical(mapped), a);
    }

    #[test]
    fn finished_sources_are_forgotten() {
        let gate = HandshakeGate::new(10, 10);
        drop(gate.try_enter([10, 0, 0, 1].into()).expect("permit"));
        assert!(gate.sources.lock().expect("lock").is_empty());
    }
}
