//! The key store on etcd (#15) against a real 3-member etcd cluster
//! (Debian's etcd-server, `harness/etcd.rs`): the harness itself first, then
//! two replicas and the CLI on one cluster; last, one member serving mutual
//! TLS with etcd's users, for `[store]`'s TLS and password settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{terminate, Spawned};
use crate::harness::node::{discovery, http, jwks_url, kid_of, kids, start, status_of, Node};
use crate::harness::support::{config_file, token_path, token_sha256};
use crate::harness::{
    etcd_config, eventually, file_mode, new_kek, run_bin, sample, verify_with_jwks, EtcdCluster,
    BIN,
};
use crate::interop::{pyjwt, pyjwt_available};

#[test]
fn etcd_harness_three_members_survive_one_loss() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let put = |etcd: &EtcdCluster, key: &str, value: &str| {
        let (status, out, err) = etcd.etcdctl(&["put", key, value]);
        assert!(status.success(), "put {key}: {out}{err}\n{}", etcd.logs());
    };
    put(&etcd, "/smoke/a", "one");
    assert_eq!(
        etcd.get_prefix("/smoke/"),
        [("/smoke/a".to_owned(), b"one".to_vec())]
    );

    // The leader lost: the other two are a quorum and elect one of them.
    let lost = etcd.leader().expect("a leader");
    etcd.stop_member(lost);
    etcd.wait_healthy();
    assert!(etcd.leader().is_some_and(|l| l != lost));
    put(&etcd, "/smoke/b", "two");
    assert_eq!(etcd.get_prefix("/smoke/").len(), 2);

    // Back on its data, it catches up with what it missed: a linearizable
    // read through it alone sees the write made while it was down.
    etcd.start_member(lost);
    etcd.wait_healthy();
    let first = etcd.endpoints()[lost].clone();
    let (status, out, err) = etcd.etcdctl(&[
        "--endpoints",
        &first,
        "get",
        "/smoke/b",
        "--print-value-only",
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "two");

    // All three gone: etcdctl fails (within its command timeout).
    etcd.stop_all();
    let (status, out, err) = etcd.etcdctl(&["get", "/smoke/a", "--command-timeout=1s"]);
    assert!(
        !status.success(),
        "etcdctl answered with every member stopped: {out}"
    );
    assert!(!err.is_empty());

    // All back, nothing lost; a compaction makes older revisions unreadable.
    etcd.start_all();
    etcd.wait_healthy();
    let before = etcd.revision();
    put(&etcd, "/smoke/a", "three");
    assert_eq!(
        etcd.get_prefix("/smoke/"),
        [
            ("/smoke/a".to_owned(), b"three".to_vec()),
            ("/smoke/b".to_owned(), b"two".to_vec())
        ]
    );
    assert!(etcd.compact_now() > before);
    let (status, _, err) = etcd.etcdctl(&["get", "/smoke/a", "--rev", &before.to_string()]);
    assert!(
        !status.success() && err.contains("compacted"),
        "a read of a compacted revision: {err}"
    );
}

// ---------------------------------------------------------------------------
// The store itself, as the spec of #15 puts it: two replicas and the CLI
// on one etcd cluster. Ignored until the etcd store lands.

/// Every replica serves a change within 1 s of its commit (#15, item 4).
const WITHIN: Duration = Duration::from_secs(1);
/// What waits on a process or on etcd to notice something: generous.
const WAIT: Duration = Duration::from_secs(15);
/// The election lease of [`etcd_config`].
const LEASE_TTL: Duration = Duration::from_secs(2);
const PREFIX: &str = "/wi-test";
const ADMIN: &str = "admin-token-for-etcd-tests";
const AUDIENCE: &str = "sts.example.com";

/// Cluster `r`, rotated by hand (its own rotation is an hour away, its
/// standby may sign 2 s after it is published), and an admin client.
fn tables() -> String {
    format!(
        "[[clusters]]\nid = \"r\"\nalgorithm = \"ES256\"\njwks_max_age = \"2s\"\n\
         rotate_every = \"1h\"\npublish_ahead = \"2s\"\n{}",
        admin_client()
    )
}

/// Cluster `r` rotating by itself every 5 s, checked every second.
fn fast_tables() -> String {
    format!(
        "[rotation]\ninterval = \"1s\"\n\n[[clusters]]\nid = \"r\"\nalgorithm = \"ES256\"\n\
         min_token_lifetime = \"2s\"\nmax_token_lifetime = \"8s\"\njwks_max_age = \"2s\"\n\
         rotate_every = \"5s\"\npublish_ahead = \"2s\"\nclock_skew = \"1s\"\n{}",
        admin_client()
    )
}

fn admin_client() -> String {
    format!(
        "\n[[api_clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nadmin = true\n",
        token_sha256(ADMIN)
    )
}

/// A new KEK at `dir/name`, made by `workload-issuer store new-kek`: 32
/// bytes, mode 0600.
async fn kek(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    cli_ok(&["store", "new-kek", path.to_str().unwrap()]).await;
    assert_eq!(std::fs::read(&path).unwrap().len(), 32);
    assert_eq!(file_mode(&path), 0o600);
    path
}

/// Two replicas started at once: they may both find the store empty.
fn start_two(config: &Path) -> (Node, Node) {
    std::thread::scope(|s| {
        let a = s.spawn(|| start(config));
        let b = s.spawn(|| start(config));
        (a.join().unwrap(), b.join().unwrap())
    })
}

/// `serve --config CONFIG`, which must refuse to start: its exit code and
/// its log, once it has exited by itself (within 60 s).
fn serve_refused(config: &Path) -> (Option<i32>, String) {
    let log = config.with_extension("log");
    let mut command = std::process::Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WORKLOAD_ISSUER_") {
            command.env_remove(name);
        }
    }
    let child = command
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = Spawned::new(child).wait_exit(Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("serve did not refuse to start:\n{text}"));
    (status.code(), text)
}

/// The binary with `args`, which must succeed; its stdout.
async fn cli_ok(args: &[&str]) -> String {
    let (code, out, err) = run_bin(args).await;
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

/// A token for `ws/runner` from `node`, or the status and body it refused with.
async fn try_mint(node: &Node, id: &str) -> Result<String, String> {
    let r = http()
        .post(format!("{}{}", node.base, token_path(id, "ws", "runner")))
        .bearer_auth(ADMIN)
        .json(&json!({"spec": {"audiences": [AUDIENCE]}}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    match v["status"]["token"].as_str() {
        Some(token) if code == 201 => Ok(token.to_owned()),
        _ => Err(format!("{code}: {v}")),
    }
}

async fn mint(node: &Node, id: &str) -> String {
    try_mint(node, id)
        .await
        .unwrap_or_else(|e| panic!("minting for {id} on {}: {e}", node.base))
}

/// `token` verifies against `node`'s JWKS: here, and with PyJWT fetching
/// it over HTTP when PyJWT is installed.
async fn verifies_on(node: &Node, id: &str, token: &str) {
    let issuer = format!("http://127.0.0.1/c/{id}");
    let jwks: Value = http()
        .get(jwks_url(node, id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verify_with_jwks(token, &jwks, &issuer, AUDIENCE)
        .unwrap_or_else(|e| panic!("{} refused a token: {e}", node.base));
    if pyjwt_available().await {
        let (ok, out) = pyjwt(&jwks_url(node, id), &issuer, AUDIENCE, token).await;
        assert!(ok, "PyJWT with {}'s JWKS refused a token: {out}", node.base);
    }
}

/// A sample of `node`'s /metrics.
async fn metric(node: &Node, series: &str) -> Option<f64> {
    let text = http()
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&text, series)
}

/// `keys list --json` of `config`: for each cluster, each kid's record.
async fn listed(config: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let out = cli_ok(&[
        "keys",
        "list",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let v: Value = serde_json::from_str(&out).unwrap();
    v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let keys = c["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| (k["kid"].as_str().unwrap().to_owned(), k.clone()))
                .collect();
            (c["id"].as_str().unwrap().to_owned(), keys)
        })
        .collect()
}

/// Each cluster's kids and their states, what a migration must keep.
fn states(
    list: &BTreeMap<String, BTreeMap<String, Value>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    list.iter()
        .map(|(id, keys)| {
            let keys = keys
                .iter()
                .map(|(kid, k)| (kid.clone(), k["state"].as_str().unwrap().to_owned()))
                .collect();
            (id.clone(), keys)
        })
        .collect()
}

/// The one kid of `keys` in `state`.
fn one(keys: &BTreeMap<String, Value>, state: &str) -> String {
    let found: Vec<&String> = keys
        .iter()
        .filter(|(_, k)| k["state"] == state)
        .map(|(kid, _)| kid)
        .collect();
    assert_eq!(found.len(), 1, "one {state} key: {keys:?}");
    found[0].clone()
}

/// Rotates `r` with `keys rotate --force` and checks that both replicas
/// sign with the former standby and publish the new one within [`WITHIN`].
async fn rotation_reaches(config: &Path, nodes: [&Node; 2]) {
    let before = listed(config).await["r"].clone();
    let standby = one(&before, "next");
    cli_ok(&[
        "keys",
        "rotate",
        "--force",
        "--cluster",
        "r",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let rotated = std::time::Instant::now();
    for node in nodes {
        let followed = eventually(WITHIN.saturating_sub(rotated.elapsed()), || async {
            let now = kids(node, "r").await;
            now.len() == before.len() + 1
                && before.keys().all(|k| now.contains(k))
                && try_mint(node, "r")
                    .await
                    .is_ok_and(|t| kid_of(&t) == standby)
        })
        .await;
        assert!(
            followed,
            "{} did not follow a rotation within {WITHIN:?}",
            node.base
        );
    }
    let after = listed(config).await["r"].clone();
    assert_eq!(one(&after, "current"), standby);
    let published: BTreeSet<String> = after.keys().cloned().collect();
    for node in nodes {
        assert_eq!(kids(node, "r").await, published, "{}", node.base);
    }
}

/// Whether `bytes` hold a private key in the clear: PEM, a PKCS#8, SEC1 or
/// PKCS#1 DER that parses, or a JSON document with a private JWK or such a
/// key in any string, as is or base64-encoded.
fn holds_private_key(bytes: &[u8]) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    fn der(bytes: &[u8]) -> bool {
        p256::SecretKey::from_pkcs8_der(bytes).is_ok()
            || p256::SecretKey::from_sec1_der(bytes).is_ok()
            || rsa::RsaPrivateKey::from_pkcs8_der(bytes).is_ok()
            || rsa::RsaPrivateKey::from_pkcs1_der(bytes).is_ok()
    }
    fn in_json(v: &Value) -> bool {
        match v {
            Value::String(s) => {
                s.contains("PRIVATE KEY")
                    || [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                        .iter()
                        .filter_map(|e| e.decode(s).ok())
                        .any(|b| der(&b) || String::from_utf8_lossy(&b).contains("PRIVATE KEY"))
            }
            Value::Array(items) => items.iter().any(in_json),
            // A JWK with "d" is a private key (RFC 7518 §6.2.2, §6.3.2).
            Value::Object(map) => {
                (map.contains_key("kty") && map.contains_key("d")) || map.values().any(in_json)
            }
            _ => false,
        }
    }
    String::from_utf8_lossy(bytes).contains("PRIVATE KEY")
        || der(bytes)
        || serde_json::from_slice::<Value>(bytes).is_ok_and(|v| in_json(&v))
}

/// The check above finds what it looks for, so finding nothing means
/// something.
fn check_the_private_key_detector() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    let key = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let sec1 = key.to_sec1_der().unwrap();
    assert!(holds_private_key(pkcs8.as_bytes()));
    assert!(holds_private_key(&sec1));
    assert!(holds_private_key(
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()
    ));
    let wrapped = json!({"key": STANDARD.encode(pkcs8.as_bytes())});
    assert!(holds_private_key(wrapped.to_string().as_bytes()));
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"});
    assert!(holds_private_key(jwk.to_string().as_bytes()));
    assert!(!holds_private_key(
        json!({"sealed": "A256GCM", "ciphertext": "AAAA"})
            .to_string()
            .as_bytes()
    ));
}

/// What the store holds under the prefix, but the election key: a replica
/// that stopped (or failed to start) may leave it behind until its lease
/// expires.
fn state(etcd: &EtcdCluster) -> Vec<(String, Vec<u8>)> {
    // `P/leader`, or `P/leader/<lease>` as etcd's election API names it.
    let leader = format!("{PREFIX}/leader");
    let mut all = etcd.get_prefix(PREFIX);
    all.retain(|(k, _)| {
        k.strip_prefix(&leader)
            .is_none_or(|rest| !rest.is_empty() && !rest.starts_with('/'))
    });
    all
}

/// Nothing under the prefix holds a private key in the clear; every key of
/// `r` is there, sealed, under `P/keys/r/kid/<kid>`.
fn no_private_key_in_etcd(etcd: &EtcdCluster, r_kids: &BTreeSet<String>) {
    check_the_private_key_detector();
    let all = etcd.get_prefix(PREFIX);
    assert!(!all.is_empty(), "nothing under {PREFIX}");
    for (key, value) in &all {
        assert!(
            !holds_private_key(value),
            "{key} holds a private key in the clear"
        );
    }
    for kid in r_kids {
        let name = format!("{PREFIX}/keys/r/kid/{kid}");
        let (_, value) = all
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("no {name} in etcd"));
        let sealed: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(sealed["sealed"], "A256GCM", "{name}: {sealed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_the_cli_on_one_etcd_share_keys_and_follow_every_change_within_a_second() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kek = kek(dir.path(), "kek").await;
    let cfg = etcd_config(dir.path(), &etcd, PREFIX, &kek, &tables());
    let cfg_arg = cfg.to_str().unwrap();
    // Started at once: both may find the store empty, one key set wins.
    let (a, b) = start_two(&cfg);
    let agreed = eventually(WITHIN, || async {
        let ka = kids(&a, "r").await;
        !ka.is_empty() && ka == kids(&b, "r").await
    })
    .await;
    assert!(
        agreed,
        "two replicas serve different JWKS: {:?} and {:?}",
        kids(&a, "r").await,
        kids(&b, "r").await
    );

    // A token either replica signed verifies against either one's JWKS.
    for token in [mint(&a, "r").await, mint(&b, "r").await] {
        for node in [&a, &b] {
            verifies_on(node, "r", &token).await;
        }
    }

    // The CLI rotates: both follow within a second.
    let old = mint(&a, "r").await;
    rotation_reaches(&cfg, [&a, &b]).await;
    for node in [&a, &b] {
        verifies_on(node, "r", &old).await;
    }

    // A cluster created on A is served by B within a second, and deleted
    // on B it is gone from A within a second.
    let clusters = |n: &Node| format!("{}/admin/v1/clusters", n.base);
    let r = http()
        .post(clusters(&a))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "ws-1", "algorithm": "ES256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let created = std::time::Instant::now();
    let seen = eventually(WITHIN.saturating_sub(created.elapsed()), || async {
        status_of(&discovery(&b, "ws-1")).await == 200
    })
    .await;
    assert!(
        seen,
        "B did not serve a cluster created on A within {WITHIN:?}"
    );
    let token = mint(&b, "ws-1").await;
    verifies_on(&a, "ws-1", &token).await;
    let r = http()
        .delete(format!("{}/ws-1", clusters(&b)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let deleted = std::time::Instant::now();
    let gone = eventually(WITHIN.saturating_sub(deleted.elapsed()), || async {
        status_of(&discovery(&a, "ws-1")).await == 404
            && status_of(&jwks_url(&a, "ws-1")).await == 404
    })
    .await;
    assert!(
        gone,
        "A still served a cluster deleted on B after {WITHIN:?}"
    );

    // Nothing in etcd is a private key in the clear.
    no_private_key_in_etcd(&etcd, &kids(&a, "r").await);

    // Two `keys rotate` at once, once the standby may sign: one step, not two.
    let before = listed(&cfg).await["r"].clone();
    let standby = one(&before, "next");
    let published =
        humantime::parse_rfc3339(before[&standby]["published"].as_str().unwrap()).unwrap();
    // publish_ahead, and a second for the listed time's precision.
    let ready = published + Duration::from_secs(2 + 1);
    assert!(
        eventually(WAIT, || async { std::time::SystemTime::now() >= ready }).await,
        "the standby was published at {published:?}, in the future"
    );
    let rotate = ["keys", "rotate", "--cluster", "r", "--config", cfg_arg];
    let (x, y) = tokio::join!(run_bin(&rotate), run_bin(&rotate));
    assert!(
        x.0 == 0 || y.0 == 0,
        "neither rotation succeeded:\n{}{}\n{}{}",
        x.1,
        x.2,
        y.1,
        y.2
    );
    let after = listed(&cfg).await["r"].clone();
    assert_eq!(
        after.len(),
        before.len() + 1,
        "one step adds one standby: {after:?}"
    );
    assert_eq!(one(&after, "current"), standby, "{after:?}");
    let was_current = one(&before, "current");
    assert_eq!(after[&was_current]["state"], "retired", "{after:?}");
    let all: BTreeSet<String> = after.keys().cloned().collect();
    for node in [&a, &b] {
        let followed = eventually(WITHIN, || async { kids(node, "r").await == all }).await;
        assert!(followed, "{} did not follow", node.base);
    }
    assert!(terminate(a.process).success());
    assert!(terminate(b.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_replica_that_holds_the_election_hands_rotation_to_the_other_within_the_lease()
{
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kek = kek(dir.path(), "kek").await;
    let cfg = etcd_config(dir.path(), &etcd, PREFIX, &kek, &fast_tables());
    let (a, b) = start_two(&cfg);
    let leader = "workload_issuer_store_leader";
    let roles = || async { (metric(&a, leader).await, metric(&b, leader).await) };
    let one_leader =
        |r: (Option<f64>, Option<f64>)| matches!(r, (Some(x), Some(y)) if x + y == 1.0);
    let elected = eventually(WAIT, || async { one_leader(roles().await) }).await;
    let roles = roles().await;
    assert!(
        elected && one_leader(roles),
        "not exactly one leader: {roles:?}"
    );
    let (holder, other) = if roles.0 == Some(1.0) { (a, b) } else { (b, a) };

    // SIGKILL: the lease is not given back, it expires.
    drop(holder.process);
    let killed = std::time::Instant::now();
    let took_over = eventually(LEASE_TTL + Duration::from_secs(3), || async {
        metric(&other, leader).await == Some(1.0)
    })
    .await;
    assert!(
        took_over,
        "{} did not take the election within the lease TTL ({LEASE_TTL:?}) and a margin",
        other.base
    );
    eprintln!("took over {:?} after the kill", killed.elapsed());

    // And it rotates: its signing key changes by itself (every 5 s).
    let signing = kid_of(&mint(&other, "r").await);
    let rotated = eventually(WAIT, || async {
        try_mint(&other, "r")
            .await
            .is_ok_and(|t| kid_of(&t) != signing)
    })
    .await;
    assert!(rotated, "the replica left did not rotate");
    assert!(terminate(other.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_lost_changes_nothing_and_all_lost_keeps_serving_and_says_so_until_they_return(
) {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kek = kek(dir.path(), "kek").await;
    let cfg = etcd_config(dir.path(), &etcd, PREFIX, &kek, &tables());
    let (a, b) = start_two(&cfg);
    let readyz = |n: &Node| format!("{}/readyz", n.base);
    for node in [&a, &b] {
        assert_eq!(status_of(&readyz(node)).await, 200);
        assert_eq!(metric(node, "workload_issuer_store_up").await, Some(1.0));
    }

    // One member lost, the leader at that: still ready, and once the other
    // two have elected one (writes wait for that, a second or two), a
    // rotation reaches both.
    etcd.stop_member(etcd.leader().expect("an etcd leader"));
    for node in [&a, &b] {
        assert_eq!(status_of(&readyz(node)).await, 200, "{}", node.base);
    }
    etcd.wait_healthy();
    rotation_reaches(&cfg, [&a, &b]).await;
    for node in [&a, &b] {
        assert_eq!(status_of(&readyz(node)).await, 200, "{}", node.base);
        assert_eq!(metric(node, "workload_issuer_store_up").await, Some(1.0));
    }

    // All three lost: discovery, JWKS and minting go on from the last
    // state; /readyz and the metric say the store is unreachable.
    let served = kids(&a, "r").await;
    etcd.stop_all();
    for node in [&a, &b] {
        let noticed = eventually(WAIT, || async {
            metric(node, "workload_issuer_store_up").await == Some(0.0)
                && status_of(&readyz(node)).await == 503
        })
        .await;
        assert!(noticed, "{} did not report etcd unreachable", node.base);
        let body = http()
            .get(readyz(node))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("store") && body.contains("unreachable"),
            "{body}"
        );
        assert_eq!(status_of(&discovery(node, "r")).await, 200);
        assert_eq!(kids(node, "r").await, served);
        let token = mint(node, "r").await;
        verifies_on(if node.base == a.base { &b } else { &a }, "r", &token).await;
        // Cluster changes wait, and say why; nothing is made on one replica.
        let r = http()
            .post(format!("{}/admin/v1/clusters", node.base))
            .bearer_auth(ADMIN)
            .json(&json!({"id": "while-down", "algorithm": "ES256"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("cluster changes wait") && body.contains("unreachable"),
            "{body}"
        );
        assert_eq!(status_of(&discovery(node, "while-down")).await, 404);
    }

    // Back: ready again without a restart, and following rotations again.
    etcd.start_all();
    etcd.wait_healthy();
    for node in [&a, &b] {
        let recovered = eventually(WAIT, || async {
            status_of(&readyz(node)).await == 200
                && metric(node, "workload_issuer_store_up").await == Some(1.0)
        })
        .await;
        assert!(
            recovered,
            "{} did not recover when etcd returned",
            node.base
        );
    }
    rotation_reaches(&cfg, [&a, &b]).await;
    assert!(terminate(a.process).success());
    assert!(terminate(b.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_copies_a_keys_dir_keeping_kids_and_states_twice_changes_nothing_and_back() {
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    // A keys dir made by a dir-backed server: a file cluster rotated once
    // (current, next, retired) and a cluster created at run time.
    let root = tempfile::tempdir().unwrap();
    let (from, to, on_etcd) = (
        root.path().join("from"),
        root.path().join("to"),
        root.path().join("etcd"),
    );
    for d in [&from, &to, &on_etcd] {
        std::fs::create_dir(d).unwrap();
    }
    let dir_cfg = config_file(&from, &tables());
    let server = start(&dir_cfg);
    let r = http()
        .post(format!("{}/admin/v1/clusters", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "ws-1", "algorithm": "RS256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    cli_ok(&[
        "keys",
        "rotate",
        "--force",
        "--cluster",
        "r",
        "--config",
        dir_cfg.to_str().unwrap(),
    ])
    .await;
    assert!(terminate(server.process).success());
    let in_dir = states(&listed(&dir_cfg).await);
    assert_eq!(in_dir["r"].len(), 3, "{in_dir:?}");
    assert!(in_dir.contains_key("ws-1"), "{in_dir:?}");

    let kek = kek(&on_etcd, "kek").await;
    let cfg = etcd_config(&on_etcd, &etcd, PREFIX, &kek, &tables());
    let cfg_arg = cfg.to_str().unwrap();
    let keys_dir = from.join("keys");
    let migrate_in = [
        "store",
        "migrate",
        "--config",
        cfg_arg,
        "--from-keys-dir",
        keys_dir.to_str().unwrap(),
    ];
    cli_ok(&migrate_in).await;
    assert_eq!(states(&listed(&cfg).await), in_dir);

    // Twice: the same values under the prefix.
    let stored = state(&etcd);
    cli_ok(&migrate_in).await;
    assert!(state(&etcd) == stored, "a second migrate changed etcd");
    no_private_key_in_etcd(&etcd, &in_dir["r"].keys().cloned().collect());

    // And back to a keys dir: the same manifests, kids and states.
    let back = to.join("keys");
    cli_ok(&[
        "store",
        "migrate",
        "--config",
        cfg_arg,
        "--to-keys-dir",
        back.to_str().unwrap(),
    ])
    .await;
    for (id, keys) in &in_dir {
        let manifest = |d: &Path| -> Value {
            serde_json::from_slice(&std::fs::read(d.join(id).join("manifest.json")).unwrap())
                .unwrap()
        };
        assert_eq!(manifest(&back), manifest(&keys_dir), "{id}");
        for kid in keys.keys() {
            assert!(
                back.join(id).join(format!("{kid}.pem")).is_file(),
                "{id}/{kid}"
            );
        }
    }
    let back_cfg = config_file(&to, &tables());
    assert_eq!(states(&listed(&back_cfg).await), in_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_to_start_on_a_wrong_kek_or_without_etcd_and_rewrap_keeps_every_kid() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (first, second, wrong) = (
        root.path().join("first"),
        root.path().join("second"),
        root.path().join("wrong"),
    );
    for d in [&first, &second, &wrong] {
        std::fs::create_dir(d).unwrap();
    }
    let old_kek = kek(&first, "kek").await;
    // new-kek never overwrites a KEK.
    let (code, _, err) = run_bin(&["store", "new-kek", old_kek.to_str().unwrap()]).await;
    let kept = std::fs::read(&old_kek).unwrap();
    assert_ne!(code, 0, "new-kek overwrote a KEK");
    assert!(err.contains(old_kek.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&old_kek).unwrap(), kept);

    let cfg = etcd_config(&first, &etcd, PREFIX, &old_kek, &tables());
    let a = start(&cfg);
    let served = kids(&a, "r").await;
    assert!(!served.is_empty());
    assert!(terminate(a.process).success());
    let stored = state(&etcd);

    // Another KEK: a clear refusal naming kek_file, and no new key.
    let other = wrong.join("kek");
    new_kek(&other);
    let wrong_cfg = etcd_config(&wrong, &etcd, PREFIX, &other, &tables());
    let (code, log) = serve_refused(&wrong_cfg);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(log.contains("kek_file"), "{log}");
    assert!(state(&etcd) == stored, "a wrong KEK changed etcd");

    // Rewrapped under a new KEK: the same kids, sealed under another KEK;
    // a replica starts with the new KEK and no longer with the old.
    let new_kek_file = kek(&second, "kek").await;
    cli_ok(&[
        "store",
        "rewrap",
        "--config",
        cfg.to_str().unwrap(),
        "--new-kek",
        new_kek_file.to_str().unwrap(),
    ])
    .await;
    let sealed_under = |all: &[(String, Vec<u8>)]| -> BTreeMap<String, Value> {
        all.iter()
            .filter(|(k, _)| k.contains("/kid/"))
            .map(|(k, v)| {
                let v: Value = serde_json::from_slice(v).unwrap();
                (k.clone(), v["kek"].clone())
            })
            .collect()
    };
    let (before, after) = (sealed_under(&stored), sealed_under(&state(&etcd)));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert!(
        before.iter().all(|(k, kek)| after[k] != *kek),
        "not every key was resealed: {before:?} -> {after:?}"
    );
    let new_cfg = etcd_config(&second, &etcd, PREFIX, &new_kek_file, &tables());
    let b = start(&new_cfg);
    assert_eq!(kids(&b, "r").await, served);
    verifies_on(&b, "r", &mint(&b, "r").await).await;
    assert!(terminate(b.process).success());
    let (code, log) = serve_refused(&cfg);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(log.contains("kek_file"), "{log}");

    // etcd down: a replica has no state to start from.
    etcd.stop_all();
    let (code, log) = serve_refused(&new_cfg);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(
        log.contains("unreachable") && log.contains(&etcd.endpoints()[0]),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_and_the_cli_reach_etcd_over_mutual_tls_and_as_an_etcd_user_and_say_why_they_cannot_without(
) {
    let Some(etcd) = EtcdCluster::start_tls() else {
        return;
    };
    let tls = etcd.tls().expect("a member serving https");
    let endpoint = etcd.endpoints()[0].clone();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let root = tempfile::tempdir().unwrap();
    let kek = kek(root.path(), "kek").await;
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    // A replica's config in its own dir: the one member, then `settings`.
    let config = |name: &str, settings: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        config_file(
            &dir,
            &format!(
                "{}\n[store]\nkind = \"etcd\"\nendpoints = [{endpoint:?}]\nprefix = {PREFIX:?}\n\
                 kek_file = {}\nlease_ttl = \"2s\"\n{settings}",
                tables(),
                quoted(&kek)
            ),
        )
    };
    let ca = format!("ca_file = {}\n", quoted(&tls.ca));
    let mtls = format!(
        "{ca}cert_file = {}\nkey_file = {}\n",
        quoted(&tls.cert),
        quoted(&tls.key)
    );

    // Mutual TLS: the replica starts and serves, and the CLI's rotation
    // reaches it through its watch (one replica here, checked twice).
    let with_cert = config("mtls", &mtls);
    let a = start(&with_cert);
    assert!(!kids(&a, "r").await.is_empty());
    rotation_reaches(&with_cert, [&a, &a]).await;
    assert!(terminate(a.process).success());

    // The CA alone: etcd refuses the handshake without a client
    // certificate, and the replica does not start.
    let (code, log) = serve_refused(&config("no-client-cert", &ca));
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(log.contains(&endpoint), "{log}");
    assert!(
        log.contains("set cert_file and key_file if etcd asks for client certificates"),
        "{log}"
    );
    assert!(!log.contains("Status {"), "a gRPC debug dump: {log}");

    // etcd's auth on: a user whose role may read and write the prefix.
    for args in [
        &["user", "add", "root:root-password"][..],
        &["role", "add", "issuer"],
        &[
            "role",
            "grant-permission",
            "--prefix=true",
            "issuer",
            "readwrite",
            PREFIX,
        ],
        &["user", "add", "issuer:issuer-password"],
        &["user", "grant-role", "issuer", "issuer"],
        &["auth", "enable"],
    ] {
        let (status, out, err) = etcd.etcdctl(args);
        assert!(
            status.success(),
            "etcdctl {args:?}: {out}{err}\n{}",
            etcd.logs()
        );
    }
    // The certificate names no user: without a user's token, no access.
    let (code, log) = serve_refused(&with_cert);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(log.contains("permission denied"), "{log}");
    let password = |name: &str, text: &str| {
        let path = root.path().join(name);
        std::fs::write(&path, text).unwrap();
        format!("username = \"issuer\"\npassword_file = {}\n", quoted(&path))
    };
    // The right password (the file's newline is not part of it): the token
    // goes with every call, the watch too, as the certificate's name is no
    // user.
    let as_user = config(
        "user",
        &format!("{mtls}{}", password("pw", "issuer-password\n")),
    );
    let b = start(&as_user);
    assert!(!kids(&b, "r").await.is_empty());
    rotation_reaches(&as_user, [&b, &b]).await;
    assert!(terminate(b.process).success());

    // A wrong one: a clear refusal.
    let wrong = config(
        "wrong",
        &format!("{mtls}{}", password("bad", "not-the-password\n")),
    );
    let (code, log) = serve_refused(&wrong);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(
        log.contains("authentication failed") && log.contains("password"),
        "{log}"
    );
}
