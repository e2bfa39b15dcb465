//! [`ApiJson`], the JSON body extractor whose every rejection is an [`ApiError`].
//!
//! axum's own `Json` answers a bad body with its own plain-text messages and statuses (415,
//! 422); OpenAI clients expect the error JSON, status 400 and a `param` naming the field at
//! fault. So the body is read as bytes (which enforces `DefaultBodyLimit`, hence 413), parsed
//! into a `serde_json::Value` (syntax errors), and then the target type is built from the
//! top-level object through [`KeyedValue`], which tags any error with the top-level field it
//! happened in.

use std::fmt;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::value::MapDeserializer;
use serde::de::{DeserializeOwned, IntoDeserializer, Visitor};
use serde::Deserializer;

use super::error::ApiError;
use super::AppState;

/// A JSON request body of type `T`; rejections are [`ApiError`]s (400 naming the field, or
/// 413 for a body over the limit).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::invalid_body(
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        let limit = state.config.max_request_bytes;
        let declared = content_length(req.headers());
        // Refused before a byte of it is read: a client announcing 10 GB gets its 413 now,
        // not after the server has waited for the first 4 MB.
        if declared.is_some_and(|declared| declared > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let deadline = state.config.body_deadline(declared);
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state)).await;
        let Ok(read) = read else {
            return Err(ApiError::BodyTimeout {
                seconds: deadline.as_secs_f64(),
            });
        };
        let bytes = read.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                ApiError::PayloadTooLarge {
                    limit: state.config.max_request_bytes,
                }
            }
            // The client stopped sending halfway, or sent broken chunked encoding.
            other => ApiError::invalid_body(format!("cannot read the request body: {other}")),
        })?;
        from_slice(&bytes).map(ApiJson)
    }
}

/// The declared `Content-Length`, if there is a readable one (hyper has already refused
/// conflicting or malformed ones).
fn content_length(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        // Larger than memory can hold is larger than any limit.
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Most bytes of an unwanted body (a request to an unknown route, say) that are read and
/// dropped so that the connection can carry the next request; a larger body is left unread
/// and the connection closes after the answer.
pub const DISCARDED_BODY_LIMIT: usize = 64 * 1024;

/// Reads and drops a small request body within its deadline, so that hyper can reuse the
/// connection after answering; gives up quietly otherwise (the connection then closes).
pub async fn discard_body(config: &super::ServerConfig, request: Request) {
    let declared = content_length(request.headers());
    if declared.is_some_and(|declared| declared > DISCARDED_BODY_LIMIT) {
        return;
    }
    let deadline = config.body_deadline(Some(declared.unwrap_or(DISCARDED_BODY_LIMIT)));
    let body = request.into_body();
    let _ = tokio::time::timeout(deadline, axum::body::to_bytes(body, DISCARDED_BODY_LIMIT)).await;
}

/// `application/json`, with parameters (`; charset=utf-8`) or as a `+json` suffix.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// Parses a request body, naming the top-level field at fault in any error.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::invalid_body(format!("the body is not valid JSON: {err}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ApiError::invalid_body("the body must be a JSON object"));
    };
    let entries = object.into_iter().map(|(key, value)| {
        let keyed = KeyedValue {
            key: key.clone(),
            value,
        };
        (key, keyed)
    });
    // By value, the map deserializer also checks that every entry was consumed.
    T::deserialize(MapDeserializer::<_, FieldError>::new(entries)).map_err(|err| match err.param {
        Some(param) => ApiError::InvalidRequest {
            param: Some(param),
            message: err.message,
        },
        None => ApiError::invalid_body(err.message),
    })
}

/// A deserialization error and, when known, the top-level field it happened in.
#[derive(Debug)]
struct FieldError {
    param: Option<String>,
    message: String,
}

impl FieldError {
    fn in_field(key: String, err: serde_json::Error) -> Self {
        Self {
            message: format!("invalid `{key}`: {err}"),
            param: Some(key),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

impl serde::de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            param: None,
            message: msg.to_string(),
        }
    }

    // The default would only say so in the message; the param is what clients act on.
    fn missing_field(field: &'static str) -> Self {
        Self {
            param: Some(field.to_string()),
            message: format!("`{field}` is required"),
        }
    }
}

/// One top-level field's value; deserializes exactly like the `serde_json::Value` inside,
/// but errors carry the field's name.
struct KeyedValue {
    key: String,
    value: serde_json::Value,
}

impl<'de> IntoDeserializer<'de, FieldError> for KeyedValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// Forwards each `Deserializer` method to the same method of `serde_json::Value`, so that
/// type hints (options, newtypes, enums) behave exactly as in plain `serde_json`.
macro_rules! forward_keyed {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, FieldError> {
            let key = self.key;
            self.value
                .$method($($arg,)* visitor)
                .map_err(|err| FieldError::in_field(key, err))
        }
    )*};
}

impl<'de> Deserializer<'de> for KeyedValue {
    type Error = FieldError;

    forward_keyed! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // The fields exist to be deserialized.
    struct Sample {
        name: String,
        #[serde(default)]
        temperature: Option<f32>,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // The field exists to be deserialized.
    struct Item {
        role: String,
    }

    fn param_of(body: &str) -> Option<String> {
        match from_slice::<Sample>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_top_level_field() {
        assert_eq!(param_of(r#"{"temperature": 1}"#).as_deref(), Some("name"));
        assert_eq!(
            param_of(r#"{"name": "a", "temperature": "hot"}"#).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param_of(r#"{"name": "a", "items": [{"role": 1}]}"#).as_deref(),
            Some("items")
        );
        assert_eq!(
            param_of(r#"{"name": "a", "items": [{}]}"#).as_deref(),
            Some("items")
        );
        assert_eq!(param_of("[1, 2]"), None);
        assert_eq!(param_of(r#"{"name": "a""#), None);
        assert_eq!(param_of(r#"{"name": "a", "temperature": NaN}"#), None);
    }

    #[test]
    fn good_bodies_parse_like_serde_json() {
        let sample: Sample = from_slice(
            br#"{"name": "a", "temperature": null, "extra": [1], "items": [{"role": "r"}]}"#,
        )
        .unwrap();
        assert_eq!(sample.name, "a");
        assert_eq!(sample.temperature, None);
        assert_eq!(sample.items.len(), 1);
    }
}
