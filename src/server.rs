//! Starting and stopping the server: model, database, background loops, HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::auth::Keys;
use crate::api::{self, HttpConfig};
use crate::cli::ServeArgs;
use crate::model::BatchConfig;
use crate::service::{Limits, Model, Service};
use crate::store::Store;

pub struct Running {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    http: JoinHandle<anyhow::Result<()>>,
    background: JoinHandle<()>,
}

/// Loads everything, binds the address and starts serving; `/ready` turns true once the
/// model has answered its warm-up.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    // Keys first: a configuration that would leave /v1 open by mistake stops here.
    let keys = Keys::load(args.api_key.as_deref(), args.keys_file.as_deref())?;
    if keys.is_empty() && !args.addr.ip().is_loopback() && !args.allow_unauthenticated {
        anyhow::bail!(
            "refusing to serve /v1 without API keys on {}: set --api-key / SW2S_API_KEY or \
             --keys-file / SW2S_KEYS_FILE, or pass --allow-unauthenticated",
            args.addr
        );
    }
    if keys.is_empty() {
        tracing::warn!(
            "no API keys: /v1 is open to anyone who can reach {}",
            args.addr
        );
    }
    // A device that cannot be opened fails the start before anything is fetched or migrated.
    let device = args.model.device.open()?;
    let data_dir = args.model.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let model_dir = {
        let model = args.model.clone();
        tokio::task::spawn_blocking(move || model.resolve()).await??
    };
    let url = args.db.url(&data_dir);
    let store = Store::connect(&url).await?;
    tracing::info!(
        backend = store.backend().name(),
        "database ready, migrations applied"
    );
    let batch = BatchConfig {
        max_batch_size: args.max_batch_size.max(1),
        max_batch_tokens: args.max_batch_tokens.max(1),
        max_queue_texts: args.max_queue_texts.max(1),
    };
    let overlong = args.model.on_overlong;
    let pooling = args.model.decoder_pooling;
    let model = tokio::task::spawn_blocking(move || {
        Model::load(&model_dir, batch, overlong, pooling, &device)
    })
    .await??;
    tracing::info!(model = %model.info.model_id, dims = model.info.dims, max_length = model.info.max_length, device = %crate::model::device::name(&model.device), "model loaded");
    let limits = Limits {
        max_batch_examples: args.max_batch_examples.max(1),
        max_text_chars: args.max_text_chars.max(1),
    };
    let service = Arc::new(Service::new(store, model, limits, data_dir)?);
    let app = api::router(
        service.clone(),
        &HttpConfig {
            keys: keys.clone(),
            max_body_bytes: args.max_body_bytes,
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        },
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");

    let (stop, stopped) = watch::channel(false);
    let mut http_stopped = stopped.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            })
            .await
            .context("HTTP server failed")
    });
    let jobs = (!args.no_jobs).then(|| Duration::from_secs(args.job_lease_secs.max(1)));
    if jobs.is_some() {
        service.fail_interrupted_jobs().await?;
    }
    tokio::spawn(watch_keys(keys, stopped.clone()));
    let background = tokio::spawn(background_loop(
        service.clone(),
        Duration::from_millis(args.scheduler_interval_ms.max(10)),
        jobs,
        stopped,
    ));
    Ok(Running {
        addr,
        service,
        stop,
        http,
        background,
    })
}

/// Re-reads the key file on SIGHUP and when it changes (checked every 2 s).
async fn watch_keys(keys: Keys, mut stopped: watch::Receiver<bool>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        tokio::select! {
            _ = hup => match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: keys reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: the key file cannot be used; the previous keys stay in force"),
            },
            _ = tokio::time::sleep(Duration::from_secs(2)) => keys.reload_if_changed(),
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Warm-up, then the periodic work: the recovery sweep (examples left undecided by a crash,
/// a new model version or another process) and, unless `--no-jobs`, the jobs: reaping dead
/// ones, starting due ones, running queued ones one at a time.
async fn background_loop(
    service: Arc<Service>,
    interval: Duration,
    job_lease: Option<Duration>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match service.warm_up().await {
            Ok(()) => {
                tracing::info!("model warm-up answered; ready");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "model warm-up failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    let mut running_job: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => {
                if let Some(job) = running_job.take() {
                    // The job is marked failed on the next start and can be re-run.
                    job.abort();
                }
                return;
            }
        }
        match service.settle_dirty().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(examples = n, "settled undecided examples"),
            Err(e) => tracing::warn!(error = %e, "recovery sweep failed"),
        }
        let Some(lease) = job_lease else { continue };
        if let Err(e) = service.reap_dead_jobs(lease).await {
            tracing::warn!(error = %e, "reaping dead jobs failed");
        }
        if let Err(e) = service.schedule_due_jobs().await {
            tracing::warn!(error = %e, "scheduling jobs failed");
        }
        if running_job
            .as_ref()
            .map(|j| j.is_finished())
            .unwrap_or(true)
        {
            let service = service.clone();
            running_job = Some(tokio::spawn(async move {
                if let Err(e) = service.run_next_job().await {
                    tracing::error!(error = %e, "running a job failed");
                }
            }));
        }
    }
}

impl Running {
    /// Stops accepting connections, lets in-flight requests finish, saves the graphs.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let result = self.http.await.context("HTTP task panicked")?;
        let _ = self.background.await;
        self.service.save_graphs().await;
        self.service.store.close().await;
        tracing::info!("stopped");
        result
    }

    /// Serves until Ctrl-C or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        self.stop().await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
