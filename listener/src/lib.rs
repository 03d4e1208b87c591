//! The one way every listener of kube-mtls accepts connections: the
//! sidecar's (inbound, direct `--listen`, outbound, admin) and the webhook's.
//!
//! `accept(2)` fails for reasons that pass: the process or the host is out of
//! file descriptors (EMFILE, ENFILE) or of socket memory (ENOBUFS, ENOMEM).
//! The listening socket stays readable through all of them, so a loop that
//! retries at once spins a core without accepting anything, and starves the
//! connections whose end would free the descriptors. [`Listener::accept`]
//! waits instead, on the schedule of [`Backoff`] (5 ms, doubling up to 1 s, for
//! as long as the failures last), logs the first failure of a streak and the
//! recovery, and counts every failure in the counter it was given (the
//! sidecar's `kube_mtls_sidecar_accept_errors_total{listener}`, the webhook's
//! `kube_mtls_webhook_accept_errors_total`). It never gives up: once
//! descriptors are free again, the listener accepts again.
//!
//! A connection that was reset while still queued (ECONNABORTED) is that one
//! connection's failure, not the listener's: the next one is taken at once.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The waits between failed accepts: [`Backoff::FIRST`], doubling each time,
/// never more than [`Backoff::MAX`]. A new streak starts from the beginning.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The wait after the next failure.
    next: Duration,
}

impl Backoff {
    /// The wait after the first failure of a streak.
    pub const FIRST: Duration = Duration::from_millis(5);
    /// The longest wait: a listener retries at least once a second.
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The wait after one more failure in a row.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A bound listening socket and what its failures are reported as.
pub struct Listener {
    inner: TcpListener,
    /// Names the listener in logs and in the `listener` label of the metric.
    name: &'static str,
    /// Counts failed accepts (the owner's `accept_errors` metric).
    errors: Counter,
}

/// True for an error that belongs to one queued connection, not the listener.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

impl Listener {
    /// `name` names the listener in logs; `errors` counts its failed accepts.
    pub fn new(inner: TcpListener, name: &'static str, errors: Counter) -> Self {
        Listener {
            inner,
            name,
            errors,
        }
    }

    /// The next connection, waiting out failures of the listener (see the
    /// module documentation). Cancel-safe: dropping the future loses nothing.
    pub async fn accept(&self) -> (TcpStream, SocketAddr) {
        let mut backoff = Backoff::new();
        let mut failures: u64 = 0;
        loop {
            let e = match self.inner.accept().await {
                Ok(conn) => {
                    if failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failures,
                            "accepting connections again"
                        );
                    }
                    return conn;
                }
                Err(e) if per_connection(&e) => {
                    tracing::debug!(listener = self.name, error = %e, "a queued connection went away before it was accepted");
                    continue;
                }
                Err(e) => e,
            };
            self.errors.inc();
            failures += 1;
            let delay = backoff.next_delay();
            if failures == 1 {
                tracing::warn!(listener = self.name, error = %e, "accept failed; retrying with back-off until it succeeds");
            } else {
                tracing::debug!(listener = self.name, error = %e, ?delay, "accept failed again");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Accepts until `stop` is cancelled, handing each connection to `on_conn`.
    pub async fn run(
        self,
        stop: CancellationToken,
        mut on_conn: impl FnMut(TcpStream, SocketAddr),
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                conn = self.accept() => conn,
            };
            on_conn(stream, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_starts_over_per_streak() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..11).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // A streak of failures over a minute costs at most ~70 attempts, not
        // the millions of a loop that retries at once.
        let mut b = Backoff::new();
        let mut spent = Duration::ZERO;
        let mut attempts = 0;
        while spent < Duration::from_secs(60) {
            spent += b.next_delay();
            attempts += 1;
        }
        assert!(attempts <= 70, "{attempts}");
        assert_eq!(Backoff::new().next_delay(), Backoff::FIRST);
    }

    #[test]
    fn only_a_queued_connections_own_failure_is_retried_at_once() {
        assert!(per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!per_connection(&emfile));
        assert!(!per_connection(&io::Error::from_raw_os_error(libc::ENFILE)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_that_cannot_accept_backs_off_and_stops_on_shutdown() {
        // A real listener whose socket is shut for reading fails every accept
        // with EINVAL at once, the way a descriptor shortage does: the loop
        // must wait between attempts instead of spinning.
        let errors = Counter::default();
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let std = tcp.into_std().expect("std listener");
        socket2::SockRef::from(&std)
            .shutdown(std::net::Shutdown::Read)
            .expect("shutdown");
        let listener = Listener::new(
            TcpListener::from_std(std).expect("tokio listener"),
            "inbound",
            errors.clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(listener.run(stop.clone(), |_, _| {}));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        task.await.expect("the loop ends on shutdown");
        let failed = errors.get();
        // 5+10+...+640 ms is 1.275 s, then one a second: about 17 in 10 s.
        assert!(
            (10..=20).contains(&failed),
            "{failed} failed accepts in 10 s"
        );
    }
}
