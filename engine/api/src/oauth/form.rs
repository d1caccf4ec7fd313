//! The `application/x-www-form-urlencoded` bodies of the OAuth endpoints.
//! RFC 6749 §3.2: a parameter sent twice is an error, and a parameter
//! sent empty counts as not sent.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::{HeaderMap, header};

use super::MAX_FORM_BYTES;
use super::error::OAuthError;

/// The parameters of a form body, each at most once.
pub(crate) struct Form {
    parameters: Vec<(String, String)>,
}

/// Names only: the values include client secrets and tokens.
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.parameters.iter().map(|(name, _)| name)).finish()
    }
}

impl Form {
    /// The body as a form, or `invalid_request` naming what is wrong.
    pub(crate) fn parse(
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Form, OAuthError> {
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::trim);
        if !media_type.is_some_and(|media| media.eq_ignore_ascii_case(FORM_MEDIA_TYPE)) {
            return Err(OAuthError::invalid_request(format!("the body must be {FORM_MEDIA_TYPE}")));
        }
        let body = body.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                OAuthError::invalid_request(format!(
                    "the body may hold at most {MAX_FORM_BYTES} bytes"
                ))
            }
            _ => OAuthError::invalid_request("the body could not be read"),
        })?;
        let mut parameters: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(&body) {
            if value.is_empty() {
                continue;
            }
            if parameters.iter().any(|(seen, _)| *seen == name) {
                return Err(OAuthError::invalid_request(format!(
                    "the parameter `{name}` is sent more than once"
                )));
            }
            parameters.push((name.into_owned(), value.into_owned()));
        }
        Ok(Form { parameters })
    }

    /// The value of `name`, if sent.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.parameters.iter().find(|(seen, _)| seen == name).map(|(_, value)| value.as_str())
    }

    /// The value of `name`, or `invalid_request` saying it is missing.
    pub(crate) fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| {
            OAuthError::invalid_request(format!("the parameter `{name}` is missing"))
        })
    }
}

pub(crate) const FORM_MEDIA_TYPE: &str = "application/x-www-form-urlencoded";

/// Decodes one `application/x-www-form-urlencoded` value, as RFC 6749
/// §2.3.1 encodes the client id and secret inside HTTP Basic.
pub(crate) fn decode_value(encoded: &str) -> String {
    form_urlencoded::parse(format!("v={encoded}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &'static str) -> Result<Form, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
        Form::parse(&headers, Ok(Bytes::from_static(body.as_bytes())))
    }

    #[test]
    fn repeated_parameters_are_refused_and_empty_ones_are_not_sent() {
        let error = form("grant_type=client_credentials&scope=a&scope=b").unwrap_err();
        assert!(error.description.contains("`scope`"), "{}", error.description);
        let parsed = form("grant_type=client_credentials&scope=").unwrap();
        assert_eq!(parsed.get("grant_type"), Some("client_credentials"));
        assert_eq!(parsed.get("scope"), None);
    }

    #[test]
    fn values_are_percent_decoded() {
        assert_eq!(decode_value("a%3Ab+c"), "a:b c");
        assert_eq!(
            form("scope=events%3Aread+usage%3Aread").unwrap().get("scope"),
            Some("events:read usage:read")
        );
    }
}
