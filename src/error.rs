//! The one HTTP error type. On the Kubernetes API surface (TokenRequest) it is
//! rendered as a `Status` object, which kubectl and client-go print; elsewhere
//! as a small JSON body. A client error says what was wrong; an internal error
//! says nothing internal.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `{"kind":"Status","apiVersion":"v1",...}`
    Kubernetes,
    /// `{"error":"...","message":"..."}`
    Plain,
}

#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    shape: Shape,
    message: String,
    allow: Option<&'static str>,
    close: bool,
    /// Seconds for `Retry-After` (and the Status's `details.retryAfterSeconds`).
    retry_after: Option<u64>,
    /// The request field a plain error is about (the admin API's refusals).
    field: Option<String>,
}

impl AppError {
    /// An error on the Kubernetes API surface.
    pub fn kube(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            shape: Shape::Kubernetes,
            message: message.into(),
            allow: None,
            close: false,
            retry_after: None,
            field: None,
        }
    }

    /// An error anywhere else (discovery, JWKS, unknown paths).
    pub fn plain(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            shape: Shape::Plain,
            message: message.into(),
            allow: None,
            close: false,
            retry_after: None,
            field: None,
        }
    }

    /// Names the request field a plain error is about (`"field"` in its body).
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error in the plain JSON shape, for a surface that is not the
    /// Kubernetes API but shares its checks (the admin API).
    pub fn plain_shaped(mut self) -> Self {
        self.shape = Shape::Plain;
        self
    }

    /// 405, with the methods that are allowed (RFC 9110 §15.5.6).
    pub fn with_allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }

    /// Asks the client to close the connection after this answer (a body
    /// was left unread, so the connection cannot carry another request).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// When to try again (429, 503), in whole seconds, at least 1.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A Kubernetes object refused as invalid, worded as the apiserver words it
/// (`TokenRequest.authentication.k8s.io "sa" is invalid: spec.audiences: ...`):
/// what the decoders' and the issuer's typed errors become on the API.
#[derive(Debug, thiserror::Error)]
#[error("{resource} {}is invalid: {problem}", quoted(.name.as_deref()))]
pub struct Invalid {
    resource: &'static str,
    name: Option<String>,
    problem: Box<dyn std::error::Error + Send + Sync>,
}

fn quoted(name: Option<&str>) -> String {
    name.map(|n| format!("{} ", serde_json::to_string(n).unwrap_or_default()))
        .unwrap_or_default()
}

impl Invalid {
    /// A TokenRequest for service account `name`.
    pub fn token_request(
        name: &str,
        problem: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Invalid {
        Invalid {
            resource: "TokenRequest.authentication.k8s.io",
            name: Some(name.to_owned()),
            problem: problem.into(),
        }
    }

    /// A TokenReview (it has no name).
    pub fn token_review(problem: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Invalid {
        Invalid {
            resource: "TokenReview.authentication.k8s.io",
            name: None,
            problem: problem.into(),
        }
    }
}

/// 400, in the Kubernetes `Status` shape.
impl From<Invalid> for AppError {
    fn from(e: Invalid) -> AppError {
        AppError::kube(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// A 201 answer that could not be encoded: logged, and a 500 that says
/// nothing internal.
impl From<crate::http::token_request::EncodeError> for AppError {
    fn from(e: crate::http::token_request::EncodeError) -> AppError {
        tracing::error!(error = %e, "encoding an answer failed");
        AppError::kube(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be encoded",
        )
    }
}

/// The `reason` Kubernetes puts in a `Status` for each code
/// (k8s.io/apimachinery/pkg/apis/meta/v1 StatusReason).
fn reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        s if s.is_server_error() => "InternalError",
        _ => "Unknown",
    }
}

#[derive(Serialize)]
struct KubeStatus<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    code: u16,
}

#[derive(Serialize)]
struct Details {
    #[serde(rename = "retryAfterSeconds")]
    retry_after_seconds: u64,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct PlainError<'a> {
    error: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = match self.shape {
            Shape::Kubernetes => serde_json::to_vec(&KubeStatus {
                kind: "Status",
                api_version: "v1",
                metadata: Empty {},
                status: "Failure",
                message: &self.message,
                reason: reason(self.status),
                details: self.retry_after.map(|s| Details {
                    retry_after_seconds: s,
                }),
                code: self.status.as_u16(),
            }),
            Shape::Plain => serde_json::to_vec(&PlainError {
                error: self.status.canonical_reason().unwrap_or("Error"),
                message: &self.message,
                field: self.field.as_deref(),
            }),
        }
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
