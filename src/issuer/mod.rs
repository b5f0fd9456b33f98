//! The issuer: clusters with their published documents, claims, minting and
//! API-client authorization. Knows nothing of HTTP.
//!
//! Reads `keys::store::KeySet` (never `keys::rotation`); signs through the
//! `SigningKey` a key set hands out, never touching private-key types itself.
//! Every signing path takes that key from `Cluster::signer`, which refuses a
//! `publish_only` cluster (one whose own kube-apiserver signs its tokens).

pub mod auth;
pub mod claims;
pub mod cluster;
pub mod discovery;
pub mod external;
pub mod mint;
pub mod review;

pub use cluster::{CannotSign, Cluster, Issuers, LiveIssuers, Published, Signer, Which};
