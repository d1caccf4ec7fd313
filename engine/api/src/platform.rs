//! The middleware around every recorded `/v1` route and the fallback, as
//! one layer. From the outside in:
//!
//! 1. [`record::record_call`]: every request becomes an `api.call` event,
//!    whatever answers it (a `429` included, with its key);
//! 2. [`deprecation::announce`]: `Deprecation` and `Sunset` on deprecated
//!    routes;
//! 3. [`ratelimit::limit`]: authenticates once and counts the request
//!    against its key's policy (or its address's); the limiter is put in
//!    the request's extensions for the handlers that change limits;
//! 4. [`idempotency::idempotent`]: `Idempotency-Key` on POST and PATCH,
//!    inside the limiter so that a refused request stores nothing.
//!
//! One layer calling the four in turn, not four `from_fn` layers: each of
//! those cloned the service inside it and boxed its future for every
//! request, which under load cost more than some of the work they wrap.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::idempotency::{self, Idempotency};
use crate::ratelimit::{self, RateLimiter};
use crate::{Shared, deprecation, record};

/// What the layer needs, built once per router.
pub(crate) struct Platform {
    pub(crate) state: Shared,
    pub(crate) limiter: RateLimiter,
    pub(crate) idempotency: Idempotency,
}

pub(crate) async fn platform(
    State(platform): State<std::sync::Arc<Platform>>,
    request: Request,
    next: Next,
) -> Response {
    let Platform { state, limiter, idempotency } = &*platform;
    record::record_call(state, request, async |request| {
        deprecation::announce(&state.options.deprecations, request, async |mut request| {
            request.extensions_mut().insert(limiter.clone());
            ratelimit::limit(state, limiter, request, async |request| {
                idempotency::idempotent(idempotency, request, next).await
            })
            .await
        })
        .await
    })
    .await
}
