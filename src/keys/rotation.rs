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
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::material::KeySpec;
use super::store::{
    rfc3339, KeyRecord, KeySet, KeyState, KeyStore, Manifest, StoreError, StoreLock,
};
use crate::health::ReloadStatus;

/// AWS accepts at most 100 RSA and 100 EC keys in one JWKS (spire#4699).
pub const MAX_KEYS_PER_TYPE: usize = 100;

/// How one cluster's keys rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over.
    pub rotate_every: Duration,
    /// How long the next key is published before it may sign: at least the
    /// JWKS max-age, so every relying party's cache has it first.
    pub publish_ahead: Duration,
    /// How long a retired key stays published: at least the longest token it
    /// may have signed + the JWKS max-age + clock skew.
    pub retention: Duration,
}

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

/// A change being prepared under the lock.
struct Change<'a> {
    store: &'a KeyStore,
    lock: &'a StoreLock,
    manifest: Manifest,
    transitions: Vec<Transition>,
    /// Key files to remove once the manifest no longer lists them.
    remove: Vec<String>,
    now: SystemTime,
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

    fn drop_key(&mut self, i: usize) -> KeyRecord {
        let rec = self.manifest.keys.remove(i);
        self.remove.push(rec.kid.clone());
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

    /// Writes the manifest if anything changed, then removes dropped files.
    fn commit(self) -> Result<Vec<Transition>, RotationError> {
        if self.transitions.is_empty() {
            return Ok(self.transitions);
        }
        self.store.write_manifest(self.lock, &self.manifest)?;
        for kid in &self.remove {
            self.store
                .remove_key_file(self.lock, &self.manifest.cluster, kid)?;
        }
        Ok(self.transitions)
    }
}

/// Applies `policy` to `cluster` at `now`: one step that lands in a valid
/// state however long the server was down.
///
/// - retired keys past their retention are deleted;
/// - an unused next key of another type than `spec` is replaced;
/// - with no signing key (first start, after a revoke), one is made to sign at once;
/// - the next key is generated `publish_ahead` before the current key is due;
/// - the current key is replaced when it is due *and* the next key has been
///   published for `publish_ahead`; until then it keeps signing.
pub fn apply_policy(
    store: &KeyStore,
    cluster: &str,
    spec: KeySpec,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;

    // Retired keys past retention leave the JWKS.
    let mut i = 0;
    while i < change.manifest.keys.len() {
        let rec = &change.manifest.keys[i];
        let expired = match (rec.state, times(cluster, rec)?.retired) {
            (KeyState::Retired, Some(at)) => at + policy.retention <= now,
            _ => false,
        };
        if expired {
            let rec = change.drop_key(i);
            change
                .transitions
                .push(Transition::Deleted { kid: rec.kid });
        } else {
            i += 1;
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

    let transitions = change.commit()?;
    store.remove_orphans(&lock, cluster)?;
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
        change.commit()?;
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
    let transitions = change.commit()?;
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
    change.commit()
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
        | Transition::Revoked { kid } => kid,
    }
}

/// Applies the policies of the managed clusters that have something due
/// (judged from the key sets in memory, which follow the disk). Blocking: run
/// it off the async workers.
pub fn apply_due(store: &KeyStore, managed: &[Managed], loaded: &[Arc<KeySet>], now: SystemTime) {
    for (m, set) in managed.iter().zip(loaded) {
        let records: Vec<KeyRecord> = set.keys().iter().map(|k| k.record.clone()).collect();
        if next_due(&records, m.spec, &m.policy) > now {
            continue;
        }
        match apply_policy(store, &m.cluster, m.spec, &m.policy, now) {
            Ok(t) => log_transitions(&m.cluster, &t),
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "applying the rotation policy failed")
            }
        }
    }
}

/// What the background thread is told.
enum Signal {
    Reload,
    Stop,
}

/// The background thread: applies the policies every `interval` (when this
/// replica rotates) and re-reads changed manifests every `reload_interval`,
/// publishing each new key set. A manifest that cannot be read or loaded is
/// logged and the last good key set keeps serving.
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
    /// the server loaded it, in the order of `managed`.
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

    /// Re-reads every manifest now (SIGHUP).
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
    use std::time::Instant;

    let mut state: Vec<(Option<super::store::Stamp>, Arc<KeySet>)> = managed
        .iter()
        .zip(loaded)
        .map(|(m, set)| (store.stamp(&m.cluster).ok().flatten(), set))
        .collect();
    let mut next_apply = Instant::now() + settings.interval;
    let mut next_reload = Instant::now() + settings.reload_interval;
    loop {
        let wake = if settings.rotate {
            next_apply.min(next_reload)
        } else {
            next_reload
        };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Signal::Reload) => {}
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if settings.rotate && now >= next_apply {
            let sets: Vec<Arc<KeySet>> = state.iter().map(|(_, set)| set.clone()).collect();
            apply_due(&store, &managed, &sets, SystemTime::now());
            next_apply = now + settings.interval;
        }
        reload_changed(&store, &managed, &mut state, &status);
        next_reload = Instant::now() + settings.reload_interval;
    }
}

fn reload_changed(
    store: &KeyStore,
    managed: &[Managed],
    state: &mut [(Option<super::store::Stamp>, Arc<KeySet>)],
    status: &ReloadStatus,
) {
    let mut failing = Vec::new();
    for (m, (stamp, set)) in managed.iter().zip(state.iter_mut()) {
        let result = (|| {
            let fresh = store.stamp(&m.cluster)?;
            if fresh == *stamp {
                return Ok(None);
            }
            let manifest =
                store
                    .read_manifest(&m.cluster)?
                    .ok_or_else(|| StoreError::Manifest {
                        path: store.manifest_path(&m.cluster),
                        reason: "the manifest is gone".into(),
                    })?;
            let new_set = store.load_set_reusing(&manifest, Some(set))?;
            Ok::<_, StoreError>(Some((fresh, new_set)))
        })();
        match result {
            Ok(None) => {}
            Ok(Some((fresh, new_set))) => {
                let new_set = Arc::new(new_set);
                tracing::info!(
                    cluster = m.cluster,
                    signing = new_set.signer().kid(),
                    published = new_set.keys().len(),
                    "key set reloaded"
                );
                (m.publish)(new_set.clone());
                *stamp = fresh;
                *set = new_set;
            }
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "cannot reload the key set; the last good one keeps serving");
                failing.push((m.cluster.clone(), e.to_string()));
            }
        }
    }
    if failing.is_empty() {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        status
            .last_good
            .store(secs, std::sync::atomic::Ordering::Relaxed);
    }
    if let Ok(mut f) = status.failing.lock() {
        *f = failing;
    }
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
        assert!(apply_policy(&store, "c", spec, &p, t0() + 28 * DAY)
            .unwrap()
            .is_empty());
        let t = apply_policy(&store, "c", spec, &p, t0() + 29 * DAY).unwrap();
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

        let t = apply_policy(&store, "c", spec, &p, t0() + 30 * DAY).unwrap();
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
        assert!(apply_policy(&store, "c", spec, &p, t0() + 30 * DAY + DAY)
            .unwrap()
            .is_empty());
        assert!(states(&store)
            .iter()
            .any(|(k, s)| *k == first && *s == KeyState::Retired));
        let t = apply_policy(&store, "c", spec, &p, t0() + 30 * DAY + p.retention).unwrap();
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

        // The retired first key leaves once its retention is over; the next
        // key is published ahead of the following rotation.
        let t = apply_policy(&store, "c", spec, &p, back + 30 * DAY).unwrap();
        assert!(
            t.contains(&Transition::Deleted { kid: first.clone() }),
            "{t:?}"
        );
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
            let result = apply_policy(&failing, "c", spec, &busy, now);

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
            // The next step repairs whatever was left half done.
            apply_policy(&plain, "c", spec, &busy, now).unwrap();
            let names: Vec<String> = std::fs::read_dir(plain.cluster_dir("c"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let listed = manifest(&plain).keys.len();
            assert_eq!(
                names.iter().filter(|n| n.ends_with(".pem")).count(),
                listed,
                "fail_at {fail_at}: {names:?}"
            );
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
}
