//! The `kube-mtls-webhook` binary: `serve` (the admission webhook and the
//! Certificate controller), `inject` (offline injection for GitOps) and `crd`.
//! Flags and their environment variables live here; the policy is in the library.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use kube_mtls_webhook::admission::Admission;
use kube_mtls_webhook::cli::{Cli, Command, ServeArgs, has_native_sidecars};
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::metrics::Metrics;
use kube_mtls_webhook::profile::{MtlsProfile, crd_yaml};
use kube_mtls_webhook::{controller, events, offline, server};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kube_mtls_telemetry::init(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Inject(args) => {
            let native = args.injection.native_sidecar.explicit().unwrap_or(true);
            let defaults = args.injection.resolution_defaults(native)?;
            let mut input = String::new();
            if args.file == "-" {
                std::io::stdin()
                    .read_to_string(&mut input)
                    .context("cannot read standard input")?;
            } else {
                input = std::fs::read_to_string(&args.file)
                    .with_context(|| format!("-f: cannot read {}", args.file))?;
            }
            let options = offline::Options {
                certificates: !args.no_certificates,
                namespace: args.namespace.clone(),
            };
            let (out, warnings) = offline::inject_yaml(&input, &defaults, &options)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{out}");
            Ok(())
        }
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(serve(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cert = server::ReloadingCert::open(&args.tls_dir)?;
    let tls = server::tls_config(cert.clone())?;
    tokio::spawn(cert.watch());
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(server::Health {
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
    });
    let explicit = args.injection.native_sidecar.explicit();

    let (view, client, native) = if args.standalone {
        (ClusterView::empty(), None, explicit.unwrap_or(true))
    } else {
        let client = Client::try_default()
            .await
            .context("cannot reach the Kubernetes API (run in a cluster, or pass --standalone)")?;
        let native = match explicit {
            Some(n) => n,
            None => {
                let info = client
                    .apiserver_version()
                    .await
                    .context("cannot read the API server version")?;
                let native = has_native_sidecars(&info);
                tracing::info!(version = %info.git_version, native, "sidecar mode chosen from the API server version");
                native
            }
        };
        let (profiles, profile_writer) = reflector::store::<MtlsProfile>();
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let profile_stream = reflector(
            profile_writer,
            watcher(
                Api::<MtlsProfile>::all(client.clone()),
                watcher::Config::default(),
            ),
        );
        let ns_stream = reflector(
            ns_writer,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            ),
        );
        tokio::spawn(profile_stream.default_backoff().for_each(|_| async {}));
        tokio::spawn(ns_stream.default_backoff().for_each(|_| async {}));
        let ready = health.clone();
        let (p, n) = (profiles.clone(), namespaces.clone());
        tokio::spawn(async move {
            if p.wait_until_ready().await.is_ok() && n.wait_until_ready().await.is_ok() {
                ready.ready.store(true, Ordering::Relaxed);
                tracing::info!("profile and namespace caches synced");
            }
        });
        tokio::spawn(controller::run(controller::Context {
            client: client.clone(),
            duration: args.injection.cert_duration.clone(),
            renew_before: args.injection.cert_renew_before.clone(),
            metrics: metrics.clone(),
        }));
        (
            ClusterView::Live {
                profiles,
                namespaces,
            },
            Some(client),
            native,
        )
    };
    if args.standalone {
        health.ready.store(true, Ordering::Relaxed);
    }
    let events = client
        .clone()
        .map(|c| events::Recorder::new(c, std::env::var("HOSTNAME").ok()));
    let accept_errors = metrics.accept_errors.clone();
    let admission = Arc::new(Admission {
        defaults: args.injection.resolution_defaults(native)?,
        own_namespace: args.namespace.clone(),
        view,
        client,
        metrics,
        events,
    });

    let https = server::bind(args.port).await?;
    let plain = server::bind(args.metrics_port).await?;
    tracing::info!(
        port = args.port,
        metrics_port = args.metrics_port,
        "kube-mtls-webhook serving"
    );
    let health_app = server::health_router(health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(plain, health_app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    let serving = server::serve_https(https, tls, server::router(admission), accept_errors);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serving => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
