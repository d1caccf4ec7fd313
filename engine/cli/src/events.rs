//! `spool events list|show|tail`: the operator's view of the log, read
//! directly from `log.db` (read-only, so it works beside a running server).
//! A table by default; `--json` prints one envelope per line (JSON Lines).

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use spool_log::{Filter, Log, StoredEvent, TypeFilter};
use spool_schemas::{EventId, Position, StreamName, TenantId};

use crate::datadir::DataDir;

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Events in log order.
    List(ListArgs),
    /// One event, by id (`evt_…`) or position.
    Show {
        /// `evt_…` or a position.
        event: String,
        /// Compact JSON instead of pretty.
        #[arg(long)]
        json: bool,
    },
    /// Follow the log: prints events as they are appended, until Ctrl-C.
    Tail(TailArgs),
}

#[derive(Args)]
pub(crate) struct FilterArgs {
    #[arg(long)]
    tenant: Option<TenantId>,
    /// A type name or `prefix.*`; repeatable.
    #[arg(long = "type")]
    types: Vec<String>,
    #[arg(long)]
    stream: Option<StreamName>,
    /// One JSON envelope per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Start after this position.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Start after this position; by default at the current end.
    #[arg(long)]
    after: Option<u64>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            tenant: self.tenant,
            stream: self.stream.clone(),
            types: self.types.iter().map(|t| TypeFilter::parse(t)).collect(),
        }
    }
}

pub(crate) async fn run(data_dir: &DataDir, command: EventsCommand) -> anyhow::Result<()> {
    let log = data_dir.open_log_read_only().await?;
    let result = match command {
        EventsCommand::List(args) => list(&*log, args).await,
        EventsCommand::Show { event, json } => show(&*log, &event, json).await,
        EventsCommand::Tail(args) => tail(log.clone(), args).await,
    };
    log.close().await?;
    result
}

async fn list(log: &dyn Log, args: ListArgs) -> anyhow::Result<()> {
    let filter = args.filter.filter();
    // No bound on reads: the operator asked for this many, however sparse.
    let page =
        spool_log::read_page(log, Position(args.after), args.limit, &filter, usize::MAX).await?;
    let mut printer = Printer::new(args.filter.json);
    for event in &page.events {
        printer.print(event)?;
    }
    Ok(())
}

async fn show(log: &dyn Log, target: &str, compact: bool) -> anyhow::Result<()> {
    let event = if target.starts_with(EventId::PREFIX) {
        let id: EventId = target.parse()?;
        log.find(id).await?
    } else {
        let position: u64 = target
            .parse()
            .with_context(|| format!("{target:?} is neither an event id (evt_…) nor a position"))?;
        if position == 0 {
            bail!("positions start at 1");
        }
        let batch = log.read(Position(position - 1), 1, &Filter::default()).await?;
        batch.events.into_iter().find(|event| event.position == Position(position))
    };
    let Some(event) = event else {
        bail!("no event {target} in the log");
    };
    let envelope = event.envelope()?;
    if compact {
        println!("{}", serde_json::to_string(&envelope)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&envelope)?);
    }
    Ok(())
}

async fn tail(log: Arc<spool_log::SqliteLog>, args: TailArgs) -> anyhow::Result<()> {
    let after = args.after.map(Position).unwrap_or_else(|| *log.head().borrow());
    let log: Arc<dyn Log> = log;
    let events = spool_log::tail(log, after, args.filter.filter());
    tokio::pin!(events);
    let mut printer = Printer::new(args.filter.json);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Some(event) => printer.print(&event?)?,
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Prints events as a table (with one header) or as JSON lines.
struct Printer {
    json: bool,
    header_printed: bool,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer { json, header_printed: false }
    }

    fn print(&mut self, event: &StoredEvent) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{}", serde_json::to_string(&event.envelope()?)?)?;
        } else {
            if !self.header_printed {
                writeln!(
                    out,
                    "{:>10}  {:<20}  {:<24}  {:<32}  {:<36}  ID",
                    "POSITION", "RECORDED", "TYPE", "STREAM", "TENANT"
                )?;
                self.header_printed = true;
            }
            writeln!(
                out,
                "{:>10}  {:<20}  {:<24}  {:<32}  {:<36}  {}",
                event.position,
                event.recorded_at.format("%Y-%m-%dT%H:%M:%SZ"),
                event.type_name,
                event.stream,
                event.tenant,
                event.id
            )?;
        }
        out.flush()?;
        Ok(())
    }
}
