//! The one conformance suite every log backend runs: the five guarantees
//! of ARCHITECTURE.md, with concurrent appenders and version conflicts.
//!
//! A backend's tests call [`conformance_suite!`](crate::conformance_suite)
//! with a [`Harness`] that opens fresh, empty logs.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use spool_schemas::{AppEvent, AppEventType, Event, EventId, Position, StreamName, TenantId};

use crate::{Append, Error, Filter, Log, NewEvent, StoredEvent, TypeFilter};

/// Opens logs for the suite.
pub trait Harness: Send + Sync {
    type Log: Log;
    /// A new, empty log of one partition.
    fn open(&self) -> impl Future<Output = Self::Log> + Send;
    /// A new, empty log of `partitions` partitions, or `None` for a backend
    /// that has only one.
    fn open_partitioned(&self, partitions: u32) -> impl Future<Output = Option<Self::Log>> + Send;
    /// Closes `log` and opens its storage again, or `None` for a backend
    /// that keeps nothing across opens.
    fn reopen(&self, log: Self::Log) -> impl Future<Output = Option<Self::Log>> + Send;
}

/// Generates one `#[tokio::test]` per guarantee for `$harness`.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            appends_read_back_in_order_with_gap_free_positions,
            acknowledged_appends_survive_reopening,
            a_version_conflict_fails_the_whole_append_and_writes_nothing,
            an_expected_version_of_zero_means_the_stream_is_new,
            an_event_id_already_stored_is_written_once,
            concurrent_appenders_get_gap_free_positions_and_one_winner_per_version,
            reads_filter_by_tenant_stream_and_type,
            streams_are_separate_per_tenant_and_read_from_a_version,
            tailing_sees_appends_made_after_it_started,
            find_returns_one_event_by_id,
            a_partitioned_log_orders_each_partition_and_keeps_a_stream_in_one,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case(&$harness).await;
            }
        )*
    };
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

fn app(tenant: TenantId, stream_name: &str, type_name: &str, n: u64) -> NewEvent {
    NewEvent::new(
        tenant,
        stream(stream_name),
        Event::App(AppEvent {
            event_type: AppEventType::new(type_name).unwrap(),
            data: serde_json::json!({ "n": n }),
        }),
    )
}

async fn read_all(log: &dyn Log) -> Vec<StoredEvent> {
    let mut events = Vec::new();
    let mut after = Position::ZERO;
    let head = *log.head(0).borrow();
    while after < head {
        let batch = log.read(0, after, 1_000, &Filter::default()).await.unwrap();
        assert!(batch.scanned_to > after, "read made no progress after {after}");
        after = batch.scanned_to;
        events.extend(batch.events);
    }
    events
}

fn assert_gap_free(events: &[StoredEvent]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.position, Position(index as u64 + 1), "positions must be gap-free");
    }
}

pub async fn appends_read_back_in_order_with_gap_free_positions(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    let first = log
        .append(Append::new(vec![app(tenant, "a", "t.one", 1), app(tenant, "b", "t.two", 2)]))
        .await
        .unwrap();
    let second = log.append(Append::new(vec![app(tenant, "a", "t.one", 3)])).await.unwrap();
    assert_eq!(first.iter().map(|a| a.position.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((second[0].position, second[0].stream_version), (Position(3), 2));
    assert_eq!(*log.head(0).borrow(), Position(3));

    let events = read_all(&log).await;
    assert_gap_free(&events);
    let payloads: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
    let envelope = events[2].envelope().unwrap();
    assert_eq!((envelope.stream.as_str(), envelope.stream_version), ("a", 2));
    assert_eq!(envelope.position, Some(Position(3)));
    assert!(log.append(Append::default()).await.unwrap().is_empty());
}

pub async fn acknowledged_appends_survive_reopening(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    let mut sent = Vec::new();
    for n in 0..20 {
        let event = app(tenant, &format!("s{}", n % 3), "t.kept", n);
        sent.push(event.clone());
        log.append(Append::new(vec![event])).await.unwrap();
    }
    let Some(log) = harness.reopen(log).await else {
        return;
    };
    let events = read_all(&log).await;
    assert_gap_free(&events);
    assert_eq!(
        events.iter().map(|e| e.id).collect::<Vec<_>>(),
        sent.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(events[19].recorded_at, sent[19].recorded_at);
    // The reopened log carries on where it stopped, versions included.
    let next = log.append(Append::new(vec![app(tenant, "s0", "t.kept", 99)])).await.unwrap();
    assert_eq!((next[0].position, next[0].stream_version), (Position(21), 8));
}

pub async fn a_version_conflict_fails_the_whole_append_and_writes_nothing(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    log.append(Append::new(vec![app(tenant, "order/1", "order.created", 1)])).await.unwrap();
    log.append(Append::new(vec![app(tenant, "order/2", "order.created", 2)])).await.unwrap();

    // Right about order/2, wrong about order/1: neither event is written.
    let append = Append::new(vec![
        app(tenant, "order/2", "order.paid", 3),
        app(tenant, "order/1", "order.paid", 4),
    ])
    .expect(tenant, stream("order/2"), 1)
    .expect(tenant, stream("order/1"), 5);
    match log.append(append).await {
        Err(Error::Conflict(conflict)) => {
            assert_eq!(conflict.stream, stream("order/1"));
            assert_eq!((conflict.expected, conflict.actual), (5, 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(*log.head(0).borrow(), Position(2));
    assert_eq!(read_all(&log).await.len(), 2);

    let right = Append::new(vec![app(tenant, "order/1", "order.paid", 5)]).expect(
        tenant,
        stream("order/1"),
        1,
    );
    let appended = log.append(right).await.unwrap();
    assert_eq!((appended[0].position, appended[0].stream_version), (Position(3), 2));
}

pub async fn an_expected_version_of_zero_means_the_stream_is_new(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    let create = || {
        Append::new(vec![app(tenant, "user/7", "user.created", 1)]).expect(
            tenant,
            stream("user/7"),
            0,
        )
    };
    log.append(create()).await.unwrap();
    assert!(matches!(log.append(create()).await, Err(Error::Conflict(_))));
    assert_eq!(read_all(&log).await.len(), 1);
}

pub async fn an_event_id_already_stored_is_written_once(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    let event = app(tenant, "s", "t.once", 1);
    let first = log.append(Append::new(vec![event.clone()])).await.unwrap();
    assert!(!first[0].already_stored);

    // A retry of the whole append, with an expectation that no longer holds,
    // is answered as the first attempt was.
    let retry =
        log.append(Append::new(vec![event.clone()]).expect(tenant, stream("s"), 0)).await.unwrap();
    assert_eq!((retry[0].position, retry[0].already_stored), (first[0].position, true));

    // Mixed with a new event, and twice in one append: still written once.
    let new = app(tenant, "s", "t.once", 2);
    let mixed =
        log.append(Append::new(vec![event.clone(), new.clone(), new.clone()])).await.unwrap();
    assert_eq!(mixed[0].position, Position(1));
    assert_eq!(
        (mixed[1].position, mixed[1].already_stored, mixed[1].stream_version),
        (Position(2), false, 2)
    );
    assert_eq!((mixed[2].position, mixed[2].already_stored), (Position(2), true));

    let events = read_all(&log).await;
    assert_eq!(events.len(), 2);
    assert_gap_free(&events);
}

pub async fn concurrent_appenders_get_gap_free_positions_and_one_winner_per_version(
    harness: &impl Harness,
) {
    let log: Arc<dyn Log> = Arc::new(harness.open().await);
    let tenant = TenantId::new();
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 25;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut won_shared = Vec::new();
            let own = format!("own/{writer}");
            for n in 0..APPENDS {
                // Its own stream, with the version it knows: never conflicts.
                let own_append =
                    Append::new(vec![app(tenant, &own, "t.own", n), app(tenant, &own, "t.own", n)])
                        .expect(tenant, stream(&own), 2 * n);
                log.append(own_append).await.unwrap();
                // The shared stream: read its version, race everyone for the next.
                let current =
                    log.read_stream(tenant, &stream("shared"), 1, 10_000).await.unwrap().len()
                        as u64;
                let claim = Append::new(vec![app(tenant, "shared", "t.shared", writer)]).expect(
                    tenant,
                    stream("shared"),
                    current,
                );
                match log.append(claim).await {
                    Ok(appended) => won_shared.push(appended[0].stream_version),
                    Err(Error::Conflict(conflict)) => assert!(conflict.actual > current),
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            won_shared
        }));
    }
    let mut won: Vec<u64> = Vec::new();
    for task in tasks {
        won.extend(task.await.unwrap());
    }
    won.sort_unstable();
    let shared_len = won.len() as u64;
    assert_eq!(
        won,
        (1..=shared_len).collect::<Vec<_>>(),
        "each shared version has exactly one winner"
    );

    let events = read_all(log.as_ref()).await;
    assert_gap_free(&events);
    assert_eq!(events.len() as u64, WRITERS * APPENDS * 2 + shared_len);
    let mut versions: HashMap<&str, Vec<u64>> = HashMap::new();
    for event in &events {
        versions.entry(event.stream.as_str()).or_default().push(event.stream_version);
    }
    for (name, seen) in versions {
        assert_eq!(
            seen,
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "stream {name} has gaps or disorder"
        );
    }
    let unique: BTreeSet<EventId> = events.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), events.len());
}

pub async fn reads_filter_by_tenant_stream_and_type(harness: &impl Harness) {
    let log = harness.open().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    log.append(Append::new(vec![
        app(a, "order/1", "order.created", 1),
        app(b, "order/1", "order.created", 2),
        app(a, "order/1", "order.shipped.late", 3),
        app(a, "invoice/1", "invoice.sent", 4),
        app(a, "order/2", "orders.legacy", 5),
    ]))
    .await
    .unwrap();
    let positions =
        |events: Vec<StoredEvent>| events.iter().map(|e| e.position.0).collect::<Vec<_>>();
    let read = |filter: Filter| {
        let log = &log;
        async move { log.read(0, Position::ZERO, 100, &filter).await.unwrap() }
    };
    assert_eq!(positions(read(Filter::tenant(a)).await.events), [1, 3, 4, 5]);
    let orders = Filter { types: vec![TypeFilter::parse("order.*")], ..Filter::tenant(a) };
    assert_eq!(positions(read(orders).await.events), [1, 3]);
    let by_stream = Filter { stream: Some(stream("order/1")), ..Filter::tenant(b) };
    assert_eq!(positions(read(by_stream).await.events), [2]);
    let either = Filter {
        types: vec![TypeFilter::parse("invoice.sent"), TypeFilter::parse("orders.legacy")],
        ..Filter::default()
    };
    assert_eq!(positions(read(either).await.events), [4, 5]);

    // A limit stops at the last returned event; reading on continues there.
    let limited = log.read(0, Position::ZERO, 2, &Filter::tenant(a)).await.unwrap();
    assert_eq!((positions(limited.events), limited.scanned_to), (vec![1, 3], Position(3)));
    let rest = log.read(0, Position(3), 100, &Filter::tenant(a)).await.unwrap();
    assert_eq!((positions(rest.events), rest.scanned_to), (vec![4, 5], Position(5)));
    let nothing = log.read(0, Position(5), 100, &Filter::default()).await.unwrap();
    assert_eq!((nothing.events.len(), nothing.scanned_to), (0, Position(5)));
}

pub async fn streams_are_separate_per_tenant_and_read_from_a_version(harness: &impl Harness) {
    let log = harness.open().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    for n in 0..5 {
        log.append(Append::new(vec![app(a, "cart/1", "cart.changed", n)])).await.unwrap();
    }
    let other = log.append(Append::new(vec![app(b, "cart/1", "cart.changed", 9)])).await.unwrap();
    assert_eq!(
        other[0].stream_version, 1,
        "another tenant's stream of the same name is a new stream"
    );

    let from_three = log.read_stream(a, &stream("cart/1"), 3, 100).await.unwrap();
    assert_eq!(from_three.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(from_three.iter().all(|e| e.tenant == a));
    assert_eq!(log.read_stream(a, &stream("cart/1"), 1, 2).await.unwrap().len(), 2);
    assert!(log.read_stream(a, &stream("cart/404"), 1, 10).await.unwrap().is_empty());
}

pub async fn tailing_sees_appends_made_after_it_started(harness: &impl Harness) {
    let log: Arc<dyn Log> = Arc::new(harness.open().await);
    let (a, b) = (TenantId::new(), TenantId::new());
    log.append(Append::new(vec![app(a, "s", "t.before", 0)])).await.unwrap();
    let mut tail = Box::pin(crate::tail(log.clone(), crate::Cursor::start(1), Filter::tenant(a)));
    let first = tail.next().await.unwrap().unwrap();
    assert_eq!(first.type_name, "t.before");

    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for n in 1..=3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.append(Append::new(vec![app(b, "s", "t.other", n), app(a, "s", "t.after", n)]))
                    .await
                    .unwrap();
            }
        })
    };
    for n in 1..=3u64 {
        let next = tokio::time::timeout(Duration::from_secs(10), tail.next())
            .await
            .expect("a tailer is woken by appends")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.type_name.as_str(), next.data.clone()),
            ("t.after", format!(r#"{{"n":{n}}}"#))
        );
    }
    writer.await.unwrap();
}

pub async fn find_returns_one_event_by_id(harness: &impl Harness) {
    let log = harness.open().await;
    let tenant = TenantId::new();
    let event = app(tenant, "s", "t.found", 7);
    log.append(Append::new(vec![app(tenant, "s", "t.other", 1), event.clone()])).await.unwrap();
    let found = log.find(event.id).await.unwrap().unwrap();
    assert_eq!((found.position, found.id, found.stream_version), (Position(2), event.id, 2));
    assert_eq!(found.event().unwrap(), event.event);
    assert!(log.find(EventId::new()).await.unwrap().is_none());
}

pub async fn a_partitioned_log_orders_each_partition_and_keeps_a_stream_in_one(
    harness: &impl Harness,
) {
    const PARTITIONS: u32 = 4;
    let Some(log) = harness.open_partitioned(PARTITIONS).await else {
        return;
    };
    let log: Arc<dyn Log> = Arc::new(log);
    assert_eq!(log.partitions(), PARTITIONS);
    let tenant = TenantId::new();
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 10;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for n in 0..APPENDS {
                let name = format!("order/{}", (writer + n) % 12);
                let current = log.read_stream(tenant, &stream(&name), 1, 10_000).await.unwrap();
                let claim =
                    Append::new(vec![app(tenant, &name, "t.p", n), app(tenant, &name, "t.p", n)])
                        .expect(tenant, stream(&name), current.len() as u64);
                match log.append(claim).await {
                    Ok(appended) => {
                        assert_eq!(appended.len(), 2);
                        assert!(appended.iter().all(|a| !a.already_stored), "{appended:?}");
                        let partition = crate::partition_for(tenant, &stream(&name), PARTITIONS);
                        assert!(appended.iter().all(|a| a.partition == partition));
                    }
                    Err(Error::Conflict(_)) => conflicts += 1,
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }

    let mut total = 0;
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for partition in 0..PARTITIONS {
        let head = *log.head(partition).borrow();
        let mut after = Position::ZERO;
        let mut events = Vec::new();
        while after < head {
            let batch = log.read(partition, after, 7, &Filter::default()).await.unwrap();
            assert!(batch.scanned_to > after, "partition {partition}: no progress after {after}");
            after = batch.scanned_to;
            events.extend(batch.events);
        }
        assert_gap_free(&events);
        for event in &events {
            assert_eq!(event.partition, partition);
            assert_eq!(crate::partition_for(event.tenant, &event.stream, PARTITIONS), partition);
            versions
                .entry(event.stream.as_str().to_owned())
                .or_default()
                .push(event.stream_version);
        }
        total += events.len() as u64;
    }
    assert_eq!(total, 2 * (WRITERS * APPENDS - conflicts), "every winning append, nothing else");
    for (name, seen) in &versions {
        assert_eq!(*seen, (1..=seen.len() as u64).collect::<Vec<_>>(), "stream {name} in order");
        let read = log.read_stream(tenant, &stream(name), 1, 10_000).await.unwrap();
        assert_eq!(read.iter().map(|e| e.stream_version).collect::<Vec<_>>(), *seen);
    }
    let page = crate::read_page(
        log.as_ref(),
        &crate::Cursor::start(PARTITIONS),
        10_000,
        &Filter::default(),
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(page.events.len() as u64, total);
    assert_eq!(page.next, crate::Cursor::heads(log.as_ref()));
}
