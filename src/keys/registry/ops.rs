//! The operations on clusters that the admin API and the `clusters` command
//! share: create, remove, recreate, each under the keys dir's lock, with the
//! refusals they answer.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use super::{Entry, Registry};
use crate::config::{joined, runtime_cluster, ClusterConfig, FieldProblem, Origin};
use crate::fsutil::write_atomic;
use crate::k8s::names::is_dns_label;
use crate::keys::store::{
    io_err, rfc3339, KeyRecord, KeySet, KeyState, KeyStore, StoreError, StoreLock,
};

/// The clusters the caller knows of besides the registry (the config file's,
/// or every cluster a server serves), for the checks that an id or issuer
/// path is free.
pub trait Known {
    /// The cluster with this id, if any.
    fn by_id(&self, id: &str) -> Option<&ClusterConfig>;
    /// The id of the cluster whose issuer has this path, if any.
    fn by_issuer_path(&self, path: &str) -> Option<&str>;
}

/// Why a cluster operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The settings do not validate (400).
    #[error("{}", joined(.0))]
    Invalid(Vec<FieldProblem>),
    /// An id or issuer path another cluster holds (409).
    #[error("{field}: {message}")]
    Taken {
        field: &'static str,
        message: String,
    },
    /// A cluster of the config file, which only the file changes (409).
    #[error(
        "cluster \"{id}\" is declared in {file}; remove it there (and reload) rather than \
         through the admin API"
    )]
    FromFile { id: String, file: String },
    /// No such cluster (404).
    #[error("no cluster has id \"{0}\"")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdminError {
    /// The field a refusal names, if one.
    pub fn field(&self) -> Option<&str> {
        match self {
            AdminError::Invalid(p) => p.first().map(|p| p.field.as_str()),
            AdminError::Taken { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl Registry<'_> {
    /// Creates a cluster from its settings (the fields of a `[[clusters]]`
    /// table): checked as the file's, its id and issuer path free, stored,
    /// and its first keys made. Keys left on disk under its id are removed
    /// first: a new cluster never inherits a key.
    pub fn create(
        &self,
        settings: &serde_json::Value,
        public_url: &str,
        known: &dyn Known,
        now: SystemTime,
    ) -> Result<(Entry, ClusterConfig, KeySet), AdminError> {
        let cluster = runtime_cluster(settings, public_url).map_err(AdminError::Invalid)?;
        let id = cluster.id.clone();
        {
            let lock = self.store.lock()?;
            if let Some(other) = known.by_id(&id) {
                return Err(taken_id(other));
            }
            if self.get(&id)?.is_some() {
                return Err(AdminError::Taken {
                    field: "id",
                    message: format!("a cluster with id \"{id}\" already exists"),
                });
            }
            // `known` holds every cluster the caller serves or listed (a
            // server: created elsewhere up to one registry poll ago).
            if let Some(other) = known.by_issuer_path(&cluster.issuer_path) {
                return Err(taken_path(&cluster, other));
            }
            if let Some(name) = foreign_file(self.store, &id)? {
                return Err(AdminError::Taken {
                    field: "id",
                    message: format!(
                        "the keys dir already holds {}/{name}, which is no key file; choose \
                         another cluster id",
                        id
                    ),
                });
            }
            remove_keys(self.store, &lock, &id)?;
            self.remove_marker(&id)?;
        }
        // The keys first, the entry after: a server that reads the entry
        // finds the keys on disk, and a failed key generation leaves no
        // entry behind.
        let (keys, _) = self.store.load_or_create(&id, cluster.key_spec, now)?;
        let lock = self.store.lock()?;
        if self.get(&id)?.is_some() {
            // Another create of the same id got here first; its keys are
            // the ones on disk.
            return Err(AdminError::Taken {
                field: "id",
                message: format!("a cluster with id \"{id}\" already exists"),
            });
        }
        let entry = Entry {
            id: id.clone(),
            settings: settings.clone(),
            created: rfc3339(now),
            recreated: None,
        };
        self.put(&lock, &entry)?;
        self.bump(&lock)?;
        Ok((entry, cluster, keys))
    }

    /// Deletes a cluster created at run time: its entry, then its keys.
    /// Returns the kids removed. A cluster of the config file (`file` names
    /// it) is refused.
    pub fn remove(
        &self,
        id: &str,
        known: &dyn Known,
        file: Option<&Path>,
    ) -> Result<Vec<String>, AdminError> {
        if !is_dns_label(id) {
            return Err(AdminError::Unknown(id.to_owned()));
        }
        let lock = self.store.lock()?;
        if self.get(id)?.is_none() {
            return Err(match known.by_id(id) {
                Some(c) if c.origin == Origin::File => AdminError::FromFile {
                    id: id.to_owned(),
                    file: file.map_or_else(
                        || {
                            "the embedded default configuration (the server runs without --config; \
                         start it with a config file of your own to choose its clusters)"
                                .to_owned()
                        },
                        |f| f.display().to_string(),
                    ),
                },
                _ => AdminError::Unknown(id.to_owned()),
            });
        }
        let path = self.entry_path(id);
        // An entry shadowed by a cluster of the config file under the same
        // id: the keys are that cluster's, and stay.
        let shadowed = known.by_id(id).is_some_and(|c| c.origin == Origin::File);
        let kids = if shadowed {
            Vec::new()
        } else {
            kids_on_disk(self.store, id)?
        };
        self.store.touched(id);
        fs::remove_file(&path).map_err(io_err(&path))?;
        self.remove_marker(id)?;
        if !shadowed {
            remove_keys(self.store, &lock, id)?;
        }
        self.bump(&lock)?;
        Ok(kids)
    }

    /// Gives a cluster new keys at once (the same issuer, a new cluster
    /// behind it): every old key is removed, so no token it signed verifies
    /// any more. Returns the kids removed and the new key set.
    pub fn recreate(
        &self,
        cluster: &ClusterConfig,
        now: SystemTime,
    ) -> Result<(Vec<String>, KeySet), AdminError> {
        let id = cluster.id.as_str();
        if !is_dns_label(id) {
            return Err(AdminError::Unknown(id.to_owned()));
        }
        let lock = self.store.lock()?;
        let kids = match self.store.read_manifest(id) {
            // One manifest write swaps the whole set: a server reading it
            // sees the old keys or the new ones, never none.
            Ok(Some(old)) => {
                let mut manifest = old.clone();
                manifest.keys.clear();
                let at = rfc3339(now);
                for state in [KeyState::Current, KeyState::Next] {
                    let key = self.store.generate_key(&lock, id, cluster.key_spec)?;
                    let alg = key.algorithm();
                    manifest.keys.push(KeyRecord::generated(
                        key.kid(),
                        alg.as_str(),
                        key.bits(),
                        state,
                        &at,
                    ));
                }
                let kids: Vec<String> = old.keys.into_iter().map(|k| k.kid).collect();
                manifest.removed.extend(kids.iter().cloned());
                self.store.write_manifest(&lock, &manifest)?;
                for kid in &kids {
                    self.store.remove_key_file(&lock, &manifest, kid)?;
                }
                kids
            }
            // No manifest (or one that does not read): whatever is there
            // goes, and the cluster starts over.
            _ => {
                let kids = kids_on_disk(self.store, id)?;
                remove_keys(self.store, &lock, id)?;
                kids
            }
        };
        if cluster.origin == Origin::Runtime {
            let mut entry = self
                .get(id)?
                .ok_or_else(|| AdminError::Unknown(id.to_owned()))?;
            entry.recreated = Some(rfc3339(now));
            self.put(&lock, &entry)?;
        }
        // The marker tells servers sharing the keys dir to reread this
        // cluster's keys at once.
        let marker = self.marker_path(id);
        self.store.touched(id);
        write_atomic(&marker, format!("{}\n", rfc3339(now)).as_bytes(), 0o600)
            .map_err(io_err(&marker))?;
        self.bump(&lock)?;
        drop(lock);
        let keys = self
            .store
            .load_or_create(&cluster.id, cluster.key_spec, now)?
            .0;
        Ok((kids, keys))
    }
}

fn taken_id(other: &ClusterConfig) -> AdminError {
    let whose = match other.origin {
        Origin::File => "declared in the config file",
        Origin::Runtime => "created at run time",
    };
    AdminError::Taken {
        field: "id",
        message: format!(
            "a cluster with id \"{}\" already exists ({whose})",
            other.id
        ),
    }
}

fn taken_path(cluster: &ClusterConfig, other: &str) -> AdminError {
    AdminError::Taken {
        field: "issuer",
        message: format!(
            "\"{}\" has the same path as cluster \"{other}\"'s issuer; each issuer needs its \
             own path, since requests are routed by it",
            cluster.issuer
        ),
    }
}

/// The kids whose files a cluster's directory holds.
fn kids_on_disk(store: &KeyStore, id: &str) -> Result<Vec<String>, StoreError> {
    Ok(match store.read_manifest(id) {
        Ok(Some(m)) => m.keys.into_iter().map(|k| k.kid).collect(),
        Ok(None) => Vec::new(),
        Err(_) => store.key_files(id)?,
    })
}

/// The first file in `<keys dir>/<id>` that is not a cluster's (a manifest,
/// key files, a write in progress), if any.
fn foreign_file(store: &KeyStore, id: &str) -> Result<Option<String>, StoreError> {
    let dir = store.cluster_dir(id);
    let names = match fs::read_dir(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for name in names {
        let name = name.map_err(io_err(&dir))?.file_name();
        let name = name.to_string_lossy();
        let ours =
            name == crate::keys::store::MANIFEST || name.ends_with(".pem") || name.starts_with('.');
        if !ours {
            return Ok(Some(name.into_owned()));
        }
    }
    Ok(None)
}

/// Removes a cluster's keys: its directory is renamed out of the way first
/// (one step: a reader sees the whole set or none of it), then deleted.
pub fn remove_keys(store: &KeyStore, _lock: &StoreLock, id: &str) -> Result<(), StoreError> {
    let dir = store.cluster_dir(id);
    // Only a cluster's own directory: a manifest, key files and what a write
    // in progress leaves. Anything else (a token file's directory that
    // happens to bear the name) is not removed.
    match foreign_file(store, id)? {
        Some(name) => {
            return Err(StoreError::Manifest {
                path: dir,
                reason: format!(
                    "holds {name:?}, which is no key file: not a cluster's keys, so nothing \
                     was removed; move it, or choose another cluster id"
                ),
            })
        }
        None if !dir.exists() => return Ok(()),
        None => {}
    }
    store.touched(id);
    let gone = store.root().join(format!(
        ".removed-{id}-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    match fs::rename(&dir, &gone) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&dir)(e)),
    }
    fs::remove_dir_all(&gone).map_err(io_err(&gone))
}

/// The clusters of a config file and a registry together, for the CLI.
pub struct Listed {
    clusters: Vec<ClusterConfig>,
    by_id: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
}

impl Listed {
    pub fn new(clusters: Vec<ClusterConfig>) -> Self {
        let by_id = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        let by_path = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.issuer_path.clone(), i))
            .collect();
        Listed {
            clusters,
            by_id,
            by_path,
        }
    }

    pub fn all(&self) -> &[ClusterConfig] {
        &self.clusters
    }
}

impl Known for Listed {
    fn by_id(&self, id: &str) -> Option<&ClusterConfig> {
        self.by_id.get(id).map(|i| &self.clusters[*i])
    }

    fn by_issuer_path(&self, path: &str) -> Option<&str> {
        self.by_path
            .get(path)
            .map(|i| self.clusters[*i].id.as_str())
    }
}
