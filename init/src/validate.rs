//! CNI mode's check, run unprivileged as the pod's first init container: are
//! the pod's rules in place? The outbound chain redirects a connection to
//! [`VALIDATION_PROBE_IP`] on the admin port to the pod's own admin port, so a
//! connection made there arrives at a listener of ours on loopback when, and
//! only when, the rules are installed. Nothing else in the pod runs yet (the
//! sidecar starts after this container), so the admin port is free.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kube_mtls_contract::names::VALIDATION_PROBE_IP;

/// Why the check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "the pod's traffic is not redirected through the sidecar: a connection to {probe} was not redirected to 127.0.0.1:{port} within {waited:?} ({detail}). The kube-mtls CNI plugin did not set up this pod's network: check that the kube-mtls-cni DaemonSet is ready on this node (kubectl mtls check); its repair controller fixes or deletes pods like this one"
    )]
    NotRedirected {
        probe: SocketAddr,
        port: u16,
        waited: Duration,
        detail: String,
    },
    #[error(
        "cannot listen on 127.0.0.1:{port} (--admin-port, KUBE_MTLS_ADMIN_PORT) to check the redirection: {source}. Fix: nothing in the pod may use the sidecar's admin port"
    )]
    Listen { port: u16, source: std::io::Error },
}

/// Connects to the probe address and checks that the connection, carrying a
/// token of this run, arrives at our own listener within `timeout`.
pub fn validate(admin_port: u16, timeout: Duration) -> Result<(), ValidateError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, admin_port)).map_err(|source| {
        ValidateError::Listen {
            port: admin_port,
            source,
        }
    })?;
    let probe = SocketAddr::from((VALIDATION_PROBE_IP, admin_port));
    let started = Instant::now();
    let not_redirected = |detail: String| ValidateError::NotRedirected {
        probe,
        port: admin_port,
        waited: started.elapsed(),
        detail,
    };
    let token = token();
    let mut out =
        TcpStream::connect_timeout(&probe, timeout).map_err(|e| not_redirected(e.to_string()))?;
    out.write_all(token.as_bytes())
        .map_err(|e| not_redirected(e.to_string()))?;
    let deadline = started + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| not_redirected(e.to_string()))?;
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                if read_token(&mut conn, deadline).as_deref() == Some(token.as_str()) {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(not_redirected(e.to_string())),
        }
        if Instant::now() >= deadline {
            return Err(not_redirected(
                "the connection was accepted elsewhere, not by this check".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads what a peer sent until it matches a token's length or the deadline.
fn read_token(conn: &mut TcpStream, deadline: Instant) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    conn.set_read_timeout(Some(left)).ok()?;
    let mut buf = [0u8; 32];
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    String::from_utf8(buf[..got].to_vec()).ok()
}

/// 32 characters that no other process can guess in time: this process and
/// the clock at nanosecond resolution.
fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:016x}{:016x}", std::process::id(), nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_characters() {
        assert_eq!(token().len(), 32);
    }

    #[test]
    fn a_busy_admin_port_is_named() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let e = validate(port, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ValidateError::Listen { .. }), "{e}");
        assert!(e.to_string().contains("--admin-port"), "{e}");
    }
}
