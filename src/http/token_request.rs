//! TokenRequest on the wire: decoding JSON (`k8s-openapi` types) and Kubernetes
//! protobuf (`k8s-pb` types inside the `k8s\0` + `runtime.Unknown` envelope,
//! which kubectl 1.32 sends), and encoding the 201 answer as JSON.

use super::kube::{self, DecodeError};
use k8s_openapi::api::authentication::v1 as authv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::issuer::mint::{unix_seconds, BoundObjectRef, MintRequest, Minted};

pub const API_VERSION: &str = "authentication.k8s.io/v1";
pub const KIND: &str = "TokenRequest";

/// What the body said, before the URL's namespace and name are added.
#[derive(Debug, Default)]
pub struct Decoded {
    pub metadata_name: Option<String>,
    pub metadata_namespace: Option<String>,
    pub audiences: Vec<String>,
    pub expiration_seconds: Option<i64>,
    pub bound: Option<BoundObjectRef>,
}

impl Decoded {
    pub fn into_request(self, namespace: &str, name: &str) -> MintRequest {
        MintRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            audiences: self.audiences,
            expiration_seconds: self.expiration_seconds,
            bound: self.bound,
        }
    }
}

/// Decodes a JSON TokenRequest. A wrong `kind` or `apiVersion` is refused,
/// and so are attestations, which this issuer cannot honour.
pub fn decode_json(body: &[u8]) -> Result<Decoded, DecodeError> {
    let request: authv1::TokenRequest = kube::decode_json(body, API_VERSION, KIND)?;
    let spec = request.spec.unwrap_or_default();
    if spec.attestations.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(DecodeError::Attestations);
    }
    Ok(Decoded {
        metadata_name: request.metadata.name,
        metadata_namespace: request.metadata.namespace,
        audiences: spec.audiences.unwrap_or_default(),
        expiration_seconds: spec.expiration_seconds,
        bound: spec.bound_object_ref.map(|b| BoundObjectRef {
            kind: b.kind.unwrap_or_default(),
            api_version: b.api_version,
            name: b.name.unwrap_or_default(),
            uid: b.uid.unwrap_or_default(),
        }),
    })
}

/// Decodes a Kubernetes protobuf TokenRequest.
pub fn decode_protobuf(body: &[u8]) -> Result<Decoded, DecodeError> {
    let request: k8s_pb::api::authentication::v1::TokenRequest =
        kube::decode_protobuf(body, API_VERSION, KIND)?;
    let metadata = request.metadata.unwrap_or_default();
    let spec = request.spec.unwrap_or_default();
    Ok(Decoded {
        metadata_name: metadata.name.filter(|n| !n.is_empty()),
        metadata_namespace: metadata.namespace.filter(|n| !n.is_empty()),
        audiences: spec.audiences,
        expiration_seconds: spec.expiration_seconds,
        bound: spec.bound_object_ref.map(|b| BoundObjectRef {
            kind: b.kind.unwrap_or_default(),
            api_version: b.api_version.filter(|v| !v.is_empty()),
            name: b.name.unwrap_or_default(),
            uid: b.u_id.unwrap_or_default(),
        }),
    })
}

fn time(seconds: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .ok()
        .map(Time)
}

/// The 201 body: the request as the server understood it (defaults filled
/// in, lifetime as shortened) with the token in `status`.
pub fn encode_response(request: &MintRequest, minted: &Minted) -> Result<Vec<u8>, EncodeError> {
    let expiration =
        time(unix_seconds(minted.expires_at)).ok_or(EncodeError::ExpirationOutOfRange)?;
    let response = authv1::TokenRequest {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: Some(request.namespace.clone()),
            creation_timestamp: time(minted.claims.iat),
            ..ObjectMeta::default()
        },
        spec: Some(authv1::TokenRequestSpec {
            attestations: None,
            audiences: Some(minted.claims.aud.clone()),
            expiration_seconds: Some(minted.expiration_seconds),
            bound_object_ref: request
                .bound
                .as_ref()
                .map(|b| authv1::BoundObjectReference {
                    api_version: Some(b.api_version.clone().unwrap_or_else(|| "v1".into())),
                    kind: Some(b.kind.clone()),
                    name: Some(b.name.clone()),
                    uid: Some(b.uid.clone()),
                }),
        }),
        status: Some(authv1::TokenRequestStatus {
            token: Some(minted.token.clone()),
            expiration_timestamp: Some(expiration),
        }),
    };
    serde_json::to_vec(&response).map_err(EncodeError::Json)
}

/// Why a 201 answer could not be encoded: a bug or an impossible time, never
/// the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the expiration time is out of range")]
    ExpirationOutOfRange,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// A 201 answer that could not be encoded: logged, and a 500 that says
/// nothing internal.
impl From<EncodeError> for crate::error::AppError {
    fn from(e: EncodeError) -> crate::error::AppError {
        tracing::error!(error = %e, "encoding an answer failed");
        crate::error::AppError::kube(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be encoded",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::authentication::v1 as pb;
    use prost::Message as _;

    fn protobuf_body(api_version: &str, kind: &str, spec: pb::TokenRequestSpec) -> Vec<u8> {
        let raw = pb::TokenRequest {
            metadata: None,
            spec: Some(spec),
            status: None,
        }
        .encode_to_vec();
        super::kube::tests::envelope(api_version, kind, raw)
    }

    #[test]
    fn json_request_decodes_with_bound_object() {
        let d = decode_json(
            br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest",
                "spec":{"audiences":["a","b"],"expirationSeconds":1200,
                "boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"p","uid":"u"}}}"#,
        )
        .unwrap();
        assert_eq!(d.audiences, ["a", "b"]);
        assert_eq!(d.expiration_seconds, Some(1200));
        assert_eq!(d.bound.unwrap().kind, "Pod");
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = decode_json(br#"{"kind":"Pod","spec":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kind: Invalid value: \"Pod\""), "{e}");
        let e = decode_json(br#"{"apiVersion":"v1","spec":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("apiVersion: Invalid value: \"v1\""), "{e}");
        let e = decode_json(br#"{"spec":{"expirationSeconds":"soon"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.expirationSeconds"), "{e}");
        let e = decode_json(br#"{"spec":{}} trailing"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing"), "{e}");
        let e = decode_json(br#"{"spec":"#).unwrap_err().to_string();
        assert!(e.contains("EOF"), "{e}");
    }

    #[test]
    fn protobuf_request_decodes() {
        let body = protobuf_body(
            API_VERSION,
            KIND,
            pb::TokenRequestSpec {
                audiences: vec!["x".into()],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
        );
        let d = decode_protobuf(&body).unwrap();
        assert_eq!(d.audiences, ["x"]);
        assert_eq!(d.expiration_seconds, Some(3600));
    }

    #[test]
    fn protobuf_of_another_kind_or_without_envelope_is_refused() {
        let body = protobuf_body(API_VERSION, "TokenReview", pb::TokenRequestSpec::default());
        assert!(decode_protobuf(&body)
            .unwrap_err()
            .to_string()
            .starts_with("kind:"));
        assert!(matches!(
            decode_protobuf(b"\x0a\x00"),
            Err(DecodeError::NoEnvelope)
        ));
        assert!(matches!(
            decode_protobuf(b"k8s\0\xff\xff"),
            Err(DecodeError::Envelope(_))
        ));
    }
}
