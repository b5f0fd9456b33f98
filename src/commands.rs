//! The one-shot commands: `check-config`,
//! `keys list|rotate|revoke|import|retire|recover`, `export` and
//! `clusters ...` (in `clusters`). They see the config file's clusters and
//! those created at run time (the keys dir's registry).
//! Each returns the process exit code: 0 done, 1 refused or failed, 2 bad input.

pub mod clusters;
pub mod store;

use crate::clock::system_now;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{ConfigArgs, ImportState, KeysCommand};
use crate::config::{ClusterConfig, Config, Overrides};
use crate::keys::manual;
use crate::keys::policy::{next_transition, RotationError, Transition};
use crate::keys::public::PublicKey;
use crate::keys::steps;
use crate::keys::store::{KeyRecord, KeyState, KeyStore};

pub fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(Some(file), &Overrides::default()) {
        Ok(c) => {
            // The KEKs as `serve` reads them: a file that is missing, of
            // the wrong size or readable by others stops a start.
            if let crate::config::StoreConfig::Etcd(etcd) = &c.store {
                if let Err(e) = crate::etcd::Keyring::read(&etcd.kek_file, &etcd.extra_kek_files) {
                    eprintln!("{}: store: {e}", file.display());
                    return ExitCode::from(2);
                }
            }
            println!(
                "{}: valid; {} cluster(s): {}",
                file.display(),
                c.clusters.len(),
                c.clusters
                    .iter()
                    .map(|c| if c.publish_only {
                        format!("{} (publish_only)", c.issuer)
                    } else {
                        format!("{} ({})", c.issuer, c.key_spec)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Why a one-shot command stopped. Its message is printed to standard error,
/// and the exit code says which kind: 2 for input to correct, 1 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A flag, the configuration or a named key is wrong: exit 2.
    #[error("{0}")]
    BadInput(String),
    /// Refused or failed (a step not yet allowed, a file not written): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::BadInput(_) => ExitCode::from(2),
            CommandError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs a command: its error printed, its exit code returned. On the etcd
/// store, what it changed is committed first.
fn finish(result: Result<(), CommandError>) -> ExitCode {
    let result = store::close(result);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// The config, with the clusters created at run time after the file's.
fn load(args: &ConfigArgs) -> Result<Config, CommandError> {
    let mut config = Config::load(args.config.as_deref(), &args.overrides())
        .map_err(|e| CommandError::BadInput(e.to_string()))?;
    store::open(&mut config)?;
    let store = crate::serve::key_store(&config);
    let (runtime, bad) = crate::keys::registry::Registry::new(&store)
        .clusters(&config.public_url)
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    for (id, why) in bad {
        eprintln!("warning: cluster {id:?} created at run time is left out: {why}");
    }
    for (_, c) in runtime {
        if config.cluster(&c.id).is_some() {
            eprintln!(
                "warning: cluster {:?} created at run time is left out: the config file now \
                 declares a cluster with that id",
                c.id
            );
            continue;
        }
        config.clusters.push(c);
    }
    Ok(config)
}

fn cluster<'c>(config: &'c Config, id: &str) -> Result<&'c ClusterConfig, CommandError> {
    config.cluster(id).ok_or_else(|| {
        let ids: Vec<&str> = config.clusters.iter().map(|c| c.id.as_str()).collect();
        CommandError::BadInput(format!(
            "--cluster: no cluster has id {id:?}; the configured clusters are: {}",
            ids.join(", ")
        ))
    })
}

pub fn keys(command: KeysCommand) -> ExitCode {
    finish(run_keys(command))
}

fn run_keys(command: KeysCommand) -> Result<(), CommandError> {
    match command {
        KeysCommand::List {
            config,
            cluster: only,
            json,
        } => {
            let config = load(&config)?;
            let clusters: Vec<&ClusterConfig> = match &only {
                Some(id) => vec![cluster(&config, id)?],
                None => config.clusters.iter().collect(),
            };
            list(&crate::serve::key_store(&config), &clusters, json)
        }
        KeysCommand::Rotate {
            config,
            cluster: id,
            force,
        } => {
            let config = load(&config)?;
            let c = cluster(&config, &id)?;
            if c.publish_only {
                return Err(CommandError::BadInput(format!(
                    "--cluster {id}: the cluster is publish_only: its keys are imported, never \
                     generated here. Rotate by hand: `keys import --cluster {id} --public-key \
                     NEW.pub --state next`, then, once the cluster signs with it, `keys retire \
                     --cluster {id} --kid CURRENT_KID`"
                )));
            }
            let store = crate::serve::key_store(&config);
            report(
                &id,
                steps::rotate(&store, &id, c.key_spec, &c.rotation, system_now(), force),
            )
        }
        KeysCommand::Revoke {
            config,
            cluster: id,
            kid,
        } => {
            let config = load(&config)?;
            let c = cluster(&config, &id)?;
            let store = crate::serve::key_store(&config);
            report(
                &id,
                steps::revoke(
                    &store,
                    &id,
                    &kid,
                    crate::keys::policy::Source::of(c),
                    &c.rotation,
                    system_now(),
                ),
            )
        }
        KeysCommand::Import {
            config,
            cluster: id,
            public_key,
            state,
            force,
        } => {
            let config = load(&config)?;
            let c = cluster(&config, &id)?;
            if !c.publish_only {
                return Err(CommandError::BadInput(format!(
                    "--cluster {id}: the cluster is not publish_only: its keys are generated and \
                     rotated here, and an imported key could not sign its tokens. Set \
                     publish_only = true in its [[clusters]] table if its own kube-apiserver \
                     signs its tokens"
                )));
            }
            let pem = std::fs::read(&public_key).map_err(|e| {
                CommandError::BadInput(format!("--public-key {}: {e}", public_key.display()))
            })?;
            let key = PublicKey::from_pem(&pem).map_err(|e| {
                CommandError::BadInput(format!("--public-key {}: {e}", public_key.display()))
            })?;
            let state = state.map(|s| match s {
                ImportState::Next => KeyState::Next,
                ImportState::Current => KeyState::Current,
            });
            let store = crate::serve::key_store(&config);
            report(
                &id,
                manual::import(&store, &id, &key, state, &c.rotation, system_now(), force),
            )
        }
        KeysCommand::Retire {
            config,
            cluster: id,
            kid,
            force,
        } => {
            let config = load(&config)?;
            let c = cluster(&config, &id)?;
            let store = crate::serve::key_store(&config);
            report(
                &id,
                manual::retire(&store, &id, &kid, &c.rotation, system_now(), force),
            )
        }
        KeysCommand::Recover {
            config,
            cluster: id,
            current,
        } => {
            let config = load(&config)?;
            let c = cluster(&config, &id)?;
            let store = crate::serve::key_store(&config);
            report(
                &id,
                steps::recover(&store, &id, c.key_spec, current.as_deref(), system_now()),
            )
        }
    }
}

fn report(
    cluster: &str,
    result: Result<Vec<Transition>, RotationError>,
) -> Result<(), CommandError> {
    match result {
        Ok(transitions) => {
            for t in &transitions {
                println!("{cluster}: {t}");
            }
            if store::active() {
                println!("{cluster}: to be committed to etcd as this command ends (it says so if a replica changed the cluster first); every replica then serves it within a second");
            } else {
                println!("{cluster}: running servers pick this up within their reload interval, or at once on SIGHUP");
            }
            Ok(())
        }
        Err(e @ RotationError::UnknownKid { .. }) => Err(CommandError::BadInput(e.to_string())),
        Err(e) => Err(CommandError::Failed(format!("{cluster}: {e}"))),
    }
}

#[derive(Serialize)]
struct ListedCluster<'a> {
    id: &'a str,
    issuer: &'a str,
    rotate_every_seconds: u64,
    publish_ahead_seconds: u64,
    retention_seconds: u64,
    keys: Vec<ListedKey<'a>>,
}

#[derive(Serialize)]
struct ListedKey<'a> {
    #[serde(flatten)]
    record: &'a KeyRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_transition: Option<NextTransition>,
}

#[derive(Serialize)]
struct NextTransition {
    what: String,
    at: String,
}

fn list(store: &KeyStore, clusters: &[&ClusterConfig], json: bool) -> Result<(), CommandError> {
    let mut manifests = Vec::new();
    for c in clusters {
        let manifest = store
            .read_manifest(&c.id)
            .map_err(|e| CommandError::Failed(format!("cluster {:?}: {e}", c.id)))?;
        manifests.push(manifest);
    }
    let listed: Vec<ListedCluster> = clusters
        .iter()
        .zip(&manifests)
        .map(|(c, m)| {
            let records: &[KeyRecord] = m.as_ref().map(|m| m.keys.as_slice()).unwrap_or(&[]);
            let current = records.iter().find(|k| k.state == KeyState::Current);
            ListedCluster {
                id: &c.id,
                issuer: &c.issuer,
                rotate_every_seconds: c.rotation.rotate_every.as_secs(),
                publish_ahead_seconds: c.rotation.publish_ahead.as_secs(),
                retention_seconds: c.rotation.retention.as_secs(),
                keys: records
                    .iter()
                    .map(|r| ListedKey {
                        record: r,
                        next_transition: next_transition(r, current, &c.rotation).map(
                            |(what, at)| NextTransition {
                                what,
                                at: crate::keys::store::rfc3339(at),
                            },
                        ),
                    })
                    .collect(),
            }
        })
        .collect();
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "clusters": listed }))
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    for (c, l) in clusters.iter().zip(&listed) {
        let kind = if c.publish_only {
            "publish_only: public keys imported by hand".to_owned()
        } else {
            c.key_spec.to_string()
        };
        println!(
            "cluster {} ({kind}), issuer {}; rotate every {}, publish ahead {}, retention {}",
            c.id,
            c.issuer,
            humantime::format_duration(c.rotation.rotate_every),
            humantime::format_duration(c.rotation.publish_ahead),
            humantime::format_duration(c.rotation.retention),
        );
        if l.keys.is_empty() && c.publish_only {
            println!("  no keys yet: import the cluster's public key with `keys import`");
            continue;
        }
        if l.keys.is_empty() {
            println!("  no keys yet: the server creates the first key at its first start");
            continue;
        }
        println!(
            "  {:<8} {:<43} {:<5} {:<20} {:<20} {:<20} NEXT",
            "STATE", "KID", "ALG", "PUBLISHED", "ACTIVATED", "RETIRED"
        );
        for k in &l.keys {
            let r = k.record;
            println!(
                "  {:<8} {:<43} {:<5} {:<20} {:<20} {:<20} {}",
                r.state.as_str(),
                r.kid,
                r.alg,
                r.published,
                r.activated.as_deref().unwrap_or("-"),
                r.retired.as_deref().unwrap_or("-"),
                k.next_transition
                    .as_ref()
                    .map(|n| format!("{} {}", n.what, n.at))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `export`: the discovery document and JWKS of one cluster as files,
/// byte-identical to what the server serves, for static hosting.
pub fn export(args: &ConfigArgs, id: &str, out: &std::path::Path) -> ExitCode {
    finish(run_export(args, id, out))
}

fn run_export(args: &ConfigArgs, id: &str, out: &std::path::Path) -> Result<(), CommandError> {
    let config = load(args)?;
    let c = cluster(&config, id)?;
    let store = crate::serve::key_store(&config);
    let failed = |e: &dyn std::fmt::Display| CommandError::Failed(format!("cluster {id:?}: {e}"));
    let manifest = store
        .read_manifest(id)
        .map_err(|e| failed(&e))?
        .ok_or_else(|| {
            CommandError::Failed(format!(
                "cluster {id:?} has no keys yet in {}: start the server once first",
                config.keys_dir.display()
            ))
        })?;
    let keys = std::sync::Arc::new(store.load_set(&manifest).map_err(|e| failed(&e))?);
    let published = crate::issuer::Published::new(&c.issuer, c.jwks_max_age, keys);
    let base = out.join(c.issuer_path.trim_start_matches('/'));
    let files = [
        (
            base.join(".well-known/openid-configuration"),
            &published.discovery.body,
        ),
        (base.join("openid/v1/jwks"), &published.jwks.body),
    ];
    for (path, body) in files {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::fsutil::write_atomic(&path, body, 0o644));
        written.map_err(|e| CommandError::Failed(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    println!(
        "upload with Content-Type application/json (discovery), application/jwk-set+json (JWKS) and Cache-Control \"public, max-age={}\"; issuer {}",
        c.jwks_max_age.as_secs(),
        c.issuer
    );
    Ok(())
}
