//! The rotation policy, pure: when each key of a cluster moves on, as
//! decisions over a manifest and a time that is passed in. No I/O and no
//! clock here; `keys::steps` applies the decisions to the store, and
//! `keys::rotation` runs them in the background.
//!
//! A key's life (REFERENCE §5):
//!
//! ```text
//! next (published, not signing) -> current (signing) -> retired (published) -> deleted
//! ```
//!
//! A cluster whose keys are generated here always has a next key, the
//! standby: made with the first key, and again whenever one takes over, so
//! the current key can be replaced at any moment by a key every cached JWKS
//! already holds (once it has been published for `publish_ahead`).
//!
//! Imports `keys::store`'s manifest types and `config`'s policy; nothing above.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::material::KeySpec;
use super::store::{KeyRecord, KeyState, Manifest, StoreError};
pub use crate::config::{RotationPolicy, MAX_KEYS_PER_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster \"{cluster}\" has no keys yet; start the server once, or run `keys rotate --force`")]
    NoKeys { cluster: String },
    #[error("cluster \"{cluster}\" has no key with kid {kid}; its kids are: {known}")]
    UnknownKid {
        cluster: String,
        kid: String,
        known: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "cluster \"{cluster}\" is publish_only and has no keys: import the public key its \
         kube-apiserver signs with first (`workload-issuer keys import --cluster {cluster} \
         --public-key sa.pub`)"
    )]
    NothingImported { cluster: String },
    #[error(
        "cluster \"{cluster}\": the manifest has a bad time in {field} of key {kid}: {value:?}"
    )]
    BadTime {
        cluster: String,
        kid: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "cluster \"{cluster}\" already publishes {count} {kty} keys; AWS accepts at most {MAX_KEYS_PER_TYPE}. \
         Wait for retired keys to pass their retention before rotating again"
    )]
    TooManyKeys {
        cluster: String,
        kty: &'static str,
        count: usize,
    },
}

/// Where a cluster's keys come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Generated here, of this kind, and rotated by the policy.
    Generated(KeySpec),
    /// Imported by hand (`publish_only`: the cluster signs its own tokens):
    /// nothing is ever generated, and a key changes state only by `keys
    /// import`, `keys retire` or `keys revoke`; retired keys still leave
    /// after their retention.
    Imported,
}

impl From<KeySpec> for Source {
    fn from(spec: KeySpec) -> Source {
        Source::Generated(spec)
    }
}

impl Source {
    /// Where a cluster's keys come from: generated of its configured kind,
    /// or imported by hand when it signs its own tokens.
    pub fn of(c: &crate::config::ClusterConfig) -> Source {
        if c.publish_only {
            Source::Imported
        } else {
            Source::Generated(c.key_spec)
        }
    }
}

/// One change to a cluster's keys, logged with cluster and kid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Transition {
    /// A new key was generated and published in `state`.
    Generated {
        kid: String,
        alg: String,
        state: KeyState,
    },
    /// `kid` started signing. `early` when it had been published for less
    /// than publish_ahead (after a revoke, or forced; not a first key).
    Activated {
        kid: String,
        early: bool,
    },
    Retired {
        kid: String,
    },
    /// A retired key passed its retention and left the JWKS.
    Deleted {
        kid: String,
    },
    /// A next key that never signed was replaced by one of the configured type.
    Discarded {
        kid: String,
    },
    /// Removed at once by `keys revoke`.
    Revoked {
        kid: String,
    },
    /// A retired key past its retention by this clock was *not* deleted:
    /// the clock reads `ahead_secs` past the newest time the manifest
    /// vouches for, more than the retention, so it may have jumped.
    Withheld {
        kid: String,
        ahead_secs: u64,
    },
    /// Listed again by `keys recover` from its key file.
    Recovered {
        kid: String,
        state: KeyState,
    },
    /// A public key imported by `keys import`, published in `state`.
    Imported {
        kid: String,
        alg: String,
        state: KeyState,
    },
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Generated { kid, alg, state } => {
                write!(f, "generated {alg} key {kid} as {}", state.as_str())
            }
            Transition::Activated { kid, early: false } => write!(f, "key {kid} now signs"),
            Transition::Activated { kid, early: true } => write!(
                f,
                "key {kid} now signs, published for less than publish_ahead: relying parties with an older cached JWKS may not know it yet"
            ),
            Transition::Retired { kid } => write!(f, "key {kid} retired (still published)"),
            Transition::Deleted { kid } => write!(f, "key {kid} deleted after its retention"),
            Transition::Discarded { kid } => write!(f, "unused next key {kid} discarded: the configured key type changed"),
            Transition::Revoked { kid } => write!(f, "key {kid} revoked and removed from the JWKS"),
            Transition::Withheld { kid, ahead_secs } => write!(
                f,
                "key {kid} is past its retention by this clock but was NOT deleted: the clock \
                 reads {} past the newest time the manifest vouches for (its `checked`), more \
                 than the retention, so it may have jumped ahead. It is deleted once this \
                 process has watched its clock for a whole retention with no other replica \
                 vouching, or by a replica whose clock agrees; check the clock (NTP)",
                humantime::format_duration(Duration::from_secs(*ahead_secs))
            ),
            Transition::Recovered { kid, state } => {
                write!(f, "key {kid} recovered from its file as {}", state.as_str())
            }
            Transition::Imported { kid, alg, state } => {
                write!(f, "imported {alg} public key {kid} as {}", state.as_str())
            }
        }
    }
}

pub(crate) fn time(
    cluster: &str,
    rec: &KeyRecord,
    field: &'static str,
    value: &str,
) -> Result<SystemTime, RotationError> {
    humantime::parse_rfc3339(value).map_err(|_| RotationError::BadTime {
        cluster: cluster.to_owned(),
        kid: rec.kid.clone(),
        field,
        value: value.to_owned(),
    })
}

/// The times of a record, parsed.
pub(crate) struct Times {
    pub(crate) published: SystemTime,
    pub(crate) activated: Option<SystemTime>,
    pub(crate) retired: Option<SystemTime>,
}

pub(crate) fn times(cluster: &str, rec: &KeyRecord) -> Result<Times, RotationError> {
    Ok(Times {
        published: time(cluster, rec, "published", &rec.published)?,
        activated: rec
            .activated
            .as_deref()
            .map(|v| time(cluster, rec, "activated", v))
            .transpose()?,
        retired: rec
            .retired
            .as_deref()
            .map(|v| time(cluster, rec, "retired", v))
            .transpose()?,
    })
}

pub(crate) fn spec_of(rec: &KeyRecord) -> Option<KeySpec> {
    match rec.alg.as_str() {
        "RS256" => Some(KeySpec::Rsa { bits: rec.bits }),
        "ES256" => Some(KeySpec::P256),
        _ => None,
    }
}

pub(crate) fn kty(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Rsa { .. } => "RSA",
        KeySpec::P256 => "EC",
    }
}

pub(crate) fn index_of(m: &Manifest, state: KeyState) -> Option<usize> {
    m.keys.iter().position(|k| k.state == state)
}

/// How far a step trusts its wall clock to delete keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockTrust {
    /// Delete a retired key only when the clock is within the retention of
    /// the newest time the manifest vouches for (see [`clock_ahead`]).
    Check,
    /// This process watched its clock stay that far ahead, with nothing new
    /// vouched for by anyone, for a whole retention: every key retired before
    /// it started watching has passed its retention in real time too.
    Watched,
}

/// The newest time a manifest vouches for: its `checked`, or for a manifest
/// written before `checked` existed, its newest key time.
pub(crate) fn vouched(m: &Manifest) -> Option<SystemTime> {
    let parse = |v: &str| humantime::parse_rfc3339(v).ok();
    if let Some(checked) = m.checked.as_deref() {
        return parse(checked);
    }
    m.keys
        .iter()
        .flat_map(|k| {
            [Some(&k.published), k.activated.as_ref(), k.retired.as_ref()]
                .into_iter()
                .flatten()
        })
        .filter_map(|v| parse(v))
        .max()
}

/// How far `now` is past what the manifest vouches for, when that is more
/// than the retention: a clock that jumped ahead (or a process that was down
/// longer than a retention) must not delete keys on its word alone.
pub fn clock_ahead(m: &Manifest, now: SystemTime, retention: Duration) -> Option<Duration> {
    let ahead = now.duration_since(vouched(m)?).ok()?;
    (ahead > retention).then_some(ahead)
}

/// When a rotation step should next write the manifest's `checked` time so
/// that a running server keeps vouching for its clock: a quarter of the
/// retention after the last time.
pub fn heartbeat_due(checked: Option<&str>, policy: &RotationPolicy) -> SystemTime {
    checked
        .and_then(|c| humantime::parse_rfc3339(c).ok())
        .map_or(SystemTime::UNIX_EPOCH, |c| c + policy.retention / 4)
}

/// When [`apply_policy`] will next have something to do with these keys;
/// the epoch when it has something to do now (or cannot tell, and should
/// look). Lets the server skip clusters with nothing due, without I/O.
pub fn next_due(records: &[KeyRecord], spec: KeySpec, policy: &RotationPolicy) -> SystemTime {
    let now = SystemTime::UNIX_EPOCH;
    let parse = |v: Option<&str>| v.and_then(|t| humantime::parse_rfc3339(t).ok());
    let Some(current) = records.iter().find(|k| k.state == KeyState::Current) else {
        return now;
    };
    let Some(activated) =
        parse(current.activated.as_deref()).or_else(|| parse(Some(&current.published)))
    else {
        return now;
    };
    let due = activated + policy.rotate_every;
    // With no standby (or one of another type), one is to be published now.
    let mut at = match records.iter().find(|k| k.state == KeyState::Next) {
        Some(next) if spec_of(next) == Some(spec) => match parse(Some(&next.published)) {
            Some(published) => due.max(published + policy.publish_ahead),
            None => return now,
        },
        _ => return now,
    };
    for k in records.iter().filter(|k| k.state == KeyState::Retired) {
        match parse(k.retired.as_deref()) {
            Some(retired) => at = at.min(retired + policy.retention),
            None => return now,
        }
    }
    at
}

/// When the first retired key of imported ones passes its retention: the
/// only change the background makes to a `publish_only` cluster's keys.
/// `None` with no retired key; the epoch when a time cannot be read.
pub fn retention_due(records: &[KeyRecord], policy: &RotationPolicy) -> Option<SystemTime> {
    records
        .iter()
        .filter(|k| k.state == KeyState::Retired)
        .map(|k| {
            k.retired
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map_or(SystemTime::UNIX_EPOCH, |t| t + policy.retention)
        })
        .min()
}

/// When a `publish_only` cluster's current key is due to be replaced by
/// hand (`rotate_every` after it started signing): what the next-rotation
/// metric shows for it. The epoch when it cannot tell.
pub fn replace_by_hand_due(records: &[KeyRecord], policy: &RotationPolicy) -> SystemTime {
    records
        .iter()
        .find(|k| k.state == KeyState::Current)
        .and_then(|c| times("", c).ok())
        .map_or(SystemTime::UNIX_EPOCH, |t| {
            t.activated.unwrap_or(t.published) + policy.rotate_every
        })
}

/// When a key's next transition is due, for `keys list`.
pub fn next_transition(
    rec: &KeyRecord,
    current: Option<&KeyRecord>,
    policy: &RotationPolicy,
) -> Option<(String, SystemTime)> {
    let t = times("", rec).ok()?;
    if rec.imported {
        // Imported keys move on by hand; only the retention runs on its own.
        return match rec.state {
            KeyState::Current => Some((
                "to replace by hand from".into(),
                t.activated.unwrap_or(t.published) + policy.rotate_every,
            )),
            KeyState::Next => Some(("may sign from".into(), t.published + policy.publish_ahead)),
            KeyState::Retired => Some(("deleted".into(), t.retired? + policy.retention)),
        };
    }
    match rec.state {
        KeyState::Current => Some((
            "retires".into(),
            t.activated.unwrap_or(t.published) + policy.rotate_every,
        )),
        KeyState::Next => {
            let ready = t.published + policy.publish_ahead;
            let due = current
                .and_then(|c| times("", c).ok())
                .map(|c| c.activated.unwrap_or(c.published) + policy.rotate_every)
                .unwrap_or(ready);
            Some(("signs".into(), ready.max(due)))
        }
        KeyState::Retired => Some(("deleted".into(), t.retired? + policy.retention)),
    }
}

/// The kids a manifest lists, for quick comparisons.
pub fn kids(m: &Manifest) -> HashSet<&str> {
    m.keys.iter().map(|k| k.kid.as_str()).collect()
}

pub(crate) fn kid_of(t: &Transition) -> &str {
    match t {
        Transition::Generated { kid, .. }
        | Transition::Activated { kid, .. }
        | Transition::Retired { kid }
        | Transition::Deleted { kid }
        | Transition::Discarded { kid }
        | Transition::Revoked { kid }
        | Transition::Withheld { kid, .. }
        | Transition::Recovered { kid, .. }
        | Transition::Imported { kid, .. } => kid,
    }
}
