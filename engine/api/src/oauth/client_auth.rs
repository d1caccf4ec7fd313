//! Client secrets and client authentication (RFC 6749 §2.3.1): HTTP Basic
//! with the form-encoded id and secret, or `client_id` and `client_secret`
//! in the form body; never both in one request.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use spool_projections::oauth::ClientRecord;
use subtle::ConstantTimeEq;

use super::error::{EndpointError, ErrorCode, OAuthError};
use super::form::{Form, decode_value};
use crate::AppState;

/// Every client secret starts with this, so that scanners can spot one.
pub(crate) const SECRET_PREFIX: &str = "spcs_";
/// Random base62 characters after the prefix (about 238 bits).
const SECRET_LEN: usize = 40;

/// A client secret's text. Its `Debug` shows nothing of it, so it cannot
/// reach a log by accident.
pub(crate) struct ClientSecret(String);

impl ClientSecret {
    /// A fresh secret from the thread's cryptographically secure generator.
    pub(crate) fn generate() -> ClientSecret {
        let random: String =
            rand::rng().sample_iter(Alphanumeric).take(SECRET_LEN).map(char::from).collect();
        ClientSecret(format!("{SECRET_PREFIX}{random}"))
    }

    /// Lowercase hex SHA-256 of the whole secret: what is stored.
    pub(crate) fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The text, to show once to whoever created the client.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(…)")
    }
}

/// Credentials as the client presented them, not yet checked.
#[derive(Debug)]
pub(crate) struct Presented {
    client_id: String,
    secret: ClientSecret,
}

/// The client credentials of a request: `None` when it has none (no
/// Authorization header, or a Bearer one, and none in the form).
pub(crate) fn presented(headers: &HeaderMap, form: &Form) -> Result<Option<Presented>, OAuthError> {
    let in_form = (form.get("client_id"), form.get("client_secret"));
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                None
            } else if scheme.eq_ignore_ascii_case("basic") {
                Some(basic_credentials(rest.trim())?)
            } else {
                return Err(invalid_client("the Authorization header must use Basic"));
            }
        }
    };
    match (basic, in_form) {
        (Some(_), (Some(_), _) | (_, Some(_))) => Err(OAuthError::invalid_request(
            "authenticate the client by HTTP Basic or by the form body, not both",
        )),
        (Some(basic), _) => Ok(Some(basic)),
        (None, (Some(client_id), Some(secret))) => Ok(Some(Presented {
            client_id: client_id.to_owned(),
            secret: ClientSecret(secret.to_owned()),
        })),
        (None, (Some(_), None)) => Err(invalid_client(
            "the client secret is missing: send `client_secret` with `client_id`",
        )),
        (None, (None, Some(_))) => {
            Err(OAuthError::invalid_request("`client_secret` was sent without `client_id`"))
        }
        (None, (None, None)) => Ok(None),
    }
}

/// `base64(form-encoded id ":" form-encoded secret)`.
fn basic_credentials(encoded: &str) -> Result<Presented, OAuthError> {
    let decoded = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| invalid_client("the Basic credentials are not valid base64 text"))?;
    let (client_id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| invalid_client("the Basic credentials must be `client_id:client_secret`"))?;
    Ok(Presented { client_id: decode_value(client_id), secret: ClientSecret(decode_value(secret)) })
}

fn invalid_client(description: &str) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClient, description)
}

/// The client the credentials belong to, or `invalid_client`. An unknown
/// client, a deleted one and a wrong secret fail alike, so the answer
/// does not tell which client ids exist.
pub(crate) async fn authenticate(
    state: &AppState,
    presented: &Presented,
) -> Result<ClientRecord, EndpointError> {
    let failed = || EndpointError::from(invalid_client("client authentication failed"));
    let Ok(client_id) = presented.client_id.parse() else {
        return Err(failed());
    };
    super::available(state)?;
    let Some(client) = spool_projections::oauth::client(&state.views, client_id).await? else {
        return Err(failed());
    };
    // Digests compared in constant time: the time taken says nothing about
    // how much of the secret was right.
    let presented_hash = Sha256::digest(presented.secret.expose().as_bytes());
    let stored_hash = hex::decode(&client.secret_hash).unwrap_or_default();
    let matches: bool = presented_hash.as_slice().ct_eq(&stored_hash).into();
    if !matches || client.deleted {
        return Err(failed());
    }
    Ok(client)
}

/// `invalid_client` for a request that presented no client credentials.
pub(crate) fn missing() -> OAuthError {
    invalid_client(
        "client authentication is required: HTTP Basic, or `client_id` and `client_secret` in \
         the form body",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hidden_from_debug() {
        let secret = ClientSecret::generate();
        assert!(secret.expose().starts_with(SECRET_PREFIX));
        assert_eq!(secret.expose().len(), SECRET_PREFIX.len() + SECRET_LEN);
        assert_ne!(ClientSecret::generate().expose(), secret.expose());
        assert_eq!(secret.hash().len(), 64);
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
