//! `spool serve`: the composition of log, projections, recorder and router,
//! with bootstrap on first start and an orderly shutdown on SIGTERM/Ctrl-C.
//!
//! Shutdown order: stop accepting and end live streams, let in-flight
//! requests finish (axum's graceful shutdown), flush the `api.call`
//! recorder, stop the projections, then close the log, which drains its
//! pending appends.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;
use spool_api::{ApiOptions, AppState, Recorder, RecorderOptions};
use spool_log::{Append, Log, SqliteOptions};
use spool_projections::{Runner, RunnerOptions, Views};
use tokio::sync::watch;

use crate::admin;
use crate::datadir::DataDir;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on; port 0 picks a free port (printed as
    /// `listening on <addr>`).
    #[arg(long, env = "SPOOL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
}

pub(crate) async fn run(data_dir: &DataDir, args: ServeArgs) -> anyhow::Result<()> {
    data_dir.create()?;
    let _lock = data_dir.lock()?;

    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let log: Arc<dyn Log> = Arc::new(
        spool_log::SqliteLog::open(data_dir.log_path(), SqliteOptions::default())
            .await
            .with_context(|| format!("cannot open {}", data_dir.log_path().display()))?,
    );
    let views = Views::open(data_dir.views_path())
        .await
        .with_context(|| format!("cannot open {}", data_dir.views_path().display()))?;

    let (stop_runner, runner_stopped) = watch::channel(false);
    let runner = Runner::new(
        log.clone(),
        views.clone(),
        spool_projections::builtin(),
        RunnerOptions::default(),
    );
    let runner_handle = runner.handle();
    let runner_task = tokio::spawn(runner.run(stopped(runner_stopped)));

    // The views must have caught up with the log before deciding whether a
    // tenant exists, or a restart would bootstrap a second one.
    let head = *log.head().borrow();
    runner_handle.wait_for(head).await.context("the projections did not catch up with the log")?;
    if spool_projections::auth::tenants(&views).await?.is_empty() {
        let (tenant, key, events) = admin::new_tenant("default", "bootstrap admin");
        let appended = log.append(Append::new(events)).await?;
        let last = appended.last().map(|a| a.position).unwrap_or_default();
        println!("bootstrap tenant: {tenant}");
        println!("admin key: {}", key.secret);
        eprintln!("the admin key above is shown only once; store it now");
        // So that the key authenticates from the first request on.
        runner_handle.wait_for(last).await?;
    }

    let recorder = Recorder::new(log.clone(), RecorderOptions::default());
    let (stop_streams, streams_stopped) = watch::channel(false);
    let state = AppState {
        log: log.clone(),
        views,
        runner: runner_handle,
        recorder: recorder.handle(),
        metrics: Some(metrics),
        shutdown: streams_stopped,
        options: ApiOptions::default(),
    };
    let (stop_recorder, recorder_stopped) = watch::channel(false);
    let recorder_task = tokio::spawn(recorder.run(stopped(recorder_stopped)));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    std::io::stdout().flush()?;
    tracing::info!(%address, data_dir = %data_dir.root().display(), "serving");

    let served = axum::serve(listener, spool_api::router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_streams.send(true);
        })
        .await;

    // Whatever happened to the server, keep what was recorded.
    let _ = stop_recorder.send(true);
    let report = recorder_task.await.context("the api.call recorder panicked")?;
    tracing::info!(
        recorded = report.recorded,
        appends = report.appends,
        failed = report.failed,
        "api.call recorder flushed"
    );
    let _ = stop_runner.send(true);
    let projections = runner_task.await.context("the projection runner panicked")?;
    log.close().await.context("closing the log failed")?;
    served.context("the server failed")?;
    if let Err(error) = projections {
        tracing::error!(%error, "a projection failed while serving");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
