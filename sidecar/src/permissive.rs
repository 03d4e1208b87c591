//! Permissive mode (`--mode permissive`): plaintext callers are let in, so a
//! team can see who still calls without mTLS before switching to strict.
//!
//! On each inbound connection to an HTTP port the sidecar peeks at the first
//! byte, waiting at most `--detect-timeout`:
//!
//! - `0x16` (a TLS handshake record, i.e. a ClientHello) takes the mTLS path
//!   exactly as in strict mode: a TLS client without a valid client
//!   certificate is still refused;
//! - anything else, or nothing within the timeout, is served as plaintext
//!   HTTP/1.1 or HTTP/2 (prior knowledge), with every identity header the
//!   client sent removed and none added but `X-Forwarded-For` and
//!   `X-Forwarded-Proto: http`, so the app can never mistake it for an
//!   authenticated caller.
//!
//! Ports in `--tcp-ports` are never sniffed: they stay mTLS-only in either
//! mode. That is where server-speaks-first protocols (MySQL, SMTP, FTP, POP3,
//! IMAP, SSH) belong, whose clients wait for the server and would otherwise be
//! held for the whole detection timeout.
//!
//! Plaintext connections are counted by app port
//! (`kube_mtls_sidecar_plaintext_connections_total{port}`) and logged once per
//! source address per minute ([`PlaintextLog`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The first byte of every TLS handshake record, ClientHello included.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A TLS handshake record: the mTLS path.
    Tls,
    /// Other bytes, or none within the detection timeout: plaintext.
    Plaintext,
    /// The client closed without sending anything.
    Closed,
}

/// Classifies a connection's first byte without consuming it.
pub fn classify(first: Option<u8>) -> Opening {
    match first {
        None => Opening::Closed,
        Some(TLS_HANDSHAKE_RECORD) => Opening::Tls,
        Some(_) => Opening::Plaintext,
    }
}

/// Peeks at the first byte for at most `timeout`; a client that stays
/// silent that long is not starting TLS (TLS clients speak first).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Opening> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Err(_) => Ok(Opening::Plaintext),
        Ok(Ok(0)) => Ok(classify(None)),
        Ok(Ok(_)) => Ok(classify(Some(first[0]))),
        Ok(Err(e)) => Err(e),
    }
}

/// How often one source address is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Source addresses remembered at once; beyond this, within a minute, new
/// addresses are counted but not logged, so that many sources cannot flood
/// the log or the memory.
const MAX_SOURCES: usize = 10_000;

/// Decides which plaintext connections are logged: the first from each
/// source address, then again once a minute has passed.
#[derive(Debug, Default)]
pub struct PlaintextLog {
    /// When each source address was last logged.
    last: Mutex<HashMap<IpAddr, Instant>>,
}

impl PlaintextLog {
    /// True if a plaintext connection from `ip` at `now` should be logged.
    pub fn should_log(&self, ip: IpAddr, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = last.get(&ip)
            && now.saturating_duration_since(*at) < LOG_EVERY
        {
            return false;
        }
        if last.len() >= MAX_SOURCES && !last.contains_key(&ip) {
            last.retain(|_, at| now.saturating_duration_since(*at) < LOG_EVERY);
            if last.len() >= MAX_SOURCES {
                return false;
            }
        }
        last.insert(ip, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tls_record_takes_the_mtls_path() {
        assert_eq!(classify(Some(0x16)), Opening::Tls);
        for plain in [b"GET /" as &[u8], b"PRI * HTTP/2.0", b"POST", b"\x00"] {
            assert_eq!(classify(plain.first().copied()), Opening::Plaintext);
        }
        assert_eq!(classify(None), Opening::Closed);
    }

    #[test]
    fn each_source_is_logged_once_a_minute() {
        let log = PlaintextLog::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        assert!(log.should_log(a, t0));
        assert!(!log.should_log(a, t0 + Duration::from_secs(59)));
        assert!(log.should_log(b, t0 + Duration::from_secs(1)));
        assert!(log.should_log(a, t0 + Duration::from_secs(60)));
        assert!(!log.should_log(a, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn the_memory_of_sources_is_bounded() {
        let log = PlaintextLog::default();
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(log.should_log(IpAddr::from(i.to_be_bytes()), t0));
        }
        let newcomer: IpAddr = [255, 255, 255, 255].into();
        assert!(!log.should_log(newcomer, t0), "full within the minute");
        // A minute later the old entries make room again.
        assert!(log.should_log(newcomer, t0 + LOG_EVERY));
        assert!(log.last.lock().unwrap().len() <= MAX_SOURCES);
    }
}
