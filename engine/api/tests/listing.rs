//! `GET /v1/events`: filtering by type and stream, paging with cursors,
//! on one partition and on several.

mod support;

use std::collections::BTreeSet;

use axum::http::{StatusCode, header};
use serde_json::json;
use spool_schemas::Scope;

use support::*;

#[tokio::test]
async fn listing_filters_by_type_prefix_and_stream_and_pages_with_the_next_cursor() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let mut batch = Vec::new();
    for n in 0..7 {
        batch.push(
            json!({"type": "order.created", "subject": format!("order/{}", n % 2), "data": n}),
        );
        batch.push(json!({"type": "invoice.sent", "data": n}));
    }
    batch.push(json!({"type": "order.shipped.late", "subject": "order/0", "data": 99}));
    assert_eq!(h.post_json(&key, json!({"events": batch})).await.status, StatusCode::CREATED);

    let mut seen = Vec::new();
    let mut uri = "/v1/events?type=order.*&limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = h.get(Some(&key), &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.json);
        pages += 1;
        for event in page.json["events"].as_array().unwrap() {
            assert!(event["type"].as_str().unwrap().starts_with("order."));
            seen.push(event["data"].as_i64().unwrap());
        }
        if page.json["has_more"] == false {
            break;
        }
        assert!(pages < 10, "paging terminates");
        let next = page.json["next"].as_str().expect("next is a cursor string");
        assert!(next.parse::<u64>().is_ok(), "one partition: the cursor is a position: {next}");
        uri = format!("/v1/events?type=order.*&limit=3&after={next}");
    }
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6, 99], "every order event once, in order");
    assert_eq!(pages, 3);

    let stream = h.get(Some(&key), "/v1/events?stream=order/0&limit=1000").await;
    let data: Vec<i64> = stream.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [0, 2, 4, 6, 99]);

    let both = h.get(Some(&key), "/v1/events?type=invoice.sent,order.shipped.late").await;
    assert_eq!(both.json["events"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn listing_a_partitioned_log_in_small_pages_returns_every_event_once_in_partition_order() {
    let h = partitioned_harness(4).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let sent = post_spread(&h, &key, 0, 60).await;
    let partitions: BTreeSet<u64> = sent.iter().map(|stored| stored.partition).collect();
    assert_eq!(partitions, BTreeSet::from([0, 1, 2, 3]), "the events span every partition");

    let mut seen: Vec<Stored> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &after {
            Some(cursor) => format!("/v1/events?limit=7&after={cursor}"),
            None => "/v1/events?limit=7".to_owned(),
        };
        let page = h.get(Some(&key), &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.json);
        let events = page.json["events"].as_array().unwrap();
        assert!(events.len() <= 7, "{}", page.json);
        seen.extend(events.iter().map(Stored::of));
        let next = page.json["next"].as_str().expect("next is a cursor string");
        assert_eq!(next.split('.').count(), 4, "one position per partition: {next}");
        after = Some(next.to_owned());
        pages += 1;
        assert!(pages < 50, "paging terminates");
        if page.json["has_more"] == false {
            break;
        }
    }
    assert!(pages >= 60 / 7, "small pages: {pages}");

    // Exactly once each, shown where the ingest answer said it is stored.
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    assert_eq!(seen_sorted, sent_sorted, "every event exactly once");
    for partition in 0..4 {
        let positions = |events: &[Stored]| -> Vec<u64> {
            events
                .iter()
                .filter(|stored| stored.partition == partition)
                .map(|stored| stored.position)
                .collect()
        };
        let seen_positions = positions(&seen);
        assert!(
            seen_positions.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition} in order: {seen_positions:?}"
        );
        assert_eq!(seen_positions, positions(&sent), "partition {partition}");
    }

    // The last cursor is where to poll: nothing yet, then exactly what is new.
    let after = after.unwrap();
    let empty = h.get(Some(&key), &format!("/v1/events?after={after}")).await;
    assert_eq!(empty.json["events"], json!([]), "{}", empty.json);
    assert_eq!(empty.json["has_more"], false);
    let newer = post_spread(&h, &key, 60, 1).await;
    let page = h.get(Some(&key), &format!("/v1/events?after={after}")).await;
    let shown: Vec<Stored> =
        page.json["events"].as_array().unwrap().iter().map(Stored::of).collect();
    assert_eq!(shown, newer);
}

#[tokio::test]
async fn bad_cursors_are_a_400_naming_what_is_wrong() {
    let h = partitioned_harness(4).await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    for (query, wrong) in [
        ("after=12", "partition"),
        ("after=1.2.3", "partition"),
        ("after=1.2.3.4.5", "partition"),
        ("after=1.2.x.4", "positions separated by dots"),
        ("after=1..3.4", "positions separated by dots"),
        ("after=-1.0.0.0", "positions separated by dots"),
        ("after=", "positions separated by dots"),
    ] {
        let response = h.get(Some(&key), &format!("/v1/events?{query}")).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{query}: {}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/invalid-query", "{query}");
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/problem+json");
        let detail = response.json["detail"].as_str().unwrap();
        assert!(detail.starts_with("after: "), "{query}: {detail}");
        assert!(detail.contains(wrong), "{query}: {detail}");
    }
    let fine = h.get(Some(&key), "/v1/events?after=0.0.0.0").await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.json);

    // A one-partition log takes a plain position, and nothing else.
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    assert_eq!(h.get(Some(&key), "/v1/events?after=15").await.status, StatusCode::OK);
    let response = h.get(Some(&key), "/v1/events?after=15.0").await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}", response.json);
    assert!(response.json["detail"].as_str().unwrap().contains("partition"), "{}", response.json);
}
