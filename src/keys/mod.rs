//! Key material, public JWKs, and the per-cluster key store.
//!
//! `material` alone touches private keys; `store` keeps the key sets on disk and
//! builds the immutable in-memory [`store::KeySet`] the HTTP layer reads;
//! `policy` decides (pure), `steps` applies the decisions to the store, and
//! `rotation` runs them in the background. `public` parses public keys, and
//! `manual` holds the by-hand steps of a cluster that signs its own tokens
//! (`keys import`, `keys retire`), whose keys are public only. `registry`
//! keeps the clusters created at run time and the operations on clusters.

pub mod jwk;
pub mod keyset;
pub mod manifest;
pub mod manual;
pub mod material;
pub mod policy;
pub mod public;
pub mod registry;
pub mod rotation;
pub mod steps;
pub mod store;
mod store_error;
mod testkit;
