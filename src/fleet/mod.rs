//! The cluster set at run time: follows the cluster registry in the keys dir
//! (clusters created, recreated, deleted by any server or the CLI sharing
//! it) and the config file (reloaded on SIGHUP and when it changes), and
//! replaces the served set, the API clients, the rotation task's clusters
//! and the external-signer sockets to match, without a restart and without
//! dropping a connection.
//!
//! `registry` follows the cluster registry, `reload` the config file,
//! `signers` the external-signer sockets.
//!
//! Wiring, like `serve`: imports what it coordinates. The registry is polled
//! every [`POLL`] (one small file read); a change there, or the admin API's
//! resync, rereads the registry and the changed key sets.

mod registry;
mod reload;
mod signers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use self::reload::FileStamp;
use self::signers::SignerTask;
use crate::clock::SharedClock;
use crate::config::{ClusterConfig, Config, Origin};
use crate::health::Health;
use crate::http::admin::{Admin, ResyncRequests};
use crate::issuer::auth::ApiClients;
use crate::issuer::{Cluster, Issuers, LiveIssuers};
use crate::keys::policy::Source;
use crate::keys::registry::Seen;
use crate::keys::rotation::{self, Managed, ReloadHandle};
use crate::keys::store::{KeySet, KeyStore};
use crate::metrics::Metrics;
use crate::signing::SigningTurns;

/// How often the registry's generation is read: a cluster created on
/// another server is served here within this (and the load of its keys).
pub const POLL: Duration = Duration::from_millis(250);

/// What the fleet task shares with the rest of the server.
pub struct Parts {
    pub issuers: Arc<LiveIssuers>,
    pub clients: Arc<ArcSwap<ApiClients>>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub signing: Arc<SigningTurns>,
    pub clock: SharedClock,
}

pub struct Fleet {
    parts: Parts,
    /// The admin API's settings, kept in step with the config.
    admin: Option<Arc<Admin>>,
    store: KeyStore,
    background: ReloadHandle,
    /// The config in use (its clusters are in the served set, not here).
    config: Config,
    /// How the config file looked when last read, to see it change.
    config_stamp: Option<FileStamp>,
    generation: u64,
    /// The registry's files as last read.
    seen: Seen,
    /// Clusters of the registry that are not served, with why.
    registry_problems: HashMap<String, String>,
    signers: HashMap<String, SignerTask>,
}

/// The managed entry of a cluster for the rotation task: its policy, and
/// where a new key set is published.
pub fn managed(cluster: &Arc<Cluster>, clock: &SharedClock) -> Managed {
    let (target, clock) = (cluster.clone(), clock.clone());
    Managed {
        cluster: cluster.id().to_owned(),
        source: Source::of(&cluster.config),
        policy: cluster.config.rotation,
        publish: Box::new(move |set| target.replace_keys(set, clock.now())),
    }
}

/// Loads (or creates) the keys of clusters about to be served. Blocking.
/// Returns the clusters that loaded and those that did not, with why.
fn load_clusters(
    store: &KeyStore,
    clusters: Vec<ClusterConfig>,
    rotate: bool,
    now: SystemTime,
) -> (Vec<Arc<Cluster>>, Vec<(String, String)>) {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for c in clusters {
        match rotation::load_at_start(store, &c.id, Source::of(&c), &c.rotation, rotate, now) {
            Ok(keys) => loaded.push(Arc::new(Cluster::new(c, Arc::new(keys)))),
            Err(e) => failed.push((c.id.clone(), e.to_string())),
        }
    }
    (loaded, failed)
}

impl Fleet {
    pub fn new(
        parts: Parts,
        store: KeyStore,
        background: ReloadHandle,
        config: Config,
        (generation, seen): (u64, Seen),
        admin: Option<Arc<Admin>>,
    ) -> Fleet {
        let config_stamp = FileStamp::of(config.file.as_deref());
        // What the start found wrong in the registry stays named until the
        // entry changes.
        let registry_problems = parts
            .health
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clusters
            .iter()
            .cloned()
            .collect();
        Fleet {
            parts,
            admin,
            store,
            background,
            config,
            config_stamp,
            generation,
            seen,
            registry_problems,
            signers: HashMap::new(),
        }
    }

    /// Runs until `stop` resolves: polls the registry, answers resyncs,
    /// reloads the config on SIGHUP (`hup`) and when the file changes.
    pub async fn run(
        mut self,
        resyncs: Option<ResyncRequests>,
        mut hup: tokio::sync::mpsc::UnboundedReceiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next_config_check =
            self.parts.clock.elapsed() + self.config.rotation.reload_interval;
        // Without an admin API nothing asks for a resync: a channel that
        // never yields stands in.
        let (_never, unused) = tokio::sync::mpsc::unbounded_channel();
        let mut resyncs = resyncs.unwrap_or(unused);
        // A closed SIGHUP channel (no signal could be had) is not polled.
        let mut hup_open = true;
        loop {
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            // Which clusters' registry files to read: `None` all of them.
            let mut scope: Option<Vec<String>> = Some(Vec::new());
            let (force, reload_config) = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                request = resyncs.recv() => match request {
                    Some(first) => {
                        // Every resync asked for meanwhile is answered by
                        // this pass.
                        let mut requests = vec![first];
                        while let Ok(more) = resyncs.try_recv() {
                            requests.push(more);
                        }
                        for r in requests {
                            match (&mut scope, r.ids) {
                                (Some(all), Some(ids)) => all.extend(ids),
                                _ => scope = None,
                            }
                            waiting.push(r.done);
                        }
                        (true, false)
                    }
                    None => continue,
                },
                signal = hup.recv(), if hup_open => match signal {
                    Some(()) => (true, true),
                    None => {
                        hup_open = false;
                        continue;
                    }
                },
                () = tokio::time::sleep(POLL) => {
                    let due = self.parts.clock.elapsed() >= next_config_check;
                    if due {
                        next_config_check =
                            self.parts.clock.elapsed() + self.config.rotation.reload_interval;
                    }
                    (false, due && FileStamp::of(self.config.file.as_deref()) != self.config_stamp)
                }
            };
            if reload_config {
                self.reload_config().await;
                next_config_check =
                    self.parts.clock.elapsed() + self.config.rotation.reload_interval;
                // Entries the old config shadowed or refused are read again.
                scope = None;
            }
            match scope {
                Some(ids) if !ids.is_empty() => self.sync_registry_ids(ids).await,
                _ => self.sync_registry(force || reload_config).await,
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
        for id in self.signers.keys().cloned().collect::<Vec<_>>() {
            self.stop_signer(&id).await;
        }
    }

    /// What `/readyz` shows of the config and the registry, to update.
    fn config_status(&self) -> std::sync::MutexGuard<'_, crate::health::ConfigStatus> {
        self.parts
            .health
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `added` (their keys loaded or created), `changed` (new
    /// settings, same keys) and stops serving `removed`, in one swap.
    /// Returns `problems` with the clusters whose keys did not load.
    async fn apply(
        &mut self,
        changed: Vec<ClusterConfig>,
        added: Vec<ClusterConfig>,
        removed: Vec<String>,
        mut problems: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        // On etcd, rotation steps are the lease holder's, taken by its
        // rotation task: a cluster new here is only loaded.
        let on_etcd = matches!(self.config.store, crate::config::StoreConfig::Etcd(_));
        let (store, rotate, now) = (
            self.store.clone(),
            self.config.rotation.enabled && !on_etcd,
            self.parts.clock.now(),
        );
        let (loaded, failed) = if added.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            tokio::task::spawn_blocking(move || load_clusters(&store, added, rotate, now))
                .await
                .unwrap_or_else(|e| (Vec::new(), vec![("*".into(), e.to_string())]))
        };
        for (id, why) in &failed {
            tracing::error!(
                cluster = id,
                error = why,
                "cannot serve the cluster: its keys do not load"
            );
        }
        problems.extend(failed);
        let live = self.parts.issuers.load_full();
        let gone: HashSet<&str> = removed.iter().map(String::as_str).collect();
        let changed: HashMap<String, ClusterConfig> =
            changed.into_iter().map(|c| (c.id.clone(), c)).collect();
        let mut replaced = Vec::new();
        let mut clusters: Vec<Arc<Cluster>> = Vec::with_capacity(live.all().len() + loaded.len());
        for c in live.all() {
            if gone.contains(c.id()) {
                continue;
            }
            match changed.get(c.id()) {
                Some(config) => {
                    let new = Arc::new(c.with_config(config.clone()));
                    replaced.push(new.clone());
                    clusters.push(new);
                }
                None => clusters.push(c.clone()),
            }
        }
        clusters.extend(loaded.iter().cloned());
        if !removed.is_empty() || !loaded.is_empty() || !replaced.is_empty() {
            self.parts.issuers.store(Arc::new(Issuers::of(clusters)));
            self.background.forget(removed.clone()).await;
            self.background.manage(
                loaded
                    .iter()
                    .chain(&replaced)
                    .map(|c| (managed(c, &self.parts.clock), c.published().keys.clone()))
                    .collect::<Vec<(Managed, Arc<KeySet>)>>(),
            );
        }
        let back: HashSet<&str> = loaded.iter().map(|c| c.id()).collect();
        for id in removed.iter().filter(|id| !back.contains(id.as_str())) {
            tracing::info!(cluster = id, "cluster no longer served: its documents answer 404 and its tokens no longer verify here");
        }
        for c in &loaded {
            let what = match (gone.contains(c.id()), c.config.origin) {
                (true, Origin::File) => {
                    "cluster now served with the config file's settings, over the registry's entry of the same id (same keys)"
                }
                (true, Origin::Runtime) => {
                    "cluster served afresh (deleted and created again, or recreated): its old keys and settings are gone"
                }
                (false, _) => "cluster served",
            };
            tracing::info!(
                cluster = c.id(),
                issuer = c.config.issuer,
                kid = c.published().keys.current().kid(),
                origin = ?c.config.origin,
                "{what}"
            );
        }
        for c in &replaced {
            tracing::info!(cluster = c.id(), "cluster settings changed");
        }
        problems
    }
}
