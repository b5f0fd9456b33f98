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
}

/// Loads or creates every cluster's keys and the API clients.
pub async fn prepare(config: &Config) -> Result<AppState, StartError> {
    let store = KeyStore::new(&config.keys_dir);
    let settings = config.clusters.clone();
    // Key generation (RSA especially) and file reads block: keep them off the
    // async workers.
    let clusters = tokio::task::spawn_blocking(move || {
        let mut clusters = Vec::with_capacity(settings.len());
        for c in settings {
            let (keys, created) = store
                .load_or_create(&c.id, c.key_spec, SystemTime::now())
                .map_err(|source| StartError::Keys {
                    cluster: c.id.clone(),
                    source,
                })?;
            let signer = keys.signer();
            if created {
                tracing::info!(cluster = c.id, kid = signer.kid(), alg = %signer.algorithm(), "generated the first signing key");
            }
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
    Ok(AppState {
        issuers: Arc::new(Issuers::new(clusters)),
        clients: Arc::new(clients),
    })
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
    Ok(())
}

/// `workload-issuer serve`: prepare, bind the configured address, serve until
/// SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let state = prepare(&config).await?;
    let listener = server::bind(config.listen).await?;
    run(&config, state, listener, server::shutdown_signal()).await
}
