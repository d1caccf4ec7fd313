//! The rate-limit part of the OpenAPI document: every `/v1` operation may
//! answer `429`, and every one of its responses carries `RateLimit-Policy`
//! and `RateLimit`; the handlers' own annotations need not repeat it.

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use super::QuotaExceeded;

pub(crate) struct RateLimitDocs;

impl Modify for RateLimitDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(QuotaExceeded::name().into_owned(), QuotaExceeded::schema());
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.entry("429".to_owned()).or_insert_with(|| too_many_requests().into());
                for response in responses.values_mut() {
                    if let RefOr::T(response) = response {
                        add_headers(&mut response.headers);
                    }
                }
            }
        }
    }
}

fn too_many_requests() -> utoipa::openapi::Response {
    let example = serde_json::json!({
        "type": "https://spool.dev/problems/quota-exceeded",
        "title": "The request exceeds a rate-limit policy",
        "status": 429,
        "detail": "key key_01932c5a7e4c7d2a9a1f3b4c5d6e7f80 sent more requests than its rate-limit \
                   policy \"default\" allows (1000 per 1 s, in bursts of up to 5000); retry in 1 s",
        "violated-policies": ["default"],
    });
    ResponseBuilder::new()
        .description(
            "The key (or, without a valid credential, the client address) is over its \
             rate-limit policy: retry after `Retry-After` seconds",
        )
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(QuotaExceeded::name())))
                .example(Some(example))
                .build(),
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
                .description(Some("Seconds until one more request is allowed"))
                .build(),
        )
        .build()
}

fn add_headers(headers: &mut std::collections::BTreeMap<String, utoipa::openapi::header::Header>) {
    let text = |description: &str| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(description))
            .build()
    };
    headers.entry("RateLimit-Policy".to_owned()).or_insert_with(|| {
        text(
            "The policy the request counted against (draft-ietf-httpapi-ratelimit-headers): \
             `\"<name>\";q=<requests>;w=<window seconds>;spool-burst=<burst>`, such as \
             `\"default\";q=1000;w=1;spool-burst=5000`",
        )
    });
    headers.entry("RateLimit".to_owned()).or_insert_with(|| {
        text(
            "What is left of it: `\"<name>\";r=<requests allowed now>;t=<seconds until the \
             full burst is back>`, such as `\"default\";r=4999;t=1`; on a 429, `r=0` and `t` \
             equals `Retry-After`",
        )
    });
}
