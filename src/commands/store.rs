//! The etcd store from the command line.
//!
//! Every command that takes `--config` (`keys`, `clusters`, `export`) works
//! on the etcd store when the config says `[store] kind = "etcd"`: it reads
//! the store into a private working copy ([`open`]), runs on that copy as on
//! a keys dir, and commits what changed when it ends ([`close`]), each
//! cluster in a transaction that fails if a replica changed the cluster
//! meanwhile. And `store new-kek|migrate|rewrap`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::cli::{MigrateArgs, StoreCommand};
use crate::config::{Config, EtcdStoreConfig, StoreConfig};
use crate::etcd::layout::{self, Item};
use crate::etcd::mirror::Mirror;
use crate::etcd::replica::open_mirror;
use crate::etcd::Kek;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::keys::registry::Registry;
use crate::keys::store::KeyStore;

use super::{finish, CommandError};

/// The working copy of the command running now, if its store is etcd.
struct Session {
    mirror: Arc<Mirror>,
    // Kept for the mirror's calls; dropped last.
    _rt: tokio::runtime::Runtime,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn failed(e: impl std::fmt::Display) -> CommandError {
    CommandError::Failed(e.to_string())
}

/// Opens the etcd store of `config` into a working copy, once.
fn session(etcd: &EtcdStoreConfig) -> Result<Arc<Mirror>, CommandError> {
    let mut slot = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.as_ref() {
        return Ok(s.mirror.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(failed)?;
    let mirror = rt.block_on(open_mirror(etcd)).map_err(failed)?;
    if let Err(e) = mirror.pull_all() {
        let _ = std::fs::remove_dir_all(mirror.root());
        return Err(CommandError::Failed(format!(
            "reading the store from etcd: {e}"
        )));
    }
    *slot = Some(Session {
        mirror: mirror.clone(),
        _rt: rt,
    });
    Ok(mirror)
}

/// Whether this command works on the etcd store.
pub(super) fn active() -> bool {
    SESSION.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// On the etcd store, reads it into a working copy and points the config's
/// keys dir there.
pub(super) fn open(config: &mut Config) -> Result<(), CommandError> {
    if let StoreConfig::Etcd(etcd) = &config.store {
        let mirror = session(etcd)?;
        config.keys_dir = mirror.root().to_owned();
    }
    Ok(())
}

/// Ends the command's session: commits what it changed if it succeeded,
/// then removes the working copy (it holds keys in the clear).
pub(super) fn close(result: Result<(), CommandError>) -> Result<(), CommandError> {
    let Some(session) = SESSION.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return result;
    };
    let mirror = session.mirror.clone();
    let outcome = result.and_then(|()| {
        let ids = mirror.uncommitted().map_err(failed)?;
        if ids.is_empty() {
            return Ok(());
        }
        let commit = mirror.commit(&ids).map_err(|e| {
            CommandError::Failed(format!("committing to etcd: {e}; nothing more was written"))
        })?;
        if commit.conflicts.is_empty() {
            return Ok(());
        }
        Err(CommandError::Failed(format!(
            "a replica changed cluster(s) {} while this command ran: this command's change to \
             them was not written (theirs stands); run it again",
            commit.conflicts.join(", ")
        )))
    });
    let _ = std::fs::remove_dir_all(mirror.root());
    drop(mirror);
    drop(session);
    outcome
}

/// Removes the command's working copy without committing anything (the
/// command is ending early). Never waits: on a panic the session may be
/// held.
pub fn discard() {
    if let Ok(mut slot) = SESSION.try_lock() {
        if let Some(session) = slot.take() {
            let _ = std::fs::remove_dir_all(session.mirror.root());
        }
    }
}

pub fn run(command: StoreCommand) -> ExitCode {
    finish(match command {
        StoreCommand::NewKek { file } => new_kek(&file),
        StoreCommand::Migrate(args) => migrate(&args),
        StoreCommand::Rewrap { config, new_kek } => rewrap(&config, &new_kek),
    })
}

fn new_kek(file: &Path) -> Result<(), CommandError> {
    let kek = Kek::generate(file).map_err(|e| CommandError::BadInput(e.to_string()))?;
    println!(
        "wrote key-encryption key {} to {} (mode 0600); keep a copy where you keep secrets: \
         without it no key in the store opens",
        kek.id(),
        file.display()
    );
    Ok(())
}

/// The etcd settings of a `--config`, or a clear refusal.
fn etcd_of(args: &crate::cli::ConfigArgs) -> Result<EtcdStoreConfig, CommandError> {
    let config = Config::load(args.config.as_deref(), &args.overrides())
        .map_err(|e| CommandError::BadInput(e.to_string()))?;
    match config.store {
        StoreConfig::Etcd(etcd) => Ok(etcd),
        StoreConfig::Dir => Err(CommandError::BadInput(
            "--config: its [store] is the keys dir (kind = \"dir\"); give a config with \
             [store] kind = \"etcd\""
                .into(),
        )),
    }
}

/// Loads every cluster of a keys dir, so nothing broken is copied.
fn check_keys_dir(dir: &Path, ids: &[String]) -> Result<(), CommandError> {
    let store = KeyStore::new(dir);
    for id in ids {
        store
            .load(id, None)
            .map_err(|e| CommandError::Failed(format!("{}: cluster {id:?}: {e}", dir.display())))?;
    }
    Registry::new(&store)
        .list()
        .map_err(|e| CommandError::Failed(format!("{}: {e}", dir.display())))?;
    Ok(())
}

fn by_cluster(items: BTreeMap<Item, Vec<u8>>) -> BTreeMap<String, BTreeMap<Item, Vec<u8>>> {
    let mut out: BTreeMap<String, BTreeMap<Item, Vec<u8>>> = BTreeMap::new();
    for (item, bytes) in items {
        out.entry(item.cluster().to_owned())
            .or_default()
            .insert(item, bytes);
    }
    out
}

fn migrate(args: &MigrateArgs) -> Result<(), CommandError> {
    let etcd = etcd_of(&args.config)?;
    let mirror = session(&etcd)?;
    let in_etcd = by_cluster(layout::read_all(mirror.root()).map_err(failed)?);
    match (&args.from_keys_dir, &args.to_keys_dir) {
        (Some(dir), None) => {
            let ids = layout::cluster_ids(dir).map_err(failed)?;
            check_keys_dir(dir, &ids)?;
            let source = by_cluster(layout::read_all(dir).map_err(failed)?);
            let (copy, same, differ) = plan(&source, &in_etcd);
            let items: BTreeMap<Item, Vec<u8>> =
                copy.iter().flat_map(|id| source[id].clone()).collect();
            mirror.put_local(&items).map_err(failed)?;
            report("etcd", &source, &copy, &same, &differ)
        }
        (None, Some(dir)) => {
            ensure_dir(dir, 0o700).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
            let target = by_cluster(layout::read_all(dir).map_err(failed)?);
            let (copy, same, differ) = plan(&in_etcd, &target);
            let store = KeyStore::new(dir);
            let lock = store.lock().map_err(failed)?;
            let mut registry = false;
            for id in &copy {
                let mut items: Vec<_> = in_etcd[id].iter().collect();
                items.sort_by_key(|(i, _)| i.rank());
                for (item, bytes) in items {
                    let path = dir.join(item.rel());
                    if let Some(parent) = path.parent() {
                        ensure_dir(parent, 0o700).map_err(failed)?;
                    }
                    write_atomic(&path, bytes, 0o600)
                        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
                    registry |= item.in_registry();
                }
            }
            if registry {
                Registry::new(&store).bump(&lock).map_err(failed)?;
            }
            drop(lock);
            check_keys_dir(dir, &copy)?;
            report(&dir.display().to_string(), &in_etcd, &copy, &same, &differ)
        }
        _ => Err(CommandError::BadInput(
            "give one of --from-keys-dir DIR and --to-keys-dir DIR".into(),
        )),
    }
}

/// Of the clusters of `from`: those the target lacks (to copy), those it
/// holds the same, and those it holds otherwise (left alone: copying over
/// them could lose a key).
fn plan(
    from: &BTreeMap<String, BTreeMap<Item, Vec<u8>>>,
    to: &BTreeMap<String, BTreeMap<Item, Vec<u8>>>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut copy, mut same, mut differ) = (Vec::new(), Vec::new(), Vec::new());
    for (id, items) in from {
        match to.get(id) {
            None => copy.push(id.clone()),
            Some(theirs) if theirs == items => same.push(id.clone()),
            Some(_) => differ.push(id.clone()),
        }
    }
    (copy, same, differ)
}

fn report(
    target: &str,
    from: &BTreeMap<String, BTreeMap<Item, Vec<u8>>>,
    copy: &[String],
    same: &[String],
    differ: &[String],
) -> Result<(), CommandError> {
    for id in copy {
        let kids: BTreeSet<&str> = from[id]
            .keys()
            .filter_map(|i| match i {
                Item::Key(_, kid) => Some(kid.as_str()),
                _ => None,
            })
            .collect();
        println!(
            "copied cluster {id} to {target}: kids {}",
            kids.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "{} cluster(s) copied, {} already there and the same",
        copy.len(),
        same.len()
    );
    if differ.is_empty() {
        return Ok(());
    }
    Err(CommandError::Failed(format!(
        "{target} already holds cluster(s) {} with other keys or settings: left as they are \
         (copying over them could lose a key); remove them there first if the source is right",
        differ.join(", ")
    )))
}

fn rewrap(args: &crate::cli::ConfigArgs, new_kek: &Path) -> Result<(), CommandError> {
    let etcd = etcd_of(args)?;
    let new = Kek::read(new_kek).map_err(|e| CommandError::BadInput(format!("--new-kek: {e}")))?;
    // No full read: keys a run cut short already re-sealed do not open
    // under the old KEK.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(failed)?;
    let mirror = rt.block_on(open_mirror(&etcd)).map_err(failed)?;
    // Nothing is read into the working copy: it goes at once.
    let _ = std::fs::remove_dir_all(mirror.root());
    let (done, already) = mirror.rewrap(&new).map_err(failed)?;
    println!(
        "re-sealed {done} key(s) under key-encryption key {} ({already} already were); no kid \
         changed. Once every replica seals under it (kek_file = {}), drop the old KEK from \
         their extra_kek_files (deploy/etcd.md, \"Replacing the KEK\")",
        new.id(),
        new_kek.display()
    );
    Ok(())
}
