//! Stream wrappers for client connections: an idle timeout that spares
//! requests in progress, and a lingering close that lets a final response
//! reach the client.
//!
//! Idle means no request in progress and no bytes moving: a request waiting
//! for the app, or whose response is still being sent, keeps its connection
//! open however quiet the wire is (`--upstream-timeout` bounds the wait for
//! the app). Rather than re-arming a timer on every read and write (a timer-wheel update
//! per packet), each successful transfer just records the time. The timer is
//! only looked at when the stream would otherwise wait: if it fired early, it is
//! pushed out to `last activity + timeout`; if it fired late enough, the stream
//! fails with `TimedOut` and the connection closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in progress on one connection; while any is, the connection is not idle.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Marks a request in progress until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    fn busy(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// One request in progress; see [`InFlight::enter`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    in_flight: InFlight,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration, in_flight: InFlight) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            in_flight,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Called when the inner stream is pending: `Ready` means the stream has been idle too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.in_flight.busy() {
                // A request in progress counts as activity.
                self.last = Instant::now();
            }
            let deadline = self.last + self.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle timeout",
                ));
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How much a lingering close reads (and discards) before it gives up.
const LINGER_BYTES: usize = 1 << 20;
/// How long a lingering close waits for the client to close its side.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A lingering close (RFC 9112 §9.6): when the server ends a connection whose
/// client may still be sending (e.g. after refusing an oversized request with
/// 431), closing at once would leave unread data in the socket, and the kernel
/// would answer it with a reset that can destroy the response before the
/// client reads it. Instead, shutdown sends close_notify and FIN, then reads
/// and discards until the client closes too, at most [`LINGER_BYTES`] within
/// [`LINGER_TIME`].
pub struct Linger<T> {
    inner: T,
    /// The client has closed its side: nothing is left to drain.
    read_eof: bool,
    draining: Option<Drain>,
}

struct Drain {
    deadline: Pin<Box<Sleep>>,
    read: usize,
}

impl<T> Linger<T> {
    pub fn new(inner: T) -> Self {
        Linger {
            inner,
            read_eof: false,
            draining: None,
        }
    }
}

impl<T: AsyncRead + Unpin> Linger<T> {
    /// Discards what the client still sends; `Ready` once it closes or a bound is hit.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let drain = self.draining.get_or_insert_with(|| Drain {
            deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
            read: 0,
        });
        let mut scratch = [0u8; 4096];
        while !self.read_eof && drain.read < LINGER_BYTES {
            if drain.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    drain.read += buf.filled().len();
                }
                Poll::Ready(_) => self.read_eof = true,
            }
        }
        Poll::Ready(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Linger<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(r) = &res
            && (r.is_err() || (had_room && buf.filled().len() == before))
        {
            self.read_eof = true;
        }
        res
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Half-closes, then drains the client's side before reporting done.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.draining.is_none() {
            let shut = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            if shut.is_err() {
                // The connection is already gone: nothing to drain.
                return Poll::Ready(shut);
            }
        }
        self.poll_drain(cx).map(Ok)
    }
}
