//! RFC 9457 problem details: every error the API returns, with a stable
//! `type` URI per kind of error, and nothing internal in what the client sees.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Where the `type` URIs of Spool's problems live.
pub const PROBLEM_BASE: &str = "https://spool.dev/problems/";

/// One kind of error: its stable slug (the last segment of the `type` URI),
/// its title and its status. Closed: the constants below are all there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProblemKind {
    pub slug: &'static str,
    pub title: &'static str,
    pub status: StatusCode,
}

macro_rules! kinds {
    ($($name:ident = ($slug:literal, $status:ident, $title:literal);)*) => {
        impl ProblemKind {
            $(pub const $name: ProblemKind = ProblemKind {
                slug: $slug,
                title: $title,
                status: StatusCode::$status,
            };)*

            /// Every kind, for the documentation and for tests.
            pub const ALL: &'static [ProblemKind] = &[$(ProblemKind::$name),*];
        }
    };
}

kinds! {
    MALFORMED_JSON = ("malformed-json", BAD_REQUEST, "The request body is not valid JSON");
    INVALID_QUERY = ("invalid-query", BAD_REQUEST, "The query string is invalid");
    INVALID_BODY = ("invalid-body", UNPROCESSABLE_ENTITY, "The request body does not have the expected shape");
    INVALID_EVENT_TYPE = ("invalid-event-type", UNPROCESSABLE_ENTITY, "The event type name is invalid");
    INVALID_SUBJECT = ("invalid-subject", UNPROCESSABLE_ENTITY, "The event subject is not a valid stream name");
    INVALID_CLOUDEVENT = ("invalid-cloudevent", UNPROCESSABLE_ENTITY, "The CloudEvent is invalid");
    TOO_MANY_EVENTS = ("too-many-events", UNPROCESSABLE_ENTITY, "The batch holds too many or no events");
    DUPLICATE_EVENT_ID = ("duplicate-event-id", UNPROCESSABLE_ENTITY, "The batch holds the same event id twice");
    UNREADABLE_BODY = ("unreadable-body", BAD_REQUEST, "The request body could not be read");
    BODY_TOO_LARGE = ("body-too-large", PAYLOAD_TOO_LARGE, "The request body is too large");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "The request body's media type is not supported");
    MISSING_KEY = ("missing-key", UNAUTHORIZED, "An API key is required");
    INVALID_KEY = ("invalid-key", UNAUTHORIZED, "The API key is not valid");
    REVOKED_KEY = ("revoked-key", UNAUTHORIZED, "The API key was revoked");
    EXPIRED_KEY = ("expired-key", UNAUTHORIZED, "The API key has expired");
    INVALID_TOKEN = ("invalid-token", UNAUTHORIZED, "The access token is not valid");
    EXPIRED_TOKEN = ("expired-token", UNAUTHORIZED, "The access token has expired");
    INSUFFICIENT_SCOPE = ("insufficient-scope", FORBIDDEN, "The API key lacks a required scope");
    UNKNOWN_SCOPE = ("unknown-scope", UNPROCESSABLE_ENTITY, "A scope named in the request does not exist");
    LIVE_MODE_REQUIRED = ("live-mode-required", FORBIDDEN, "A test-mode key cannot act on live-mode data");
    NOT_FOUND = ("not-found", NOT_FOUND, "No such resource");
    METHOD_NOT_ALLOWED = ("method-not-allowed", METHOD_NOT_ALLOWED, "The method is not allowed on this resource");
    CONFLICT = ("conflict", CONFLICT, "The request conflicts with the stored state");
    INVALID_IDEMPOTENCY_KEY = ("invalid-idempotency-key", BAD_REQUEST, "The Idempotency-Key header is invalid");
    IDEMPOTENCY_KEY_REUSED = ("idempotency-key-reused", UNPROCESSABLE_ENTITY, "The Idempotency-Key was already used for a different request");
    IDEMPOTENCY_KEY_IN_FLIGHT = ("idempotency-key-in-flight", CONFLICT, "A request with this Idempotency-Key is still being processed");
    QUOTA_EXCEEDED = ("quota-exceeded", TOO_MANY_REQUESTS, "The request exceeds a rate-limit policy");
    INVALID_TIER_NAME = ("invalid-tier-name", BAD_REQUEST, "The rate-limit tier name is invalid");
    UNKNOWN_TIER = ("unknown-tier", UNPROCESSABLE_ENTITY, "The rate-limit tier does not exist");
    LIMIT_ABOVE_CEILING = ("limit-above-ceiling", UNPROCESSABLE_ENTITY, "The rate limit is above this server's ceiling");
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "The service is shutting down or not ready");
    INTERNAL = ("internal", INTERNAL_SERVER_ERROR, "Internal server error");
}

impl ProblemKind {
    pub fn type_uri(&self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug)
    }
}

/// An error answered to the client as `application/problem+json`.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: ProblemKind,
    /// For the client: what was wrong with *their* request. Never internal
    /// details (those go to the server's log, see [`Problem::internal`]).
    pub detail: String,
}

/// The JSON body of a problem.
#[derive(Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the kind of error; stable, safe to match on.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Problem {
        Problem { kind, detail: detail.into() }
    }

    /// A failure the client cannot act on. The cause is logged here and the
    /// client sees only a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(%cause, "request failed");
        Problem::new(
            ProblemKind::INTERNAL,
            "the server failed to handle the request; it has been logged",
        )
    }

    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            type_uri: self.kind.type_uri(),
            title: self.kind.title,
            status: self.kind.status.as_u16(),
            detail: self.detail.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.slug, self.detail)
    }
}

impl From<spool_log::Error> for Problem {
    fn from(error: spool_log::Error) -> Problem {
        match error {
            spool_log::Error::Closed => {
                Problem::new(ProblemKind::UNAVAILABLE, "the server is shutting down")
            }
            spool_log::Error::Conflict(conflict) => Problem::new(
                ProblemKind::CONFLICT,
                format!(
                    "stream {} is at version {}, expected {}",
                    conflict.stream, conflict.actual, conflict.expected
                ),
            ),
            spool_log::Error::Unavailable(reason) => {
                // The reason names internal hosts; it goes to the log only.
                tracing::warn!(%reason, "the event log is unavailable");
                Problem::new(
                    ProblemKind::UNAVAILABLE,
                    "the event log is unavailable right now; retrying with the same event ids \
                     is safe",
                )
            }
            other => Problem::internal(&other),
        }
    }
}

impl From<spool_projections::Error> for Problem {
    fn from(error: spool_projections::Error) -> Problem {
        Problem::internal(&error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status;
        let body = serde_json::to_vec(&self.body()).expect("problems serialize");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spool\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_slug() {
        let mut slugs: Vec<_> = ProblemKind::ALL.iter().map(|kind| kind.slug).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemKind::ALL.len());
    }
}
