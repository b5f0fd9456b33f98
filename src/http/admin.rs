//! The admin API: clusters created, listed, shown, recreated and deleted at
//! run time (`/admin/v1/clusters`), for API clients with `admin = true`.
//!
//! The operations are `keys::registry`'s, on the keys dir every server
//! sharing it reads; after one, the server's own cluster set is brought up
//! to date before the answer (`Admin::resync`), so a 201 means served here.

use std::path::PathBuf;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::keys::registry::Seen;
use crate::keys::store::KeyStore;

/// What the admin API works with beyond the live clusters.
pub struct Admin {
    pub store: KeyStore,
    /// Replaced when the config is reloaded.
    pub settings: ArcSwap<AdminSettings>,
    resync: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// The other end, until whoever keeps the cluster set takes it.
    requests: std::sync::Mutex<Option<ResyncRequests>>,
    /// The registry's generation the served set was loaded at, and its
    /// files as read then, for whoever keeps the cluster set to take.
    pub loaded: std::sync::Mutex<Option<(u64, Seen)>>,
}

/// The settings of the config the admin API follows.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// The base of a created cluster's default issuer URL.
    pub public_url: String,
    /// The config file, named when a cluster declared there is refused.
    pub file: Option<PathBuf>,
}

/// The requests for a resync, for whoever keeps the cluster set (`serve`):
/// answer each once the set is up to date with the keys dir.
pub type ResyncRequests = mpsc::UnboundedReceiver<oneshot::Sender<()>>;

impl Admin {
    pub fn new(store: KeyStore, settings: AdminSettings, loaded: (u64, Seen)) -> Admin {
        let (tx, rx) = mpsc::unbounded_channel();
        Admin {
            store,
            settings: ArcSwap::from_pointee(settings),
            resync: tx,
            requests: std::sync::Mutex::new(Some(rx)),
            loaded: std::sync::Mutex::new(Some(loaded)),
        }
    }

    /// The resync requests, for whoever keeps the cluster set: once.
    pub fn take_requests(&self) -> Option<ResyncRequests> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Brings this server's cluster set up to date with the keys dir (the
    /// registry and the key sets), returning once it is.
    pub async fn resync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.resync.send(tx).is_ok() {
            let _ = rx.await;
        }
    }
}
