//! Configuration: the layers (built-in defaults, the file, `WORKLOAD_ISSUER_*`
//! variables, flags) merged, validated, and handed to the rest of the crate as
//! a [`Config`] it trusts.
//!
//! - `schema`: the file as written (serde, `deny_unknown_fields`);
//! - `fields`: every table's fields and what each holds, for the layers;
//! - `load`: the layers and their merge; `env`: the environment layer;
//!   `layer`: what both share (the merge, who set what);
//! - `validate`: every check, all problems reported at once, each naming its
//!   field (and the variable or flag that set it);
//! - `model`: the validated configuration;
//! - `runtime`: a cluster created at run time, checked as a `[[clusters]]` table.
//!
//! Secrets are never inline: API tokens are SHA-256 digests or file paths.
//!
//! The bottom layer with `k8s`: imports nothing of `issuer`, `http`,
//! `server`, `serve`, `client` or `keys` (the key kinds it names are its own
//! `keyspec`, which `keys::material` uses).

mod env;
mod fields;
mod keyspec;
mod layer;
mod load;
mod model;
mod runtime;
mod schema;
mod validate;

#[cfg(test)]
mod testing;

pub use env::NOT_SETTINGS;
pub use keyspec::{Algorithm, KeySpec, RSA_BITS};
pub use load::{ConfigError, Overrides, EMBEDDED_DEFAULT};
pub use model::{
    ApiClientConfig, ClusterConfig, Config, Credential, EtcdStoreConfig, EtcdTls, Limits,
    ListenerConfig, Origin, RateLimit, RotationPolicy, RotationSettings, SignerSocket, StoreConfig,
    TlsFiles, DEFAULT_AUDIENCE, DEFAULT_ETCD_PREFIX, DEFAULT_LEASE_TTL, MAX_KEYS_PER_TYPE,
};
pub use runtime::{joined, runtime_cluster, FieldProblem, RUNTIME_FIELDS};
