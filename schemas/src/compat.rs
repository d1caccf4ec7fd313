//! The one place where old payload versions are upgraded on read.
//!
//! Each step takes a payload of version `n` to `n + 1` as JSON, so a log
//! written by any earlier build reads as today's types. Recorded logs with
//! old versions live in `replay-tests/` and must keep reading.

use serde_json::{Value, json};

use crate::events::DecodeError;

/// Upgrades `data` of `type_name` from version `from` to version `to`.
pub(crate) fn upgrade(
    type_name: &str,
    from: u32,
    to: u32,
    mut data: Value,
) -> Result<Value, DecodeError> {
    for version in from..to {
        data = match (type_name, version) {
            // key.created v1 predates scopes and expiry: every v1 key could do
            // everything and never expired.
            ("key.created", 1) => {
                let mut object = data;
                if let Some(map) = object.as_object_mut() {
                    map.insert("scopes".into(), json!(["admin"]));
                    map.insert("expires_at".into(), Value::Null);
                }
                object
            }
            // api.call v1 predates OAuth: only API keys authenticated.
            ("api.call", 1) => {
                let mut object = data;
                if let Some(map) = object.as_object_mut() {
                    map.insert("client_id".into(), Value::Null);
                }
                object
            }
            _ => {
                return Err(DecodeError::NoUpgrade { type_name: type_name.to_owned(), version });
            }
        };
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use crate::events::{Event, KeyCreated};
    use crate::names::Scope;

    #[test]
    fn a_v1_key_created_reads_as_an_admin_key_without_expiry() {
        let v1 = r#"{"key_id":"key_0192b7a0c1d27e3a9f1b2c3d4e5f6071","name":"bootstrap","secret_hash":"ab"}"#;
        let Event::KeyCreated(KeyCreated { scopes, expires_at, .. }) =
            Event::decode("key.created", 1, v1).unwrap()
        else {
            panic!("not a key.created");
        };
        assert_eq!(scopes, vec![Scope::Admin]);
        assert_eq!(expires_at, None);
    }

    #[test]
    fn a_v1_api_call_reads_as_a_call_without_an_oauth_client() {
        let v1 =
            r#"{"key_id":null,"method":"GET","route":"/v1/events","status":401,"latency_us":95}"#;
        let Event::ApiCall(call) = Event::decode("api.call", 1, v1).unwrap() else {
            panic!("not an api.call");
        };
        assert_eq!((call.key_id, call.client_id, call.status), (None, None, 401));
    }

    #[test]
    fn a_version_from_the_future_is_an_error_not_a_guess() {
        let error = Event::decode("key.revoked", 9, "{}").unwrap_err();
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
