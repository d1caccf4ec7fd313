//! The errors of the token, introspection and revocation endpoints: RFC 6749
//! §5.2 JSON (`{"error", "error_description"}`) for what the client got
//! wrong, problem+json for what the server could not do.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::Problem;

/// An RFC 6749 §5.2 error. `invalid_client` answers `401` with a Basic
/// challenge (required when the client tried Basic, and what a `401` must
/// carry in any case: the scheme the server takes); the others `400`.
#[derive(Clone, Debug)]
pub(crate) struct OAuthError {
    pub(crate) code: ErrorCode,
    pub(crate) description: String,
}

/// The error codes these endpoints use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    UnsupportedGrantType,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

impl OAuthError {
    pub(crate) fn new(code: ErrorCode, description: impl Into<String>) -> OAuthError {
        OAuthError { code, description: description.into() }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(ErrorCode::InvalidRequest, description)
    }
}

/// The body of an RFC 6749 §5.2 error.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": "invalid_scope", "error_description": "the client may not ask for `usage:read`"}))]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_scope` or
    /// `unsupported_grant_type`.
    pub error: &'static str,
    pub error_description: String,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let invalid_client = self.code == ErrorCode::InvalidClient;
        let status =
            if invalid_client { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
        let body =
            OAuthErrorBody { error: self.code.as_str(), error_description: self.description };
        let mut response = (status, Json(body)).into_response();
        no_store(&mut response);
        if invalid_client {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"spool\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// What an endpoint answers when it fails.
#[derive(Debug)]
pub(crate) enum EndpointError {
    /// The client's mistake, as RFC 6749 says to answer it.
    OAuth(OAuthError),
    /// The server's trouble (storage, a failed read model), or a bearer
    /// that did not authenticate: problem+json.
    Problem(Problem),
}

impl From<OAuthError> for EndpointError {
    fn from(error: OAuthError) -> EndpointError {
        EndpointError::OAuth(error)
    }
}

impl From<Problem> for EndpointError {
    fn from(problem: Problem) -> EndpointError {
        EndpointError::Problem(problem)
    }
}

impl From<spool_projections::Error> for EndpointError {
    fn from(error: spool_projections::Error) -> EndpointError {
        EndpointError::Problem(error.into())
    }
}

impl From<spool_log::Error> for EndpointError {
    fn from(error: spool_log::Error) -> EndpointError {
        EndpointError::Problem(error.into())
    }
}

impl IntoResponse for EndpointError {
    fn into_response(self) -> Response {
        let mut response = match self {
            EndpointError::OAuth(error) => error.into_response(),
            EndpointError::Problem(problem) => problem.into_response(),
        };
        no_store(&mut response);
        response
    }
}

/// RFC 6749 §5.1: responses that may carry a token are never cached.
pub(crate) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}
