//! The `serve` command: load every cluster's keys (creating first keys), the
//! API clients, then listen.
//!
//! Glue between `config`, `keys::store`, `issuer`, `http` and `server`.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{app, AppState};
use crate::issuer::auth::ApiClients;
use crate::issuer::{Cluster, Issuers};
use crate::keys::rotation::{self, Background, BackgroundSettings, Managed, ReloadStatus};
use crate::keys::store::KeyStore;
use crate::server;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cluster \"{cluster}\": {source}")]
    Keys {
        cluster: String,
        source: crate::keys::store::StoreError,
    },
    #[error(transparent)]
    Auth(#[from] crate::issuer::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("a background task failed: {0}")]
    Join(String),
    #[error("cluster \"{cluster}\": {source}")]
    Rotation {
        cluster: String,
        source: crate::keys::rotation::RotationError,
    },
}

/// Loads or creates every cluster's keys and the API clients.
pub async fn prepare(config: &Config) -> Result<AppState, StartError> {
    let store = KeyStore::new(&config.keys_dir);
    let settings = config.clusters.clone();
    let rotate = config.rotation.enabled;
    // Key generation (RSA especially) and file reads block: keep them off the
    // async workers.
    let clusters = tokio::task::spawn_blocking(move || {
        let mut clusters = Vec::with_capacity(settings.len());
        for c in settings {
            let keys_err = |source| StartError::Keys {
                cluster: c.id.clone(),
                source,
            };
            let keys = if rotate {
                // Catch up on whatever fell due while the server was down;
                // a cluster with nothing due is loaded without the lock.
                let now = SystemTime::now();
                let on_disk = store.read_manifest(&c.id).map_err(keys_err)?;
                let due = on_disk
                    .as_ref()
                    .is_none_or(|m| rotation::next_due(&m.keys, c.key_spec, &c.rotation) <= now);
                let manifest = if due {
                    let transitions = rotation::apply_policy(&store, &c.id, c.key_spec, &c.rotation, now)
                        .map_err(|source| StartError::Rotation {
                            cluster: c.id.clone(),
                            source,
                        })?;
                    rotation::log_transitions(&c.id, &transitions);
                    store.read_manifest(&c.id).map_err(keys_err)?
                } else {
                    on_disk
                };
                let manifest = manifest.ok_or_else(|| {
                    keys_err(crate::keys::store::StoreError::Manifest {
                        path: store.manifest_path(&c.id),
                        reason: "missing after the rotation step".into(),
                    })
                })?;
                store.load_set(&manifest).map_err(keys_err)?
            } else {
                let (keys, created) = store
                    .load_or_create(&c.id, c.key_spec, SystemTime::now())
                    .map_err(keys_err)?;
                if created {
                    let signer = keys.signer();
                    tracing::info!(cluster = c.id, kid = signer.kid(), alg = %signer.algorithm(), "generated the first signing key");
                }
                keys
            };
            let signer = keys.signer();
            if signer.spec() != c.key_spec {
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
        Ok::<_, StartError>(clusters)
    })
    .await
    .map_err(|e| StartError::Join(e.to_string()))??;

    let (clients, token_files) = ApiClients::load(&config.api_clients, &config.keys_dir)?;
    for f in &token_files {
        let verb = if f.generated { "generated" } else { "reads" };
        tracing::info!(client = f.client, path = %f.path.display(), "API client {:?} {verb} its bearer token at {}", f.client, f.path.display());
    }
    if clients.is_empty() {
        tracing::warn!(
            "no API clients are configured: minting is disabled, discovery and JWKS are served"
        );
    }
    Ok(AppState::new(Issuers::new(clusters), clients)?)
}

/// Serves until `shutdown` resolves.
pub async fn run(
    config: &Config,
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let tls = match &config.tls {
        Some(files) => Some(server::load_tls(&files.cert, &files.key)?),
        None => None,
    };
    let background = Arc::new(start_background(config, &state)?);
    let hup = background.clone();
    let sighup = tokio::spawn(async move {
        let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while signal.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading key sets");
            hup.reload_now();
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let local = listener.local_addr()?;
    for c in state.issuers.all() {
        tracing::info!(cluster = c.id(), issuer = c.config.issuer, "serving issuer");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "listening on {scheme}://{local}"
    );
    server::serve(listener, tls, app(state), shutdown).await;
    sighup.abort();
    drop(background);
    Ok(())
}

/// Starts the thread that applies rotation policies (when this replica
/// rotates) and follows key-set changes made by other replicas or the CLI.
fn start_background(config: &Config, state: &AppState) -> Result<Background, StartError> {
    let mut managed = Vec::new();
    let mut loaded = Vec::new();
    for cluster in state.issuers.all() {
        let target = cluster.clone();
        managed.push(Managed {
            cluster: cluster.id().to_owned(),
            spec: cluster.config.key_spec,
            policy: cluster.config.rotation,
            publish: Box::new(move |set| target.replace_keys(set)),
        });
        loaded.push(cluster.published().keys.clone());
    }
    let settings = BackgroundSettings {
        rotate: config.rotation.enabled,
        interval: config.rotation.interval,
        reload_interval: config.rotation.reload_interval,
    };
    Ok(Background::start(
        KeyStore::new(&config.keys_dir),
        managed,
        loaded,
        settings,
        Arc::new(ReloadStatus::default()),
    )?)
}

/// `workload-issuer serve`: prepare, bind the configured address, serve until
/// SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let state = prepare(&config).await?;
    let listener = server::bind(config.listen).await?;
    run(&config, state, listener, server::shutdown_signal()).await
}
