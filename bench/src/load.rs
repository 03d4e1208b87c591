//! The four load shapes of the benchmark, each producing a [`Report`].
//!
//! Latency is recorded per task in an HDR histogram (microseconds) and the
//! histograms are merged at the end, so the hot loop never shares anything.
//! At a fixed rate, latency is measured from when a request was *due*, not
//! from when it was sent: a proxy that stalls cannot hide the requests that
//! queued up behind the stall (no coordinated omission).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::client::{ClientError, Target};

/// The request every scenario sends, in its three forms. Built and checked
/// once, then cloned per request: the hot loop copies a prepared head instead
/// of parsing the URI and headers again.
#[derive(Clone)]
pub struct RequestSpec {
    /// HTTP/1.1 on a keep-alive connection.
    keepalive: Request<Full<Bytes>>,
    /// HTTP/1.1 with `Connection: close`, for one request per connection.
    close: Request<Full<Bytes>>,
    /// HTTP/2: authority in the URI, no Host header.
    h2: Request<Full<Bytes>>,
}

impl RequestSpec {
    /// `scheme` is `https` or `http`, for the HTTP/2 form's URI. Fails when
    /// the path, authority or content type cannot form a request.
    pub fn new(
        method: Method,
        path: &str,
        authority: &str,
        content_type: Option<&str>,
        body: Bytes,
        scheme: &str,
    ) -> Result<RequestSpec, http::Error> {
        let head = |uri: String| {
            let req = Request::builder().method(method.clone()).uri(uri);
            match content_type {
                Some(ct) => req.header(http::header::CONTENT_TYPE, ct),
                None => req,
            }
        };
        let body = Full::new(body);
        Ok(RequestSpec {
            keepalive: head(path.to_owned())
                .header(http::header::HOST, authority)
                .body(body.clone())?,
            close: head(path.to_owned())
                .header(http::header::HOST, authority)
                .header(http::header::CONNECTION, "close")
                .body(body.clone())?,
            h2: head(format!("{scheme}://{authority}{path}")).body(body)?,
        })
    }
}

/// One scenario's result, printed as a JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Completed requests (or connections, for `handshake`) per second.
    pub rate: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Fixed rate only: how late the pacer released requests (its p99, µs);
    /// well under the proxies' latencies means the schedule was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacing_p99_us: Option<u64>,
    /// The first error seen, to make a failed run explain itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// What one task measured.
pub(crate) struct Tally {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }

    pub(crate) fn ok(&mut self, since: Instant) {
        self.requests += 1;
        let us = since.elapsed().as_micros().max(1) as u64;
        self.latency.saturating_record(us);
    }

    pub(crate) fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub(crate) fn merge(tallies: Vec<Tally>, scenario: &'static str, seconds: f64) -> Report {
        let mut all = Tally::new();
        for t in tallies {
            let _ = all.latency.add(&t.latency);
            all.requests += t.requests;
            all.errors += t.errors;
            if all.first_error.is_none() {
                all.first_error = t.first_error;
            }
        }
        Report {
            scenario,
            requests: all.requests,
            errors: all.errors,
            seconds,
            rate: all.requests as f64 / seconds,
            p50_us: all.latency.value_at_quantile(0.50),
            p90_us: all.latency.value_at_quantile(0.90),
            p99_us: all.latency.value_at_quantile(0.99),
            p999_us: all.latency.value_at_quantile(0.999),
            max_us: all.latency.max(),
            pacing_p99_us: None,
            first_error: all.first_error,
        }
    }
}

/// Sends one HTTP/1.1 request and reads the whole response; anything but 200
/// counts as an error.
type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn exchange(sender: &mut Http1, req: Request<Full<Bytes>>) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    read_ok(resp).await
}

/// Reads a whole response; anything but 200 is an error.
async fn read_ok(resp: http::Response<hyper::body::Incoming>) -> Result<(), String> {
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Opens `n` HTTP/1.1 connections before the clock starts.
async fn open_http1(target: &Target, n: usize) -> Result<Vec<Http1>, ClientError> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(target.http1().await?);
    }
    Ok(senders)
}

/// One request on a keep-alive connection, recorded as taking from `since`.
/// A failed request is counted and the connection replaced; `false` means
/// no new connection could be opened and the task should stop.
async fn keepalive_request(
    tally: &mut Tally,
    sender: &mut Http1,
    target: &Target,
    req: Request<Full<Bytes>>,
    since: Instant,
) -> bool {
    match exchange(sender, req).await {
        Ok(()) => tally.ok(since),
        Err(e) => {
            tally.error(e);
            match target.http1().await {
                Ok(s) => *sender = s,
                Err(e) => {
                    tally.error(e);
                    return false;
                }
            }
        }
    }
    true
}

pub(crate) async fn join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Vec<Tally> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(tally) => out.push(tally),
            Err(e) => {
                let mut tally = Tally::new();
                tally.error(format!("load task failed: {e}"));
                out.push(tally);
            }
        }
    }
    out
}

/// How much a closed-loop scenario sends.
#[derive(Clone, Copy)]
pub enum Budget {
    /// As many requests as fit in this time.
    Time(Duration),
    /// This many requests in all (each connection sends its share), for a
    /// fixed amount of work: instructions per request are counted so.
    Requests(u64),
}

impl Budget {
    /// Task `i` of `tasks`: until when it runs and how many requests it may
    /// send (its share of a request budget).
    pub(crate) fn share(self, start: Instant, i: usize, tasks: usize) -> (Instant, u64) {
        match self {
            Budget::Time(d) => (start + d, u64::MAX),
            Budget::Requests(n) => {
                let (i, tasks) = (i as u64, tasks as u64);
                let mine = n / tasks + u64::from(i < n % tasks);
                (start + Duration::from_secs(86_400), mine)
            }
        }
    }
}

/// `connections` keep-alive HTTP/1.1 connections, each sending its next
/// request as soon as the previous answer arrived. Connections are opened
/// before the clock starts.
pub async fn keepalive(
    target: &Target,
    spec: &RequestSpec,
    connections: usize,
    budget: Budget,
) -> Result<Report, ClientError> {
    let senders = open_http1(target, connections).await?;
    let start = Instant::now();
    let tasks = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut sender)| {
            let (target, spec) = (target.clone(), spec.clone());
            let (deadline, mut left) = budget.share(start, i, connections);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while left > 0 && Instant::now() < deadline {
                    left -= 1;
                    let (req, t) = (spec.keepalive.clone(), Instant::now());
                    if !keepalive_request(&mut tally, &mut sender, &target, req, t).await {
                        break;
                    }
                }
                tally
            })
        })
        .collect();
    let tallies = join(tasks).await;
    Ok(Tally::merge(
        tallies,
        "keepalive",
        start.elapsed().as_secs_f64(),
    ))
}

/// A fixed total rate spread over `connections` keep-alive connections, in
/// turn. The pacer thread ([`crate::pacer`]) releases each request when it
/// is due; a connection still busy with its previous request queues the
/// next, whose latency still counts from when it was due.
pub async fn fixed_rate(
    target: &Target,
    spec: &RequestSpec,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> Result<Report, ClientError> {
    let senders = open_http1(target, connections).await?;
    let mut schedules = Vec::with_capacity(connections);
    let tasks = senders
        .into_iter()
        .map(|mut sender| {
            let (target, spec) = (target.clone(), spec.clone());
            let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            schedules.push(due_tx);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while let Some(due) = due_rx.recv().await {
                    let req = spec.keepalive.clone();
                    if !keepalive_request(&mut tally, &mut sender, &target, req, due).await {
                        break;
                    }
                }
                tally
            })
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(1);
    let pacer =
        std::thread::spawn(move || crate::pacer::pace(schedules, rate, start, start + duration));
    let tallies = join(tasks).await;
    let mut report = Tally::merge(tallies, "rate", duration.as_secs_f64());
    report.pacing_p99_us = pacer.join().ok().map(|h| h.value_at_quantile(0.99));
    Ok(report)
}

/// `concurrency` tasks that each run `once` again and again within
/// `budget`, timing every run: the shape of the scenarios in which every
/// request brings its own connection.
pub(crate) async fn closed_loops<F, Fut>(
    concurrency: usize,
    budget: Budget,
    scenario: &'static str,
    once: F,
) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now();
    let tasks = (0..concurrency)
        .map(|i| {
            let once = once.clone();
            let (deadline, mut left) = budget.share(start, i, concurrency);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while left > 0 && Instant::now() < deadline {
                    left -= 1;
                    let t = Instant::now();
                    match once().await {
                        Ok(()) => tally.ok(t),
                        Err(e) => tally.error(e),
                    }
                }
                tally
            })
        })
        .collect();
    let tallies = join(tasks).await;
    Tally::merge(tallies, scenario, start.elapsed().as_secs_f64())
}

/// `concurrency` loops that each open a new connection (a full TLS handshake
/// with client certificate: resumption is off), send one request with
/// `Connection: close`, read the answer and hang up. The rate is connections
/// per second; latency covers connect, handshake and the request.
pub async fn handshakes(
    target: &Target,
    spec: &RequestSpec,
    concurrency: usize,
    budget: Budget,
) -> Result<Report, ClientError> {
    let (target, spec) = (target.clone(), spec.clone());
    let once = move || {
        let (target, req) = (target.clone(), spec.close.clone());
        async move {
            let mut sender = target.http1().await.map_err(|e| e.to_string())?;
            exchange(&mut sender, req).await
        }
    };
    Ok(closed_loops(concurrency, budget, "handshake", once).await)
}

/// `connections` HTTP/2 connections with `streams` requests in flight on
/// each at all times.
pub async fn http2(
    target: &Target,
    spec: &RequestSpec,
    connections: usize,
    streams: usize,
    budget: Budget,
) -> Result<Report, ClientError> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(target.http2().await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections * streams);
    for sender in &senders {
        for _ in 0..streams {
            let (mut sender, spec) = (sender.clone(), spec.clone());
            let (deadline, mut left) = budget.share(start, tasks.len(), connections * streams);
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                while left > 0 && Instant::now() < deadline {
                    left -= 1;
                    let t = Instant::now();
                    let result = async {
                        sender.ready().await.map_err(|e| e.to_string())?;
                        let resp = sender
                            .send_request(spec.h2.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        read_ok(resp).await
                    }
                    .await;
                    match result {
                        Ok(()) => tally.ok(t),
                        Err(e) => {
                            // An HTTP/2 connection that failed stays failed:
                            // stop this stream rather than spin on errors.
                            tally.error(e);
                            break;
                        }
                    }
                }
                tally
            }));
        }
    }
    let tallies = join(tasks).await;
    Ok(Tally::merge(tallies, "h2", start.elapsed().as_secs_f64()))
}
