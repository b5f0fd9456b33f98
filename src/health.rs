//! What the server knows about its own state: listeners, key reloads, TLS
//! reloads. Read by `/readyz` and `/metrics`. It reads the key-rotation
//! task's report (`keys::rotation::ReloadStatus`); rotation imports nothing
//! of this module.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::issuer::Issuers;
use crate::keys::rotation::ReloadStatus;
use crate::server::{ListenerStats, TlsSource};

/// One listener as health checks and metrics see it.
pub struct ListenerInfo {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
    pub tls: Option<Arc<TlsSource>>,
}

/// Why the server is not ready: a summary anyone may see, and the detail
/// (paths, OS errors) for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub summary: String,
    pub detail: Option<String>,
}

impl Problem {
    fn new(summary: String) -> Self {
        Problem {
            summary,
            detail: None,
        }
    }

    /// The summary with its detail.
    pub fn full(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}: {d}", self.summary),
            None => self.summary.clone(),
        }
    }
}

/// What the last reloads of the config and the cluster registry found wrong.
#[derive(Debug, Default)]
pub struct ConfigStatus {
    /// The config file's problems (it did not load; the running one stays).
    pub file: Option<String>,
    /// Clusters of the registry that could not be served, with the reason.
    pub clusters: Vec<(String, String)>,
    /// Clusters of the config file that could not be served since the last
    /// reload, with the reason.
    pub file_clusters: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Health {
    /// Outcome of the key-rotation thread's reloads of the key sets.
    pub reload: Arc<ReloadStatus>,
    /// Why the config file last failed to reload (the running config stays),
    /// until one loads; and the clusters of the registry that could not be
    /// served, with the reason.
    pub config: std::sync::Mutex<ConfigStatus>,
    listeners: OnceLock<Vec<ListenerInfo>>,
    /// The etcd store's state, on a server that keeps its keys there.
    pub store: OnceLock<Arc<crate::etcd::StoreStatus>>,
}

impl Health {
    /// What the last reloads of the config file and of the cluster registry
    /// found wrong. Shown on the API listener's `/readyz` only: a bad config
    /// pushed to every replica must not take discovery off the public face
    /// of all of them, while the running config keeps serving.
    pub fn config_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some((summary, why)) = self.store.get().and_then(|s| s.problem()) {
            problems.push(Problem {
                summary: summary.into(),
                detail: Some(why),
            });
        }
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &config.file {
            problems.push(Problem {
                summary: "the config file did not reload (the running config stays in use; a \
                          restart would fail)"
                    .into(),
                detail: Some(why.clone()),
            });
        }
        for (cluster, why) in config.clusters.iter().chain(&config.file_clusters) {
            problems.push(Problem {
                summary: format!("cluster \"{cluster}\" could not be served"),
                detail: Some(why.clone()),
            });
        }
        problems
    }

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
    pub fn readiness(&self, issuers: &Issuers) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        for cluster in issuers.all() {
            if cluster.published().keys.keys().is_empty() {
                problems.push(Problem::new(format!(
                    "cluster \"{}\" has no keys loaded",
                    cluster.id()
                )));
            }
        }
        let listeners = self.listeners();
        if listeners.is_empty() {
            problems.push(Problem::new("the listeners are not up yet".into()));
        }
        for l in listeners {
            if !l.stats.up.load(Ordering::Relaxed) {
                problems.push(Problem::new(format!(
                    "the {} listener is not accepting connections",
                    l.name
                )));
            }
            if let Some(tls) = &l.tls {
                let failing = tls
                    .failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(why) = failing {
                    problems.push(Problem {
                        summary: format!(
                            "the {} listener's TLS files could not be reloaded (the previous certificate is in use)",
                            l.name
                        ),
                        detail: Some(why),
                    });
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
            problems.push(Problem {
                summary: format!(
                    "cluster \"{cluster}\": its keys on disk no longer load (the previous keys are \
                     in use; a restart would fail)"
                ),
                detail: Some(why.clone()),
            });
        }
        for (cluster, why) in self
            .reload
            .rotation_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            problems.push(Problem {
                summary: format!(
                    "cluster \"{cluster}\": the last key rotation step failed (the current keys \
                     keep serving; rotation is retried)"
                ),
                detail: Some(why.clone()),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
