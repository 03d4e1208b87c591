use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube_mtls_bench::client::{Target, Tls};
use kube_mtls_bench::load::{self, RequestSpec};
use kube_mtls_bench::{certs, tcp, upstream};

/// Load generator and upstream for the kube-mtls benchmark (bench/run.py).
#[derive(Parser)]
#[command(name = "kube-mtls-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a CA, a server and a client certificate under a directory.
    GenCerts { dir: PathBuf },
    /// Serve the benchmark's upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
        /// Also serve the L4 scenarios' TCP echo and sink here.
        #[arg(long)]
        tcp_listen: Option<SocketAddr>,
    },
    /// Put load on a target and print one JSON report on stdout.
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Keep-alive HTTP/1.1 connections, closed loop.
    Keepalive,
    /// A fixed request rate (--rate) over keep-alive connections.
    Rate,
    /// A new TLS connection per request.
    Handshake,
    /// HTTP/2 with --streams requests in flight per connection.
    H2,
    /// Raw TCP: 64-byte round trips over keep-alive connections, closed loop.
    Tcp,
    /// Raw TCP: a new connection per 64-byte round trip.
    TcpHandshake,
    /// Raw TCP: --bytes on one connection; the rate is MB/s.
    TcpBulk,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Address of the proxy (or upstream) under test.
    #[arg(long)]
    target: SocketAddr,
    /// Trust bundle for the server certificate; without it, plaintext.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate to present (needs --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Connections (keepalive, rate, h2) or concurrent connection loops (handshake).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests in flight per HTTP/2 connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Requests per second, for the rate scenario.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value = "/")]
    path: String,
    /// A file whose content is POSTed as the request body (GET without it).
    #[arg(long)]
    body: Option<PathBuf>,
    #[arg(long)]
    content_type: Option<String>,
    /// Bytes of the tcp-bulk transfer.
    #[arg(long, default_value_t = 100_000_000)]
    bytes: u64,
    /// keepalive, handshake, h2 and tcp: stop after this many requests in all
    /// (instead of --seconds), for counting instructions per request.
    #[arg(long)]
    requests: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::GenCerts { dir } => certs::write(&dir)
            .with_context(|| format!("cannot write certificates under {}", dir.display())),
        Command::Upstream { listen, tcp_listen } => runtime.block_on(async move {
            if let Some(tcp) = tcp_listen {
                let tcp = upstream::serve_tcp(tcp);
                tokio::spawn(async move {
                    if let Err(e) = tcp.await {
                        eprintln!("TCP upstream: {e}");
                        std::process::exit(1);
                    }
                });
            }
            upstream::serve(listen)
                .await
                .with_context(|| format!("upstream on {listen}"))
        }),
        Command::Run(args) => {
            let report = runtime.block_on(run(*args))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<load::Report> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number"
    );
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds.is_finite(),
        "--seconds must be a positive number"
    );
    let alpn: &[&str] = match args.scenario {
        Scenario::H2 => &["h2"],
        Scenario::Tcp | Scenario::TcpHandshake | Scenario::TcpBulk => &[],
        _ => &["http/1.1"],
    };
    let tls = match &args.ca {
        Some(ca) => Some(Tls::from_files(
            ca,
            args.cert.as_deref().zip(args.key.as_deref()),
            &args.server_name,
            alpn,
        )?),
        None => None,
    };
    let target = Target {
        addr: args.target,
        tls,
    };
    let (method, body) = match &args.body {
        Some(path) => (
            http::Method::POST,
            Bytes::from(
                std::fs::read(path)
                    .with_context(|| format!("--body: cannot read {}", path.display()))?,
            ),
        ),
        None => (http::Method::GET, Bytes::new()),
    };
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let spec = RequestSpec::new(
        method,
        &args.path,
        &args.server_name,
        args.content_type.as_deref(),
        body,
        scheme,
    )
    .context("--path, --server-name and --content-type must form a valid HTTP request")?;
    let duration = Duration::from_secs_f64(args.seconds);
    let budget = match args.requests {
        Some(n) => load::Budget::Requests(n),
        None => load::Budget::Time(duration),
    };
    let report = match args.scenario {
        Scenario::Keepalive => load::keepalive(&target, &spec, args.connections, budget).await,
        Scenario::Rate => {
            load::fixed_rate(&target, &spec, args.connections, args.rate, duration).await
        }
        Scenario::Handshake => load::handshakes(&target, &spec, args.connections, budget).await,
        Scenario::H2 => load::http2(&target, &spec, args.connections, args.streams, budget).await,
        Scenario::Tcp => tcp::round_trips(&target, args.connections, budget).await,
        Scenario::TcpHandshake => tcp::handshakes(&target, args.connections, duration).await,
        Scenario::TcpBulk => tcp::bulk(&target, args.bytes).await,
    }
    .with_context(|| format!("cannot reach {}", args.target))?;
    Ok(report)
}
