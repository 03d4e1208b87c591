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
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use kube_mtls_webhook::admission::Admission;
use kube_mtls_webhook::cli::{Cli, Command, ServeArgs, has_native_sidecars};
use kube_mtls_webhook::cluster::ClusterView;
use kube_mtls_webhook::metrics::Metrics;
use kube_mtls_webhook::profile::{MtlsProfile, crd_yaml};
use kube_mtls_webhook::resolve::Defaults;
use kube_mtls_webhook::trust::controller::TrustContext;
use kube_mtls_webhook::trust::{TrustShared, TrustSource, TrustView};
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
        connect(&args, &health, &metrics, explicit).await?
    };
    if args.standalone {
        health.ready.store(true, Ordering::Relaxed);
    }
    let events = client
        .clone()
        .map(|c| events::Recorder::new(c, std::env::var("HOSTNAME").ok()));
    let accept_errors = metrics.accept_errors.clone();
    let admission = Arc::new(Admission {
        defaults: resolution_defaults(&args, native)?,
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

/// Starts the trust bundle's controller (`--trust-bundle-source=configmap`).
fn start_trust(
    args: &ServeArgs,
    client: &Client,
    certificates: Store<DynamicObject>,
) -> anyhow::Result<Option<TrustView>> {
    if args.injection.trust_bundle_source != TrustSource::ConfigMap {
        tracing::info!(
            "--trust-bundle-source=secret: injected pods trust their own Secret's ca.crt; a CA rotation cuts traffic until every workload is re-issued"
        );
        return Ok(None);
    }
    let duration = kube_mtls_webhook::trust::controller::go_duration(&args.injection.cert_duration)
        .with_context(|| {
            format!(
                "--cert-duration (KUBE_MTLS_CERT_DURATION): {:?} is not a duration; write e.g. 24h",
                args.injection.cert_duration
            )
        })?;
    let ctx = TrustContext {
        client: client.clone(),
        namespace: args.namespace.clone(),
        issuer: args
            .injection
            .issuer
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--issuer (KUBE_MTLS_ISSUER): {e}"))?,
        cluster_resource_namespace: args.cluster_resource_namespace.clone(),
        min_retention: duration,
        shared: Arc::new(TrustShared::default()),
        events: Some(events::Recorder::new(
            client.clone(),
            std::env::var("HOSTNAME").ok(),
        )),
    };
    let (view, run) = kube_mtls_webhook::trust::controller::start(ctx, certificates);
    tokio::spawn(run);
    Ok(Some(view))
}

/// Until the trust bundle's controller has decided (bundle or fallback), at
/// most 30 s: a restarted webhook then gives pods the bundle from its first
/// admission, and a controller that cannot decide never holds readiness.
async fn wait_for_trust(trust: Option<&TrustView>) {
    let Some(t) = trust else { return };
    for _ in 0..60 {
        if t.shared.is_settled() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tracing::warn!(
        "the trust bundle controller has not decided in 30 s; serving meanwhile: pods trust their own Secret's ca.crt until it has"
    );
}

/// The API server's view for `serve`: the client, the sidecar mode, the
/// reflectors of profiles and namespaces, the Certificate and trust bundle
/// controllers, and readiness once their caches are synced.
async fn connect(
    args: &ServeArgs,
    health: &Arc<server::Health>,
    metrics: &Arc<Metrics>,
    explicit: Option<bool>,
) -> anyhow::Result<(ClusterView, Option<Client>, bool)> {
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
    let profiles = cache::<MtlsProfile>(&client);
    let namespaces = cache::<Namespace>(&client);
    let (certificates, certificate_controller) = controller::start(controller::Context {
        client: client.clone(),
        duration: args.injection.cert_duration.clone(),
        renew_before: args.injection.cert_renew_before.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(certificate_controller);
    let trust = start_trust(args, &client, certificates)?;
    let ready = health.clone();
    let (p, n, t) = (profiles.clone(), namespaces.clone(), trust.clone());
    tokio::spawn(async move {
        if p.wait_until_ready().await.is_ok() && n.wait_until_ready().await.is_ok() {
            wait_for_trust(t.as_ref()).await;
            ready.ready.store(true, Ordering::Relaxed);
            tracing::info!("profile and namespace caches synced");
        }
    });
    let view = ClusterView::Live {
        profiles,
        namespaces,
        trust,
    };
    Ok((view, Some(client), native))
}

/// A reflector of every `K` in the cluster, kept by a spawned watch.
fn cache<K>(client: &Client) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    );
    tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    store
}

/// The settings pods are resolved with. `--standalone` has no trust bundle
/// (no API server to keep it), so its pods trust their own Secret's ca.crt.
fn resolution_defaults(args: &ServeArgs, native: bool) -> anyhow::Result<Defaults> {
    let mut defaults = args.injection.resolution_defaults(native)?;
    if args.standalone && defaults.trust_source == TrustSource::ConfigMap {
        tracing::info!(
            "--standalone: no trust bundle without the API server; injected pods trust their own Secret's ca.crt (--trust-bundle-source=secret)"
        );
        defaults.trust_source = TrustSource::Secret;
    }
    Ok(defaults)
}
