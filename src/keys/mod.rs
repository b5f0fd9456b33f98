//! Key material, public JWKs, and the per-cluster key store.
//!
//! `material` alone touches private keys; `store` keeps the key sets on disk and
//! builds the immutable in-memory [`store::KeySet`] the HTTP layer reads.

pub mod jwk;
pub mod material;
pub mod rotation;
pub mod store;
