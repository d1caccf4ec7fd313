//! `spool projections status|rebuild`.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use spool_log::Log;
use spool_projections::{ProjectionState, Views};

use crate::datadir::DataDir;

#[derive(Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Name, version, checkpoint, head, lag and state of every projection.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild one projection (or all) from position zero. Refused while a
    /// server holds the data directory.
    Rebuild {
        /// A projection's name; all of them when absent.
        name: Option<String>,
    },
}

pub(crate) async fn run(data_dir: &DataDir, command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status { json } => status(data_dir, json).await,
        ProjectionsCommand::Rebuild { name } => rebuild(data_dir, name).await,
    }
}

async fn status(data_dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let log = data_dir.open_log_read_only().await?;
    let views = Views::open(data_dir.views_path())
        .await
        .with_context(|| format!("cannot open {}", data_dir.views_path().display()))?;
    let statuses = spool_projections::status(&views, &*log).await?;
    if json {
        for status in &statuses {
            let (state, error) = state_text(&status.state);
            println!(
                "{}",
                serde_json::json!({
                    "name": status.name,
                    "version": status.version,
                    "checkpoint": status.checkpoint.0,
                    "head": status.head.0,
                    "lag": status.lag,
                    "state": state,
                    "error": error,
                })
            );
        }
    } else {
        println!(
            "{:<20}  {:>7}  {:>10}  {:>10}  {:>10}  STATE",
            "NAME", "VERSION", "CHECKPOINT", "HEAD", "LAG"
        );
        for status in &statuses {
            let (state, error) = state_text(&status.state);
            let state = match error {
                Some(error) => format!("{state}: {error}"),
                None => state.to_owned(),
            };
            println!(
                "{:<20}  {:>7}  {:>10}  {:>10}  {:>10}  {state}",
                status.name, status.version, status.checkpoint, status.head, status.lag
            );
        }
    }
    log.close().await?;
    Ok(())
}

fn state_text(state: &ProjectionState) -> (&'static str, Option<&str>) {
    match state {
        ProjectionState::Live => ("live", None),
        ProjectionState::Building => ("building", None),
        ProjectionState::Failed(error) => ("failed", Some(error.as_str())),
    }
}

async fn rebuild(data_dir: &DataDir, name: Option<String>) -> anyhow::Result<()> {
    // A server's runner writes the same registry rows: never both at once.
    let _lock = data_dir.lock().context("cannot rebuild while the data directory is in use")?;
    let projections = match &name {
        Some(name) => match spool_projections::find(name) {
            Some(projection) => vec![projection],
            None => {
                let known: Vec<_> = spool_projections::builtin()
                    .iter()
                    .map(|projection| projection.name())
                    .collect();
                bail!("no projection {name:?}; known: {}", known.join(", "));
            }
        },
        None => spool_projections::builtin(),
    };
    let log = data_dir.open_log_read_only().await?;
    let views = Views::open(data_dir.views_path())
        .await
        .with_context(|| format!("cannot open {}", data_dir.views_path().display()))?;
    let head = *log.head(0).borrow();
    let style =
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")?
            .progress_chars("=> ");
    for projection in projections {
        let bar = ProgressBar::new(head.0).with_style(style.clone()).with_prefix(projection.name());
        let progress_bar = bar.clone();
        let log: Arc<dyn Log> = log.clone();
        let report = spool_projections::rebuild(log, &views, projection.clone(), move |progress| {
            progress_bar.set_length(progress.head.0);
            progress_bar.set_position(progress.applied.0);
        })
        .await
        .with_context(|| format!("rebuilding {} failed", projection.name()))?;
        bar.finish_and_clear();
        println!(
            "rebuilt {} v{}: {} events in {:.2?}",
            projection.name(),
            projection.version(),
            report.events,
            report.elapsed
        );
    }
    log.close().await?;
    Ok(())
}
