//! A working copy of the store in etcd: a keys dir read from etcd, and the
//! changes made to it committed back.
//!
//! The copy remembers, for every item it holds, the etcd revision it was
//! read at (the *baseline*). A commit of a cluster puts the items that
//! changed and deletes the ones gone, in one transaction that first compares
//! every item it touches, and the cluster's manifest and entry, with the
//! baseline: if anyone else changed the cluster since, nothing is written,
//! the cluster is read again from etcd, and the caller is told. Two replicas
//! and the CLI acting at once thus never both take one rotation step, and no
//! key is lost.
//!
//! Every method blocks (files and etcd both): call it off the async workers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use etcdv3client::pb;

use super::client::{self, Etcd, EtcdError};
use super::layout::{self, Item};
use super::seal::{Kek, Keyring, SealError};
use super::workdir::WorkDir;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::keys::registry::Registry;
use crate::keys::store::{KeyStore, StoreError, StoreLock};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the working copy: {0}")]
    Store(#[from] StoreError),
    #[error("the working copy: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Other(String),
}

type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// What a read from etcd or a commit changed in the working copy.
#[derive(Debug, Default)]
pub struct Changed {
    /// Clusters whose files changed.
    pub clusters: BTreeSet<String>,
    /// Whether the registry's files did (its generation moved).
    pub registry: bool,
    /// The clusters whose registry files changed.
    pub registry_ids: BTreeSet<String>,
    /// Keys in etcd that do not open under this process's KEKs (a lenient
    /// read keeps the copy's own file of each), with why.
    pub unopened: Vec<String>,
}

/// Of the clusters a commit was asked for, those whose changes are in etcd
/// now, and those changed meanwhile by someone else: their changes were
/// dropped and the working copy holds etcd's version.
#[derive(Debug, Default)]
pub struct Commit {
    pub committed: Vec<String>,
    pub conflicts: Vec<String>,
    pub changed: Changed,
}

mod commit;

pub struct Mirror {
    pub etcd: Etcd,
    workdir: Mutex<WorkDir>,
    keys: Arc<Keyring>,
    store: KeyStore,
    base: Mutex<HashMap<Item, (i64, Digest)>>,
    /// The etcd revision of the last full read.
    revision: std::sync::atomic::AtomicI64,
    /// Clusters changed in the copy and not yet committed: a full read
    /// leaves them as they are, and a commit takes them out.
    /// Each with the number of its latest mark: a commit takes a mark out
    /// only if no newer one came while it ran.
    dirty: Mutex<BTreeMap<String, u64>>,
    marks: std::sync::atomic::AtomicU64,
    /// One commit at a time (the committer task and the admin API both
    /// commit): two commits of one cluster read the same baseline.
    committing: Mutex<()>,
    /// Dirty clusters whose changes in etcd the watch saw and left out:
    /// re-read once their commit is done.
    behind: Mutex<BTreeSet<String>>,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("etcd", &self.etcd)
            .field("root", &self.store.root())
            .finish()
    }
}

/// A value read from etcd, opened.
struct Read {
    items: BTreeMap<Item, (i64, Vec<u8>)>,
    revision: i64,
    /// With a lenient read: the keys that did not open, and why.
    unopened: Vec<(Item, SealError)>,
    strict: bool,
}

impl Mirror {
    /// A working copy in `workdir`; it holds nothing until
    /// [`pull_all`](Self::pull_all).
    pub fn new(
        etcd: Etcd,
        keys: Arc<Keyring>,
        workdir: WorkDir,
        rt: tokio::runtime::Handle,
    ) -> Result<Mirror, MirrorError> {
        let root = workdir.path().to_owned();
        Ok(Mirror {
            etcd,
            workdir: Mutex::new(workdir),
            keys,
            store: KeyStore::new(root),
            base: Mutex::new(HashMap::new()),
            revision: std::sync::atomic::AtomicI64::new(0),
            dirty: Mutex::new(BTreeMap::new()),
            marks: std::sync::atomic::AtomicU64::new(0),
            committing: Mutex::new(()),
            behind: Mutex::new(BTreeSet::new()),
            rt,
        })
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// Notes that `id` changed in the copy (the key store's observer).
    pub fn mark(&self, id: &str) {
        let n = self.marks.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), n);
    }

    /// The clusters changed and not yet committed.
    pub fn dirty(&self) -> Vec<String> {
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.keys().cloned().collect()
    }

    /// The number of a cluster's latest mark (0: none).
    fn mark_of(&self, id: &str) -> u64 {
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.get(id).copied().unwrap_or(0)
    }

    fn is_dirty(&self, id: &str) -> bool {
        self.mark_of(id) != 0
    }

    /// The etcd revision the last full read was at.
    pub fn revision(&self) -> i64 {
        self.revision.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The KEK that seals.
    pub fn kek(&self) -> &Kek {
        self.keys.sealing()
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn open(&self, item: &Item, value: Vec<u8>) -> Result<Vec<u8>, SealError> {
        match item {
            Item::Key(id, kid) => self.keys.open(id, kid, &value),
            _ => Ok(value),
        }
    }

    fn read_kvs(&self, kvs: Vec<pb::KeyValue>, into: &mut Read) -> Result<(), MirrorError> {
        for kv in kvs {
            let Some(item) = Item::from_key(&self.etcd.prefix, &kv.key) else {
                continue;
            };
            match self.open(&item, kv.value) {
                Ok(clear) => {
                    into.items.insert(item, (kv.mod_revision, clear));
                }
                Err(e) if !into.strict => into.unopened.push((item, e)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Everything under the prefix, opened, at one revision.
    fn fetch_all(&self, strict: bool) -> Result<Read, MirrorError> {
        let (start, end) = layout::prefix_range(&self.etcd.prefix);
        let (kvs, revision) = self.block_on(self.etcd.range_all(start, end))?;
        let mut read = Read {
            items: BTreeMap::new(),
            revision,
            unopened: Vec::new(),
            strict,
        };
        self.read_kvs(kvs, &mut read)?;
        Ok(read)
    }

    /// One cluster's items, at one revision.
    fn fetch_cluster(&self, id: &str) -> Result<Read, MirrorError> {
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: layout::cluster_keys(&self.etcd.prefix, id)
                .into_iter()
                .map(|(k, e)| client::get(k, e))
                .collect(),
            failure: Vec::new(),
        };
        let reply = self.block_on(self.etcd.txn(request))?;
        let mut read = Read {
            items: BTreeMap::new(),
            revision: reply.header.map_or(0, |h| h.revision),
            unopened: Vec::new(),
            strict: true,
        };
        for r in reply.responses {
            if let Some(pb::response_op::Response::ResponseRange(range)) = r.response {
                self.read_kvs(range.kvs, &mut read)?;
            }
        }
        Ok(read)
    }

    /// Reads everything from etcd into the working copy: the files that
    /// differ are written, the ones etcd no longer holds removed. Drops any
    /// change not committed: commit first.
    pub fn pull_all(&self) -> Result<Changed, MirrorError> {
        self.pull(true)
    }

    /// [`pull_all`](Self::pull_all), but a key that does not open (sealed
    /// under a KEK this process lacks) is reported and its file in the copy
    /// kept, instead of failing the whole read: a running replica goes on
    /// following everything else.
    pub fn pull_all_lenient(&self) -> Result<Changed, MirrorError> {
        self.pull(false)
    }

    fn pull(&self, strict: bool) -> Result<Changed, MirrorError> {
        let mut read = self.fetch_all(strict)?;
        let lock = self.store.lock()?;
        // A cluster changed here and not committed yet keeps its files and
        // its baseline: its commit then finds out whether etcd moved on.
        let keep: BTreeSet<String> = self.dirty().into_iter().collect();
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keep.iter().cloned());
        read.items.retain(|i, _| !keep.contains(i.cluster()));
        let mut local = layout::read_all(self.root())?;
        local.retain(|i, _| !keep.contains(i.cluster()));
        let mut changed = Changed::default();
        let mut unopened = BTreeSet::new();
        for (item, why) in std::mem::take(&mut read.unopened) {
            // Neither overwritten nor removed: the copy's file and its
            // baseline stay as they were.
            local.remove(&item);
            changed.unopened.push(format!("{}: {why}", item.rel()));
            unopened.insert(item);
        }
        let gone: Vec<Item> = local
            .keys()
            .filter(|i| !read.items.contains_key(i))
            .cloned()
            .collect();
        self.write_items(&lock, &read, &local, gone, &mut changed)?;
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        base.retain(|i, _| keep.contains(i.cluster()) || unopened.contains(i));
        for (i, (rev, bytes)) in &read.items {
            base.insert(i.clone(), (*rev, digest(bytes)));
        }
        drop(base);
        self.revision
            .store(read.revision, std::sync::atomic::Ordering::Release);
        self.finish(&lock, &changed)?;
        Ok(changed)
    }

    /// Puts `read`'s items into the working copy where they differ from
    /// `local`, and removes `gone`, in the order a reader can follow.
    fn write_items(
        &self,
        _lock: &StoreLock,
        read: &Read,
        local: &BTreeMap<Item, Vec<u8>>,
        mut gone: Vec<Item>,
        changed: &mut Changed,
    ) -> Result<(), MirrorError> {
        let mut puts: Vec<(&Item, &Vec<u8>)> = read
            .items
            .iter()
            .filter(|(i, (_, bytes))| local.get(*i) != Some(bytes))
            .map(|(i, (_, bytes))| (i, bytes))
            .collect();
        puts.sort_by_key(|(i, _)| i.rank());
        for (item, bytes) in puts {
            self.write_file(item, bytes)?;
            note(changed, item);
        }
        gone.sort_by_key(|i| std::cmp::Reverse(i.rank()));
        for item in gone {
            self.remove_file(&item)?;
            note(changed, &item);
        }
        Ok(())
    }

    fn write_file(&self, item: &Item, bytes: &[u8]) -> io::Result<()> {
        let path = self.root().join(item.rel());
        if let Some(dir) = path.parent() {
            ensure_dir(dir, 0o700)?;
        }
        write_atomic(&path, bytes, 0o600)
    }

    fn remove_file(&self, item: &Item) -> io::Result<()> {
        let path = self.root().join(item.rel());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if matches!(item, Item::Key(..) | Item::Manifest(_)) {
            // The cluster's directory goes with its last file.
            let _ = fs::remove_dir(self.root().join(item.cluster()));
        }
        Ok(())
    }

    /// Moves the registry's generation when its files changed, so servers
    /// following it look.
    fn finish(&self, lock: &StoreLock, changed: &Changed) -> Result<(), MirrorError> {
        if changed.registry {
            Registry::new(&self.store).bump(lock)?;
        }
        Ok(())
    }

    /// Applies what a watch saw: each item newer than the copy's is written
    /// (or removed), in an order a reader can follow.
    pub fn apply(&self, events: Vec<pb::Event>) -> Result<Changed, MirrorError> {
        let lock = self.store.lock()?;
        let mut changed = Changed::default();
        let mut puts = Vec::new();
        let mut gone = Vec::new();
        {
            let base = self.base.lock().unwrap_or_else(|e| e.into_inner());
            let dirty: BTreeSet<String> = self.dirty().into_iter().collect();
            let mut behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                let Some(kv) = event.kv else { continue };
                let Some(item) = Item::from_key(&self.etcd.prefix, &kv.key) else {
                    continue;
                };
                if base
                    .get(&item)
                    .is_some_and(|(rev, _)| *rev >= kv.mod_revision)
                {
                    continue; // this copy's own commit, or older than what it has
                }
                if dirty.contains(item.cluster()) {
                    // Changed here and not committed: its commit compares
                    // against what it was read at, and fails; then it is
                    // read again whole.
                    behind.insert(item.cluster().to_owned());
                    continue;
                }
                if event.r#type == pb::event::EventType::Delete as i32 {
                    gone.push((item, kv.mod_revision));
                } else {
                    puts.push((item, kv.mod_revision, kv.value));
                }
            }
        }
        let mut opened = Vec::with_capacity(puts.len());
        for (item, rev, value) in puts {
            match self.open(&item, value) {
                Ok(clear) => opened.push((item, rev, clear)),
                Err(e) => {
                    changed.unopened.push(format!("{}: {e}", item.rel()));
                    tracing::error!(item = item.rel(), error = %e, "a key from etcd does not open; the copy keeps what it had");
                }
            }
        }
        opened.sort_by_key(|(i, _, _)| i.rank());
        gone.sort_by_key(|(i, _)| std::cmp::Reverse(i.rank()));
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        for (item, rev, clear) in opened {
            self.write_file(&item, &clear)?;
            note(&mut changed, &item);
            base.insert(item, (rev, digest(&clear)));
        }
        for (item, _) in gone {
            self.remove_file(&item)?;
            note(&mut changed, &item);
            base.remove(&item);
        }
        drop(base);
        self.finish(&lock, &changed)?;
        Ok(changed)
    }

    /// The ids of every cluster the copy or its baseline holds anything of.
    pub fn all_ids(&self) -> Result<Vec<String>, MirrorError> {
        let mut ids: BTreeSet<String> = layout::cluster_ids(self.root())?.into_iter().collect();
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        ids.extend(base.keys().map(|i| i.cluster().to_owned()));
        Ok(ids.into_iter().collect())
    }
}

fn note(changed: &mut Changed, item: &Item) {
    changed.clusters.insert(item.cluster().to_owned());
    changed.registry |= item.in_registry();
    if item.in_registry() {
        changed.registry_ids.insert(item.cluster().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EtcdStoreConfig;

    /// A copy whose etcd is never called (the client connects lazily).
    fn mirror(dir: &Path, rt: &tokio::runtime::Runtime) -> Mirror {
        let config = EtcdStoreConfig {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/wi".into(),
            kek_file: dir.join("kek"),
            extra_kek_files: Vec::new(),
            tls: None,
            username: None,
            password_file: None,
            lease_ttl: std::time::Duration::from_secs(2),
            cache_dir: None,
        };
        let kek = Arc::new(Keyring::new(
            Kek::generate(&dir.join("kek")).unwrap(),
            Vec::new(),
        ));
        let etcd = rt.block_on(Etcd::connect(&config)).unwrap();
        let workdir = crate::etcd::workdir::private_dir(Some(dir)).unwrap();
        Mirror::new(etcd, kek, workdir, rt.handle().clone()).unwrap()
    }

    fn put(m: &Mirror, item: &Item, rev: i64, clear: &[u8]) -> pb::Event {
        let value = match item {
            Item::Key(id, kid) => m.keys.seal(id, kid, clear).unwrap(),
            _ => clear.to_vec(),
        };
        pb::Event {
            r#type: pb::event::EventType::Put as i32,
            kv: Some(pb::KeyValue {
                key: item.key("/wi").into_bytes(),
                mod_revision: rev,
                value,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_watched_change_is_written_opened_and_an_older_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = mirror(dir.path(), &rt);
        let key = Item::Key("demo".into(), "k1".into());
        let manifest = Item::Manifest("demo".into());
        let entry = Item::Entry("demo".into());
        let changed = m
            .apply(vec![
                put(&m, &entry, 5, b"{}"),
                put(&m, &manifest, 5, b"{\"m\":1}"),
                put(&m, &key, 5, b"PEM"),
            ])
            .unwrap();
        assert!(changed.registry && changed.clusters.contains("demo"));
        assert_eq!(fs::read(m.root().join(key.rel())).unwrap(), b"PEM");
        assert_eq!(
            fs::read(m.root().join(manifest.rel())).unwrap(),
            b"{\"m\":1}"
        );
        let generation = Registry::new(&m.store).generation().unwrap();
        assert_eq!(generation, 1);

        // An event at or below the revision the copy holds changes nothing.
        let stale = m.apply(vec![put(&m, &manifest, 4, b"old")]).unwrap();
        assert!(stale.clusters.is_empty());
        assert_eq!(
            fs::read(m.root().join(manifest.rel())).unwrap(),
            b"{\"m\":1}"
        );

        // Nothing was changed here, so nothing is to be committed.
        assert!(m.uncommitted().unwrap().is_empty());

        // A key that does not open (moved under another kid) is not written.
        let mut moved = put(&m, &key, 6, b"OTHER");
        moved.kv.as_mut().unwrap().key = Item::Key("demo".into(), "k2".into())
            .key("/wi")
            .into_bytes();
        m.apply(vec![moved]).unwrap();
        assert!(!m.root().join("demo/k2.pem").exists());

        // A delete removes the file, the registry moves again.
        let mut gone = put(&m, &entry, 7, b"");
        gone.r#type = pb::event::EventType::Delete as i32;
        m.apply(vec![gone]).unwrap();
        assert!(!m.root().join(entry.rel()).exists());
        assert_eq!(Registry::new(&m.store).generation().unwrap(), 2);
    }

    #[test]
    fn the_watch_leaves_a_cluster_changed_here_alone_and_its_commit_reads_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = mirror(dir.path(), &rt);
        let manifest = Item::Manifest("demo".into());
        m.apply(vec![put(&m, &manifest, 5, b"m1")]).unwrap();
        // Changed here, not committed yet; meanwhile etcd moves on.
        fs::write(m.root().join(manifest.rel()), b"mine").unwrap();
        m.mark("demo");
        let changed = m.apply(vec![put(&m, &manifest, 6, b"theirs")]).unwrap();
        assert!(changed.clusters.is_empty());
        assert_eq!(fs::read(m.root().join(manifest.rel())).unwrap(), b"mine");
        // The baseline stayed at what the change was made on: its commit
        // compares against revision 5, so etcd (at 6) refuses it.
        let base = m.base.lock().unwrap().clone();
        assert_eq!(base[&manifest].0, 5);
        assert!(m.was_behind("demo"));
    }

    #[test]
    fn a_commit_puts_what_changed_sealed_deletes_what_went_and_compares_the_revisions_read() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = mirror(dir.path(), &rt);
        let k1 = Item::Key("demo".into(), "k1".into());
        let manifest = Item::Manifest("demo".into());
        m.apply(vec![put(&m, &manifest, 5, b"m1"), put(&m, &k1, 5, b"PEM1")])
            .unwrap();
        // A rotation in the copy: a new key, a new manifest, k1 removed.
        let k2 = Item::Key("demo".into(), "k2".into());
        fs::write(m.root().join(k2.rel()), b"PEM2").unwrap();
        fs::write(m.root().join(manifest.rel()), b"m2").unwrap();
        fs::remove_file(m.root().join(k1.rel())).unwrap();
        assert_eq!(m.uncommitted().unwrap(), vec!["demo".to_owned()]);

        let base = m.base.lock().unwrap().clone();
        let local = layout::read_cluster(m.root(), "demo").unwrap();
        let (txn, puts, dels) = m.commit_request("demo", &local, &base).unwrap().unwrap();
        assert_eq!(puts, vec![k2.clone(), manifest.clone()]);
        assert_eq!(dels, vec![k1.clone()]);
        let compared: BTreeMap<Vec<u8>, i64> = txn
            .compare
            .iter()
            .map(|c| match c.target_union {
                Some(pb::compare::TargetUnion::ModRevision(r)) => (c.key.clone(), r),
                _ => panic!("{c:?}"),
            })
            .collect();
        assert_eq!(compared[manifest.key("/wi").as_bytes()], 5);
        assert_eq!(compared[k1.key("/wi").as_bytes()], 5);
        assert_eq!(
            compared[k2.key("/wi").as_bytes()],
            0,
            "new: must not exist yet"
        );
        assert_eq!(
            compared[Item::Entry("demo".into()).key("/wi").as_bytes()],
            0
        );
        for op in &txn.success {
            if let Some(pb::request_op::Request::RequestPut(p)) = &op.request {
                if p.key == k2.key("/wi").into_bytes() {
                    assert!(!p.value.windows(4).any(|w| w == b"PEM2"), "sealed");
                    assert_eq!(m.keys.open("demo", "k2", &p.value).unwrap(), b"PEM2");
                }
            }
        }
    }
}
