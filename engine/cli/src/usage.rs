//! `spool usage`: a tenant's API usage, read from the `usage` read model
//! directly (`views.db` or PostgreSQL; it only reads rows, so it works
//! beside a running server), in the same rows as `GET /v1/usage`: a table
//! by default, `--csv` (the API's CSV) or `--json` (one row per line).

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use clap::Args;
use spool_api::routes::usage::{UsageRowView, csv, row_views};
use spool_projections::usage::{self, Granularity, GroupBy, UsageQuery};
use spool_schemas::TenantId;

use crate::config::Config;

#[derive(Args)]
pub(crate) struct UsageArgs {
    /// The tenant (`ten_…`). Requests that presented no valid key are
    /// counted under the system tenant, `ten_00000000000000000000000000000000`.
    #[arg(long)]
    tenant: TenantId,
    /// The tenant's test mode (its sandbox twin) instead of live traffic.
    #[arg(long)]
    test: bool,
    /// RFC 3339; minutes starting at or after this instant. [default: `to`
    /// less an hour at minute granularity, a day at hour, 30 days at day]
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// RFC 3339; minutes starting before this instant. [default: now]
    #[arg(long)]
    to: Option<DateTime<Utc>>,
    /// `minute`, `hour` or `day` (UTC days).
    #[arg(long, default_value = "hour", value_parser = parse_granularity)]
    granularity: Granularity,
    /// Comma-separated: any of `key`, `route`, `status`.
    #[arg(long, default_value = "", value_parser = parse_group_by)]
    group_by: GroupBy,
    /// CSV with a header row, as `GET /v1/usage` answers `Accept: text/csv`.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// One JSON object per row (JSON Lines), as in `GET /v1/usage`'s `rows`.
    #[arg(long)]
    json: bool,
}

fn parse_granularity(text: &str) -> Result<Granularity, String> {
    text.parse().map_err(|error: usage::InvalidUsageQuery| error.to_string())
}

fn parse_group_by(text: &str) -> Result<GroupBy, String> {
    text.parse().map_err(|error: usage::InvalidUsageQuery| error.to_string())
}

pub(crate) async fn run(config: &Config, args: UsageArgs) -> anyhow::Result<()> {
    let tenant = if args.test { args.tenant.test_twin() } else { args.tenant };
    let to = args.to.unwrap_or_else(Utc::now);
    let from = args.from.unwrap_or(
        to - match args.granularity {
            Granularity::Minute => Duration::hours(1),
            Granularity::Hour => Duration::days(1),
            Granularity::Day => Duration::days(30),
        },
    );
    let query = match UsageQuery::new(from, to, args.granularity, args.group_by) {
        Ok(query) => query,
        // The messages name the API's parameters; the flags are spelled alike.
        Err(error) => bail!("{error}"),
    };
    let views = config.open_views().await?;
    let rows = usage::query(&views, tenant, &query).await.context("reading usage")?;
    views.close().await;
    let rows = row_views(&rows, args.group_by);
    if args.csv {
        let text = csv(args.group_by, &rows).context("writing CSV")?;
        print!("{}", String::from_utf8_lossy(&text));
    } else if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print_table(args.group_by, &rows);
    }
    Ok(())
}

/// Aligned columns, headed in capitals; percentiles in milliseconds.
fn print_table(group_by: GroupBy, rows: &[UsageRowView]) {
    let mut header = vec!["START"];
    if group_by.key {
        header.push("KEY");
    }
    if group_by.route {
        header.extend(["METHOD", "ROUTE"]);
    }
    if group_by.status {
        header.push("STATUS");
    }
    header.extend(["REQUESTS", "ERRORS", "P50_MS", "P95_MS", "P99_MS"]);
    let mut lines = vec![header.iter().map(|name| name.to_string()).collect::<Vec<_>>()];
    for row in rows {
        let mut line = vec![row.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)];
        if let Some(key_id) = &row.key_id {
            line.push(key_id.clone().unwrap_or_else(|| "-".to_owned()));
        }
        line.extend(row.method.clone());
        line.extend(row.route.clone());
        line.extend(row.status_class.clone());
        line.extend([row.requests, row.errors].map(|n| n.to_string()));
        line.extend([row.p50_ms, row.p95_ms, row.p99_ms].map(|ms| format!("{ms:.3}")));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| lines.iter().map(|line| line[column].len()).max().unwrap_or(0))
        .collect();
    // Text columns flush left, numbers (the last five) flush right.
    let numbers_from = header.len() - 5;
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column < numbers_from {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    if rows.is_empty() {
        eprintln!("no requests in this range");
    }
}
