//! `Idempotency-Key` (docs/api.md, "Retrying safely"): a creating POST sent again with
//! the same key and the same request within 24 hours gets the first
//! response back, byte for byte, and creates nothing; the same key with
//! another request is 422. Keys belong to the account of the API key.
//!
//! "The same request" is the same method, path and meaning of the body:
//! the fingerprint is taken from the parsed fields, so whitespace or the
//! order of fields does not matter, and a typo is refused before any key
//! is looked at. The record of a key is stored in the transaction that
//! stores its row (see `kurir_store::idempotency`).

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use kurir_core::AccountId;
use kurir_store::idempotency::{Claim, Key, Recorded, Scope};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

pub use kurir_store::idempotency::Response as Kept;

/// The header a client sends its key in.
pub const HEADER: &str = "Idempotency-Key";
/// Set on a response that repeats a first one.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest key: 1–255 visible ASCII characters (docs/api.md).
pub const MAX_KEY: usize = 255;

/// The request's `Idempotency-Key`, if it sent one: 1–255 visible ASCII
/// characters, else 422 naming the header.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(ApiError::field(HEADER, "is given more than once"));
        }
        let key = value
            .to_str()
            .map_err(|_| ApiError::field(HEADER, "must be visible ASCII characters"))?;
        check_key(HEADER, key).map(|key| Self(Some(key)))
    }
}

/// A key as given in `field` (the header, or a batch item's `idempotency_key`).
pub fn check_key(field: &str, key: &str) -> Result<String, ApiError> {
    match key_problem(key) {
        Some(problem) => Err(ApiError::field(field, problem)),
        None => Ok(key.to_owned()),
    }
}

/// What is wrong with `key`, if anything.
pub fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Some(format!(
            "must be 1 to {MAX_KEY} characters, got {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Some("must be visible ASCII characters".into());
    }
    None
}

/// SHA-256 of `parts`, each length-prefixed so that no two different lists
/// of parts hash alike.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// A JSON value written with object keys sorted at every depth: the same
/// meaning gives the same bytes.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    // A map that keeps insertion order is written in sorted order above; a
    // sorted map is sorted already. Either way the bytes are canonical.
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

/// A claim of `key` (in `scope`) for a request with `fingerprint`,
/// keeping `response`.
pub fn claim(
    account: AccountId,
    scope: Scope,
    key: String,
    fingerprint: [u8; 32],
    response: Kept,
) -> Claim {
    Claim {
        key: Key {
            account,
            scope,
            key,
        },
        fingerprint,
        response,
    }
}

/// The answer to a request whose key is taken: the first response if it
/// was the same request, else 422 naming `field`.
pub fn replay(field: &str, recorded: Recorded, fingerprint: &[u8; 32]) -> Result<Kept, ApiError> {
    if recorded.fingerprint.as_slice() == fingerprint {
        Ok(recorded.response)
    } else {
        Err(ApiError::field(
            field,
            "was used with a different request in the last 24 hours; send a new key for a new request",
        ))
    }
}

/// The kept response as an HTTP response; marked replayed if it repeats one.
pub fn respond(kept: Kept, replayed: bool) -> Response {
    let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = kept
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    (status, headers, kept.body).into_response()
}

/// A JSON response body to keep and send.
pub fn kept_json(
    status: StatusCode,
    location: Option<String>,
    body: &impl serde::Serialize,
) -> Kept {
    Kept {
        status: status.as_u16(),
        body: serde_json::to_vec(body).unwrap_or_default(),
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_parts_apart() {
        let ab = fingerprint([&b"ab"[..], b"c"]);
        let a_bc = fingerprint([&b"a"[..], b"bc"]);
        assert_ne!(ab, a_bc);
        assert_eq!(ab, fingerprint([&b"ab"[..], b"c"]));
    }

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let one: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}}"#)
                .unwrap();
        let two: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[1,{"p":1,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&one), canonical_json(&two));
        let other: serde_json::Value = serde_json::from_str(r#"{"a":{"x":null},"b":1}"#).unwrap();
        assert_ne!(canonical_json(&one), canonical_json(&other));
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key(HEADER, "order-42/retry").is_ok());
        assert!(check_key(HEADER, "").is_err());
        assert!(check_key(HEADER, &"k".repeat(256)).is_err());
        assert!(check_key(HEADER, &"k".repeat(255)).is_ok());
        assert!(check_key(HEADER, "tab\there").is_err());
    }
}
