//! hyper's timer for one HTTP/1.1 client connection, without a timer-wheel
//! update per request.
//!
//! hyper starts a fresh header-read timeout (`--header-read-timeout`) for
//! every request on a keep-alive connection and drops it once the head has
//! been read. With tokio's timer that is an allocation, an insertion into the
//! runtime's timer wheel and a removal for every request, and an insertion
//! that lands before the runtime's next planned wake-up also writes to its
//! eventfd (a system call, and one more trip through `epoll_wait`).
//!
//! [`ConnClock`] keeps one tokio timer per connection instead. Each deadline
//! hyper asks for is a small [`Due`] that shares it: a deadline later than the
//! one the timer is set for costs nothing; when the timer fires early for
//! the deadline still waited on, it is set again for that one. The timer
//! only moves earlier when a deadline is earlier, so a deadline is never
//! missed, and a keep-alive connection re-arms its timer about once per
//! timeout rather than per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// How far away the shared timer starts: later than any deadline hyper sets.
const UNSET: Duration = Duration::from_secs(24 * 3600);

/// One connection's timer, handed to hyper's HTTP/1.1 server.
#[derive(Clone)]
pub struct ConnClock(Arc<Mutex<Pin<Box<Sleep>>>>);

impl ConnClock {
    pub fn new() -> Self {
        let far = tokio::time::Instant::now() + UNSET;
        ConnClock(Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(
            far,
        )))))
    }
}

impl Default for ConnClock {
    fn default() -> Self {
        Self::new()
    }
}

impl hyper::rt::Timer for ConnClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which is the system's monotonic clock (or, in tests, a
    /// paused one that the deadlines then follow).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Due {
            deadline: tokio::time::Instant::from_std(deadline),
            timer: self.0.clone(),
        })
    }
}

/// A deadline of hyper's, served by its connection's shared timer.
pub struct Due {
    deadline: tokio::time::Instant,
    timer: Arc<Mutex<Pin<Box<Sleep>>>>,
}

impl Future for Due {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if tokio::time::Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        if timer.deadline() > self.deadline {
            timer.as_mut().reset(self.deadline);
        }
        // Registers this task to be woken when the timer fires; fired already
        // (for an earlier deadline nobody waits on now), it is set for this one.
        if timer.as_mut().poll(cx).is_ready() {
            timer.as_mut().reset(self.deadline);
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Due {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use tokio::time::Instant as TokioInstant;

    #[tokio::test(start_paused = true)]
    async fn each_deadline_is_kept_whatever_came_before() {
        let clock = ConnClock::new();
        let start = TokioInstant::now();
        // A deadline waited on, then dropped before it came (a head arrived in time).
        let early = clock.sleep(Duration::from_secs(30));
        tokio::select! {
            _ = early => panic!("fired early"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // A later one shares the timer still set for the first: it fires at its own time.
        clock.sleep(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(31));
        // An earlier deadline moves the timer earlier.
        let before = TokioInstant::now();
        clock.sleep(Duration::from_millis(5)).await;
        assert_eq!(before.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_is_ready_and_one_ahead_is_not() {
        let clock = ConnClock::new();
        let past = clock.now();
        tokio::time::advance(Duration::from_millis(10)).await;
        clock.sleep_until(past).await;
        let ahead = clock.sleep(Duration::from_secs(1));
        let waited = tokio::time::timeout(Duration::from_millis(999), ahead).await;
        assert!(waited.is_err(), "a deadline 1 s ahead came within 999 ms");
    }
}
