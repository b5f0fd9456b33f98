//! The Kubernetes API's wire conventions shared by TokenRequest and
//! TokenReview: JSON with named type fields, the protobuf envelope, and the
//! 201 answer.

use axum::http::StatusCode;
use axum::response::Response;
use prost::Message as _;
use serde::de::DeserializeOwned;

/// Why a Kubernetes API body could not be read, worded as the apiserver's
/// field errors are (kubectl prints the message as it is).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{field}: Invalid value: {got:?}: expected {expected:?}")]
    WrongType {
        field: &'static str,
        got: String,
        expected: String,
    },
    /// The JSON does not decode; `at` is the path of the bad field, if any.
    #[error("the body is not a valid {kind}: {at}{reason}")]
    Json {
        kind: String,
        at: String,
        reason: String,
    },
    #[error("the protobuf body does not start with the Kubernetes envelope prefix \"k8s\\x00\"")]
    NoEnvelope,
    #[error("the protobuf envelope (runtime.Unknown) is malformed: {0}")]
    Envelope(#[source] prost::DecodeError),
    #[error("contentEncoding: Unsupported value: {0:?}: the raw message must not be encoded")]
    Encoded(String),
    #[error("the protobuf {kind} is malformed: {source}")]
    Protobuf {
        kind: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("spec.attestations: Forbidden: this issuer does not support attestations")]
    Attestations,
}

/// The 4-byte prefix of every Kubernetes protobuf body
/// (k8s.io/apimachinery/pkg/runtime/serializer/protobuf).
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// Decodes a JSON object of `kind`. The type fields are checked first so a
/// wrong one is named (k8s-openapi's own check reports it without a path);
/// absent ones are allowed, as the apiserver takes them from the URL. Other
/// errors name the path of the bad field.
pub fn decode_json<T: DeserializeOwned>(
    body: &[u8],
    api_version: &str,
    kind: &str,
) -> Result<T, DecodeError> {
    #[derive(serde::Deserialize)]
    struct TypeMeta {
        #[serde(rename = "apiVersion")]
        api_version: Option<String>,
        kind: Option<String>,
    }
    if let Ok(t) = serde_json::from_slice::<TypeMeta>(body) {
        if let Some(v) = t.api_version.filter(|v| v != api_version) {
            return Err(DecodeError::WrongType {
                field: "apiVersion",
                got: v,
                expected: api_version.to_owned(),
            });
        }
        if let Some(k) = t.kind.filter(|k| k != kind) {
            return Err(DecodeError::WrongType {
                field: "kind",
                got: k,
                expected: kind.to_owned(),
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::Json {
            kind: kind.to_owned(),
            at: if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            },
            reason: e.inner().to_string(),
        }
    })?;
    de.end().map_err(|e| DecodeError::Json {
        kind: kind.to_owned(),
        at: String::new(),
        reason: e.to_string(),
    })?;
    Ok(value)
}

/// Decodes a Kubernetes protobuf body: the `k8s\0` prefix, a
/// `runtime.Unknown` envelope of the right type, and its raw message.
pub fn decode_protobuf<T: prost::Message + Default>(
    body: &[u8],
    api_version: &str,
    kind: &str,
) -> Result<T, DecodeError> {
    let rest = body
        .strip_prefix(PROTOBUF_MAGIC)
        .ok_or(DecodeError::NoEnvelope)?;
    let unknown =
        k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest).map_err(DecodeError::Envelope)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let got_version = type_meta.api_version.unwrap_or_default();
    let got_kind = type_meta.kind.unwrap_or_default();
    if !got_version.is_empty() && got_version != api_version {
        return Err(DecodeError::WrongType {
            field: "apiVersion",
            got: got_version,
            expected: api_version.to_owned(),
        });
    }
    if !got_kind.is_empty() && got_kind != kind {
        return Err(DecodeError::WrongType {
            field: "kind",
            got: got_kind,
            expected: kind.to_owned(),
        });
    }
    if let Some(encoding) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(DecodeError::Encoded(encoding));
    }
    T::decode(unknown.raw.unwrap_or_default().as_slice()).map_err(|source| DecodeError::Protobuf {
        kind: kind.to_owned(),
        source,
    })
}

/// A 201 with a JSON body that must not be cached.
pub fn created(body: Vec<u8>) -> Response {
    super::uncached(StatusCode::CREATED, "application/json", body)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A protobuf body as kubectl sends it.
    pub fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = PROTOBUF_MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }
}
