//! The config reloads while serving (#14): on SIGHUP and when the file
//! changes, clusters and API clients added, removed or changed take effect;
//! a config that does not validate changes nothing and is named on the API
//! listener's /readyz until a good one loads.

use std::path::Path;
use std::time::Duration;

use crate::cli::{spawn_serve, terminate};
use crate::harness::support::{self, api_client, config_file};
use crate::harness::{eventually, signal};

const WAIT: Duration = Duration::from_secs(10);

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

async fn mint_status(client: &reqwest::Client, base: &str, cluster: &str, token: &str) -> u16 {
    client
        .post(format!(
            "{base}{}",
            support::token_path(cluster, "ns", "sa")
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"spec": {}}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn clusters(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("[[clusters]]\nid = \"{id}\"\nalgorithm = \"ES256\"\n"))
        .collect()
}

fn write(dir: &Path, tables: &str) {
    config_file(dir, tables);
}

#[tokio::test]
async fn sighup_applies_clusters_and_clients_and_a_broken_config_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &(clusters(&["a"]) + &api_client("one", "token-one")),
    );
    let config = dir.path().join("config.toml");
    let (child, addr, _) = spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    let base = format!("http://{addr}");
    // One client, one kept-alive connection, across every reload.
    let client = workload_issuer::client::http_client(None).unwrap();
    let discovery = |c: &str| format!("{base}/c/{c}/.well-known/openid-configuration");
    assert_eq!(status(&client, &discovery("a")).await, 200);
    assert_eq!(status(&client, &discovery("b")).await, 404);
    assert_eq!(mint_status(&client, &base, "a", "token-two").await, 401);

    // A cluster and a client added: both live after SIGHUP.
    write(
        dir.path(),
        &(clusters(&["a", "b"])
            + &api_client("one", "token-one")
            + &api_client("two", "token-two")),
    );
    signal(child.id(), rustix::process::Signal::HUP);
    assert!(
        eventually(WAIT, || async {
            status(&client, &discovery("b")).await == 200
        })
        .await,
        "cluster b was not served after SIGHUP"
    );
    assert!(
        eventually(WAIT, || async {
            mint_status(&client, &base, "b", "token-two").await == 201
        })
        .await,
        "the new client could not mint for the new cluster"
    );
    let jwks_url = format!("{base}/c/a/openid/v1/jwks");
    let jwks_a = text(&client, &jwks_url).await;

    // A config that does not validate changes nothing, and says so.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "\n[[clusters]]\nid = \"Bad_Id\"\n",
    )
    .unwrap();
    signal(child.id(), rustix::process::Signal::HUP);
    let readyz = format!("{base}/readyz");
    assert!(
        eventually(WAIT, || async { status(&client, &readyz).await == 503 }).await,
        "/readyz did not report the broken config"
    );
    let body = text(&client, &readyz).await;
    assert!(
        body.contains("the config file did not reload") && body.contains("Bad_Id"),
        "{body}"
    );
    assert_eq!(status(&client, &discovery("a")).await, 200);
    assert_eq!(status(&client, &discovery("b")).await, 200);
    assert_eq!(mint_status(&client, &base, "b", "token-two").await, 201);
    let same = text(&client, &jwks_url).await;
    assert_eq!(same, jwks_a, "a broken config changed cluster a's keys");

    // A good config again: b and client two are gone, /readyz is ready.
    write(
        dir.path(),
        &(clusters(&["a"]) + &api_client("one", "token-one")),
    );
    signal(child.id(), rustix::process::Signal::HUP);
    assert!(
        eventually(WAIT, || async { status(&client, &readyz).await == 200 }).await,
        "/readyz stayed unready after a good config"
    );
    assert!(
        eventually(WAIT, || async {
            status(&client, &discovery("b")).await == 404
        })
        .await,
        "cluster b is still served after it left the config"
    );
    assert_eq!(mint_status(&client, &base, "a", "token-two").await, 401);
    assert_eq!(mint_status(&client, &base, "a", "token-one").await, 201);
    assert!(terminate(child).success());
}

#[tokio::test]
async fn a_changed_file_is_reloaded_at_the_reload_interval_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let fast = "[rotation]\nreload_interval = \"1s\"\n";
    write(dir.path(), &(fast.to_owned() + &clusters(&["a"])));
    let config = dir.path().join("config.toml");
    let (child, addr, _) = spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    let client = workload_issuer::client::http_client(None).unwrap();
    let url = format!("http://{addr}/c/late/.well-known/openid-configuration");
    assert_eq!(status(&client, &url).await, 404);
    write(dir.path(), &(fast.to_owned() + &clusters(&["a", "late"])));
    assert!(
        eventually(WAIT, || async { status(&client, &url).await == 200 }).await,
        "the changed file was not picked up"
    );
    assert!(terminate(child).success());
}
