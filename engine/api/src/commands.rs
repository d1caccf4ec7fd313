//! The events that manage tenants and keys, built in one place so that the
//! CLI's `spool admin` and (later) the key routes of the API append the
//! same thing. Building is pure apart from drawing ids and key secrets;
//! appending, and checking what the log holds first, is the caller's.

use chrono::{DateTime, Utc};
use spool_log::NewEvent;
use spool_schemas::{
    Event, KeyCreated, KeyId, KeyRevoked, Scope, StreamName, TenantCreated, TenantId,
};

use crate::keys::{self, GeneratedKey};

/// A new tenant with one admin key: the events to append together, and the
/// key's secret to show once.
#[derive(Debug)]
pub struct NewTenant {
    pub tenant: TenantId,
    pub key: GeneratedKey,
    /// `tenant.created` (stream `tenant/<id>`), then `key.created` (stream
    /// `key/<key_id>`).
    pub events: Vec<NewEvent>,
}

/// A tenant named `name`, with an admin key named `key_name`.
pub fn new_tenant(name: &str, key_name: &str) -> NewTenant {
    let tenant = TenantId::new();
    let key = keys::generate();
    let events = vec![
        NewEvent::new(
            tenant,
            StreamName::for_tenant(tenant),
            Event::TenantCreated(TenantCreated { name: name.to_owned() }),
        ),
        key_created(tenant, &key, key_name, vec![Scope::Admin], None),
    ];
    NewTenant { tenant, key, events }
}

/// What a new key of an existing tenant may do.
#[derive(Clone, Debug)]
pub struct KeyOptions {
    pub name: String,
    /// Sorted and deduplicated; empty means `events:read` and `events:write`.
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new key of `tenant` (which the caller has checked exists): the key to
/// show once and its `key.created` event.
pub fn new_key(tenant: TenantId, options: KeyOptions) -> (GeneratedKey, NewEvent) {
    let mut scopes = options.scopes;
    if scopes.is_empty() {
        scopes = vec![Scope::EventsRead, Scope::EventsWrite];
    }
    scopes.sort();
    scopes.dedup();
    let key = keys::generate();
    let event = key_created(tenant, &key, &options.name, scopes, options.expires_at);
    (key, event)
}

/// The `key.revoked` event of a key of `tenant`. Append it expecting the
/// key's stream at the version it was read at, so that two revocations
/// racing each other store one event.
pub fn key_revoked(tenant: TenantId, key_id: KeyId) -> NewEvent {
    NewEvent::new(tenant, StreamName::for_key(key_id), Event::KeyRevoked(KeyRevoked { key_id }))
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
        StreamName::for_key(key.key_id),
        Event::KeyCreated(KeyCreated {
            key_id: key.key_id,
            name: name.to_owned(),
            secret_hash: key.secret_hash.clone(),
            scopes,
            expires_at,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tenant_is_created_with_an_admin_key_whose_hash_is_stored() {
        let created = new_tenant("acme", "admin");
        let streams: Vec<&str> = created.events.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(
            streams,
            [format!("tenant/{}", created.tenant), format!("key/{}", created.key.key_id)]
        );
        assert!(created.events.iter().all(|event| event.tenant == created.tenant));
        let Event::KeyCreated(key) = &created.events[1].event else { panic!("not key.created") };
        assert_eq!(key.scopes, [Scope::Admin]);
        assert_eq!(key.secret_hash, keys::hash_secret(&created.key.secret));
    }

    #[test]
    fn a_new_key_defaults_to_reading_and_writing_events() {
        let tenant = TenantId::new();
        let options = KeyOptions { name: "ci".into(), scopes: Vec::new(), expires_at: None };
        let (_, event) = new_key(tenant, options);
        let Event::KeyCreated(key) = event.event else { panic!("not key.created") };
        assert_eq!(key.scopes, [Scope::EventsRead, Scope::EventsWrite]);
        let repeated = KeyOptions {
            name: "ci".into(),
            scopes: vec![Scope::Admin, Scope::EventsRead, Scope::Admin],
            expires_at: None,
        };
        let Event::KeyCreated(key) = new_key(tenant, repeated).1.event else { panic!() };
        assert_eq!(key.scopes, [Scope::EventsRead, Scope::Admin]);
    }
}
