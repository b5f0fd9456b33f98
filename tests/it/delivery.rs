//! Delivering tokens to workloads (`token`, `token --refresh`, `agent`),
//! verifying them as a relying party (`verify`), the static bundle (`export`)
//! and TokenReview.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

pub(crate) use crate::harness::BIN;
use crate::harness::{
    default_clusters, file_mode, run_bin as run, sigterm_and_wait, token_args, verify_with_jwks,
    Options, Server, ADMIN_CLIENT,
};

/// A cluster whose tokens live seconds, so refresh can be watched.
pub(crate) fn short_lived() -> String {
    r#"
[[clusters]]
id = "s"
algorithm = "ES256"
min_token_lifetime = "2s"
max_token_lifetime = "1h"
jwks_max_age = "2s"
publish_ahead = "2s"
clock_skew = "1s"
"#
    .to_owned()
        + ADMIN_CLIENT
}

/// A server with the [`short_lived`] cluster, keys in `keys`, on `listen`
/// (127.0.0.1:0 when `None`).
pub(crate) async fn short_lived_server(
    keys: &Path,
    listen: Option<std::net::SocketAddr>,
) -> Server {
    Server::start(Options {
        listen,
        clusters: short_lived(),
        ..Options::new(keys)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_writes_raw_json_kubeconfig_and_env_outputs() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let (s, tls) = Server::tls_in(work.path()).await;
    let server = s.issuer("demo");
    let token_file = keys.join("admin.token");
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let (tf, ca) = (token_file.to_str().unwrap(), ca_file.to_str().unwrap());
    let jwks = s.jwks("demo").await;

    // raw, to a 0600 file, bound to a pod
    let out = work.path().join("raw");
    let mut args = token_args(&server, tf);
    args.extend([
        "--ca-file",
        ca,
        "--audience",
        "aud-1",
        "--audience",
        "aud-2",
        "--duration",
        "20m",
        "--bound-pod",
        "web-0:pod-uid",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(file_mode(&out), 0o600);
    let token = std::fs::read_to_string(&out).unwrap();
    // Exactly the token, as kubelet writes it: SDKs read such files verbatim.
    assert!(!token.ends_with('\n'), "{token:?}");
    let claims = verify_with_jwks(&token, &jwks, &server, "aud-2").unwrap();
    assert_eq!(claims["aud"], json!(["aud-1", "aud-2"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1200
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        json!({"name": "web-0", "uid": "pod-uid"})
    );

    // json, to stdout
    let mut args = token_args(&server, tf);
    args.extend(["--ca-file", ca, "--format", "json"]);
    let (code, stdout, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    verify_with_jwks(
        v["token"].as_str().unwrap(),
        &jwks,
        &server,
        "https://kubernetes.default.svc",
    )
    .unwrap();
    assert!(humantime::parse_rfc3339(v["expirationTimestamp"].as_str().unwrap()).is_ok());

    // kubeconfig, with --mode, read back by kubectl itself
    let kubeconfig = work.path().join("kubeconfig");
    let mut args = token_args(&server, tf);
    args.extend([
        "--ca-file",
        ca,
        "--format",
        "kubeconfig",
        "--mode",
        "640",
        "--out",
        kubeconfig.to_str().unwrap(),
    ]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(file_mode(&kubeconfig), 0o640);
    let view = tokio::process::Command::new("kubectl")
        .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .expect("kubectl on PATH");
    assert!(
        view.status.success(),
        "{}",
        String::from_utf8_lossy(&view.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(v["clusters"][0]["cluster"]["server"], server);
    let ca_data = v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca_data).unwrap(),
        tls.ca_pem.as_bytes()
    );
    verify_with_jwks(
        v["users"][0]["user"]["token"].as_str().unwrap(),
        &jwks,
        &server,
        "https://kubernetes.default.svc",
    )
    .unwrap();

    // env, the DOCA tokenFile keys, for an API server at the host's root
    let mut args = token_args(&server, tf);
    let target = &s.base;
    args.extend(["--ca-file", ca, "--format", "env"]);
    args.extend(["--target-server", target, "--target-ca", ca]);
    let (code, stdout, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    let env: std::collections::HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('\'')))
        .collect();
    let port = s.base.rsplit(':').next().unwrap();
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], "https://127.0.0.1");
    assert_eq!(env["KUBERNETES_SERVICE_PORT"], port);
    verify_with_jwks(
        env["TOKEN_FILE"],
        &jwks,
        &server,
        "https://kubernetes.default.svc",
    )
    .unwrap();
    assert!(env.contains_key("KUBERNETES_CA_DATA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reports_refusals_and_bad_flags_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let server = s.issuer("demo");
    let tf = dir.path().join("admin.token");
    let tf = tf.to_str().unwrap();
    let mut args = token_args(&server, tf);
    args[6] = "Bad_NS";
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("metadata.namespace: Invalid value: \"Bad_NS\""),
        "{err}"
    );

    let (code, _, err) = run(&token_args(&server, "/nonexistent/token")).await;
    assert_eq!(code, 2);
    assert!(err.contains("--token-file /nonexistent/token"), "{err}");

    let mut args = token_args(&server, tf);
    args.extend(["--duration", "soon"]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 2);
    assert!(err.contains("--duration"), "{err}");

    let mut args = token_args("http://127.0.0.1:9/c/demo", tf);
    args.extend(["--format", "raw"]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach http://127.0.0.1:9/c/demo/api/v1/")
            && err.contains("onnection refused"),
        "{err}"
    );
}

/// Reads `path` until `until`, checking every read is a whole token that
/// verifies, and that it is unexpired whenever `must_be_fresh` says so.
fn check_reads(
    path: &Path,
    jwks: &serde_json::Value,
    issuer: &str,
    until: Instant,
    fresh: bool,
) -> usize {
    let mut reads = 0;
    while Instant::now() < until {
        let text = std::fs::read_to_string(path).unwrap();
        let token = text.as_str();
        assert_eq!(
            token.split('.').count(),
            3,
            "a whole token, nothing else: {text:?}"
        );
        assert!(!token.ends_with('\n'), "{text:?}");
        let claims = crate::harness::decode_part(token, 1);
        // Signature and claims, ignoring expiry here...
        let header = jsonwebtoken::decode_header(token).unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let key =
            jsonwebtoken::DecodingKey::from_jwk(set.find(header.kid.as_deref().unwrap()).unwrap())
                .unwrap();
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.validate_exp = false;
        v.set_audience(&["refresh"]);
        v.set_issuer(&[issuer]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .unwrap_or_else(|e| panic!("read {reads}: {e}"));
        // ...which must not be past while the server is reachable.
        if fresh {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(
                claims["exp"].as_i64().unwrap() > now,
                "read {reads}: the file holds an expired token while the server is up"
            );
        }
        reads += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_a_whole_valid_token_in_the_file_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let issuer = s.issuer("s");
    let jwks = s.jwks("s").await;
    let out = dir.path().join("token");
    let mut child = tokio::process::Command::new(BIN)
        .args(["token", "--server", &issuer, "--token-file"])
        .arg(keys.join("admin.token"))
        .args([
            "-n",
            "ns",
            "--service-account",
            "sa",
            "--audience",
            "refresh",
            "--duration",
            "5s",
            "--refresh",
            "--out",
        ])
        .arg(&out)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = std::fs::read_to_string(&out).unwrap();

    // Up: 5s tokens renewed every ~4s; every read is whole and unexpired.
    // (exp is whole seconds, so a 5s token lives 4-5s: renewing at 80 %
    // leaves at least 0.8s for the mint and the write, even on a busy machine.)
    let (o, j, i) = (out.clone(), jwks.clone(), issuer.clone());
    let reads = tokio::task::spawn_blocking(move || {
        check_reads(&o, &j, &i, Instant::now() + Duration::from_secs(6), true)
    })
    .await
    .unwrap();
    assert!(reads > 100);
    assert_ne!(
        std::fs::read_to_string(&out).unwrap(),
        first,
        "the token was renewed"
    );

    // Down for 4s: the file stays whole (its token expires meanwhile).
    s.stop().await;
    let (o, j, i) = (out.clone(), jwks.clone(), issuer.clone());
    tokio::task::spawn_blocking(move || {
        check_reads(&o, &j, &i, Instant::now() + Duration::from_secs(4), false)
    })
    .await
    .unwrap();

    // Back on the same address with the same keys: a fresh token appears
    // within the retry backoff, and stays fresh.
    let s = short_lived_server(&keys, Some(addr)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let claims = crate::harness::decode_part(std::fs::read_to_string(&out).unwrap().trim(), 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if claims["exp"].as_i64().unwrap() > now + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh token after the server came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (o, j, i) = (out.clone(), jwks.clone(), issuer.clone());
    tokio::task::spawn_blocking(move || {
        check_reads(&o, &j, &i, Instant::now() + Duration::from_secs(5), true)
    })
    .await
    .unwrap();

    // SIGTERM ends it cleanly and leaves the file.
    let status = sigterm_and_wait(&mut child, Duration::from_secs(5)).await;
    assert!(status.success());
    assert!(out.exists());
    s.stop().await;
}

async fn unix_get(socket: &Path, path: &str) -> (u16, String) {
    let (status, _, body) = unix_get_with_headers(socket, path).await;
    (status, body)
}

/// GETs `path` from the agent on `socket`: the status, the headers (names
/// lowercased) and the body.
pub(crate) async fn unix_get_with_headers(
    socket: &Path,
    path: &str,
) -> (u16, std::collections::HashMap<String, String>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_cached_tokens_per_audience_on_a_private_socket() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
    let issuer = s.issuer("s");
    let socket = dir.path().join("agent.sock");
    let mut child = tokio::process::Command::new(BIN)
        .args(["agent", "--server", &issuer, "--token-file"])
        .arg(keys.join("admin.token"))
        .args([
            "-n",
            "ns",
            "--service-account",
            "sa",
            "--duration",
            "3s",
            "--socket",
        ])
        .arg(&socket)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(file_mode(&socket), 0o600);
    let jwks = s.jwks("s").await;

    let (status, a1) = unix_get(
        &socket,
        "/v1/token?audience=https%3A%2F%2Fvault.example.com",
    )
    .await;
    assert_eq!(status, 200, "{a1}");
    verify_with_jwks(&a1, &jwks, &issuer, "https://vault.example.com").unwrap();
    let (_, a2) = unix_get(
        &socket,
        "/v1/token?audience=https%3A%2F%2Fvault.example.com",
    )
    .await;
    assert_eq!(a1, a2, "cached");
    let (_, b) = unix_get(&socket, "/v1/token?audience=sts.amazonaws.com").await;
    assert_ne!(a1, b);
    verify_with_jwks(&b, &jwks, &issuer, "sts.amazonaws.com").unwrap();
    // Past 80 % of its 3s life, the token is renewed.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (_, a3) = unix_get(
        &socket,
        "/v1/token?audience=https%3A%2F%2Fvault.example.com",
    )
    .await;
    assert_ne!(a1, a3, "renewed at 80 % of its life");

    for (path, needle) in [
        ("/v1/token", "the audience query parameter is required"),
        ("/v1/token?audience=", "audience must not be empty"),
        ("/v1/token?audience=a&audience=b", "exactly one audience"),
    ] {
        let (status, body) = unix_get(&socket, path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    let status = sigterm_and_wait(&mut child, Duration::from_secs(30)).await;
    assert!(status.success());
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_a_good_token_and_diagnoses_the_common_failures() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let (demo, edge) = (s.issuer("demo"), s.issuer("edge"));
    let good = s
        .mint("demo", "ns", "sa", json!({"spec":{"audiences":["aud"]}}))
        .await;
    let other = s
        .mint("edge", "ns", "sa", json!({"spec":{"audiences":["aud"]}}))
        .await;

    let (code, stdout, err) = run(&["verify", "--issuer", &demo, "--audience", "aud", &good]).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.starts_with("valid token"), "{stdout}");
    // From a file and from stdin too.
    let file = dir.path().join("t");
    std::fs::write(&file, format!("{good}\n")).unwrap();
    let (code, _, _) = run(&[
        "verify",
        "--issuer",
        &demo,
        "--audience",
        "aud",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0);

    let edge_kid = crate::harness::decode_part(&other, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let demo_kid = crate::harness::decode_part(&good, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let hs256 = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2ln",
        good.split('.').nth(1).unwrap()
    );
    for (issuer, audience, token, needle) in [
        (
            edge.clone(),
            "aud",
            good.clone(),
            format!("kid {demo_kid} is not published"),
        ),
        (
            format!("{demo}/"),
            "aud",
            good.clone(),
            "differ only in a trailing '/'".to_owned(),
        ),
        (
            demo.clone(),
            "other",
            good.clone(),
            "audience mismatch: the token is for [\"aud\"], you expect \"other\"".to_owned(),
        ),
        (
            demo.clone(),
            "aud",
            hs256,
            "algorithm HS256 is not allowed".to_owned(),
        ),
        (
            demo.clone(),
            "aud",
            other.clone(),
            format!("kid {edge_kid} is not published"),
        ),
        (
            demo.clone(),
            "aud",
            "abc.def.ghi".to_owned(),
            "not a JWT".to_owned(),
        ),
    ] {
        let (code, stdout, err) = run(&[
            "verify",
            "--issuer",
            &issuer,
            "--audience",
            audience,
            &token,
        ])
        .await;
        assert_eq!(code, 1, "{needle}: {stdout}{err}");
        assert!(stdout.contains(&needle), "{needle}: {stdout}");
    }
    // A token whose claims were changed fails on its signature.
    let another = s
        .mint("demo", "ns", "other", json!({"spec":{"audiences":["aud"]}}))
        .await;
    let swapped = {
        let (p, q): (Vec<&str>, Vec<&str>) =
            (good.split('.').collect(), another.split('.').collect());
        format!("{}.{}.{}", p[0], q[1], p[2])
    };
    let (code, stdout, _) = run(&[
        "verify",
        "--issuer",
        &demo,
        "--audience",
        "aud",
        "--json",
        &swapped,
    ])
    .await;
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("signature does not verify"),
        "{v}"
    );

    // Expiry and clocks, at a chosen time.
    let http = workload_issuer::client::http_client(None).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(7200);
    let r = workload_issuer::client::verify::verify(&http, &demo, "aud", &good, later).await;
    assert!(!r.valid);
    assert!(
        r.problems[0].starts_with("expired at ") && r.problems[0].contains("ago"),
        "{:?}",
        r.problems
    );
    let earlier = std::time::SystemTime::now() - Duration::from_secs(3600);
    let r = workload_issuer::client::verify::verify(&http, &demo, "aud", &good, earlier).await;
    assert!(
        r.problems.iter().any(|p| p.starts_with("not valid before")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with("issued in the future")),
        "{:?}",
        r.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_exactly_what_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = Server::start(Options {
clusters: default_clusters() + "[[clusters]]\nid = \"root\"\nalgorithm = \"ES256\"\nissuer = \"https://root.example.com\"\n",
..Options::new(&keys)
})
    .await;
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\npublic_url = \"{}\"\nkeys_dir = {:?}\n{}", s.base, keys.display().to_string(),
            default_clusters() + "[[clusters]]\nid = \"root\"\nalgorithm = \"ES256\"\nissuer = \"https://root.example.com\"\n"),
    )
    .unwrap();
    let out = dir.path().join("bundle");
    for (cluster, path) in [("demo", "/c/demo"), ("edge", "/c/edge"), ("root", "")] {
        let (code, stdout, err) = run(&[
            "export",
            "--config",
            config.to_str().unwrap(),
            "--cluster",
            cluster,
            "--out",
            out.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(stdout.contains("application/jwk-set+json"), "{stdout}");
        for doc in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
            let served = s
                .client()
                .get(format!("{}{path}{doc}", s.base))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let file = std::fs::read(
                out.join(format!("{}{doc}", path.trim_start_matches('/')).trim_start_matches('/')),
            )
            .unwrap();
            assert_eq!(file, served.to_vec(), "{cluster}{doc}");
        }
    }
    let (code, _, err) = run(&[
        "export",
        "--config",
        config.to_str().unwrap(),
        "--cluster",
        "nope",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("no cluster has id \"nope\""), "{err}");
}
