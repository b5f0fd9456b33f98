//! Where the etcd store stands, as `/readyz` and `/metrics` see it: whether
//! etcd answers, whether this replica holds the rotation lease, follows the
//! store, and opens every key in it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The store's state as health checks and metrics see it.
#[derive(Debug, Default)]
pub struct StoreStatus {
    pub endpoints: String,
    /// etcd answered the last probe.
    pub up: AtomicBool,
    /// This replica holds the rotation lease (its rotation steps run).
    pub leader: Arc<AtomicBool>,
    problem: Mutex<Option<String>>,
    /// Why the working copy does not follow etcd (a full re-read that
    /// keeps failing), while it does not.
    lagging: Mutex<Option<String>>,
    /// Keys in etcd that do not open under this replica's KEKs.
    unopened: Mutex<Option<String>>,
}

impl StoreStatus {
    /// The status of a store at `endpoints` that answered at start.
    pub fn new(endpoints: &str) -> StoreStatus {
        let status = StoreStatus {
            endpoints: endpoints.to_owned(),
            ..Default::default()
        };
        status.up.store(true, Ordering::Release);
        status
    }

    /// What is wrong with the store, if anything: a summary and the detail.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let get = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !self.up.load(Ordering::Acquire) {
            let why = get(&self.problem)
                .unwrap_or_else(|| format!("etcd at {} is unreachable", self.endpoints));
            return Some((
                "the store (etcd) is unreachable: the last good state is served; rotation and \
                 cluster changes wait until it answers",
                why,
            ));
        }
        if let Some(why) = get(&self.lagging) {
            return Some((
                "this replica does not follow the store (etcd): it serves what it last read \
                 and does not rotate",
                why,
            ));
        }
        get(&self.unopened).map(|why| {
            (
                "keys in the store (etcd) do not open under this replica's key-encryption keys \
                 (kek_file, extra_kek_files): this replica serves the copies it had of them",
                why,
            )
        })
    }

    /// Whether the working copy follows etcd now.
    pub fn following(&self) -> bool {
        self.lagging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    pub(super) fn set_lagging(&self, why: Option<String>) {
        *self.lagging.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(super) fn set_unopened(&self, unopened: &[String]) {
        let why = (!unopened.is_empty()).then(|| {
            let shown: Vec<&str> = unopened.iter().take(3).map(String::as_str).collect();
            format!("{} key(s), such as {}", unopened.len(), shown.join("; "))
        });
        *self.unopened.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(super) fn set(&self, up: bool, why: Option<String>) {
        let was = self.up.swap(up, Ordering::AcqRel);
        if was != up {
            match &why {
                Some(why) => tracing::error!(problem = why, "the store (etcd) is unreachable: serving the last good state; rotation and cluster changes wait"),
                None => tracing::info!(endpoints = self.endpoints, "the store (etcd) answers again"),
            }
        }
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}
