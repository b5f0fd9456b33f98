//! The background task: applies the rotation policy to every cluster when
//! something falls due (on the replicas that rotate), follows changes that
//! the CLI or other replicas make on disk, and reports what fails.
//!
//! Drives `keys::steps` and reads `keys::store`; never imports `http`,
//! `issuer`, a listener or health: the server hands in a callback that
//! publishes a new key set, and health reads [`ReloadStatus`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::manual::apply_retention;
use super::policy::{
    heartbeat_due, next_due, retention_due, ClockTrust, RotationError, RotationPolicy, Source,
    Transition,
};
use super::steps::{apply_policy, apply_policy_trusting, log_transitions};
use super::store::{KeyRecord, KeySet, KeyStore, StoreError};
use crate::clock::{unix_seconds, SharedClock};

/// A cluster's key set at start: as it is on disk, after one step that
/// catches up on whatever fell due while the server was down (when this
/// replica rotates), or with its first key created (when it does not). A
/// cluster with nothing due is loaded without the lock. The set carries the
/// stamp of its manifest, taken before it was read, so the background task
/// sees any change made since.
///
/// A cluster whose keys are imported (`publish_only`) gets no key made: it
/// must have had its first key imported.
pub fn load_at_start(
    store: &KeyStore,
    cluster: &str,
    source: impl Into<Source>,
    policy: &RotationPolicy,
    rotate: bool,
    now: SystemTime,
) -> Result<KeySet, RotationError> {
    let spec = match source.into() {
        Source::Generated(spec) => spec,
        Source::Imported => {
            let loaded = store.load(cluster, None)?;
            let due = loaded.as_ref().is_some_and(|set| {
                let records: Vec<KeyRecord> = set.keys().iter().map(|k| k.record.clone()).collect();
                retention_due(&records, policy).is_some_and(|at| at <= now)
            });
            let loaded = if rotate && due {
                let transitions = apply_retention(store, cluster, policy, now, ClockTrust::Check)?;
                log_transitions(cluster, &transitions);
                store.load(cluster, loaded.as_ref())?
            } else {
                loaded
            };
            return loaded.ok_or_else(|| RotationError::NothingImported {
                cluster: cluster.to_owned(),
            });
        }
    };
    if !rotate {
        let (keys, created) = store.load_or_create(cluster, spec, now)?;
        if created {
            let made: Vec<Transition> = keys
                .keys()
                .iter()
                .map(|k| Transition::Generated {
                    kid: k.record.kid.clone(),
                    alg: k.record.alg.clone(),
                    state: k.record.state,
                })
                .collect();
            log_transitions(cluster, &made);
        }
        return Ok(keys);
    }
    let loaded = store.load(cluster, None)?;
    let due = loaded.as_ref().is_none_or(|set| {
        let records: Vec<KeyRecord> = set.keys().iter().map(|k| k.record.clone()).collect();
        next_due(&records, spec, policy) <= now
    });
    let loaded = if due {
        let transitions = apply_policy(store, cluster, spec, policy, now)?;
        log_transitions(cluster, &transitions);
        store.load(cluster, loaded.as_ref())?
    } else {
        loaded
    };
    loaded.ok_or_else(|| {
        RotationError::Store(StoreError::Manifest {
            path: store.manifest_path(cluster),
            reason: "missing after the rotation step".into(),
        })
    })
}

/// What the background task reports of the key sets it keeps, for health
/// checks and metrics to read (they import this module; it imports none of
/// theirs).
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Clusters whose keys on disk no longer load, with the reason: the last
    /// good set keeps serving, but a restart would fail.
    pub failing: std::sync::Mutex<Vec<(String, String)>>,
    /// Clusters whose last rotation step failed (a full disk, a permission
    /// refused), with the reason.
    pub rotation_failing: std::sync::Mutex<Vec<(String, String)>>,
    /// Seconds since the epoch of the last pass that loaded every cluster.
    pub last_good: AtomicU64,
    /// The clock's steady time (nanoseconds) at the end of the last pass,
    /// for whoever waits for the task to have looked.
    pub passed: AtomicU64,
}

impl ReloadStatus {
    /// Records a reload pass at `now`: the clusters that failed (none: a
    /// good pass).
    pub fn set_reload_failing(&self, failing: Vec<(String, String)>, now: SystemTime) {
        if failing.is_empty() {
            self.last_good.store(unix_seconds(now), Ordering::Relaxed);
        }
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing;
    }

    /// The clock's steady time at the end of the task's last pass.
    pub fn passed(&self) -> Duration {
        Duration::from_nanos(self.passed.load(Ordering::Acquire))
    }

    /// Records a rotation pass: the clusters whose step failed.
    pub fn set_rotation_failing(&self, failing: Vec<(String, String)>) {
        *self
            .rotation_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = failing;
    }
}

/// One cluster as the background task sees it.
pub struct Managed {
    pub cluster: String,
    /// Generated keys of a kind, or imported ones (`publish_only`), which
    /// only leave after their retention here.
    pub source: Source,
    pub policy: RotationPolicy,
    /// Called with the new key set whenever the manifest changed.
    pub publish: Box<dyn Fn(Arc<KeySet>) + Send + Sync>,
}

/// What the background task keeps of one managed cluster.
struct Tracked {
    /// The key set being served, as last loaded.
    set: Arc<KeySet>,
    /// Since when (on the monotonic clock) a step has withheld deletions for
    /// a clock that looks ahead, and the `checked` time it saw then.
    withheld_since: Option<(Duration, Option<String>)>,
}

/// Applies the policies of the managed clusters that have something due
/// (judged from the key sets in memory, which follow the disk). Blocking: run
/// it off the async workers. Returns the clusters whose step failed.
fn apply_due(
    store: &KeyStore,
    managed: &[Managed],
    tracked: &mut [Tracked],
    now: SystemTime,
    steady: Duration,
) -> Vec<(String, String)> {
    let mut failing = Vec::new();
    for (m, t) in managed.iter().zip(tracked.iter_mut()) {
        let records: Vec<KeyRecord> = t.set.keys().iter().map(|k| k.record.clone()).collect();
        let heartbeat = heartbeat_due(t.set.checked(), &m.policy);
        let due = match m.source {
            Source::Generated(spec) => next_due(&records, spec, &m.policy).min(heartbeat),
            Source::Imported => {
                retention_due(&records, &m.policy).map_or(heartbeat, |at| at.min(heartbeat))
            }
        };
        if due > now {
            continue;
        }
        // A clock that stayed ahead for a whole retention of this process's
        // own (monotonic) time, while no one vouched for a newer time, has
        // seen every key retired before then pass its retention for real.
        let trust = match &t.withheld_since {
            Some((since, checked))
                if checked.as_deref() == t.set.checked()
                    && steady.saturating_sub(*since) >= m.policy.retention =>
            {
                tracing::warn!(
                    cluster = m.cluster,
                    "the clock stayed ahead of the manifest for a whole retention of this process's \
                     uptime with no other replica vouching: deleting the keys past retention"
                );
                ClockTrust::Watched
            }
            _ => ClockTrust::Check,
        };
        let step = match m.source {
            Source::Generated(spec) => {
                apply_policy_trusting(store, &m.cluster, spec, &m.policy, now, trust)
            }
            Source::Imported => apply_retention(store, &m.cluster, &m.policy, now, trust),
        };
        match step {
            Ok(transitions) => {
                log_transitions(&m.cluster, &transitions);
                let withheld = transitions
                    .iter()
                    .any(|x| matches!(x, Transition::Withheld { .. }));
                t.withheld_since = match t.withheld_since.take() {
                    Some((since, checked)) if withheld && checked.as_deref() == t.set.checked() => {
                        Some((since, checked))
                    }
                    _ if withheld => Some((steady, t.set.checked().map(str::to_owned))),
                    _ => None,
                };
            }
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "applying the rotation policy failed");
                failing.push((m.cluster.clone(), e.to_string()));
            }
        }
    }
    failing
}

/// What the background task is told.
enum Signal {
    /// Re-read every key set (forced) or the changed ones, then tell the
    /// waiter, if any.
    Reload {
        force: bool,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// Clusters to keep from now on (a cluster already kept under the id is
    /// replaced), each with the key set being served.
    Manage(Vec<(Managed, Arc<KeySet>)>),
    /// Clusters no longer served; told when done.
    Forget(Vec<String>, Option<tokio::sync::oneshot::Sender<()>>),
    Stop,
}

/// The background task: applies the policies every `interval` (when this
/// replica rotates) and re-reads changed manifests and key files every
/// `reload_interval`, publishing each new key set; both on the clock it is
/// given. A manifest or key file that cannot be read or loaded is logged and
/// reported, and the last good key set keeps serving. The file work runs on
/// the blocking pool, off the async workers.
pub struct Background {
    tx: tokio::sync::mpsc::UnboundedSender<Signal>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Asks a running [`Background`] task to re-read every key set.
#[derive(Clone)]
pub struct ReloadHandle(tokio::sync::mpsc::UnboundedSender<Signal>);

impl ReloadHandle {
    /// Re-reads every manifest and key file now, changed or not (SIGHUP).
    pub fn reload_now(&self) {
        let _ = self.0.send(Signal::Reload {
            force: true,
            done: None,
        });
    }

    /// Re-reads the key sets that changed on disk, and returns once they
    /// are published (or the task is gone).
    pub async fn reload_changed(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .0
            .send(Signal::Reload {
                force: false,
                done: Some(tx),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Keeps these clusters from now on: their policies are applied and
    /// their key sets followed. A cluster already kept under the same id is
    /// replaced (new settings).
    pub fn manage(&self, clusters: Vec<(Managed, Arc<KeySet>)>) {
        if !clusters.is_empty() {
            let _ = self.0.send(Signal::Manage(clusters));
        }
    }

    /// Stops keeping these clusters (deleted, or gone from the config),
    /// and returns once no rotation step can touch them any more (a pass
    /// under way has finished).
    pub async fn forget(&self, clusters: Vec<String>) {
        if clusters.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send(Signal::Forget(clusters, Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }
}

pub struct BackgroundSettings {
    pub rotate: bool,
    pub interval: Duration,
    pub reload_interval: Duration,
    /// When set, rotation steps run only while it holds `true`: the replica
    /// holds the store's rotation lease (etcd), which it gives up when it
    /// cannot renew it or does not follow the store. Key sets follow the
    /// store either way.
    pub gate: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// What the task owns, handed to the blocking pool for each pass.
struct Task {
    store: KeyStore,
    managed: Vec<Managed>,
    tracked: Vec<Tracked>,
    status: Arc<ReloadStatus>,
}

impl Task {
    fn manage(&mut self, clusters: Vec<(Managed, Arc<KeySet>)>) {
        let mut index: std::collections::HashMap<String, usize> = self
            .managed
            .iter()
            .enumerate()
            .map(|(i, m)| (m.cluster.clone(), i))
            .collect();
        for (m, set) in clusters {
            let tracked = Tracked {
                set,
                withheld_since: None,
            };
            match index.get(&m.cluster) {
                Some(&i) => {
                    self.managed[i] = m;
                    self.tracked[i] = tracked;
                }
                None => {
                    index.insert(m.cluster.clone(), self.managed.len());
                    self.managed.push(m);
                    self.tracked.push(tracked);
                }
            }
        }
    }

    fn forget(&mut self, clusters: &[String]) {
        let gone: std::collections::HashSet<&str> = clusters.iter().map(String::as_str).collect();
        (self.managed, self.tracked) = std::mem::take(&mut self.managed)
            .into_iter()
            .zip(std::mem::take(&mut self.tracked))
            .filter(|(m, _)| !gone.contains(m.cluster.as_str()))
            .unzip();
        // What failed for a cluster no longer kept is no longer a problem.
        for list in [&self.status.failing, &self.status.rotation_failing] {
            list.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(id, _)| !gone.contains(id.as_str()));
        }
    }

    fn pass(&mut self, apply: bool, force: bool, now: SystemTime, steady: Duration) {
        if apply {
            let failing = apply_due(&self.store, &self.managed, &mut self.tracked, now, steady);
            self.status.set_rotation_failing(failing);
        }
        reload(
            &self.store,
            &self.managed,
            &mut self.tracked,
            &self.status,
            force,
            now,
        );
    }
}

impl Background {
    /// Starts the task on the current tokio runtime. `loaded` holds each
    /// managed cluster's key set as the server loaded it, in the order of
    /// `managed`; each carries the stamp of the manifest it came from, so a
    /// change made since is seen at once.
    pub fn start(
        store: KeyStore,
        managed: Vec<Managed>,
        loaded: Vec<Arc<KeySet>>,
        settings: BackgroundSettings,
        status: Arc<ReloadStatus>,
        clock: SharedClock,
    ) -> Background {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tracked = loaded
            .into_iter()
            .map(|set| Tracked {
                set,
                withheld_since: None,
            })
            .collect();
        let task = Task {
            store,
            managed,
            tracked,
            status,
        };
        let task = tokio::spawn(run_task(task, settings, clock, rx));
        Background {
            tx,
            task: Some(task),
        }
    }

    /// A handle that asks for a reload (SIGHUP).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.tx.clone())
    }

    /// Stops the task, letting a pass under way finish.
    pub async fn stop(mut self) {
        let _ = self.tx.send(Signal::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Not stopped by `stop`: the task ends at its next look.
        let _ = self.tx.send(Signal::Stop);
    }
}

async fn run_task(
    mut task: Task,
    settings: BackgroundSettings,
    clock: SharedClock,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Signal>,
) {
    // Catch up at once on anything that changed while the server started.
    let mut pending = Some((false, false));
    let mut next_apply = clock.elapsed() + settings.interval;
    let mut next_reload = clock.elapsed() + settings.reload_interval;
    loop {
        let mut waiting = Vec::new();
        let (apply, force) = match pending.take() {
            Some(p) => p,
            None => {
                let gated = settings
                    .gate
                    .as_ref()
                    .is_some_and(|g| !g.load(Ordering::Acquire));
                let wake = if settings.rotate && !gated {
                    next_apply.min(next_reload)
                } else {
                    next_reload
                };
                let force = tokio::select! {
                    signal = rx.recv() => match signal {
                        Some(Signal::Reload { force, done }) => {
                            waiting.extend(done);
                            force
                        }
                        Some(Signal::Manage(clusters)) => {
                            task.manage(clusters);
                            continue;
                        }
                        Some(Signal::Forget(clusters, done)) => {
                            task.forget(&clusters);
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                            continue;
                        }
                        Some(Signal::Stop) | None => return,
                    },
                    () = clock.wait_until(wake) => false,
                };
                let gated = settings
                    .gate
                    .as_ref()
                    .is_some_and(|g| !g.load(Ordering::Acquire));
                (
                    settings.rotate && !gated && clock.elapsed() >= next_apply,
                    force,
                )
            }
        };
        let (now, steady) = (clock.now(), clock.elapsed());
        task = match tokio::task::spawn_blocking(move || {
            task.pass(apply, force, now, steady);
            task
        })
        .await
        {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(error = %e, "the key-rotation task failed; key sets no longer follow the disk");
                return;
            }
        };
        if apply {
            next_apply = steady + settings.interval;
        }
        next_reload = clock.elapsed() + settings.reload_interval;
        let nanos = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
        task.status.passed.store(nanos, Ordering::Release);
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// Re-reads the key sets whose manifest or key files changed on disk (all of
/// them with `force`), publishes each new set, and reports the ones that no
/// longer load: the last good set keeps serving, but a restart would fail.
fn reload(
    store: &KeyStore,
    managed: &[Managed],
    tracked: &mut [Tracked],
    status: &ReloadStatus,
    force: bool,
    now: SystemTime,
) {
    let mut failing = Vec::new();
    let root = store.check_dirs(None).err();
    for (m, t) in managed.iter().zip(tracked.iter_mut()) {
        let result = (|| {
            if let Some(e) = &root {
                return Err(StoreError::Manifest {
                    path: store.root().to_owned(),
                    reason: e.to_string(),
                });
            }
            let fresh = store.stamp(&m.cluster)?;
            if !force && fresh == t.set.stamp() && !store.key_files_changed(&m.cluster, &t.set) {
                return Ok(None);
            }
            // Forced: parse every key file again, too.
            let previous = (!force).then_some(&*t.set);
            store
                .load(&m.cluster, previous)?
                .map(Some)
                .ok_or_else(|| StoreError::Manifest {
                    path: store.manifest_path(&m.cluster),
                    reason: "the manifest is gone".into(),
                })
        })();
        match result {
            Ok(None) => {}
            Ok(Some(new_set)) => {
                let new_set = Arc::new(new_set);
                let same = new_set.keys().len() == t.set.keys().len()
                    && new_set
                        .keys()
                        .iter()
                        .zip(t.set.keys())
                        .all(|(a, b)| a.record == b.record && a.key.kid() == b.key.kid());
                if same {
                    tracing::debug!(cluster = m.cluster, "key set re-read, unchanged");
                } else {
                    tracing::info!(
                        cluster = m.cluster,
                        current = new_set.current().kid(),
                        published = new_set.keys().len(),
                        "key set reloaded"
                    );
                }
                (m.publish)(new_set.clone());
                t.set = new_set;
            }
            Err(e) => {
                tracing::error!(cluster = m.cluster, error = %e, "cannot reload the key set; the last good one keeps serving, but a restart would fail");
                failing.push((m.cluster.clone(), e.to_string()));
            }
        }
    }
    status.set_reload_failing(failing, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;
    use crate::keys::material::KeySpec;
    use crate::keys::steps::rotate;
    use crate::keys::store::KeyState;
    use crate::keys::testkit::*;

    fn noop_managed(p: RotationPolicy) -> Managed {
        Managed {
            cluster: "c".into(),
            source: Source::Generated(KeySpec::P256),
            policy: p,
            publish: Box::new(|_| {}),
        }
    }

    #[test]
    fn a_clock_ahead_is_trusted_after_this_process_watched_it_for_a_retention_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        run(&store, spec, &p, t0(), t0() + 30 * DAY + 2 * HOUR);
        let managed = [noop_managed(p)];
        let reload = |tracked: &mut [Tracked]| {
            tracked[0].set = Arc::new(store.load("c", None).unwrap().unwrap());
        };
        let mut tracked = vec![Tracked {
            set: Arc::new(store.load("c", None).unwrap().unwrap()),
            withheld_since: None,
        }];
        let jumped = t0() + 70 * DAY;
        let i0 = Duration::from_secs(5);
        for (wall, mono) in [(jumped, i0), (jumped + HOUR, i0 + HOUR)] {
            assert!(apply_due(&store, &managed, &mut tracked, wall, mono).is_empty());
            reload(&mut tracked);
            assert!(store.key_path("c", &first).exists());
        }
        // Another replica vouches for a (good) time meanwhile: watching
        // starts over.
        let before = manifest(&store).checked;
        apply_policy(&store, "c", spec, &p, t0() + 30 * DAY + 9 * HOUR).unwrap();
        let vouched = manifest(&store).checked;
        assert_ne!(before, vouched);
        reload(&mut tracked);
        let later = i0 + p.retention + HOUR;
        apply_due(&store, &managed, &mut tracked, jumped + p.retention, later);
        reload(&mut tracked);
        assert!(
            store.key_path("c", &first).exists(),
            "watching did not start over"
        );
        assert_eq!(manifest(&store).checked, vouched);
        // Alone for a whole retention of monotonic time: the keys go.
        apply_due(
            &store,
            &managed,
            &mut tracked,
            jumped + 2 * p.retention,
            later + p.retention,
        );
        assert!(!store.key_path("c", &first).exists());
        assert!(tracked[0].withheld_since.is_none());
    }

    #[test]
    fn a_failing_rotation_step_is_reported_per_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let plain = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&plain, "c", spec, &p, t0()).unwrap();
        let full = KeyStore::new(dir.path())
            .with_hook(Arc::new(|_| Err(std::io::Error::from_raw_os_error(28))));
        let mut tracked = vec![Tracked {
            set: Arc::new(plain.load("c", None).unwrap().unwrap()),
            withheld_since: None,
        }];
        // Due: the standby is to take over.
        let failing = apply_due(
            &full,
            &[noop_managed(p)],
            &mut tracked,
            t0() + 30 * DAY,
            Duration::ZERO,
        );
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, "c");
        assert!(
            failing[0].1.contains("No space left on device"),
            "{failing:?}"
        );
    }

    #[test]
    fn a_forced_reload_rereads_what_the_stamps_would_skip() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let old = manifest(&store);
        rotate(&store, "c", spec, &p, t0() + HOUR, true).unwrap();
        // Pretend the change slipped past the stamps: the set in memory is
        // the old one, but carries the new manifest's stamp.
        let stale = store
            .load_set(&old)
            .unwrap()
            .restamped(store.stamp("c").unwrap());
        let old_signer = stale.current().kid().to_owned();
        let published = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = published.clone();
        let managed = [Managed {
            publish: Box::new(move |set: Arc<KeySet>| {
                sink.lock().unwrap().push(set.current().kid().to_owned())
            }),
            ..noop_managed(p)
        }];
        let mut tracked = vec![Tracked {
            set: Arc::new(stale),
            withheld_since: None,
        }];
        let status = ReloadStatus::default();
        let signing = kid_in(&store, KeyState::Current).unwrap();
        assert_ne!(signing, old_signer);
        reload(&store, &managed, &mut tracked, &status, true, t0());
        assert_eq!(*published.lock().unwrap(), vec![signing]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_rotates_on_its_clock_and_only_when_the_clock_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (p, spec) = (policy(), KeySpec::P256);
        apply_policy(&store, "c", spec, &p, t0()).unwrap();
        let first = kid_in(&store, KeyState::Current).unwrap();
        let clock = crate::clock::ManualClock::new(t0());
        let signing = Arc::new(std::sync::Mutex::new(first.clone()));
        let sink = signing.clone();
        let managed = vec![Managed {
            publish: Box::new(move |set: Arc<KeySet>| {
                *sink.lock().unwrap() = set.current().kid().to_owned();
            }),
            ..noop_managed(p)
        }];
        let status = Arc::new(ReloadStatus::default());
        let minute = Duration::from_secs(60);
        let background = Background::start(
            store.clone(),
            managed,
            vec![Arc::new(store.load("c", None).unwrap().unwrap())],
            BackgroundSettings {
                rotate: true,
                interval: minute,
                reload_interval: minute,
                gate: None,
            },
            status.clone(),
            clock.clone(),
        );
        // Waits until the task has finished a pass at or after `at`.
        let passed = |at: Duration| {
            let status = status.clone();
            async move {
                for _ in 0..200 {
                    if status.passed() >= at {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("no pass of the task reached {at:?}");
            }
        };
        passed(Duration::ZERO).await;
        let standby = kid_in(&store, KeyState::Next).expect("a standby from the first start");
        // Thirty days go by a minute at a time, as seen by the task: the
        // standby waits, then signs on the day, and a new one is published.
        for day in 1..=30u32 {
            clock.jump(DAY - minute);
            clock.advance(minute);
            passed(clock.elapsed()).await;
            let now_signing = signing.lock().unwrap().clone();
            let next = kid_in(&store, KeyState::Next).unwrap_or_default();
            match day {
                ..=29 => assert!(next == standby && now_signing == first, "day {day}"),
                _ => assert!(
                    now_signing == standby && !next.is_empty() && next != standby,
                    "day {day}: the standby signs, and a new one waits"
                ),
            }
        }
        // Without the clock moving, the task does nothing.
        let passes = status.passed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status.passed(), passes);
        background.stop().await;
    }
}
