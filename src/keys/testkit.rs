//! Fixtures for the rotation tests: a default policy, a start time, and a
//! way to read and step a cluster "c" as a running server does.

#![cfg(test)]

use std::time::{Duration, SystemTime};

use super::material::KeySpec;
use super::policy::{RotationPolicy, Transition};
use super::steps::apply_policy;
use super::store::{KeyState, KeyStore, Manifest};

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86400);

pub fn policy() -> RotationPolicy {
    // The defaults for a 24h max lifetime, 1h max-age, 5m skew.
    RotationPolicy {
        rotate_every: 30 * DAY,
        publish_ahead: DAY,
        retention: DAY + HOUR + Duration::from_secs(300),
    }
}

pub fn t0() -> SystemTime {
    humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
}

pub fn manifest(store: &KeyStore) -> Manifest {
    store.read_manifest("c").unwrap().unwrap()
}

pub fn states(store: &KeyStore) -> Vec<(String, KeyState)> {
    manifest(store)
        .keys
        .into_iter()
        .map(|k| (k.kid, k.state))
        .collect()
}

pub fn kid_in(store: &KeyStore, state: KeyState) -> Option<String> {
    manifest(store)
        .keys
        .into_iter()
        .find(|k| k.state == state)
        .map(|k| k.kid)
}

/// Steps hourly after `from` up to `to` (inclusive), as a running server
/// does, and returns every transition.
pub fn run(
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

/// Takes the standby (next) key out of cluster "c", manifest and file, as a
/// store written before every cluster kept one looks; returns its kid.
pub fn drop_standby(store: &KeyStore) -> String {
    let mut m = manifest(store);
    let i = m
        .keys
        .iter()
        .position(|k| k.state == KeyState::Next)
        .expect("a standby key");
    let kid = m.keys.remove(i).kid;
    let lock = store.lock().unwrap();
    store.write_manifest(&lock, &m).unwrap();
    std::fs::remove_file(store.key_path("c", &kid)).unwrap();
    kid
}
