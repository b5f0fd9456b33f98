//! The steps that apply the rotation policy to one cluster's keys on disk:
//! the automatic step, and the manual `keys rotate`, `revoke` and `recover`.
//!
//! Every change happens under the keys dir's exclusive lock and starts by
//! re-reading the manifest, so replicas sharing a volume and the CLI never
//! apply one step twice. Writes are ordered so that a crash at any point leaves
//! a loadable store: new key files first, then the manifest (one atomic rename,
//! the commit point), then the removal of the files of the keys it dropped.
//!
//! Drives `keys::store` with `keys::policy`'s decisions; reads no clock (the
//! time is passed in) and imports nothing above `keys`.

use std::time::{Duration, SystemTime};

use super::material::KeySpec;
use super::policy::{
    clock_ahead, heartbeat_due, index_of, kid_of, kty, spec_of, times, ClockTrust, RotationError,
    RotationPolicy, Source, Transition, MAX_KEYS_PER_TYPE,
};
use super::store::{rfc3339, KeyRecord, KeyState, KeyStore, Manifest, StoreError, StoreLock};

/// A change being prepared under the lock (`keys::manual` makes its own).
pub(super) struct Change<'a> {
    pub(super) store: &'a KeyStore,
    pub(super) lock: &'a StoreLock,
    pub(super) manifest: Manifest,
    pub(super) transitions: Vec<Transition>,
    /// Key files to remove once the manifest no longer lists them.
    remove: Vec<String>,
    pub(super) now: SystemTime,
    /// Whether this step's clock may be written as the manifest's `checked`.
    pub(super) vouch: bool,
}

impl<'a> Change<'a> {
    pub(super) fn begin(
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

    pub(super) fn cluster(&self) -> &str {
        &self.manifest.cluster
    }

    /// The index of key `kid`, or an error listing the kids there are.
    pub(super) fn find(&self, kid: &str) -> Result<usize, RotationError> {
        self.manifest
            .keys
            .iter()
            .position(|k| k.kid == kid)
            .ok_or_else(|| {
                let known: Vec<&str> = self.manifest.keys.iter().map(|k| k.kid.as_str()).collect();
                RotationError::UnknownKid {
                    cluster: self.cluster().to_owned(),
                    kid: kid.to_owned(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                }
            })
    }

    /// Generates a key file and lists it in `state`.
    fn generate(&mut self, spec: KeySpec, state: KeyState) -> Result<usize, RotationError> {
        self.room_for(spec)?;
        let key = self
            .store
            .generate_key(self.lock, &self.manifest.cluster, spec)?;
        let at = rfc3339(self.now);
        let alg = key.algorithm();
        let record = KeyRecord::generated(key.kid(), alg.as_str(), key.bits(), state, &at);
        self.manifest.keys.push(record);
        self.transitions.push(Transition::Generated {
            kid: key.kid().to_owned(),
            alg: key.algorithm().as_str().to_owned(),
            state,
        });
        Ok(self.manifest.keys.len() - 1)
    }

    /// Refuses one more key of `spec`'s type past what AWS accepts.
    pub(super) fn room_for(&self, spec: KeySpec) -> Result<(), RotationError> {
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
        Ok(())
    }

    /// Makes key `i` current, retiring the current one.
    pub(super) fn activate(&mut self, i: usize, early: bool) {
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
    pub(super) fn drop_key(&mut self, i: usize) -> KeyRecord {
        let rec = self.manifest.keys.remove(i);
        self.remove.push(rec.kid.clone());
        if !self.manifest.removed.contains(&rec.kid) {
            self.manifest.removed.push(rec.kid.clone());
        }
        rec
    }

    /// Makes sure some key signs: the next key if there is one (early when
    /// it has been published for less than `publish_ahead`), or a new key
    /// (first start, or after the signing key was revoked with no next key).
    fn ensure_current(
        &mut self,
        spec: KeySpec,
        publish_ahead: Duration,
    ) -> Result<(), RotationError> {
        if index_of(&self.manifest, KeyState::Current).is_some() {
            return Ok(());
        }
        match index_of(&self.manifest, KeyState::Next) {
            Some(n) => {
                let published = times(self.cluster(), &self.manifest.keys[n])?.published;
                self.activate(n, published + publish_ahead > self.now);
            }
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

    /// Makes sure a standby key is published: every cluster whose keys are
    /// generated here keeps a next key in its JWKS at all times, so that the
    /// current key can be replaced at any moment (`keys rotate`, `keys
    /// revoke`) by a key every cached JWKS already holds.
    ///
    /// A standby never blocks the step it belongs to: when the cluster
    /// already publishes as many keys of the type as AWS accepts (only
    /// forced rotations get there), the step goes on without one and a later
    /// step publishes it once retired keys have left.
    fn ensure_standby(&mut self, spec: KeySpec) -> Result<(), RotationError> {
        if index_of(&self.manifest, KeyState::Next).is_some() {
            return Ok(());
        }
        match self.generate(spec, KeyState::Next) {
            Ok(_) => Ok(()),
            Err(e @ RotationError::TooManyKeys { .. }) => {
                tracing::warn!(
                    cluster = self.cluster(),
                    "no standby key published for now: {e}"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Drops a next key of another type than `spec`: it never signed, so
    /// it may go at any time, and the standby that replaces it brings in
    /// the configured type (RS256 -> ES256 and back).
    fn discard_other_type(&mut self, spec: KeySpec) {
        if let Some(n) = index_of(&self.manifest, KeyState::Next) {
            if spec_of(&self.manifest.keys[n]) != Some(spec) {
                let rec = self.drop_key(n);
                self.transitions
                    .push(Transition::Discarded { kid: rec.kid });
            }
        }
    }

    /// Drops the retired keys past their retention from the JWKS, unless
    /// the clock reads `ahead` of what the manifest vouches for.
    pub(super) fn expire_retired(
        &mut self,
        policy: &RotationPolicy,
        ahead: Option<Duration>,
    ) -> Result<(), RotationError> {
        let mut i = 0;
        while i < self.manifest.keys.len() {
            let rec = &self.manifest.keys[i];
            let expired = match (rec.state, times(self.cluster(), rec)?.retired) {
                (KeyState::Retired, Some(at)) => at + policy.retention <= self.now,
                _ => false,
            };
            match (expired, ahead) {
                (true, None) => {
                    let rec = self.drop_key(i);
                    self.transitions.push(Transition::Deleted { kid: rec.kid });
                }
                (true, Some(ahead)) => {
                    let kid = rec.kid.clone();
                    self.transitions.push(Transition::Withheld {
                        kid,
                        ahead_secs: ahead.as_secs(),
                    });
                    i += 1;
                }
                (false, _) => i += 1,
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
    pub(super) fn commit(mut self, heartbeat: bool) -> Result<Vec<Transition>, RotationError> {
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
/// - the current key is replaced when it is due *and* the next key has been
///   published for `publish_ahead`; until then it keeps signing;
/// - a next key (the standby) is always published: from the first start,
///   and again in the step that promotes the one before;
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

    change.expire_retired(policy, ahead)?;
    change.discard_other_type(spec);
    change.ensure_current(spec, policy.publish_ahead)?;

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

    change.ensure_standby(spec)?;

    let heartbeat = heartbeat_due(change.manifest.checked.as_deref(), policy) <= now;
    let transitions = change.commit(heartbeat)?;
    tidy(store, &lock, cluster)?;
    Ok(transitions)
}

/// Removes what a crash left half done, and warns of key files no manifest
/// lists (they are kept).
pub(super) fn tidy(store: &KeyStore, lock: &StoreLock, cluster: &str) -> Result<(), RotationError> {
    let leftovers = store.remove_leftovers(lock, cluster)?;
    for path in &leftovers.unlisted {
        tracing::warn!(
            cluster,
            path = %path.display(),
            "a key file the manifest does not list is kept: no manifest marked it for removal \
             (a step that failed before writing the manifest leaves one; delete it by hand \
             once you know it never signed)"
        );
    }
    Ok(())
}

/// `keys rotate`: the next key (the standby) takes over now, and a new
/// standby is published in the same step. Refused while the next key has been
/// published for less than `publish_ahead`, unless `force`. Without a next
/// key (a store from before standby keys, or one of another type, which is
/// replaced), one is published now (and, with `force`, signs at once).
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
    change.discard_other_type(spec);
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
                "published a new next key {kid} (the cluster had no standby key of the \
                 configured type); it can sign from {} (publish_ahead {}): {why}. \
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
    change.ensure_standby(spec)?;
    change.commit(false)
}

/// `keys revoke`: removes a key from the JWKS at once (a compromised key) and
/// deletes its file. If it was signing, the next key takes over at once, or a
/// new key is made to sign; a generated cluster then gets a new standby in
/// the same step (also when the key revoked was the standby).
/// The policy's `publish_ahead` only tells whether the key taking over
/// signs early (logged as a warning).
///
/// For imported keys (a `publish_only` cluster) nothing is generated: the
/// current key is revoked only when a next key can take over at once;
/// otherwise the replacement must be imported first.
pub fn revoke(
    store: &KeyStore,
    cluster: &str,
    kid: &str,
    source: impl Into<Source>,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<Vec<Transition>, RotationError> {
    let source: Source = source.into();
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    let i = change.find(kid)?;
    let signing = change.manifest.keys[i].state == KeyState::Current;
    if let (Source::Imported, true) = (source, signing) {
        match index_of(&change.manifest, KeyState::Next) {
            Some(n) => {
                let published = times(cluster, &change.manifest.keys[n])?.published;
                change.activate(n, published + policy.publish_ahead > now);
            }
            None => {
                return Err(RotationError::Refused(format!(
                "refused: key {kid} is the current key of cluster \"{cluster}\", whose keys are \
                     imported, and no next key is imported to take over: nothing was changed. \
                     Import the key the cluster signs with now (`keys import --cluster {cluster} \
                     --public-key NEW.pub --state current --force`), then revoke {kid}"
            )))
            }
        }
    }
    let i = change.find(kid)?;
    let rec = change.drop_key(i);
    change
        .transitions
        .push(Transition::Revoked { kid: rec.kid });
    if let Source::Generated(spec) = source {
        change.ensure_current(spec, policy.publish_ahead)?;
        change.ensure_standby(spec)?;
    }
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
        let (key, _) = store.load_key(cluster, kid, false)?;
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
                    .filter(|(_, (k, _))| !of_spec || k.public().spec() == spec)
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
            bits: key.public().bits(),
            state,
            created: made.clone(),
            published: made,
            activated: Some(at.clone()),
            retired: (state == KeyState::Retired).then(|| at.clone()),
            imported: key.is_imported(),
        });
        transitions.push(Transition::Recovered {
            kid: key.kid().to_owned(),
            state,
        });
    }
    store.write_manifest(&lock, &manifest)?;
    Ok(transitions)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::policy::{kids, next_due};
    use crate::keys::store::KeySet;
    use crate::keys::testkit::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The kid of the next key, which must be of `alg`.
    fn standby(store: &KeyStore, alg: &str) -> String {
        let m = manifest(store);
        let next: Vec<&KeyRecord> = m
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Next)
            .collect();
        assert_eq!(next.len(), 1, "exactly one standby key: {m:?}");
        assert_eq!(next[0].alg, alg);
        next[0].kid.clone()
    }

    #[test]
    fn a_key_lives_next_current_retired_deleted_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let spec = KeySpec::P256;

        let t = apply_policy(&store, "c", spec, &p, t0()).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Generated {
                        state: KeyState::Current,
                        ..
                    },
                    Transition::Activated { early: false, .. },
                    Transition::Generated {
                        state: KeyState::Next,
                        ..
                    }
                ]
            ),
            "first start signs at once, and not early (no JWKS of it is cached anywhere), \
             and publishes the standby key at once: {t:?}"
        );
        let first = kid_in(&store, KeyState::Current).unwrap();
        let second = standby(&store, "ES256");

        // Nothing to do until the current key is due: the standby is there.
        assert!(run(&store, spec, &p, t0(), t0() + 29 * DAY).is_empty());
        let t = run(&store, spec, &p, t0() + 29 * DAY, t0() + 30 * DAY);
        let [Transition::Retired { kid: retired }, Transition::Activated {
            kid: activated,
            early: false,
        }, Transition::Generated {
            kid: third,
            state: KeyState::Next,
            ..
        }] = &t[..]
        else {
            panic!("the standby takes over and a new one is published in one step: {t:?}");
        };
        assert_eq!((retired, activated), (&first, &second));
        assert_eq!(standby(&store, "ES256"), *third);
        assert_eq!(store.load("c", None).unwrap().unwrap().keys().len(), 3);

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
    fn a_store_without_a_standby_gets_one_at_the_next_step() {
        // A store written before every cluster kept a standby key.
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        drop_standby(&store);
        let records = manifest(&store).keys;
        assert_eq!(next_due(&records, spec, &p), SystemTime::UNIX_EPOCH);
        let t = apply_policy(&store, "c", spec, &p, t0() + HOUR).unwrap();
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
        let records = manifest(&store).keys;
        assert_eq!(next_due(&records, spec, &p), t0() + 30 * DAY);
    }

    #[test]
    fn after_long_downtime_one_step_lands_in_a_valid_state_without_signing_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        // A store from before standby keys: no next key.
        drop_standby(&store);

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
        let waiting = standby(&store, "ES256");

        // The retired first key is past its retention, but this clock is
        // 130 days past the last time the manifest vouched for: it could
        // have jumped, so the key is kept. The standby stays as it is.
        let t = apply_policy(&store, "c", spec, &p, back + 30 * DAY).unwrap();
        assert!(
            matches!(&t[..], [Transition::Withheld { kid, .. }] if *kid == first),
            "{t:?}"
        );
        assert!(manifest(&store).keys.iter().any(|k| k.kid == first));
        assert_eq!(standby(&store, "ES256"), waiting);
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
        // Down again for 200 days: the standby was published long ago, so
        // the overdue current key hands over in one step, not early, and a
        // new standby is published.
        let t = apply_policy(&store, "c", spec, &p, back + 230 * DAY).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Retired { .. },
                    Transition::Activated { early: false, kid },
                    Transition::Generated { state: KeyState::Next, .. }
                ] if *kid == waiting
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
        assert_ne!(standby(&store, "ES256"), waiting);
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
        let next = standby(&store, "ES256");

        // The standby has been published since the first start.
        let before = manifest(&store);
        let err = rotate(&store, "c", spec, &p, t0() + HOUR, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "refused: next key {next} has been published for 1h, less than publish_ahead (1day)"
            )) && err.contains("2026-01-02T00:00:00Z")
                && err.contains("--force"),
            "{err}"
        );
        assert_eq!(manifest(&store), before, "a refusal changes nothing");

        // Once it has been published for publish_ahead, it takes over (at
        // any time, not only when the current key is due), and a new standby
        // is published in the same step.
        let t = rotate(&store, "c", spec, &p, t0() + DAY, false).unwrap();
        let [Transition::Retired { kid: retired }, Transition::Activated {
            kid: activated,
            early: false,
        }, Transition::Generated {
            kid: third,
            state: KeyState::Next,
            ..
        }] = &t[..]
        else {
            panic!("{t:?}");
        };
        assert_eq!((retired, activated), (&first, &next));
        assert_eq!(standby(&store, "ES256"), *third);

        // The new standby is as young as the rotation: refused again...
        let err = rotate(&store, "c", spec, &p, t0() + DAY + HOUR, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "refused: next key {third} has been published for 1h"
            )),
            "{err}"
        );
        // ...unless forced, which signs early and publishes yet another.
        let t = rotate(&store, "c", spec, &p, t0() + DAY + 2 * HOUR, true).unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: third.clone(),
                early: true
            }),
            "{t:?}"
        );
        assert_ne!(standby(&store, "ES256"), *third);

        // A store without a standby (written before they were kept) gets one
        // from a refused rotation, whose clock starts then.
        drop_standby(&store);
        let err = rotate(&store, "c", spec, &p, t0() + 2 * DAY, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("published a new next key")
                && err.contains("no standby key of the configured type"),
            "{err}"
        );
        standby(&store, "ES256");
    }

    #[test]
    fn revoking_the_signing_key_hands_over_at_once_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let (cur, next) = (
            kid_in(&store, KeyState::Current).unwrap(),
            standby(&store, "ES256"),
        );

        // The standby, published for long, takes over: not early, and a new
        // standby is published in the same step.
        let t = revoke(&store, "c", &cur, spec, &p, t0() + 10 * DAY).unwrap();
        assert_eq!(t[0], Transition::Revoked { kid: cur.clone() });
        assert_eq!(
            t[1],
            Transition::Activated {
                kid: next.clone(),
                early: false
            }
        );
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), next);
        assert!(!store.key_path("c", &cur).exists());
        let second = standby(&store, "ES256");

        // Revoking the standby replaces it.
        let t = revoke(&store, "c", &second, spec, &p, t0() + 10 * DAY + HOUR).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Revoked { .. },
                    Transition::Generated {
                        state: KeyState::Next,
                        ..
                    }
                ]
            ),
            "{t:?}"
        );
        let third = standby(&store, "ES256");
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), next);

        // A standby younger than publish_ahead takes over early (logged).
        let t = revoke(&store, "c", &next, spec, &p, t0() + 10 * DAY + 2 * HOUR).unwrap();
        assert_eq!(
            t[1],
            Transition::Activated {
                kid: third.clone(),
                early: true
            }
        );

        // With no next key (a store from before standby keys), a new key
        // signs at once, and a standby is published beside it.
        drop_standby(&store);
        let t = revoke(&store, "c", &third, spec, &p, t0() + 11 * DAY).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Revoked { .. },
                    Transition::Generated {
                        state: KeyState::Current,
                        ..
                    },
                    Transition::Activated { early: true, .. },
                    Transition::Generated {
                        state: KeyState::Next,
                        ..
                    }
                ]
            ),
            "{t:?}"
        );
        assert_eq!(manifest(&store).keys.len(), 2);

        let err = revoke(&store, "c", "nope", spec, &p, t0())
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
        standby(&store, "RS256");
        // The operator switches the cluster to ES256: the unused RSA standby
        // is replaced by an EC one at once, which takes over on schedule once
        // it has been published for publish_ahead (here an hour after the
        // current key was due).
        let t = apply_policy(&store, "c", KeySpec::P256, &p, t0() + 29 * DAY + HOUR).unwrap();
        assert!(
            matches!(
                &t[..],
                [
                    Transition::Discarded { .. },
                    Transition::Generated {
                        state: KeyState::Next,
                        ..
                    }
                ]
            ),
            "{t:?}"
        );
        let ec = standby(&store, "ES256");
        assert!(
            apply_policy(&store, "c", KeySpec::P256, &p, t0() + 30 * DAY)
                .unwrap()
                .is_empty()
        );
        apply_policy(&store, "c", KeySpec::P256, &p, t0() + 30 * DAY + HOUR).unwrap();
        let set = store.load_set(&manifest(&store)).unwrap();
        assert_eq!(set.current().kid(), ec);
        let algs: Vec<&str> = set.algorithms().iter().map(|a| a.as_str()).collect();
        assert_eq!(
            algs,
            ["ES256", "RS256"],
            "the retired RSA key is still published"
        );
        standby(&store, "ES256");
        // And back, by a manual rotation: the EC standby makes way for an
        // RSA one, which signs once published for publish_ahead.
        let err = rotate(&store, "c", rsa, &p, t0() + 31 * DAY, false).unwrap_err();
        assert!(
            err.to_string().contains("published a new next key"),
            "{err}"
        );
        standby(&store, "RS256");
        rotate(&store, "c", rsa, &p, t0() + 32 * DAY + HOUR, false).unwrap();
        let set = store.load_set(&manifest(&store)).unwrap();
        assert_eq!(set.current().algorithm().as_str(), "RS256");
        standby(&store, "RS256");
    }

    /// The rotation policy of a one-cluster configuration, as validated.
    fn configured(settings: &str) -> Result<RotationPolicy, String> {
        let text = format!(
            "listen = \"127.0.0.1:8080\"\npublic_url = \"https://oidc.example.com\"\n\
             keys_dir = \"keys\"\n[[clusters]]\nid = \"c\"\n{settings}"
        );
        crate::config::Config::parse("test", &text, &Default::default())
            .map(|c| c.clusters[0].rotation)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_published_keys_never_exceed_the_bound_the_config_checks() {
        // The tightest policy the configuration accepts: with the standby,
        // the JWKS holds the current key, the next key and every key
        // retired within the retention, 2 + ceil(retention / rotate_every)
        // keys, which the configuration caps at 100 of a type.
        let err = configured("rotate_every = \"1d\"\nretention = \"98d 1h\"\n").unwrap_err();
        assert!(err.contains("publishes up to 101 keys"), "{err}");
        let p = configured("rotate_every = \"1d\"\nretention = \"97d 23h\"\n").unwrap();
        let bound = 2 + p.retention.as_secs().div_ceil(p.rotate_every.as_secs());
        assert_eq!(bound, MAX_KEYS_PER_TYPE as u64);
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let spec = KeySpec::P256;
        let mut most = 0;
        // Steps every 6 hours for 150 days: past the first deletions.
        let mut now = t0();
        while now <= t0() + 150 * DAY {
            apply_policy(&store, "c", spec, &p, now).unwrap();
            let m = manifest(&store);
            assert_eq!(
                m.keys.iter().filter(|k| k.state == KeyState::Next).count(),
                1,
                "a standby at all times"
            );
            most = most.max(m.keys.len());
            now += 6 * HOUR;
        }
        assert_eq!(most as u64, bound, "the bound is reached, never passed");
    }

    #[test]
    fn a_failure_between_any_two_writes_leaves_a_loadable_store_that_lost_no_live_key() {
        let spec = KeySpec::P256;
        // A step that writes a lot: deletes an expired retired key, promotes
        // the next key, and publishes a new standby.
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
            assert!(!set.current().kid().is_empty());
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
                    revoke(&store, "c", &k.kid, spec, &p, now).unwrap();
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
            // (e) a standby key at all times.
            assert_eq!(
                m.keys.iter().filter(|k| k.state == KeyState::Next).count(),
                1,
                "step {i}: {m:?}"
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
            let signer = loaded.current().kid().to_owned();
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
                revoke(
                    &store,
                    "c",
                    files[0].trim_end_matches(".pem"),
                    spec,
                    &p,
                    now,
                )
                .map(|_| ()),
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
        run(&store, spec, &p, t0(), t0() + 30 * DAY);
        let next = kid_in(&store, KeyState::Next).unwrap();
        // A backup from before the rotation published this standby is
        // restored (and its own rotation then runs again).
        std::fs::write(store.manifest_path("c"), old).unwrap();
        apply_policy(&store, "c", spec, &p, t0() + 30 * DAY + HOUR).unwrap();
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
        assert_eq!(set.current().kid(), signing);
        // The other keys stay published for a whole retention from now, and
        // the next step publishes a new standby.
        let t = run(&store, spec, &p, now, now + p.retention - HOUR);
        assert!(
            matches!(
                t.first(),
                Some(Transition::Generated {
                    state: KeyState::Next,
                    ..
                })
            ),
            "{t:?}"
        );
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
}
