//! `spool admin`: tenants and API keys, appended straight to the log. Safe
//! while a server runs; the server sees a new key within a fraction of a
//! second (it notices foreign appends, then its auth projection applies it).

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use spool_api::commands::{self, KeyOptions};
use spool_api::keys::GeneratedKey;
use spool_log::{Append, Filter, Log, StoredEvent, TypeFilter};
use spool_schemas::{Event, KeyCreated, KeyId, KeyRevoked, Payload, Scope, StreamName, TenantId};

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
        /// Print `{"tenant", "key_id", "key"}` as JSON.
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
        AdminCommand::Key(KeyCommand::Create { tenant, name, scopes, expires_at, json }) => {
            create_key(&*log, tenant, KeyOptions { name, scopes, expires_at }, json).await
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

fn print_key(tenant: TenantId, key: &GeneratedKey, json: bool, label: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tenant": tenant.to_string(),
                "key_id": key.key_id.to_string(),
                "key": key.secret,
            })
        );
    } else {
        println!("tenant: {tenant}");
        println!("key id: {}", key.key_id);
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
    let stream = StreamName::for_key(key_id);
    for _ in 0..REVOKE_ATTEMPTS {
        let history = read_whole_stream(log, tenant, &stream).await?;
        if history.iter().any(|event| event.type_name == KeyRevoked::TYPE) {
            println!("key {key_id} was already revoked");
            return Ok(());
        }
        let version = history.last().map_or(0, |event| event.stream_version);
        // Expecting the version just read: if another revocation (or any
        // event of the key) lands in between, this append is refused and
        // the check above runs again, so a key is revoked once.
        let append = Append::new(vec![commands::key_revoked(tenant, key_id)]).expect(
            tenant,
            stream.clone(),
            version,
        );
        match log.append(append).await {
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

async fn read_whole_stream(
    log: &dyn Log,
    tenant: TenantId,
    stream: &StreamName,
) -> anyhow::Result<Vec<StoredEvent>> {
    let mut events: Vec<StoredEvent> = Vec::new();
    loop {
        let from = events.last().map_or(1, |event| event.stream_version + 1);
        let batch = log.read_stream(tenant, stream, from, 1_000).await?;
        let done = batch.len() < 1_000;
        events.extend(batch);
        if done {
            return Ok(events);
        }
    }
}

/// The tenant of a key, from its `key.created` event. Scans the log's
/// `key.created` events: key management is rare and the log is the
/// authority, whereas the views may lag behind it.
async fn find_key_tenant(log: &dyn Log, key_id: KeyId) -> anyhow::Result<Option<TenantId>> {
    let filter =
        Filter { types: vec![TypeFilter::Exact(KeyCreated::TYPE.to_owned())], ..Filter::default() };
    let mut after = spool_log::Cursor::start(log.partitions());
    loop {
        let page = spool_log::read_page(log, &after, 1_000, &filter, usize::MAX).await?;
        for event in &page.events {
            if let Event::KeyCreated(created) = event.event()?
                && created.key_id == key_id
            {
                return Ok(Some(event.tenant));
            }
        }
        if !page.more {
            return Ok(None);
        }
        after = page.next;
    }
}
