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
use crate::health::ListenerInfo;
use crate::http::{app_for, AppState, Face};
use crate::issuer::auth::ApiClients;
use crate::issuer::Issuers;
use crate::keys::policy::Source;
use crate::keys::rotation::{self, Background, BackgroundSettings, Managed};
use crate::keys::store::KeyStore;
use crate::server::{self, ListenerStats, TlsSource};
use crate::{externaljwt, signer};

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

/// Where a cluster's keys come from: generated of its configured kind, or
/// imported by hand when it signs its own tokens.
pub fn key_source(c: &crate::config::ClusterConfig) -> Source {
    if c.publish_only {
        Source::Imported
    } else {
        Source::Generated(c.key_spec)
    }
}

/// Loads or creates every cluster's keys and the API clients; `clock` is
/// the time the server stamps tokens and keys with.
pub async fn prepare(config: &Config, clock: SharedClock) -> Result<AppState, StartError> {
    let store = key_store(config);
    let now = clock.now();
    let settings = config.clusters.clone();
    let rotate = config.rotation.enabled;
    // Key generation (RSA especially) and file reads block: keep them off the
    // async workers.
    let issuers = off_the_workers(move || {
        // Someone else able to write the keys dir could plant a key.
        store.check_dirs(None).map_err(StartError::Store)?;
        let mut clusters = Vec::with_capacity(settings.len());
        for c in settings {
            let keys = rotation::load_at_start(
                &store,
                &c.id,
                key_source(&c),
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
            clusters.push((c, Arc::new(keys)));
        }
        // Builds every cluster's documents: CPU work, kept off the workers.
        Ok::<_, StartError>(Issuers::new(clusters))
    })
    .await?;

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
        |records, c| match key_source(c) {
            Source::Generated(spec) => crate::keys::policy::next_due(records, spec, &c.rotation),
            Source::Imported => crate::keys::policy::replace_by_hand_due(records, &c.rotation),
        },
        clock,
    )?;
    state.request_timeout = config.limits.request_timeout;
    Ok(state)
}

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
            Face::All => "discovery, JWKS, TokenRequest, TokenReview, health, metrics",
            Face::Public => "discovery, JWKS, health",
            Face::Api => "TokenRequest, TokenReview, metrics, health, discovery, JWKS",
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
    let signers = bind_signers(&state).await?;
    let background = start_background(config, &state);
    let hup = background.reload_handle();
    let sighup = tokio::spawn(async move {
        let mut signal = match reloads.0 {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; key sets reload on their interval only");
                return;
            }
        };
        while signal.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading key sets");
            hup.reload_now();
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

    // One shutdown signal, fanned out to every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signing: Vec<_> = signers
        .into_iter()
        .map(|(cluster, socket)| {
            let mut stop = stop_rx.clone();
            let backend = Arc::new(signer::LocalSigner::new(
                cluster.clone(),
                state.signing.clone(),
                state.metrics.clone(),
            ));
            tokio::spawn(async move {
                let served = externaljwt::serve(socket, backend, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
                if let Err(e) = served {
                    tracing::error!(cluster = cluster.id(), error = %e, "the external signer stopped");
                }
            })
        })
        .collect();
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
    for task in serving.into_iter().chain(signing) {
        task.await.map_err(|e| StartError::Join(e.to_string()))?;
    }
    for w in watchers {
        w.abort();
    }
    sighup.abort();
    background.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the external-signer socket of each cluster that names one
/// (REFERENCE §9), before anything is served: a socket that cannot be had
/// stops the start.
async fn bind_signers(
    state: &AppState,
) -> Result<Vec<(Arc<crate::issuer::Cluster>, externaljwt::Socket)>, StartError> {
    let mut bound = Vec::new();
    for cluster in state.issuers.load().all() {
        let c = &cluster.config;
        let Some(at) = &c.kubernetes_signer else {
            continue;
        };
        let failed = |source| StartError::Signer {
            cluster: c.id.clone(),
            source,
        };
        let gid = match &at.group {
            Some(group) => Some(externaljwt::group_id(group).map_err(failed)?),
            None => None,
        };
        let socket = externaljwt::bind(&at.path, gid).await.map_err(failed)?;
        tracing::info!(
            cluster = c.id,
            mode = if gid.is_some() { "0660" } else { "0600" },
            group = at.group.as_deref().unwrap_or(""),
            "external token signer (ExternalJWTSigner v1, v1alpha1) on unix://{}",
            at.path.display()
        );
        bound.push((cluster.clone(), socket));
    }
    Ok(bound)
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
    if all.len() > LISTED {
        tracing::info!(
            "and {} more clusters (`workload-issuer keys list` shows them all)",
            all.len() - LISTED
        );
    }
}

/// Starts the task that applies rotation policies (when this replica
/// rotates) and follows key-set changes made by other replicas or the CLI.
fn start_background(config: &Config, state: &AppState) -> Background {
    let mut managed = Vec::new();
    let mut loaded = Vec::new();
    for cluster in state.issuers.load().all() {
        let (target, clock) = (cluster.clone(), state.clock.clone());
        managed.push(Managed {
            cluster: cluster.id().to_owned(),
            source: key_source(&cluster.config),
            policy: cluster.config.rotation,
            publish: Box::new(move |set| target.replace_keys(set, clock.now())),
        });
        loaded.push(cluster.published().keys.clone());
    }
    let settings = BackgroundSettings {
        rotate: config.rotation.enabled,
        interval: config.rotation.interval,
        reload_interval: config.rotation.reload_interval,
    };
    state.health.reload.last_good.store(
        unix_seconds(state.clock.now()),
        std::sync::atomic::Ordering::Relaxed,
    );
    Background::start(
        key_store(config),
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
    let state = prepare(&config, SystemClock::shared()).await?;
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
