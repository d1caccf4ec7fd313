//! `spool events list|show|tail`: the operator's view of the log, read
//! directly from `log.db` (read-only, so it works beside a running server).
//! A table by default; `--json` prints one envelope per line (JSON Lines).

use spool_log::Cursor;
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
    let mut after = Cursor::start(log.partitions());
    after.set(0, Position(args.after));
    let page = spool_log::read_page(log, &after, args.limit, &filter, usize::MAX).await?;
    print_all(&page.events, args.filter.json)
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
        let batch = log.read(0, Position(position - 1), 1, &Filter::default()).await?;
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
    let mut after = Cursor::heads(log.as_ref());
    if let Some(position) = args.after {
        after.set(0, Position(position));
    }
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

/// The table's columns. `list` makes each column as wide as its widest
/// cell (at least these widths); `tail`, which cannot see the rows to come,
/// uses these widths and cuts a longer TYPE or STREAM to fit, ending it
/// with `…`. STREAM fits Spool's own streams (`tenant/ten_…`, 43 characters).
const HEADERS: [&str; 6] = ["POSITION", "RECORDED", "TYPE", "STREAM", "TENANT", "ID"];
const WIDTHS: [usize; 6] = [10, 20, 24, 44, 36, 0];
/// The columns `tail` cuts to width: TYPE and STREAM. The others have a
/// fixed length (or are the last).
const CUT: [bool; 6] = [false, false, true, true, false, false];

/// One row of the table, cell by cell.
type Row = [String; 6];

fn row(event: &StoredEvent) -> Row {
    [
        event.position.to_string(),
        event.recorded_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        event.type_name.clone(),
        event.stream.to_string(),
        event.tenant.to_string(),
        event.id.to_string(),
    ]
}

/// Each column as wide as its widest cell among `rows`, and at least
/// [`WIDTHS`].
fn widths(rows: &[Row]) -> [usize; 6] {
    let mut widths = WIDTHS;
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

/// `cell` cut to `width` characters, its last one `…`, when longer.
fn cut(cell: &str, width: usize) -> std::borrow::Cow<'_, str> {
    if cell.chars().count() <= width {
        return cell.into();
    }
    let mut cut: String = cell.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut.into()
}

/// Writes one line of the table: POSITION right-aligned, the rest
/// left-aligned, two spaces between columns, no padding after the last.
fn write_row<S: AsRef<str>>(
    out: &mut impl std::io::Write,
    cells: &[S; 6],
    widths: &[usize; 6],
    cut_to_width: bool,
) -> std::io::Result<()> {
    let mut line = String::new();
    for (column, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        let cell = cell.as_ref();
        let cell = if cut_to_width && CUT[column] { cut(cell, width) } else { cell.into() };
        if column == 0 {
            line.push_str(&format!("{cell:>width$}"));
        } else if column == cells.len() - 1 {
            line.push_str("  ");
            line.push_str(&cell);
        } else {
            line.push_str(&format!("  {cell:<width$}"));
        }
    }
    writeln!(out, "{line}")
}

/// Prints `events` at once: a table whose columns fit every row, or JSON
/// lines.
fn print_all(events: &[StoredEvent], json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        for event in events {
            writeln!(out, "{}", serde_json::to_string(&event.envelope()?)?)?;
        }
    } else if !events.is_empty() {
        let rows: Vec<Row> = events.iter().map(row).collect();
        let widths = widths(&rows);
        write_row(&mut out, &HEADERS, &widths, false)?;
        for row in &rows {
            write_row(&mut out, row, &widths, false)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Prints events one by one as they come: a table of fixed widths (with
/// one header), or JSON lines.
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
                write_row(&mut out, &HEADERS, &WIDTHS, true)?;
                self.header_printed = true;
            }
            write_row(&mut out, &row(event), &WIDTHS, true)?;
        }
        out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(cells: [&str; 6]) -> Row {
        cells.map(str::to_owned)
    }

    fn table(rows: &[Row], widths: &[usize; 6], cut_to_width: bool) -> Vec<String> {
        let mut out = Vec::new();
        write_row(&mut out, &HEADERS, widths, cut_to_width).unwrap();
        for row in rows {
            write_row(&mut out, row, widths, cut_to_width).unwrap();
        }
        String::from_utf8(out).unwrap().lines().map(str::to_owned).collect()
    }

    /// Where each column after the first starts, by character.
    fn column_starts(line: &str, cells: &[&str]) -> Vec<usize> {
        let chars: Vec<char> = line.chars().collect();
        let mut starts = Vec::new();
        let mut from = 0;
        for cell in cells {
            let cell: Vec<char> = cell.chars().collect();
            let at = (from..chars.len())
                .find(|&i| chars[i..].starts_with(&cell))
                .unwrap_or_else(|| panic!("{line:?} lacks {cell:?}"));
            starts.push(at);
            from = at + cell.len();
        }
        starts
    }

    fn rows() -> Vec<Row> {
        let tenant = "ten_0123456789abcdef0123456789abcdef";
        vec![
            cells(["1", "2025-01-01T00:00:00Z", "tenant.created", "tenant/x", tenant, "evt_1"]),
            cells([
                "2",
                "2025-01-01T00:00:00Z",
                "a.rather.long.event.type.name.indeed",
                "key/key_0123456789abcdef0123456789abcdef/and/then/some",
                tenant,
                "evt_2",
            ]),
            cells(["3", "2025-01-01T00:00:00Z", "a.b", "order/1", tenant, "evt_3"]),
        ]
    }

    #[test]
    fn list_columns_fit_the_widest_cell_and_line_up() {
        let rows = rows();
        let lines = table(&rows, &widths(&rows), false);
        assert!(lines[0].starts_with("  POSITION  RECORDED"), "{lines:?}");
        let header = column_starts(&lines[0], &HEADERS[1..]);
        for (line, row) in lines[1..].iter().zip(&rows) {
            let cells: Vec<&str> = row[1..].iter().map(String::as_str).collect();
            assert_eq!(column_starts(line, &cells), header, "{lines:#?}");
            assert!(line.contains(&row[3]), "nothing is cut: {line}");
        }
    }

    #[test]
    fn tail_columns_have_fixed_widths_and_cut_long_cells_with_an_ellipsis() {
        let rows = rows();
        let lines = table(&rows, &WIDTHS, true);
        let header = column_starts(&lines[0], &HEADERS[1..]);
        for (line, row) in lines[1..].iter().zip(&rows) {
            let cells: Vec<String> = (1..6)
                .map(|column| match CUT[column] {
                    true => cut(&row[column], WIDTHS[column]).into_owned(),
                    false => row[column].clone(),
                })
                .collect();
            let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
            assert_eq!(column_starts(line, &cells), header, "{lines:#?}");
        }
        assert!(lines[2].contains("  a.rather.long.event.typ…  "), "{}", lines[2]);
        assert!(
            lines[2].contains("  key/key_0123456789abcdef0123456789abcdef/an…  "),
            "{}",
            lines[2]
        );
        assert_eq!(
            cut("key/key_0123456789abcdef0123456789abcdef", 44),
            "key/key_0123456789abcdef0123456789abcdef"
        );
    }
}
