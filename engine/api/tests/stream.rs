//! `GET /v1/events/stream`: live SSE delivery, resuming (on one partition
//! and on several), and how a stream ends.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spool_api::ApiOptions;
use spool_log::Cursor;
use spool_schemas::{Position, Scope};
use tower::ServiceExt;

use support::*;

#[tokio::test]
async fn the_sse_stream_delivers_live_events_and_resumes_from_last_event_id() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let stream_request = |last_event_id: Option<u64>| {
        let mut request = Request::builder()
            .uri("/v1/events/stream?type=order.*")
            .header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        request.body(Body::empty()).unwrap()
    };
    let response = h.app.clone().oneshot(stream_request(None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream")
    );
    let mut body = response.into_body().into_data_stream();

    let first = h
        .post_json(
            &key,
            json!({"events": [
                {"type": "invoice.sent", "data": "not for this filter"},
                {"type": "order.created", "data": {"n": 1}},
            ]}),
        )
        .await;
    let first_position = first.json["events"][1]["position"].as_u64().unwrap();
    let text = read_sse(&mut body, |text| text.contains("\n\n")).await;
    assert!(text.contains(&format!("id: {first_position}\n")), "{text}");
    assert!(text.contains("event: order.created\n"), "{text}");
    assert!(!text.contains("invoice.sent"), "{text}");
    let data_line = text.lines().find(|line| line.starts_with("data: ")).unwrap();
    let envelope: Value = serde_json::from_str(&data_line["data: ".len()..]).unwrap();
    assert_eq!(envelope["data"], json!({"n": 1}));
    assert_eq!(envelope["position"], first_position);
    drop(body);

    let second = h.post_json(&key, json!({"type": "order.paid", "data": 2})).await;
    let second_position = second.json["events"][0]["position"].as_u64().unwrap();
    let resumed = h.app.clone().oneshot(stream_request(Some(first_position))).await.unwrap();
    let mut body = resumed.into_body().into_data_stream();
    let text = read_sse(&mut body, |text| text.contains("\n\n")).await;
    assert!(
        text.starts_with(&format!("id: {second_position}\nevent: order.paid\n")),
        "resumes right after Last-Event-ID: {text}"
    );
}

/// Regression: the key of a live stream was checked once, at connect, so
/// a revoked or expired key kept receiving events.
#[tokio::test]
async fn an_open_event_stream_ends_when_its_key_is_revoked_or_expires() {
    let h = harness().await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    h.post_json(&key, json!({"type": "order.created"})).await;
    read_sse(&mut body, |text| text.contains("event: order.created")).await;
    h.revoke(&key).await;
    // Rechecked every 2 s by default.
    read_to_end(&mut body, Duration::from_secs(5)).await;

    let expiring = h
        .key(key.tenant, &[Scope::EventsRead], Some(Utc::now() + chrono::Duration::seconds(1)))
        .await;
    let response =
        h.app.clone().oneshot(stream_request(&expiring, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    read_to_end(&mut body, Duration::from_secs(4)).await;
}

/// Rolls `key` through the API with `grace_seconds` for its current
/// secret; returns the new secret and when the old one stops.
async fn roll(h: &Harness, admin: &Key, key: &Key, grace_seconds: u64) -> (Key, DateTime<Utc>) {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v1/keys/{}/roll", key.key_id))
        .header(header::AUTHORIZATION, format!("Bearer {}", admin.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"grace_period_seconds": grace_seconds}).to_string()))
        .unwrap();
    let rolled = h.send(request).await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.json);
    let new = Key { secret: rolled.json["secret"].as_str().unwrap().to_owned(), ..key.clone() };
    let ends = rolled.json["previous_secret_expires_at"].as_str().unwrap().parse().unwrap();
    (new, ends)
}

/// Regression: a stream opened with a rolled key's old secret woke at the
/// end of its grace period, found the key itself still valid, and spun
/// on the read model instead of ending. Rechecks are slowed down here, so
/// that the stream can only end by its secret's end.
#[tokio::test]
async fn an_event_stream_opened_with_a_rolled_key_s_old_secret_ends_when_its_grace_ends() {
    let options = ApiOptions { sse_key_recheck: Duration::from_secs(60), ..ApiOptions::default() };
    let h = harness_with(options, |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let (_new, ends) = roll(&h, &admin, &key, 2).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the old secret works during its grace");
    let mut body = response.into_body().into_data_stream();
    read_to_end(&mut body, Duration::from_secs(5)).await;
    assert!(Utc::now() >= ends, "the stream ended before the grace did");
}

/// Regression: live streams rechecked only the key's row, so a stream
/// opened with a key's current secret outlived a roll of that key and the
/// end of the grace period it gave the secret.
#[tokio::test]
async fn an_event_stream_ends_when_a_roll_ends_the_secret_it_was_opened_with() {
    let options =
        ApiOptions { sse_key_recheck: Duration::from_millis(200), ..ApiOptions::default() };
    let h = harness_with(options, |log| log).await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let key = h.key(admin.tenant, &[Scope::EventsRead], None).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let (new, ends) = roll(&h, &admin, &key, 1).await;
    read_to_end(&mut body, Duration::from_secs(5)).await;
    assert!(Utc::now() >= ends, "the stream ended before the grace did");

    // The new secret's stream lives on.
    let response = h.app.clone().oneshot(stream_request(&new, "/v1/events/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    h.post_json(&admin, json!({"type": "order.created"})).await;
    read_sse(&mut body, |text| text.contains("event: order.created")).await;
}

/// Regression: an event that could not be rendered was skipped silently.
#[tokio::test]
async fn an_unrenderable_event_ends_the_stream_with_an_error_naming_its_position() {
    let h = harness_with(ApiOptions::default(), |log| Faulty::new(log, 0)).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let response = h.app.clone().oneshot(stream_request(&key, "/v1/events/stream")).await.unwrap();
    let mut body = response.into_body().into_data_stream();
    let stored = h
        .post_json(
            &key,
            json!({"events": [{"type": "good.one"}, {"type": "bad.data"}, {"type": "good.two"}]}),
        )
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.json);
    let bad_position = stored.json["events"][1]["position"].as_u64().unwrap();

    let text = read_to_end(&mut body, WAIT).await;
    assert!(text.contains("event: good.one\n"), "{text}");
    assert!(!text.contains("good.two"), "nothing after the failure: {text}");
    let error = text.split("\n\n").find(|message| message.contains("event: error")).expect(&text);
    assert!(!error.contains("id:"), "the error does not move Last-Event-ID: {error}");
    let data = error.lines().find_map(|line| line.strip_prefix("data: ")).unwrap();
    let problem: Value = serde_json::from_str(data).unwrap();
    assert_eq!(problem["type"], "https://spool.dev/problems/internal");
    assert!(
        problem["detail"].as_str().unwrap().contains(&format!("position {bad_position}")),
        "{problem}"
    );
}

/// A stream request with an optional `Last-Event-ID`.
fn resume_request(key: &Key, uri: &str, last_event_id: Option<&str>) -> Request<Body> {
    let mut request =
        Request::builder().uri(uri).header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Body::empty()).unwrap()
}

/// Checks that each message's id is the cursor of the one before with the
/// message's event's partition moved to its position (the first against
/// `start`, when known), and returns where each event is stored.
fn check_ids(messages: &[SseMessage], mut start: Option<Cursor>) -> Vec<Stored> {
    let mut stored = Vec::new();
    for message in messages {
        assert_eq!(message.event.as_deref(), Some("spread.made"), "{message:?}");
        let event = Stored::of(&message.json());
        let id = message.id.as_deref().expect("every event has an id");
        let cursor: Cursor = id.parse().unwrap_or_else(|error| panic!("{id}: {error}"));
        assert_eq!(cursor.partitions(), 4, "{id}");
        assert_eq!(cursor.get(event.partition as u32), Position(event.position), "{id}");
        if let Some(mut previous) = start.take() {
            previous.set(event.partition as u32, Position(event.position));
            assert_eq!(cursor, previous, "only the event's partition moves: {id}");
        }
        start = Some(cursor);
        stored.push(event);
    }
    stored
}

#[tokio::test]
async fn an_sse_stream_of_a_partitioned_log_resumes_from_last_event_id_with_exactly_the_unseen_events()
 {
    let h = partitioned_harness(4).await;
    let key = h.tenant(&[Scope::EventsRead, Scope::EventsWrite]).await;
    let uri = "/v1/events/stream?type=spread.*";
    let response = h.app.clone().oneshot(resume_request(&key, uri, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut sent = post_spread(&h, &key, 0, 40).await;

    // Disconnect partway: some of every partition's events are not sent yet.
    let text = read_sse(&mut body, |text| sse_messages(text).len() >= 15).await;
    drop(body);
    let first = sse_messages(&text);
    assert!(first.len() < sent.len(), "the client left before the end: {}", first.len());
    let mut seen = check_ids(&first, None);
    let last_event_id = first.last().unwrap().id.clone().unwrap();

    // More arrive while the client is away; it resumes from its last id.
    sent.extend(post_spread(&h, &key, 40, 20).await);
    let response =
        h.app.clone().oneshot(resume_request(&key, uri, Some(&last_event_id))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let unseen = sent.len() - seen.len();
    let text = read_sse(&mut body, |text| sse_messages(text).len() >= unseen).await;
    let resumed = sse_messages(&text);
    seen.extend(check_ids(&resumed, Some(last_event_id.parse().unwrap())));

    // Nothing else is coming: the next event after a marker is the marker.
    let marker = post_spread(&h, &key, 60, 1).await;
    let more =
        read_sse(&mut body, |more| sse_messages(&(text.clone() + more)).len() > resumed.len())
            .await;
    let text = text + &more;
    let after_marker = sse_messages(&text);
    assert_eq!(after_marker.len(), resumed.len() + 1, "no event twice: {text}");
    assert_eq!(Stored::of(&after_marker.last().unwrap().json()), marker[0]);

    let unique: HashSet<&Stored> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event delivered twice");
    assert_eq!(unique, sent.iter().collect::<HashSet<_>>(), "every event delivered");
    for partition in 0..4 {
        let positions: Vec<u64> = seen
            .iter()
            .filter(|stored| stored.partition == partition)
            .map(|stored| stored.position)
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{partition}: {positions:?}");
    }

    // `after` takes a cursor too: from the start, everything again.
    let response = h
        .app
        .clone()
        .oneshot(resume_request(&key, &format!("{uri}&after=0.0.0.0"), None))
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    let text = read_sse(&mut body, |text| sse_messages(text).len() > sent.len()).await;
    let replayed = check_ids(&sse_messages(&text), Some(Cursor::start(4)));
    assert_eq!(replayed.len(), sent.len() + 1);
}

#[tokio::test]
async fn bad_stream_cursors_are_a_400_naming_what_is_wrong() {
    let h = partitioned_harness(4).await;
    let key = h.tenant(&[Scope::EventsRead]).await;
    for (query, last_event_id, source) in [
        ("after=7", None, "after: "),
        ("after=1.2.3.x", None, "after: "),
        ("", Some("7"), "Last-Event-ID: "),
        ("", Some("1.2.3.4.5"), "Last-Event-ID: "),
        ("", Some("not a cursor"), "Last-Event-ID: "),
        // A bad `after` is reported even when `Last-Event-ID` overrides it.
        ("after=x", Some("1.2.3.4"), "after: "),
    ] {
        let uri = format!("/v1/events/stream?{query}");
        let response = h.send(resume_request(&key, &uri, last_event_id)).await;
        let what = format!("{query} / {last_event_id:?}");
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{what}: {}", response.json);
        assert_eq!(response.problem_type(), "https://spool.dev/problems/invalid-query", "{what}");
        let detail = response.json["detail"].as_str().unwrap();
        assert!(detail.starts_with(source), "{what}: {detail}");
    }
}
