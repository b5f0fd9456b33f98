//! The key store: each cluster's set of keys on disk and in memory.
//!
//! On disk, under the keys dir, one directory per cluster:
//!
//! ```text
//! <keys dir>/.lock                  exclusive lock held while the store changes
//! <keys dir>/<cluster>/manifest.json  every key's kid, algorithm, state and times
//! <keys dir>/<cluster>/<kid>.pem      one PKCS#8 private key per file, mode 0600;
//!                                     for an imported key, its PKIX public key
//! ```
//!
//! A cluster has a *set* of keys: every key in the manifest is published in the
//! JWKS, exactly one (`current`) signs. The rotation module moves keys through
//! their states; this module only loads, creates and writes, and builds the
//! immutable [`KeySet`] (`keys::keyset`) that the HTTP layer reads; the
//! manifest's shape is `keys::manifest`, re-exported here as the store's
//! vocabulary.
//!
//! The manifest is the only authority on a cluster's keys. A key file is
//! removed only when a manifest lists its kid under `removed`; a missing
//! manifest beside key files is an error, never an empty cluster. Directories
//! and key files that someone else could write (or read) are refused, on every
//! load, unless the operator allowed it.
//!
//! Depends on `keys::material`, `keys::keyset`, `keys::manifest` and `fsutil`;
//! never on anything above `keys`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use super::keyset::{KeySet, Material, Stamp, StoredKey};
use super::manifest::MANIFEST_VERSION;
pub use super::manifest::{rfc3339, KeyRecord, KeyState, Manifest, MANIFEST};
use super::material::{KeyError, KeySpec, SigningKey};
use super::public::{PublicKey, PublicKeyError};
use crate::fsutil::{ensure_dir, write_atomic};

const LOCK_FILE: &str = ".lock";
pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const DIR_MODE: u32 = 0o700;

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

/// Told the id of every cluster whose files the store (or the registry)
/// changes, once the change is under way: a store kept elsewhere too (etcd)
/// commits that cluster once the lock is released.
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

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
    #[error("{path}: {source}")]
    Public {
        path: PathBuf,
        #[source]
        source: PublicKeyError,
    },
    #[error("{path}: the key's kid is {actual}, but the manifest says {expected}")]
    KidMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("generating a {spec} key failed: {source}")]
    Generate { spec: KeySpec, source: KeyError },
    #[error(
        "{dir}: the manifest of cluster \"{cluster}\" {what}, but the directory holds {} key \
         file(s) ({}): which key signs and which are retired is unknown, so nothing was \
         changed or deleted. Restore {MANIFEST} from a backup, or rebuild it from the key \
         files with `workload-issuer keys recover --cluster {cluster}`",
        .files.len(), .files.join(", ")
    )]
    ManifestMissing {
        dir: PathBuf,
        cluster: String,
        what: &'static str,
        files: Vec<String>,
    },
    #[error(
        "{path} {problem}: {fix} (and check how it came to be so), or set \
         allow_insecure_key_permissions = true"
    )]
    Insecure {
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The on-disk store of one keys dir.
#[derive(Clone)]
pub struct KeyStore {
    root: PathBuf,
    hook: Option<WriteHook>,
    observer: Option<Observer>,
    /// Warn about files and directories others may touch instead of refusing
    /// them (`allow_insecure_key_permissions`).
    insecure_ok: bool,
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

/// What [`KeyStore::remove_leftovers`] did and saw.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Files removed: key files the manifest lists as removed, temp files.
    pub removed: Vec<PathBuf>,
    /// Key files the manifest neither lists nor marks removed (a key
    /// generated by a step that failed before its manifest was written, or a
    /// file put there by hand): kept, since no manifest said they may go.
    pub unlisted: Vec<PathBuf>,
}

/// The user the process runs as, whose files the store trusts.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl KeyStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KeyStore {
            root: root.into(),
            hook: None,
            observer: None,
            insecure_ok: false,
        }
    }

    /// A store that calls `hook` before each write or removal.
    pub fn with_hook(mut self, hook: WriteHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// A store that tells `observer` which cluster each change is for.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Tells the observer, if any, that `cluster`'s files change.
    pub(super) fn touched(&self, cluster: &str) {
        if let Some(observer) = &self.observer {
            observer(cluster);
        }
    }

    /// Accept (with a warning) directories others can write and key files
    /// others can read: `allow_insecure_key_permissions`.
    pub fn allow_insecure_permissions(mut self, allow: bool) -> Self {
        self.insecure_ok = allow;
        self
    }

    pub(super) fn before(&self, point: WritePoint, path: &Path) -> Result<(), StoreError> {
        match &self.hook {
            Some(hook) => hook(point).map_err(io_err(path)),
            None => Ok(()),
        }
    }

    /// Refuses a file or directory owned by another user, or with any of the
    /// `forbidden` mode bits: someone else could plant or read a key there.
    fn check_private(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        forbidden: u32,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        let me = euid();
        let (problem, fix) = if meta.uid() != me {
            (
                format!(
                    "is owned by uid {}, not uid {me} that runs the server",
                    meta.uid()
                ),
                "chown it to the server's user",
            )
        } else if mode & forbidden != 0 && meta.is_dir() {
            (
                format!("is writable by group or others (mode {mode:o})"),
                "chmod 700 it",
            )
        } else if mode & forbidden != 0 {
            (
                format!("is readable or writable by group or others (mode {mode:o})"),
                "chmod 600 it",
            )
        } else {
            return Ok(());
        };
        if self.insecure_ok {
            tracing::warn!(path = %path.display(), "{problem} (allowed by allow_insecure_key_permissions)");
            return Ok(());
        }
        Err(StoreError::Insecure {
            path: path.to_owned(),
            problem,
            fix,
        })
    }

    /// Checks that only this user can change the keys dir and the cluster's
    /// directory (when they exist).
    pub fn check_dirs(&self, cluster: Option<&str>) -> Result<(), StoreError> {
        let dirs = std::iter::once(self.root.clone()).chain(cluster.map(|c| self.cluster_dir(c)));
        for dir in dirs {
            match fs::metadata(&dir) {
                Ok(meta) => self.check_private(&dir, &meta, 0o022)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }

    /// The version of a cluster's manifest on disk; `None` if it has none.
    pub fn stamp(&self, cluster: &str) -> Result<Option<Stamp>, StoreError> {
        let path = self.manifest_path(cluster);
        Stamp::read(&path).map_err(io_err(&path))
    }

    /// Whether any key file of `set` changed on disk (replaced, edited,
    /// chmod-ed or gone) since the set was loaded.
    pub fn key_files_changed(&self, cluster: &str, set: &KeySet) -> bool {
        set.keys.iter().any(|k| {
            Stamp::read(&self.key_path(cluster, &k.record.kid)).map_or(true, |now| now != k.file)
        })
    }

    /// Removes a key file the manifest lists as removed. Call with the lock
    /// held, after the manifest is written.
    pub fn remove_key_file(
        &self,
        _lock: &StoreLock,
        manifest: &Manifest,
        kid: &str,
    ) -> Result<(), StoreError> {
        let path = self.key_path(&manifest.cluster, kid);
        if !manifest.removed.iter().any(|r| r == kid) || manifest.keys.iter().any(|k| k.kid == kid)
        {
            return Err(StoreError::Manifest {
                path: self.manifest_path(&manifest.cluster),
                reason: format!("key {kid} is not listed as removed; its file is kept"),
            });
        }
        self.before(WritePoint::RemoveFile, &path)?;
        self.touched(&manifest.cluster);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The names of the `*.pem` files in a cluster's directory, sorted.
    pub fn key_files(&self, cluster: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.cluster_dir(cluster);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_err(&dir))?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".pem") && !name.starts_with('.') {
                names.push(name.into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Finishes what a crash can leave half done: removes the key files the
    /// manifest lists as removed and temp files. Key files it does not list
    /// at all are kept and reported. Call with the lock held.
    pub fn remove_leftovers(
        &self,
        lock: &StoreLock,
        cluster: &str,
    ) -> Result<Leftovers, StoreError> {
        let mut done = Leftovers::default();
        let Some(manifest) = self.read_manifest(cluster)? else {
            return Ok(done);
        };
        let dir = self.cluster_dir(cluster);
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') && name.contains(".tmp-") {
                self.before(WritePoint::RemoveFile, &path)?;
                fs::remove_file(&path).map_err(io_err(&path))?;
                done.removed.push(path);
            } else if let Some(kid) = name.strip_suffix(".pem") {
                if manifest.keys.iter().any(|k| k.kid == kid) {
                    continue;
                }
                if manifest.removed.iter().any(|r| r == kid) {
                    self.remove_key_file(lock, &manifest, kid)?;
                    done.removed.push(path);
                } else {
                    done.unlisted.push(path);
                }
            }
        }
        Ok(done)
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

    /// Reads a cluster's manifest; `None` if the cluster has no manifest and
    /// no key files (a new cluster). A manifest gone from beside key files
    /// is an error: treating it as empty would replace every key.
    pub fn read_manifest(&self, cluster: &str) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(cluster);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dangling = fs::symlink_metadata(&path).is_ok();
                let files = self.key_files(cluster)?;
                if files.is_empty() && !dangling {
                    return Ok(None);
                }
                return Err(StoreError::ManifestMissing {
                    dir: self.cluster_dir(cluster),
                    cluster: cluster.to_owned(),
                    what: if dangling {
                        "is a symbolic link to a missing file"
                    } else {
                        "is missing"
                    },
                    files,
                });
            }
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
        self.touched(&manifest.cluster);
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
        self.touched(cluster);
        write_atomic(&path, pem.as_bytes(), KEY_MODE).map_err(io_err(&path))?;
        Ok(key)
    }

    /// Loads the key file of `kid`, checking who may read it and that it
    /// holds the key of that kid; with the file's stamp as it was read. The
    /// file holds a private key (parsed whole only to `sign`), or a public key.
    pub fn load_key(
        &self,
        cluster: &str,
        kid: &str,
        sign: bool,
    ) -> Result<(Material, Option<Stamp>), StoreError> {
        let path = self.key_path(cluster, kid);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let meta = file.metadata().map_err(io_err(&path))?;
        self.check_private(&path, &meta, 0o077)?;
        let mut pem = rsa::pkcs8::der::zeroize::Zeroizing::new(Vec::with_capacity(
            meta.len().try_into().unwrap_or(0),
        ));
        io::Read::read_to_end(&mut file, &mut pem).map_err(io_err(&path))?;
        let bad_key = |source| StoreError::Key {
            path: path.clone(),
            source,
        };
        let key: Material = if pem.starts_with(b"-----BEGIN PUBLIC KEY-----") {
            let key = PublicKey::from_pem(&pem).map_err(|source| StoreError::Public {
                path: path.clone(),
                source,
            })?;
            Arc::new(key).into()
        } else if sign {
            Arc::new(SigningKey::from_pkcs8_pem(&pem).map_err(bad_key)?).into()
        } else {
            let public = SigningKey::public_of_pkcs8_pem(&pem).map_err(bad_key)?;
            Material::Resting(Arc::new(public))
        };
        if key.kid() != kid {
            return Err(StoreError::KidMismatch {
                path,
                expected: kid.to_owned(),
                actual: key.kid().to_owned(),
            });
        }
        Ok((key, Some(Stamp::of(&meta))))
    }

    /// Loads a cluster's key set as it is on disk now; `None` for a cluster
    /// with no manifest and no keys. The set carries the manifest's stamp
    /// taken *before* reading it, so a change made while it loads is seen
    /// as a change by the next comparison. Keys whose files did not change
    /// are taken from `previous` instead of being read and parsed again.
    pub fn load(
        &self,
        cluster: &str,
        previous: Option<&KeySet>,
    ) -> Result<Option<KeySet>, StoreError> {
        let stamp = self.stamp(cluster)?;
        let Some(manifest) = self.read_manifest(cluster)? else {
            return Ok(None);
        };
        let mut set = self.load_set_reusing(&manifest, previous)?;
        set.stamp = stamp;
        Ok(Some(set))
    }

    /// Loads every key a manifest lists into a [`KeySet`].
    pub fn load_set(&self, manifest: &Manifest) -> Result<KeySet, StoreError> {
        self.load_set_reusing(manifest, None)
    }

    /// Like [`load_set`](Self::load_set), but takes keys already parsed in
    /// `previous` by kid, when their files did not change, instead of reading
    /// them again (but a resting key that now signs is). Non-signing keys rest.
    pub fn load_set_reusing(
        &self,
        manifest: &Manifest,
        previous: Option<&KeySet>,
    ) -> Result<KeySet, StoreError> {
        let cluster = &manifest.cluster;
        self.check_dirs(Some(cluster))?;
        let mut keys = Vec::with_capacity(manifest.keys.len());
        for record in &manifest.keys {
            let path = self.key_path(cluster, &record.kid);
            let signs = record.state == KeyState::Current;
            let reusable = previous
                .and_then(|p| p.keys.iter().find(|k| k.record.kid == record.kid))
                .filter(|k| Stamp::read(&path).ok().flatten() == k.file)
                .filter(|k| !signs || !matches!(k.key, Material::Resting(_)));
            let (key, file) = match reusable {
                Some(k) => (k.key.clone(), k.file),
                None => self.load_key(cluster, &record.kid, signs)?,
            };
            keys.push(StoredKey {
                record: record.clone(),
                key: if signs { key } else { key.resting() },
                file,
            });
        }
        let mut set = KeySet::new(keys).map_err(|e| StoreError::Manifest {
            path: self.manifest_path(cluster),
            reason: e.to_string(),
        })?;
        set.checked = manifest.checked.clone();
        Ok(set)
    }

    /// Loads a cluster's keys, creating its signing key and standby if it has
    /// none. A restart reuses what is on disk; a broken manifest or key file is
    /// an error, never a reason to generate a replacement (that would lose a key).
    pub fn load_or_create(
        &self,
        cluster: &str,
        spec: KeySpec,
        now: SystemTime,
    ) -> Result<(KeySet, bool), StoreError> {
        if let Some(set) = self.load(cluster, None)? {
            return Ok((set, false));
        }
        let lock = self.lock()?;
        // Another process may have created it while we waited for the lock.
        if let Some(set) = self.load(cluster, None)? {
            return Ok((set, false));
        }
        let at = rfc3339(now);
        let mut manifest = Manifest::empty(cluster);
        for state in [KeyState::Current, KeyState::Next] {
            let key = self.generate_key(&lock, cluster, spec)?;
            let alg = key.algorithm();
            let record = KeyRecord::generated(key.kid(), alg.as_str(), key.bits(), state, &at);
            manifest.keys.push(record);
        }
        self.write_manifest(&lock, &manifest)?;
        let set = self
            .load(cluster, None)?
            .ok_or_else(|| StoreError::Manifest {
                path: self.manifest_path(cluster),
                reason: "gone right after it was written".into(),
            })?;
        Ok((set, true))
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
        let kid = set.current().kid().to_owned();
        // The first start publishes a standby beside the signing key.
        let states: Vec<(KeyState, Option<&str>)> = set
            .keys()
            .iter()
            .map(|k| (k.record.state, k.record.activated.as_deref()))
            .collect();
        let first = set.keys()[0].record.published.as_str();
        assert_eq!(
            states,
            [(KeyState::Current, Some(first)), (KeyState::Next, None)]
        );
        assert_eq!(set.keys()[1].record.published, first);
        let (again, created) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        assert!(!created);
        assert_eq!(again.current().kid(), kid);
        assert_eq!(again.jwks_json(), set.jwks_json());
        for k in set.keys() {
            let mode = fs::metadata(store.key_path("demo", k.key.kid()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_key_that_does_not_sign_holds_only_its_public_half_until_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let (first, standby) = (&set.keys()[0], &set.keys()[1]);
        assert!(matches!(first.key, Material::Signing(_)));
        assert!(matches!(standby.key, Material::Resting(_)));
        assert_eq!(set.signer().unwrap().kid(), first.key.kid());
        let standby_kid = standby.key.kid().to_owned();

        // The standby takes over (as a rotation writes it): reloading with
        // the previous set reads its private key again, and the retired key
        // keeps only its public half.
        let mut m = store.read_manifest("demo").unwrap().unwrap();
        m.keys[0].state = KeyState::Retired;
        m.keys[0].retired = Some(m.keys[0].published.clone());
        m.keys[1].state = KeyState::Current;
        m.keys[1].activated = Some(m.keys[1].published.clone());
        store.write_manifest(&store.lock().unwrap(), &m).unwrap();
        let after = store.load("demo", Some(&set)).unwrap().unwrap();
        assert_eq!(after.signer().unwrap().kid(), standby_kid);
        assert!(matches!(after.keys()[0].key, Material::Resting(_)));
        let sig = after.signer().unwrap().sign(b"m").unwrap();
        assert!(after.find(&standby_kid).unwrap().verify(b"m", &sig));

        // A set is never built around a current key held without its
        // private half.
        let resting = |i: usize| StoredKey {
            record: after.keys()[i].record.clone(),
            key: after.keys()[i].key.clone().resting(),
            file: None,
        };
        let err = KeySet::new(vec![resting(0), resting(1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("key {standby_kid} is current, but its private key was not loaded")
        );
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_and_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let path = store.key_path("demo", set.current().kid());
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
        let kid = set.current().kid().to_owned();
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
        let v: serde_json::Value = serde_json::from_slice(&set.jwks_json()).unwrap();
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "the current key and the standby");
        for key in keys {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(key.get(private).is_none());
            }
        }
        assert_eq!(set.algorithms(), &[crate::keys::material::Algorithm::Es256]);
    }

    fn mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn directories_others_can_write_and_keys_others_can_read_are_refused_on_every_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (set, _) = store
            .load_or_create("demo", KeySpec::P256, SystemTime::now())
            .unwrap();
        let set = Arc::new(set);
        let key = store.key_path("demo", set.current().kid());
        let cases: [(&Path, u32, &str); 3] = [
            (
                dir.path(),
                0o777,
                "is writable by group or others (mode 777)",
            ),
            (
                &store.cluster_dir("demo"),
                0o770,
                "is writable by group or others (mode 770)",
            ),
            (
                &key,
                0o640,
                "is readable or writable by group or others (mode 640)",
            ),
        ];
        for (path, bad, says) in cases {
            let good = fs::metadata(path).unwrap().permissions().mode() & 0o7777;
            mode(path, bad);
            // A reload that reuses the parsed keys checks them too.
            for previous in [None, Some(&*set)] {
                let err = store.load("demo", previous).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("{} {says}", path.display()))
                        && err.contains("allow_insecure_key_permissions"),
                    "{err}"
                );
            }
            let lenient = KeyStore::new(dir.path()).allow_insecure_permissions(true);
            assert!(lenient.load("demo", Some(&set)).is_ok());
            mode(path, good);
            assert!(store.load("demo", Some(&set)).is_ok());
        }
    }

    #[test]
    fn a_keys_dir_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("keys");
        fs::create_dir(&root).unwrap();
        mode(&root, 0o700);
        let store = KeyStore::new(&root);
        let other = euid().wrapping_add(4242);
        if std::os::unix::fs::chown(&root, Some(other), None).is_err() {
            // Only root can give a directory away; nothing to check here.
            return;
        }
        assert_eq!(fs::metadata(&root).unwrap().uid(), other);
        let err = store.check_dirs(None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("is owned by uid {other}, not uid {}", euid())),
            "{err}"
        );
    }
}
