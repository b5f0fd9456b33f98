//! Key rotation: the policy, the steps that apply it, the manual commands, and
//! the background task that applies it and follows changes made elsewhere.
//!
//! A key's life (REFERENCE §5):
//!
//! ```text
//! next (published, not signing) -> current (signing) -> retired (published) -> deleted
//! ```
//!
//! Every change happens under the keys dir's exclusive lock and starts by
//! re-reading the manifest, so replicas sharing a volume and the CLI never
//! apply one step twice. Writes are ordered so that a crash at any point leaves
//! a loadable store: new key files first, then the manifest (one atomic rename,
//! the commit point), then the removal of files the manifest no longer lists.
//!
//! Drives `keys::store` and `keys::material`; never imports `http` or `issuer`:
//! the server hands in a callback that publishes a new key set.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::material::KeySpec;
use super::store::{
    rfc3339, KeyRecord, KeySet, KeyState, KeyStore, Manifest, StoreError, StoreLock,
};
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
        }
    }
}

fn time(
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
struct Times {
    published: SystemTime,
    activated: Option<SystemTime>,
    retired: Option<SystemTime>,
}

fn times(cluster: &str, rec: &KeyRecord) -> Result<Times, RotationError> {
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

fn spec_of(rec: &KeyRecord) -> Option<KeySpec> {
    match rec.alg.as_str() {
        "RS256" => Some(KeySpec::Rsa { bits: rec.bits }),
        "ES256" => Some(KeySpec::P256),
        _ => None,
    }
}

fn kty(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Rsa { .. } => "RSA",
        KeySpec::P256 => "EC",
    }
}

fn index_of(m: &Manifest, state: KeyState) -> Option<usize> {
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
fn vouched(m: &Manifest) -> Option<SystemTime> {
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

/// A change being prepared under the lock.
struct Change<'a> {
    store: &'a KeyStore,
    lock: &'a StoreLock,
    manifest: Manifest,
    transitions: Vec<Transition>,
    /// Key files to remove once the manifest no longer lists them.
    remove: Vec<String>,
    now: SystemTime,
    /// Whether this step's clock may be written as the manifest's `checked`.
    vouch: bool,
}

impl<'a> Change<'a> {
    fn begin(
        store: &'a KeyStore,
        lock: &'a StoreLock,
        cluster: &str,
        now: SystemTime,
    ) -> Result<Self, RotationError> {
        let manifest = store
            .read_manifest(cluster)?
            .unwrap_or_else(|| Manifest::empty(cluster));
        Ok(Change {
            store,
            lock,
            manifest,
            transitions: Vec::new(),
            remove: Vec::new(),
            now,
            vouch: false,
        })
    }

    fn cluster(&self) -> &str {
        &self.manifest.cluster
    }

    /// Generates a key file and lists it in `state`.
    fn generate(&mut self, spec: KeySpec, state: KeyState) -> Result<usize, RotationError> {
        let count = self
            .manifest
            .keys
            .iter()
            .filter(|k| spec_of(k).map(kty) == Some(kty(spec)))
            .count();
        if count >= MAX_KEYS_PER_TYPE {
            return Err(RotationError::TooManyKeys {
                cluster: self.cluster().to_owned(),
                kty: kty(spec),
                count,
            });
        }
        let key = self
            .store
            .generate_key(self.lock, &self.manifest.cluster, spec)?;
        let at = rfc3339(self.now);
        self.manifest.keys.push(KeyRecord {
            kid: key.kid().to_owned(),
            alg: key.algorithm().as_str().to_owned(),
            bits: key.bits(),
            state,
            created: at.clone(),
            published: at.clone(),
            activated: (state == KeyState::Current).then_some(at),
            retired: None,
        });
        self.transitions.push(Transition::Generated {
            kid: key.kid().to_owned(),
            alg: key.algorithm().as_str().to_owned(),
            state,
        });
        Ok(self.manifest.keys.len() - 1)
    }

    /// Makes key `i` current, retiring the current one.
    fn activate(&mut self, i: usize, early: bool) {
        let at = rfc3339(self.now);
        if let Some(c) = index_of(&self.manifest, KeyState::Current) {
            let cur = &mut self.manifest.keys[c];
            cur.state = KeyState::Retired;
            cur.retired = Some(at.clone());
            self.transitions.push(Transition::Retired {
                kid: cur.kid.clone(),
            });
        }
        let key = &mut self.manifest.keys[i];
        key.state = KeyState::Current;
        key.activated = Some(at);
        self.transitions.push(Transition::Activated {
            kid: key.kid.clone(),
            early,
        });
    }

    /// Takes key `i` out of the manifest and lists it as removed, so that
    /// its file may be deleted.
    fn drop_key(&mut self, i: usize) -> KeyRecord {
        let rec = self.manifest.keys.remove(i);
        self.remove.push(rec.kid.clone());
        if !self.manifest.removed.contains(&rec.kid) {
            self.manifest.removed.push(rec.kid.clone());
        }
        rec
    }

    /// Makes sure some key signs: the next key if there is one (early), or a
    /// new key (first start, or after the signing key was revoked).
    fn ensure_current(&mut self, spec: KeySpec) -> Result<(), RotationError> {
        if index_of(&self.manifest, KeyState::Current).is_some() {
            return Ok(());
        }
        match index_of(&self.manifest, KeyState::Next) {
            Some(n) => self.activate(n, true),
            None => {
                // A cluster's very first key: no relying party has a JWKS of
                // it to be out of date, so nothing signs early.
                let first = self.manifest.keys.is_empty() && self.remove.is_empty();
                let i = self.generate(spec, KeyState::Current)?;
                let kid = self.manifest.keys[i].kid.clone();
                self.transitions
                    .push(Transition::Activated { kid, early: !first });
            }
        }
        Ok(())
    }

    /// Whether anything but a withheld deletion happened.
    fn changed(&self) -> bool {
        self.transitions
            .iter()
            .any(|t| !matches!(t, Transition::Withheld { .. }))
    }

    /// Writes the manifest if anything changed (or `heartbeat`), then
    /// removes the files of dropped keys.
    fn commit(mut self, heartbeat: bool) -> Result<Vec<Transition>, RotationError> {
        let write = self.changed() || (heartbeat && self.vouch);
        if !write {
            return Ok(self.transitions);
        }
        if self.vouch {
            self.manifest.checked = Some(rfc3339(self.now));
        }
        // A removed kid is remembered until its file is gone.
        let (store, cluster) = (self.store, self.manifest.cluster.clone());
        let remove = &self.remove;
        self.manifest
            .removed
            .retain(|kid| remove.contains(kid) || store.key_path(&cluster, kid).exists());
        self.store.write_manifest(self.lock, &self.manifest)?;
        for kid in &self.remove {
            self.store.remove_key_file(self.lock, &self.manifest, kid)?;
        }
        Ok(self.transitions)
    }
}

/// Applies `policy` to `cluster` at `now`: one step that lands in a valid
/// state however long the server was down.
///
/// - retired keys past their retention are deleted, unless the clock looks to
///   have jumped ([`clock_ahead`]; [`ClockTrust`]);
/// - an unused next key of another type than `spec` is replaced;
/// - with no signing key (first start, after a revoke), one is made to sign at once;
/// - the next key is generated `publish_ahead` before the current key is due;
/// - the current key is replaced when it is due *and* the next key has been
///   published for `publish_ahead`; until then it keeps signing;
/// - the manifest's `checked` is renewed when the clock can be vouched for.
pub fn apply_policy(
    store: &KeyStore,
    cluster: &str,
    spec: KeySpec,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<Vec<Transition>, RotationError> {
    apply_policy_trusting(store, cluster, spec, policy, now, ClockTrust::Check)
}

/// [`apply_policy`] with an explicit trust in the clock.
pub fn apply_policy_trusting(
    store: &KeyStore,
    cluster: &str,
    spec: KeySpec,
    policy: &RotationPolicy,
    now: SystemTime,
    trust: ClockTrust,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    let ahead = match trust {
        ClockTrust::Check => clock_ahead(&change.manifest, now, policy.retention),
        ClockTrust::Watched => None,
    };
    change.vouch = ahead.is_none();

    // Retired keys past retention leave the JWKS.
    let mut i = 0;
    while i < change.manifest.keys.len() {
        let rec = &change.manifest.keys[i];
        let expired = match (rec.state, times(cluster, rec)?.retired) {
            (KeyState::Retired, Some(at)) => at + policy.retention <= now,
            _ => false,
        };
        match (expired, ahead) {
            (true, None) => {
                let rec = change.drop_key(i);
                change
                    .transitions
                    .push(Transition::Deleted { kid: rec.kid });
            }
            (true, Some(ahead)) => {
                let kid = rec.kid.clone();
                change.transitions.push(Transition::Withheld {
                    kid,
                    ahead_secs: ahead.as_secs(),
                });
                i += 1;
            }
            (false, _) => i += 1,
        }
    }

    // A next key that never signed can go at any time; replace one of a type
    // the configuration no longer asks for (RS256 -> ES256 and back).
    if let Some(n) = index_of(&change.manifest, KeyState::Next) {
        if spec_of(&change.manifest.keys[n]) != Some(spec) {
            let rec = change.drop_key(n);
            change
                .transitions
                .push(Transition::Discarded { kid: rec.kid });
        }
    }

    change.ensure_current(spec)?;

    // Promote the next key when the current one is due and the next one has
    // been published long enough.
    if let (Some(c), Some(n)) = (
        index_of(&change.manifest, KeyState::Current),
        index_of(&change.manifest, KeyState::Next),
    ) {
        let cur = times(cluster, &change.manifest.keys[c])?;
        let next = times(cluster, &change.manifest.keys[n])?;
        let activated = cur.activated.unwrap_or(cur.published);
        if activated + policy.rotate_every <= now && next.published + policy.publish_ahead <= now {
            change.activate(n, false);
        }
    }

    // Publish the next key ahead of the current key's due time.
    if index_of(&change.manifest, KeyState::Next).is_none() {
        if let Some(c) = index_of(&change.manifest, KeyState::Current) {
            let cur = times(cluster, &change.manifest.keys[c])?;
            let activated = cur.activated.unwrap_or(cur.published);
            let due = activated + policy.rotate_every;
            if due
                .checked_sub(policy.publish_ahead)
                .is_none_or(|at| at <= now)
            {
                change.generate(spec, KeyState::Next)?;
            }
        }
    }

    let heartbeat = heartbeat_due(change.manifest.checked.as_deref(), policy) <= now;
    let transitions = change.commit(heartbeat)?;
    let leftovers = store.remove_leftovers(&lock, cluster)?;
    for path in &leftovers.unlisted {
        tracing::warn!(
            cluster,
            path = %path.display(),
            "a key file the manifest does not list is kept: no manifest marked it for removal \
             (a step that failed before writing the manifest leaves one; delete it by hand \
             once you know it never signed)"
        );
    }
    Ok(transitions)
}

/// `keys rotate`: the next key takes over now. Refused while it has been
/// published for less than `publish_ahead`, unless `force`. Without a next
/// key, one is published now (and, with `force`, signs at once).
pub fn rotate(
    store: &KeyStore,
    cluster: &str,
    spec: KeySpec,
    policy: &RotationPolicy,
    now: SystemTime,
    force: bool,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    change.vouch = clock_ahead(&change.manifest, now, policy.retention).is_none();
    if change.manifest.keys.is_empty() && !force {
        return Err(RotationError::NoKeys {
            cluster: cluster.to_owned(),
        });
    }
    // A next key of a type the configuration no longer asks for never
    // signed: replace it, so that rotation brings in the configured type.
    if let Some(n) = index_of(&change.manifest, KeyState::Next) {
        if spec_of(&change.manifest.keys[n]) != Some(spec) {
            let rec = change.drop_key(n);
            change
                .transitions
                .push(Transition::Discarded { kid: rec.kid });
        }
    }
    let n = match index_of(&change.manifest, KeyState::Next) {
        Some(n) => n,
        None => change.generate(spec, KeyState::Next)?,
    };
    let published = times(cluster, &change.manifest.keys[n])?.published;
    let ready = published + policy.publish_ahead;
    if ready > now && !force {
        let kid = change.manifest.keys[n].kid.clone();
        let fresh = change
            .transitions
            .iter()
            .any(|t| matches!(t, Transition::Generated { .. }));
        // Keep a freshly published next key: its clock starts now.
        change.commit(false)?;
        let show =
            |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        let since = now.duration_since(published).unwrap_or_default();
        let why = "relying parties that cached the JWKS before it appeared must refetch it first";
        return Err(RotationError::Refused(if fresh {
            format!(
                "published a new next key {kid}; it can sign from {} (publish_ahead {}): {why}. \
                 Run `keys rotate` again then, or add --force to rotate now anyway",
                rfc3339(ready),
                show(policy.publish_ahead)
            )
        } else {
            format!(
                "refused: next key {kid} has been published for {}, less than publish_ahead ({}): \
                 {why}. It can sign from {}; run `keys rotate` again then, or add --force to rotate now anyway",
                show(since),
                show(policy.publish_ahead),
                rfc3339(ready)
            )
        }));
    }
    change.activate(n, ready > now);
    let transitions = change.commit(false)?;
    Ok(transitions)
}

/// `keys revoke`: removes a key from the JWKS at once (a compromised key) and
/// deletes its file. If it was signing, the next key takes over at once, or a
/// new key is made to sign.
pub fn revoke(
    store: &KeyStore,
    cluster: &str,
    kid: &str,
    spec: KeySpec,
    now: SystemTime,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    let Some(i) = change.manifest.keys.iter().position(|k| k.kid == kid) else {
        let known: Vec<&str> = change
            .manifest
            .keys
            .iter()
            .map(|k| k.kid.as_str())
            .collect();
        return Err(RotationError::UnknownKid {
            cluster: cluster.to_owned(),
            kid: kid.to_owned(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let rec = change.drop_key(i);
    change
        .transitions
        .push(Transition::Revoked { kid: rec.kid });
    change.ensure_current(spec)?;
    change.commit(false)
}

/// `keys recover`: rebuilds a lost manifest from the key files present,
/// keeping their kids. The key `current` names (or else the newest file of
/// the configured type, or else the newest file) signs; every other key is
/// published as retired from now, so the tokens it signed keep verifying for
/// a whole retention. Refused when the cluster has a manifest.
pub fn recover(
    store: &KeyStore,
    cluster: &str,
    spec: KeySpec,
    current: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    match store.read_manifest(cluster) {
        Err(StoreError::ManifestMissing { .. }) => {}
        Ok(Some(_)) => {
            return Err(RotationError::Refused(format!(
            "cluster \"{cluster}\" has a manifest ({}); `keys recover` only rebuilds a missing one",
            store.manifest_path(cluster).display()
        )))
        }
        Ok(None) => {
            return Err(RotationError::Refused(format!(
                "cluster \"{cluster}\" has no key files in {}: nothing to recover (a new cluster \
                 gets its first key when the server starts)",
                store.cluster_dir(cluster).display()
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let mut found = Vec::new();
    let files = store.key_files(cluster)?;
    if files.is_empty() {
        return Err(RotationError::Refused(format!(
            "cluster \"{cluster}\" has no key files to recover; remove the broken link {} and \
             the server makes a first key when it starts",
            store.manifest_path(cluster).display()
        )));
    }
    for name in files {
        let kid = name.trim_end_matches(".pem");
        let (key, _) = store.load_key(cluster, kid)?;
        let path = store.key_path(cluster, kid);
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|source| StoreError::Io { path, source })?;
        found.push((key, modified.min(now)));
    }
    let signer = match current {
        Some(kid) => found
            .iter()
            .position(|(k, _)| k.kid() == kid)
            .ok_or_else(|| RotationError::UnknownKid {
                cluster: cluster.to_owned(),
                kid: kid.to_owned(),
                known: found
                    .iter()
                    .map(|(k, _)| k.kid())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        None => {
            let newest = |of_spec: bool| {
                found
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, _))| !of_spec || k.spec() == spec)
                    .max_by_key(|(_, (_, at))| *at)
                    .map(|(i, _)| i)
            };
            newest(true).or_else(|| newest(false)).unwrap_or(0)
        }
    };
    let at = rfc3339(now);
    let mut manifest = Manifest::empty(cluster);
    let mut transitions = Vec::new();
    for (i, (key, modified)) in found.iter().enumerate() {
        let state = if i == signer {
            KeyState::Current
        } else {
            KeyState::Retired
        };
        let made = rfc3339(*modified);
        manifest.keys.push(KeyRecord {
            kid: key.kid().to_owned(),
            alg: key.algorithm().as_str().to_owned(),
            bits: key.bits(),
            state,
            created: made.clone(),
            published: made,
            activated: Some(at.clone()),
            retired: (state == KeyState::Retired).then(|| at.clone()),
        });
        transitions.push(Transition::Recovered {
            kid: key.kid().to_owned(),
            state,
        });
    }
    store.write_manifest(&lock, &manifest)?;
    Ok(transitions)
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
    let mut at = match records.iter().find(|k| k.state == KeyState::Next) {
        Some(next) if spec_of(next) != Some(spec) => return now,
        Some(next) => match parse(Some(&next.published)) {
            Some(published) => due.max(published + policy.publish_ahead),
            None => return now,
        },
        None => due.checked_sub(policy.publish_ahead).unwrap_or(now),
    };
    for k in records.iter().filter(|k| k.state == KeyState::Retired) {
        match parse(k.retired.as_deref()) {
            Some(retired) => at = at.min(retired + policy.retention),
            None => return now,
        }
    }
    at
}

/// When a key's next transition is due, for `keys list`.
pub fn next_transition(
    rec: &KeyRecord,
    current: Option<&KeyRecord>,
    policy: &RotationPolicy,
) -> Option<(String, SystemTime)> {
    let t = times("", rec).ok()?;
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

// ---- the background task ---------------------------------------------------

/// What the background task reports of the key sets it keeps, for health
/// checks and metrics to read (they import this module; it imports none of
/// theirs).
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Clusters whose keys on disk no longer load, with the reason: the last
    /// good set keeps serving, but a restart would fail.
    pub failing: std::sync::Mutex<Vec<(String, String)>>,
    /// Clusters whose last rotation step failed (a full disk, a permission
    /// refused), with the reason.
    pub rotation_failing: std::sync::Mutex<Vec<(String, String)>>,
    /// Seconds since the epoch of the last pass that loaded every cluster.
    pub last_good: std::sync::atomic::AtomicU64,
}

impl ReloadStatus {
    /// Records a reload pass: the clusters that failed (none: a good pass).
    pub fn set_reload_failing(&self, failing: Vec<(String, String)>) {
        if failing.is_empty() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_good
                .store(secs, std::sync::atomic::Ordering::Relaxed);
        }
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing;
    }

    /// Records a rotation pass: the clusters whose step failed.
    pub fn set_rotation_failing(&self, failing: Vec<(String, String)>) {
        *self
            .rotation_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = failing;
    }
}

/// One cluster as the background task sees it.
pub struct Managed {
    pub cluster: String,
    pub spec: KeySpec,
    pub policy: RotationPolicy,
    /// Called with the new key set whenever the manifest changed.
    pub publish: Box<dyn Fn(Arc<KeySet>) + Send + Sync>,
}

/// Logs transitions, one line each, with cluster and kid.
pub fn log_transitions(cluster: &str, transitions: &[Transition]) {
    for t in transitions {
        match t {
            Transition::Activated { early: true, .. } => {
                tracing::warn!(cluster, kid = kid_of(t), "{t}")
            }
            Transition::Withheld { .. } => tracing::error!(cluster, kid = kid_of(t), "{t}"),
            _ => tracing::info!(cluster, kid = kid_of(t), "{t}"),
        }
    }
}

fn kid_of(t: &Transition) -> &str {
    match t {
        Transition::Generated { kid, .. }
        | Transition::Activated { kid, .. }
        | Transition::Retired { kid }
        | Transition::Deleted { kid }
        | Transition::Discarded { kid }
        | Transition::Revoked { kid }
        | Transition::Withheld { kid, .. }
        | Transition::Recovered { kid, .. } => kid,
    }
}

/// What the background task keeps of one managed cluster.
struct Tracked {
    /// The key set being served, as last loaded.
    set: Arc<KeySet>,
    /// Since when (on the monotonic clock) a step has withheld deletions for
    /// a clock that looks ahead, and the `checked` time it saw then.
    withheld_since: Option<(Instant, Option<String>)>,
}

/// Applies the policies of the managed clusters that have something due
/// (judged from the key sets in memory, which follow the disk). Blocking: run
/// it off the async workers. Returns the clusters whose step failed.
fn apply_due(
    store: &KeyStore,
    managed: &[Managed],
    tracked: &mut [Tracked],
    now: SystemTime,
    monotonic: Instant,
) -> Vec<(String, String)> {
    let mut failing = Vec::new();
    for (m, t) in managed.iter().zip(tracked.iter_mut()) {
        let records: Vec<KeyRecord> = t.set.keys().iter().map(|k| k.record.clone()).collect();
        let due =
            next_due(&records, m.spec, &m.policy).min(heartbeat_due(t.set.checked(), &m.policy));
        if due > now {
            continue;
        }
        // A clock that stayed ahead for a whole retention of this process's
        // own (monotonic) time, while no one vouched for a newer time, has
        // seen every key retired before then pass its retention for real.
        let trust = match &t.withheld_since {
            Some((since, checked))
                if checked.as_deref() == t.set.checked()
                    && monotonic.saturating_duration_since(*since) >= m.policy.retention =>
            {
                tracing::warn!(
                    cluster = m.cluster,
                    "the clock stayed ahead of the manifest for a whole retention of this process's \
                     uptime with no other replica vouching: deleting the keys past retention"
                );
                ClockTrust::Watched
            }
            _ => ClockTrust::Check,
        };
        match apply_policy_trusting(store, &m.cluster, m.spec, &m.policy, now, trust) {
            Ok(transitions) => {
                log_transitions(&m.cluster, &transitions);
                let withheld = transitions
                    .iter()
                    .any(|x| matches!(x, Transition::Withheld { .. }));
                t.withheld_since = match t.withheld_since.take() {
                    Some((since, checked)) if withheld && checked.as_deref() == t.set.checked() => {
                        Some((since, checked))
                    }
                    _ if withheld => Some((monotonic, t.set.checked().map(str::to_owned))),
                    _ => None,
                };
            }
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "applying the rotation policy failed");
                failing.push((m.cluster.clone(), e.to_string()));
            }
        }
    }
    failing
}

/// What the background thread is told.
enum Signal {
    Reload,
    Stop,
}

/// The background thread: applies the policies every `interval` (when this
/// replica rotates) and re-reads changed manifests and key files every
/// `reload_interval`, publishing each new key set. A manifest or key file
/// that cannot be read or loaded is logged and reported, and the last good
/// key set keeps serving.
pub struct Background {
    tx: std::sync::mpsc::Sender<Signal>,
    handle: Option<std::thread::JoinHandle<()>>,
}

pub struct BackgroundSettings {
    pub rotate: bool,
    pub interval: Duration,
    pub reload_interval: Duration,
}

impl Background {
    /// Starts the thread. `loaded` holds each managed cluster's key set as
    /// the server loaded it, in the order of `managed`; each carries the
    /// stamp of the manifest it came from, so a change made since is seen.
    pub fn start(
        store: KeyStore,
        managed: Vec<Managed>,
        loaded: Vec<Arc<KeySet>>,
        settings: BackgroundSettings,
        status: Arc<ReloadStatus>,
    ) -> std::io::Result<Background> {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("key-rotation".into())
            .spawn(move || background(store, managed, loaded, settings, status, rx))?;
        Ok(Background {
            tx,
            handle: Some(handle),
        })
    }

    /// Re-reads every manifest and key file now, changed or not (SIGHUP).
    pub fn reload_now(&self) {
        let _ = self.tx.send(Signal::Reload);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.tx.send(Signal::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn background(
    store: KeyStore,
    managed: Vec<Managed>,
    loaded: Vec<Arc<KeySet>>,
    settings: BackgroundSettings,
    status: Arc<ReloadStatus>,
    rx: std::sync::mpsc::Receiver<Signal>,
) {
    use std::sync::mpsc::RecvTimeoutError;

    let mut tracked: Vec<Tracked> = loaded
        .into_iter()
        .map(|set| Tracked {
            set,
            withheld_since: None,
        })
        .collect();
    // Catch up at once on anything that changed while the server started.
    reload(&store, &managed, &mut tracked, &status, false);
    let mut next_apply = Instant::now() + settings.interval;
    let mut next_reload = Instant::now() + settings.reload_interval;
    loop {
        let wake = if settings.rotate {
            next_apply.min(next_reload)
        } else {
            next_reload
        };
        let force = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Signal::Reload) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        let now = Instant::now();
        if settings.rotate && now >= next_apply {
            let failing = apply_due(&store, &managed, &mut tracked, SystemTime::now(), now);
            status.set_rotation_failing(failing);
            next_apply = now + settings.interval;
        }
        reload(&store, &managed, &mut tracked, &status, force);
        next_reload = Instant::now() + settings.reload_interval;
    }
}

/// Re-reads the key sets whose manifest or key files changed on disk (all of
/// them with `force`), publishes each new set, and reports the ones that no
/// longer load: the last good set keeps serving, but a restart would fail.
fn reload(
    store: &KeyStore,
    managed: &[Managed],
    tracked: &mut [Tracked],
    status: &ReloadStatus,
    force: bool,
) {
    let mut failing = Vec::new();
    let root = store.check_dirs(None).err();
    for (m, t) in managed.iter().zip(tracked.iter_mut()) {
        let result = (|| {
            if let Some(e) = &root {
                return Err(StoreError::Manifest {
                    path: store.root().to_owned(),
                    reason: e.to_string(),
                });
            }
            let fresh = store.stamp(&m.cluster)?;
            if !force && fresh == t.set.stamp() && !store.key_files_changed(&m.cluster, &t.set) {
                return Ok(None);
            }
            // Forced: parse every key file again, too.
            let previous = (!force).then_some(&*t.set);
            store
                .load(&m.cluster, previous)?
                .map(Some)
                .ok_or_else(|| StoreError::Manifest {
                    path: store.manifest_path(&m.cluster),
                    reason: "the manifest is gone".into(),
                })
        })();
        match result {
            Ok(None) => {}
            Ok(Some(new_set)) => {
                let new_set = Arc::new(new_set);
                let same = new_set.keys().len() == t.set.keys().len()
                    && new_set
                        .keys()
                        .iter()
                        .zip(t.set.keys())
                        .all(|(a, b)| a.record == b.record && a.key.kid() == b.key.kid());
                if same {
                    tracing::debug!(cluster = m.cluster, "key set re-read, unchanged");
                } else {
                    tracing::info!(
                        cluster = m.cluster,
                        signing = new_set.signer().kid(),
                        published = new_set.keys().len(),
                        "key set reloaded"
                    );
                }
                (m.publish)(new_set.clone());
                t.set = new_set;
            }
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "cannot reload the key set; the last good one keeps serving, but a restart would fail");
                failing.push((m.cluster.clone(), e.to_string()));
            }
        }
    }
    status.set_reload_failing(failing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86400);

    fn policy() -> RotationPolicy {
        // The defaults for a 24h max lifetime, 1h max-age, 5m skew.
        RotationPolicy {
            rotate_every: 30 * DAY,
            publish_ahead: DAY,
            retention: DAY + HOUR + Duration::from_secs(300),
        }
    }

    fn t0() -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    }

    fn manifest(store: &KeyStore) -> Manifest {
        store.read_manifest("c").unwrap().unwrap()
    }

    fn states(store: &KeyStore) -> Vec<(String, KeyState)> {
        manifest(store)
            .keys
            .into_iter()
            .map(|k| (k.kid, k.state))
            .collect()
    }

    fn kid_in(store: &KeyStore, state: KeyState) -> Option<String> {
        manifest(store)
            .keys
            .into_iter()
            .find(|k| k.state == state)
            .map(|k| k.kid)
    }

    /// Steps hourly after `from` up to `to` (inclusive), as a running server
    /// does, and returns every transition.
    fn run(
        store: &KeyStore,
        spec: KeySpec,
        p: &RotationPolicy,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<Transition> {
        let mut all = Vec::new();
        let mut at = from + HOUR;
        while at < to {
            all.extend(apply_policy(store, "c", spec, p, at).unwrap());
            at += HOUR;
        }
        all.extend(apply_policy(store, "c", spec, p, to).unwrap());
        all
    }

    #[test]
    fn a_key_lives_next_current_retired_deleted_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let spec = KeySpec::P256;

        let t = apply_policy(&store, "c", spec, &p, t0()).unwrap();
        assert!(
            matches!(t[1], Transition::Activated { early: false, .. }),
            "first start signs at once, and not early (no JWKS of it is cached anywhere): {t:?}"
        );
        let first = kid_in(&store, KeyState::Current).unwrap();

        // Nothing to do until publish_ahead before the due time.
        assert!(run(&store, spec, &p, t0(), t0() + 28 * DAY).is_empty());
        let t = run(&store, spec, &p, t0() + 28 * DAY, t0() + 29 * DAY);
        assert!(
            matches!(
                &t[..],
                [Transition::Generated {
                    state: KeyState::Next,
                    ..
                }]
            ),
            "{t:?}"
        );
        let second = kid_in(&store, KeyState::Next).unwrap();

        let t = run(&store, spec, &p, t0() + 29 * DAY, t0() + 30 * DAY);
        assert_eq!(
            t,
            vec![
                Transition::Retired { kid: first.clone() },
                Transition::Activated {
                    kid: second.clone(),
                    early: false
                }
            ]
        );
        // Retired, still published until its retention ends.
        assert!(run(&store, spec, &p, t0() + 30 * DAY, t0() + 31 * DAY).is_empty());
        assert!(states(&store)
            .iter()
            .any(|(k, s)| *k == first && *s == KeyState::Retired));
        let t = run(
            &store,
            spec,
            &p,
            t0() + 31 * DAY,
            t0() + 30 * DAY + p.retention,
        );
        assert_eq!(t, vec![Transition::Deleted { kid: first.clone() }]);
        assert!(
            !store.key_path("c", &first).exists(),
            "its file is gone too"
        );
    }

    #[test]
    fn after_long_downtime_one_step_lands_in_a_valid_state_without_signing_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();

        // Down for 100 days, past three rotation points, with no next key.
        let back = t0() + 100 * DAY;
        let t = apply_policy(&store, "c", spec, &p, back).unwrap();
        assert!(
            matches!(
                &t[..],
                [Transition::Generated {
                    state: KeyState::Next,
                    ..
                }]
            ),
            "{t:?}"
        );
        assert_eq!(
            kid_in(&store, KeyState::Current).unwrap(),
            first,
            "the old key signs until the next one is known"
        );
        assert!(apply_policy(&store, "c", spec, &p, back + HOUR)
            .unwrap()
            .is_empty());
        let t = apply_policy(&store, "c", spec, &p, back + DAY).unwrap();
        assert!(
            matches!(t[1], Transition::Activated { early: false, .. }),
            "{t:?}"
        );

        // The retired first key is past its retention, but this clock is
        // 130 days past the last time the manifest vouched for: it could
        // have jumped, so the key is kept. The next key is published ahead
        // of the following rotation all the same.
        let t = apply_policy(&store, "c", spec, &p, back + 30 * DAY).unwrap();
        assert!(
            t.iter()
                .any(|x| matches!(x, Transition::Withheld { kid, .. } if *kid == first)),
            "{t:?}"
        );
        assert!(manifest(&store).keys.iter().any(|k| k.kid == first));
        assert!(
            t.iter().any(|x| matches!(
                x,
                Transition::Generated {
                    state: KeyState::Next,
                    ..
                }
            )),
            "{t:?}"
        );
        // Once the process has watched its clock for a whole retention, the
        // key leaves.
        let t = apply_policy_trusting(
            &store,
            "c",
            spec,
            &p,
            back + 30 * DAY + HOUR,
            ClockTrust::Watched,
        )
        .unwrap();
        assert_eq!(t, vec![Transition::Deleted { kid: first.clone() }]);
        // Down again for 200 days: the next key was published long ago, so
        // the overdue current key hands over in one step.
        let t = apply_policy(&store, "c", spec, &p, back + 230 * DAY).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Retired { .. },
                    Transition::Activated { early: false, .. }
                ]
            ),
            "{t:?}"
        );
        let m = manifest(&store);
        assert_eq!(
            m.keys
                .iter()
                .filter(|k| k.state == KeyState::Current)
                .count(),
            1
        );
    }

    #[test]
    fn manual_rotate_is_refused_before_publish_ahead_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        assert!(matches!(
            rotate(&store, "c", spec, &p, t0(), false),
            Err(RotationError::NoKeys { .. })
        ));
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();

        let err = rotate(&store, "c", spec, &p, t0() + HOUR, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("published a new next key") && err.contains("--force"),
            "{err}"
        );
        let next = kid_in(&store, KeyState::Next).expect("the new next key is kept");
        let err = rotate(&store, "c", spec, &p, t0() + 2 * HOUR, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused: next key") && err.contains("published for 1h"),
            "{err}"
        );
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), first);

        let t = rotate(&store, "c", spec, &p, t0() + HOUR + DAY, false).unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: next.clone(),
                early: false
            }),
            "{t:?}"
        );

        let t = rotate(&store, "c", spec, &p, t0() + HOUR + DAY + HOUR, true).unwrap();
        assert!(
            t.iter()
                .any(|x| matches!(x, Transition::Activated { early: true, .. })),
            "{t:?}"
        );
    }

    #[test]
    fn revoking_the_signing_key_hands_over_at_once_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        apply_policy(&store, "c", spec, &p, t0() + 29 * DAY).unwrap();
        let (cur, next) = (
            kid_in(&store, KeyState::Current).unwrap(),
            kid_in(&store, KeyState::Next).unwrap(),
        );

        let t = revoke(&store, "c", &cur, spec, t0() + 29 * DAY + HOUR).unwrap();
        assert_eq!(t[0], Transition::Revoked { kid: cur.clone() });
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), next);
        assert!(!store.key_path("c", &cur).exists());

        // With no next key, a new key signs at once.
        let t = revoke(&store, "c", &next, spec, t0() + 30 * DAY).unwrap();
        assert!(
            matches!(
                t[1],
                Transition::Generated {
                    state: KeyState::Current,
                    ..
                }
            ),
            "{t:?}"
        );
        assert_eq!(manifest(&store).keys.len(), 1);

        let err = revoke(&store, "c", "nope", spec, t0())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no key with kid nope; its kids are: "),
            "{err}"
        );
    }

    #[test]
    fn rotation_brings_in_a_new_algorithm_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let rsa = KeySpec::Rsa { bits: 2048 };
        apply_policy(&store, "c", rsa, &p, t0()).unwrap();
        apply_policy(&store, "c", rsa, &p, t0() + 29 * DAY).unwrap();
        // The operator switches the cluster to ES256: the unused RSA next key
        // is replaced by an EC one, which takes over on schedule.
        let t = apply_policy(&store, "c", KeySpec::P256, &p, t0() + 29 * DAY + HOUR).unwrap();
        assert!(matches!(t[0], Transition::Discarded { .. }), "{t:?}");
        apply_policy(&store, "c", KeySpec::P256, &p, t0() + 30 * DAY + HOUR).unwrap();
        let set = store.load_set(&manifest(&store)).unwrap();
        assert_eq!(set.signer().algorithm().as_str(), "ES256");
        let algs: Vec<&str> = set.algorithms().iter().map(|a| a.as_str()).collect();
        assert_eq!(
            algs,
            ["ES256", "RS256"],
            "the retired RSA key is still published"
        );
        // And back, by a manual rotation.
        let _ = rotate(&store, "c", rsa, &p, t0() + 31 * DAY, false);
        rotate(&store, "c", rsa, &p, t0() + 32 * DAY + HOUR, false).unwrap();
        let set = store.load_set(&manifest(&store)).unwrap();
        assert_eq!(set.signer().algorithm().as_str(), "RS256");
    }

    #[test]
    fn a_failure_between_any_two_writes_leaves_a_loadable_store_that_lost_no_live_key() {
        let spec = KeySpec::P256;
        // A step that writes a lot: deletes an expired retired key, promotes
        // the next key, and publishes a new next key (rotate_every ==
        // publish_ahead makes that immediate).
        let busy = RotationPolicy {
            rotate_every: DAY,
            publish_ahead: DAY,
            retention: DAY,
        };
        for fail_at in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let plain = KeyStore::new(dir.path());
            apply_policy(&plain, "c", spec, &busy, t0()).unwrap();
            apply_policy(&plain, "c", spec, &busy, t0() + DAY).unwrap();
            apply_policy(&plain, "c", spec, &busy, t0() + 2 * DAY).unwrap();
            let before = manifest(&plain);

            let calls = Arc::new(AtomicUsize::new(0));
            let counter = calls.clone();
            let failing = KeyStore::new(dir.path()).with_hook(Arc::new(move |_| {
                if counter.fetch_add(1, Ordering::SeqCst) == fail_at {
                    Err(std::io::Error::other("injected failure"))
                } else {
                    Ok(())
                }
            }));
            let now = t0() + 3 * DAY + HOUR;
            // (Steps a day apart: trust the clock, this test is about writes.)
            let result =
                apply_policy_trusting(&failing, "c", spec, &busy, now, ClockTrust::Watched);

            // Whatever happened, the store loads and has a signing key...
            let after = manifest(&plain);
            let set = plain
                .load_set(&after)
                .unwrap_or_else(|e| panic!("fail_at {fail_at}: {e}"));
            assert!(!set.signer().kid().is_empty());
            // ...and every key of the old manifest still within retention is
            // still there.
            for k in &before.keys {
                let live = match &k.retired {
                    Some(r) => humantime::parse_rfc3339(r).unwrap() + busy.retention > now,
                    None => true,
                };
                if live {
                    assert!(
                        after.keys.iter().any(|a| a.kid == k.kid),
                        "fail_at {fail_at}: lost {}",
                        k.kid
                    );
                }
            }
            if result.is_ok() {
                assert!(
                    calls.load(Ordering::SeqCst) <= fail_at,
                    "no failure was injected at {fail_at}"
                );
                break;
            }
            // The next step repairs whatever was left half done: the files
            // of removed keys go; a key generated by the failed step, which
            // no manifest ever listed, is kept (no manifest said it may go).
            apply_policy_trusting(&plain, "c", spec, &busy, now, ClockTrust::Watched).unwrap();
            let after = manifest(&plain);
            for name in plain.key_files("c").unwrap() {
                let kid = name.trim_end_matches(".pem");
                let listed = after.keys.iter().any(|k| k.kid == kid);
                let known_before = before.keys.iter().any(|k| k.kid == kid);
                assert!(
                    listed || !known_before,
                    "fail_at {fail_at}: {name} was removed from the manifest but its file stayed"
                );
            }
            for kid in &after.removed {
                assert!(
                    !plain.key_path("c", kid).exists(),
                    "fail_at {fail_at}: removed key {kid} still has its file"
                );
            }
        }
    }

    /// A small deterministic generator (no extra crate for a test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn months_of_rotation_with_random_revokes_keep_every_invariant() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let max_lifetime = DAY;
        let p = policy();
        let spec = KeySpec::P256;
        let mut rng = Lcg(7);
        // kid -> (published, retired) as observed.
        let mut seen: HashMap<String, KeyRecord> = HashMap::new();
        let mut revoked: HashSet<String> = HashSet::new();
        // (kid, exp) of every token minted.
        let mut tokens: Vec<(String, SystemTime)> = Vec::new();
        let mut early_allowed = true; // first start
        let mut set: Option<KeySet> = None;
        let step = HOUR;
        let steps = 24 * 180; // six months, hourly
        for i in 0..steps {
            let now = t0() + step * i;
            match rng.next() % 500 {
                0 => {
                    // Revoke a random published key.
                    let m = manifest(&store);
                    let k = &m.keys[(rng.next() as usize) % m.keys.len()];
                    let was_current = k.state == KeyState::Current;
                    revoke(&store, "c", &k.kid, spec, now).unwrap();
                    revoked.insert(k.kid.clone());
                    early_allowed = was_current;
                }
                1 => {
                    let _ = rotate(&store, "c", spec, &p, now, false);
                }
                _ => {}
            }
            let records = store
                .read_manifest("c")
                .unwrap()
                .map(|m| m.keys)
                .unwrap_or_default();
            let due = next_due(&records, spec, &p);
            let transitions = apply_policy(&store, "c", spec, &p, now).unwrap();
            // The server skips clusters whose next_due is later: it must
            // never be later than the first change apply_policy makes.
            assert!(
                transitions.is_empty() || due <= now,
                "step {i}: next_due {due:?} missed {transitions:?}"
            );
            let m = manifest(&store);
            let loaded = store.load_set_reusing(&m, set.as_ref()).unwrap();

            // (b) a key signs only after publish_ahead, except the documented cases.
            for t in &transitions {
                if let Transition::Activated { kid, early } = t {
                    let rec = m.keys.iter().find(|k| &k.kid == kid).unwrap();
                    let published = humantime::parse_rfc3339(&rec.published).unwrap();
                    if *early {
                        assert!(
                            early_allowed,
                            "step {i}: early activation of {kid} with no reason"
                        );
                    } else if i > 0 {
                        // (At step 0 the cluster's first key signs at once:
                        // no JWKS of this cluster is cached anywhere yet.)
                        assert!(
                            published + p.publish_ahead <= now,
                            "step {i}: {kid} signs too early"
                        );
                    }
                }
            }
            early_allowed = false;

            // (c) at most 100 keys of a type.
            assert!(
                m.keys.len() <= MAX_KEYS_PER_TYPE,
                "step {i}: {} keys",
                m.keys.len()
            );

            // (d) a key leaves only after its retention (or by revoke).
            let listed = kids(&m);
            for (kid, rec) in &seen {
                if !listed.contains(kid.as_str()) && !revoked.contains(kid) {
                    let retired = humantime::parse_rfc3339(
                        rec.retired.as_deref().expect("only retired keys leave"),
                    )
                    .unwrap();
                    assert!(
                        retired + p.retention <= now,
                        "step {i}: {kid} deleted before its retention"
                    );
                }
            }
            seen.retain(|kid, _| listed.contains(kid.as_str()));
            for k in &m.keys {
                seen.insert(k.kid.clone(), k.clone());
            }

            // Mint a token with the current key, for as long as allowed.
            let signer = loaded.signer().kid().to_owned();
            tokens.push((signer, now + max_lifetime));

            // (a) every unexpired token's key is in the JWKS (unless revoked).
            tokens.retain(|(_, exp)| *exp > now);
            for (kid, _) in &tokens {
                if !revoked.contains(kid) {
                    assert!(
                        listed.contains(kid.as_str()),
                        "step {i}: live token's key {kid} is not published"
                    );
                }
            }
            set = Some(loaded);
        }
        assert!(seen.len() >= 2);
    }

    fn pem_files(store: &KeyStore) -> Vec<String> {
        store.key_files("c").unwrap()
    }

    #[test]
    fn a_lost_or_dangling_manifest_beside_key_files_changes_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        run(&store, spec, &p, t0(), t0() + 29 * DAY);
        let files = pem_files(&store);
        assert_eq!(files.len(), 2, "a current and a next key");
        let path = store.manifest_path("c");

        for dangling in [false, true] {
            let _ = std::fs::remove_file(&path);
            if dangling {
                std::os::unix::fs::symlink(dir.path().join("nowhere.json"), &path).unwrap();
            }
            let now = t0() + 29 * DAY + HOUR;
            let steps = [
                apply_policy(&store, "c", spec, &p, now).map(|_| ()),
                rotate(&store, "c", spec, &p, now, true).map(|_| ()),
                revoke(&store, "c", files[0].trim_end_matches(".pem"), spec, now).map(|_| ()),
            ];
            for step in steps {
                let err = step.unwrap_err().to_string();
                assert!(
                    err.contains("keys recover --cluster c")
                        && err.contains(&store.cluster_dir("c").display().to_string())
                        && err.contains(if dangling {
                            "symbolic link"
                        } else {
                            "is missing"
                        }),
                    "{err}"
                );
            }
            assert!(store.load("c", None).is_err());
            assert_eq!(pem_files(&store), files, "no key file was deleted or added");
            assert_eq!(std::fs::symlink_metadata(&path).is_ok(), dangling);
        }
    }

    #[test]
    fn an_older_manifest_put_back_deletes_no_key_it_does_not_list_as_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let old = std::fs::read(store.manifest_path("c")).unwrap();
        run(&store, spec, &p, t0(), t0() + 29 * DAY);
        let next = kid_in(&store, KeyState::Next).unwrap();
        // A backup from before the next key was published is restored.
        std::fs::write(store.manifest_path("c"), old).unwrap();
        apply_policy(&store, "c", spec, &p, t0() + 29 * DAY + HOUR).unwrap();
        assert!(
            store.key_path("c", &next).exists(),
            "the published next key's file was deleted because the restored manifest did not list it"
        );
    }

    #[test]
    fn recover_rebuilds_a_lost_manifest_keeping_every_kid() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        let now = t0() + 30 * DAY + HOUR;
        assert!(recover(&store, "c", spec, None, now)
            .unwrap_err()
            .to_string()
            .contains("nothing to recover"));
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        run(&store, spec, &p, t0(), t0() + 30 * DAY);
        let before = manifest(&store);
        let signing = kid_in(&store, KeyState::Current).unwrap();
        assert!(recover(&store, "c", spec, None, now)
            .unwrap_err()
            .to_string()
            .contains("only rebuilds a missing one"));

        std::fs::remove_file(store.manifest_path("c")).unwrap();
        let err = recover(&store, "c", spec, Some("nope"), now).unwrap_err();
        assert!(matches!(err, RotationError::UnknownKid { .. }), "{err}");
        let t = recover(&store, "c", spec, Some(&signing), now).unwrap();
        assert_eq!(t.len(), before.keys.len());
        let after = manifest(&store);
        assert_eq!(kids(&after), kids(&before), "every kid is kept");
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), signing);
        for k in after.keys.iter().filter(|k| k.kid != signing) {
            assert_eq!(k.state, KeyState::Retired);
            assert_eq!(k.retired.as_deref(), Some(rfc3339(now).as_str()));
        }
        let set = store.load("c", None).unwrap().unwrap();
        assert_eq!(set.signer().kid(), signing);
        // The other keys stay published for a whole retention from now.
        let t = run(&store, spec, &p, now, now + p.retention - HOUR);
        assert!(
            !t.iter().any(|x| matches!(x, Transition::Deleted { .. })),
            "{t:?}"
        );
    }

    #[test]
    fn a_clock_far_ahead_of_the_manifest_deletes_no_key_within_real_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        let real = t0() + 30 * DAY + 2 * HOUR;
        run(&store, spec, &p, t0(), real);
        assert_eq!(
            manifest(&store)
                .keys
                .iter()
                .find(|k| k.kid == first)
                .unwrap()
                .state,
            KeyState::Retired
        );
        // A running server keeps vouching for its clock.
        let checked =
            humantime::parse_rfc3339(manifest(&store).checked.as_deref().unwrap()).unwrap();
        assert!(checked + p.retention / 4 + HOUR >= real, "{checked:?}");

        // One replica's clock jumps 40 days ahead: every step it takes keeps
        // the retired key, although by its clock the retention is long over.
        let jumped = real + 40 * DAY;
        for step in 0..3 {
            let t = apply_policy(&store, "c", spec, &p, jumped + step * HOUR).unwrap();
            assert!(
                t.iter()
                    .any(|x| matches!(x, Transition::Withheld { kid, .. } if *kid == first)),
                "step {step}: {t:?}"
            );
            assert!(store.key_path("c", &first).exists());
        }
        let m = manifest(&store);
        assert_eq!(
            m.checked.as_deref(),
            Some(rfc3339(checked).as_str()),
            "the jumped clock vouched"
        );

        // The replicas with a good clock delete it when its retention ends.
        assert!(run(&store, spec, &p, real, real + HOUR)
            .iter()
            .all(|x| !matches!(x, Transition::Deleted { .. })));
        let t = run(&store, spec, &p, real + HOUR, t0() + 30 * DAY + p.retention);
        assert!(t.contains(&Transition::Deleted { kid: first }), "{t:?}");
    }

    fn noop_managed(p: RotationPolicy) -> Managed {
        Managed {
            cluster: "c".into(),
            spec: KeySpec::P256,
            policy: p,
            publish: Box::new(|_| {}),
        }
    }

    #[test]
    fn a_clock_ahead_is_trusted_after_this_process_watched_it_for_a_retention_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        run(&store, spec, &p, t0(), t0() + 30 * DAY + 2 * HOUR);
        let managed = [noop_managed(p)];
        let reload = |tracked: &mut [Tracked]| {
            tracked[0].set = Arc::new(store.load("c", None).unwrap().unwrap());
        };
        let mut tracked = vec![Tracked {
            set: Arc::new(store.load("c", None).unwrap().unwrap()),
            withheld_since: None,
        }];
        let jumped = t0() + 70 * DAY;
        let i0 = Instant::now();
        for (wall, mono) in [(jumped, i0), (jumped + HOUR, i0 + HOUR)] {
            assert!(apply_due(&store, &managed, &mut tracked, wall, mono).is_empty());
            reload(&mut tracked);
            assert!(store.key_path("c", &first).exists());
        }
        // Another replica vouches for a (good) time meanwhile: watching
        // starts over.
        let before = manifest(&store).checked;
        apply_policy(&store, "c", spec, &p, t0() + 30 * DAY + 9 * HOUR).unwrap();
        let vouched = manifest(&store).checked;
        assert_ne!(before, vouched);
        reload(&mut tracked);
        let later = i0 + p.retention + HOUR;
        apply_due(&store, &managed, &mut tracked, jumped + p.retention, later);
        reload(&mut tracked);
        assert!(
            store.key_path("c", &first).exists(),
            "watching did not start over"
        );
        assert_eq!(manifest(&store).checked, vouched);
        // Alone for a whole retention of monotonic time: the keys go.
        apply_due(
            &store,
            &managed,
            &mut tracked,
            jumped + 2 * p.retention,
            later + p.retention,
        );
        assert!(!store.key_path("c", &first).exists());
        assert!(tracked[0].withheld_since.is_none());
    }

    #[test]
    fn a_failing_rotation_step_is_reported_per_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let plain = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&plain, "c", spec, &p, t0()).unwrap();
        let full = KeyStore::new(dir.path())
            .with_hook(Arc::new(|_| Err(std::io::Error::from_raw_os_error(28))));
        let mut tracked = vec![Tracked {
            set: Arc::new(plain.load("c", None).unwrap().unwrap()),
            withheld_since: None,
        }];
        // Due: the next key is to be published.
        let failing = apply_due(
            &full,
            &[noop_managed(p)],
            &mut tracked,
            t0() + 29 * DAY,
            Instant::now(),
        );
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, "c");
        assert!(
            failing[0].1.contains("No space left on device"),
            "{failing:?}"
        );
    }

    #[test]
    fn a_forced_reload_rereads_what_the_stamps_would_skip() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let old = manifest(&store);
        rotate(&store, "c", spec, &p, t0() + HOUR, true).unwrap();
        // Pretend the change slipped past the stamps: the set in memory is
        // the old one, but carries the new manifest's stamp.
        let stale = store
            .load_set(&old)
            .unwrap()
            .restamped(store.stamp("c").unwrap());
        let old_signer = stale.signer().kid().to_owned();
        let published = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = published.clone();
        let managed = [Managed {
            publish: Box::new(move |set: Arc<KeySet>| {
                sink.lock().unwrap().push(set.signer().kid().to_owned())
            }),
            ..noop_managed(p)
        }];
        let mut tracked = vec![Tracked {
            set: Arc::new(stale),
            withheld_since: None,
        }];
        let status = ReloadStatus::default();
        let signing = kid_in(&store, KeyState::Current).unwrap();
        assert_ne!(signing, old_signer);
        reload(&store, &managed, &mut tracked, &status, true);
        assert_eq!(*published.lock().unwrap(), vec![signing]);
    }
}
