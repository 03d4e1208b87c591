//! Deadlines for the waits of a test.
//!
//! A test that waits without one (a socket read, a TLS handshake, an HTTP
//! reply, a child process) hangs until CI gives up on the whole run when what
//! it waits for never comes. With one it fails at once, naming what it waited
//! for. [`within`] bounds an async wait; [`crate::process::wait_until`] polls
//! a condition; [`crate::process::output_within`] runs a child process.

use std::fmt::Display;
use std::future::IntoFuture;
use std::time::Duration;

/// How long any single step of a test may take: far more than a step needs on
/// a loaded two-core machine (milliseconds to a few seconds), far less than a
/// CI run's budget.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it has not finished after `limit`;
/// `what` names what was awaited, e.g. "a reply to GET /".
pub async fn within<F: IntoFuture>(limit: Duration, what: impl Display, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_finishes_in_time_gives_its_output() {
        assert_eq!(within(PATIENCE, "a ready value", async { 7 }).await, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the never-ending future")]
    async fn a_wait_past_its_deadline_fails_naming_what_it_waited_for() {
        within(
            Duration::from_millis(10),
            "the never-ending future",
            std::future::pending::<()>(),
        )
        .await;
    }
}
