//! `spool events list|show|tail`: the operator's view of the log, read
//! directly from `log.db` (read-only, so it works beside a running server).
//! A table by default; `--json` prints one envelope per line (JSON Lines).
//!
//! Where to start is a cursor, one position per partition of the log joined
//! by dots (`120.0.37`; on a one-partition log, such as SQLite's, just the
//! position). An event is named by its id or by where it is: its position
//! on a one-partition log, `<partition>:<position>` on any.

use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use spool_log::{Cursor, Filter, Log, StoredEvent, TypeFilter};
use spool_schemas::{EventId, Position, StreamName, TenantId};

use crate::config::Config;

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Events in log order.
    List(ListArgs),
    /// One event, by id (`evt_…`) or where it is.
    Show {
        /// `evt_…`, `<partition>:<position>`, or on a one-partition log
        /// just `<position>`.
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
    /// Start after this cursor: one position per partition, joined by dots
    /// (`120.0.37`; a plain position on a one-partition log). From the
    /// start by default.
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Start after this cursor (as for `list`); by default at the current
    /// end.
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
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

pub(crate) async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<()> {
    let log = config.open_log(true).await?;
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
    let after = match &args.after {
        Some(text) => parse_cursor(text, log)?,
        None => Cursor::start(log.partitions()),
    };
    // No bound on reads: the operator asked for this many, however sparse.
    let page = spool_log::read_page(log, &after, args.limit, &filter, usize::MAX).await?;
    print_all(&page.events, log.partitions() > 1, args.filter.json)?;
    if page.more {
        // On stderr, so that stdout stays the events alone.
        eprintln!("more events follow: pass --after {}", page.next);
    }
    Ok(())
}

/// `--after`'s cursor for `log`, or an error saying what is wrong with it.
fn parse_cursor(text: &str, log: &dyn Log) -> anyhow::Result<Cursor> {
    Cursor::parse_for(text.trim(), log).map_err(|error| match error {
        spool_log::Error::Invalid(reason) => anyhow!("--after: {reason}"),
        other => anyhow!("--after: {other}"),
    })
}

/// An event as `show` names it.
#[derive(Debug, PartialEq)]
enum Target {
    Id(EventId),
    At { partition: u32, position: Position },
}

/// `text` as an event id, `<partition>:<position>`, or (on a one-partition
/// log) a position.
fn parse_target(text: &str, partitions: u32) -> anyhow::Result<Target> {
    if text.starts_with(EventId::PREFIX) {
        return Ok(Target::Id(text.parse()?));
    }
    let not_an_event = || {
        format!("{text:?} is neither an event id (evt_…) nor <partition>:<position> nor a position")
    };
    let (partition, position) = match text.split_once(':') {
        Some((partition, position)) => {
            let partition: u32 = partition.parse().with_context(not_an_event)?;
            if partition >= partitions {
                bail!("there is no partition {partition}: the log has {partitions} (from 0)");
            }
            (partition, position)
        }
        None if partitions == 1 => (0, text),
        None => {
            text.parse::<u64>().with_context(not_an_event)?;
            bail!(
                "the log has {partitions} partitions, each with its own positions: \
                 name the event as <partition>:{text} or by its id"
            );
        }
    };
    let position: u64 = position.parse().with_context(not_an_event)?;
    if position == 0 {
        bail!("positions start at 1");
    }
    Ok(Target::At { partition, position: Position(position) })
}

async fn show(log: &dyn Log, target: &str, compact: bool) -> anyhow::Result<()> {
    let event = match parse_target(target, log.partitions())? {
        Target::Id(id) => log.find(id).await?,
        Target::At { partition, position } => {
            let before = Position(position.0 - 1);
            let batch = log.read(partition, before, 1, &Filter::default()).await?;
            batch.events.into_iter().find(|event| event.position == position)
        }
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

async fn tail(log: Arc<dyn Log>, args: TailArgs) -> anyhow::Result<()> {
    let after = match &args.after {
        Some(text) => parse_cursor(text, &*log)?,
        None => Cursor::heads(&*log),
    };
    let mut printer = Printer::new(log.partitions() > 1, args.filter.json);
    let events = spool_log::tail(log, after, args.filter.filter());
    tokio::pin!(events);
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
///
/// On a partitioned log POSITION reads `<partition>:<position>`, which is
/// also how `show` names an event; on one partition it is the position.
const HEADERS: [&str; 6] = ["POSITION", "RECORDED", "TYPE", "STREAM", "TENANT", "ID"];
const WIDTHS: [usize; 6] = [10, 20, 24, 44, 36, 0];
/// The columns `tail` cuts to width: TYPE and STREAM. The others have a
/// fixed length (or are the last).
const CUT: [bool; 6] = [false, false, true, true, false, false];

/// One row of the table, cell by cell.
type Row = [String; 6];

fn row(event: &StoredEvent, partitioned: bool) -> Row {
    let position = match partitioned {
        true => format!("{}:{}", event.partition, event.position),
        false => event.position.to_string(),
    };
    [
        position,
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
fn print_all(events: &[StoredEvent], partitioned: bool, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        for event in events {
            writeln!(out, "{}", serde_json::to_string(&event.envelope()?)?)?;
        }
    } else if !events.is_empty() {
        let rows: Vec<Row> = events.iter().map(|event| row(event, partitioned)).collect();
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
    partitioned: bool,
    json: bool,
    header_printed: bool,
}

impl Printer {
    fn new(partitioned: bool, json: bool) -> Printer {
        Printer { partitioned, json, header_printed: false }
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
            write_row(&mut out, &row(event, self.partitioned), &WIDTHS, true)?;
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

    #[test]
    fn show_names_an_event_by_id_or_by_where_it_is() {
        let id = EventId::new();
        assert_eq!(parse_target(&id.to_string(), 4).unwrap(), Target::Id(id));
        let at = |partition, position| Target::At { partition, position: Position(position) };
        assert_eq!(parse_target("37", 1).unwrap(), at(0, 37));
        assert_eq!(parse_target("0:37", 1).unwrap(), at(0, 37));
        assert_eq!(parse_target("3:37", 4).unwrap(), at(3, 37));
        for (text, partitions, error) in [
            ("37", 4, "name the event as <partition>:37"),
            ("4:37", 4, "there is no partition 4"),
            ("1:37", 1, "there is no partition 1"),
            ("0", 1, "positions start at 1"),
            ("2:0", 4, "positions start at 1"),
            ("x", 1, "neither an event id"),
            ("x:1", 4, "neither an event id"),
            ("1:x", 4, "neither an event id"),
            ("1:2:3", 4, "neither an event id"),
            ("evt_nope", 1, ""),
        ] {
            let refused = parse_target(text, partitions).unwrap_err().to_string();
            assert!(refused.contains(error), "{text} of {partitions}: {refused}");
        }
    }

    #[test]
    fn a_partitioned_logs_table_shows_where_each_event_is_as_show_takes_it() {
        let mut event = StoredEvent {
            partition: 2,
            position: Position(37),
            id: EventId::new(),
            tenant: TenantId::new(),
            stream: StreamName::new("order/1").unwrap(),
            stream_version: 1,
            recorded_at: chrono::Utc::now(),
            causation_id: None,
            correlation_id: None,
            type_name: "order.created".into(),
            version: 1,
            data: "null".into(),
        };
        assert_eq!(row(&event, true)[0], "2:37");
        assert_eq!(
            parse_target(&row(&event, true)[0], 4).unwrap(),
            Target::At { partition: 2, position: Position(37) }
        );
        event.partition = 0;
        assert_eq!(row(&event, false)[0], "37");
    }
}
