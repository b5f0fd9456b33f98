//! The key store: each cluster's set of keys on disk and in memory.
//!
//! On disk, under the keys dir, one directory per cluster:
//!
//! ```text
//! <keys dir>/.lock                  exclusive lock held while the store changes
//! <keys dir>/<cluster>/manifest.json  every key's kid, algorithm, state and times
//! <keys dir>/<cluster>/<kid>.pem      one PKCS#8 private key per file, mode 0600
//! ```
//!
//! A cluster has a *set* of keys: every key in the manifest is published in the
//! JWKS, exactly one (`current`) signs. The rotation module moves keys through
//! their states; this module only loads, creates and writes, and builds the
//! immutable [`KeySet`] that the HTTP layer reads. The JWKS bytes are built here,
//! once per change of the set, never per request.
//!
//! Depends on `keys::material`, `keys::jwk` and `fsutil`; never on `http`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::jwk::{jwks_json, PublicJwk};
use super::material::{Algorithm, KeyError, KeySpec, SigningKey};
use crate::fsutil::{ensure_dir, write_atomic};

pub const MANIFEST: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;
const LOCK_FILE: &str = ".lock";
const KEY_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub cluster: String,
    pub keys: Vec<KeyRecord>,
}

impl Manifest {
    pub fn empty(cluster: &str) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            cluster: cluster.to_owned(),
            keys: Vec::new(),
        }
    }
}

/// Where the store is about to write or remove something; a [`WriteHook`]
/// sees each point first (tests inject failures there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePoint {
    KeyFile,
    Manifest,
    RemoveFile,
}

/// Called before every write or removal; an error aborts it.
pub type WriteHook = Arc<dyn Fn(WritePoint) -> io::Result<()> + Send + Sync>;

/// Identifies one version of a manifest file: an atomic rename gives a new
/// inode, so a change is seen without reading the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("{path}: the key's kid is {actual}, but the manifest says {expected}")]
    KidMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("generating a {spec} key failed: {source}")]
    Generate { spec: KeySpec, source: KeyError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A key with its manifest record.
#[derive(Debug)]
pub struct StoredKey {
    pub record: KeyRecord,
    pub key: Arc<SigningKey>,
}

/// A cluster's published keys and its signer, immutable once built. Rotation
/// and reload build a new one and swap it in whole.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<StoredKey>,
    current: usize,
    jwks: Vec<u8>,
    algorithms: Vec<Algorithm>,
}

impl KeySet {
    /// Builds the set from loaded keys; exactly one must be `current`.
    pub fn new(keys: Vec<StoredKey>) -> Result<KeySet, String> {
        let currents: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.record.state == KeyState::Current)
            .map(|(i, _)| i)
            .collect();
        let current = match currents.as_slice() {
            [one] => *one,
            [] => return Err("no key is in state \"current\"".into()),
            _ => return Err(format!("{} keys are in state \"current\"", currents.len())),
        };
        let public: Vec<&PublicJwk> = keys.iter().map(|k| k.key.public_jwk()).collect();
        let jwks = jwks_json(&public);
        let mut algorithms: Vec<Algorithm> = keys.iter().map(|k| k.key.algorithm()).collect();
        algorithms.sort();
        algorithms.dedup();
        Ok(KeySet {
            keys,
            current,
            jwks,
            algorithms,
        })
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> &Arc<SigningKey> {
        &self.keys[self.current].key
    }

    /// The JWK Set document, serialized once.
    pub fn jwks_json(&self) -> &[u8] {
        &self.jwks
    }

    /// Sorted, unique algorithms of the published keys.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    /// Finds a published key by kid.
    pub fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .find(|k| k.key.kid() == kid)
            .map(|k| &k.key)
    }
}

/// The on-disk store of one keys dir.
#[derive(Clone)]
pub struct KeyStore {
    root: PathBuf,
    hook: Option<WriteHook>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Held while the store changes; released on drop.
pub struct StoreLock {
    _file: File,
}

impl KeyStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KeyStore {
            root: root.into(),
            hook: None,
        }
    }

    /// A store that calls `hook` before each write or removal.
    pub fn with_hook(mut self, hook: WriteHook) -> Self {
        self.hook = Some(hook);
        self
    }

    fn before(&self, point: WritePoint, path: &Path) -> Result<(), StoreError> {
        match &self.hook {
            Some(hook) => hook(point).map_err(io_err(path)),
            None => Ok(()),
        }
    }

    /// The version of a cluster's manifest on disk; `None` if it has none.
    pub fn stamp(&self, cluster: &str) -> Result<Option<Stamp>, StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.manifest_path(cluster);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(Stamp {
                ino: m.ino(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                len: m.len(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes a key file the manifest no longer lists. Call with the lock
    /// held, after the manifest is written.
    pub fn remove_key_file(
        &self,
        _lock: &StoreLock,
        cluster: &str,
        kid: &str,
    ) -> Result<(), StoreError> {
        let path = self.key_path(cluster, kid);
        self.before(WritePoint::RemoveFile, &path)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes what a crash can leave behind: key files the manifest does not
    /// list (generated but never published, or dropped but not yet removed)
    /// and temp files. None of them ever signed a live token.
    pub fn remove_orphans(
        &self,
        lock: &StoreLock,
        cluster: &str,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let Some(manifest) = self.read_manifest(cluster)? else {
            return Ok(Vec::new());
        };
        let listed: std::collections::HashSet<String> = manifest
            .keys
            .iter()
            .map(|k| format!("{}.pem", k.kid))
            .collect();
        let dir = self.cluster_dir(cluster);
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan_key = name.ends_with(".pem") && !listed.contains(&name);
            let temp = name.starts_with('.') && name.contains(".tmp-");
            if orphan_key || temp {
                let path = entry.path();
                self.before(WritePoint::RemoveFile, &path)?;
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push(path);
            }
        }
        let _ = lock;
        Ok(removed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster)
    }

    pub fn manifest_path(&self, cluster: &str) -> PathBuf {
        self.cluster_dir(cluster).join(MANIFEST)
    }

    pub fn key_path(&self, cluster: &str, kid: &str) -> PathBuf {
        self.cluster_dir(cluster).join(format!("{kid}.pem"))
    }

    /// Takes the exclusive lock on the keys dir, waiting for other processes
    /// (replicas on a shared volume, the CLI) to finish their change first.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        ensure_dir(&self.root, DIR_MODE).map_err(io_err(&self.root))?;
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(KEY_MODE)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(StoreLock { _file: file })
    }

    /// Reads a cluster's manifest; `None` if the cluster has none yet.
    pub fn read_manifest(&self, cluster: &str) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(cluster);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Manifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(StoreError::Manifest {
                path,
                reason: format!(
                    "version {} is not supported (expected {MANIFEST_VERSION})",
                    manifest.version
                ),
            });
        }
        if manifest.cluster != cluster {
            return Err(StoreError::Manifest {
                path,
                reason: format!(
                    "it belongs to cluster \"{}\", not \"{cluster}\"",
                    manifest.cluster
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Writes a cluster's manifest atomically. Call with the lock held.
    pub fn write_manifest(&self, _lock: &StoreLock, manifest: &Manifest) -> Result<(), StoreError> {
        let dir = self.cluster_dir(&manifest.cluster);
        ensure_dir(&dir, DIR_MODE).map_err(io_err(&dir))?;
        let path = self.manifest_path(&manifest.cluster);
        self.before(WritePoint::Manifest, &path)?;
        let mut bytes = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, KEY_MODE).map_err(io_err(&path))
    }

    /// Generates a key and writes its file (not yet listed in the manifest).
    /// Call with the lock held, off the async threads (RSA takes a while).
    pub fn generate_key(
        &self,
        _lock: &StoreLock,
        cluster: &str,
        spec: KeySpec,
    ) -> Result<SigningKey, StoreError> {
        let (key, pem) =
            SigningKey::generate(spec).map_err(|source| StoreError::Generate { spec, source })?;
        let dir = self.cluster_dir(cluster);
        ensure_dir(&dir, DIR_MODE).map_err(io_err(&dir))?;
        let path = self.key_path(cluster, key.kid());
        self.before(WritePoint::KeyFile, &path)?;
        write_atomic(&path, pem.as_bytes(), KEY_MODE).map_err(io_err(&path))?;
        Ok(key)
    }

    /// Loads one key file and checks it is the key the manifest names.
    pub fn load_key(&self, cluster: &str, record: &KeyRecord) -> Result<SigningKey, StoreError> {
        let path = self.key_path(cluster, &record.kid);
        let pem = fs::read(&path).map_err(io_err(&path))?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|source| StoreError::Key {
            path: path.clone(),
            source,
        })?;
        if key.kid() != record.kid {
            return Err(StoreError::KidMismatch {
                path,
                expected: record.kid.clone(),
                actual: key.kid().to_owned(),
            });
        }
        Ok(key)
    }

    /// Loads every key a manifest lists into a [`KeySet`].
    pub fn load_set(&self, manifest: &Manifest) -> Result<KeySet, StoreError> {
        self.load_set_reusing(manifest, None)
    }

    /// Like [`load_set`](Self::load_set), but takes keys already parsed in
    /// `previous` by kid instead of reading and parsing their files again.
    pub fn load_set_reusing(
        &self,
        manifest: &Manifest,
        previous: Option<&KeySet>,
    ) -> Result<KeySet, StoreError> {
        let mut keys = Vec::with_capacity(manifest.keys.len());
        for record in &manifest.keys {
            let key = match previous.and_then(|p| p.find(&record.kid)) {
                Some(k) => k.clone(),
                None => Arc::new(self.load_key(&manifest.cluster, record)?),
            };
            keys.push(StoredKey {
                record: record.clone(),
                key,
            });
        }
        KeySet::new(keys).map_err(|reason| StoreError::Manifest {
            path: self.manifest_path(&manifest.cluster),
            reason,
        })
    }

    /// Loads a cluster's keys, creating its first signing key if it has none.
    /// A restart reuses what is on disk; a broken manifest or key file is an
    /// error, never a reason to generate a replacement (that would lose a key).
    pub fn load_or_create(
        &self,
        cluster: &str,
        spec: KeySpec,
        now: SystemTime,
    ) -> Result<(KeySet, bool), StoreError> {
        if let Some(manifest) = self.read_manifest(cluster)? {
            return Ok((self.load_set(&manifest)?, false));
        }
        let lock = self.lock()?;
        // Another process may have created it while we waited for the lock.
        if let Some(manifest) = self.read_manifest(cluster)? {
            return Ok((self.load_set(&manifest)?, false));
        }
        let key = self.generate_key(&lock, cluster, spec)?;
        let at = rfc3339(now);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            cluster: cluster.to_owned(),
            keys: vec![KeyRecord {
                kid: key.kid().to_owned(),
                alg: key.algorithm().as_str().to_owned(),
                bits: key.bits(),
                state: KeyState::Current,
                created: at.clone(),
                published: at.clone(),
                activated: Some(at),
                retired: None,
            }],
        };
        self.write_manifest(&lock, &manifest)?;
        Ok((self.load_set(&manifest)?, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn first_load_creates_a_key_and_a_restart_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, created) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        assert!(created);
        let kid = set.signer().kid().to_owned();
        let (again, created) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        assert!(!created);
        assert_eq!(again.signer().kid(), kid);
        let mode = fs::metadata(store.key_path("demo", &kid))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_and_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let path = store.key_path("demo", set.signer().kid());
        fs::write(&path, b"garbage").unwrap();
        let err = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
    }

    #[test]
    fn a_manifest_naming_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let kid = set.signer().kid().to_owned();
        // Swap the file for another key under the same name.
        let (_, other) = SigningKey::generate(KeySpec::P256).unwrap();
        fs::write(store.key_path("demo", &kid), other.as_bytes()).unwrap();
        let err = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap_err();
        assert!(matches!(err, StoreError::KidMismatch { .. }), "{err}");
    }

    #[test]
    fn jwks_lists_every_key_without_private_members() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(set.jwks_json()).unwrap();
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(keys[0].get(private).is_none());
        }
        assert_eq!(set.algorithms(), &[Algorithm::Es256]);
    }
}
