//! The flags of `workload-issuer clusters add|list|show|remove|recreate`:
//! clusters created at run time, in the keys dir's registry
//! (`keys::registry`, through `commands::clusters`).

use clap::{Args, Subcommand};

use super::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// Create a cluster at run time: its settings (the fields of a [[clusters]] table)
    /// and first key go to the keys dir, where running servers pick it up.
    Add(Box<AddClusterArgs>),
    /// List every cluster: the config file's and those created at run time.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON (each cluster as `clusters show --json` prints it).
        #[arg(long)]
        json: bool,
    },
    /// Show one cluster: its issuer, settings, keys and their states, next transition.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cluster's id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a cluster created at run time, and its keys: its tokens no longer verify.
    Remove {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cluster's id.
        id: String,
    },
    /// Give a cluster new keys at once (the same issuer, a new cluster behind it): every
    /// old key leaves the JWKS, so no token they signed verifies any more.
    Recreate {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cluster's id.
        id: String,
    },
}

/// `clusters add`: each flag is the [[clusters]] field of the same name
/// (`--max-token-lifetime` is `max_token_lifetime`), checked by the same
/// rules; one left out takes the file's default.
#[derive(Debug, Args)]
pub struct AddClusterArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The cluster's id: a DNS label, unique among the clusters.
    pub id: String,
    /// RS256 or ES256.
    #[arg(long)]
    pub algorithm: String,
    /// RSA key size for RS256: 2048, 3072 or 4096.
    #[arg(long)]
    pub rsa_bits: Option<u32>,
    /// The issuer URL; default <public_url>/c/<id>.
    #[arg(long)]
    pub issuer: Option<String>,
    /// An audience tokens may be minted for (repeat for several).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Such as 10m.
    #[arg(long)]
    pub min_token_lifetime: Option<String>,
    /// Such as 24h.
    #[arg(long)]
    pub max_token_lifetime: Option<String>,
    /// Cache-Control max-age of the JWKS and discovery documents.
    #[arg(long)]
    pub jwks_max_age: Option<String>,
    #[arg(long)]
    pub rotate_every: Option<String>,
    #[arg(long)]
    pub publish_ahead: Option<String>,
    #[arg(long)]
    pub clock_skew: Option<String>,
    #[arg(long)]
    pub retention: Option<String>,
}

impl AddClusterArgs {
    /// The settings as the admin API takes them: a JSON object with the
    /// fields given.
    pub fn settings(&self) -> serde_json::Value {
        let mut s = serde_json::Map::new();
        s.insert("id".into(), self.id.clone().into());
        s.insert("algorithm".into(), self.algorithm.clone().into());
        if let Some(bits) = self.rsa_bits {
            s.insert("rsa_bits".into(), bits.into());
        }
        if let Some(issuer) = &self.issuer {
            s.insert("issuer".into(), issuer.clone().into());
        }
        if !self.audiences.is_empty() {
            s.insert("audiences".into(), self.audiences.clone().into());
        }
        for (field, value) in [
            ("min_token_lifetime", &self.min_token_lifetime),
            ("max_token_lifetime", &self.max_token_lifetime),
            ("jwks_max_age", &self.jwks_max_age),
            ("rotate_every", &self.rotate_every),
            ("publish_ahead", &self.publish_ahead),
            ("clock_skew", &self.clock_skew),
            ("retention", &self.retention),
        ] {
            if let Some(v) = value {
                s.insert(field.into(), v.clone().into());
            }
        }
        serde_json::Value::Object(s)
    }
}
