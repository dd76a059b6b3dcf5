//! Errors as HTTP answers: a status code from the service's [`ErrorClass`] and a JSON body
//! `{"error": "<class>", "message": "<what was wrong, with every cause>"}`.
//!
//! Bad input (a body that does not parse, a malformed path parameter, an unknown route) is
//! a 4xx with a body naming the problem, never a 500.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plugboard_service::{ErrorClass, ServiceError};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    class: ErrorClass,
    message: String,
}

/// The error class of an answer, left in the response's extensions for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ClassTag(pub &'static str);

impl ApiError {
    /// A 400 with this message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::BadRequest,
            message: message.into(),
        }
    }

    /// A 404 with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::NotFound,
            message: message.into(),
        }
    }

    /// A 500 with this message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Internal,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        Self {
            class: err.class(),
            message: err.chain(),
        }
    }
}

/// The status code of a class.
pub fn status_of(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
        ErrorClass::Forbidden => StatusCode::FORBIDDEN,
        ErrorClass::NotFound => StatusCode::NOT_FOUND,
        ErrorClass::Conflict => StatusCode::CONFLICT,
        ErrorClass::Backend => StatusCode::BAD_GATEWAY,
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.class == ErrorClass::Internal || self.class == ErrorClass::Backend {
            tracing::error!(
                class = self.class.as_str(),
                message = self.message,
                "request failed"
            );
        } else {
            tracing::debug!(
                class = self.class.as_str(),
                message = self.message,
                "request refused"
            );
        }
        let body = json!({"error": self.class.as_str(), "message": self.message});
        let mut response = (status_of(self.class), Json(body)).into_response();
        response
            .extensions_mut()
            .insert(ClassTag(self.class.as_str()));
        response
    }
}

/// A JSON body whose rejection is an [`ApiError`] (400 naming what did not parse).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection_text(&rejection))),
        }
    }
}

fn rejection_text(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON (Content-Type: application/json)".to_owned()
        }
        other => other.body_text(),
    }
}
