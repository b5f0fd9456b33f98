//! A cluster's key set in memory: the published keys and the current one;
//! immutable, swapped whole. Its JWKS is serialized when asked for: the
//! issuer serializes it once per key set and keeps that one copy. Each key and the
//! set remember the version ([`Stamp`]) of the file they came from.
//!
//! A key is either generated here (its private half signs) or imported as a
//! public key only (a `publish_only` cluster, whose kube-apiserver signs):
//! a set whose current key is imported has no signer. Of a generated key that
//! does not sign from the set (the standby, retired keys) only the public
//! half is held: the private key stays in its file until the key is current.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::jwk::{jwks_json, PublicJwk};
use super::manifest::{KeyRecord, KeyState};
use super::material::{Algorithm, SigningKey};
use super::public::PublicKey;

/// Identifies one version of a file: an atomic rename gives a new inode, and
/// an edit in place, a chmod or a chown a new ctime, so a change is seen
/// without reading the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    len: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            ino: meta.ino(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
        }
    }

    /// The stamp of the file at `path`; `None` if there is none.
    pub(crate) fn read(path: &Path) -> io::Result<Option<Stamp>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(Stamp::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What is held in memory of a key: the private key (generated here), the
/// public half of a generated key that does not sign (its private key stays
/// in its file), or only the public key (imported).
#[derive(Clone, Debug)]
pub enum Material {
    Signing(Arc<SigningKey>),
    /// Generated here, but not current: with 10,000 clusters, holding the
    /// parsed private keys of their standbys alone would cost ~20 MB.
    Resting(Arc<PublicKey>),
    Public(Arc<PublicKey>),
}

impl Material {
    pub fn public(&self) -> &PublicKey {
        match self {
            Material::Signing(k) => k.public(),
            Material::Resting(k) | Material::Public(k) => k,
        }
    }

    /// The same key, holding only its public half when it is a private key.
    pub fn resting(self) -> Material {
        match self {
            Material::Signing(k) => Material::Resting(Arc::new(k.public().clone())),
            other => other,
        }
    }

    /// The private key, for a key generated here.
    pub fn signing(&self) -> Option<&Arc<SigningKey>> {
        match self {
            Material::Signing(k) => Some(k),
            Material::Resting(_) | Material::Public(_) => None,
        }
    }

    /// Whether only the public key is held (imported).
    pub fn is_imported(&self) -> bool {
        matches!(self, Material::Public(_))
    }

    pub fn kid(&self) -> &str {
        self.public().kid()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public().algorithm()
    }

    pub fn public_jwk(&self) -> PublicJwk {
        self.public().public_jwk()
    }
}

impl From<Arc<SigningKey>> for Material {
    fn from(key: Arc<SigningKey>) -> Material {
        Material::Signing(key)
    }
}

impl From<Arc<PublicKey>> for Material {
    fn from(key: Arc<PublicKey>) -> Material {
        Material::Public(key)
    }
}

/// A key with its manifest record.
#[derive(Debug)]
pub struct StoredKey {
    pub record: KeyRecord,
    pub key: Material,
    /// The version of the key file it was loaded from.
    pub(crate) file: Option<Stamp>,
}

impl StoredKey {
    /// A key and its record, not (yet) tied to a file on disk.
    pub fn new(record: KeyRecord, key: impl Into<Material>) -> StoredKey {
        StoredKey {
            record,
            key: key.into(),
            file: None,
        }
    }
}

/// Why keys do not make a set: exactly one must be current, and each key
/// file must hold what its record says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("no key is in state \"current\"")]
    NoCurrent,
    #[error("{0} keys are in state \"current\"")]
    ManyCurrent(usize),
    #[error("key {kid} is listed as {listed}, but its file holds {holds}")]
    NotAsListed {
        kid: String,
        listed: &'static str,
        holds: &'static str,
    },
    #[error("key {0} is current, but its private key was not loaded")]
    CurrentResting(String),
}

/// A cluster's published keys and its current key, immutable once built. Rotation
/// and reload build a new one and swap it in whole.
#[derive(Debug)]
pub struct KeySet {
    pub(crate) keys: Vec<StoredKey>,
    current: usize,
    algorithms: Vec<Algorithm>,
    /// The version of the manifest it was loaded from, taken before reading.
    pub(crate) stamp: Option<Stamp>,
    /// The manifest's `checked` time.
    pub(crate) checked: Option<String>,
}

impl KeySet {
    /// Builds the set from loaded keys; exactly one must be `current`.
    pub fn new(keys: Vec<StoredKey>) -> Result<KeySet, KeySetError> {
        if let Some(k) = keys
            .iter()
            .find(|k| k.key.is_imported() != k.record.imported)
        {
            let (listed, holds) = if k.record.imported {
                ("imported (a public key only)", "a private key")
            } else {
                ("generated here (a private key)", "only a public key")
            };
            return Err(KeySetError::NotAsListed {
                kid: k.record.kid.clone(),
                listed,
                holds,
            });
        }
        let currents: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.record.state == KeyState::Current)
            .map(|(i, _)| i)
            .collect();
        let current = match currents.as_slice() {
            [one] => *one,
            [] => return Err(KeySetError::NoCurrent),
            _ => return Err(KeySetError::ManyCurrent(currents.len())),
        };
        if let Material::Resting(_) = keys[current].key {
            return Err(KeySetError::CurrentResting(
                keys[current].record.kid.clone(),
            ));
        }
        let mut algorithms: Vec<Algorithm> = keys.iter().map(|k| k.key.algorithm()).collect();
        algorithms.sort();
        algorithms.dedup();
        Ok(KeySet {
            keys,
            current,
            algorithms,
            stamp: None,
            checked: None,
        })
    }

    /// The version of the manifest this set was loaded from: a later change
    /// of the file has another stamp.
    pub fn stamp(&self) -> Option<Stamp> {
        self.stamp
    }

    /// The same set, as if loaded from the manifest version `stamp`.
    #[cfg(test)]
    pub(crate) fn restamped(mut self, stamp: Option<Stamp>) -> KeySet {
        self.stamp = stamp;
        self
    }

    /// When a rotation step last vouched for its clock (the manifest's
    /// `checked`), RFC 3339.
    pub fn checked(&self) -> Option<&str> {
        self.checked.as_deref()
    }

    /// The key that signs new tokens: `None` when the current key was
    /// imported without its private half (a cluster that signs its own
    /// tokens). Whether a cluster may sign at all is the issuer's to say.
    pub fn signer(&self) -> Option<&Arc<SigningKey>> {
        self.keys[self.current].key.signing()
    }

    /// The public half of the current key: the one tokens are signed with,
    /// here or by the cluster itself.
    pub fn current(&self) -> &PublicKey {
        self.keys[self.current].key.public()
    }

    /// The JWK Set document (RFC 7517 §5), serialized anew: call it once
    /// per set and keep the bytes.
    pub fn jwks_json(&self) -> Vec<u8> {
        let public: Vec<PublicJwk> = self.keys.iter().map(|k| k.key.public_jwk()).collect();
        jwks_json(&public)
    }

    /// Sorted, unique algorithms of the published keys.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    /// Finds a published key by kid.
    pub fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.keys
            .iter()
            .find(|k| k.key.kid() == kid)
            .map(|k| k.key.public())
    }
}
