//! Committing a working copy's changes to etcd (one transaction per
//! cluster, comparing the revisions read), and the moves that write whole
//! clusters or re-seal keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use etcdv3client::pb;

use super::{digest, note, Changed, Commit, Digest, Mirror, MirrorError};
use crate::etcd::client::{self, mod_revision_is};
use crate::etcd::layout::{self, Item};
use crate::etcd::seal::Kek;
use crate::keys::store::StoreLock;

impl Mirror {
    /// Commits the named clusters' changes, one transaction each. Etcd being
    /// unreachable is an error (nothing more is tried); a cluster changed
    /// meanwhile by someone else is a conflict, re-read from etcd.
    pub fn commit(&self, ids: &[String]) -> Result<Commit, MirrorError> {
        if !self
            .workdir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .intact()
        {
            return self.repair(ids);
        }
        let mut outcome = Commit::default();
        for id in ids {
            let mut changed = Changed::default();
            match self.commit_one(id, &mut changed)? {
                Some(true) => outcome.committed.push(id.clone()),
                Some(false) => outcome.conflicts.push(id.clone()),
                None => {}
            }
            if changed.registry {
                let lock = self.store.lock()?;
                self.finish(&lock, &changed)?;
            }
            outcome.changed.clusters.extend(changed.clusters);
            outcome.changed.registry |= changed.registry;
            outcome.changed.registry_ids.extend(changed.registry_ids);
        }
        Ok(outcome)
    }

    /// Commits one cluster: `Some(true)` committed, `Some(false)` a
    /// conflict (etcd's version is in the copy now, unless a newer change
    /// here is still to commit), `None` nothing to commit.
    ///
    /// What to send is read under the copy's lock, so a change under way is
    /// finished first; the transaction runs without it, so the watch's
    /// writes and other clusters' steps go on meanwhile (a rotation pass's
    /// heartbeat marks every cluster at once). A change made here while the
    /// transaction ran keeps its own mark, and is committed next.
    fn commit_one(&self, id: &str, changed: &mut Changed) -> Result<Option<bool>, MirrorError> {
        let _one = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        let (mark, local, request) = {
            let _lock = self.store.lock()?;
            let mark = self.mark_of(id);
            let local = layout::read_cluster(self.root(), id)?;
            let base = self.base.lock().unwrap_or_else(|e| e.into_inner());
            let request = self.commit_request(id, &local, &base)?;
            drop(base);
            (mark, local, request)
        };
        let Some((request, puts, dels)) = request else {
            let lock = self.store.lock()?;
            self.clean(id, mark);
            if !self.is_dirty(id) && self.was_behind(id) {
                let now = layout::read_cluster(self.root(), id)?;
                self.reread(&lock, id, &now, changed)?;
            }
            return Ok(None);
        };
        let reply = self.block_on(self.etcd.txn(request))?;
        let lock = self.store.lock()?;
        if reply.succeeded {
            let rev = reply.header.map_or(0, |h| h.revision);
            let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
            for item in puts {
                let d = digest(&local[&item]);
                base.insert(item, (rev, d));
            }
            for item in dels {
                base.remove(&item);
            }
            drop(base);
            self.clean(id, mark);
            if !self.is_dirty(id) && self.was_behind(id) {
                let now = layout::read_cluster(self.root(), id)?;
                self.reread(&lock, id, &now, changed)?;
            }
            return Ok(Some(true));
        }
        // Someone else changed it first: theirs stands, ours is dropped.
        self.clean(id, mark);
        if self.is_dirty(id) {
            // A newer change here fails the same compare, then re-reads.
            self.behind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned());
        } else {
            self.was_behind(id);
            let now = layout::read_cluster(self.root(), id)?;
            self.reread(&lock, id, &now, changed)?;
        }
        Ok(Some(false))
    }

    /// The copy was removed or replaced under this process: nothing of it is
    /// committed (it could hold new keys made for clusters whose files went
    /// missing); it is made again and read whole from etcd.
    fn repair(&self, ids: &[String]) -> Result<Commit, MirrorError> {
        tracing::error!(
            path = %self.root().display(),
            "the working copy was removed or replaced under this process: nothing is committed \
             from it, and it is read again from etcd"
        );
        self.workdir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renew()?;
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let changed = self.pull_all()?;
        Ok(Commit {
            committed: Vec::new(),
            conflicts: ids.to_vec(),
            changed,
        })
    }

    /// Replaces a cluster's files and baseline with etcd's version.
    fn reread(
        &self,
        lock: &StoreLock,
        id: &str,
        local: &BTreeMap<Item, Vec<u8>>,
        changed: &mut Changed,
    ) -> Result<(), MirrorError> {
        let read = self.fetch_cluster(id)?;
        let gone: Vec<Item> = local
            .keys()
            .filter(|i| !read.items.contains_key(i))
            .cloned()
            .collect();
        self.write_items(lock, &read, local, gone, changed)?;
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        base.retain(|i, _| i.cluster() != id);
        for (item, (rev, bytes)) in &read.items {
            base.insert(item.clone(), (*rev, digest(bytes)));
        }
        Ok(())
    }

    /// Whether the watch left changes of `id` out while it was dirty
    /// (forgotten once asked).
    pub(super) fn was_behind(&self, id: &str) -> bool {
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Takes out the mark of `id` if it is still the one numbered `mark`.
    fn clean(&self, id: &str, mark: u64) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if dirty.get(id) == Some(&mark) {
            dirty.remove(id);
        }
    }

    /// The transaction that commits one cluster's changes, with the items
    /// it puts and deletes; `None` when nothing changed.
    #[allow(clippy::type_complexity)]
    pub(super) fn commit_request(
        &self,
        id: &str,
        local: &BTreeMap<Item, Vec<u8>>,
        base: &HashMap<Item, (i64, Digest)>,
    ) -> Result<Option<(pb::TxnRequest, Vec<Item>, Vec<Item>)>, MirrorError> {
        let prefix = &self.etcd.prefix;
        let known: Vec<(&Item, &(i64, Digest))> =
            base.iter().filter(|(i, _)| i.cluster() == id).collect();
        let mut ops = Vec::new();
        let mut puts = Vec::new();
        let mut dels = Vec::new();
        let mut touched: BTreeSet<Item> = BTreeSet::new();
        for (item, bytes) in local {
            if base.get(item).is_some_and(|(_, d)| *d == digest(bytes)) {
                continue;
            }
            let value = match item {
                Item::Key(id, kid) => self.keys.seal(id, kid, bytes)?,
                _ => bytes.clone(),
            };
            ops.push(client::put(item.key(prefix).into_bytes(), value, 0));
            puts.push(item.clone());
            touched.insert(item.clone());
        }
        for (item, _) in &known {
            if !local.contains_key(*item) {
                ops.push(client::delete(item.key(prefix).into_bytes()));
                dels.push((*item).clone());
                touched.insert((*item).clone());
            }
        }
        if ops.is_empty() {
            return Ok(None);
        }
        touched.insert(Item::Manifest(id.into()));
        touched.insert(Item::Entry(id.into()));
        let compare = touched
            .iter()
            .map(|item| {
                let rev = base.get(item).map_or(0, |(rev, _)| *rev);
                mod_revision_is(item.key(prefix).into_bytes(), rev)
            })
            .collect();
        Ok(Some((
            pb::TxnRequest {
                compare,
                success: ops,
                failure: Vec::new(),
            },
            puts,
            dels,
        )))
    }

    /// Writes items into the working copy as they are (moving clusters in
    /// from a keys dir); commit them after.
    pub fn put_local(&self, items: &BTreeMap<Item, Vec<u8>>) -> Result<(), MirrorError> {
        let lock = self.store.lock()?;
        let mut changed = Changed::default();
        let mut sorted: Vec<_> = items.iter().collect();
        sorted.sort_by_key(|(i, _)| i.rank());
        for (item, bytes) in sorted {
            self.write_file(item, bytes)?;
            note(&mut changed, item);
        }
        self.finish(&lock, &changed)
    }

    /// Re-seals every key in etcd under `new`, one transaction per cluster
    /// comparing the revisions read; keys already sealed under `new` are
    /// left as they are (a run cut short can be run again). Returns how
    /// many keys were re-sealed, and how many were already.
    pub fn rewrap(&self, new: &Kek) -> Result<(usize, usize), MirrorError> {
        let (start, end) = layout::prefix_range(&self.etcd.prefix);
        let (kvs, _) = self.block_on(self.etcd.range_all(start, end))?;
        let mut by_cluster: BTreeMap<String, Vec<(Item, pb::KeyValue)>> = BTreeMap::new();
        let mut already = 0;
        for kv in kvs {
            let Some(item @ Item::Key(..)) = Item::from_key(&self.etcd.prefix, &kv.key) else {
                continue;
            };
            if crate::etcd::seal::sealed_by(&kv.value).as_deref() == Some(new.id()) {
                already += 1;
                continue;
            }
            by_cluster
                .entry(item.cluster().to_owned())
                .or_default()
                .push((item, kv));
        }
        let mut done = 0;
        for (cluster, keys) in by_cluster {
            let mut compare = Vec::new();
            let mut ops = Vec::new();
            for (item, kv) in &keys {
                let Item::Key(id, kid) = item else { continue };
                let clear =
                    rsa::pkcs8::der::zeroize::Zeroizing::new(self.keys.open(id, kid, &kv.value)?);
                compare.push(mod_revision_is(kv.key.clone(), kv.mod_revision));
                ops.push(client::put(kv.key.clone(), new.seal(id, kid, &clear)?, 0));
            }
            let request = pb::TxnRequest {
                compare,
                success: ops,
                failure: Vec::new(),
            };
            if !self.block_on(self.etcd.txn(request))?.succeeded {
                return Err(MirrorError::Other(format!(
                    "cluster {cluster:?} changed while its keys were re-sealed (a rotation on a \
                     replica): nothing of it was written; run `store rewrap` again"
                )));
            }
            done += keys.len();
        }
        Ok((done, already))
    }

    /// Whether the copy holds changes not yet in etcd.
    pub fn uncommitted(&self) -> Result<Vec<String>, MirrorError> {
        let mut ids = Vec::new();
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for id in self.all_ids()? {
            let local = layout::read_cluster(self.root(), &id)?;
            if self.commit_request(&id, &local, &base)?.is_some() {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}
