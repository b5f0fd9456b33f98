//! Reloading the config file: on SIGHUP, and when its stamp changed at
//! `reload_interval`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::Fleet;
use crate::config::{Config, Origin};
use crate::http::admin::AdminSettings;
use crate::issuer::auth::ApiClients;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    pub(super) fn of(path: Option<&std::path::Path>) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path?).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

impl Fleet {
    /// Reads the config file again and applies what changed; a config that
    /// does not load changes nothing and is reported until a good one loads.
    pub(super) async fn reload_config(&mut self) {
        let (file, overrides) = (self.config.file.clone(), self.config.overrides.clone());
        self.config_stamp = FileStamp::of(file.as_deref());
        // The keys dir, the rotation settings and the store are the running
        // ones until a restart (warn_restart_only_keys says so when they
        // differ).
        let running = KeptUntilRestart::of(&self.config);
        let loaded = tokio::task::spawn_blocking(move || {
            let mut config =
                Config::load(file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            let (clients, _) = ApiClients::load(&config.api_clients, &running.keys_dir)
                .map_err(|e| e.to_string())?;
            warn_restart_only_keys(&running, &config);
            running.restore(&mut config);
            Ok::<_, String>((config, clients))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (config, clients) = match loaded {
            Ok(found) => found,
            Err(why) => {
                tracing::error!(
                    problems = why,
                    "the config did not reload: the running config stays in use"
                );
                self.config_status().file = Some(why);
                return;
            }
        };
        self.config_status().file = None;
        warn_restart_only(&self.config, &config);
        self.parts.clients.store(Arc::new(clients));
        if let Some(admin) = &self.admin {
            admin.settings.store(Arc::new(AdminSettings {
                public_url: config.public_url.clone(),
                file: config.file.clone(),
            }));
        }

        let live = self.parts.issuers.load_full();
        let in_file: HashSet<&str> = config.clusters.iter().map(|c| c.id.as_str()).collect();
        let mut removed: Vec<String> = live
            .all()
            .iter()
            .filter(|c| c.config.origin == Origin::File && !in_file.contains(c.id()))
            .map(|c| c.id().to_owned())
            .collect();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let problems = Vec::new();
        let mut shadowed = Vec::new();
        for c in &config.clusters {
            match live.by_id(&c.id) {
                None => added.push(c.clone()),
                // The file's wins, as at a start: the entry is shadowed.
                Some(old) if old.config.origin == Origin::Runtime => {
                    tracing::warn!(
                        cluster = c.id,
                        "created at run time and now declared in the config file too: the file's settings are served; remove one"
                    );
                    shadowed.push(c.id.clone());
                    added.push(c.clone());
                }
                Some(old) if old.config != *c => changed.push(c.clone()),
                Some(_) => {}
            }
        }
        let signers_before: HashMap<String, Option<crate::config::SignerSocket>> = live
            .all()
            .iter()
            .filter(|c| c.config.origin == Origin::File)
            .map(|c| (c.id().to_owned(), c.config.kubernetes_signer.clone()))
            .collect();
        tracing::info!(
            added = added.len(),
            changed = changed.len(),
            removed = removed.len(),
            api_clients = config.api_clients.len(),
            "config reloaded"
        );
        for id in &removed {
            tracing::info!(
                cluster = id,
                "cluster removed from the config file: no longer served; its keys stay in the keys dir (a cluster added back under this id gets them again; `clusters recreate` gives new ones)"
            );
        }
        removed.extend(shadowed);
        let mut problems = self.apply(changed, added, removed, problems).await;

        // Signer sockets follow the clusters that name one.
        let live = self.parts.issuers.load_full();
        let mut ids: HashSet<String> = signers_before.keys().cloned().collect();
        ids.extend(config.clusters.iter().map(|c| c.id.clone()));
        for id in ids {
            let before = signers_before.get(&id).cloned().flatten();
            let now = live
                .by_id(&id)
                .filter(|c| c.config.origin == Origin::File)
                .and_then(|c| c.config.kubernetes_signer.clone());
            if before == now && (now.is_none() || self.signers.contains_key(&id)) {
                continue;
            }
            self.stop_signer(&id).await;
            if let Some(at) = now {
                match self.bind_signer(&id, &at).await {
                    Ok(task) => {
                        self.signers.insert(id, task);
                    }
                    Err(e) => {
                        tracing::error!(cluster = id, error = %e, "cannot bind the external signer's socket");
                        problems.push((id.clone(), format!("kubernetes_signer_socket: {e}")));
                    }
                }
            }
        }
        self.config_status().file_clusters = problems;
        let mut kept = config;
        kept.clusters = Vec::new();
        self.config = kept;
    }
}

/// Settings a running server cannot change: said once per reload.
fn warn_restart_only(old: &Config, new: &Config) {
    let mut differ = Vec::new();
    if old.listen != new.listen {
        differ.push("listen");
    }
    if old.api_listener.as_ref().map(|l| l.addr) != new.api_listener.as_ref().map(|l| l.addr) {
        differ.push("api.listen");
    }
    if old.limits != new.limits {
        differ.push("limits");
    }
    if old.tls.as_ref().map(|t| (&t.cert, &t.key, &t.client_ca))
        != new.tls.as_ref().map(|t| (&t.cert, &t.key, &t.client_ca))
    {
        differ.push("tls_cert/tls_key");
    }
    if old.tls_reload_interval != new.tls_reload_interval {
        differ.push("tls_reload_interval");
    }
    if !differ.is_empty() {
        tracing::warn!(
            settings = differ.join(", "),
            "these settings changed in the config and take effect at the next restart"
        );
    }
}

/// What a running server keeps from its start whatever the file says: the
/// keys dir, `[rotation]` and `[store]` (where the keys are, and who rotates
/// them, change only with a restart).
struct KeptUntilRestart {
    keys_dir: std::path::PathBuf,
    rotation: crate::config::RotationSettings,
    store: crate::config::StoreConfig,
}

impl KeptUntilRestart {
    fn of(config: &Config) -> Self {
        KeptUntilRestart {
            keys_dir: config.keys_dir.clone(),
            rotation: config.rotation.clone(),
            store: config.store.clone(),
        }
    }

    /// The settings of `new` that differ from the running ones.
    fn changed_in(&self, new: &Config) -> Vec<&'static str> {
        let mut differ = Vec::new();
        if new.keys_dir != self.keys_dir {
            differ.push("keys_dir");
        }
        if new.rotation != self.rotation {
            differ.push("[rotation]");
        }
        if new.store != self.store {
            differ.push("[store]");
        }
        differ
    }

    fn restore(self, config: &mut Config) {
        config.keys_dir = self.keys_dir;
        config.rotation = self.rotation;
        config.store = self.store;
    }
}

/// The keys dir, `[rotation]` and `[store]`, which a running server keeps:
/// said when the file changed them.
fn warn_restart_only_keys(running: &KeptUntilRestart, new: &Config) {
    let differ = running.changed_in(new);
    if !differ.is_empty() {
        tracing::warn!(
            settings = differ.join(", "),
            "these settings changed in the config: the running values stay until the next restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::KeptUntilRestart;
    use crate::config::{Config, Overrides, StoreConfig};

    fn parse(text: &str) -> Config {
        Config::parse("test.toml", text, &Overrides::default()).unwrap()
    }

    #[test]
    fn a_changed_store_is_named_and_the_running_one_kept() {
        let running = parse("keys_dir = \"k\"\n");
        let new = parse(
            "keys_dir = \"other\"\n[rotation]\nenabled = false\n[store]\nkind = \"etcd\"\n\
             endpoints = [\"http://127.0.0.1:2379\"]\nkek_file = \"kek\"\n",
        );
        assert!(matches!(new.store, StoreConfig::Etcd(_)));
        let kept = KeptUntilRestart::of(&running);
        assert_eq!(kept.changed_in(&new), ["keys_dir", "[rotation]", "[store]"]);
        assert!(kept.changed_in(&running).is_empty());
        let mut reloaded = new.clone();
        kept.restore(&mut reloaded);
        assert_eq!(reloaded.store, StoreConfig::Dir);
        assert_eq!(reloaded.keys_dir, running.keys_dir);
        assert_eq!(reloaded.rotation, running.rotation);
        assert_eq!(
            reloaded.public_url, new.public_url,
            "the rest is the file's"
        );
    }
}
