//! `/v1/users`: create, read, list.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{PhoneNumber, ProfileImage, StatusText, UserId, UserName, ValidationErrors};
use kurir_store::{
    StoreError,
    idempotency::{self as key_store, Scope},
    users,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    dto::{Limit, UserJson, UserList, decode_cursor, encode_cursor},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
    idempotency::{HEADER, IdempotencyKey, Kept, claim, fingerprint, kept_json, replay, respond},
    openapi::{
        problems::{Conflict, ListErrors, ReadErrors, WriteErrors},
        schemas::IdempotencyHeader,
    },
};

/// A new user: `name` and `phone_number` are required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "id": "user123", "name": "John Doe", "phone_number": "+62123456789",
    "profile_image": "https://example.com/users/user123.jpg", "status": "online"
})))]
pub struct CreateUser {
    /// Chosen by the client, or generated (`usr_…`) when absent or null.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    id: Option<String>,
    /// 1–256 characters, not blank, no control characters.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 256,
        pattern = "^(?=[\\s\\S]*\\S)[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    name: Option<String>,
    /// E.164: `+` then 7 to 15 digits, not starting with 0; unique within the account.
    #[schema(value_type = String, required = true, pattern = "^\\+[1-9][0-9]{6,14}$")]
    phone_number: Option<String>,
    /// An absolute http(s) URL of at most 2048 characters, or null.
    #[schema(
        format = "uri",
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,4})?(/[A-Za-z0-9._~%/-]*)?$"
    )]
    profile_image: Option<String>,
    /// At most 139 characters, no control characters; empty when absent or null.
    #[schema(max_length = 139, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
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
#[utoipa::path(
    post, path = "/v1/users", tag = "users", operation_id = "create_user",
    summary = "Create a user",
    security(("bearer" = [])),
    params(IdempotencyHeader),
    request_body(content = CreateUser, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (or, with a replayed `Idempotency-Key`, the user as first created)", body = UserJson,
            headers(
                ("Location" = String, description = "`/v1/users/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the key"),
            )),
        WriteErrors, Conflict,
    ),
)]
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

/// `GET /v1/users/{id}`.
#[utoipa::path(
    get, path = "/v1/users/{id}", tag = "users", operation_id = "get_user",
    summary = "Get a user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user's id", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "user123")),
    responses(
        (status = 200, description = "The user", body = UserJson),
        ReadErrors,
    ),
)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(value_type = i64, required = false, minimum = 1, maximum = 1000)]
    limit: Limit,
    /// The `next_cursor` of the previous page (empty: the first page).
    #[param(value_type = String, required = false)]
    cursor: Option<String>,
}

const CURSOR_TAG: &str = "u";

/// `GET /v1/users`: the account's users, in creation order.
#[utoipa::path(
    get, path = "/v1/users", tag = "users", operation_id = "list_users",
    summary = "List users (the seed endpoint)",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        ListErrors,
    ),
)]
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
