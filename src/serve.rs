//! The `serve` command: load every cluster's keys (creating first keys), the
//! API clients, then listen.
//!
//! Glue between `config`, `keys::store`, `issuer`, `http`, `server` and
//! `signer` (each cluster's external-signer socket).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::{unix_seconds, SharedClock, SystemClock};
use crate::config::Config;
use crate::config::{joined, runtime_cluster};
use crate::etcd::Replica;
use crate::fleet::{self, Fleet};
use crate::health::ListenerInfo;
use crate::http::admin::{Admin, AdminSettings};
use crate::http::{app_for, AppState, Face};
use crate::issuer::auth::ApiClients;
use crate::issuer::{Cluster, Issuers};
use crate::keys::policy::Source;
use crate::keys::registry::{Registry, Seen};
use crate::keys::rotation::{self, Background, BackgroundSettings};
use crate::keys::store::KeyStore;
use crate::server::{self, ListenerStats, TlsSource};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Auth(#[from] crate::issuer::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("a background task failed: {0}")]
    Join(String),
    #[error("keys dir: {0}")]
    Store(crate::keys::store::StoreError),
    #[error("the store: {0}")]
    Etcd(String),
    #[error("cluster \"{cluster}\": kubernetes_signer_socket: {source}")]
    Signer {
        cluster: String,
        source: std::io::Error,
    },
    #[error("cluster \"{cluster}\": {source}")]
    Rotation {
        cluster: String,
        source: crate::keys::policy::RotationError,
    },
}

/// The key store of a configuration, with its permission policy.
pub fn key_store(config: &Config) -> KeyStore {
    KeyStore::new(&config.keys_dir)
        .allow_insecure_permissions(config.allow_insecure_key_permissions)
}

/// Loads or creates every cluster's keys (the config file's, then those
/// created at run time) and the API clients; `clock` is the time the server
/// stamps tokens and keys with. A config cluster whose keys do not load
/// stops the start; a cluster of the registry that does not is reported
/// (`/readyz` on the API listener) and the others are served.
pub async fn prepare(config: &Config, clock: SharedClock) -> Result<AppState, StartError> {
    prepare_on(config, clock, None).await
}

/// The key store a server works on: the keys dir, or the working copy of
/// its etcd store, whose every change is committed to etcd.
fn store_of(config: &Config, replica: Option<&Replica>) -> KeyStore {
    match replica {
        Some(r) => KeyStore::new(r.root())
            .with_observer(r.observer())
            .allow_insecure_permissions(config.allow_insecure_key_permissions),
        None => key_store(config),
    }
}

/// [`prepare`] on the etcd store `replica` has read, when there is one.
pub async fn prepare_on(
    config: &Config,
    clock: SharedClock,
    replica: Option<Arc<Replica>>,
) -> Result<AppState, StartError> {
    let store = store_of(config, replica.as_deref());
    let now = clock.now();
    let settings = config.clusters.clone();
    // On etcd, only the replica holding the lease takes rotation steps,
    // and none holds it yet: at start, keys are loaded (or first made).
    let rotate = config.rotation.enabled && replica.is_none();
    let public_url = config.public_url.clone();
    let registry_store = store.clone();
    // Key generation (RSA especially) and file reads block: keep them off the
    // async workers.
    let (clusters, generation, not_served) = off_the_workers(move || {
        // Someone else able to write the keys dir could plant a key.
        store.check_dirs(None).map_err(StartError::Store)?;
        let mut clusters = Vec::with_capacity(settings.len());
        for c in settings {
            let keys = rotation::load_at_start(
                &store,
                &c.id,
                Source::of(&c),
                &c.rotation,
                rotate,
                now,
            )
            .map_err(|source| StartError::Rotation {
                cluster: c.id.clone(),
                source,
            })?;
            let signer = keys.current();
            if !c.publish_only && signer.spec() != c.key_spec {
                tracing::warn!(
                    cluster = c.id,
                    kid = signer.kid(),
                    configured = %c.key_spec,
                    signing = %signer.spec(),
                    "the configured key type differs from the current key's; the current key keeps signing until a rotation brings in the new type"
                );
            }
            clusters.push(Arc::new(Cluster::new(c, Arc::new(keys))));
        }
        let (runtime, generation, not_served) =
            runtime_clusters(&registry_store, &public_url, &clusters, rotate, now)?;
        clusters.extend(runtime);
        Ok::<_, StartError>((clusters, generation, not_served))
    })
    .await?;
    let issuers = Issuers::of(clusters);

    // Generating a token file waits for the keys dir's lock: off the workers.
    let (api_clients, keys_dir) = (config.api_clients.clone(), config.keys_dir.clone());
    let (clients, token_files) =
        tokio::task::spawn_blocking(move || ApiClients::load(&api_clients, &keys_dir))
            .await
            .map_err(|e| StartError::Join(e.to_string()))??;
    for f in &token_files {
        let verb = if f.generated { "generated" } else { "reads" };
        tracing::info!(client = f.client, path = %f.path.display(), "API client {:?} {verb} its bearer token at {}", f.client, f.path.display());
    }
    if clients.is_empty() {
        tracing::warn!(
            "no API clients are configured: minting is disabled, discovery and JWKS are served"
        );
    }
    let mut state = AppState::new(
        issuers,
        clients,
        |records, c| match Source::of(c) {
            Source::Generated(spec) => crate::keys::policy::next_due(records, spec, &c.rotation),
            Source::Imported => crate::keys::policy::replace_by_hand_due(records, &c.rotation),
        },
        clock,
    )?;
    state.request_timeout = config.limits.request_timeout;
    state
        .health
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clusters = not_served;
    if let Some(replica) = &replica {
        let _ = state.health.store.set(replica.status.clone());
        // The keys made for clusters new to the store, before serving them.
        let commit = replica.commit_pending().await.map_err(|e| {
            StartError::Etcd(format!("committing the new clusters' keys to etcd: {e}"))
        })?;
        if !commit.conflicts.is_empty() {
            tracing::info!(clusters = ?commit.conflicts, "another replica made these clusters' first keys at the same time: theirs are served");
        }
    }
    state.store = replica.clone();
    state.admin = Some(Arc::new(Admin::new(
        store_of(config, replica.as_deref()),
        AdminSettings {
            public_url: config.public_url.clone(),
            file: config.file.clone(),
        },
        generation,
    )));
    Ok(state)
}

/// The registry's clusters at start, with their keys, the registry's
/// generation and files they were read at, and the ones not served, with
/// why (a registry entry is no reason to refuse the start).
fn runtime_clusters(
    store: &KeyStore,
    public_url: &str,
    from_file: &[Arc<Cluster>],
    rotate: bool,
    now: std::time::SystemTime,
) -> Result<RuntimeClusters, StartError> {
    let registry = Registry::new(store);
    let generation = registry.generation().map_err(StartError::Store)?;
    let mut seen = Seen::default();
    let scanned = registry.scan(&mut seen).map_err(StartError::Store)?;
    let mut not_served = scanned.unreadable;
    let taken: std::collections::HashSet<&str> = from_file.iter().map(|c| c.id()).collect();
    let mut clusters = Vec::with_capacity(scanned.changed.len());
    for entry in scanned.changed {
        if taken.contains(entry.id.as_str()) {
            not_served.push((
                entry.id,
                "the config file declares a cluster with the same id; the file's is served".into(),
            ));
            continue;
        }
        let c = match runtime_cluster(&entry.settings, public_url) {
            Ok(c) => c,
            Err(problems) => {
                not_served.push((entry.id, joined(&problems)));
                continue;
            }
        };
        match rotation::load_at_start(store, &c.id, Source::of(&c), &c.rotation, rotate, now) {
            Ok(keys) => clusters.push(Arc::new(Cluster::new(c, Arc::new(keys)))),
            Err(e) => not_served.push((c.id.clone(), e.to_string())),
        }
    }
    for (id, why) in &not_served {
        tracing::error!(
            cluster = id,
            problem = why,
            "a cluster of the registry is not served"
        );
    }
    if !clusters.is_empty() {
        tracing::info!(
            clusters = clusters.len(),
            "loaded the clusters created at run time"
        );
    }
    Ok((clusters, (generation, seen), not_served))
}

type RuntimeClusters = (Vec<Arc<Cluster>>, (u64, Seen), Vec<(String, String)>);

/// Runs blocking start-up work where it does not hold up an async worker.
/// Under the server's own multi-threaded runtime that is the calling thread
/// (`block_in_place`): what it allocates then comes from the same malloc
/// arena as the configuration just parsed and freed, which it reuses. On a
/// blocking-pool thread, glibc gives it an arena of its own and the freed
/// parse stays resident beside it: 11 MB more RSS with 10,000 clusters.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StartError> + Send + 'static,
) -> Result<T, StartError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(work)
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StartError::Join(e.to_string()))?
    }
}

/// The sockets the server listens on, bound beforehand (tests bind port 0).
pub struct Sockets {
    pub main: TcpListener,
    /// The issuance API's own listener, when `api.listen` is configured.
    pub api: Option<TcpListener>,
}

impl Sockets {
    pub async fn bind(config: &Config) -> Result<Sockets, StartError> {
        let main = server::bind(config.listen).await?;
        let api = match &config.api_listener {
            Some(l) => Some(server::bind(l.addr).await?),
            None => None,
        };
        Ok(Sockets { main, api })
    }
}

/// Serves until `shutdown` resolves: every listener stops accepting, and
/// open requests get the grace period to finish.
pub async fn run(
    config: &Config,
    state: AppState,
    sockets: Sockets,
    shutdown: impl Future<Output = ()>,
    reloads: ReloadSignal,
) -> Result<(), StartError> {
    // Each listener is (name, socket, face, TLS files).
    let mut planned = Vec::new();
    match (sockets.api, &config.api_listener) {
        (Some(api), Some(l)) => {
            planned.push(("public", sockets.main, Face::Public, config.tls.clone()));
            planned.push(("api", api, Face::Api, l.tls.clone()));
        }
        _ => planned.push(("main", sockets.main, Face::All, config.tls.clone())),
    }
    let mut listeners = Vec::new();
    let mut infos = Vec::new();
    let mut watchers = Vec::new();
    for (name, socket, face, files) in planned {
        let tls = match &files {
            Some(files) => {
                let source = TlsSource::load(files, state.clock.clone())?;
                watchers.push(tokio::spawn(
                    source.clone().watch(config.tls_reload_interval),
                ));
                Some(source)
            }
            None => None,
        };
        let addr = socket.local_addr()?;
        let stats = Arc::new(ListenerStats::default());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let serves = match face {
            Face::All => "discovery, JWKS, TokenRequest, TokenReview, admin API, health, metrics",
            Face::Public => "discovery, JWKS, health",
            Face::Api => "TokenRequest, TokenReview, admin API, metrics, health, discovery, JWKS",
        };
        let client_certs = files.as_ref().is_some_and(|f| f.client_ca.is_some());
        tracing::info!(
            listener = name,
            serves,
            client_certificates = client_certs,
            max_connections = config.limits.max_connections,
            "listening on {scheme}://{addr}"
        );
        infos.push(ListenerInfo {
            name,
            addr,
            stats: stats.clone(),
            tls: tls.clone(),
        });
        listeners.push((
            server::Listener {
                name,
                socket,
                tls,
                limits: config.limits,
                stats,
            },
            face,
        ));
    }
    state.health.set_listeners(infos);
    let background = start_background(config, &state);
    let keys = background.reload_handle();
    let admin = state.admin.clone();
    let loaded = admin
        .as_ref()
        .and_then(|a| a.loaded.lock().unwrap_or_else(|e| e.into_inner()).take())
        .unwrap_or_default();
    let mut fleet_config = config.clone();
    fleet_config.clusters = Vec::new();
    let mut fleet = Fleet::new(
        fleet::Parts {
            issuers: state.issuers.clone(),
            clients: state.clients.clone(),
            health: state.health.clone(),
            metrics: state.metrics.clone(),
            signing: state.signing.clone(),
            clock: state.clock.clone(),
        },
        store_of(config, state.store.as_deref()),
        keys.clone(),
        fleet_config,
        loaded,
        admin.clone(),
    );
    fleet
        .bind_signers()
        .await
        .map_err(|(cluster, source)| StartError::Signer { cluster, source })?;
    let (hup_tx, hup_rx) = tokio::sync::mpsc::unbounded_channel();
    let sighup = tokio::spawn(async move {
        let mut signal = match reloads.0 {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config and key sets reload on their interval only");
                return;
            }
        };
        while signal.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config and every key set");
            keys.reload_now();
            let _ = hup_tx.send(());
        }
    });
    log_clusters(&state);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::COMMIT,
        clusters = state.issuers.load().all().len(),
        api_clients = state.clients.load().len(),
        "workload-issuer started"
    );

    // One shutdown signal, fanned out to every listener and the fleet.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let store_tasks = match &state.store {
        Some(replica) => {
            let admin = admin.clone();
            let resync: crate::etcd::replica::Resync = Arc::new(move |ids| {
                let admin = admin.clone();
                Box::pin(async move {
                    if let Some(admin) = admin {
                        admin.resync_ids(ids).await;
                    }
                })
            });
            replica.start(background.reload_handle(), resync, stop_rx.clone())
        }
        None => Vec::new(),
    };
    let resyncs = admin.as_ref().and_then(|a| a.take_requests());
    let following = tokio::spawn(fleet.run(resyncs, hup_rx, stop_rx.clone()));
    let serving: Vec<_> = listeners
        .into_iter()
        .map(|(listener, face)| {
            let mut stop = stop_rx.clone();
            let app = app_for(state.clone(), face);
            tokio::spawn(server::serve(listener, app, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        })
        .collect();
    shutdown.await;
    let _ = stop_tx.send(true);
    for task in serving.into_iter().chain(std::iter::once(following)) {
        task.await.map_err(|e| StartError::Join(e.to_string()))?;
    }
    for task in store_tasks {
        let _ = task.await;
    }
    for w in watchers {
        w.abort();
    }
    sighup.abort();
    background.stop().await;
    if let Some(replica) = &state.store {
        // Whatever the last moments changed, then no key left in the clear.
        if let Err(e) = replica.commit_pending().await {
            tracing::warn!(error = %e, "changes made at shutdown could not be committed to etcd");
        }
        replica.remove_copy();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every cluster, or a summary when there are many.
fn log_clusters(state: &AppState) {
    const LISTED: usize = 20;
    let issuers = state.issuers.load();
    let all = issuers.all();
    for c in all.iter().take(LISTED) {
        let published = c.published();
        tracing::info!(
            cluster = c.id(),
            issuer = c.config.issuer,
            kid = published.keys.current().kid(),
            alg = %published.keys.current().algorithm(),
            publish_only = c.config.publish_only,
            "serving issuer"
        );
    }
    if all.is_empty() {
        tracing::warn!("no clusters yet: create one with the admin API (POST /admin/v1/clusters) or `workload-issuer clusters add`");
    }
    if all.len() > LISTED {
        tracing::info!(
            "and {} more clusters (`workload-issuer clusters list` shows them all)",
            all.len() - LISTED
        );
    }
}

/// Starts the task that applies rotation policies (when this replica
/// rotates) and follows key-set changes made by other replicas or the CLI.
fn start_background(config: &Config, state: &AppState) -> Background {
    let issuers = state.issuers.load();
    let mut managed = Vec::with_capacity(issuers.all().len());
    let mut loaded = Vec::with_capacity(issuers.all().len());
    for cluster in issuers.all() {
        managed.push(fleet::managed(cluster, &state.clock));
        loaded.push(cluster.published().keys.clone());
    }
    let settings = BackgroundSettings {
        rotate: config.rotation.enabled,
        interval: config.rotation.interval,
        reload_interval: config.rotation.reload_interval,
        gate: state.store.as_ref().map(|r| r.status.leader.clone()),
    };
    state.health.reload.last_good.store(
        unix_seconds(state.clock.now()),
        std::sync::atomic::Ordering::Relaxed,
    );
    Background::start(
        store_of(config, state.store.as_deref()),
        managed,
        loaded,
        settings,
        state.health.reload.clone(),
        state.clock.clone(),
    )
}

/// `workload-issuer serve`: prepare, bind the configured address, serve until
/// SIGTERM or SIGINT.
pub async fn serve(mut config: Config) -> Result<(), StartError> {
    // Signals first: SIGTERM during a long start (keys being generated) stops
    // the server cleanly once it is up, instead of killing it mid-write, and
    // a SIGHUP then (a reload sent as the service starts) is kept for later
    // instead of killing it by the signal's default action.
    let shutdown = server::shutdown_signal();
    let reloads = reload_signal();
    let replica = match &config.store {
        crate::config::StoreConfig::Etcd(etcd) => Some(Arc::new(
            Replica::open(etcd)
                .await
                .map_err(|e| StartError::Etcd(e.to_string()))?,
        )),
        crate::config::StoreConfig::Dir => None,
    };
    let state = match prepare_on(&config, SystemClock::shared(), replica.clone()).await {
        Ok(state) => state,
        Err(e) => {
            if let Some(r) = &replica {
                r.remove_copy();
            }
            return Err(e);
        }
    };
    // Each cluster's settings live on in its `issuer::Cluster`; a second
    // copy held for the server's life is 5 MB with 10,000 clusters.
    config.clusters = Vec::new();
    let sockets = Sockets::bind(&config).await?;
    run(&config, state, sockets, shutdown, reloads).await
}

/// SIGHUP, which makes a running server re-read every key set at once.
pub struct ReloadSignal(std::io::Result<tokio::signal::unix::Signal>);

/// Listens for SIGHUP from now on: take it before anything can send one.
pub fn reload_signal() -> ReloadSignal {
    ReloadSignal(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    ))
}
