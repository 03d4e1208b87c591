//! The L4 scenarios: raw TCP through a proxy that terminates mTLS and
//! forwards bytes (the sidecar's `--tcp-ports`, HAProxy `mode tcp`, nginx
//! `stream`), against the TCP upstream ([`crate::upstream::serve_tcp`]).
//!
//! The first byte of a connection tells the upstream what to do:
//! [`ECHO`] echoes everything after it; [`SINK`] reads an 8-byte big-endian
//! length, that many bytes, and answers [`SINK_DONE`], so a bulk transfer is
//! timed until the upstream has every byte, without relying on half-close.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{ClientError, Stream, Target};
use crate::load::{Budget, Report, Tally, closed_loops, join};

pub const ECHO: u8 = b'e';
pub const SINK: u8 = b's';
pub const SINK_DONE: &[u8; 2] = b"ok";
/// The message size of the round-trip scenarios: a small request, like a
/// database query or a cache lookup.
const MESSAGE: usize = 64;
/// Write size of the bulk transfer.
const CHUNK: usize = 64 * 1024;

/// One round trip of [`MESSAGE`] bytes on an echo connection.
async fn round_trip(s: &mut Box<dyn Stream>, buf: &mut [u8; MESSAGE]) -> std::io::Result<()> {
    s.write_all(&[0x5a; MESSAGE]).await?;
    s.read_exact(buf).await?;
    Ok(())
}

async fn open_echo(target: &Target) -> Result<Box<dyn Stream>, ClientError> {
    let mut s = target.open().await?;
    s.write_all(&[ECHO]).await?;
    Ok(s)
}

/// `connections` keep-alive connections, each sending its next message as
/// soon as the previous one came back. The rate is round trips per second.
pub async fn round_trips(
    target: &Target,
    connections: usize,
    budget: Budget,
) -> Result<Report, ClientError> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(open_echo(target).await?);
    }
    let start = Instant::now();
    let tasks = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let (deadline, mut left) = budget.share(start, i, connections);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut buf = [0u8; MESSAGE];
                while left > 0 && Instant::now() < deadline {
                    left -= 1;
                    let t = Instant::now();
                    match round_trip(&mut s, &mut buf).await {
                        Ok(()) => tally.ok(t),
                        Err(e) => {
                            tally.error(e);
                            break;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let tallies = join(tasks).await;
    Ok(Tally::merge(tallies, "tcp", start.elapsed().as_secs_f64()))
}

/// `concurrency` loops that each open a new connection (full handshake),
/// make one round trip and close it. The rate is connections per second.
pub async fn handshakes(
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Result<Report, ClientError> {
    let target = target.clone();
    let once = move || {
        let target = target.clone();
        async move {
            let mut s = open_echo(&target).await.map_err(|e| e.to_string())?;
            round_trip(&mut s, &mut [0u8; MESSAGE])
                .await
                .map_err(|e| e.to_string())
        }
    };
    let budget = Budget::Time(duration);
    Ok(closed_loops(concurrency, budget, "tcp-handshake", once).await)
}

/// Sends `bytes` on one connection and waits for the upstream to confirm
/// it has them all. The rate is megabytes (10^6 bytes) per second.
pub async fn bulk(target: &Target, bytes: u64) -> Result<Report, ClientError> {
    let mut s = target.open().await?;
    let start = Instant::now();
    let mut tally = Tally::new();
    match send_all(&mut s, bytes).await {
        Ok(()) => tally.ok(start),
        Err(e) => tally.error(e),
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut report = Tally::merge(vec![tally], "tcp-bulk", seconds);
    report.rate = if report.errors == 0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    };
    Ok(report)
}

async fn send_all(s: &mut Box<dyn Stream>, bytes: u64) -> std::io::Result<()> {
    s.write_all(&[SINK]).await?;
    s.write_all(&bytes.to_be_bytes()).await?;
    let chunk = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.flush().await?;
    let mut done = [0u8; 2];
    s.read_exact(&mut done).await?;
    if &done != SINK_DONE {
        return Err(std::io::Error::other(format!(
            "the upstream answered {done:?}, not {SINK_DONE:?}"
        )));
    }
    Ok(())
}
