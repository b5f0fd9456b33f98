//! workload-issuer: a standalone OIDC issuer and JWKS discovery server for
//! workload identity.
//!
//! Layout: `k8s` (Kubernetes name rules) and `config` (settings, validated)
//! at the bottom, `keys` (material, JWKs, the on-disk store), `issuer`
//! (clusters, claims, minting, API clients; no HTTP), `http` (routes),
//! `server` (listeners, TLS), `serve` (startup glue).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod issuer;
pub mod k8s;
pub mod keys;
pub mod metrics;
pub mod serve;
pub mod server;
pub mod signing;
pub mod verify;

pub use http::{app, app_for, AppState, Face};
