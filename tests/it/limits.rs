//! Limits that keep the server up: rate limits, slow clients, and a graceful
//! shutdown that lets requests in flight finish.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{
    assert_public_cap_reached, metrics, sample, token_path, token_sha256, write_config, Options,
    Server,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let hex = token_sha256("limited-token");
    let s = Server::start(Options {
        extra: format!(
            "[[api_clients]]\nname = \"limited\"\ntoken_sha256 = \"{hex}\"\n\
             clusters = [\"*\"]\nrate_limit = \"2/m\"\n"
        ),
        ..Options::new(dir.path())
    })
    .await;
    let c = s.client();
    let url = format!("{}{}", s.base, token_path("edge", "ns", "sa"));
    let mint = || async {
        c.post(&url)
            .bearer_auth("limited-token")
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    };
    for _ in 0..2 {
        assert_eq!(mint().await.status(), 201);
    }
    let r = mint().await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "TooManyRequests");
    assert_eq!(v["details"]["retryAfterSeconds"], retry);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("over its rate limit"),
        "{v}"
    );
    // Other clients are not limited by it.
    s.mint("edge", "ns", "sa", json!({})).await;
    let text = metrics(&c, &s.base).await;
    assert_eq!(
        sample(
            &text,
            r#"workload_issuer_tokens_minted_total{cluster="edge",outcome="rate_limited"}"#
        ),
        Some(1.0)
    );
    s.stop().await;
}

#[derive(Clone, Copy)]
enum Slow {
    /// Sends a request head one byte at a time and never finishes.
    Trickle,
    /// Connects and sends nothing.
    Idle,
    /// Sends part of the HTTP/2 preface, then nothing.
    PartialPreface,
}

fn slowloris(addr: String, kind: Slow) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            return;
        };
        match kind {
            Slow::Idle => {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                return;
            }
            Slow::PartialPreface => {
                // The start of the HTTP/2 preface, then nothing.
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n").await;
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                return;
            }
            Slow::Trickle => {}
        }
        let head = b"GET /c/demo/openid/v1/jwks HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let _ = stream.write_all(head).await;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"a").await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_holding_connections_cannot_starve_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
api_listener: true,
extra: "[limits]\nmax_connections = 16\nheader_read_timeout = \"1s\"\nrequest_timeout = \"1s\"\n".into(),
..Options::new(dir.path())
})
    .await;
    let public = s.base.trim_start_matches("http://").to_owned();
    let api = s
        .api_base
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    // Every connection slot of both listeners is taken by a slow client.
    let kinds = [Slow::Trickle, Slow::Idle, Slow::PartialPreface, Slow::Idle];
    let mut slow: Vec<_> = (0..16)
        .map(|i| slowloris(api.clone(), kinds[i % 4]))
        .collect();
    // The public listener's slots are all held by clients that send nothing
    // telling: only the head timeout frees them.
    slow.extend((0..16).map(|i| {
        let kind = if i % 2 == 0 {
            Slow::Idle
        } else {
            Slow::PartialPreface
        };
        slowloris(public.clone(), kind)
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = s.client();
    for _ in 0..5 {
        let r = c
            .get(format!(
                "{}/c/demo/.well-known/openid-configuration",
                s.base
            ))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("discovery starved by slow clients");
        assert_eq!(r.status(), 200);
    }
    assert_public_cap_reached(&c, s.api_base.as_deref().unwrap()).await;
    for t in slow {
        t.abort();
    }

    // A request whose body trickles in past request_timeout gets a 504.
    let mut stream = TcpStream::connect(&api).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n",
        token_path("demo", "ns", "sa"),
        s.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 2048];
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A write can fail once the server has answered and closed (a byte
        // that crossed the close resets the connection); the answer is
        // already here then, so read on regardless.
        let _ = stream.write_all(b" ").await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    if answer.is_empty() {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(answer.contains("limits.request_timeout"), "{answer}");

    // A request head over max_header_bytes gets a 431.
    let mut stream = TcpStream::connect(&public).await.unwrap();
    let big = "a".repeat(20 * 1024);
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    s.stop().await;
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "demo", "a", "shutdown-token");
    let (server, addr, _) = crate::cli::spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    // A mint whose body is half sent when the signal comes.
    let body = br#"{"spec":{"audiences":["a"]}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer shutdown-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token_path("demo", "ns", "sa"),
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // New connections are refused once the listener is closed.
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(&addr).is_err()
    });
    assert!(refused, "still accepting connections after SIGTERM");
    // The request in flight completes.
    stream.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = crate::cli::wait_exit(server, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}
