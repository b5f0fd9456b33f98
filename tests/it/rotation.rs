//! Rotation as relying parties and operators see it: running servers follow
//! the CLI and each other, replicas on one keys dir never break each other's
//! tokens, a broken manifest never takes a server down.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{spawn_serve, terminate};
use crate::harness::{verify_with_jwks, Options, Server};

const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");
const ISSUER: &str = "http://127.0.0.1:8080/c/r";

/// A cluster that rotates every few seconds, for tests that watch it happen.
fn fast_config(keys: &Path, reload: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
keys_dir = {keys:?}

[rotation]
interval = "1s"
reload_interval = "{reload}"

[[clusters]]
id = "r"
algorithm = "ES256"
min_token_lifetime = "2s"
max_token_lifetime = "8s"
jwks_max_age = "2s"
rotate_every = "5s"
publish_ahead = "2s"
clock_skew = "1s"

[[api_clients]]
name = "admin"
token_file = "admin.token"
generate = true
clusters = ["*"]
"#,
        keys = keys.display().to_string()
    )
}

fn kids(jwks: &serde_json::Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn jwks(client: &reqwest::Client, addr: &str) -> serde_json::Value {
    client
        .get(format!("http://{addr}/c/r/openid/v1/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn mint(client: &reqwest::Client, addr: &str, token: &str) -> String {
    let r = client
        .post(format!(
            "http://{addr}/c/r/api/v1/namespaces/ns/serviceaccounts/sa/token"
        ))
        .bearer_auth(token)
        .json(&json!({"spec":{"audiences":["a"],"expirationSeconds":8}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["status"]["token"].as_str().unwrap().to_owned()
}

async fn keys_cli(config: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_the_cli_rotating_one_dir_converge_and_every_token_verifies_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = dir.path().join("fast.toml");
    std::fs::write(&config, fast_config(&keys, "1s")).unwrap();
    let cfg = config.to_str().unwrap();
    let (a, addr_a, _) = spawn_serve(&["--config", cfg], &[]);
    let (b, addr_b, _) = spawn_serve(&["--config", cfg], &[]);
    let token = std::fs::read_to_string(keys.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let client = workload_issuer::client::http_client(None).unwrap();

    // The CLI rotates too, as often as it is allowed.
    let cli_config = config.clone();
    let cli = tokio::spawn(async move {
        let mut rotated = 0;
        let until = Instant::now() + Duration::from_secs(16);
        while Instant::now() < until {
            if keys_cli(&cli_config, &["rotate", "--cluster", "r"])
                .await
                .status
                .success()
            {
                rotated += 1;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        rotated
    });

    let mut live: Vec<(String, Instant)> = Vec::new();
    let mut signing_kids = BTreeSet::new();
    let mut checks = 0;
    let until = Instant::now() + Duration::from_secs(18);
    let mut i = 0;
    while Instant::now() < until {
        let addr = if i % 2 == 0 { &addr_a } else { &addr_b };
        i += 1;
        let t = mint(&client, addr, &token).await;
        signing_kids.insert(
            crate::harness::decode_part(&t, 0)["kid"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        live.push((t, Instant::now() + Duration::from_secs(8)));
        let (ja, jb) = (jwks(&client, &addr_a).await, jwks(&client, &addr_b).await);
        live.retain(|(_, exp)| *exp > Instant::now() + Duration::from_millis(300));
        for (t, _) in &live {
            for (name, set) in [("A", &ja), ("B", &jb)] {
                verify_with_jwks(t, set, ISSUER, "a")
                    .unwrap_or_else(|e| panic!("a live token fails on replica {name}: {e}"));
                checks += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cli_rotations = cli.await.unwrap();

    // Both replicas publish the same set, the one on disk, once they reload.
    // They go on rotating (a step about every second here), so look for a
    // moment when the manifest held still around both fetches.
    let read_manifest = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(keys.join("r/manifest.json")).unwrap()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let (manifest, ja, jb) = loop {
        let before = read_manifest();
        let (ja, jb) = (
            kids(&jwks(&client, &addr_a).await),
            kids(&jwks(&client, &addr_b).await),
        );
        let manifest = read_manifest();
        // The manifest lists its keys as a JWKS does: {"keys": [{"kid": ...}]}.
        let settled = before == manifest && ja == jb && ja == kids(&manifest);
        if settled || Instant::now() > deadline {
            break (manifest, ja, jb);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on_disk = kids(&manifest);
    assert_eq!(ja, jb, "the replicas converge");
    assert_eq!(ja, on_disk);
    let states: Vec<&str> = manifest["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "current").count(),
        1,
        "{states:?}"
    );
    assert!(
        states.iter().filter(|s| **s == "next").count() <= 1,
        "{states:?}"
    );
    // No step ran twice or too early. The CLI may rotate as soon as
    // a next key has been published for publish_ahead (2s), so the count of
    // retired keys depends on timing; the times in the manifest do not.
    let at = |k: &serde_json::Value, field: &str| {
        k[field]
            .as_str()
            .map(|t| humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{field} {t}: {e}")))
    };
    let mut keys: Vec<&serde_json::Value> = manifest["keys"].as_array().unwrap().iter().collect();
    keys.retain(|k| k["activated"].is_string());
    keys.sort_by_key(|k| at(k, "activated"));
    let publish_ahead = Duration::from_secs(2);
    let retention = Duration::from_secs(8 + 1 + 2); // max lifetime + skew + max-age
    for (i, k) in keys.iter().enumerate() {
        let (published, activated) = (at(k, "published").unwrap(), at(k, "activated").unwrap());
        let first_key = i == 0 && published == activated;
        assert!(
            first_key || activated.duration_since(published).unwrap_or_default() >= publish_ahead,
            "a key signed before it was published for publish_ahead: {manifest}"
        );
        if let Some(before) = i.checked_sub(1).map(|j| at(keys[j], "activated").unwrap()) {
            assert!(
                activated.duration_since(before).unwrap_or_default() >= publish_ahead,
                "two activations closer than publish_ahead (a step ran twice): {manifest}"
            );
        }
        if let Some(retired) = at(k, "retired") {
            // Kept past its retention by at most the reload interval and the
            // seconds the manifest's times are rounded to.
            assert!(
                retired + retention + Duration::from_secs(2) >= std::time::SystemTime::now(),
                "a retired key outlived its retention: {manifest}"
            );
        }
    }
    assert!(
        signing_kids.len() >= 3,
        "rotation happened: {signing_kids:?}"
    );
    assert!(checks > 100, "{checks} verifications");
    eprintln!(
        "{} tokens, {checks} verifications, {} signing keys, {cli_rotations} CLI rotations",
        i,
        signing_kids.len()
    );
    assert!(terminate(a).success());
    assert!(terminate(b).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_follows_the_cli_and_sighup_reloads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = dir.path().join("slow.toml");
    // Reload only hourly, so only SIGHUP can explain a quick change.
    std::fs::write(
        &config,
        fast_config(&keys, "1h")
            .replace("interval = \"1s\"", "interval = \"1h\"")
            .replace("enabled", "x"),
    )
    .unwrap();
    let (server, addr, _) = spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    let client = workload_issuer::client::http_client(None).unwrap();
    let before = kids(&jwks(&client, &addr).await);

    let out = keys_cli(&config, &["rotate", "--cluster", "r", "--force"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = before.clone();
    while Instant::now() < deadline && after == before {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = kids(&jwks(&client, &addr).await);
    }
    assert!(
        after.len() > before.len(),
        "SIGHUP picked up the new key: {before:?} -> {after:?}"
    );

    // Revoking the signing key removes it from the running server's JWKS.
    let list = keys_cli(&config, &["list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let current = listed["clusters"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "current")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(listed["clusters"][0]["keys"][0]["next_transition"]["at"].is_string());
    let out = keys_cli(&config, &["revoke", "--cluster", "r", "--kid", &current]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && kids(&jwks(&client, &addr).await).contains(&current) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !kids(&jwks(&client, &addr).await).contains(&current),
        "revoked key still published"
    );
    assert!(terminate(server).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_never_takes_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        listen: None,
        keys_dir: dir.path(),
        clusters: "[rotation]\nreload_interval = \"1s\"\n".to_owned()
            + &crate::harness::default_clusters(),
        tls: None,
        api_listener: false,
        extra: String::new(),
    })
    .await;
    let before = s.jwks("edge").await;
    let manifest = dir.path().join("edge/manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    // Half-written, then garbage: each is a new file, as an editor would leave it.
    for bad in [&good[..good.len() / 2], b"not json at all".as_slice()] {
        let tmp = dir.path().join("edge/tmp");
        std::fs::write(&tmp, bad).unwrap();
        std::fs::rename(&tmp, &manifest).unwrap();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(
            s.jwks("edge").await,
            before,
            "the last good key set keeps serving"
        );
        let token = s.mint("edge", "ns", "sa", json!({})).await;
        verify_with_jwks(&token, &before, &s.issuer("edge"), "sts.amazonaws.com").unwrap();
    }
    std::fs::write(dir.path().join("edge/tmp"), &good).unwrap();
    std::fs::rename(dir.path().join("edge/tmp"), &manifest).unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.jwks("edge").await, before);
}

#[test]
fn check_config_refuses_a_policy_that_could_break_a_relying_party() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"listen = "127.0.0.1:8080"
public_url = "https://oidc.example.com"
keys_dir = "keys"
[[clusters]]
id = "a"
jwks_max_age = "2h"
publish_ahead = "1h"
max_token_lifetime = "24h"
retention = "12h"
[[clusters]]
id = "b"
rotate_every = "1h"
publish_ahead = "1h"
retention = "7d"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clusters[0].publish_ahead: 1h is shorter than jwks_max_age 2h"),
        "{err}"
    );
    assert!(
        err.contains("clusters[0].retention: 12h is shorter than max_token_lifetime 1day + jwks_max_age 2h + clock_skew 5m = 1day 2h 5m"),
        "{err}"
    );
    assert!(err.contains("clusters[1].rotate_every: rotating every 1h with retention 7days publishes up to 170 keys"), "{err}");
}
