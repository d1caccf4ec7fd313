//! The built-in read models and their typed queries: event counts per
//! minute with filters, and the auth state.

use std::sync::Arc;

use crate::support::*;
use chrono::Duration;
use spool_projections::auth::{self, KeyRecord, TenantRecord};
use spool_projections::event_counts::{self, EventCountsQuery, MinuteCount};
use spool_projections::{Error, Views};
use spool_schemas::{KeyId, Position, Scope, TenantId};

async fn rebuild_all(log: Arc<dyn spool_log::Log>, views: &Views) {
    for projection in spool_projections::builtin() {
        spool_projections::rebuild(log.clone(), views, projection, |_| {}).await.expect("rebuild");
    }
}

fn row(minute: &str, event_type: &str, count: u64) -> MinuteCount {
    MinuteCount { minute: at(minute), event_type: event_type.into(), count }
}

pub(crate) async fn event_counts_are_per_tenant_type_and_minute_and_filter_by_time_and_type(
    kind: Kind,
) {
    let log = memory_log();
    let store = kind.open().await;
    let (acme, globex) = (TenantId::new(), TenantId::new());
    append(
        log.as_ref(),
        vec![
            app(acme, "order.created", at("2026-03-01T10:00:01Z")),
            app(acme, "order.created", at("2026-03-01T10:00:59.999999Z")),
            app(acme, "order.shipped", at("2026-03-01T10:00:30Z")),
            app(acme, "orders.archived", at("2026-03-01T10:01:00Z")),
            app(acme, "order.created", at("2026-03-01T10:02:10Z")),
            app(globex, "order.created", at("2026-03-01T10:00:05Z")),
            tenant_created(acme, "Acme", at("2026-03-01T09:59:00Z")),
        ],
    )
    .await;
    rebuild_all(log, &store.views).await;
    let query = |from: Option<&str>, to: Option<&str>, event_type: Option<&str>| EventCountsQuery {
        from: from.map(at),
        to: to.map(at),
        event_type: event_type.map(str::to_owned),
    };
    let run = |q: EventCountsQuery, tenant| {
        let views = store.views.clone();
        async move { event_counts::query(&views, tenant, &q).await.expect("query") }
    };

    assert_eq!(
        run(query(None, None, None), acme).await,
        [
            row("2026-03-01T09:59:00Z", "tenant.created", 1),
            row("2026-03-01T10:00:00Z", "order.created", 2),
            row("2026-03-01T10:00:00Z", "order.shipped", 1),
            row("2026-03-01T10:01:00Z", "orders.archived", 1),
            row("2026-03-01T10:02:00Z", "order.created", 1),
        ]
    );
    assert_eq!(
        run(query(None, None, None), globex).await,
        [row("2026-03-01T10:00:00Z", "order.created", 1)],
        "tenants never see each other's counts"
    );
    assert!(run(query(None, None, None), TenantId::new()).await.is_empty());

    // `from` inclusive, `to` exclusive, both against the minute's start.
    assert_eq!(
        run(query(Some("2026-03-01T10:00:00Z"), Some("2026-03-01T10:02:00Z"), None), acme).await,
        [
            row("2026-03-01T10:00:00Z", "order.created", 2),
            row("2026-03-01T10:00:00Z", "order.shipped", 1),
            row("2026-03-01T10:01:00Z", "orders.archived", 1),
        ]
    );
    assert_eq!(
        run(query(Some("2026-03-01T10:00:00.5Z"), Some("2026-03-01T10:01:00.5Z"), None), acme)
            .await,
        [row("2026-03-01T10:01:00Z", "orders.archived", 1)]
    );

    assert_eq!(
        run(query(None, None, Some("order.created")), acme).await,
        [
            row("2026-03-01T10:00:00Z", "order.created", 2),
            row("2026-03-01T10:02:00Z", "order.created", 1),
        ]
    );
    // `order.*` is a prefix up to the dot: `orders.archived` is not in it.
    assert_eq!(
        run(query(None, Some("2026-03-01T10:02:00Z"), Some("order.*")), acme).await,
        [
            row("2026-03-01T10:00:00Z", "order.created", 2),
            row("2026-03-01T10:00:00Z", "order.shipped", 1),
        ]
    );
    assert_eq!(run(query(None, None, Some("*")), acme).await.len(), 5);
    assert!(run(query(None, None, Some("order")), acme).await.is_empty());
}

pub(crate) async fn typed_queries_answer_before_anything_is_built(kind: Kind) {
    let store = kind.open().await;
    assert!(counts(&store.views, TenantId::new()).await.is_empty());
    assert_eq!(auth::tenants(&store.views).await.expect("tenants"), []);
    assert_eq!(auth::key_by_secret_hash(&store.views, "ab").await.expect("key"), None);
}

pub(crate) async fn the_auth_model_folds_tenants_keys_and_revocations(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let (acme, globex) = (TenantId::new(), TenantId::new());
    let (admin_key, ci_key) = (KeyId::new(), KeyId::new());
    let t0 = at("2026-03-01T10:00:00.000001Z");
    let expiry = at("2027-01-01T00:00:00.123456789Z");
    append(
        log.as_ref(),
        vec![
            tenant_created(acme, "Acme", t0),
            tenant_created(globex, "Globex", t0 + Duration::seconds(1)),
            key_created(
                acme,
                admin_key,
                "aa11",
                vec![Scope::Admin],
                None,
                t0 + Duration::seconds(2),
            ),
            key_created(
                globex,
                ci_key,
                "bb22",
                vec![Scope::EventsRead, Scope::EventsWrite],
                Some(expiry),
                t0 + Duration::seconds(3),
            ),
            app(acme, "order.created", t0 + Duration::seconds(4)),
        ],
    )
    .await;
    let running = Running::start(log.clone(), &store.views, spool_projections::builtin(), 2);
    running.handle.wait_for(Position(5)).await.expect("caught up");

    let ci = KeyRecord {
        key_id: ci_key,
        tenant: globex,
        name: "ci".into(),
        scopes: vec![Scope::EventsRead, Scope::EventsWrite],
        expires_at: Some(expiry),
        revoked: false,
        created_at: t0 + Duration::seconds(3),
    };
    assert_eq!(auth::key_by_secret_hash(&store.views, "bb22").await.expect("q"), Some(ci.clone()));
    assert_eq!(auth::key(&store.views, ci_key).await.expect("q"), Some(ci.clone()));
    assert_eq!(auth::key_by_secret_hash(&store.views, "cc33").await.expect("q"), None);
    assert_eq!(
        auth::tenant(&store.views, acme).await.expect("q"),
        Some(TenantRecord { tenant: acme, name: "Acme".into(), created_at: t0 })
    );
    let names: Vec<_> =
        auth::tenants(&store.views).await.expect("q").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["Acme", "Globex"]);
    let admin = auth::key(&store.views, admin_key).await.expect("q").expect("admin key");
    assert_eq!((admin.tenant, admin.scopes, admin.expires_at), (acme, vec![Scope::Admin], None));
    assert_eq!(auth::keys(&store.views, globex).await.expect("q"), std::slice::from_ref(&ci));

    let revoked =
        append(log.as_ref(), vec![key_revoked(globex, ci_key, t0 + Duration::seconds(9))]).await;
    running.handle.wait_for(revoked).await.expect("caught up");
    let after = auth::key_by_secret_hash(&store.views, "bb22").await.expect("q").expect("kept");
    assert_eq!(after, KeyRecord { revoked: true, ..ci });

    // Revoking through another tenant is not a revocation: the fold stops.
    let wrong =
        append(log.as_ref(), vec![key_revoked(acme, ci_key, t0 + Duration::seconds(10))]).await;
    let error = running.handle.wait_for(wrong).await.expect_err("auth fails");
    assert!(
        matches!(&error, Error::Failed { projection: "auth", message } if message.contains(&format!("position {wrong}"))),
        "{error}"
    );
    running.stop().await.expect_err("failure reported");
}

/// A roll adds a secret and ends the earlier ones at its stated time; an
/// earlier end an old secret already had stays.
pub(crate) async fn the_auth_model_keeps_rolled_secrets_until_their_stated_end(kind: Kind) {
    let log = memory_log();
    let store = kind.open().await;
    let tenant = TenantId::new().test_twin();
    let key_id = KeyId::new();
    let t0 = at("2026-03-01T10:00:00Z");
    let rolled = |hash: &str, ends: chrono::DateTime<chrono::Utc>, recorded_at| {
        let mut event = spool_log::NewEvent::new(
            tenant,
            spool_schemas::StreamName::for_key(key_id),
            spool_schemas::Event::KeyRolled(spool_schemas::KeyRolled {
                key_id,
                secret_hash: hash.into(),
                previous_secrets_expire_at: ends,
            }),
        );
        event.recorded_at = recorded_at;
        event
    };
    let (first_end, second_end) = (t0 + Duration::hours(2), t0 + Duration::hours(3));
    let last = append(
        log.as_ref(),
        vec![
            key_created(tenant, key_id, "aa", vec![Scope::EventsRead], None, t0),
            rolled("bb", first_end, t0 + Duration::hours(1)),
            rolled("cc", second_end, t0 + Duration::hours(2)),
        ],
    )
    .await;
    let running = Running::start(log.clone(), &store.views, spool_projections::builtin(), 2);
    running.handle.wait_for(last).await.expect("caught up");

    let end_of = |hash: &'static str| {
        let views = store.views.clone();
        async move {
            let found = auth::secret_by_hash(&views, hash).await.expect("q").expect("a secret");
            assert_eq!((found.key.key_id, found.key.tenant), (key_id, tenant));
            found.secret_expires_at
        }
    };
    assert_eq!(end_of("aa").await, Some(first_end), "the earlier end stays");
    assert_eq!(end_of("bb").await, Some(second_end));
    assert_eq!(end_of("cc").await, None, "the current secret lasts as long as the key");
    assert_eq!(auth::secret_by_hash(&store.views, "dd").await.expect("q"), None);
    assert_eq!(auth::keys(&store.views, tenant).await.expect("q").len(), 1);

    // A roll without grace ends every earlier secret at once.
    let now_end = t0 + Duration::hours(4);
    let last = append(log.as_ref(), vec![rolled("dd", now_end, now_end)]).await;
    running.handle.wait_for(last).await.expect("caught up");
    assert_eq!(end_of("aa").await, Some(first_end));
    assert_eq!(end_of("bb").await, Some(second_end));
    assert_eq!(end_of("cc").await, Some(now_end));
    assert_eq!(end_of("dd").await, None);
    running.stop().await.expect("stopped");
}
