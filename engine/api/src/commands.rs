//! The events that manage tenants and keys, built in one place so that the
//! CLI's `spool admin` and the key routes of the API append the same
//! thing, and the one fold of a key's stream both decide on. Building is
//! pure apart from drawing ids and key secrets; appending is the caller's.
//!
//! A key's events all live in its stream, `key/<key_id>`, under the key's
//! tenant (the sandbox twin for a test-mode key). Changes are appended
//! expecting the stream at the version they were decided on
//! ([`KeyState::change`]), so two changes racing each other cannot both
//! land: a revocation and a roll, or two rolls, are ordered, never merged.

use chrono::{DateTime, Utc};
use spool_log::{Append, Log, NewEvent, StoredEvent};
use spool_schemas::{
    Event, KeyCreated, KeyId, KeyRevoked, KeyRolled, Scope, StreamName, TenantCreated, TenantId,
};

use crate::keys::{self, GeneratedKey, Mode};

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

/// A tenant named `name`, with a live-mode admin key named `key_name`.
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
    /// A test-mode key belongs to the tenant's sandbox twin.
    pub mode: Mode,
}

/// A new key of `tenant` (live or its twin; the caller has checked it
/// exists), in the tenant of its mode: the key to show once and its
/// `key.created` event.
pub fn new_key(tenant: TenantId, options: KeyOptions) -> (GeneratedKey, NewEvent) {
    let mut scopes = options.scopes;
    if scopes.is_empty() {
        scopes = vec![Scope::EventsRead, Scope::EventsWrite];
    }
    scopes.sort();
    scopes.dedup();
    let key = keys::generate_in(options.mode);
    let event =
        key_created(options.mode.tenant(tenant), &key, &options.name, scopes, options.expires_at);
    (key, event)
}

/// A new secret for `key`, of its mode, and the `key.rolled` event that
/// ends its earlier secrets at `previous_secrets_expire_at`. Append it with
/// [`KeyState::change`].
pub fn roll_key(
    key: &KeyState,
    previous_secrets_expire_at: DateTime<Utc>,
) -> (GeneratedKey, NewEvent) {
    let secret = keys::new_secret(Mode::of(key.tenant));
    let rolled =
        GeneratedKey { key_id: key.key_id, secret_hash: keys::hash_secret(&secret), secret };
    let event = NewEvent::new(
        key.tenant,
        StreamName::for_key(key.key_id),
        Event::KeyRolled(KeyRolled {
            key_id: key.key_id,
            secret_hash: rolled.secret_hash.clone(),
            previous_secrets_expire_at,
        }),
    );
    (rolled, event)
}

/// The `key.revoked` event of a key of `tenant`. Append it with
/// [`KeyState::change`], so that two revocations racing each other store
/// one event.
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

/// A key as its stream in the log tells it. The log is the authority for
/// changing a key: the read model may not have applied an append just made.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyState {
    pub key_id: KeyId,
    /// The key's tenant: a live tenant, or a sandbox twin.
    pub tenant: TenantId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked: bool,
    /// How often the key was rolled.
    pub rolls: u32,
    /// The stream's version the state was read at.
    pub version: u64,
}

impl KeyState {
    /// `event` (of this key's stream) as an append that fails with a
    /// version conflict if the key changed since this state was read.
    pub fn change(&self, event: NewEvent) -> Append {
        Append::new(vec![event]).expect(self.tenant, StreamName::for_key(self.key_id), self.version)
    }
}

/// Folds the events of one key's stream, oldest first; `None` when they do
/// not begin with its `key.created`. Events of other types (there are none
/// today) are passed over.
pub fn fold_key(events: &[StoredEvent]) -> spool_log::Result<Option<KeyState>> {
    let mut state: Option<KeyState> = None;
    for event in events {
        let decoded = event.event().map_err(|source| spool_log::Error::Decode {
            position: event.position.0,
            source: source.into(),
        })?;
        match (&mut state, decoded) {
            (None, Event::KeyCreated(created)) => {
                state = Some(KeyState {
                    key_id: created.key_id,
                    tenant: event.tenant,
                    name: created.name,
                    scopes: created.scopes,
                    expires_at: created.expires_at,
                    created_at: event.recorded_at,
                    revoked: false,
                    rolls: 0,
                    version: event.stream_version,
                });
            }
            (Some(key), Event::KeyRolled(_)) => {
                key.rolls += 1;
                key.version = event.stream_version;
            }
            (Some(key), Event::KeyRevoked(_)) => {
                key.revoked = true;
                key.version = event.stream_version;
            }
            (Some(key), _) => key.version = event.stream_version,
            (None, _) => return Ok(None),
        }
    }
    Ok(state)
}

/// The key `key_id` of `tenant` as the log holds it now; `None` when the
/// tenant has no such key (another tenant's key included).
pub async fn read_key(
    log: &dyn Log,
    tenant: TenantId,
    key_id: KeyId,
) -> spool_log::Result<Option<KeyState>> {
    /// A key's stream holds a handful of events; a page this size is
    /// the whole of it, except for a key rolled a thousand times.
    const PAGE: usize = 1_000;
    let stream = StreamName::for_key(key_id);
    let mut events: Vec<StoredEvent> = Vec::new();
    loop {
        let from = events.last().map_or(1, |event| event.stream_version + 1);
        let batch = log.read_stream(tenant, &stream, from, PAGE).await?;
        let done = batch.len() < PAGE;
        events.extend(batch);
        if done {
            return fold_key(&events);
        }
    }
}

#[cfg(test)]
mod tests {
    use spool_log::MemoryLog;

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

    fn options(scopes: Vec<Scope>, mode: Mode) -> KeyOptions {
        KeyOptions { name: "ci".into(), scopes, expires_at: None, mode }
    }

    #[test]
    fn a_new_key_defaults_to_reading_and_writing_events() {
        let tenant = TenantId::new();
        let (_, event) = new_key(tenant, options(Vec::new(), Mode::Live));
        let Event::KeyCreated(key) = event.event else { panic!("not key.created") };
        assert_eq!(key.scopes, [Scope::EventsRead, Scope::EventsWrite]);
        let repeated = options(vec![Scope::Admin, Scope::EventsRead, Scope::Admin], Mode::Live);
        let Event::KeyCreated(key) = new_key(tenant, repeated).1.event else { panic!() };
        assert_eq!(key.scopes, [Scope::EventsRead, Scope::Admin]);
    }

    #[test]
    fn a_test_key_belongs_to_the_sandbox_twin_and_says_so_in_its_text() {
        let tenant = TenantId::new();
        let (key, event) = new_key(tenant, options(vec![Scope::Admin], Mode::Test));
        assert_eq!(event.tenant, tenant.test_twin());
        assert_eq!(keys::parse(&key.secret), Ok(Mode::Test));
        // Asked of the twin itself, the same.
        let (_, again) = new_key(tenant.test_twin(), options(vec![Scope::Admin], Mode::Test));
        assert_eq!(again.tenant, tenant.test_twin());
    }

    #[tokio::test]
    async fn a_keys_stream_folds_to_its_state_and_changes_expect_its_version() {
        let log = MemoryLog::new();
        let tenant = TenantId::new().test_twin();
        let (key, created) = new_key(tenant, options(vec![Scope::EventsRead], Mode::Test));
        log.append(Append::new(vec![created])).await.unwrap();
        assert_eq!(read_key(&log, tenant.live(), key.key_id).await.unwrap(), None);

        let state = read_key(&log, tenant, key.key_id).await.unwrap().expect("stored");
        assert_eq!((state.version, state.rolls, state.revoked), (1, 0, false));
        let (rolled, roll) = roll_key(&state, Utc::now());
        assert_eq!(keys::parse(&rolled.secret), Ok(Mode::Test));
        assert_eq!(rolled.key_id, key.key_id);
        log.append(state.change(roll)).await.unwrap();

        // A change decided on the state before the roll is refused.
        let stale = state.change(key_revoked(tenant, key.key_id));
        assert!(matches!(log.append(stale).await, Err(spool_log::Error::Conflict(_))));
        let state = read_key(&log, tenant, key.key_id).await.unwrap().unwrap();
        assert_eq!((state.version, state.rolls, state.revoked), (2, 1, false));
        log.append(state.change(key_revoked(tenant, key.key_id))).await.unwrap();
        let state = read_key(&log, tenant, key.key_id).await.unwrap().unwrap();
        assert_eq!((state.version, state.revoked), (3, true));
    }
}
