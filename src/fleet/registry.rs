//! Following the cluster registry: clusters created, recreated and deleted
//! by any server or the CLI sharing the keys dir.

use std::collections::HashSet;
use std::sync::Arc;

use super::{managed, Fleet};
use crate::config::{runtime_cluster, Origin};
use crate::issuer::Cluster;
use crate::keys::registry::Registry;

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
        let (store, mut seen) = (self.store.clone(), std::mem::take(&mut self.seen));
        let scanned = tokio::task::spawn_blocking(move || {
            let scanned = Registry::new(&store).scan(&mut seen);
            (scanned, seen)
        })
        .await;
        let scanned = match scanned {
            Ok((Ok(scanned), seen)) => {
                self.seen = seen;
                scanned
            }
            Ok((Err(e), _)) => {
                tracing::error!(error = %e, "cannot read the cluster registry; the clusters served stay as they are");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the cluster registry failed");
                return;
            }
        };
        self.generation = generation;
        let live = self.parts.issuers.load_full();
        let present: HashSet<&str> = scanned.ids.iter().map(String::as_str).collect();
        self.registry_problems
            .retain(|id, _| present.contains(id.as_str()));
        let removed: Vec<String> = live
            .all()
            .iter()
            .filter(|c| c.config.origin == Origin::Runtime && !present.contains(c.id()))
            .map(|c| c.id().to_owned())
            .collect();
        for (id, why) in scanned.unreadable {
            self.registry_problems.insert(id, why);
        }
        let mut added = Vec::new();
        for entry in scanned.changed {
            self.registry_problems.remove(&entry.id);
            match live.by_id(&entry.id) {
                Some(existing) if existing.config.origin == Origin::File => {
                    self.registry_problems.insert(
                        entry.id.clone(),
                        "the config file declares a cluster with the same id; the file's is served"
                            .into(),
                    );
                }
                Some(_) => {}
                None => match runtime_cluster(&entry.settings, &self.config.public_url) {
                    Ok(c) => added.push(c),
                    Err(problems) => {
                        self.registry_problems
                            .insert(entry.id.clone(), crate::serve::joined(&problems));
                    }
                },
            }
        }
        let failed = self.apply(Vec::new(), added, removed, Vec::new()).await;
        // Read again at the next move of the generation: a create that wrote
        // its entry may still be making the keys (it moves the generation
        // once they are on disk).
        for (id, _) in &failed {
            self.seen.forget(id);
        }
        self.registry_problems.extend(failed);
        self.recreated(scanned.recreated).await;
        self.parts
            .health
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clusters = self
            .registry_problems
            .iter()
            .map(|(id, why)| (id.clone(), why.clone()))
            .collect();
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
