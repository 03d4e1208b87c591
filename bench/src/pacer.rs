//! Due times for the fixed-rate scenario, released by a thread of their own.
//!
//! The runtime's timer ticks in milliseconds, so a request scheduled with
//! `sleep_until` leaves up to a millisecond late, and since latency is
//! measured from when a request was due, every contestant's tail would show
//! the tick rather than the proxy. The pacer sleeps until shortly before each
//! due time and spins the rest, then hands the due time to the connection's
//! task; how late it released each request is measured too, so a report
//! shows whether the load generator kept its schedule.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedSender;

/// How long before a due time the pacer stops sleeping and spins: more than
/// the kernel's default timer slack (50 µs) plus a wake-up.
const SPIN: Duration = Duration::from_micros(80);

/// Releases due times at `rate` per second from `start` until `deadline`,
/// round-robin over `connections` (each gets every n-th due time). Returns
/// how late each was released, in microseconds.
pub fn pace(
    connections: Vec<UnboundedSender<Instant>>,
    rate: f64,
    start: Instant,
    deadline: Instant,
) -> Histogram<u64> {
    let mut late =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid");
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut due = start;
    let mut n = 0usize;
    while due < deadline && !connections.is_empty() {
        let now = Instant::now();
        if due > now + SPIN {
            std::thread::sleep(due - now - SPIN);
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        late.saturating_record(due.elapsed().as_micros().max(1) as u64);
        // A connection whose task ended takes no more requests; the others go on.
        let _ = connections[n % connections.len()].send(due);
        n += 1;
        due = start + period.mul_f64(n as f64);
    }
    late
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_every_due_time_in_order_round_robin() {
        let (a, mut ra) = tokio::sync::mpsc::unbounded_channel();
        let (b, mut rb) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let late = pace(vec![a, b], 1000.0, start, start + Duration::from_millis(20));
        let mut got = [Vec::new(), Vec::new()];
        while let Ok(d) = ra.try_recv() {
            got[0].push(d);
        }
        while let Ok(d) = rb.try_recv() {
            got[1].push(d);
        }
        assert_eq!(got[0].len() + got[1].len(), 20, "one per millisecond");
        assert_eq!(got[0].len(), 10);
        assert_eq!(got[1][0] - got[0][0], Duration::from_millis(1));
        assert_eq!(got[0][1] - got[0][0], Duration::from_millis(2));
        assert_eq!(late.len(), 20);
        // Never released early.
        assert!(late.min() >= 1);
    }
}
