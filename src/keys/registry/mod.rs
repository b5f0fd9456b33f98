//! The clusters created at run time (the admin API, `clusters add`), kept in
//! the keys dir beside their keys, and the operations on clusters that the
//! admin API and the `clusters` command share.
//!
//! ```text
//! <keys dir>/.clusters/<id>.json    one cluster's settings as given, mode 0600
//! <keys dir>/.clusters/generation   a counter every change moves
//! <keys dir>/.clusters/<id>.recreated  when the cluster last got new keys
//! ```
//!
//! ".clusters" is not a DNS label, so no cluster's own directory is named so.
//! Servers sharing the keys dir read the one small generation file to learn
//! that something changed, then the entries. Every change is made under the
//! keys dir's lock. A cluster is always created with keys of its own: keys
//! found on disk for an id that no cluster holds (a deleted cluster's, left
//! by a crash) are removed first, never reused.
//!
//! `ops` holds the operations (create, remove, recreate) and their
//! refusals, `view` what `show` prints; this file the storage and its
//! scans.
//!
//! Imports `config` (a cluster's settings are checked by its rules) and the
//! store; nothing above `keys`.

mod ops;
mod view;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::store::{io_err, KeyStore, Stamp, StoreError, StoreLock};
use crate::config::{joined, runtime_cluster, ClusterConfig};
use crate::fsutil::{ensure_dir, write_atomic};
use crate::k8s::names::is_dns_label;

pub use self::ops::{remove_keys, AdminError, Known, Listed};
pub use self::view::{entry_file, View, ViewKey, ViewTransition};

const DIR: &str = ".clusters";
const GENERATION: &str = "generation";
/// The suffix of the marker a recreate leaves: `<id>.recreated`.
const MARKER: &str = ".recreated";

/// The registry's files as a server last saw them, to read only what
/// changed.
#[derive(Debug, Default)]
pub struct Seen {
    stamps: HashMap<String, Stamp>,
    scanned: bool,
}

/// What [`Registry::scan`] found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Every cluster the registry holds.
    pub ids: Vec<String>,
    /// The entries new or changed since the last scan.
    pub changed: Vec<Entry>,
    /// Entries that could not be read, with why.
    pub unreadable: Vec<(String, String)>,
    /// Clusters recreated since the last scan (their keys are new).
    pub recreated: Vec<String>,
    /// Of the clusters a targeted scan named, those with no entry.
    pub absent: Vec<String>,
}

impl Seen {
    /// Forgets what was seen of a cluster's entry: the next scan reads it
    /// again (to retry a cluster that could not be served).
    pub fn forget(&mut self, id: &str) {
        self.stamps.remove(&format!("{id}.json"));
    }
}

/// One cluster created at run time, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    /// The fields of its `[[clusters]]` table as given, checked again by the
    /// config's rules whenever it is loaded.
    pub settings: serde_json::Value,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it was last recreated with new keys, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated: Option<String>,
}

/// The registry's clusters whose settings check out, and the ids of those
/// whose settings do not, with the reason.
pub type Loaded = (Vec<(Entry, ClusterConfig)>, Vec<(String, String)>);

/// The registry of a keys dir.
pub struct Registry<'a> {
    store: &'a KeyStore,
}

impl<'a> Registry<'a> {
    pub fn new(store: &'a KeyStore) -> Self {
        Registry { store }
    }

    fn dir(&self) -> PathBuf {
        self.store.root().join(DIR)
    }

    fn entry_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.json"))
    }

    /// The counter every change moves (0 before the first change). One
    /// small read: servers poll it.
    pub fn generation(&self) -> Result<u64, StoreError> {
        let path = self.dir().join(GENERATION);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| StoreError::Manifest {
                path,
                reason: format!("{text:?} is not a generation number"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Moves the generation on: servers sharing the keys dir reread the
    /// registry and the key sets.
    pub fn bump(&self, _lock: &StoreLock) -> Result<u64, StoreError> {
        let next = self.generation()? + 1;
        let dir = self.dir();
        ensure_dir(&dir, 0o700).map_err(io_err(&dir))?;
        let path = dir.join(GENERATION);
        write_atomic(&path, format!("{next}\n").as_bytes(), 0o600).map_err(io_err(&path))?;
        Ok(next)
    }

    /// Every entry, by id. An entry that cannot be read is an error naming
    /// its file.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let dir = self.dir();
        let names = match fs::read_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut entries = Vec::new();
        for name in names {
            let name = name.map_err(io_err(&dir))?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if id.starts_with('.') {
                continue; // a write in progress
            }
            if let Some(entry) = self.get(id)? {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    /// The entry of a cluster created at run time (`None` for an id that is
    /// no DNS label: no path is ever built from one).
    pub fn get(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        if !is_dns_label(id) {
            return Ok(None);
        }
        let path = self.entry_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| StoreError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if entry.id != id {
            return Err(StoreError::Manifest {
                path,
                reason: format!("holds cluster \"{}\", not \"{id}\"", entry.id),
            });
        }
        Ok(Some(entry))
    }

    /// The marker a recreate writes (for a cluster of the config file too).
    fn marker_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}{MARKER}"))
    }

    fn remove_marker(&self, id: &str) -> Result<(), StoreError> {
        let path = self.marker_path(id);
        self.store.touched(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// What changed in the registry since `seen` was last updated: every id
    /// it holds, the entries new or changed (parsed), and the clusters
    /// recreated since. One directory read and a stat per file; only what
    /// changed is read. The first scan (an empty `seen`) reports every entry
    /// and no recreate.
    pub fn scan(&self, seen: &mut Seen) -> Result<Scanned, StoreError> {
        let dir = self.dir();
        let names = match fs::read_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                seen.stamps.clear();
                seen.scanned = true;
                return Ok(Scanned::default());
            }
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let first = !seen.scanned;
        let mut out = Scanned::default();
        let mut stamps = HashMap::with_capacity(seen.stamps.len());
        for name in names {
            let name = name.map_err(io_err(&dir))?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue; // a write in progress
            }
            let (id, marker) = match (name.strip_suffix(".json"), name.strip_suffix(MARKER)) {
                (Some(id), _) => (id, false),
                (_, Some(id)) => (id, true),
                _ => continue,
            };
            let path = dir.join(name);
            let Some(stamp) = Stamp::read(&path).map_err(io_err(&path))? else {
                continue; // removed meanwhile
            };
            let changed = seen.stamps.get(name) != Some(&stamp);
            stamps.insert(name.to_owned(), stamp);
            if marker {
                if changed && !first {
                    out.recreated.push(id.to_owned());
                }
                continue;
            }
            out.ids.push(id.to_owned());
            if changed {
                match self.get(id) {
                    Ok(Some(entry)) => out.changed.push(entry),
                    Ok(None) => {}
                    Err(e) => out.unreadable.push((id.to_owned(), e.to_string())),
                }
            }
        }
        seen.stamps = stamps;
        seen.scanned = true;
        Ok(out)
    }

    /// As [`Registry::scan`], for these clusters' files only (a change made
    /// here): their entries if new or changed, `absent` for those with none,
    /// `recreated` for those recreated. `ids` lists the named ones present.
    pub fn scan_ids(&self, seen: &mut Seen, ids: &[String]) -> Result<Scanned, StoreError> {
        let mut out = Scanned::default();
        for id in ids.iter().filter(|id| is_dns_label(id)) {
            let name = format!("{id}.json");
            let path = self.dir().join(&name);
            match Stamp::read(&path).map_err(io_err(&path))? {
                None => {
                    seen.stamps.remove(&name);
                    out.absent.push(id.clone());
                }
                Some(stamp) => {
                    out.ids.push(id.clone());
                    if seen.stamps.insert(name, stamp) != Some(stamp) {
                        match self.get(id) {
                            Ok(Some(entry)) => out.changed.push(entry),
                            Ok(None) => out.absent.push(id.clone()),
                            Err(e) => out.unreadable.push((id.clone(), e.to_string())),
                        }
                    }
                }
            }
            let name = format!("{id}{MARKER}");
            let marker = self.dir().join(&name);
            match Stamp::read(&marker).map_err(io_err(&marker))? {
                Some(stamp) => {
                    if seen.stamps.insert(name, stamp) != Some(stamp) {
                        out.recreated.push(id.clone());
                    }
                }
                None => {
                    seen.stamps.remove(&name);
                }
            }
        }
        Ok(out)
    }

    fn put(&self, _lock: &StoreLock, entry: &Entry) -> Result<(), StoreError> {
        let dir = self.dir();
        ensure_dir(&dir, 0o700).map_err(io_err(&dir))?;
        let path = self.entry_path(&entry.id);
        self.store.touched(&entry.id);
        let mut bytes = serde_json::to_vec_pretty(entry).map_err(|e| StoreError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(io_err(&path))
    }

    /// Every cluster of the registry with its checked settings; an entry
    /// that no longer validates (a `public_url` changed under an issuer it
    /// needs, a hand edit) is returned as a problem and left out.
    pub fn clusters(&self, public_url: &str) -> Result<Loaded, StoreError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in self.list()? {
            match runtime_cluster(&entry.settings, public_url) {
                Ok(c) => good.push((entry, c)),
                Err(problems) => bad.push((entry.id.clone(), joined(&problems))),
            }
        }
        Ok((good, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;
    use serde_json::json;
    use std::path::Path;
    use std::time::SystemTime;

    const BASE: &str = "https://oidc.example.com";

    fn listed(store: &KeyStore) -> Listed {
        let registry = Registry::new(store);
        Listed::new(
            registry
                .clusters(BASE)
                .unwrap()
                .0
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        )
    }

    #[test]
    fn create_stores_the_cluster_with_new_keys_and_refuses_what_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let registry = Registry::new(&store);
        let now = SystemTime::now();
        assert_eq!(registry.generation().unwrap(), 0);
        let (entry, c, keys) = registry
            .create(
                &json!({"id": "ws-1", "algorithm": "ES256"}),
                BASE,
                &listed(&store),
                now,
            )
            .unwrap();
        assert_eq!(entry.id, "ws-1");
        assert_eq!(c.origin, Origin::Runtime);
        assert_eq!(c.issuer, "https://oidc.example.com/c/ws-1");
        assert!(!keys.keys().is_empty());
        assert!(registry.generation().unwrap() > 0);

        let again = registry
            .create(
                &json!({"id": "ws-1", "algorithm": "ES256"}),
                BASE,
                &listed(&store),
                now,
            )
            .unwrap_err();
        assert!(
            matches!(again, AdminError::Taken { field: "id", .. }),
            "{again}"
        );
        let path = registry
            .create(
                &json!({"id": "ws-2", "issuer": "https://oidc.example.com/c/ws-1"}),
                BASE,
                &listed(&store),
                now,
            )
            .unwrap_err();
        assert!(
            matches!(
                path,
                AdminError::Taken {
                    field: "issuer",
                    ..
                }
            ),
            "{path}"
        );
        assert!(path.to_string().contains("\"ws-1\""), "{path}");
        let bad = registry
            .create(&json!({"id": "WS_3"}), BASE, &listed(&store), now)
            .unwrap_err();
        assert_eq!(bad.field(), Some("id"));
    }

    #[test]
    fn remove_and_recreate_leave_no_old_key_and_a_new_cluster_never_inherits_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let registry = Registry::new(&store);
        let now = SystemTime::now();
        let settings = json!({"id": "ws-1", "algorithm": "ES256"});
        let (_, c, first) = registry
            .create(&settings, BASE, &listed(&store), now)
            .unwrap();
        let old: Vec<String> = first.keys().iter().map(|k| k.record.kid.clone()).collect();

        let mut seen = Seen::default();
        registry.scan(&mut seen).unwrap();
        let (gone, second) = registry.recreate(&c, now).unwrap();
        assert_eq!(gone, old);
        assert!(second.keys().iter().all(|k| !old.contains(&k.record.kid)));
        let scanned = registry.scan(&mut seen).unwrap();
        assert_eq!(scanned.recreated, vec!["ws-1".to_owned()]);
        assert!(registry.get("ws-1").unwrap().unwrap().recreated.is_some());

        let removed = registry.remove("ws-1", &listed(&store), None).unwrap();
        assert_eq!(
            removed,
            second
                .keys()
                .iter()
                .map(|k| k.record.kid.clone())
                .collect::<Vec<_>>()
        );
        assert!(!store.cluster_dir("ws-1").exists());
        let scanned = registry.scan(&mut seen).unwrap();
        assert!(scanned.ids.is_empty());
        assert!(matches!(
            registry.remove("ws-1", &listed(&store), None).unwrap_err(),
            AdminError::Unknown(_)
        ));
        // No path is built from an id that is no DNS label.
        std::fs::write(dir.path().join("outside.json"), "{}").unwrap();
        for id in ["../outside", "..", "a/b"] {
            assert!(matches!(
                registry.remove(id, &listed(&store), None).unwrap_err(),
                AdminError::Unknown(_)
            ));
            assert!(registry.get(id).unwrap().is_none());
        }
        assert!(dir.path().join("outside.json").exists());

        // Keys left under the id (a crash between the steps) are not reused.
        let (stale, _) = store
            .load_or_create("ws-1", crate::config::KeySpec::P256, now)
            .unwrap();
        let (_, _, fresh) = registry
            .create(&settings, BASE, &listed(&store), now)
            .unwrap();
        let stale = stale.current().kid().to_owned();
        assert!(fresh.keys().iter().all(|k| k.record.kid != stale));
    }

    #[test]
    fn a_forgotten_entry_is_read_again_by_the_next_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let registry = Registry::new(&store);
        let settings = json!({"id": "ws-1", "algorithm": "ES256"});
        registry
            .create(&settings, BASE, &listed(&store), SystemTime::now())
            .unwrap();
        let mut seen = Seen::default();
        assert_eq!(registry.scan(&mut seen).unwrap().changed.len(), 1);
        assert!(registry.scan(&mut seen).unwrap().changed.is_empty());
        seen.forget("ws-1");
        let again = registry.scan(&mut seen).unwrap();
        assert_eq!(again.changed.len(), 1);
        assert_eq!(again.changed[0].id, "ws-1");
        assert!(registry.scan(&mut seen).unwrap().changed.is_empty());
    }

    #[test]
    fn a_config_cluster_is_not_removed_and_the_message_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let mut c = runtime_cluster(&json!({"id": "base"}), BASE).unwrap();
        c.origin = Origin::File;
        let known = Listed::new(vec![c]);
        let err = Registry::new(&store)
            .remove("base", &known, Some(Path::new("/etc/wi.toml")))
            .unwrap_err();
        assert!(matches!(err, AdminError::FromFile { .. }));
        assert!(err.to_string().contains("/etc/wi.toml"), "{err}");
    }

    #[test]
    fn a_directory_that_holds_more_than_keys_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        std::fs::write(dir.path().join("tokens/ci.token"), "secret\n").unwrap();
        let err = Registry::new(&store)
            .create(
                &json!({"id": "tokens"}),
                BASE,
                &listed(&store),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(
            matches!(err, AdminError::Taken { field: "id", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ci.token"), "{err}");
        assert!(dir.path().join("tokens/ci.token").exists());
        assert!(Registry::new(&store).get("tokens").unwrap().is_none());
    }

    #[test]
    fn a_scan_reads_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let registry = Registry::new(&store);
        let now = SystemTime::now();
        let mut seen = Seen::default();
        assert!(registry.scan(&mut seen).unwrap().ids.is_empty());
        for id in ["a", "b"] {
            registry
                .create(
                    &json!({"id": id, "algorithm": "ES256"}),
                    BASE,
                    &listed(&store),
                    now,
                )
                .unwrap();
        }
        let scanned = registry.scan(&mut seen).unwrap();
        assert_eq!(scanned.changed.len(), 2);
        assert!(scanned.recreated.is_empty());
        registry
            .create(
                &json!({"id": "c", "algorithm": "ES256"}),
                BASE,
                &listed(&store),
                now,
            )
            .unwrap();
        let scanned = registry.scan(&mut seen).unwrap();
        assert_eq!(scanned.ids.len(), 3);
        assert_eq!(
            scanned
                .changed
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
    }
}
