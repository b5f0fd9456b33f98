//! What operators see: health, readiness, metrics and the audit log.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, metrics, sample, token_path, write_config, Options, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_describe_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        extra: "[rotation]\nreload_interval = \"1s\"\n".into(),
        ..Options::new(dir.path())
    })
    .await;
    let c = s.client();
    let r = c.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = c.get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");

    s.mint("demo", "ns", "sa", json!({})).await;
    s.mint("edge", "ns", "sa", json!({})).await;
    let r = c
        .post(format!("{}{}", s.base, token_path("demo", "ns", "sa")))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let jwks_url = format!("{}/c/demo/openid/v1/jwks", s.base);
    let r = c.get(&jwks_url).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    let r = c
        .get(&jwks_url)
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let text = metrics(&c, &s.base).await;
    for (series, value) in [
        (
            r#"workload_issuer_tokens_minted_total{cluster="demo",outcome="issued"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_tokens_minted_total{cluster="edge",outcome="issued"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_tokens_minted_total{cluster="demo",outcome="unauthorized"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="token",status="201"}"#,
            2.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="token",status="401"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="jwks",status="304"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="readyz",status="200"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_not_modified_total{document="jwks"}"#,
            1.0,
        ),
        ("workload_issuer_key_reload_failing_clusters", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let open = sample(
        &text,
        r#"workload_issuer_connections_open{listener="main"}"#,
    )
    .unwrap();
    assert!(open >= 1.0, "{open}");
    for cluster in ["demo", "edge"] {
        let age = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "workload_issuer_key_age_seconds{{cluster=\"{cluster}\",kid="
                )) && l.contains("state=\"current\"")
            })
            .unwrap_or_else(|| panic!("no current key age for {cluster}:\n{text}"));
        let age: f64 = age.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.0..60.0).contains(&age), "{age}");
        // Default policy: rotate every 30 days; the standby, published
        // from the first start, is what takes over then.
        let next = sample(
            &text,
            &format!("workload_issuer_next_rotation_seconds{{cluster=\"{cluster}\"}}"),
        )
        .unwrap();
        assert!(
            (29.0 * 86400.0..=30.0 * 86400.0).contains(&next),
            "{cluster}: {next}"
        );
    }
    let reloaded = sample(
        &text,
        "workload_issuer_key_reload_last_success_timestamp_seconds",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - reloaded).abs() < 60.0, "{reloaded} vs {now}");

    // A manifest that can no longer be read makes the server not ready (the
    // last good keys keep serving), and ready again once it is repaired.
    let manifest = dir.path().join("demo").join("manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not json").unwrap();
    let readyz = format!("{}/readyz", s.base);
    let not_ready = eventually(Duration::from_secs(10), || async {
        c.get(&readyz).send().await.unwrap().status() == 503
    })
    .await;
    assert!(not_ready, "readyz stayed 200 with a broken manifest");
    let v: serde_json::Value = c.get(&readyz).send().await.unwrap().json().await.unwrap();
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("cluster \"demo\": its keys on disk no longer load"),
        "{v}"
    );
    let text = metrics(&c, &s.base).await;
    assert_eq!(
        sample(&text, "workload_issuer_key_reload_failing_clusters"),
        Some(1.0)
    );
    s.mint("demo", "ns", "sa", json!({})).await;
    std::fs::write(&manifest, good).unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        c.get(&readyz).send().await.unwrap().status() == 200
    })
    .await;
    assert!(ready, "readyz did not recover");
    s.stop().await;
}

#[test]
fn json_logs_audit_every_mint_without_tokens_or_secrets() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let secret = "audit-bearer-secret";
    let config = write_config(dir.path(), "audited", "backend", secret);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_workload-issuer"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = crate::cli::Spawned::new(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut addr = None;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
        if let Some(m) = v["fields"]["message"].as_str() {
            addr = m.strip_prefix("listening on http://").map(str::to_owned);
        }
        lines.push(v);
    }
    let addr = addr.unwrap();
    let body = br#"{"spec":{"audiences":["sts.amazonaws.com","vault"]}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token_path("audited", "payments", "api"),
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let v: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let token = v["status"]["token"].as_str().unwrap().to_owned();
    let claims = crate::harness::decode_part(&token, 1);
    let kid = crate::harness::decode_part(&token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = crate::cli::terminate(server);
    assert!(status.success());
    let mut raw: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        raw.push(line.clone());
        lines.push(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")));
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {raw:#?}"))
    };
    let started = find("workload-issuer started");
    assert_eq!(started["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(find("serving issuer")["fields"]["cluster"], "audited");
    let mint = &find("token minted")["fields"];
    assert_eq!(mint["cluster"], "audited");
    assert_eq!(mint["namespace"], "payments");
    assert_eq!(mint["service_account"], "api");
    assert_eq!(mint["client"], "backend");
    assert_eq!(mint["kid"], kid.as_str());
    assert_eq!(mint["jti"], claims["jti"]);
    assert!(
        mint["audiences"].as_str().unwrap().contains("vault"),
        "{mint}"
    );
    // Neither the token, nor its signature, nor the bearer secret is logged.
    let signature = token.rsplit('.').next().unwrap();
    for line in &raw {
        assert!(!line.contains(signature), "a token in the logs: {line}");
        assert!(
            !line.contains(secret),
            "the bearer token in the logs: {line}"
        );
    }
}
