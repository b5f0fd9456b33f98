//! Key material, public JWKs, and the per-cluster key store.
//!
//! `material` alone touches private keys; `store` keeps the key sets on disk and
//! builds the immutable in-memory [`store::KeySet`] the HTTP layer reads;
//! `policy` decides (pure), `steps` applies the decisions to the store, and
//! `rotation` runs them in the background.

pub mod jwk;
pub mod keyset;
pub mod manifest;
pub mod material;
pub mod policy;
pub mod rotation;
pub mod steps;
pub mod store;
mod testkit;
