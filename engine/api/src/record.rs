//! Every `/v1` request becomes an `api.call` event, without a second fsync
//! per request: the middleware hands the record to one recorder task over a
//! bounded channel, and the recorder appends whatever is queued (up to
//! [`RecorderOptions::max_batch`]) in one [`Log::append`], so many requests
//! share one group commit. When the queue is full the middleware waits
//! (backpressure); records are never dropped silently.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use spool_log::{Append, Log, NewEvent};
use spool_schemas::{ApiCall, Event, StreamName, TenantId};
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::CallerSlot;

/// The route recorded for a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "<unmatched>";

#[derive(Clone, Debug)]
pub struct RecorderOptions {
    /// How many records may wait before requests wait for the recorder.
    pub capacity: usize,
    /// The most records one append carries.
    pub max_batch: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions { capacity: 10_000, max_batch: 1_000 }
    }
}

/// The recorder task: build it, hand [`Recorder::handle`]s to the router,
/// then [`Recorder::run`] it.
pub struct Recorder {
    log: Arc<dyn Log>,
    sender: mpsc::Sender<NewEvent>,
    receiver: mpsc::Receiver<NewEvent>,
    max_batch: usize,
}

/// Sends records to the recorder; cheap to clone.
#[derive(Clone)]
pub struct RecorderHandle {
    sender: mpsc::Sender<NewEvent>,
}

/// What a recorder did before it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecorderReport {
    pub recorded: u64,
    pub appends: u64,
    /// Records whose append failed (each failure is logged as an error).
    pub failed: u64,
}

impl Recorder {
    pub fn new(log: Arc<dyn Log>, options: RecorderOptions) -> Recorder {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        Recorder { log, sender, receiver, max_batch: options.max_batch.max(1) }
    }

    pub fn handle(&self) -> RecorderHandle {
        RecorderHandle { sender: self.sender.clone() }
    }

    /// Appends records until every handle is dropped or `shutdown`
    /// completes; then appends what is still queued and returns. Stop the
    /// server first, so that no request is still sending.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> RecorderReport {
        let Recorder { log, sender, mut receiver, max_batch } = self;
        drop(sender);
        let mut report = RecorderReport::default();
        let mut batch = Vec::with_capacity(max_batch);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                received = receiver.recv_many(&mut batch, max_batch) => {
                    if received == 0 {
                        break;
                    }
                    append(&*log, &mut batch, &mut report).await;
                }
                () = &mut shutdown => {
                    receiver.close();
                    while receiver.recv_many(&mut batch, max_batch).await > 0 {
                        append(&*log, &mut batch, &mut report).await;
                    }
                    break;
                }
            }
        }
        report
    }
}

async fn append(log: &dyn Log, batch: &mut Vec<NewEvent>, report: &mut RecorderReport) {
    let n_records = batch.len() as u64;
    match log.append(Append::new(std::mem::take(batch))).await {
        Ok(_) => {
            report.recorded += n_records;
            report.appends += 1;
            metrics::counter!("spool_api_calls_recorded_total").increment(n_records);
        }
        Err(error) => {
            report.failed += n_records;
            metrics::counter!("spool_api_calls_record_failed_total").increment(n_records);
            tracing::error!(%error, n_records, "appending api.call records failed");
        }
    }
}

impl RecorderHandle {
    /// Queues one record, waiting while the queue is full.
    pub async fn record(&self, event: NewEvent) {
        if self.sender.send(event).await.is_err() {
            // Only after the recorder was stopped, which serve does after
            // the last request finished.
            tracing::error!("api.call record lost: the recorder has stopped");
        }
    }
}

/// The middleware around every `/v1` route (and the fallback).
pub(crate) async fn record_call(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());

    let response = next.run(request).await;

    let latency = started.elapsed();
    let status = response.status().as_u16();
    let caller = slot.get();
    let (tenant, stream) = match caller {
        Some(caller) => (caller.tenant, format!("api/{}", caller.key_id)),
        None => (TenantId::SYSTEM, "api/anonymous".to_owned()),
    };
    let stream = StreamName::new(stream).expect("api streams are valid stream names");
    let call = ApiCall {
        key_id: caller.map(|caller| caller.key_id),
        method: method.clone(),
        route: route.clone(),
        status,
        latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
    };
    metrics::counter!(
        "spool_api_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.to_string(),
    )
    .increment(1);
    metrics::histogram!("spool_api_request_duration_seconds", "route" => route)
        .record(latency.as_secs_f64());
    state.recorder.record(NewEvent::new(tenant, stream, Event::ApiCall(call))).await;
    response
}
