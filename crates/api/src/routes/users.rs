//! `/v1/users`: create, read, list.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use kurir_core::{PhoneNumber, ProfileImage, StatusText, UserId, UserName, ValidationErrors};
use kurir_store::{StoreError, users};
use serde::Deserialize;

use crate::{
    AppState,
    dto::{Limit, UserJson, UserList, decode_cursor, encode_cursor},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
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

pub async fn create(
    State(state): State<AppState>,
    Account(account): Account,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, HeaderMap, Json<UserJson>)> {
    let new_user = body.parse()?;
    let result = state
        .db
        .run(async |client| users::insert(client, account, &new_user).await)
        .await;
    let user = match result {
        Ok(user) => user,
        Err(StoreError::Conflict { constraint }) if constraint == "users_phone_number_key" => {
            return Err(ApiError::conflict(
                "phone_number",
                "a user with this phone number exists already",
            ));
        }
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(
                "id",
                "a user with this id exists already",
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/users/{}", user.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(user.into())))
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
