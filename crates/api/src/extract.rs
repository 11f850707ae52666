//! Extractors that turn every kind of bad input into a clear problem:
//! JSON bodies (415 / 413 / 408 / 400 / 422 naming the field), query strings
//! (422 naming the parameter) and bearer keys (401). Both bodies and queries
//! go through `serde_path_to_error`, so a problem names the field it is about.

use std::collections::HashSet;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, header, request::Parts},
};
use kurir_core::{AccountId, apikey};
use kurir_store::keys;
use serde::de::DeserializeOwned;

use crate::{
    AppState,
    error::{ApiError, ApiResult},
};

/// A JSON request body. Fields of `T` should be `Option`s, so a missing field
/// is reported by the handler's validation together with every other problem;
/// a field of the wrong JSON type is reported here, by name, and so is an
/// unknown field if `T` denies them (every request body does: a misspelt
/// field must not be dropped silently).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Whether `headers` say the body is JSON (`application/json` or `…+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body size a request announces in `Content-Length`, if it is a number.
fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Parses a JSON object into `T`, naming the field on a type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // serde would read a struct from an array too (`["hi"]`); only objects are bodies.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'[')) {
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::unparsable(&field, strip_position(&inner.to_string()))
            }
            _ => ApiError::malformed_json(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::malformed_json(format!("the body is not valid JSON: {err}")))?;
    Ok(value)
}

/// "invalid type: integer `5`, expected a string at line 1 column 14" → without the position.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = read_body(request, state, state.max_body_bytes).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a whole request body of at most `limit` bytes (413 past it)
/// within the body deadline (408 past it). The route's `DefaultBodyLimit`
/// must allow `limit`.
pub(crate) async fn read_body(request: Request, state: &AppState, limit: u64) -> ApiResult<Bytes> {
    // The limit on the read below bites only once that many bytes have
    // arrived; a client that announced more would wait for an answer
    // while it sends them. Refuse it before reading any.
    if announced_length(request.headers()).is_some_and(|len| len > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let deadline = state.timeouts.body;
    let read = tokio::time::timeout(deadline, Bytes::from_request(request, state));
    read.await
        .map_err(|_| {
            ApiError::request_timeout(format!(
                "the request body did not arrive within {}",
                humantime::format_duration(deadline)
            ))
        })?
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })
}

/// Query parameters, parsed the way bodies are ([`parse_query`]): a repeated,
/// unknown or malformed parameter is a 422 naming it.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(Params)
    }
}

/// Parses a raw query string into `T`, naming the parameter on any error.
/// `T` should deny unknown fields, so a misspelt parameter is not ignored.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> ApiResult<T> {
    // serde refuses a repeated field only after the fact, with no path to
    // tell which one; look for repeats first.
    let mut seen = HashSet::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(name.clone()) {
            return Err(ApiError::field(&name, "is given more than once"));
        }
    }
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "query" } else { &path };
        ApiError::unparsable(field, err.into_inner().to_string())
    })
}

/// The one id in a path. A segment that is not even valid text names nothing: 404.
#[derive(Debug)]
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|_| ApiError::route_not_found())
    }
}

/// The account of the request's API key (`Authorization: Bearer <key>`).
#[derive(Debug, Clone, Copy)]
pub struct Account(pub AccountId);

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "send your API key as Authorization: Bearer <key>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.len() <= 512)
            .ok_or_else(|| {
                ApiError::unauthorized("send your API key as Authorization: Bearer <key>")
            })?;
        let hash = apikey::hash(token);
        if let Some(account) = state.keys.get(&hash) {
            return Ok(Account(account));
        }
        let account = state
            .db
            .run(async |client| keys::account_for_key(client, &hash).await)
            .await?;
        let account = account.ok_or_else(|| {
            ApiError::unauthorized("the API key is not valid (unknown or revoked)")
        })?;
        state.keys.put(&hash, account);
        Ok(Account(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        message: Option<String>,
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"message": 5}"#).unwrap_err();
        assert_eq!(err.status(), 422);
        let err = parse_json::<Body>(br#"["hi"]"#).unwrap_err();
        assert_eq!(err.status(), 422);
        let err = parse_json::<Body>(br#"  "hi""#).unwrap_err();
        assert_eq!(err.status(), 422);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse_json::<Body>(br#"{"mesage": "hi"}"#).unwrap_err();
        assert_eq!(err.status(), 422);
        assert_eq!(err.errors()[0].field, "mesage");
        assert_eq!(
            err.errors()[0].message,
            "unknown field `mesage`, expected `message`"
        );
    }

    #[test]
    fn syntax_errors_are_400() {
        for bad in [&b"{"[..], b"", b"{\"message\": \"x\"} trailing", b"nope"] {
            let err = parse_json::<Body>(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_announced_length_is_read_from_content_length() {
        let mut headers = HeaderMap::new();
        assert_eq!(announced_length(&headers), None);
        headers.insert(header::CONTENT_LENGTH, "2097152".parse().unwrap());
        assert_eq!(announced_length(&headers), Some(2_097_152));
        headers.insert(header::CONTENT_LENGTH, "lots".parse().unwrap());
        assert_eq!(announced_length(&headers), None);
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&headers));
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&headers));
    }
}
