//! A `serve` process on its own port, as the tests of several servers on
//! one store (runtime clusters on a shared keys dir, replicas on etcd)
//! start it, and what they ask of each.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::cli::{spawn_serve, Spawned};

/// A server: `serve --config CONFIG` on its own port, over plain HTTP.
pub struct Node {
    pub process: Spawned,
    pub base: String,
}

/// Starts `serve --config CONFIG` and waits until it listens.
pub fn start(config: &Path) -> Node {
    let (process, addr, _) = spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    Node {
        process,
        base: format!("http://{addr}"),
    }
}

pub fn http() -> reqwest::Client {
    workload_issuer::client::http_client(None).unwrap()
}

/// The status a GET of `url` gets; 0 when nothing answers.
pub async fn status_of(url: &str) -> u16 {
    http()
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

pub fn discovery(node: &Node, id: &str) -> String {
    format!("{}/c/{id}/.well-known/openid-configuration", node.base)
}

pub fn jwks_url(node: &Node, id: &str) -> String {
    format!("{}/c/{id}/openid/v1/jwks", node.base)
}

/// The kids of a cluster's JWKS; empty unless it answers 200.
pub async fn kids(node: &Node, id: &str) -> BTreeSet<String> {
    let Ok(r) = http().get(jwks_url(node, id)).send().await else {
        return BTreeSet::new();
    };
    if r.status() != 200 {
        return BTreeSet::new();
    }
    let v: Value = r.json().await.unwrap_or_default();
    v["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    super::decode_part(token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}
