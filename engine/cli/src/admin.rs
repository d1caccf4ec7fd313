//! `spool admin`: tenants and API keys, appended straight to the log. Safe
//! while a server runs; the server sees a new key within a fraction of a
//! second (it notices foreign appends, then its auth projection applies it).
//! Everything is decided on the log, the authority, never on the read
//! models, which may lag or belong to a server that is not running.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use spool_api::commands::{self, KeyOptions, KeyState};
use spool_api::keys::{GeneratedKey, Mode};
use spool_log::{Append, Filter, Log, TypeFilter};
use spool_schemas::{Event, KeyCreated, KeyId, Payload, Scope, StreamName, TenantId};

use crate::config::Config;

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant and an admin key for it (printed once).
    Create {
        #[arg(long)]
        name: String,
        /// Print `{"tenant", "key_id", "key"}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Issue a key (printed once).
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Repeatable; default `events:read` and `events:write`.
        #[arg(long = "scope")]
        scopes: Vec<Scope>,
        /// RFC 3339; the key stops working then.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
        /// A test-mode (`spk_test_`) key: it reads and writes the tenant's
        /// sandbox data only.
        #[arg(long)]
        test: bool,
        /// Print `{"tenant", "key_id", "key", "mode"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's keys of both modes, revoked ones included (never a
    /// secret).
    List {
        #[arg(long)]
        tenant: TenantId,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; it stops authenticating within a second.
    Revoke { key_id: KeyId },
}

pub(crate) async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let log = config.open_log(false).await?;
    let result = match command {
        AdminCommand::Tenant(TenantCommand::Create { name, json }) => {
            let created = commands::new_tenant(&name, "admin");
            log.append(Append::new(created.events)).await?;
            print_key(created.tenant, &created.key, json, "admin key");
            Ok(())
        }
        AdminCommand::Key(KeyCommand::Create { tenant, name, scopes, expires_at, test, json }) => {
            let mode = if test { Mode::Test } else { Mode::Live };
            create_key(&*log, tenant, KeyOptions { name, scopes, expires_at, mode }, json).await
        }
        AdminCommand::Key(KeyCommand::List { tenant, json }) => {
            list_keys(&*log, tenant, json).await
        }
        AdminCommand::Key(KeyCommand::Revoke { key_id }) => revoke_key(&*log, key_id).await,
    };
    // Close even when the command failed, so that nothing queued is lost;
    // the command's own error is the one worth reporting.
    let closed = log.close().await;
    result?;
    closed?;
    Ok(())
}

/// Prints a new key; `tenant` is the live tenant, whatever the key's mode.
fn print_key(tenant: TenantId, key: &GeneratedKey, json: bool, label: &str) {
    let mode = spool_api::keys::parse(&key.secret).unwrap_or(Mode::Live).as_str();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tenant": tenant.to_string(),
                "key_id": key.key_id.to_string(),
                "key": key.secret,
                "mode": mode,
            })
        );
    } else {
        println!("tenant: {tenant}");
        println!("key id: {}", key.key_id);
        println!("mode: {mode}");
        println!("{label}: {}", key.secret);
        eprintln!("the key above is shown only once; store it now");
    }
}

async fn create_key(
    log: &dyn Log,
    tenant: TenantId,
    options: KeyOptions,
    json: bool,
) -> anyhow::Result<()> {
    // A sandbox twin has no `tenant.created` of its own: its live tenant's
    // is what says it exists.
    let tenant = tenant.live();
    // The log, not the views, is the authority: the views may lag.
    let created = log.read_stream(tenant, &StreamName::for_tenant(tenant), 1, 1).await?;
    if created.is_empty() {
        bail!("no tenant {tenant} in the log");
    }
    let (key, event) = commands::new_key(tenant, options);
    log.append(Append::new(vec![event])).await?;
    print_key(tenant, &key, json, "key");
    Ok(())
}

/// How often a revocation that lost a race with another append to the
/// key's stream is attempted again.
const REVOKE_ATTEMPTS: usize = 5;

async fn revoke_key(log: &dyn Log, key_id: KeyId) -> anyhow::Result<()> {
    let tenant = find_key_tenant(log, key_id)
        .await?
        .with_context(|| format!("no key {key_id} in the log"))?;
    for _ in 0..REVOKE_ATTEMPTS {
        let key = commands::read_key(log, tenant, key_id)
            .await?
            .with_context(|| format!("key {key_id} has no `key.created` in its stream"))?;
        if key.revoked {
            println!("key {key_id} was already revoked");
            return Ok(());
        }
        // Expecting the version just read: if another revocation (or any
        // event of the key) lands in between, this append is refused and
        // the check above runs again, so a key is revoked once.
        match log.append(key.change(commands::key_revoked(tenant, key_id))).await {
            Ok(_) => {
                println!("revoked {key_id}");
                return Ok(());
            }
            Err(spool_log::Error::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    bail!("key {key_id} kept changing while being revoked; try again")
}

/// Every key of `tenant` and of its sandbox twin, as the log holds them,
/// oldest first.
async fn list_keys(log: &dyn Log, tenant: TenantId, json: bool) -> anyhow::Result<()> {
    let tenant = tenant.live();
    let created = log.read_stream(tenant, &StreamName::for_tenant(tenant), 1, 1).await?;
    if created.is_empty() {
        bail!("no tenant {tenant} in the log");
    }
    let mut keys: Vec<KeyState> = Vec::new();
    for owner in [tenant, tenant.test_twin()] {
        let filter = Filter { tenant: Some(owner), ..key_created_filter() };
        for (_, key_id) in scan_key_created(log, &filter, |_| false).await? {
            let key = commands::read_key(log, owner, key_id)
                .await?
                .with_context(|| format!("key {key_id} has no `key.created` in its stream"))?;
            keys.push(key);
        }
    }
    keys.sort_by(|a, b| {
        (a.created_at, a.key_id.to_string()).cmp(&(b.created_at, b.key_id.to_string()))
    });
    let now = Utc::now();
    let status = |key: &KeyState| match key.expires_at {
        _ if key.revoked => "revoked",
        Some(expires_at) if expires_at <= now => "expired",
        _ => "active",
    };
    let scopes = |key: &KeyState| key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>();
    if json {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "key_id": key.key_id.to_string(),
                    "mode": Mode::of(key.tenant).as_str(),
                    "name": key.name,
                    "scopes": scopes(key),
                    "expires_at": key.expires_at,
                    "status": status(key),
                    "rolls": key.rolls,
                    "created_at": key.created_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(keys));
        return Ok(());
    }
    println!(
        "{:<36}  {:<4}  {:<7}  {:<20}  {:<25}  scopes",
        "key id", "mode", "status", "name", "expires"
    );
    for key in &keys {
        let expires = key.expires_at.map_or("never".to_owned(), |at| at.to_rfc3339());
        println!(
            "{:<36}  {:<4}  {:<7}  {:<20}  {:<25}  {}",
            key.key_id,
            Mode::of(key.tenant).as_str(),
            status(key),
            key.name,
            expires,
            scopes(key).join(" ")
        );
    }
    Ok(())
}

fn key_created_filter() -> Filter {
    Filter { types: vec![TypeFilter::Exact(KeyCreated::TYPE.to_owned())], ..Filter::default() }
}

/// The (tenant, key id) of every `key.created` that `filter` passes, in
/// log order, up to and including the first that `stop` accepts.
async fn scan_key_created(
    log: &dyn Log,
    filter: &Filter,
    stop: impl Fn(KeyId) -> bool,
) -> anyhow::Result<Vec<(TenantId, KeyId)>> {
    let mut found = Vec::new();
    let mut after = spool_log::Cursor::start(log.partitions());
    loop {
        let page = spool_log::read_page(log, &after, 1_000, filter, usize::MAX).await?;
        for event in &page.events {
            if let Event::KeyCreated(created) = event.event()? {
                found.push((event.tenant, created.key_id));
                if stop(created.key_id) {
                    return Ok(found);
                }
            }
        }
        if !page.more {
            return Ok(found);
        }
        after = page.next;
    }
}

/// The tenant of a key, from its `key.created` event. Scans the log's
/// `key.created` events: key management is rare and the log is the
/// authority, whereas the views may lag behind it.
async fn find_key_tenant(log: &dyn Log, key_id: KeyId) -> anyhow::Result<Option<TenantId>> {
    let found = scan_key_created(log, &key_created_filter(), |found| found == key_id).await?;
    Ok(found.into_iter().find(|(_, found)| *found == key_id).map(|(tenant, _)| tenant))
}
