//! Configuration: read the embedded default or a file, apply the flag
//! overrides, validate, and hand the rest of the crate a [`Config`] it trusts.
//!
//! - `schema`: the file as written (serde, `deny_unknown_fields`);
//! - `load`: reading the file and applying overrides;
//! - `validate`: every check, all problems reported at once, each naming
//!   its field;
//! - `model`: the validated configuration.
//!
//! Secrets are never inline: API tokens are SHA-256 digests or file paths.
//!
//! The bottom layer with `k8s`: imports nothing of `issuer`, `http`,
//! `server`, `serve`, `client`; of `keys` only `keys::material`'s key spec.

mod load;
mod model;
mod schema;
mod validate;

#[cfg(test)]
mod testing;

pub use load::{ConfigError, Overrides, EMBEDDED_DEFAULT};
pub use model::{
    ApiClientConfig, ClusterConfig, Config, Credential, Limits, ListenerConfig, RateLimit,
    RotationPolicy, RotationSettings, TlsFiles, DEFAULT_AUDIENCE, MAX_KEYS_PER_TYPE,
};
