//! Stream wrappers for client connections: an idle timeout that spares
//! requests in progress, a lingering close that lets a final response reach
//! the client, and a read-ahead buffer under TLS for byte streams.
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

/// The `AsyncWrite` methods of a wrapper that changes nothing about writing:
/// each goes straight to its `inner` stream.
macro_rules! writes_through_to_inner {
    () => {
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
    };
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
    writes_through_to_inner!();

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

/// How much [`ReadAhead`] asks the socket for at once: two TLS records of
/// the largest size.
pub const READ_AHEAD: usize = 32 * 1024;

/// Reads the socket in [`READ_AHEAD`] chunks under a TLS stream.
///
/// rustls reads its records at most 4 KiB at a time, so a 16 KiB record costs
/// four `read` calls, and a bulk transfer through an L4 port spends more on
/// system calls than on decryption. This asks the socket for up to 32 KiB and
/// hands rustls its 4 KiB from memory. The buffer is allocated on the first
/// read and kept for the connection's life, so it is used only where streams
/// are long and large (`--tcp-ports`); elsewhere ([`ReadAhead::direct`]) reads
/// pass straight through.
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read from the socket; `start..end` not yet handed on.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    enabled: bool,
}

impl<T> ReadAhead<T> {
    /// Reads ahead of the consumer.
    pub fn buffered(inner: T) -> Self {
        Self::new(inner, true)
    }

    /// Passes every read straight through.
    pub fn direct(inner: T) -> Self {
        Self::new(inner, false)
    }

    fn new(inner: T, enabled: bool) -> Self {
        ReadAhead {
            inner,
            buf: None,
            start: 0,
            end: 0,
            enabled,
        }
    }

    /// Hands on buffered bytes, if there are any.
    fn take_buffered(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let Some(buf) = &self.buf else {
            return false;
        };
        if self.start == self.end {
            return false;
        }
        let n = (self.end - self.start).min(out.remaining());
        out.put_slice(&buf[self.start..self.start + n]);
        self.start += n;
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.take_buffered(out) {
            return Poll::Ready(Ok(()));
        }
        if !this.enabled || out.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let buf = this
            .buf
            .get_or_insert_with(|| vec![0; READ_AHEAD].into_boxed_slice());
        let mut fill = ReadBuf::new(buf);
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
        this.start = 0;
        this.end = fill.filled().len();
        // Nothing read is the end of the stream: `out` stays empty too.
        this.take_buffered(out);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    writes_through_to_inner!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer writes 100 KiB in pieces; a reader asking for 4 KiB at a time
    /// through [`ReadAhead`] gets every byte in order, then the end.
    #[tokio::test]
    async fn read_ahead_hands_on_every_byte_in_order() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for piece in sent.chunks(7_000) {
                    peer.write_all(piece).await.unwrap();
                }
            })
        };
        let mut reader = ReadAhead::buffered(ours);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes differ");
        assert!(reader.buf.is_some(), "small reads went through the buffer");
    }

    #[tokio::test]
    async fn direct_reads_never_allocate_a_buffer() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        peer.write_all(b"hello").await.unwrap();
        drop(peer);
        let mut reader = ReadAhead::direct(ours);
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        assert!(reader.buf.is_none());
    }
}
