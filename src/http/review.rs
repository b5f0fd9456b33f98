//! `POST <issuer path>/apis/authentication.k8s.io/v1/tokenreviews`: TokenReview,
//! bearer-authenticated like minting, JSON or Kubernetes protobuf in, JSON out.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use k8s_openapi::api::authentication::v1 as authv1;

use super::kube;
use super::token::{authenticate, content_format, read_body, Format};
use super::token_request::EncodeError;
use super::AppState;
use crate::error::{AppError, Invalid};
use crate::issuer::review::review;
use crate::issuer::Cluster;

pub const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const KIND: &str = "TokenReview";
const API_VERSION: &str = "authentication.k8s.io/v1";

pub async fn create(
    state: &AppState,
    cluster: &Cluster,
    request: Request,
) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return Err(AppError::kube(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not supported on tokenreviews; create a review with POST",
                parts.method
            ),
        )
        .with_allow("POST"));
    }
    let client = authenticate(state, &parts)?;
    client.authorize_cluster(cluster.id()).map_err(|e| {
        AppError::kube(
            StatusCode::FORBIDDEN,
            format!("tokenreviews.authentication.k8s.io is forbidden: {e}"),
        )
    })?;
    let format = content_format(&parts.headers)?;
    let body = read_body(&parts.headers, body).await?;
    let (token, audiences) = match format {
        Format::Json => kube::decode_json::<authv1::TokenReview>(&body, API_VERSION, KIND)
            .map(|r| (r.spec.token, r.spec.audiences.unwrap_or_default())),
        Format::Protobuf => kube::decode_protobuf::<k8s_pb::api::authentication::v1::TokenReview>(
            &body,
            API_VERSION,
            KIND,
        )
        .map(|r| {
            let spec = r.spec.unwrap_or_default();
            (spec.token.unwrap_or_default(), spec.audiences)
        }),
    }
    .map_err(Invalid::token_review)?;
    if token.is_empty() {
        return Err(Invalid::token_review("spec.token: Required value").into());
    }
    let result = review(cluster, &token, &audiences, state.clock.now());
    tracing::info!(
        cluster = cluster.id(),
        client = client.name,
        authenticated = result.authenticated,
        user = result
            .user
            .as_ref()
            .map(|u| u.username.as_str())
            .unwrap_or(""),
        error = result.error.as_deref().unwrap_or(""),
        "token reviewed"
    );
    let answer = authv1::TokenReview {
        metadata: Default::default(),
        spec: authv1::TokenReviewSpec {
            audiences: (!audiences.is_empty()).then_some(audiences),
            // Never echo a credential (kube-apiserver does).
            token: String::new(),
        },
        status: Some(authv1::TokenReviewStatus {
            authenticated: Some(result.authenticated),
            audiences: (!result.audiences.is_empty()).then_some(result.audiences),
            error: result.error,
            user: result.user.map(|u| authv1::UserInfo {
                username: Some(u.username),
                uid: Some(u.uid),
                groups: Some(u.groups),
                extra: Some(u.extra.into_iter().collect::<BTreeMap<_, _>>()),
            }),
        }),
    };
    let bytes = serde_json::to_vec(&answer).map_err(EncodeError::Json)?;
    Ok(kube::created(bytes))
}
