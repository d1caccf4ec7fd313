//! Every `/v1` request becomes an `api.call` event, without a second fsync
//! per request: the middleware hands the record to one recorder task over a
//! bounded channel, and the recorder appends whatever is queued (up to
//! [`RecorderOptions::max_batch`]) in one [`Log::append`], so many requests
//! share one group commit. When the queue is full the middleware waits
//! (backpressure); records are never dropped silently. A request whose
//! client disconnects is still recorded (status 499), and an append that
//! fails on storage is retried with backoff rather than dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use spool_log::{Append, Log, NewEvent};
use spool_schemas::{ApiCall, Event, StreamName, TenantId};
use tokio::sync::mpsc;

use crate::Shared;
use crate::auth::CallerSlot;

/// The route recorded for a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "<unmatched>";

#[derive(Clone, Debug)]
pub struct RecorderOptions {
    /// How many records may wait before requests wait for the recorder.
    pub capacity: usize,
    /// The most records one append carries.
    pub max_batch: usize,
    /// How long the recorder waits, after a record arrives, for more to
    /// share its append (unless `max_batch` are queued first). No request
    /// waits for its record, so this costs no latency; it makes one commit
    /// carry many records under load instead of a few each, and lets the
    /// projections fold them in bigger batches.
    pub linger: Duration,
    /// The first wait before retrying a failed append; it doubles (with
    /// jitter) up to `retry_max_delay`. Storage failures are retried until
    /// the append succeeds: records are never dropped for a transient error.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// After shutdown began, how long a failing append keeps being retried
    /// before its records are given up (and counted as failed).
    pub shutdown_grace: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            capacity: 10_000,
            max_batch: 1_000,
            linger: Duration::from_millis(10),
            retry_min_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The recorder task: build it, hand [`Recorder::handle`]s to the router,
/// then [`Recorder::run`] it.
pub struct Recorder {
    log: Arc<dyn Log>,
    sender: mpsc::Sender<NewEvent>,
    receiver: mpsc::Receiver<NewEvent>,
    options: RecorderOptions,
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
    /// Failed append attempts that were retried.
    pub retries: u64,
    /// Records given up: refused by the log as invalid, or still failing
    /// when shutdown's grace ran out (each logged as an error).
    pub failed: u64,
}

impl Recorder {
    pub fn new(log: Arc<dyn Log>, options: RecorderOptions) -> Recorder {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        let options = RecorderOptions { max_batch: options.max_batch.max(1), ..options };
        Recorder { log, sender, receiver, options }
    }

    pub fn handle(&self) -> RecorderHandle {
        RecorderHandle { sender: self.sender.clone() }
    }

    /// Appends records until every handle is dropped or `shutdown`
    /// completes; then appends what is still queued and returns. Stop the
    /// server first, so that no request is still sending.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> RecorderReport {
        let Recorder { log, sender, mut receiver, options } = self;
        drop(sender);
        let shutdown = shutdown.boxed().shared();
        let mut report = RecorderReport::default();
        let mut batch = Vec::with_capacity(options.max_batch);
        loop {
            tokio::select! {
                received = receiver.recv_many(&mut batch, options.max_batch) => {
                    if received == 0 {
                        break;
                    }
                    linger(&mut receiver, &mut batch, &options, shutdown.clone()).await;
                    append(&*log, &mut batch, &options, shutdown.clone(), &mut report).await;
                }
                () = shutdown.clone() => {
                    receiver.close();
                    while receiver.recv_many(&mut batch, options.max_batch).await > 0 {
                        append(&*log, &mut batch, &options, shutdown.clone(), &mut report).await;
                    }
                    break;
                }
            }
        }
        report
    }
}

/// Adds to `batch` what arrives within the linger (see
/// [`RecorderOptions::linger`]), until it is full or shutdown begins.
async fn linger(
    receiver: &mut mpsc::Receiver<NewEvent>,
    batch: &mut Vec<NewEvent>,
    options: &RecorderOptions,
    shutdown: impl Future<Output = ()>,
) {
    let deadline = tokio::time::Instant::now() + options.linger;
    let mut shutdown = std::pin::pin!(shutdown);
    while batch.len() < options.max_batch {
        let room = options.max_batch - batch.len();
        tokio::select! {
            received = receiver.recv_many(batch, room) => {
                if received == 0 {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => return,
            () = &mut shutdown => return,
        }
    }
}

/// Appends `batch`, retrying storage failures with exponential backoff
/// until it succeeds or, once `shutdown` resolved, its grace runs out. The
/// records keep their event ids across attempts, so an attempt that failed
/// after all at commit is not stored twice.
async fn append(
    log: &dyn Log,
    batch: &mut Vec<NewEvent>,
    options: &RecorderOptions,
    shutdown: impl Future<Output = ()>,
    report: &mut RecorderReport,
) {
    let records = std::mem::take(batch);
    let n_records = records.len() as u64;
    let mut retries = 0;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(options.retry_min_delay)
        .with_max_delay(options.retry_max_delay)
        .with_jitter()
        .without_max_times();
    let attempts = (|| log.append(Append::new(records.clone())))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| matches!(error, spool_log::Error::Storage(_)))
        .notify(|error, delay| {
            retries += 1;
            metrics::counter!("spool_api_calls_record_retries_total").increment(1);
            tracing::error!(
                %error,
                n_records,
                retry_in = ?delay,
                "appending api.call records failed; retrying"
            );
        });
    let grace = options.shutdown_grace;
    let result = tokio::select! {
        result = attempts => Some(result),
        () = async {
            shutdown.await;
            tokio::time::sleep(grace).await;
        } => None,
    };
    report.retries += retries;
    match result {
        Some(Ok(_)) => {
            report.recorded += n_records;
            report.appends += 1;
            metrics::counter!("spool_api_calls_recorded_total").increment(n_records);
        }
        Some(Err(error)) => {
            report.failed += n_records;
            metrics::counter!("spool_api_calls_record_failed_total").increment(n_records);
            tracing::error!(%error, n_records, "api.call records lost: the log refused them");
        }
        None => {
            report.failed += n_records;
            metrics::counter!("spool_api_calls_record_failed_total").increment(n_records);
            tracing::error!(
                n_records,
                "api.call records lost: appending still failed when shutdown's grace ran out"
            );
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

    /// Queues one record without waiting, for callers that cannot wait
    /// (a drop guard): when the queue is full, a task waits instead.
    pub fn record_detached(&self, event: NewEvent) {
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let handle = self.clone();
                        runtime.spawn(async move { handle.record(event).await });
                    }
                    Err(_) => tracing::error!("api.call record lost: no runtime to queue it on"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("api.call record lost: the recorder has stopped");
            }
        }
    }
}

/// The status recorded for a request whose client went away before the
/// response was ready (nginx's convention; no response was sent).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The middleware around the OAuth token routes, which only records.
pub(crate) async fn recorded(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    record_call(&state, request, |request| next.run(request)).await
}

/// The outermost part of the middleware around every `/v1` route and the
/// fallback (see [`crate::platform`]).
pub(crate) async fn record_call<Fut: Future<Output = Response>>(
    state: &Shared,
    mut request: Request,
    next: impl FnOnce(Request) -> Fut,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let mut call = CallRecord {
        recorder: state.recorder.clone(),
        started: Instant::now(),
        method: method_label(request.method()),
        route,
        slot: CallerSlot::default(),
        pending: None,
        sent: false,
    };
    request.extensions_mut().insert(call.slot.clone());
    let response = next(request).await;
    call.finish(response.status().as_u16()).await;
    response
}

/// One request's record. If the request's future is dropped (the client
/// disconnected) before the record was queued, `Drop` queues it: with the
/// response's status when there was one, else [`CLIENT_CLOSED_REQUEST`].
struct CallRecord {
    recorder: RecorderHandle,
    started: Instant,
    method: &'static str,
    route: String,
    slot: CallerSlot,
    /// Built but not yet queued.
    pending: Option<NewEvent>,
    sent: bool,
}

impl CallRecord {
    async fn finish(&mut self, status: u16) {
        self.pending = Some(self.event(status));
        // Waits while the queue is full (backpressure). Cancelled here, the
        // record is still pending and `Drop` queues it.
        match self.recorder.sender.reserve().await {
            Ok(permit) => permit.send(self.pending.take().expect("set above")),
            Err(_) => tracing::error!("api.call record lost: the recorder has stopped"),
        }
        self.sent = true;
    }

    /// The record, with the request's metrics.
    fn event(&self, status: u16) -> NewEvent {
        let latency = self.started.elapsed();
        let caller = self.slot.get();
        let tenant = caller.map_or(TenantId::SYSTEM, |caller| caller.tenant);
        // An access token's caller carries its client's UUID as `key_id`;
        // the record names the client as such, so usage per key never shows
        // a key that does not exist.
        let client_id = caller.and_then(|caller| caller.token).map(|token| token.client_id);
        let key_id = caller.filter(|caller| caller.token.is_none()).map(|caller| caller.key_id);
        metrics::counter!(
            "spool_api_requests_total",
            "method" => self.method,
            "route" => self.route.clone(),
            "status" => status.to_string(),
        )
        .increment(1);
        metrics::histogram!("spool_api_request_duration_seconds", "route" => self.route.clone())
            .record(latency.as_secs_f64());
        let call = ApiCall {
            key_id,
            client_id,
            method: self.method.to_owned(),
            route: self.route.clone(),
            status,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        };
        let stream = match client_id {
            Some(client_id) => StreamName::new(format!("api/{client_id}"))
                .expect("an id makes a valid stream name"),
            None => StreamName::for_api_calls(key_id),
        };
        NewEvent::new(tenant, stream, Event::ApiCall(call))
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let event = match self.pending.take() {
            Some(event) => event,
            None => self.event(CLIENT_CLOSED_REQUEST),
        };
        self.recorder.record_detached(event);
    }
}

/// The method as recorded and as a metric label: one of the standard
/// methods, or `OTHER`, so that clients cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
