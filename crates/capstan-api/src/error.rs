//! The API's errors, and the one place each becomes an HTTP status and the JSON body clients parse.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use capstan_model::ObjectKey;
use capstan_store::StoreError;
use serde_json::json;

use crate::admission::AdmissionError;
use crate::plane::ApplyError;

/// What a handler answers when it does not succeed. Every variant is answered as `{"error": <its text>}` with its
/// status, except `Unprocessable`, which also lists every problem: `{"error": ..., "errors": [...]}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: the text names what was not found.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request conflicts with the state it would change.
    #[error("{0}")]
    Conflict(String),
    /// 422: admission refused the change; `message` says what was refused, `errors` why.
    #[error("{message}")]
    Unprocessable { message: String, errors: Vec<AdmissionError> },
    /// The store failed: 409 on a resourceVersion conflict, 500 otherwise.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 503: what was needed could not be read now (a store read error where the caller should retry).
    #[error("try again: {0}")]
    Unavailable(String),
    /// Any other status with its message.
    #[error("{1}")]
    Status(StatusCode, String),
}

impl ApiError {
    /// 404 naming the object: `App "web" not found in namespace default`.
    pub fn not_found(key: &ObjectKey) -> ApiError {
        ApiError::NotFound(format!("{} \"{}\" not found in namespace {}", key.kind, key.name, key.namespace))
    }

    /// A change that did not go through admission or the store: 422 with every problem and `refused` as the error,
    /// or what the store's error answers.
    pub fn refused(e: ApplyError, refused: impl Into<String>) -> ApiError {
        match e {
            ApplyError::Invalid(errors) => ApiError::Unprocessable { message: refused.into(), errors },
            ApplyError::Store(e) => ApiError::Store(e),
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Status(status, _) => *status,
        }
    }
}

/// A batch refused as a whole (`POST /api/v1/apply`); other changes say what was refused with [`ApiError::refused`].
impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        ApiError::refused(e, "the batch was refused; nothing was applied")
    }
}

/// A volume sync answers with the status code it chose.
impl From<crate::volume_sync::SyncError> for ApiError {
    fn from(e: crate::volume_sync::SyncError) -> Self {
        ApiError::Status(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.message)
    }
}

/// A Database's own refusals (no server yet, no dump) are 409 with its words; a store that failed is the store's.
impl From<capstan_database::DatabaseError> for ApiError {
    fn from(e: capstan_database::DatabaseError) -> Self {
        match e {
            capstan_database::DatabaseError::Store(s) => ApiError::Store(s),
            other => ApiError::Conflict(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            ApiError::Unprocessable { message, errors } => json!({ "error": message, "errors": errors }),
            other => json!({ "error": other.to_string() }),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn bodies_and_statuses_are_what_clients_parse() {
        let key = ObjectKey::new("App", "default", "web");
        let (s, b) = answer(ApiError::not_found(&key)).await;
        assert_eq!((s, b), (StatusCode::NOT_FOUND, json!({ "error": "App \"web\" not found in namespace default" })));

        let conflict = StoreError::Conflict { key: "App/default/web".into(), given: "1".into(), current: "2".into() };
        let text = conflict.to_string();
        let (s, b) = answer(ApiError::from(ApplyError::Store(conflict))).await;
        assert_eq!((s, b), (StatusCode::CONFLICT, json!({ "error": text })));

        let (s, b) = answer(StoreError::NoName.into()).await;
        assert_eq!((s, b), (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "object is missing metadata.name" })));

        let invalid = AdmissionError { index: 0, path: "spec.replicas".into(), message: "bad".into(), hint: None };
        let (s, b) = answer(ApiError::refused(ApplyError::Invalid(vec![invalid]), "not scaled")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            b,
            json!({ "error": "not scaled", "errors": [{ "index": 0, "path": "spec.replicas", "message": "bad" }] })
        );

        let (s, b) = answer(ApiError::Unavailable("state database: gone".into())).await;
        assert_eq!((s, b), (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "try again: state database: gone" })));

        let (s, b) = answer(ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, "too big".into())).await;
        assert_eq!((s, b), (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": "too big" })));
    }
}
