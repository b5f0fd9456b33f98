//! Following the cluster registry: clusters created, recreated and deleted
//! by any server or the CLI sharing the keys dir.

use std::collections::HashSet;
use std::sync::Arc;

use super::{managed, Fleet};
use crate::config::{runtime_cluster, Origin};
use crate::issuer::Cluster;
use crate::keys::registry::{remove_keys, Registry, Scanned};

impl Fleet {
    /// Brings the served set up to date with the registry: clusters created
    /// elsewhere are loaded and served, deleted ones dropped, recreated ones
    /// get their new keys at once. Only when the generation moved, unless
    /// `force`; only the registry's files that changed are read.
    pub(super) async fn sync_registry(&mut self, force: bool) {
        let registry = Registry::new(&self.store);
        let generation = match registry.generation() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cluster registry's generation");
                return;
            }
        };
        if generation == self.generation && !force {
            return;
        }
        if let Some(scanned) = self.scan(None).await {
            self.generation = generation;
            self.follow(scanned, true).await;
        }
    }

    /// As [`Fleet::sync_registry`] for clusters just changed here: only
    /// their files are read. What other servers changed meanwhile is seen
    /// at the next poll (the generation is left for it to compare).
    pub(super) async fn sync_registry_ids(&mut self, ids: Vec<String>) {
        if let Some(scanned) = self.scan(Some(ids)).await {
            self.follow(scanned, false).await;
        }
    }

    /// Reads the registry (all of it, or these clusters' files), off the
    /// async workers; `None` (logged) when it cannot be read.
    async fn scan(&mut self, ids: Option<Vec<String>>) -> Option<Scanned> {
        let (store, mut seen) = (self.store.clone(), std::mem::take(&mut self.seen));
        let scanned = tokio::task::spawn_blocking(move || {
            let registry = Registry::new(&store);
            let scanned = match &ids {
                Some(ids) => registry.scan_ids(&mut seen, ids),
                None => registry.scan(&mut seen),
            };
            (scanned, seen)
        })
        .await;
        match scanned {
            Ok((Ok(scanned), seen)) => {
                self.seen = seen;
                Some(scanned)
            }
            Ok((Err(e), seen)) => {
                self.seen = seen;
                tracing::error!(error = %e, "cannot read the cluster registry; the clusters served stay as they are");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the cluster registry failed");
                None
            }
        }
    }

    /// Applies what a scan found. `full`: the scan listed every entry, so a
    /// served runtime cluster it did not list was deleted; otherwise only
    /// the named ones it found absent were.
    async fn follow(&mut self, scanned: Scanned, full: bool) {
        let live = self.parts.issuers.load_full();
        let deleted: Vec<String> = if full {
            let present: HashSet<&str> = scanned.ids.iter().map(String::as_str).collect();
            self.registry_problems
                .retain(|id, _| present.contains(id.as_str()));
            live.all()
                .iter()
                .filter(|c| c.config.origin == Origin::Runtime && !present.contains(c.id()))
                .map(|c| c.id().to_owned())
                .collect()
        } else {
            for id in &scanned.absent {
                self.registry_problems.remove(id);
            }
            scanned
                .absent
                .iter()
                .filter(|id| {
                    live.by_id(id)
                        .is_some_and(|c| c.config.origin == Origin::Runtime)
                })
                .cloned()
                .collect()
        };
        for (id, why) in scanned.unreadable {
            self.seen.forget(&id);
            self.registry_problems.insert(id, why);
        }
        let mut removed = deleted.clone();
        let mut added = Vec::new();
        for entry in scanned.changed {
            self.registry_problems.remove(&entry.id);
            let c = match runtime_cluster(&entry.settings, &self.config.public_url) {
                Ok(c) => c,
                Err(problems) => {
                    self.registry_problems
                        .insert(entry.id.clone(), crate::config::joined(&problems));
                    continue;
                }
            };
            match live.by_id(&entry.id) {
                Some(existing) if existing.config.origin == Origin::File => {
                    // Read again after the next config reload.
                    self.seen.forget(&entry.id);
                    self.registry_problems.insert(
                        entry.id.clone(),
                        "the config file declares a cluster with the same id; the file's is served"
                            .into(),
                    );
                }
                // An entry that changed under a served cluster: deleted and
                // created again (or recreated) meanwhile. Its settings and
                // keys are read afresh: nothing of the old one stays.
                Some(_) => {
                    removed.push(entry.id.clone());
                    added.push(c);
                }
                None => added.push(c),
            }
        }
        let fresh: HashSet<String> = added.iter().map(|c| c.id.clone()).collect();
        let failed = self.apply(Vec::new(), added, removed, Vec::new()).await;
        for (id, _) in &failed {
            self.seen.forget(id);
        }
        self.registry_problems.extend(failed);
        self.sweep(&deleted).await;
        let recreated = scanned
            .recreated
            .into_iter()
            .filter(|id| !fresh.contains(id))
            .collect();
        self.recreated(recreated).await;
        self.config_status().clusters = self
            .registry_problems
            .iter()
            .map(|(id, why)| (id.clone(), why.clone()))
            .collect();
    }

    /// Removes keys left on disk for deleted clusters: a rotation step of
    /// this server may have made one for a cluster deleted elsewhere just
    /// before it forgot the cluster. Under the lock, only for an id with no
    /// entry that no cluster of this server holds.
    async fn sweep(&self, deleted: &[String]) {
        if deleted.is_empty() {
            return;
        }
        let live = self.parts.issuers.load_full();
        let ids: Vec<String> = deleted
            .iter()
            .filter(|id| live.by_id(id).is_none())
            .cloned()
            .collect();
        let store = self.store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let registry = Registry::new(&store);
            let lock = store.lock()?;
            let mut swept = Vec::new();
            for id in ids {
                if registry.get(&id)?.is_none() && store.cluster_dir(&id).exists() {
                    remove_keys(&store, &lock, &id)?;
                    swept.push(id);
                }
            }
            Ok::<_, crate::keys::store::StoreError>(swept)
        })
        .await;
        match swept {
            Ok(Ok(swept)) => {
                for id in swept {
                    tracing::warn!(
                        cluster = id,
                        "removed keys made for a deleted cluster after it was deleted"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot remove the keys of a deleted cluster")
            }
            Err(e) => tracing::error!(error = %e, "removing the keys of a deleted cluster failed"),
        }
    }

    /// Publishes the new keys of clusters recreated (here or elsewhere):
    /// every old key leaves the JWKS at once.
    pub(super) async fn recreated(&mut self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let live = self.parts.issuers.load_full();
        let clusters: Vec<Arc<Cluster>> = ids
            .iter()
            .filter_map(|id| live.by_id(id).cloned())
            .collect();
        let store = self.store.clone();
        let ids: Vec<String> = clusters.iter().map(|c| c.id().to_owned()).collect();
        let loaded = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| {
                    let set = store.load(&id, None);
                    (id, set)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut managed_now = Vec::new();
        for (cluster, (id, set)) in clusters.iter().zip(loaded) {
            match set {
                Ok(Some(set)) => {
                    let set = Arc::new(set);
                    tracing::info!(
                        cluster = id,
                        kid = set.current().kid(),
                        "cluster recreated: its new key signs, every old key left the JWKS and no token they signed verifies"
                    );
                    cluster.replace_keys(set.clone(), self.parts.clock.now());
                    managed_now.push((managed(cluster, &self.parts.clock), set));
                }
                Ok(None) => tracing::error!(cluster = id, "recreated, but its keys are not on disk yet; the periodic reload will find them"),
                Err(e) => tracing::error!(cluster = id, error = %e, "recreated, but its new keys do not load"),
            }
        }
        self.background.manage(managed_now);
    }
}
