//! workload-issuer: a standalone OIDC issuer and JWKS discovery server for
//! workload identity.
//!
//! Layout, from the bottom: `clock` (time, passed in), `k8s` (Kubernetes
//! name rules), `externaljwt` (the wire protocol of Kubernetes' external
//! token signer) and `config` (settings, layered and validated); `keys`
//! (material, JWKs, the on-disk store, the rotation policy, its steps and
//! task); `issuer` (clusters, claims, minting, API clients; no HTTP); `http`
//! (routes), `server` (listeners, TLS), `signer` (the external signer on a
//! Unix socket, over a cluster's live keys), `health` and `metrics`; `client`
//! (`token`, `agent`, `verify`, `federation`, the signer's relay: the client
//! side, which imports nothing of the server side); `serve` (start-up glue),
//! `fleet` (the cluster set at run time: the registry, config reloads),
//! `commands`, and `cli` (clap, the only module besides `main` that knows
//! it).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod etcd;
pub mod externaljwt;
pub mod fleet;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod issuer;
pub mod k8s;
pub mod keys;
pub mod metrics;
pub mod serve;
pub mod server;
pub mod signer;
pub mod signing;

pub use http::{app, app_for, AppState, Face};

/// The commit this binary was built from (`git rev-parse --short HEAD`, by
/// build.rs), or "unknown" when it was built outside a git checkout.
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");

/// The version `--version` prints: the crate's version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);
