//! Deprecating `/v1` routes. `/v1` only grows: routes and fields are
//! added, never changed or removed in place. A route that has to go is
//! listed in [`DEPRECATED_ROUTES`] with its deprecation time, its sunset
//! (at least [`MIN_NOTICE_DAYS`] later) and, where there is one, its
//! successor. From then until it is removed, in a release after its
//! sunset:
//!
//! - every response of the route carries `Deprecation: @<unix seconds>`
//!   (RFC 9745), `Sunset: <HTTP-date>` (RFC 8594) and `Link` headers to its
//!   successor (`rel="successor-version"`) and to the page explaining the
//!   move (`rel="deprecation"`);
//! - the OpenAPI document marks the operation `deprecated: true` and says
//!   when it goes and what replaces it;
//! - `spool_api_deprecated_requests_total{method,route}` counts its
//!   requests, so operators see who still calls it.
//!
//! One table drives all three, so the headers and the document never
//! disagree. Nothing is deprecated today; tests inject a table through
//! [`crate::ApiOptions::deprecations`]. (`GET /v1/stats/events` stays: it
//! counts events by type, which `GET /v1/usage`, counting API requests,
//! does not replace.)

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use chrono::{DateTime, TimeDelta, Utc};
use utoipa::openapi::path::Operation;

/// One deprecated route, as written in [`DEPRECATED_ROUTES`].
#[derive(Clone, Copy, Debug)]
pub struct DeprecatedRoute {
    /// `GET`, `POST`…; a deprecated `GET` covers `HEAD` too.
    pub method: &'static str,
    /// The route template as the router and the OpenAPI document write it,
    /// such as `/v1/keys/{id}`.
    pub route: &'static str,
    /// RFC 3339: when the route was (or will be) deprecated.
    pub deprecated_at: &'static str,
    /// RFC 3339: from when the route may stop answering.
    pub sunset_at: &'static str,
    /// What replaces it: a path of this API or an absolute URL.
    pub successor: Option<&'static str>,
    /// A page about the deprecation and how to move off the route.
    pub documentation: Option<&'static str>,
}

/// The routes deprecated today. Empty: nothing is.
pub const DEPRECATED_ROUTES: &[DeprecatedRoute] = &[];

/// The least time between a route's deprecation and its sunset.
pub const MIN_NOTICE_DAYS: i64 = 180;

/// A table that follows the policy (see [`Deprecations::new`]); cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Deprecations(Arc<[Deprecation]>);

#[derive(Debug)]
struct Deprecation {
    method: Method,
    route: &'static str,
    deprecated_at: DateTime<Utc>,
    sunset_at: DateTime<Utc>,
    successor: Option<&'static str>,
    /// Computed once: the headers every response of the route gets.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A table entry that breaks the policy or cannot be written as headers.
#[derive(Debug, thiserror::Error)]
pub enum DeprecationError {
    #[error("{method} {route}: only routes under /v1/ with a standard method can be deprecated")]
    Route { method: &'static str, route: &'static str },
    #[error("{method} {route}: {field} {text:?} is not an RFC 3339 time")]
    Time { method: &'static str, route: &'static str, field: &'static str, text: &'static str },
    #[error(
        "{method} {route}: the sunset must come at least {MIN_NOTICE_DAYS} days after the deprecation"
    )]
    ShortNotice { method: &'static str, route: &'static str },
    #[error("{method} {route}: {link:?} cannot be sent in a Link header")]
    Link { method: &'static str, route: &'static str, link: &'static str },
    #[error("{method} {route} is listed twice")]
    Duplicate { method: &'static str, route: &'static str },
}

impl Deprecations {
    /// Checks `routes` against the policy: under `/v1/`, listed once,
    /// times in RFC 3339, the sunset at least [`MIN_NOTICE_DAYS`] after
    /// the deprecation, links that fit a header.
    pub fn new(routes: &[DeprecatedRoute]) -> Result<Deprecations, DeprecationError> {
        let mut parsed: Vec<Deprecation> = Vec::with_capacity(routes.len());
        for entry in routes {
            let deprecation = Deprecation::new(entry)?;
            if parsed
                .iter()
                .any(|other| other.method == deprecation.method && other.route == deprecation.route)
            {
                return Err(DeprecationError::Duplicate {
                    method: entry.method,
                    route: entry.route,
                });
            }
            parsed.push(deprecation);
        }
        Ok(Deprecations(parsed.into()))
    }

    /// [`DEPRECATED_ROUTES`].
    pub fn builtin() -> Deprecations {
        Deprecations::new(DEPRECATED_ROUTES).expect("DEPRECATED_ROUTES follows the policy")
    }

    fn find(&self, method: &Method, route: &str) -> Option<&Deprecation> {
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.0.iter().find(|deprecation| deprecation.method == method && deprecation.route == route)
    }

    /// Marks the deprecated operations of `openapi`; returns the entries it
    /// found no operation for (`method route`).
    pub(crate) fn mark(&self, openapi: &mut utoipa::openapi::OpenApi) -> Vec<String> {
        let mut missing = Vec::new();
        for deprecation in self.0.iter() {
            match operation(openapi, &deprecation.method, deprecation.route) {
                Some(operation) => deprecation.mark(operation),
                None => missing.push(format!("{} {}", deprecation.method, deprecation.route)),
            }
        }
        missing
    }
}

impl Default for Deprecations {
    fn default() -> Self {
        Deprecations::builtin()
    }
}

impl Deprecation {
    fn new(entry: &DeprecatedRoute) -> Result<Deprecation, DeprecationError> {
        let DeprecatedRoute { method, route, .. } = *entry;
        let parsed_method = Method::from_bytes(method.as_bytes()).ok().filter(|parsed| {
            [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(parsed)
        });
        let Some(parsed_method) = parsed_method.filter(|_| route.starts_with("/v1/")) else {
            return Err(DeprecationError::Route { method, route });
        };
        let time = |field: &'static str, text: &'static str| {
            DateTime::parse_from_rfc3339(text)
                .map(|time| time.with_timezone(&Utc))
                .map_err(|_| DeprecationError::Time { method, route, field, text })
        };
        let deprecated_at = time("deprecated_at", entry.deprecated_at)?;
        let sunset_at = time("sunset_at", entry.sunset_at)?;
        if sunset_at < deprecated_at + TimeDelta::days(MIN_NOTICE_DAYS) {
            return Err(DeprecationError::ShortNotice { method, route });
        }
        let mut headers = vec![
            (header_name("deprecation"), value(format!("@{}", deprecated_at.timestamp()))),
            (
                header_name("sunset"),
                value(sunset_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
            ),
        ];
        let links = [
            (entry.successor, "rel=\"successor-version\""),
            (entry.documentation, "rel=\"deprecation\"; type=\"text/html\""),
        ];
        for (link, relation) in links {
            let Some(link) = link else { continue };
            let fits = !link.is_empty() && !link.contains(['<', '>', ' ', '"']);
            let header_value = HeaderValue::try_from(format!("<{link}>; {relation}"));
            match header_value {
                Ok(header_value) if fits => headers.push((header::LINK, header_value)),
                _ => return Err(DeprecationError::Link { method, route, link }),
            }
        }
        Ok(Deprecation {
            method: parsed_method,
            route,
            deprecated_at,
            sunset_at,
            successor: entry.successor,
            headers,
        })
    }

    fn mark(&self, operation: &mut Operation) {
        operation.deprecated = Some(utoipa::openapi::Deprecated::True);
        let mut note = format!(
            "**Deprecated** since {}; it may stop answering after {}.",
            self.deprecated_at.format("%Y-%m-%d"),
            self.sunset_at.format("%Y-%m-%d"),
        );
        if let Some(successor) = self.successor {
            note.push_str(&format!(" Use `{successor}` instead."));
        }
        operation.description = Some(match operation.description.take() {
            Some(description) => format!("{note}\n\n{description}"),
            None => note,
        });
    }
}

fn operation<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    method: &Method,
    route: &str,
) -> Option<&'a mut Operation> {
    let item = openapi.paths.paths.get_mut(route)?;
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

fn header_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("dates and numbers are valid header values")
}

/// Part of the middleware around every `/v1` route (see
/// [`crate::platform`]): adds the headers to the responses of deprecated
/// routes, whatever their status.
pub(crate) async fn announce<Fut: Future<Output = Response>>(
    deprecations: &Deprecations,
    request: Request,
    next: impl FnOnce(Request) -> Fut,
) -> Response {
    let deprecation = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|route| deprecations.find(request.method(), route.as_str()));
    let Some(deprecation) = deprecation else {
        return next(request).await;
    };
    metrics::counter!(
        "spool_api_deprecated_requests_total",
        "method" => deprecation.method.as_str().to_owned(),
        "route" => deprecation.route,
    )
    .increment(1);
    let mut response = next(request).await;
    for (name, value) in &deprecation.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: DeprecatedRoute = DeprecatedRoute {
        method: "GET",
        route: "/v1/stats/events",
        deprecated_at: "2026-01-01T00:00:00Z",
        sunset_at: "2026-07-01T00:00:00Z",
        successor: Some("/v1/usage"),
        documentation: Some("https://spool.dev/docs/deprecations"),
    };

    #[test]
    fn the_builtin_table_follows_the_policy_and_names_documented_operations() {
        let mut openapi = <crate::openapi::ApiDoc as utoipa::OpenApi>::openapi();
        assert_eq!(Deprecations::builtin().mark(&mut openapi), Vec::<String>::new());
    }

    #[test]
    fn headers_follow_rfc_9745_and_rfc_8594() {
        let deprecations = Deprecations::new(&[ROUTE]).unwrap();
        let deprecation = deprecations.find(&Method::HEAD, "/v1/stats/events").unwrap();
        let headers: Vec<_> = deprecation
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                "deprecation: @1767225600",
                "sunset: Wed, 01 Jul 2026 00:00:00 GMT",
                "link: </v1/usage>; rel=\"successor-version\"",
                "link: <https://spool.dev/docs/deprecations>; rel=\"deprecation\"; type=\"text/html\"",
            ]
        );
        assert!(deprecations.find(&Method::POST, "/v1/stats/events").is_none());
    }

    #[test]
    fn entries_that_break_the_policy_are_refused() {
        let refused = |entry: DeprecatedRoute| Deprecations::new(&[entry]).unwrap_err().to_string();
        assert!(
            refused(DeprecatedRoute { sunset_at: "2026-03-01T00:00:00Z", ..ROUTE })
                .contains("at least 180 days")
        );
        assert!(refused(DeprecatedRoute { route: "/healthz", ..ROUTE }).contains("under /v1/"));
        assert!(refused(DeprecatedRoute { method: "BREW", ..ROUTE }).contains("under /v1/"));
        assert!(
            refused(DeprecatedRoute { deprecated_at: "2026-01-01", ..ROUTE })
                .contains("deprecated_at \"2026-01-01\" is not an RFC 3339 time")
        );
        assert!(
            refused(DeprecatedRoute { successor: Some("/v1/a b"), ..ROUTE })
                .contains("cannot be sent in a Link header")
        );
        let twice = Deprecations::new(&[ROUTE, ROUTE]).unwrap_err().to_string();
        assert!(twice.contains("listed twice"), "{twice}");
    }
}
