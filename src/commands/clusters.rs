//! `clusters add|list|show|remove|recreate`: the admin API's operations
//! (`keys::registry`) on the keys dir, with or without a server running.
//! Running servers sharing the keys dir see each change through the
//! registry's generation counter.

use std::process::ExitCode;

use crate::cli::{AddClusterArgs, ClustersCommand, ConfigArgs};
use crate::clock::system_now;
use crate::config::{ClusterConfig, Config, Origin};
use crate::k8s::names::is_dns_label;
use crate::keys::registry::{AdminError, Listed, Registry, View};
use crate::keys::store::{KeyRecord, KeyStore};
use crate::serve::key_store;

use super::{finish, load, CommandError};

pub fn run(command: ClustersCommand) -> ExitCode {
    finish(match command {
        ClustersCommand::Add(args) => add(&args),
        ClustersCommand::List { config, json } => list(&config, json),
        ClustersCommand::Show { config, id, json } => show(&config, &id, json),
        ClustersCommand::Remove { config, id } => remove(&config, &id),
        ClustersCommand::Recreate { config, id } => recreate(&config, &id),
    })
}

/// The flag a settings field is given with.
fn flag(field: &str) -> String {
    match field {
        "id" => "ID".to_owned(),
        "audiences" => "--audience".to_owned(),
        f => format!("--{}", f.replace('_', "-")),
    }
}

/// A refusal worded for the command line: each problem by its flag.
fn refused(e: AdminError) -> CommandError {
    match e {
        AdminError::Invalid(problems) => CommandError::BadInput(
            problems
                .iter()
                .map(|p| match p.field.as_str() {
                    "" => p.message.clone(),
                    f => format!("{}: {}", flag(f), p.message),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        AdminError::Taken { field, message } => {
            CommandError::BadInput(format!("{}: {message}", flag(field)))
        }
        AdminError::FromFile { id, file } => CommandError::BadInput(format!(
            "cluster {id:?} is declared in {file}; remove it there (and reload the servers): \
             `clusters remove` deletes only clusters created at run time"
        )),
        e @ AdminError::Unknown(_) => CommandError::BadInput(e.to_string()),
        AdminError::Store(e) => CommandError::Failed(e.to_string()),
    }
}

fn failed(id: &str) -> impl Fn(crate::keys::store::StoreError) -> CommandError + '_ {
    move |e| CommandError::Failed(format!("cluster {id:?}: {e}"))
}

/// The cluster with this id, from the config file or the registry.
fn find<'c>(config: &'c Config, id: &str) -> Result<&'c ClusterConfig, CommandError> {
    // An id that is not a DNS label never names a cluster, and never
    // reaches the keys dir as a path.
    let found = is_dns_label(id).then(|| config.cluster(id)).flatten();
    found.ok_or_else(|| {
        let ids: Vec<&str> = config.clusters.iter().map(|c| c.id.as_str()).collect();
        CommandError::BadInput(format!(
            "no cluster has id {id:?}; the clusters are: {}",
            ids.join(", ")
        ))
    })
}

fn add(args: &AddClusterArgs) -> Result<(), CommandError> {
    let config = load(&args.config)?;
    let store = key_store(&config);
    let known = Listed::new(config.clusters.clone());
    let (entry, cluster, keys) = Registry::new(&store)
        .create(&args.settings(), &config.public_url, &known, system_now())
        .map_err(refused)?;
    let records: Vec<KeyRecord> = keys.keys().iter().map(|k| k.record.clone()).collect();
    println!(
        "created cluster {} ({}), issuer {}, at {}",
        cluster.id, cluster.key_spec, cluster.issuer, entry.created
    );
    for r in &records {
        println!("  {} key {} ({})", r.state.as_str(), r.kid, r.alg);
    }
    if super::store::active() {
        println!("to be committed to etcd as this command ends; every replica then serves it within a second");
    } else {
        println!(
            "running servers on the keys dir {} serve it as soon as they see the change",
            config.keys_dir.display()
        );
    }
    Ok(())
}

fn view(store: &KeyStore, c: &ClusterConfig) -> Result<View, CommandError> {
    let records = store
        .read_manifest(&c.id)
        .map_err(failed(&c.id))?
        .map(|m| m.keys)
        .unwrap_or_default();
    let entry = match c.origin {
        Origin::File => None,
        Origin::Runtime => Registry::new(store).get(&c.id).map_err(failed(&c.id))?,
    };
    Ok(View::new(c, entry.as_ref(), &records))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CommandError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CommandError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn list(args: &ConfigArgs, json: bool) -> Result<(), CommandError> {
    let config = load(args)?;
    let store = key_store(&config);
    let views = config
        .clusters
        .iter()
        .map(|c| view(&store, c))
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        return print_json(&serde_json::json!({ "clusters": views }));
    }
    println!(
        "{:<20} {:<8} {:<6} {:<4} {:<43} ISSUER",
        "ID", "ORIGIN", "ALG", "KEYS", "CURRENT KID"
    );
    for v in &views {
        let current = v.keys.iter().find(|k| k.state == "current");
        println!(
            "{:<20} {:<8} {:<6} {:<4} {:<43} {}",
            v.id,
            v.origin,
            v.algorithm,
            v.keys.len(),
            current.map_or("-", |k| k.kid.as_str()),
            v.issuer
        );
    }
    Ok(())
}

fn show(args: &ConfigArgs, id: &str, json: bool) -> Result<(), CommandError> {
    let config = load(args)?;
    let store = key_store(&config);
    let v = view(&store, find(&config, id)?)?;
    if json {
        return print_json(&v);
    }
    let mut origin = match v.origin {
        "file" => format!(
            "declared in {}",
            config.file.as_deref().map_or_else(
                || "the embedded default".into(),
                |f| f.display().to_string()
            )
        ),
        _ => "created at run time".to_owned(),
    };
    if let Some(created) = &v.created {
        origin.push_str(&format!(" on {created}"));
    }
    if let Some(recreated) = &v.recreated {
        origin.push_str(&format!(", recreated on {recreated}"));
    }
    let algorithm = match v.rsa_bits {
        Some(bits) => format!("{} (RSA {bits})", v.algorithm),
        None => v.algorithm.clone(),
    };
    println!("cluster {} ({origin})", v.id);
    println!("  issuer          {}", v.issuer);
    println!("  algorithm       {algorithm}");
    println!("  audiences       {}", v.audiences.join(", "));
    println!(
        "  token lifetime  {} to {}",
        v.min_token_lifetime, v.max_token_lifetime
    );
    println!("  jwks max-age    {}", v.jwks_max_age);
    println!(
        "  rotation        every {}, published {} ahead, kept {} after",
        v.rotate_every, v.publish_ahead, v.retention
    );
    if v.publish_only {
        println!("  publish_only    its own kube-apiserver signs; keys imported by hand");
    }
    if v.keys.is_empty() {
        println!("  no keys yet: a server creates the first at its start");
        return Ok(());
    }
    println!(
        "  {:<8} {:<43} {:<5} {:<20} {:<20} RETIRED",
        "STATE", "KID", "ALG", "PUBLISHED", "ACTIVATED"
    );
    for k in &v.keys {
        println!(
            "  {:<8} {:<43} {:<5} {:<20} {:<20} {}",
            k.state,
            k.kid,
            k.alg,
            k.published,
            k.activated.as_deref().unwrap_or("-"),
            k.retired.as_deref().unwrap_or("-")
        );
    }
    if let Some(t) = &v.next_transition {
        println!("  next: {} {} at {}", t.kid, t.what, t.at);
    }
    Ok(())
}

fn remove(args: &ConfigArgs, id: &str) -> Result<(), CommandError> {
    let config = load(args)?;
    find(&config, id)?;
    let store = key_store(&config);
    let known = Listed::new(config.clusters.clone());
    let kids = Registry::new(&store)
        .remove(id, &known, config.file.as_deref())
        .map_err(refused)?;
    println!(
        "removed cluster {id} and its keys ({}): tokens they signed no longer verify",
        kids.join(", ")
    );
    println!("running servers stop serving it as soon as they see the change");
    Ok(())
}

fn recreate(args: &ConfigArgs, id: &str) -> Result<(), CommandError> {
    let config = load(args)?;
    let c = find(&config, id)?;
    if c.publish_only {
        return Err(CommandError::BadInput(format!(
            "cluster {id:?} is publish_only: its own kube-apiserver signs its tokens and its keys \
             are imported with `keys import`, never generated here"
        )));
    }
    let store = key_store(&config);
    let (old, keys) = Registry::new(&store)
        .recreate(c, system_now())
        .map_err(refused)?;
    println!(
        "recreated cluster {id}, issuer {}: removed keys {}; tokens they signed no longer verify",
        c.issuer,
        old.join(", ")
    );
    for k in keys.keys() {
        println!(
            "  {} key {} ({})",
            k.record.state.as_str(),
            k.record.kid,
            k.record.alg
        );
    }
    println!("running servers serve the new keys as soon as they see the change");
    Ok(())
}
