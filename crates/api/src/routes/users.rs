//! `/v1/users`: create, read, list.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{PhoneNumber, ProfileImage, StatusText, UserId, UserName, ValidationErrors};
use kurir_store::{
    StoreError,
    idempotency::{self as key_store, Scope},
    users,
};
use serde::Deserialize;

use crate::{
    AppState,
    dto::{Limit, UserJson, UserList, decode_cursor, encode_cursor},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
    idempotency::{HEADER, IdempotencyKey, Kept, claim, fingerprint, kept_json, replay, respond},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    id: Option<String>,
    name: Option<String>,
    phone_number: Option<String>,
    profile_image: Option<String>,
    status: Option<String>,
}

impl CreateUser {
    /// The request's fingerprint for its idempotency key: every field as
    /// given (absent and present apart).
    fn fingerprint(&self) -> [u8; 32] {
        let fields = [
            &self.id,
            &self.name,
            &self.phone_number,
            &self.profile_image,
            &self.status,
        ];
        let given: Vec<&[u8]> = fields
            .iter()
            .map(|field| field.as_deref().map_or(&b"\0absent"[..], str::as_bytes))
            .collect();
        fingerprint(std::iter::once(&b"POST /v1/users"[..]).chain(given))
    }

    fn parse(self) -> Result<users::NewUser, ApiError> {
        let mut errors = ValidationErrors::default();
        let id = match self.id {
            Some(raw) => errors.check(UserId::parse("id", &raw)),
            None => Some(UserId::generate()),
        };
        let name = errors.require("name", self.name);
        let name = name.and_then(|raw| errors.check(UserName::parse("name", &raw)));
        let phone = errors.require("phone_number", self.phone_number);
        let phone = phone.and_then(|raw| errors.check(PhoneNumber::parse("phone_number", &raw)));
        let image = match self.profile_image {
            Some(raw) => errors
                .check(ProfileImage::parse("profile_image", &raw))
                .map(Some),
            None => Some(None),
        };
        let status = errors.check(StatusText::parse_initial(
            "status",
            self.status.as_deref().unwrap_or(""),
        ));
        match (id, name, phone, image, status) {
            (Some(id), Some(name), Some(phone_number), Some(profile_image), Some(status))
                if errors.is_empty() =>
            {
                Ok(users::NewUser {
                    id,
                    name,
                    phone_number,
                    profile_image,
                    status,
                })
            }
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// `POST /v1/users`: 201 with the user. With an `Idempotency-Key`, the key
/// is claimed in the transaction that inserts the user, so a repeat (or a
/// concurrent twin) gets the first response and creates nothing.
pub async fn create(
    State(state): State<AppState>,
    Account(account): Account,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<Response> {
    let print = body.fingerprint();
    let new_user = body.parse()?;
    let Some(key) = key else {
        let user = state
            .db
            .run(async |client| users::insert(client, account, &new_user).await)
            .await
            .map_err(conflict)?;
        return Ok(respond(created(user), false));
    };
    // The response is known once the user is: kept by the same transaction.
    let mut claim = claim(account, Scope::Request, key, print, created_placeholder());
    let outcome = state
        .db
        .transaction(async |tx: &kurir_store::Transaction<'_>| {
            let held = key_store::claim_many(tx, std::slice::from_ref(&claim)).await?;
            if !held.first().copied().unwrap_or(false) {
                return Ok(Err(key_store::lookup(tx, &claim.key).await?));
            }
            let user = users::insert(tx, account, &new_user).await?;
            claim.response = created(user);
            key_store::set_response(tx, &claim.key, &claim.response).await?;
            Ok(Ok(claim.response.clone()))
        })
        .await
        .map_err(conflict)?;
    match outcome {
        Ok(response) => Ok(respond(response, false)),
        Err(Some(first)) => Ok(respond(replay(HEADER, first, &print)?, true)),
        Err(None) => Err(ApiError::conflict(
            HEADER,
            "a request with this key was being processed; send it again",
        )),
    }
}

/// The 201 answer for `user`.
fn created(user: users::User) -> Kept {
    let location = format!("/v1/users/{}", user.id);
    kept_json(StatusCode::CREATED, Some(location), &UserJson::from(user))
}

/// What a claim keeps until the user is inserted (in the same transaction,
/// so nobody ever reads it).
fn created_placeholder() -> Kept {
    Kept {
        status: StatusCode::CREATED.as_u16(),
        body: Vec::new(),
        location: None,
    }
}

/// A duplicate id or phone number as a 409 naming the field.
fn conflict(err: StoreError) -> ApiError {
    match err {
        StoreError::Conflict { constraint } if constraint == "users_phone_number_key" => {
            ApiError::conflict(
                "phone_number",
                "a user with this phone number exists already",
            )
        }
        StoreError::Conflict { .. } => {
            ApiError::conflict("id", "a user with this id exists already")
        }
        err => err.into(),
    }
}

/// A path id that cannot be a user id names no user: 404, like any unknown id.
pub fn user_id(raw: &str) -> ApiResult<UserId> {
    UserId::parse("id", raw).map_err(|_| ApiError::not_found("user"))
}

pub async fn get(
    State(state): State<AppState>,
    Account(account): Account,
    Id(id): Id,
) -> ApiResult<Json<UserJson>> {
    let id = user_id(&id)?;
    let user = state
        .db
        .run(async |client| users::get(client, account, &id).await)
        .await?;
    user.map(|user| Json(user.into()))
        .ok_or_else(|| ApiError::not_found("user"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Limit,
    cursor: Option<String>,
}

const CURSOR_TAG: &str = "u";

pub async fn list(
    State(state): State<AppState>,
    Account(account): Account,
    Params(query): Params<ListQuery>,
) -> ApiResult<Json<UserList>> {
    let Limit(limit) = query.limit;
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => {
            let position = decode_cursor(CURSOR_TAG, cursor)?;
            Some(
                position
                    .parse::<i64>()
                    .map_err(|_| ApiError::field("cursor", "is not a cursor this list gave out"))?,
            )
        }
    };
    let mut page = state
        .db
        .run(async |client| users::list(client, account, after, limit + 1).await)
        .await?;
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last()
            .map(|user| encode_cursor(CURSOR_TAG, &user.seq.to_string()))
    } else {
        None
    };
    Ok(Json(UserList {
        users: page.into_iter().map(UserJson::from).collect(),
        next_cursor,
    }))
}
