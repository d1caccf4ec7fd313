//! The OpenAPI document against what the router really serves: every route
//! documented and every documented route served, each operation with its
//! security scheme and the scope it really needs, its errors and its
//! examples, and the document itself well formed (OpenAPI 3.1, unique
//! operation ids, every `$ref` resolving).
//!
//! [`ROUTES`] is the route table this test holds the router and the
//! document to: a route added to the router (or the document) without the
//! other fails here, and so does a documented scope the handler does not
//! ask for.

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use spool_schemas::{ClientId, KeyId, Scope};

use support::*;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// No credential: the ops routes and the public keys.
    Public,
    /// An OAuth client authenticating itself (`/oauth/*`).
    Client,
    /// An API key or access token holding this scope (or `admin`).
    Scope(Scope),
}

use Access::{Client, Public};

const fn scope(scope: Scope) -> Access {
    Access::Scope(scope)
}

/// Every route the router serves, with who may call it.
const ROUTES: &[(&str, &str, Access)] = &[
    ("POST", "/v1/events", scope(Scope::EventsWrite)),
    ("GET", "/v1/events", scope(Scope::EventsRead)),
    ("GET", "/v1/events/stream", scope(Scope::EventsRead)),
    ("GET", "/v1/stats/events", scope(Scope::EventsRead)),
    ("GET", "/v1/usage", scope(Scope::UsageRead)),
    ("POST", "/v1/keys", scope(Scope::Admin)),
    ("GET", "/v1/keys", scope(Scope::Admin)),
    ("GET", "/v1/keys/{id}", scope(Scope::Admin)),
    ("DELETE", "/v1/keys/{id}", scope(Scope::Admin)),
    ("POST", "/v1/keys/{id}/roll", scope(Scope::Admin)),
    ("POST", "/v1/oauth/clients", scope(Scope::Admin)),
    ("GET", "/v1/oauth/clients", scope(Scope::Admin)),
    ("GET", "/v1/oauth/clients/{id}", scope(Scope::Admin)),
    ("DELETE", "/v1/oauth/clients/{id}", scope(Scope::Admin)),
    ("GET", "/v1/rate-limits/tiers", scope(Scope::Admin)),
    ("PUT", "/v1/rate-limits/tiers/{tier}", scope(Scope::Admin)),
    ("GET", "/v1/rate-limits/keys/{id}", scope(Scope::Admin)),
    ("PUT", "/v1/rate-limits/keys/{id}", scope(Scope::Admin)),
    ("POST", "/oauth/token", Client),
    ("POST", "/oauth/introspect", Client),
    ("POST", "/oauth/revoke", Client),
    ("GET", "/.well-known/jwks.json", Public),
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
];

/// Served but not operations of the document: the document itself and
/// its interactive viewer.
const DOCUMENTATION_ROUTES: &[&str] = &["/openapi.json", "/docs/"];

/// The files whose `.route(…)` calls make up the router.
const ROUTER_SOURCES: &[&str] =
    &[include_str!("../src/lib.rs"), include_str!("../src/oauth/mod.rs")];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

fn table() -> BTreeSet<(String, String)> {
    ROUTES.iter().map(|(method, path, _)| (method.to_string(), path.to_string())).collect()
}

fn access(method: &str, path: &str) -> Access {
    ROUTES
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == path)
        .unwrap_or_else(|| panic!("{method} {path} is not in ROUTES"))
        .2
}

/// Every `(METHOD, path)` of the document.
fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                operations.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    operations
}

/// The `(METHOD, path)` pairs of the `.route(path, get(…).post(…))` calls
/// in `source`.
fn routes_in(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find(".route(") {
        let call = &rest[start + ".route(".len()..];
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(index, _)| index)
            .expect("a closed .route( call");
        let arguments = &call[..end];
        let path = arguments.split('"').nth(1).expect("a path literal");
        for method in ["get", "post", "put", "delete", "patch"] {
            let called = arguments.match_indices(&format!("{method}(")).any(|(index, _)| {
                index == 0
                    || !arguments[..index]
                        .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if called {
                routes.push((method.to_uppercase(), path.to_owned()));
            }
        }
        rest = &call[end..];
    }
    routes
}

/// `path` with its parameters filled with ids that exist nowhere.
fn concrete(path: &str) -> String {
    path.replace("/v1/oauth/clients/{id}", &format!("/v1/oauth/clients/{}", ClientId::new()))
        .replace("{id}", &KeyId::new().to_string())
        .replace("{tier}", "gold")
}

async fn request(h: &Harness, method: &str, uri: &str, key: Option<&Key>) -> Response {
    let mut request =
        Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(uri);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", key.secret));
    }
    if method == "POST" && uri.starts_with("/oauth/") {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    } else if method != "GET" && method != "DELETE" {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    h.send(request.body(Body::from(if uri.starts_with("/oauth/") { "" } else { "{}" })).unwrap())
        .await
}

/// The fallback's answer, which no served route may give.
fn is_fallback(response: &Response) -> bool {
    response.status == StatusCode::NOT_FOUND
        && response.json["detail"] == "no route matches this path"
}

#[tokio::test]
async fn the_router_the_route_table_and_the_document_list_the_same_routes() {
    let served: BTreeSet<(String, String)> =
        ROUTER_SOURCES.iter().flat_map(|source| routes_in(source)).collect();
    assert!(served.len() > 20, "the router's source was read: {served:?}");
    assert_eq!(served, table(), "ROUTES must list exactly the routes of the router");

    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let documented: BTreeSet<(String, String)> =
        operations(&document).into_iter().map(|(method, path, _)| (method, path)).collect();
    assert_eq!(documented, table(), "the document must have exactly the routes of the router");
}

/// Every route answers from its handler, never from the fallback; a key
/// without the route's scope gets `403` naming exactly the documented
/// scope; a method a path does not document gets `405`.
#[tokio::test]
async fn every_documented_route_is_served_and_asks_for_its_documented_scope() {
    let h = harness().await;
    let admin = h.tenant(&[Scope::Admin]).await;
    let unknown = h.get(Some(&admin), "/v1/no-such-route").await;
    assert!(is_fallback(&unknown), "the fallback is recognisable: {}", unknown.json);

    for &(method, path, access) in ROUTES {
        let uri = concrete(path);
        let response = match access {
            Access::Scope(needed) => {
                let others: Vec<Scope> =
                    Scope::ALL.into_iter().filter(|s| *s != needed && *s != Scope::Admin).collect();
                let key = h.key(admin.tenant, &others, None).await;
                let response = request(&h, method, &uri, Some(&key)).await;
                assert_eq!(
                    response.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path}: {}",
                    response.json
                );
                assert_eq!(
                    response.problem_type(),
                    "https://spool.dev/problems/insufficient-scope"
                );
                let detail = response.json["detail"].as_str().unwrap();
                assert!(
                    detail.contains(&format!("`{needed}`")),
                    "{method} {path} names {needed}: {detail}"
                );
                response
            }
            Client => {
                let response = request(&h, method, &uri, None).await;
                assert!(
                    response.status == StatusCode::UNAUTHORIZED
                        || response.status == StatusCode::BAD_REQUEST,
                    "{method} {path} without client authentication: {} {}",
                    response.status,
                    response.json
                );
                assert!(
                    response.json["error"].is_string(),
                    "an OAuth error body: {}",
                    response.json
                );
                response
            }
            Public => {
                let response = request(&h, method, &uri, None).await;
                assert_eq!(response.status, StatusCode::OK, "{method} {path}: {}", response.json);
                response
            }
        };
        assert!(!is_fallback(&response), "{method} {path} is served");
    }
    for path in DOCUMENTATION_ROUTES {
        assert_eq!(h.get(None, path).await.status, StatusCode::OK, "{path}");
    }

    let document = h.get(None, "/openapi.json").await.json;
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if item.get(method.to_lowercase()).is_some() {
                continue;
            }
            let response = request(&h, method, &concrete(path), Some(&admin)).await;
            assert_eq!(
                response.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is not documented, so must not be served: {}",
                response.json
            );
        }
    }
}

#[tokio::test]
async fn every_operation_names_its_security_scope_errors_and_examples() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["client_basic"]["scheme"], "basic");
    let oauth_scopes = schemes["oauth2"]["flows"]["clientCredentials"]["scopes"]
        .as_object()
        .expect("oauth2 scopes");
    for scope in Scope::ALL {
        assert!(oauth_scopes.contains_key(scope.as_str()), "the oauth2 scheme lists {scope}");
    }

    let mut problems = Vec::new();
    for (method, path, operation) in operations(&document) {
        let route = format!("{method} {path}");
        let mut fail = |what: String| problems.push(format!("{route}: {what}"));
        let access = access(&method, &path);
        let security =
            operation.get("security").and_then(Value::as_array).cloned().unwrap_or_default();
        match access {
            Access::Scope(needed) => {
                let expected = serde_json::json!([{"api_key": [needed.as_str()]}, {"oauth2": [needed.as_str()]}]);
                if Value::Array(security) != expected {
                    fail(format!(
                        "security must be {expected} (an API key or an access token, with its scope)"
                    ));
                }
                if operation["responses"].get("403").is_none() {
                    fail("no 403 for a missing scope".into());
                }
            }
            Client => {
                if !security.iter().any(|requirement| requirement.get("client_basic").is_some()) {
                    fail("security must name client_basic".into());
                }
            }
            Public => {
                if !security
                    .iter()
                    .all(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()))
                {
                    fail(format!("a public route names no credential: {security:?}"));
                }
            }
        }
        if operation["operationId"].as_str().is_none_or(str::is_empty) {
            fail("no operationId".into());
        }

        let responses = operation["responses"].as_object().expect("responses");
        if access != Public {
            let error_body = |response: &Value| {
                let content = response["content"].as_object().cloned().unwrap_or_default();
                if path.starts_with("/oauth/") {
                    content.get("application/json").is_some_and(|media| {
                        media["schema"]["$ref"] == "#/components/schemas/OAuthErrorBody"
                    })
                } else {
                    content.contains_key("application/problem+json")
                }
            };
            let errors: Vec<&String> = responses
                .keys()
                .filter(|status| status.starts_with('4') || status.starts_with('5'))
                .collect();
            if !errors.iter().any(|status| error_body(&responses[*status])) {
                fail(
                    "no error response with a problem+json (or, for /oauth, an OAuth error) body"
                        .into(),
                );
            }
            for status in errors {
                let content = responses[status]["content"].as_object().cloned().unwrap_or_default();
                if !path.starts_with("/oauth/") && !content.contains_key("application/problem+json")
                {
                    fail(format!("the {status} body is not application/problem+json"));
                }
            }
        }
        if let Some(body) = operation.get("requestBody") {
            for (media_type, media) in body["content"].as_object().expect("request content") {
                if !has_example(&document, media) {
                    fail(format!("no example for the {media_type} request body"));
                }
            }
        }
        let successes: Vec<_> =
            responses.iter().filter(|(status, _)| status.starts_with('2')).collect();
        if successes.is_empty() {
            fail("no success response".into());
        }
        for (status, response) in successes {
            for (media_type, media) in response["content"].as_object().cloned().unwrap_or_default()
            {
                if !has_example(&document, &media) {
                    fail(format!("no example for the {status} {media_type} response"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the document is incomplete:\n{}", problems.join("\n"));
}

/// An example on the media type, or on the schema it names.
fn has_example(document: &Value, media: &Value) -> bool {
    if media.get("example").is_some() || media.get("examples").is_some() {
        return true;
    }
    let schema = match media["schema"]["$ref"].as_str() {
        Some(reference) => resolve(document, reference).cloned().unwrap_or(Value::Null),
        None => media["schema"].clone(),
    };
    schema.get("example").is_some() || schema.get("examples").is_some()
}

/// What a local `$ref` (`#/a/b`, RFC 6901 escapes) points at.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

#[tokio::test]
async fn the_document_is_well_formed_openapi_3_1() {
    let h = harness().await;
    let document = h.get(None, "/openapi.json").await.json;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1."), "{}", document["openapi"]);
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());

    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(references.len() > 20, "the document refers to its schemas");
    for reference in references {
        assert!(resolve(&document, &reference).is_some(), "{reference} resolves");
    }

    let schemes = document["components"]["securitySchemes"].as_object().expect("securitySchemes");
    let mut operation_ids = BTreeSet::new();
    for (method, path, operation) in operations(&document) {
        let route = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(operation_ids.insert(id.to_owned()), "{route}: operationId `{id}` is not unique");

        for requirement in operation["security"].as_array().cloned().unwrap_or_default() {
            for (scheme, scopes) in requirement.as_object().unwrap() {
                let defined =
                    schemes.get(scheme).unwrap_or_else(|| panic!("{route}: no scheme `{scheme}`"));
                if defined["type"] == "oauth2" {
                    let known = &defined["flows"]["clientCredentials"]["scopes"];
                    for scope in scopes.as_array().unwrap() {
                        assert!(
                            known.get(scope.as_str().unwrap()).is_some(),
                            "{route}: oauth2 has no scope {scope}"
                        );
                    }
                }
            }
        }
        // Every `{parameter}` of the path is declared, as a required path
        // parameter.
        let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
        for name in path.split('{').skip(1).map(|part| part.split('}').next().unwrap()) {
            assert!(
                parameters
                    .iter()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true),
                "{route}: the path parameter `{name}` is declared"
            );
        }
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            assert!(
                status == "default"
                    || (status.len() == 3
                        && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))),
                "{route}: response `{status}`"
            );
            assert!(
                response["description"].is_string(),
                "{route} {status}: a description is required"
            );
        }
    }
}

fn collect_references(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (name, value) in object {
                match (name.as_str(), value) {
                    ("$ref", Value::String(reference)) => references.push(reference.clone()),
                    _ => collect_references(value, references),
                }
            }
        }
        Value::Array(values) => {
            values.iter().for_each(|value| collect_references(value, references))
        }
        _ => {}
    }
}
