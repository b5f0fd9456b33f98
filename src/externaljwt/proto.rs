//! The messages of `ExternalJWTSigner` (externaljwt.proto beside this file),
//! written as prost structs with the proto's field numbers, and the service
//! glue build.rs generates for the packages `v1` and `v1alpha1`.
//!
//! Wire types only; imports nothing of the crate.

// The generated glue is tonic's, not ours to restyle.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/v1.ExternalJWTSigner.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod v1alpha1 {
    include!(concat!(env!("OUT_DIR"), "/v1alpha1.ExternalJWTSigner.rs"));
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignJwtRequest {
    #[prost(string, tag = "1")]
    pub claims: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignJwtResponse {
    #[prost(string, tag = "1")]
    pub header: String,
    #[prost(string, tag = "2")]
    pub signature: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchKeysRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchKeysResponse {
    #[prost(message, repeated, tag = "1")]
    pub keys: Vec<Key>,
    #[prost(message, optional, tag = "2")]
    pub data_timestamp: Option<Timestamp>,
    #[prost(int64, tag = "3")]
    pub refresh_hint_seconds: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Key {
    #[prost(string, tag = "1")]
    pub key_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub exclude_from_oidc_discovery: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataResponse {
    #[prost(int64, tag = "1")]
    pub max_token_expiration_seconds: i64,
}

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}
