//! The cluster set at run time: follows the cluster registry in the keys dir
//! (clusters created, recreated, deleted by any server or the CLI sharing
//! it) and the config file (reloaded on SIGHUP and when it changes), and
//! replaces the served set, the API clients, the rotation task's clusters
//! and the external-signer sockets to match, without a restart and without
//! dropping a connection.
//!
//! Wiring, like `serve`: imports what it coordinates. The registry is polled
//! every [`POLL`] (one small file read); a change there, or the admin API's
//! resync, rereads the registry and the changed key sets.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use crate::clock::SharedClock;
use crate::config::runtime_cluster;
use crate::config::{ClusterConfig, Config, Origin};
use crate::health::Health;
use crate::http::admin::{Admin, AdminSettings, ResyncRequests};
use crate::issuer::auth::ApiClients;
use crate::issuer::{Cluster, Issuers, LiveIssuers};
use crate::keys::registry::{Registry, Seen};
use crate::keys::rotation::{self, Managed, ReloadHandle};
use crate::keys::store::{KeySet, KeyStore};
use crate::metrics::Metrics;
use crate::serve::key_source;
use crate::signing::SigningTurns;
use crate::{externaljwt, signer};

/// How often the registry's generation is read: a cluster created on
/// another server is served here within this (and the load of its keys).
pub const POLL: Duration = Duration::from_millis(250);

/// A cluster's external-signer socket being served.
struct SignerTask {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: Option<&std::path::Path>) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path?).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// The managed entry of a cluster for the rotation task: its policy, and
/// where a new key set is published.
pub fn managed(cluster: &Arc<Cluster>, clock: &SharedClock) -> Managed {
    let (target, clock) = (cluster.clone(), clock.clone());
    Managed {
        cluster: cluster.id().to_owned(),
        source: key_source(&cluster.config),
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
        match rotation::load_at_start(store, &c.id, key_source(&c), &c.rotation, rotate, now) {
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

    /// Serves the external-signer socket of every cluster that names one.
    pub async fn bind_signers(&mut self) -> Result<(), crate::serve::StartError> {
        let issuers = self.parts.issuers.load_full();
        for cluster in issuers.all() {
            if let Some(at) = &cluster.config.kubernetes_signer {
                let task = self.bind_signer(cluster.id(), at).await.map_err(|source| {
                    crate::serve::StartError::Signer {
                        cluster: cluster.id().to_owned(),
                        source,
                    }
                })?;
                self.signers.insert(cluster.id().to_owned(), task);
            }
        }
        Ok(())
    }

    async fn bind_signer(
        &self,
        id: &str,
        at: &crate::config::SignerSocket,
    ) -> std::io::Result<SignerTask> {
        let gid = match &at.group {
            Some(group) => Some(externaljwt::group_id(group)?),
            None => None,
        };
        let socket = externaljwt::bind(&at.path, gid).await?;
        tracing::info!(
            cluster = id,
            mode = if gid.is_some() { "0660" } else { "0600" },
            group = at.group.as_deref().unwrap_or(""),
            "external token signer (ExternalJWTSigner v1, v1alpha1) on unix://{}",
            at.path.display()
        );
        let backend = Arc::new(signer::LocalSigner::new(
            id.to_owned(),
            self.parts.issuers.clone(),
            self.parts.signing.clone(),
            self.parts.metrics.clone(),
        ));
        let (stop, mut stopped) = watch::channel(false);
        let cluster = id.to_owned();
        let task = tokio::spawn(async move {
            let served = externaljwt::serve(socket, backend, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(cluster, error = %e, "the external signer stopped");
            }
        });
        Ok(SignerTask {
            path: at.path.clone(),
            stop,
            task,
        })
    }

    async fn stop_signer(&mut self, id: &str) {
        if let Some(s) = self.signers.remove(id) {
            let _ = s.stop.send(true);
            let _ = s.task.await;
            tracing::info!(cluster = id, path = %s.path.display(), "external token signer closed");
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
        loop {
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            let (force, reload_config) = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                request = resyncs.recv() => match request {
                    Some(done) => {
                        waiting.push(done);
                        // Answer every resync asked for meanwhile with this pass.
                        while let Ok(more) = resyncs.try_recv() {
                            waiting.push(more);
                        }
                        (true, false)
                    }
                    None => continue,
                },
                signal = hup.recv() => match signal {
                    Some(()) => (true, true),
                    None => continue,
                },
                () = tokio::time::sleep(POLL) => {
                    let due = self.parts.clock.elapsed() >= next_config_check;
                    (false, due && FileStamp::of(self.config.file.as_deref()) != self.config_stamp)
                }
            };
            if reload_config {
                self.reload_config().await;
                next_config_check =
                    self.parts.clock.elapsed() + self.config.rotation.reload_interval;
            } else if self.parts.clock.elapsed() >= next_config_check {
                next_config_check =
                    self.parts.clock.elapsed() + self.config.rotation.reload_interval;
            }
            self.sync_registry(force).await;
            for done in waiting {
                let _ = done.send(());
            }
        }
        for id in self.signers.keys().cloned().collect::<Vec<_>>() {
            self.stop_signer(&id).await;
        }
    }

    /// Brings the served set up to date with the registry: clusters created
    /// elsewhere are loaded and served, deleted ones dropped, recreated ones
    /// get their new keys at once. Only when the generation moved, unless
    /// `force`; only the registry's files that changed are read.
    async fn sync_registry(&mut self, force: bool) {
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
    async fn recreated(&mut self, ids: Vec<String>) {
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
        let (store, rotate, now) = (
            self.store.clone(),
            self.config.rotation.enabled,
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
            self.background.forget(removed.clone());
            self.background.manage(
                loaded
                    .iter()
                    .chain(&replaced)
                    .map(|c| (managed(c, &self.parts.clock), c.published().keys.clone()))
                    .collect::<Vec<(Managed, Arc<KeySet>)>>(),
            );
        }
        for id in &removed {
            tracing::info!(cluster = id, "cluster no longer served: its documents answer 404 and its tokens no longer verify here");
        }
        for c in &loaded {
            tracing::info!(
                cluster = c.id(),
                issuer = c.config.issuer,
                kid = c.published().keys.current().kid(),
                origin = ?c.config.origin,
                "cluster served"
            );
        }
        for c in &replaced {
            tracing::info!(cluster = c.id(), "cluster settings changed");
        }
        problems
    }

    /// Reads the config file again and applies what changed; a config that
    /// does not load changes nothing and is reported until a good one loads.
    async fn reload_config(&mut self) {
        let (file, overrides) = (self.config.file.clone(), self.config.overrides.clone());
        self.config_stamp = FileStamp::of(file.as_deref());
        let loaded = tokio::task::spawn_blocking(move || {
            let config = Config::load(file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            let (clients, _) = ApiClients::load(&config.api_clients, &config.keys_dir)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((config, clients))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (config, clients) = match loaded {
            Ok(found) => found,
            Err(why) => {
                tracing::error!(
                    problems = why,
                    "the config did not reload: the running config stays in use"
                );
                self.parts
                    .health
                    .config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .file = Some(why);
                return;
            }
        };
        self.parts
            .health
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file = None;
        warn_restart_only(&self.config, &config);
        self.parts.clients.store(Arc::new(clients));
        if let Some(admin) = &self.admin {
            admin.settings.store(Arc::new(AdminSettings {
                public_url: config.public_url.clone(),
                file: config.file.clone(),
            }));
        }

        let live = self.parts.issuers.load_full();
        let in_file: HashSet<&str> = config.clusters.iter().map(|c| c.id.as_str()).collect();
        let removed: Vec<String> = live
            .all()
            .iter()
            .filter(|c| c.config.origin == Origin::File && !in_file.contains(c.id()))
            .map(|c| c.id().to_owned())
            .collect();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut problems = Vec::new();
        for c in &config.clusters {
            match live.by_id(&c.id) {
                None => added.push(c.clone()),
                Some(old) if old.config.origin == Origin::Runtime => problems.push((
                    c.id.clone(),
                    "created at run time, and now declared in the config file too: remove one"
                        .into(),
                )),
                Some(old) if old.config != *c => changed.push(c.clone()),
                Some(_) => {}
            }
        }
        let signers_before: HashMap<String, Option<crate::config::SignerSocket>> = live
            .all()
            .iter()
            .filter(|c| c.config.origin == Origin::File)
            .map(|c| (c.id().to_owned(), c.config.kubernetes_signer.clone()))
            .collect();
        tracing::info!(
            added = added.len(),
            changed = changed.len(),
            removed = removed.len(),
            api_clients = config.api_clients.len(),
            "config reloaded"
        );
        for id in &removed {
            tracing::info!(
                cluster = id,
                "cluster removed from the config file: no longer served; its keys stay in the keys dir (a cluster added back under this id gets them again; `clusters recreate` gives new ones)"
            );
        }
        let mut problems = self.apply(changed, added, removed, problems).await;

        // Signer sockets follow the clusters that name one.
        let live = self.parts.issuers.load_full();
        let mut ids: HashSet<String> = signers_before.keys().cloned().collect();
        ids.extend(config.clusters.iter().map(|c| c.id.clone()));
        for id in ids {
            let before = signers_before.get(&id).cloned().flatten();
            let now = live
                .by_id(&id)
                .filter(|c| c.config.origin == Origin::File)
                .and_then(|c| c.config.kubernetes_signer.clone());
            if before == now && (now.is_none() || self.signers.contains_key(&id)) {
                continue;
            }
            self.stop_signer(&id).await;
            if let Some(at) = now {
                match self.bind_signer(&id, &at).await {
                    Ok(task) => {
                        self.signers.insert(id, task);
                    }
                    Err(e) => {
                        tracing::error!(cluster = id, error = %e, "cannot bind the external signer's socket");
                        problems.push((id.clone(), format!("kubernetes_signer_socket: {e}")));
                    }
                }
            }
        }
        self.parts
            .health
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file_clusters = problems;
        let mut kept = config;
        kept.clusters = Vec::new();
        self.config = kept;
    }
}

/// Settings a running server cannot change: said once per reload.
fn warn_restart_only(old: &Config, new: &Config) {
    let mut differ = Vec::new();
    if old.listen != new.listen {
        differ.push("listen");
    }
    if old.keys_dir != new.keys_dir {
        differ.push("keys_dir");
    }
    if old.api_listener.as_ref().map(|l| l.addr) != new.api_listener.as_ref().map(|l| l.addr) {
        differ.push("api.listen");
    }
    if old.limits != new.limits {
        differ.push("limits");
    }
    if old.rotation != new.rotation {
        differ.push("rotation");
    }
    if old.tls.as_ref().map(|t| (&t.cert, &t.key, &t.client_ca))
        != new.tls.as_ref().map(|t| (&t.cert, &t.key, &t.client_ca))
    {
        differ.push("tls_cert/tls_key");
    }
    if old.tls_reload_interval != new.tls_reload_interval {
        differ.push("tls_reload_interval");
    }
    if !differ.is_empty() {
        tracing::warn!(
            settings = differ.join(", "),
            "these settings changed in the config and take effect at the next restart"
        );
    }
}
