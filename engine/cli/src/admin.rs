//! `spool admin`: tenants and API keys, appended straight to the log. Safe
//! while a server runs; the server sees a new key within a fraction of a
//! second (it notices foreign appends, then its auth projection applies it).

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use spool_api::keys::{self, GeneratedKey};
use spool_log::{Append, Filter, Log, NewEvent, TypeFilter};
use spool_schemas::{
    Event, KeyCreated, KeyId, KeyRevoked, Payload, Position, Scope, StreamName, TenantCreated,
    TenantId,
};

use crate::datadir::DataDir;

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

pub(crate) async fn run(data_dir: &DataDir, command: AdminCommand) -> anyhow::Result<()> {
    let log = data_dir.open_log_writer().await?;
    let result = match command {
        AdminCommand::Tenant(TenantCommand::Create { name, json }) => {
            let (tenant, key, events) = new_tenant(&name, "admin");
            log.append(Append::new(events)).await?;
            print_key(tenant, &key, json, "admin key");
            Ok(())
        }
        AdminCommand::Key(KeyCommand::Create { tenant, name, scopes, expires_at, json }) => {
            create_key(&*log, tenant, name, scopes, expires_at, json).await
        }
        AdminCommand::Key(KeyCommand::Revoke { key_id }) => revoke_key(&*log, key_id).await,
    };
    log.close().await?;
    result
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

/// The events that create a tenant with one admin key: `tenant.created`
/// (stream `tenant/<id>`) and `key.created` (stream `key/<key_id>`), to be
/// appended together.
pub(crate) fn new_tenant(name: &str, key_name: &str) -> (TenantId, GeneratedKey, Vec<NewEvent>) {
    let tenant = TenantId::new();
    let key = keys::generate();
    let events = vec![
        NewEvent::new(
            tenant,
            tenant_stream(tenant),
            Event::TenantCreated(TenantCreated { name: name.to_owned() }),
        ),
        key_created(tenant, &key, key_name, vec![Scope::Admin], None),
    ];
    (tenant, key, events)
}

fn key_created(
    tenant: TenantId,
    key: &GeneratedKey,
    name: &str,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
) -> NewEvent {
    NewEvent::new(
        tenant,
        key_stream(key.key_id),
        Event::KeyCreated(KeyCreated {
            key_id: key.key_id,
            name: name.to_owned(),
            secret_hash: key.secret_hash.clone(),
            scopes,
            expires_at,
        }),
    )
}

fn tenant_stream(tenant: TenantId) -> StreamName {
    StreamName::new(format!("tenant/{tenant}")).expect("ids make valid stream names")
}

fn key_stream(key_id: KeyId) -> StreamName {
    StreamName::new(format!("key/{key_id}")).expect("ids make valid stream names")
}

async fn create_key(
    log: &dyn Log,
    tenant: TenantId,
    name: String,
    mut scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<()> {
    // The log, not the views, is the authority: the views may lag.
    let created = log.read_stream(tenant, &tenant_stream(tenant), 1, 1).await?;
    if created.is_empty() {
        bail!("no tenant {tenant} in the log");
    }
    if scopes.is_empty() {
        scopes = vec![Scope::EventsRead, Scope::EventsWrite];
    }
    scopes.sort();
    scopes.dedup();
    let key = keys::generate();
    log.append(Append::new(vec![key_created(tenant, &key, &name, scopes, expires_at)])).await?;
    print_key(tenant, &key, json, "key");
    Ok(())
}

async fn revoke_key(log: &dyn Log, key_id: KeyId) -> anyhow::Result<()> {
    let tenant = find_key_tenant(log, key_id)
        .await?
        .with_context(|| format!("no key {key_id} in the log"))?;
    let history = log.read_stream(tenant, &key_stream(key_id), 1, 1_000).await?;
    if history.iter().any(|event| event.type_name == KeyRevoked::TYPE) {
        println!("key {key_id} was already revoked");
        return Ok(());
    }
    log.append(Append::new(vec![NewEvent::new(
        tenant,
        key_stream(key_id),
        Event::KeyRevoked(KeyRevoked { key_id }),
    )]))
    .await?;
    println!("revoked {key_id}");
    Ok(())
}

/// The tenant of a key, from its `key.created` event. Scans the log's
/// `key.created` events: key management is rare and the log is the
/// authority, whereas the views may lag behind it.
async fn find_key_tenant(log: &dyn Log, key_id: KeyId) -> anyhow::Result<Option<TenantId>> {
    let filter =
        Filter { types: vec![TypeFilter::Exact(KeyCreated::TYPE.to_owned())], ..Filter::default() };
    let head = *log.head().borrow();
    let mut after = Position::ZERO;
    while after < head {
        let batch = log.read(after, 1_000, &filter).await?;
        for event in &batch.events {
            if let Event::KeyCreated(created) = event.event()?
                && created.key_id == key_id
            {
                return Ok(Some(event.tenant));
            }
        }
        if batch.scanned_to <= after {
            break;
        }
        after = batch.scanned_to;
    }
    Ok(None)
}
