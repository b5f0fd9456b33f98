//! A cluster as `clusters show` and the admin API show it.

use std::path::PathBuf;

use serde::Serialize;

use super::{Entry, Registry};
use crate::config::{ClusterConfig, Origin};
use crate::keys::store::{rfc3339, KeyRecord, KeyState, KeyStore};

/// A cluster as `clusters show` and the admin API show it.
#[derive(Debug, Serialize)]
pub struct View {
    pub id: String,
    pub issuer: String,
    /// "file" or "runtime".
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recreated: Option<String>,
    pub algorithm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsa_bits: Option<u32>,
    pub audiences: Vec<String>,
    pub min_token_lifetime: String,
    pub max_token_lifetime: String,
    pub jwks_max_age: String,
    pub rotate_every: String,
    pub publish_ahead: String,
    pub retention: String,
    pub publish_only: bool,
    pub keys: Vec<ViewKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_transition: Option<ViewTransition>,
}

#[derive(Debug, Serialize)]
pub struct ViewKey {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created: String,
    pub published: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ViewTransition {
    pub kid: String,
    pub what: String,
    pub at: String,
}

impl View {
    pub fn new(c: &ClusterConfig, entry: Option<&Entry>, records: &[KeyRecord]) -> View {
        let d = |t| humantime::format_duration(t).to_string();
        let current = records.iter().find(|k| k.state == KeyState::Current);
        let next_transition = records
            .iter()
            .filter_map(|k| {
                crate::keys::policy::next_transition(k, current, &c.rotation)
                    .map(|(what, at)| (k.kid.clone(), what, at))
            })
            .min_by_key(|(_, _, at)| *at)
            .map(|(kid, what, at)| ViewTransition {
                kid,
                what,
                at: rfc3339(at),
            });
        let (algorithm, rsa_bits) = match c.key_spec {
            crate::config::KeySpec::Rsa { bits } => ("RS256", Some(bits)),
            crate::config::KeySpec::P256 => ("ES256", None),
        };
        View {
            id: c.id.clone(),
            issuer: c.issuer.clone(),
            origin: match c.origin {
                Origin::File => "file",
                Origin::Runtime => "runtime",
            },
            created: entry.map(|e| e.created.clone()),
            recreated: entry.and_then(|e| e.recreated.clone()),
            algorithm: algorithm.into(),
            rsa_bits,
            audiences: c.audiences.clone(),
            min_token_lifetime: d(c.min_token_lifetime),
            max_token_lifetime: d(c.max_token_lifetime),
            jwks_max_age: d(c.jwks_max_age),
            rotate_every: d(c.rotation.rotate_every),
            publish_ahead: d(c.rotation.publish_ahead),
            retention: d(c.rotation.retention),
            publish_only: c.publish_only,
            keys: records
                .iter()
                .map(|k| ViewKey {
                    kid: k.kid.clone(),
                    alg: k.alg.clone(),
                    state: k.state.as_str().to_owned(),
                    created: k.created.clone(),
                    published: k.published.clone(),
                    activated: k.activated.clone(),
                    retired: k.retired.clone(),
                })
                .collect(),
            next_transition,
        }
    }
}

/// The path of a registry entry, for messages.
pub fn entry_file(store: &KeyStore, id: &str) -> PathBuf {
    Registry::new(store).entry_path(id)
}
