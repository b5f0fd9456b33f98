//! What the server knows about its own state: listeners, key reloads, TLS
//! reloads. Read by `/readyz` and `/metrics`; written by `serve` and the
//! key-rotation thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::issuer::Issuers;
pub use crate::keys::rotation::ReloadStatus;
use crate::server::{ListenerStats, TlsSource};

/// One listener as health checks and metrics see it.
pub struct ListenerInfo {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
    pub tls: Option<Arc<TlsSource>>,
}

#[derive(Default)]
pub struct Health {
    /// Outcome of the key-rotation thread's reloads of the key sets.
    pub reload: Arc<ReloadStatus>,
    listeners: OnceLock<Vec<ListenerInfo>>,
}

impl Health {
    /// Records the listeners once they are bound; until then the server is
    /// not ready.
    pub fn set_listeners(&self, listeners: Vec<ListenerInfo>) {
        let _ = self.listeners.set(listeners);
    }

    pub fn listeners(&self) -> &[ListenerInfo] {
        self.listeners.get().map_or(&[], Vec::as_slice)
    }

    /// Ready: every cluster has keys to sign and publish, every listener is
    /// accepting, and the last reloads of key sets and TLS files were good.
    /// Otherwise, each reason it is not.
    pub fn readiness(&self, issuers: &Issuers) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for cluster in issuers.all() {
            if cluster.published().keys.keys().is_empty() {
                problems.push(format!("cluster \"{}\" has no keys loaded", cluster.id()));
            }
        }
        let listeners = self.listeners();
        if listeners.is_empty() {
            problems.push("the listeners are not up yet".into());
        }
        for l in listeners {
            if !l.stats.up.load(Ordering::Relaxed) {
                problems.push(format!(
                    "the {} listener on {} is not accepting connections",
                    l.name, l.addr
                ));
            }
            if let Some(tls) = &l.tls {
                if let Some(why) = tls
                    .failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    problems.push(format!(
                        "the {} listener's TLS files could not be reloaded (the previous certificate is in use): {why}",
                        l.name
                    ));
                }
            }
        }
        for (cluster, why) in self
            .reload
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            problems.push(format!(
                "cluster \"{cluster}\": the last key reload failed (the previous keys are in use): {why}"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
