//! The steps taken by hand for a cluster that signs its own tokens (a
//! `publish_only` cluster, whose kube-apiserver holds the private keys):
//! `keys import` of a public key, `keys retire`, and the one step the
//! background takes for such a cluster, retired keys leaving after their
//! retention.
//!
//! The timing rules are those of generated keys (REFERENCE §5): a key is
//! published `publish_ahead` before it may sign, and stays published for the
//! retention after it stops; only the moves are made by hand, since only the
//! operator knows when the cluster changes the key it signs with. Nothing
//! here generates a key. Built on `keys::steps`' [`Change`]: the same lock,
//! re-read and write order, so a crash leaves a loadable store and no
//! imported key file is deleted unless a manifest lists it as removed.

use std::time::{Duration, SystemTime};

use super::policy::{
    clock_ahead, heartbeat_due, index_of, times, ClockTrust, RotationError, RotationPolicy,
    Transition,
};
use super::public::PublicKey;
use super::steps::{tidy, Change};
use super::store::{
    io_err, rfc3339, KeyRecord, KeyState, KeyStore, StoreError, StoreLock, WritePoint, DIR_MODE,
    KEY_MODE,
};
use crate::fsutil::{ensure_dir, write_atomic};

fn show(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `keys import`: publishes a public key the cluster signs with (or will).
///
/// `state` defaults to `current` for a cluster's first key and `next`
/// after. A next key is published now and may take over once it has been
/// published for `publish_ahead` (`keys retire` of the current key). A key
/// imported as `current` beside a current key was never published, so
/// relying parties with a cached JWKS would not know it: refused unless
/// `force`. The key it replaces stays published, retired, for its retention.
pub fn import(
    store: &KeyStore,
    cluster: &str,
    key: &PublicKey,
    state: Option<KeyState>,
    policy: &RotationPolicy,
    now: SystemTime,
    force: bool,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    change.vouch = clock_ahead(&change.manifest, now, policy.retention).is_none();
    let kid = key.kid();
    if let Some(rec) = change.manifest.keys.iter().find(|k| k.kid == kid) {
        return Err(RotationError::Refused(format!(
            "refused: cluster \"{cluster}\" already publishes key {kid} (as {}, since {}): this \
             public key was imported before (a duplicate kid); nothing was changed",
            rec.state.as_str(),
            rec.published
        )));
    }
    change.room_for(key.spec())?;
    let current = index_of(&change.manifest, KeyState::Current);
    let state = state.unwrap_or(if current.is_some() {
        KeyState::Next
    } else {
        KeyState::Current
    });
    match (state, current) {
        (KeyState::Retired, _) => {
            return Err(RotationError::Refused(
                "a key is imported as \"next\" or \"current\"".into(),
            ))
        }
        (KeyState::Next, None) => {
            return Err(RotationError::Refused(format!(
                "refused: cluster \"{cluster}\" has no current key yet, so a next key would have \
                 nothing to take over from: import the key its kube-apiserver signs with now, \
                 with --state current"
            )))
        }
        (KeyState::Next, Some(_)) => {
            if let Some(n) = index_of(&change.manifest, KeyState::Next) {
                let next = &change.manifest.keys[n];
                return Err(RotationError::Refused(format!(
                    "refused: cluster \"{cluster}\" already has a next key {} (published {}); one \
                     key waits to sign at a time. Once the cluster signs with it, `keys retire \
                     --cluster {cluster} --kid CURRENT_KID` makes it current; if it will not be \
                     used, `keys retire --cluster {cluster} --kid {}` first",
                    next.kid, next.published, next.kid
                )));
            }
        }
        (KeyState::Current, Some(c)) if !force => {
            let old = &change.manifest.keys[c].kid;
            return Err(RotationError::Refused(format!(
                "refused: cluster \"{cluster}\" already has a current key {old}, and key {kid} \
                 has never been published: relying parties that cached the JWKS within the last \
                 publish_ahead ({}) would not know it, and tokens signed with it would fail \
                 there until they refetch. Import it with --state next, switch the cluster's \
                 kube-apiserver to it from {} on, then run `keys retire --cluster {cluster} \
                 --kid {old}`; or add --force if the cluster signs with it already. Either way \
                 {old} stays published, retired, for its retention ({}), so the tokens it signed \
                 keep verifying",
                show(policy.publish_ahead),
                rfc3339(now + policy.publish_ahead),
                show(policy.retention)
            )));
        }
        (KeyState::Current, _) => {}
    }

    // The key file first, then the manifest (the commit point).
    write_key_file(store, &lock, cluster, key)?;
    change.manifest.removed.retain(|r| r != kid);
    let at = rfc3339(now);
    let first = current.is_none();
    change.manifest.keys.push(KeyRecord {
        kid: kid.to_owned(),
        alg: key.algorithm().as_str().to_owned(),
        bits: key.bits(),
        // A key replacing a current one is listed as next, then activated.
        state: if first { state } else { KeyState::Next },
        created: at.clone(),
        published: at.clone(),
        activated: (first && state == KeyState::Current).then(|| at.clone()),
        retired: None,
        imported: true,
    });
    change.transitions.push(Transition::Imported {
        kid: kid.to_owned(),
        alg: key.algorithm().as_str().to_owned(),
        state,
    });
    if state == KeyState::Current && !first {
        let i = change.manifest.keys.len() - 1;
        change.activate(i, true);
    }
    change.commit(false)
}

/// Writes an imported public key's file, not yet listed in the manifest.
/// Call with the lock held. A file already there is never replaced: it may
/// hold the private key of the same kid.
fn write_key_file(
    store: &KeyStore,
    _lock: &StoreLock,
    cluster: &str,
    key: &PublicKey,
) -> Result<(), StoreError> {
    let dir = store.cluster_dir(cluster);
    ensure_dir(&dir, DIR_MODE).map_err(io_err(&dir))?;
    let path = store.key_path(cluster, key.kid());
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(StoreError::Manifest {
            path: store.manifest_path(cluster),
            reason: format!(
                "the manifest does not list key {}, but {} exists: nothing was changed; move \
                 that file away if it is not a key of this cluster",
                key.kid(),
                path.display()
            ),
        });
    }
    store.before(WritePoint::KeyFile, &path)?;
    store.touched(cluster);
    write_atomic(&path, key.to_pem().as_bytes(), KEY_MODE).map_err(io_err(&path))
}

/// `keys retire`: key `kid` stops being the key tokens are signed with, or
/// the next key that will not be used; it stays published, retired, for the
/// retention. Retiring the current key makes the next key current, which is
/// refused while the next key has been published for less than
/// `publish_ahead`, unless `force`.
pub fn retire(
    store: &KeyStore,
    cluster: &str,
    kid: &str,
    policy: &RotationPolicy,
    now: SystemTime,
    force: bool,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    change.vouch = clock_ahead(&change.manifest, now, policy.retention).is_none();
    let i = change.find(kid)?;
    let rec = &change.manifest.keys[i];
    match rec.state {
        KeyState::Retired => {
            let until = times(cluster, rec)?
                .retired
                .map(|r| format!(", until {}", rfc3339(r + policy.retention)))
                .unwrap_or_default();
            Err(RotationError::Refused(format!(
                "refused: key {kid} of cluster \"{cluster}\" is already retired; it stays \
                 published for its retention{until}"
            )))
        }
        KeyState::Next => {
            let rec = &mut change.manifest.keys[i];
            rec.state = KeyState::Retired;
            rec.retired = Some(rfc3339(now));
            change.transitions.push(Transition::Retired {
                kid: kid.to_owned(),
            });
            change.commit(false)
        }
        KeyState::Current => {
            let Some(n) = index_of(&change.manifest, KeyState::Next) else {
                let how = if rec.imported {
                    format!(
                        "import the key that replaces it first (`keys import --cluster {cluster} \
                         --public-key NEW.pub --state next`), and retire {kid} once the cluster \
                         signs with the new key"
                    )
                } else {
                    format!("run `keys rotate --cluster {cluster}`, which publishes a next key")
                };
                return Err(RotationError::Refused(format!(
                    "refused: key {kid} is the current key of cluster \"{cluster}\" and no next \
                     key is published to take over: nothing was changed. {how}"
                )));
            };
            let next = &change.manifest.keys[n];
            let published = times(cluster, next)?.published;
            let ready = published + policy.publish_ahead;
            if ready > now && !force {
                return Err(RotationError::Refused(format!(
                    "refused: next key {} has been published for {}, less than publish_ahead \
                     ({}): relying parties that cached the JWKS before it appeared may not know \
                     it yet, so tokens signed with it could fail to verify there. It can take \
                     over from {}; run `keys retire` again then, or add --force if the cluster \
                     signs with it already",
                    next.kid,
                    show(now.duration_since(published).unwrap_or_default()),
                    show(policy.publish_ahead),
                    rfc3339(ready)
                )));
            }
            change.activate(n, ready > now);
            change.commit(false)
        }
    }
}

/// The background step of a cluster whose keys are imported: retired keys
/// past their retention leave the JWKS (unless the clock looks to have
/// jumped, as in `steps::apply_policy`), and the manifest's `checked` is
/// renewed. Nothing is generated, activated or discarded.
pub fn apply_retention(
    store: &KeyStore,
    cluster: &str,
    policy: &RotationPolicy,
    now: SystemTime,
    trust: ClockTrust,
) -> Result<Vec<Transition>, RotationError> {
    let lock = store.lock()?;
    let mut change = Change::begin(store, &lock, cluster, now)?;
    if change.manifest.keys.is_empty() {
        // Nothing imported yet: no manifest is written for it.
        return Ok(Vec::new());
    }
    let ahead = match trust {
        ClockTrust::Check => clock_ahead(&change.manifest, now, policy.retention),
        ClockTrust::Watched => None,
    };
    change.vouch = ahead.is_none();
    change.expire_retired(policy, ahead)?;
    let heartbeat = heartbeat_due(change.manifest.checked.as_deref(), policy) <= now;
    let transitions = change.commit(heartbeat)?;
    tidy(store, &lock, cluster)?;
    Ok(transitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::material::{KeySpec, SigningKey};
    use crate::keys::policy::Source;
    use crate::keys::steps::{recover, revoke};
    use crate::keys::testkit::*;

    /// A public key as a cluster's `sa.pub` would be, from a key made here.
    fn public(spec: KeySpec) -> PublicKey {
        let (key, _) = SigningKey::generate(spec).unwrap();
        key.public().clone()
    }

    fn import_at(
        store: &KeyStore,
        key: &PublicKey,
        state: Option<KeyState>,
        now: SystemTime,
        force: bool,
    ) -> Result<Vec<Transition>, RotationError> {
        import(store, "c", key, state, &policy(), now, force)
    }

    /// Steps hourly after `from` up to `to`, as a running server does for
    /// a publish_only cluster, and returns every transition.
    fn serve(store: &KeyStore, from: SystemTime, to: SystemTime) -> Vec<Transition> {
        let mut all = Vec::new();
        let mut at = from;
        while at < to {
            at = (at + HOUR).min(to);
            all.extend(apply_retention(store, "c", &policy(), at, ClockTrust::Check).unwrap());
        }
        all
    }

    fn refused(r: Result<Vec<Transition>, RotationError>) -> String {
        match r {
            Err(RotationError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_first_import_is_current_and_publishes_the_public_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let key = public(KeySpec::Rsa { bits: 2048 });
        let t = import_at(&store, &key, None, t0(), false).unwrap();
        assert_eq!(
            t,
            [Transition::Imported {
                kid: key.kid().to_owned(),
                alg: "RS256".into(),
                state: KeyState::Current
            }]
        );
        let set = store.load("c", None).unwrap().unwrap();
        assert_eq!(set.current(), &key);
        assert!(set.signer().is_none(), "an imported key cannot sign");
        assert!(set.keys()[0].record.imported);
        let file = std::fs::read_to_string(store.key_path("c", key.kid())).unwrap();
        assert!(file.starts_with("-----BEGIN PUBLIC KEY-----"), "{file}");
        let jwks: serde_json::Value = serde_json::from_slice(&set.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], key.kid());
    }

    #[test]
    fn by_hand_rotation_keeps_publish_ahead_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let (old, new) = (public(KeySpec::P256), public(KeySpec::P256));
        import_at(&store, &old, None, t0(), false).unwrap();

        // A second key is next by default, and cannot take over before it
        // has been published for publish_ahead.
        let at = t0() + 10 * DAY;
        assert!(serve(&store, t0(), at).is_empty());
        let t = import_at(&store, &new, None, at, false).unwrap();
        assert!(
            matches!(
                &t[..],
                [Transition::Imported {
                    state: KeyState::Next,
                    ..
                }]
            ),
            "{t:?}"
        );
        let why = refused(retire(&store, "c", old.kid(), &p, at + HOUR, false));
        assert!(
            why.contains(&format!("next key {} has been published for 1h", new.kid()))
                && why.contains(&rfc3339(at + p.publish_ahead)),
            "{why}"
        );
        assert_eq!(kid_in(&store, KeyState::Current).unwrap(), old.kid());

        // Published long enough: retiring the old key makes the new one current.
        let swap = at + p.publish_ahead;
        assert!(serve(&store, at, swap).is_empty());
        let t = retire(&store, "c", old.kid(), &p, swap, false).unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: new.kid().to_owned(),
                early: false
            }),
            "{t:?}"
        );
        assert_eq!(kid_in(&store, KeyState::Retired).unwrap(), old.kid());

        // The old key stays published for the whole retention, then leaves;
        // the background never generates a key for the cluster.
        let end = swap + p.retention;
        let t = serve(&store, swap, end - Duration::from_secs(1));
        assert!(t.is_empty(), "{t:?}");
        let t = serve(&store, end - Duration::from_secs(1), end);
        let now = end;
        assert_eq!(
            t,
            [Transition::Deleted {
                kid: old.kid().to_owned()
            }]
        );
        assert!(!store.key_path("c", old.kid()).exists());
        let m = manifest(&store);
        assert_eq!(m.keys.len(), 1);
        assert_eq!(store.key_files("c").unwrap().len(), 1);

        // Retiring a key twice, or the current key with no next one, is refused.
        let why = refused(retire(&store, "c", new.kid(), &p, now, false));
        assert!(
            why.contains("no next key is published") && why.contains("keys import"),
            "{why}"
        );
    }

    #[test]
    fn a_current_import_beside_a_current_key_needs_force_and_keeps_the_old_key_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let (old, new) = (public(KeySpec::P256), public(KeySpec::Rsa { bits: 2048 }));
        import_at(&store, &old, None, t0(), false).unwrap();
        let why = refused(import_at(
            &store,
            &new,
            Some(KeyState::Current),
            t0() + DAY,
            false,
        ));
        assert!(
            why.contains(&format!("already has a current key {}", old.kid()))
                && why.contains("--state next")
                && why.contains("--force"),
            "{why}"
        );
        assert_eq!(manifest(&store).keys.len(), 1, "nothing was changed");
        assert!(!store.key_path("c", new.kid()).exists());

        let t = import_at(&store, &new, Some(KeyState::Current), t0() + DAY, true).unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: new.kid().to_owned(),
                early: true
            }) && t.contains(&Transition::Retired {
                kid: old.kid().to_owned()
            }),
            "{t:?}"
        );
        let set = store.load("c", None).unwrap().unwrap();
        assert_eq!(set.current().kid(), new.kid());
        assert!(
            set.find(old.kid()).is_some(),
            "the old key is still published"
        );
        assert_eq!(set.algorithms().len(), 2);
        let t = apply_retention(
            &store,
            "c",
            &p,
            t0() + DAY + p.retention - HOUR,
            ClockTrust::Check,
        )
        .unwrap();
        assert!(t.is_empty(), "{t:?}");
    }

    #[test]
    fn bad_imports_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let (a, b, c) = (
            public(KeySpec::P256),
            public(KeySpec::P256),
            public(KeySpec::P256),
        );
        let why = refused(import_at(&store, &a, Some(KeyState::Next), t0(), false));
        assert!(
            why.contains("has no current key yet") && why.contains("--state current"),
            "{why}"
        );
        assert!(store.read_manifest("c").unwrap().is_none());

        import_at(&store, &a, None, t0(), false).unwrap();
        let why = refused(import_at(&store, &a, None, t0() + HOUR, false));
        assert!(
            why.contains(&format!("already publishes key {}", a.kid()))
                && why.contains("duplicate kid"),
            "{why}"
        );
        import_at(&store, &b, None, t0() + HOUR, false).unwrap();
        let why = refused(import_at(
            &store,
            &c,
            Some(KeyState::Next),
            t0() + HOUR,
            false,
        ));
        assert!(
            why.contains(&format!("already has a next key {}", b.kid())),
            "{why}"
        );

        // A file of that kid that the manifest does not list is never replaced.
        std::fs::write(store.key_path("c", c.kid()), b"somebody's file").unwrap();
        retire(&store, "c", b.kid(), &p, t0() + 2 * HOUR, false).unwrap();
        let err = import_at(&store, &c, None, t0() + 2 * HOUR, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not list key") && err.contains("move that file away"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(store.key_path("c", c.kid())).unwrap(),
            b"somebody's file"
        );
        let err = retire(&store, "c", "nope", &p, t0(), false).unwrap_err();
        assert!(matches!(err, RotationError::UnknownKid { .. }), "{err}");
        let why = refused(retire(&store, "c", b.kid(), &p, t0() + 3 * HOUR, false));
        assert!(
            why.contains("already retired") && why.contains("until"),
            "{why}"
        );
    }

    #[test]
    fn revoking_an_imported_current_key_needs_a_key_to_take_over_and_generates_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (a, b) = (public(KeySpec::P256), public(KeySpec::P256));
        import_at(&store, &a, None, t0(), false).unwrap();
        let why = refused(revoke(
            &store,
            "c",
            a.kid(),
            Source::Imported,
            &policy(),
            t0() + HOUR,
        ));
        assert!(
            why.contains("no next key is imported") && why.contains("--state current --force"),
            "{why}"
        );
        assert_eq!(store.key_files("c").unwrap().len(), 1);

        import_at(&store, &b, None, t0() + HOUR, false).unwrap();
        let t = revoke(
            &store,
            "c",
            a.kid(),
            Source::Imported,
            &policy(),
            t0() + 2 * HOUR,
        )
        .unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: b.kid().to_owned(),
                early: true
            }),
            "{t:?}"
        );
        assert!(
            !t.iter().any(|x| matches!(x, Transition::Generated { .. })),
            "{t:?}"
        );
        assert_eq!(store.key_files("c").unwrap(), [format!("{}.pem", b.kid())]);
    }

    #[test]
    fn a_lost_manifest_deletes_no_imported_key_and_recover_brings_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let p = policy();
        let (a, b) = (public(KeySpec::P256), public(KeySpec::Rsa { bits: 2048 }));
        import_at(&store, &a, None, t0(), false).unwrap();
        import_at(&store, &b, None, t0() + HOUR, false).unwrap();
        let files = store.key_files("c").unwrap();
        std::fs::remove_file(store.manifest_path("c")).unwrap();
        let now = t0() + 40 * DAY;
        for err in [
            apply_retention(&store, "c", &p, now, ClockTrust::Watched).unwrap_err(),
            import_at(&store, &public(KeySpec::P256), None, now, true).unwrap_err(),
            retire(&store, "c", a.kid(), &p, now, true).unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("keys recover --cluster c"),
                "{err}"
            );
        }
        assert_eq!(
            store.key_files("c").unwrap(),
            files,
            "no key file was deleted or added"
        );

        recover(&store, "c", KeySpec::P256, Some(a.kid()), now).unwrap();
        let set = store.load("c", None).unwrap().unwrap();
        assert_eq!(set.current().kid(), a.kid());
        assert!(set
            .keys()
            .iter()
            .all(|k| k.record.imported && k.key.is_imported()));
        assert!(set.signer().is_none());
    }

    #[test]
    fn a_manifest_that_says_generated_over_a_public_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let a = public(KeySpec::P256);
        import_at(&store, &a, None, t0(), false).unwrap();
        let mut m = manifest(&store);
        m.keys[0].imported = false;
        let lock = store.lock().unwrap();
        store.write_manifest(&lock, &m).unwrap();
        drop(lock);
        let err = store.load("c", None).unwrap_err().to_string();
        assert!(
            err.contains("listed as generated here") && err.contains("only a public key"),
            "{err}"
        );
    }

    #[test]
    fn retire_on_a_generated_cluster_follows_the_same_rules_and_points_to_rotate() {
        use crate::keys::steps::apply_policy;
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        // With no next key (a store from before standby keys), retiring the
        // current key points to `keys rotate`.
        let dropped = drop_standby(&store);
        let why = refused(retire(&store, "c", &first, &p, t0() + HOUR, false));
        assert!(why.contains("keys rotate --cluster c"), "{why}");
        // The policy publishes a standby; retiring the current key hands
        // over once that key has been published for publish_ahead.
        run(&store, spec, &p, t0() + HOUR, t0() + 2 * HOUR);
        let next = kid_in(&store, KeyState::Next).unwrap();
        assert_ne!(next, dropped);
        let why = refused(retire(&store, "c", &first, &p, t0() + 3 * HOUR, false));
        assert!(why.contains("less than publish_ahead"), "{why}");
        let t = retire(&store, "c", &first, &p, t0() + 2 * HOUR + DAY, false).unwrap();
        assert!(
            t.contains(&Transition::Activated {
                kid: next.clone(),
                early: false
            }),
            "{t:?}"
        );
        let set = store.load("c", None).unwrap().unwrap();
        assert_eq!(set.signer().map(|k| k.kid().to_owned()), Some(next));
        // `keys retire` generates nothing; the policy's next step publishes
        // the new standby.
        assert!(kid_in(&store, KeyState::Next).is_none());
        run(
            &store,
            spec,
            &p,
            t0() + 2 * HOUR + DAY,
            t0() + 3 * HOUR + DAY,
        );
        assert!(kid_in(&store, KeyState::Next).is_some());
    }
}
