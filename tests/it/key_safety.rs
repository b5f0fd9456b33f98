//! Keys that must never be lost or planted: a manifest gone from beside its
//! key files, a change made while a replica starts, a keys dir others can
//! write, key files opened up or rotation failing under a running server.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use workload_issuer::config::{Config, Overrides};

use workload_issuer::clock::{Clock as _, ManualClock};

use crate::cli::{spawn_serve, terminate};
use crate::harness::{eventually, serve_in_background, verify_with_jwks, Options, Server, BIN};
use crate::rotation::{fast_clusters, fast_config};

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

fn pem_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pem"))
        .collect();
    names.sort();
    names
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// The readiness problems a server lists, as one string.
async fn problems(client: &reqwest::Client, base: &str) -> Option<String> {
    let (status, v) = get_json(client, &format!("{base}/readyz")).await;
    (status == 503).then(|| v["problems"].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_manifest_loses_no_key_says_so_and_keys_recover_brings_the_cluster_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = dir.path().join("fast.toml");
    std::fs::write(&config, fast_config(&keys, "1s")).unwrap();
    let cfg = config.to_str().unwrap();
    // In this process, on a manual clock: the rotation steps that fall due
    // take no real time.
    let clock = ManualClock::new(std::time::SystemTime::now());
    let server = Server::start_with_clock(
        Options {
            clusters: fast_clusters(),
            ..Options::new(&keys)
        },
        clock.clone(),
    )
    .await;
    let base = server.base.clone();
    let client = server.client();
    let tick = || async {
        clock.advance(Duration::from_secs(1));
        server.passed(clock.elapsed()).await;
    };
    // The cluster has its signing key and its standby from the start; let
    // one rotation happen, so that a retired key is there too.
    let cluster_dir = keys.join("r");
    assert_eq!(pem_files(&cluster_dir).len(), 2);
    while pem_files(&cluster_dir).len() < 3 {
        tick().await;
    }
    let token = server
        .mint(
            "r",
            "ns",
            "sa",
            json!({"spec":{"audiences":["a"],"expirationSeconds":8}}),
        )
        .await;
    let manifest = cluster_dir.join("manifest.json");
    let saved = std::fs::read(&manifest).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    let files = pem_files(&cluster_dir);
    let served = kids(&server.jwks("r").await);

    // Several rotation steps fall due (a key every 5 s): the running server
    // keeps its last good keys and says which cluster is wrong.
    for _ in 0..8 {
        tick().await;
    }
    let problem = problems(&client, &base).await;
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.contains("cluster \\\"r\\\"")),
        "readyz with a lost manifest: {problem:?}"
    );
    assert_eq!(
        pem_files(&cluster_dir),
        files,
        "a key file was deleted or added"
    );
    assert!(!manifest.exists(), "a manifest was made up");
    let jwks = server.jwks("r").await;
    assert_eq!(kids(&jwks), served);
    let issuer = server.issuer("r");
    verify_with_jwks(&token, &jwks, &issuer, "a").unwrap();
    server.stop().await;

    // A restart refuses, naming the directory and what to do.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", cfg])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&cluster_dir.display().to_string())
            && err.contains("keys recover --cluster r")
            && err.contains("Restore manifest.json"),
        "{err}"
    );
    assert_eq!(pem_files(&cluster_dir), files);

    // `keys recover` lists every key file again, kids unchanged.
    let recovered: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    let signing = recovered["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "current")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new(BIN)
        .args(["keys", "recover", "--cluster", "r", "--config", cfg])
        .args(["--current", &signing])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (server, addr, _) = spawn_serve(&["--config", cfg], &[]);
    let jwks = get_json(&client, &format!("http://{addr}/c/r/openid/v1/jwks"))
        .await
        .1;
    // Every kid is back (the former standby as retired), and the server's
    // first step published a new standby beside them.
    let expected: Vec<String> = files
        .iter()
        .map(|f| f.trim_end_matches(".pem").to_owned())
        .collect();
    let served = kids(&jwks);
    assert!(
        expected.iter().all(|k| served.contains(k)) && served.len() == expected.len() + 1,
        "{served:?} vs {expected:?}"
    );
    verify_with_jwks(&token, &jwks, &issuer, "a").unwrap();
    terminate(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_server_starts_leaves_the_jwks_within_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = format!(
        "listen = \"{addr}\"\npublic_url = \"http://{addr}\"\nkeys_dir = {:?}\n\
         [rotation]\nreload_interval = \"1s\"\n\
         [[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n",
        keys.display().to_string()
    );
    let config = Config::parse("test", &text, &Overrides::default()).unwrap();
    let state =
        workload_issuer::serve::prepare(&config, workload_issuer::clock::SystemClock::shared())
            .await
            .unwrap();
    // The server has loaded its keys but is not serving yet: the key is
    // revoked now (by the CLI, or another replica).
    let store = workload_issuer::serve::key_store(&config);
    let manifest = store.read_manifest("demo").unwrap().unwrap();
    let revoked = manifest.keys[0].kid.clone();
    let c = &config.clusters[0];
    workload_issuer::keys::steps::revoke(
        &store,
        "demo",
        &revoked,
        c.key_spec,
        &c.rotation,
        std::time::SystemTime::now(),
    )
    .unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sockets = workload_issuer::serve::Sockets {
        main: listener,
        api: None,
    };
    let task = serve_in_background(config, state, sockets, rx);
    let client = workload_issuer::client::http_client(None).unwrap();
    let url = format!("http://{addr}/c/demo/openid/v1/jwks");
    let followed = eventually(Duration::from_secs(5), || async {
        let jwks = get_json(&client, &url).await.1;
        jwks["keys"].is_array() && !kids(&jwks).contains(&revoked)
    })
    .await;
    let _ = tx.send(());
    task.await.unwrap();
    assert!(
        followed,
        "the revoked key {revoked} was still published 5 s after a 1 s reload interval"
    );
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_dir_others_can_write_stops_the_start_and_opened_up_keys_make_a_server_unready() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let text = |allow: bool| {
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\nkeys_dir = {:?}\n\
             allow_insecure_key_permissions = {allow}\n\
             [[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n",
            keys.display().to_string()
        )
    };
    let strict = Config::parse("test", &text(false), &Overrides::default()).unwrap();
    drop(
        workload_issuer::serve::prepare(&strict, workload_issuer::clock::SystemClock::shared())
            .await
            .unwrap(),
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(&keys.join("demo")), 0o700);

    // Anyone could plant a key and a manifest naming it current.
    for (path, bad) in [(keys.clone(), 0o777), (keys.join("demo"), 0o775)] {
        set_mode(&path, bad);
        let err = match workload_issuer::serve::prepare(
            &strict,
            workload_issuer::clock::SystemClock::shared(),
        )
        .await
        {
            Ok(_) => panic!("started with {} at mode {bad:o}", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!(
                "{} is writable by group or others (mode {bad:o})",
                path.display()
            )) && err.contains("allow_insecure_key_permissions"),
            "{err}"
        );
        let lenient = Config::parse("test", &text(true), &Overrides::default()).unwrap();
        assert!(workload_issuer::serve::prepare(
            &lenient,
            workload_issuer::clock::SystemClock::shared()
        )
        .await
        .is_ok());
        set_mode(&path, 0o700);
    }

    // Under a running server, a key file opened up is noticed on the next
    // reload: the server keeps serving but is not ready, since a restart
    // would refuse it.
    let s = Server::start(Options {
        clusters: "[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n".into(),
        extra: "[rotation]\nreload_interval = \"1s\"\n".into(),
        ..Options::new(&keys)
    })
    .await;
    let client = s.client();
    let served = kids(&s.jwks("demo").await);
    let kid = served[0].clone();
    let pem = keys.join("demo").join(format!("{kid}.pem"));
    set_mode(&pem, 0o644);
    let unready = eventually(Duration::from_secs(10), || async {
        problems(&client, &s.base)
            .await
            .is_some_and(|p| p.contains("its keys on disk no longer load"))
    })
    .await;
    assert!(
        unready,
        "readyz stayed ready with a world-readable key file"
    );
    assert_eq!(kids(&s.jwks("demo").await), served);
    set_mode(&pem, 0o600);
    let ready = eventually(Duration::from_secs(10), || async {
        problems(&client, &s.base).await.is_none()
    })
    .await;
    assert!(ready, "readyz did not recover once the mode was fixed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rotation_step_makes_the_server_unready_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = Server::start(Options {
        clusters: "[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n".into(),
        extra: "[rotation]\ninterval = \"1s\"\nreload_interval = \"1s\"\n".into(),
        ..Options::new(&keys)
    })
    .await;
    let client = s.client();
    // A manifest whose times no rotation step can read: every step fails,
    // while the keys themselves still load and serve.
    let served = kids(&s.jwks("demo").await);
    assert_eq!(served.len(), 2, "the signing key and the standby");
    let manifest = keys.join("demo").join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let mut broken: serde_json::Value = serde_json::from_str(&good).unwrap();
    broken["keys"][0]["activated"] = json!("last tuesday");
    broken["keys"][0]["published"] = json!("last tuesday");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let unready = eventually(Duration::from_secs(10), || async {
        problems(&client, &s.base)
            .await
            .is_some_and(|p| p.contains("the last key rotation step failed"))
    })
    .await;
    assert!(unready, "readyz stayed ready while rotation failed");
    let metrics = client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("workload_issuer_key_rotation_failing_clusters 1"),
        "{metrics}"
    );
    assert_eq!(kids(&s.jwks("demo").await), served, "still serving");
    std::fs::write(&manifest, good).unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        problems(&client, &s.base).await.is_none()
    })
    .await;
    assert!(ready, "readyz did not recover once rotation succeeded");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_others_can_read_stop_the_start_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    use workload_issuer::config::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let text = |allow: bool| {
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\nkeys_dir = {:?}\nallow_insecure_key_permissions = {allow}\n[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n",
            dir.path().display().to_string()
        )
    };
    let config = Config::parse("test", &text(false), &Overrides::default()).unwrap();
    drop(
        workload_issuer::serve::prepare(&config, workload_issuer::clock::SystemClock::shared())
            .await
            .unwrap(),
    );
    let pem = std::fs::read_dir(dir.path().join("demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = match workload_issuer::serve::prepare(
        &config,
        workload_issuer::clock::SystemClock::shared(),
    )
    .await
    {
        Ok(_) => panic!("started with a world-readable key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&pem.display().to_string()), "{err}");
    assert!(err.contains("mode 644"), "{err}");
    assert!(err.contains("allow_insecure_key_permissions"), "{err}");
    let allowed = Config::parse("test", &text(true), &Overrides::default()).unwrap();
    assert!(workload_issuer::serve::prepare(
        &allowed,
        workload_issuer::clock::SystemClock::shared()
    )
    .await
    .is_ok());
    // Nothing was changed on disk by the refusal.
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o644
    );
}
