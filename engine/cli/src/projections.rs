//! `spool projections status|rebuild`.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use spool_log::Log;
use spool_projections::ProjectionState;

use crate::config::Config;

#[derive(Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Name, version, checkpoint, head, lag and state of every projection.
    /// Checkpoint and head are cursors: one position per partition of the
    /// log, joined by dots (`120.0.37`); lag is summed over partitions.
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

pub(crate) async fn run(config: &Config, command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status { json } => status(config, json).await,
        ProjectionsCommand::Rebuild { name } => rebuild(config, name).await,
    }
}

async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let log = config.open_log(true).await?;
    let views = config.open_views().await?;
    let statuses = spool_projections::status(&views, &*log).await?;
    if json {
        for status in &statuses {
            let (state, error) = state_text(&status.state);
            println!(
                "{}",
                serde_json::json!({
                    "name": status.name,
                    "version": status.version,
                    "checkpoint": status.checkpoint.to_string(),
                    "head": status.head.to_string(),
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
            // Cursors as strings: `Cursor`'s Display ignores the widths.
            println!(
                "{:<20}  {:>7}  {:>10}  {:>10}  {:>10}  {state}",
                status.name,
                status.version,
                status.checkpoint.to_string(),
                status.head.to_string(),
                status.lag
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

async fn rebuild(config: &Config, name: Option<String>) -> anyhow::Result<()> {
    // A server's runner writes the same registry rows: never both at once.
    // (With shared read models, a runner elsewhere is fenced by the
    // checkpoints instead: the loser of a race fails and retries.)
    let _lock =
        config.data_dir.lock().context("cannot rebuild while the data directory is in use")?;
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
    let log = config.open_log(true).await?;
    let views = config.open_views().await?;
    // Progress counts events over every partition: positions are gap-free
    // from 1 in each, so a cursor's positions add up to the events before it.
    let head: u64 = (0..log.partitions()).map(|partition| log.head(partition).borrow().0).sum();
    let style =
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")?
            .progress_chars("=> ");
    for projection in projections {
        let bar = ProgressBar::new(head).with_style(style.clone()).with_prefix(projection.name());
        let progress_bar = bar.clone();
        let log: Arc<dyn Log> = log.clone();
        let report = spool_projections::rebuild(log, &views, projection.clone(), move |progress| {
            progress_bar.set_length(progress.head_events());
            progress_bar.set_position(progress.applied_events());
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
