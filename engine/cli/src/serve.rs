//! `spool serve`: the composition of log, projections, recorder and router,
//! with bootstrap on first start and an orderly shutdown on SIGTERM/Ctrl-C.
//!
//! Startup waits only for the `auth` projection to catch up (so keys work
//! from the first request); the others may still be building or even have
//! failed, which `/readyz` reports.
//!
//! Shutdown order: stop accepting and end live streams, let in-flight
//! requests finish (axum's graceful shutdown, for at most 30 s), flush the
//! `api.call` recorder, stop the projections, then close the log, which
//! drains its pending appends. Every step runs even when an earlier one
//! failed.

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use spool_api::commands;
use spool_api::{ApiOptions, AppState, Recorder, RecorderOptions, UsageCache};
use spool_log::{Append, Cursor, Filter, Log, SqliteOptions, TypeFilter};
use spool_projections::{CurrentRunner, Runner, RunnerHandle, RunnerOptions, Views};
use spool_schemas::{Payload, TenantCreated};
use tokio::sync::watch;

use crate::config::{self, Config, DEFAULT_LISTEN, LogTarget, ViewsTarget};
use crate::datadir::DataDir;
use crate::lease;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on; port 0 picks a free port (printed as
    /// `listening on <addr>`). [default: 127.0.0.1:8080]
    #[arg(long, env = "SPOOL_LISTEN")]
    listen: Option<String>,

    /// The base URL clients reach this server at, such as
    /// `https://spool.example.com`: the issuer (`iss`) of OAuth access
    /// tokens. Every instance sharing a log must be given the same one, so
    /// it is required with a Kafka log or PostgreSQL read models.
    /// [default: http:// and the address listened on]
    #[arg(long, env = "SPOOL_PUBLIC_URL")]
    public_url: Option<String>,
}

pub(crate) async fn run(config: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let public_url = public_url(config, args.public_url)?;
    let data_dir = &config.data_dir;
    let listen = args.listen.or(config.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    data_dir.create()?;
    let _lock = data_dir.lock()?;

    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Without upkeep the exporter's histograms keep every sample until the
    // next scrape, which may never come.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(METRICS_UPKEEP);
            loop {
                ticks.tick().await;
                metrics.run_upkeep();
            }
        })
    };
    let mut kafka = None;
    let log: Arc<dyn Log> = match &config.log {
        LogTarget::Sqlite => Arc::new(
            spool_log::SqliteLog::open(data_dir.log_path(), SqliteOptions::default())
                .await
                .with_context(|| format!("cannot open {}", data_dir.log_path().display()))?,
        ),
        LogTarget::Kafka(options) => {
            let log = config::open_kafka(options).await?;
            kafka = Some(log.clone());
            log
        }
    };
    let views = match config.open_views().await {
        Ok(views) => views,
        Err(error) => {
            let _ = log.close().await;
            return Err(error);
        }
    };

    let (stop_runner, runner_stopped) = watch::channel(false);
    // With the log in Kafka and the read models in PostgreSQL, several
    // instances share the work: advisory locks in that database give each
    // some partitions to project (see `lease`). Otherwise this process
    // projects them all.
    let (running, running_now) = watch::channel(BTreeSet::new());
    let leases = match (&kafka, &config.views) {
        (Some(kafka), ViewsTarget::Postgres(url)) => {
            match lease::join(url, &kafka.options().topic, kafka.partitions(), running_now).await {
                Ok(leases) => Some(leases),
                Err(error) => {
                    let _ = log.close().await;
                    return Err(error);
                }
            }
        }
        _ => None,
    };
    let (runner, runner_task) = match &leases {
        None => {
            let runner = Runner::new(
                log.clone(),
                views.clone(),
                spool_projections::builtin(),
                RunnerOptions::default(),
            );
            let handle = runner.handle();
            (CurrentRunner::fixed(handle), tokio::spawn(runner.run(stopped(runner_stopped))))
        }
        Some(leases) => {
            let idle =
                Runner::new(log.clone(), views.clone(), Vec::new(), RunnerOptions::default());
            let (handles, current) = watch::channel(idle.handle());
            let task = tokio::spawn(supervise(
                log.clone(),
                views.clone(),
                leases.wanted(),
                Supervised { handles, running },
                runner_stopped,
            ));
            (CurrentRunner::following(current), task)
        }
    };

    // From here on the log is open and the runner runs: whatever fails,
    // `stop` below still closes them.
    let started = start(data_dir, &listen, &log, &views, &runner, leases.is_some(), metrics)
        .await
        .map(|mut started| {
            if let Some(public_url) = public_url {
                started.state.options.public_url = public_url;
            }
            started
        });
    let served = match started {
        Ok(mut started) => {
            started.state.options.rate_limits.store = config.rate_limit_store.clone();
            serve(started).await
        }
        Err(error) => Err(error),
    };
    let stopped = stop(log, stop_runner, runner_task).await;
    drop(leases);
    upkeep.abort();
    served?;
    stopped?;
    tracing::info!("stopped");
    Ok(())
}

/// The `--public-url`, required when instances may share the log: each
/// instance's default issuer is its own listen address, so instances bound
/// to different addresses would refuse each other's tokens. Checked before
/// anything is opened, so a scale-out setup fails at once, not on its
/// first token.
fn public_url(config: &Config, given: Option<String>) -> anyhow::Result<Option<String>> {
    let given = given.filter(|url| !url.trim().is_empty());
    let shared = matches!(config.log, LogTarget::Kafka(_))
        || matches!(config.views, ViewsTarget::Postgres(_));
    if shared && given.is_none() {
        anyhow::bail!(
            "a Kafka log or PostgreSQL read models may be shared by several instances, which \
             must all issue OAuth tokens as one server: set --public-url (or SPOOL_PUBLIC_URL) \
             to the base URL clients reach them at, such as https://spool.example.com, the \
             same on every instance"
        );
    }
    Ok(given)
}

/// How often the metrics exporter drains its histogram buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long in-flight requests get to finish once shutdown began.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(30);

/// What `serve` needs, once started.
struct Started {
    listener: tokio::net::TcpListener,
    state: AppState,
    recorder: Recorder,
    /// Turns `state.shutdown` true, ending live streams.
    stop_streams: watch::Sender<bool>,
    signal: ShutdownSignal,
}

/// Bootstraps a tenant on first start, waits until keys authenticate, and
/// binds the listener.
async fn start(
    data_dir: &DataDir,
    listen: &str,
    log: &Arc<dyn Log>,
    views: &Views,
    runner: &CurrentRunner,
    shared: bool,
    metrics: PrometheusHandle,
) -> anyhow::Result<Started> {
    // The log is the authority on whether a tenant exists: the views may
    // lag behind it or be rebuilding, and a restart must not bootstrap a
    // second tenant.
    let tenant_created = Filter {
        types: vec![TypeFilter::Exact(TenantCreated::TYPE.to_owned())],
        ..Filter::default()
    };
    let existing = spool_log::read_page(
        &**log,
        &Cursor::start(log.partitions()),
        1,
        &tenant_created,
        usize::MAX,
    )
    .await?;
    // Where the auth projection must be before serving: every partition's
    // head, and past the bootstrap tenant's events when they are appended.
    let mut auth_target = Cursor::heads(&**log);
    if existing.events.is_empty() {
        let created = commands::new_tenant("default", "bootstrap admin");
        let appended = log.append(Append::new(created.events)).await?;
        for appended in &appended {
            let partition = appended.partition;
            auth_target.set(partition, auth_target.get(partition).max(appended.position));
        }
        println!("bootstrap tenant: {}", created.tenant);
        // The id names the key to `spool admin key revoke` later.
        println!("admin key id: {}", created.key.key_id);
        println!("admin key: {}", created.key.secret);
        eprintln!("the admin key above is shown only once; store it now");
    }
    // Only the auth projection gates serving, so that every existing key
    // (and the bootstrap key) authenticates from the first request on. The
    // others catch up, rebuild or fail while the server runs; `/readyz`
    // says where they stand.
    // Shared: wait for this instance's share of the partitions; the auth
    // rows of the others come from the instances that own them.
    let projecting = !shared || wait_for_partitions(runner).await;
    if projecting
        && let Err(error) =
            runner.get().wait_for_projection(spool_projections::auth::NAME, &auth_target).await
    {
        // Serving still answers `/healthz`, `/readyz` and `/metrics`; every
        // authenticated request gets `503` until the projection is fixed.
        tracing::error!(%error, "the auth projection cannot catch up; /v1 answers 503");
    }

    let recorder = Recorder::new(log.clone(), RecorderOptions::default());
    let (stop_streams, streams_stopped) = watch::channel(false);
    let options = ApiOptions::default();
    let mut state = AppState {
        log: log.clone(),
        views: views.clone(),
        runner: runner.clone(),
        recorder: recorder.handle(),
        metrics: Some(metrics),
        shutdown: streams_stopped,
        usage_cache: UsageCache::new(options.usage_cache_ttl),
        options,
        oauth_keys: Default::default(),
        auth_cache: Default::default(),
    };
    let signal = ShutdownSignal::install()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    // The issuer of access tokens unless `--public-url` says otherwise.
    state.options.public_url = format!("http://{address}");
    println!("listening on {address}");
    std::io::stdout().flush()?;
    tracing::info!(%address, data_dir = %data_dir.root().display(), "serving");
    Ok(Started { listener, state, recorder, stop_streams, signal })
}

/// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish for
/// at most [`GRACEFUL_SHUTDOWN`], then flushes the `api.call` recorder.
async fn serve(started: Started) -> anyhow::Result<()> {
    let Started { listener, state, recorder, stop_streams, signal } = started;
    let streams_stopped = state.shutdown.clone();
    let (stop_recorder, recorder_stopped) = watch::channel(false);
    let recorder_task = tokio::spawn(recorder.run(stopped(recorder_stopped)));

    // The peer's address limits requests without a valid key (per IP).
    let app = spool_api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.recv().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_streams.send(true);
    });
    let deadline = async {
        stopped(streams_stopped).await;
        tokio::time::sleep(GRACEFUL_SHUTDOWN).await;
    };
    let served = tokio::select! {
        served = server.into_future() => served.context("the server failed"),
        () = deadline => {
            tracing::warn!(
                after = ?GRACEFUL_SHUTDOWN,
                "in-flight requests did not finish in time; stopping without them"
            );
            Ok(())
        }
    };

    // Whatever happened to the server, keep what was recorded.
    let _ = stop_recorder.send(true);
    match recorder_task.await {
        Ok(report) => tracing::info!(
            recorded = report.recorded,
            appends = report.appends,
            retries = report.retries,
            failed = report.failed,
            "api.call recorder flushed"
        ),
        Err(panic) => tracing::error!(%panic, "the api.call recorder panicked"),
    }
    served
}

/// How long a new instance waits for its share of the partitions before it
/// serves without one.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a runner with projections now serves.
async fn wait_for_partitions(runner: &CurrentRunner) -> bool {
    let deadline = tokio::time::Instant::now() + ASSIGNMENT_TIMEOUT;
    // The placeholder before the first assignment runs no projection.
    while runner.get().state(spool_projections::auth::NAME).is_none() {
        if tokio::time::Instant::now() > deadline {
            // More instances than partitions leave some with none: they
            // serve the API on the read models the others keep.
            tracing::info!("no partition to project yet; serving on the others' read models");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Where the supervisor reports: the runner now serving, and the
/// partitions it projects (so that the leases release only what no runner
/// of this instance projects any more).
struct Supervised {
    handles: watch::Sender<RunnerHandle>,
    running: watch::Sender<BTreeSet<u32>>,
}

/// Projects the partitions this instance's leases want, with a new runner
/// whenever they change, until `stop`. Checkpoints live in the
/// shared read models, so a runner taking a partition over resumes where
/// its last owner committed; a batch in flight when ownership moved fails
/// on its checkpoint rather than counting twice.
async fn supervise(
    log: Arc<dyn Log>,
    views: Views,
    mut owned: watch::Receiver<BTreeSet<u32>>,
    supervised: Supervised,
    mut stop: watch::Receiver<bool>,
) -> spool_projections::Result<()> {
    loop {
        let partitions = owned.borrow_and_update().clone();
        if !partitions.is_empty() {
            let runner = Runner::new(
                log.clone(),
                views.clone(),
                spool_projections::builtin(),
                RunnerOptions::default(),
            )
            .owning(partitions.iter().copied())?;
            supervised.handles.send_replace(runner.handle());
            supervised.running.send_replace(partitions.clone());
            tracing::info!(?partitions, "projecting the partitions this instance owns");
            let (stop_runner, runner_stopped) = watch::channel(false);
            let mut task = tokio::spawn(runner.run(stopped(runner_stopped)));
            let ended_by_itself = tokio::select! {
                _ = owned.changed() => false,
                _ = stop.wait_for(|stopped| *stopped) => false,
                ended = &mut task => {
                    if let Ok(Err(error)) = ended {
                        tracing::error!(%error, "the projection runner stopped");
                    }
                    true
                }
            };
            if !ended_by_itself {
                let _ = stop_runner.send(true);
                let _ = task.await;
            }
            supervised.running.send_replace(BTreeSet::new());
            if *stop.borrow() {
                return Ok(());
            }
            if !ended_by_itself && owned.has_changed().is_ok() {
                continue;
            }
        }
        // Nothing to run (no partitions, or a runner that failed, whose
        // failure is recorded): wait for a new assignment or the end.
        let leases_gone = tokio::select! {
            changed = owned.changed() => changed.is_err(),
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        if leases_gone {
            // Only the end can come now.
            let _ = stop.wait_for(|stopped| *stopped).await;
            return Ok(());
        }
    }
}

/// Stops the projections and closes the log, each whatever became of the
/// other; the first failure is returned, every one is logged.
async fn stop(
    log: Arc<dyn Log>,
    stop_runner: watch::Sender<bool>,
    runner_task: tokio::task::JoinHandle<spool_projections::Result<()>>,
) -> anyhow::Result<()> {
    let _ = stop_runner.send(true);
    match runner_task.await {
        Ok(Ok(())) => {}
        // A failed projection was reported when it failed and is in the
        // registry; it does not make the shutdown fail.
        Ok(Err(error)) => tracing::error!(%error, "a projection failed while serving"),
        Err(panic) => tracing::error!(%panic, "the projection runner panicked"),
    }
    log.close().await.context("closing the log failed")
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from before the server says
/// it listens: a signal that arrives before anyone listens for it takes its
/// default action, which kills the process without a clean shutdown.
struct ShutdownSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
