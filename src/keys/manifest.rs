//! A cluster's manifest: every key's kid, algorithm, state and times, the
//! kids whose files may be deleted, and the last time a rotation step
//! vouched for its clock. The manifest is the only authority on a cluster's
//! keys (`keys::store` reads and writes it).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "manifest.json";
pub(crate) const MANIFEST_VERSION: u32 = 1;

/// Where a key is in its life (REFERENCE §5):
/// `next` (published, not signing) -> `current` (signing) -> `retired` (published).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Current,
    Retired,
}

impl KeyState {
    /// The name used in manifests, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }
}

/// One key's entry in a cluster's manifest. Times are RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    pub bits: u32,
    pub state: KeyState,
    pub created: String,
    /// When the key first appeared in the JWKS.
    pub published: String,
    /// When it started signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<String>,
    /// When it stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
    /// Only the public key is held: imported with `keys import` for a
    /// cluster that signs its own tokens. Such a key never signs here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

impl KeyRecord {
    /// A key just generated here, listed in `state` at `at` (signing from
    /// then when current).
    pub fn generated(kid: &str, alg: &str, bits: u32, state: KeyState, at: &str) -> KeyRecord {
        KeyRecord {
            kid: kid.to_owned(),
            alg: alg.to_owned(),
            bits,
            state,
            created: at.to_owned(),
            published: at.to_owned(),
            activated: (state == KeyState::Current).then(|| at.to_owned()),
            retired: None,
            imported: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub cluster: String,
    pub keys: Vec<KeyRecord>,
    /// Kids that left the JWKS and whose key files are to be deleted: the
    /// only key files the store ever removes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// The newest time a rotation step vouched for its clock (RFC 3339): a
    /// clock far ahead of it deletes no key (see `keys::rotation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
}

impl Manifest {
    pub fn empty(cluster: &str) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            cluster: cluster.to_owned(),
            keys: Vec::new(),
            removed: Vec::new(),
            checked: None,
        }
    }
}

/// A time as manifests write it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
