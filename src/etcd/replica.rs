//! What a server on the etcd store runs beside its listeners:
//!
//! - the *follower* watches the prefix and writes each change into the
//!   working copy, then has the key sets re-read (the registry's generation
//!   tells the fleet); a broken watch (etcd restarted, history compacted, a
//!   member lost) is followed by a full re-read, then a new watch;
//! - the *prober* asks etcd every second whether it answers, for `/readyz`
//!   and the `workload_issuer_store_up` metric;
//! - the *election*: one replica holds a lease-backed key, and only it runs
//!   rotation steps; its lease lapses `lease_ttl` after it stops renewing it
//!   (killed, cut off), and another replica takes the key;
//! - the *committer* commits the clusters this replica changed (rotation
//!   steps, the admin API) as soon as the change's lock is released.
//!
//! With etcd unreachable the server keeps serving what it has; rotation and
//! cluster changes wait; everything catches up when etcd answers again.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcdv3client::pb;
use tokio::sync::{watch, Notify};

use super::client::{self, Etcd, EtcdError};
use super::layout;
use super::mirror::{Changed, Commit, Mirror, MirrorError};
use super::seal::Keyring;
use super::status::StoreStatus;
use super::workdir::private_dir;
use crate::config::EtcdStoreConfig;
use crate::keys::rotation::ReloadHandle;
use crate::keys::store::Observer;

const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long probes must fail before etcd counts as unreachable.
const DOWN_AFTER: Duration = Duration::from_secs(3);

/// Brings the server's cluster set up to date with the registry's entries
/// of these clusters, returning once it is (the fleet's targeted resync).
pub type Resync = Arc<
    dyn Fn(Vec<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A server's link to the etcd store.
pub struct Replica {
    mirror: Arc<Mirror>,
    pub status: Arc<StoreStatus>,
    /// Woken when the key store changes a cluster.
    wake: Arc<Notify>,
    /// Woken when the working copy changed under the key sets: one re-read
    /// covers every change made before it starts.
    reread: Arc<Notify>,
    /// Clusters whose registry files changed since the last re-read.
    registry_changed: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The lease this replica held when it lost touch with etcd: revoked
    /// once etcd answers (it may have survived an etcd restart, and would
    /// keep the leader key from every replica until it lapses).
    lost_lease: std::sync::Mutex<Option<i64>>,
    lease_ttl: Duration,
    /// The revision the working copy has followed up to.
    revision: AtomicI64,
    name: String,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("mirror", &self.mirror)
            .finish()
    }
}

/// Why a replica could not start on the etcd store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("kek_file: {0}")]
    Kek(#[from] super::seal::SealError),
    #[error(
        "{0}; a replica starting has no state of its own to serve until it has read the store, \
         so it does not start: check that etcd runs and that [store] endpoints reach it{1}"
    )]
    Unreachable(EtcdError, &'static str),
    #[error("reading the store from etcd: {0}")]
    Read(MirrorError),
    #[error("{0}")]
    Etcd(EtcdError),
}

/// Opens the store: the KEK, the connection, a working copy in a private
/// directory. Blocking work runs on the blocking pool.
pub async fn open_mirror(config: &EtcdStoreConfig) -> Result<Arc<Mirror>, OpenError> {
    let kek = Arc::new(Keyring::read(&config.kek_file, &config.extra_kek_files)?);
    let etcd = Etcd::connect(config).await.map_err(OpenError::Etcd)?;
    let root = private_dir(config.cache_dir.as_deref())
        .map_err(|e| OpenError::Read(MirrorError::Io(e)))?;
    let rt = tokio::runtime::Handle::current();
    let mirror = Mirror::new(etcd, kek, root, rt).map_err(OpenError::Read)?;
    Ok(Arc::new(mirror))
}

fn open_error(e: MirrorError, config: &EtcdStoreConfig) -> OpenError {
    let hint = match &config.tls {
        Some(tls) if tls.cert_file.is_none() => {
            "; over TLS, a member that refuses the handshake looks the same: check ca_file, \
             and set cert_file and key_file if etcd asks for client certificates \
             (--client-cert-auth)"
        }
        Some(_) => {
            "; over TLS, a member that refuses the handshake looks the same: check ca_file, \
             cert_file and key_file"
        }
        None => "",
    };
    match e {
        MirrorError::Etcd(e) if e.is_unreachable() => OpenError::Unreachable(e, hint),
        e => OpenError::Read(e),
    }
}

impl Replica {
    /// Opens the store and reads all of it into the working copy; etcd not
    /// answering, or a key that does not open under the KEK, is an error:
    /// there is nothing to serve.
    pub async fn open(config: &EtcdStoreConfig) -> Result<Replica, OpenError> {
        let mirror = open_mirror(config).await?;
        let m = mirror.clone();
        let pulled = tokio::task::spawn_blocking(move || m.pull_all())
            .await
            .map_err(|e| OpenError::Read(MirrorError::Other(e.to_string())))?
            .map_err(|e| open_error(e, config))?;
        tracing::info!(
            endpoints = mirror.etcd.endpoints(),
            prefix = mirror.etcd.prefix,
            clusters = pulled.clusters.len(),
            kek = mirror.kek().id(),
            working_copy = %mirror.root().display(),
            "read the store from etcd"
        );
        let status = StoreStatus::new(mirror.etcd.endpoints());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(Replica {
            revision: AtomicI64::new(mirror.revision()),
            mirror,
            status: Arc::new(status),
            wake: Arc::default(),
            reread: Arc::default(),
            registry_changed: std::sync::Mutex::default(),
            lost_lease: std::sync::Mutex::new(None),
            lease_ttl: config.lease_ttl,
            name: format!("{}/{}", host.trim(), std::process::id()),
        })
    }

    /// The working copy: the keys dir every other module uses.
    pub fn root(&self) -> &Path {
        self.mirror.root()
    }

    /// What the key store tells of each change: the cluster is committed
    /// once its change is done.
    pub fn observer(&self) -> Observer {
        let (mirror, wake) = (self.mirror.clone(), self.wake.clone());
        Arc::new(move |id: &str| {
            mirror.mark(id);
            wake.notify_one();
        })
    }

    /// Commits the named clusters now (the admin API waits for it).
    pub async fn commit(&self, ids: Vec<String>) -> Result<Commit, MirrorError> {
        let mirror = self.mirror.clone();
        let outcome = tokio::task::spawn_blocking(move || mirror.commit(&ids))
            .await
            .map_err(|e| MirrorError::Other(e.to_string()))?;
        if let Ok(c) = &outcome {
            for id in &c.conflicts {
                tracing::warn!(
                    cluster = id,
                    "another replica or the CLI changed the cluster first: this replica's change was dropped and etcd's version is served"
                );
            }
        }
        outcome
    }

    /// Commits every cluster changed so far and not yet committed.
    pub async fn commit_pending(&self) -> Result<Commit, MirrorError> {
        let ids = self.mirror.dirty();
        if ids.is_empty() {
            return Ok(Commit::default());
        }
        self.commit(ids).await
    }

    /// Runs the follower, prober, election and committer until `stop`.
    pub fn start(
        self: &Arc<Self>,
        reload: ReloadHandle,
        resync: Resync,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().follow(stop.clone())),
            tokio::spawn(self.clone().probe(stop.clone())),
            tokio::spawn(self.clone().elect(stop.clone())),
            tokio::spawn(self.clone().committer(stop.clone())),
            tokio::spawn(self.clone().rereader(reload, resync, stop)),
        ]
    }

    /// Asks etcd every second whether it answers; a failure counts once it
    /// lasts [`DOWN_AFTER`] (an etcd election after its leader is lost
    /// takes a second or two, and is no outage).
    async fn probe(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let key = format!("{}/leader", self.mirror.etcd.prefix).into_bytes();
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match self.mirror.etcd.probe(key.clone()).await {
                Ok(()) => {
                    failing_since = None;
                    self.status.set(true, None);
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= DOWN_AFTER {
                        self.status.set(false, Some(e.to_string()));
                    }
                }
            }
            if stopped(&mut stop, PROBE_EVERY).await {
                return;
            }
        }
    }

    async fn wait_up(&self, stop: &mut watch::Receiver<bool>) -> bool {
        while !self.status.up.load(Ordering::Acquire) {
            if stopped(stop, Duration::from_millis(200)).await {
                return false;
            }
        }
        true
    }

    async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let from = self.revision.load(Ordering::Acquire) + 1;
            let why = tokio::select! {
                why = self.watch_from(from) => why,
                _ = stop.wait_for(|s| *s) => return,
            };
            tracing::warn!(
                reason = why,
                "the watch on the store broke: reading everything again"
            );
            // Whatever was missed: commit this replica's own changes first,
            // then read all of etcd again.
            loop {
                if !self.wait_up(&mut stop).await {
                    return;
                }
                let _ = self.commit_pending().await;
                let mirror = self.mirror.clone();
                match tokio::task::spawn_blocking(move || mirror.pull_all_lenient()).await {
                    Ok(Ok(changed)) => {
                        self.revision
                            .store(self.mirror.revision(), Ordering::Release);
                        self.status.set_lagging(None);
                        self.status.set_unopened(&changed.unopened);
                        for why in &changed.unopened {
                            tracing::error!(problem = why, "a key in etcd does not open under this replica's key-encryption keys; the copy keeps what it had");
                        }
                        self.changed(&changed);
                        break;
                    }
                    Ok(Err(MirrorError::Etcd(e))) if e.is_unreachable() => {
                        // The probe says so; this waits for it to answer.
                        tracing::debug!(error = %e, "reading the store again: etcd does not answer");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reading the store again failed; retrying");
                        self.status
                            .set_lagging(Some(format!("reading the store again: {e}")));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the store again failed");
                        self.status
                            .set_lagging(Some(format!("reading the store again: {e}")));
                    }
                }
                if stopped(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
            }
        }
    }

    /// Follows the prefix from `from`; returns why the watch ended.
    async fn watch_from(&self, from: i64) -> String {
        let (start, end) = layout::prefix_range(&self.mirror.etcd.prefix);
        let mut client = self.mirror.etcd.client();
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: start,
                    range_end: end,
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        let (requests, rx) = tokio::sync::mpsc::channel(1);
        if requests.send(create).await.is_err() {
            return "starting the watch: the request channel closed".into();
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut watcher =
            match tokio::time::timeout(client::CALL_TIMEOUT, client.watch.watch(stream)).await {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => return format!("starting the watch: {e}"),
                Err(_) => return "starting the watch: no answer".into(),
            };
        loop {
            let reply = match watcher.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return "etcd closed the watch".into(),
                Err(e) => return e.to_string(),
            };
            let _ = &requests; // the watch lasts as long as its request stream
            if reply.compact_revision > 0 {
                return format!(
                    "history up to revision {} was compacted",
                    reply.compact_revision
                );
            }
            if reply.canceled {
                return format!("etcd cancelled the watch: {}", reply.cancel_reason);
            }
            let last = reply.header.as_ref().map_or(0, |h| h.revision);
            if reply.events.is_empty() {
                continue;
            }
            let mirror = self.mirror.clone();
            let events = reply.events;
            match tokio::task::spawn_blocking(move || mirror.apply(events)).await {
                Ok(Ok(changed)) => {
                    self.revision.fetch_max(last, Ordering::AcqRel);
                    self.changed(&changed);
                }
                Ok(Err(e)) => return format!("writing a change into the working copy: {e}"),
                Err(e) => return e.to_string(),
            }
        }
    }

    /// Has the key sets re-read after the working copy changed (the fleet
    /// sees the registry's generation move by itself).
    fn changed(&self, changed: &Changed) {
        if !changed.unopened.is_empty() {
            self.status.set_unopened(&changed.unopened);
        }
        if !changed.clusters.is_empty() {
            tracing::debug!(clusters = changed.clusters.len(), "the store changed");
            self.registry_changed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(changed.registry_ids.iter().cloned());
            self.reread.notify_one();
        }
    }

    /// Has the key sets re-read whenever the copy changed, never holding up
    /// the watch: changes that arrive during a re-read (a rotation pass's
    /// heartbeats touch every cluster) are taken by the next one, together.
    ///
    /// Clusters created or deleted go to the server's cluster set first
    /// (`resync`), so a deleted one is no longer served before its key set
    /// would be re-read and found gone.
    async fn rereader(
        self: Arc<Self>,
        reload: ReloadHandle,
        resync: Resync,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = self.reread.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let ids: Vec<String> = std::mem::take(
                &mut *self
                    .registry_changed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            )
            .into_iter()
            .collect();
            if !ids.is_empty() {
                resync(ids).await;
            }
            reload.reload_changed().await;
        }
    }

    async fn committer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            loop {
                if !self.wait_up(&mut stop).await {
                    return;
                }
                match self.commit_pending().await {
                    Ok(c) => {
                        self.changed(&c.changed);
                        break;
                    }
                    Err(e) => {
                        // What was not committed stays marked; again soon.
                        tracing::warn!(error = %e, "committing to the store failed; retrying when it answers");
                        if stopped(&mut stop, Duration::from_millis(500)).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn elect(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let key = format!("{}/leader", self.mirror.etcd.prefix).into_bytes();
        let ttl = i64::try_from(self.lease_ttl.as_secs()).unwrap_or(10).max(1);
        let poll = (self.lease_ttl / 8).max(Duration::from_millis(100));
        loop {
            if !self.wait_up(&mut stop).await {
                return;
            }
            if !self.status.following() || !self.revoke_lost().await {
                if stopped(&mut stop, poll).await {
                    return;
                }
                continue;
            }
            match self.campaign(&key, ttl, &mut stop).await {
                Ok(true) => return, // stopped while holding it
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the rotation lease could not be taken or kept")
                }
            }
            if stopped(&mut stop, poll).await {
                return;
            }
        }
    }

    /// Revokes the lease lost with etcd, if any; `false` while etcd does not
    /// take it (try again later).
    async fn revoke_lost(&self) -> bool {
        let lost = *self.lost_lease.lock().unwrap_or_else(|e| e.into_inner());
        let Some(id) = lost else {
            return true;
        };
        let etcd = &self.mirror.etcd;
        let mut lease = etcd.client().lease;
        match etcd
            .deadline(
                "revoking a lost lease",
                lease.lease_revoke(pb::LeaseRevokeRequest { id }),
            )
            .await
        {
            Err(e) if e.is_unreachable() => false,
            // Revoked, or already lapsed.
            _ => {
                *self.lost_lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
                true
            }
        }
    }

    /// Tries to take the leader key; while it holds it, renews its lease.
    /// Returns `Ok(true)` when stopped while holding it (the lease is
    /// revoked so another replica takes over at once).
    async fn campaign(
        &self,
        key: &[u8],
        ttl: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, EtcdError> {
        let etcd = &self.mirror.etcd;
        let mut client = etcd.client();
        let grant = pb::LeaseGrantRequest { ttl, id: 0 };
        let lease = etcd
            .deadline("granting a lease", client.lease.lease_grant(grant))
            .await?
            .id;
        let revoke = |client: &mut etcdv3client::Client<client::Service>| {
            let mut lease_client = client.lease.clone();
            async move {
                let _ = etcd
                    .deadline(
                        "revoking a lease",
                        lease_client.lease_revoke(pb::LeaseRevokeRequest { id: lease }),
                    )
                    .await;
            }
        };
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: key.to_vec(),
                range_end: Vec::new(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            }],
            success: vec![client::put(
                key.to_vec(),
                self.name.clone().into_bytes(),
                lease,
            )],
            failure: Vec::new(),
        };
        let won = etcd.txn(request).await?.succeeded;
        if !won {
            revoke(&mut client).await;
            return Ok(false);
        }
        let (renew, rx) = tokio::sync::mpsc::channel(1);
        // The stream opens once it carries a first request.
        let _ = renew.send(pb::LeaseKeepAliveRequest { id: lease }).await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut alive = etcd
            .deadline("renewing the lease", client.lease.lease_keep_alive(stream))
            .await?;
        etcd.deadline("renewing the lease", alive.message()).await?;
        self.status.leader.store(true, Ordering::Release);
        tracing::info!(
            replica = self.name,
            "took the rotation lease: this replica runs rotation"
        );
        let every = self.lease_ttl / 3;
        let outcome = loop {
            if stopped(stop, every).await {
                revoke(&mut client).await;
                break Ok(true);
            }
            let renewed = async {
                if renew
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
                alive.message().await
            };
            if !self.status.following() {
                revoke(&mut client).await;
                break Ok(false);
            }
            match tokio::time::timeout(every, renewed).await {
                Ok(Ok(Some(r))) if r.ttl > 0 => continue,
                Ok(Ok(_)) => break Ok(false),
                Ok(Err(e)) => {
                    break Err(EtcdError::Unreachable {
                        endpoints: etcd.endpoints().to_owned(),
                        reason: format!("renewing the lease: {e}"),
                    })
                }
                Err(_) => {
                    break Err(EtcdError::Unreachable {
                        endpoints: etcd.endpoints().to_owned(),
                        reason: "renewing the lease: no answer".into(),
                    })
                }
            }
        };
        self.status.leader.store(false, Ordering::Release);
        match &outcome {
            Ok(true) => tracing::info!(replica = self.name, "gave up the rotation lease: stopping"),
            Ok(false) => tracing::warn!(
                replica = self.name,
                "no longer holds the rotation lease: rotation stops here"
            ),
            Err(_) => {
                *self.lost_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                tracing::warn!(
                    replica = self.name,
                    "lost touch with etcd: no longer holds the rotation lease, rotation stops here"
                );
            }
        }
        outcome
    }

    /// Removes the working copy (it holds keys in the clear).
    pub fn remove_copy(&self) {
        if let Err(e) = std::fs::remove_dir_all(self.root()) {
            tracing::warn!(path = %self.root().display(), error = %e, "could not remove the working copy");
        }
    }
}

/// Waits `d`; `true` if told to stop meanwhile.
async fn stopped(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(d) => false,
    }
}
