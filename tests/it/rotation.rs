//! Rotation as relying parties and operators see it: running servers follow
//! the CLI and each other, replicas on one keys dir never break each other's
//! tokens, a broken manifest never takes a server down.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use workload_issuer::clock::{Clock as _, ManualClock};

use crate::cli::{spawn_serve, terminate};
use crate::harness::{
    check_config, eventually, signal, verify_with_jwks, Options, Server, ADMIN_CLIENT, BIN,
};
use rustix::process::Signal;

/// A cluster that rotates every few seconds, for tests that watch it happen.
pub(crate) fn fast_config(keys: &Path, reload: &str) -> String {
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
{ADMIN_CLIENT}"#,
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

/// `keys ARGS --config CONFIG`; its output, whether it succeeded or not.
async fn keys_run(config: &Path, args: &[&str]) -> std::process::Output {
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

/// `keys ARGS --config CONFIG`, which must succeed; its output.
async fn keys_cli(config: &Path, args: &[&str]) -> std::process::Output {
    let out = keys_run(config, args).await;
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cluster of `fast_config` with an admin client, for servers started
/// in this process.
pub(crate) fn fast_clusters() -> String {
    let text = fast_config(Path::new("unused"), "1s");
    text[text.find("[rotation]").unwrap_or(0)..].to_owned()
}

/// Moves the shared clock on by `by` and waits until every server's
/// key-rotation task has taken its pass at the new time.
async fn tick(clock: &ManualClock, servers: &[&Server], by: Duration) {
    clock.advance(by);
    for s in servers {
        s.passed(clock.elapsed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_the_cli_rotating_one_dir_converge_and_every_token_verifies_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // Both replicas and the "CLI" live on one manual clock: 20 s of rotation
    // (a step every second, a key every 3 s) take as long as the machine
    // needs, not 20 s, and never depend on its speed.
    let clock = ManualClock::new(std::time::SystemTime::now());
    let options = || Options {
        clusters: fast_clusters(),
        ..Options::new(&keys)
    };
    let a = Server::start_with_clock(options(), clock.clone()).await;
    let b = Server::start_with_clock(options(), clock.clone()).await;
    let issuer = |s: &Server| format!("{}/c/r", s.base);
    let config = workload_issuer::config::Config::parse(
        "test",
        &fast_config(&keys, "1s"),
        &workload_issuer::config::Overrides::default(),
    )
    .unwrap();
    let (spec, policy) = (config.clusters[0].key_spec, config.clusters[0].rotation);
    let store = workload_issuer::serve::key_store(&config);

    let second = Duration::from_secs(1);
    let mut live: Vec<(String, &Server, std::time::SystemTime)> = Vec::new();
    let (mut signing_kids, mut checks, mut cli_rotations) = (BTreeSet::new(), 0, 0);
    for step in 0..20 {
        tick(&clock, &[&a, &b], second).await;
        // The CLI rotates too, as often as it is allowed.
        if workload_issuer::keys::steps::rotate(&store, "r", spec, &policy, clock.now(), false)
            .is_ok()
        {
            cli_rotations += 1;
        }
        let minter = if step % 2 == 0 { &a } else { &b };
        let t = minter
            .mint(
                "r",
                "ns",
                "sa",
                json!({"spec":{"audiences":["a"],"expirationSeconds":8}}),
            )
            .await;
        signing_kids.insert(
            crate::harness::decode_part(&t, 0)["kid"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        live.push((t, minter, clock.now() + Duration::from_secs(8)));
        let (ja, jb) = (a.jwks("r").await, b.jwks("r").await);
        live.retain(|(_, _, exp)| *exp > clock.now());
        for (t, minter, _) in &live {
            for (name, set) in [("A", &ja), ("B", &jb)] {
                verify_with_jwks(t, set, &issuer(minter), "a").unwrap_or_else(|e| {
                    panic!("step {step}: a live token fails on replica {name}: {e}")
                });
                checks += 1;
            }
        }
    }

    // Both replicas publish the set on disk once they have reloaded.
    tick(&clock, &[&a, &b], second).await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys.join("r/manifest.json")).unwrap()).unwrap();
    let (ja, jb) = (kids(&a.jwks("r").await), kids(&b.jwks("r").await));
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
    // No step ran twice or too early, and no key outlived its retention.
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
            // Kept past its retention by at most one step (1 s) and the
            // second the manifest's times are rounded to.
            assert!(
                retired + retention + Duration::from_secs(2) >= clock.now(),
                "a retired key outlived its retention: {manifest}"
            );
        }
    }
    assert!(
        signing_kids.len() >= 4,
        "rotation happened: {signing_kids:?}"
    );
    assert!(cli_rotations >= 1, "the CLI rotated too");
    assert!(checks > 100, "{checks} verifications");
    a.stop().await;
    b.stop().await;
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

    keys_cli(&config, &["rotate", "--cluster", "r", "--force"]).await;
    signal(server.id(), Signal::HUP);
    eventually(Duration::from_secs(3), || async {
        kids(&jwks(&client, &addr).await) != before
    })
    .await;
    let after = kids(&jwks(&client, &addr).await);
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
    keys_cli(&config, &["revoke", "--cluster", "r", "--kid", &current]).await;
    signal(server.id(), Signal::HUP);
    eventually(Duration::from_secs(3), || async {
        !kids(&jwks(&client, &addr).await).contains(&current)
    })
    .await;
    assert!(
        !kids(&jwks(&client, &addr).await).contains(&current),
        "revoked key still published"
    );
    assert!(terminate(server).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_never_takes_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(std::time::SystemTime::now());
    let s = Server::start_with_clock(
        Options {
            clusters: "[rotation]\nreload_interval = \"1s\"\n".to_owned()
                + &crate::harness::default_clusters(),
            ..Options::new(dir.path())
        },
        clock.clone(),
    )
    .await;
    let before = s.jwks("edge").await;
    let manifest = dir.path().join("edge/manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    // Half-written, then garbage: each is a new file, as an editor would leave it.
    for bad in [&good[..good.len() / 2], b"not json at all".as_slice()] {
        let tmp = dir.path().join("edge/tmp");
        std::fs::write(&tmp, bad).unwrap();
        std::fs::rename(&tmp, &manifest).unwrap();
        // Two reload passes see the broken file.
        for _ in 0..2 {
            tick(&clock, &[&s], Duration::from_secs(1)).await;
            assert_eq!(
                s.jwks("edge").await,
                before,
                "the last good key set keeps serving"
            );
        }
        let token = s.mint("edge", "ns", "sa", json!({})).await;
        verify_with_jwks(&token, &before, &s.issuer("edge"), "sts.amazonaws.com").unwrap();
    }
    std::fs::write(dir.path().join("edge/tmp"), &good).unwrap();
    std::fs::rename(dir.path().join("edge/tmp"), &manifest).unwrap();
    tick(&clock, &[&s], Duration::from_secs(1)).await;
    assert_eq!(s.jwks("edge").await, before);
    s.stop().await;
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
    let (code, err) = check_config(&file);
    assert_eq!(code, Some(2));
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

/// A cluster rotated by hand within the test: the policy's own rotation is an
/// hour away, and the standby may take over 5 s after it is published.
fn standby_clusters() -> String {
    format!(
        r#"[rotation]
reload_interval = "1s"

[[clusters]]
id = "s"
algorithm = "ES256"
jwks_max_age = "2s"
rotate_every = "1h"
publish_ahead = "5s"
{ADMIN_CLIENT}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_key_is_published_from_the_first_start_and_keys_rotate_takes_over_after_publish_ahead(
) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = Server::start(Options {
        clusters: standby_clusters(),
        ..Options::new(&keys)
    })
    .await;
    let config = dir.path().join("standby.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\nkeys_dir = {:?}\n{}",
            keys.display().to_string(),
            standby_clusters()
        ),
    )
    .unwrap();
    let path = keys.join("s/manifest.json");
    let manifest =
        || serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap()).unwrap();
    // The one key in `state`, and its time `field`.
    let one = |m: &serde_json::Value, state: &str| -> (String, serde_json::Value) {
        let keys: Vec<&serde_json::Value> = m["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["state"] == state)
            .collect();
        assert_eq!(keys.len(), 1, "one {state} key: {m}");
        (keys[0]["kid"].as_str().unwrap().to_owned(), keys[0].clone())
    };
    let time = |k: &serde_json::Value, field: &str| {
        humantime::parse_rfc3339(k[field].as_str().unwrap()).unwrap()
    };
    let publish_ahead = Duration::from_secs(5);

    // From the first start, the JWKS served over HTTP holds the signing key
    // and the standby; tokens are signed with the former.
    let m = manifest();
    let ((first, _), (standby, standby_rec)) = (one(&m, "current"), one(&m, "next"));
    assert_eq!(
        kids(&s.jwks("s").await),
        BTreeSet::from([first.clone(), standby.clone()])
    );
    let old_token = s
        .mint("s", "ns", "sa", json!({"spec":{"audiences":["a"]}}))
        .await;
    assert_eq!(crate::harness::decode_part(&old_token, 0)["kid"], first);

    // `keys rotate` without --force is refused while the standby has been
    // published for less than publish_ahead, and changes nothing.
    let ready = time(&standby_rec, "published") + publish_ahead;
    let before = std::fs::read(&path).unwrap();
    let out = keys_run(&config, &["rotate", "--cluster", "s"]).await;
    assert!(
        std::time::SystemTime::now() < ready,
        "this machine took publish_ahead to get here: the refusal could not be checked"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "refused: next key {standby} has been published for"
            ))
            && err.contains("less than publish_ahead (5s)")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refusal changes nothing"
    );

    // Tried until it works (still without --force): it does once the
    // standby has been published for publish_ahead, and not before.
    let rotated = eventually(Duration::from_secs(30), || {
        let config = config.clone();
        async move {
            let out = keys_run(&config, &["rotate", "--cluster", "s"]).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("less than publish_ahead"),
                "{err}"
            );
            out.status.success()
        }
    })
    .await;
    assert!(rotated, "keys rotate was still refused after publish_ahead");
    let m = manifest();
    let (signing, signing_rec) = one(&m, "current");
    let (retired, _) = one(&m, "retired");
    let (new_standby, _) = one(&m, "next");
    assert_eq!((&signing, &retired), (&standby, &first));
    assert!(
        time(&signing_rec, "activated") >= ready,
        "the standby signed before publish_ahead: {m}"
    );
    assert!(new_standby != first && new_standby != standby);

    // The running server follows: the old key stays published (retired),
    // the former standby signs, a new standby is published beside them.
    let all = BTreeSet::from([first.clone(), standby.clone(), new_standby.clone()]);
    let followed = eventually(Duration::from_secs(10), || async {
        kids(&s.jwks("s").await) == all
    })
    .await;
    assert!(followed, "the server did not follow the rotation");
    let token = s
        .mint("s", "ns", "sa", json!({"spec":{"audiences":["a"]}}))
        .await;
    assert_eq!(crate::harness::decode_part(&token, 0)["kid"], standby);
    let jwks = s.jwks("s").await;
    for t in [&token, &old_token] {
        verify_with_jwks(t, &jwks, &s.issuer("s"), "a").unwrap();
    }
    s.stop().await;
}
