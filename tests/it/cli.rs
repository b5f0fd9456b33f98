//! The binary itself: check-config, and serve on its defaults with overrides.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use crate::harness::support::Spawned;
use crate::harness::support::{self, listening_addr, BIN};
use crate::harness::{check_config, signal};
use rustix::process::Signal;

#[test]
fn check_config_accepts_the_example() {
    let out = Command::new(BIN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check-config", "config/example.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("http://127.0.0.1:8080/c/demo (RS256 (RSA 2048))"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http://127.0.0.1:8080/c/edge (ES256 (P-256))"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:8080"
public_url = "https://oidc.example.com/"
keys_dir = "keys"
[[clusters]]
id = "a"
rsa_bits = 1024
[[clusters]]
id = "a"
"#,
    )
    .unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("public_url: \"https://oidc.example.com/\" must not end with '/'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("clusters[0].rsa_bits: 1024 is not allowed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("clusters[1].id: duplicate cluster id \"a\""),
        "{stderr}"
    );

    std::fs::write(&file, "listen = \"x\"\nbogus = 1\n").unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown field `bogus`"), "{stderr}");

    let (code, stderr) = check_config(Path::new("/nonexistent.toml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

/// Starts `serve` and returns the process, the address from its log and the
/// lines logged until it listened.
pub(crate) fn spawn_serve(args: &[&str], envs: &[(&str, &str)]) -> (Spawned, String, Vec<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let on_line = move |line: &str| lines.lock().unwrap().push(line.to_owned());
    match support::spawn_serve(args, envs, on_line) {
        Ok((process, addr)) => {
            let lines = log.lock().unwrap().clone();
            (process, addr, lines)
        }
        Err(e) => panic!("{e}"),
    }
}

/// Starts `serve` with its log piped back, line by line, and nothing waited for.
fn spawn_logging(
    args: &[&str],
) -> (
    Spawned,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (Spawned::new(child), lines)
}

/// Waits up to `limit` for the process to exit by itself.
pub(crate) fn wait_exit(mut spawned: Spawned, limit: Duration) -> std::process::ExitStatus {
    spawned.wait_exit(limit).expect("the process did not exit")
}

/// Sends SIGTERM and waits (up to 30 s) for the exit.
pub(crate) fn terminate(spawned: Spawned) -> std::process::ExitStatus {
    spawned
        .terminate(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn serve_on_the_embedded_default_creates_keys_and_prints_the_token_path() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (child, addr, lines) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    let token_path = keys.join("admin.token");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&token_path.display().to_string())),
        "the token path is printed: {lines:?}"
    );
    assert!(token_path.exists());
    assert!(keys.join("demo/manifest.json").exists());
    // The embedded default's issuer is on port 8080 whatever port we got.
    let body = http_get(&addr, "/c/demo/.well-known/openid-configuration");
    assert!(
        body.contains(r#""issuer":"http://127.0.0.1:8080/c/demo""#),
        "{body}"
    );
    assert!(terminate(child).success(), "SIGTERM exits 0");
}

/// The commit the binary was built from, as build.rs reads it; "unknown"
/// outside a git checkout.
fn built_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[test]
fn version_and_the_start_up_log_name_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let commit = built_commit();
    assert_eq!(
        stdout.trim(),
        format!(
            "workload-issuer {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (child, _, lines) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("version=") && l.contains(&commit)),
        "the start-up log names version and commit: {lines:?}"
    );
    assert!(terminate(child).success());
}

#[test]
fn flags_win_over_environment_variables_which_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (child, addr, _) = spawn_serve(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("WORKLOAD_ISSUER_LISTEN", "127.0.0.1:1"),
            ("WORKLOAD_ISSUER_PUBLIC_URL", "https://env.example.com"),
            ("WORKLOAD_ISSUER_KEYS_DIR", keys.to_str().unwrap()),
        ],
    );
    let body = http_get(&addr, "/c/edge/.well-known/openid-configuration");
    assert!(
        body.contains(r#""issuer":"https://env.example.com/c/edge""#),
        "{body}"
    );
    assert!(keys.join("edge/manifest.json").exists());
    assert!(terminate(child).success());
}

#[test]
fn a_broken_key_file_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (child, _, _) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    assert!(terminate(child).success());
    let pem = std::fs::read_dir(keys.join("demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    std::fs::write(
        &pem,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            keys.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&pem.display().to_string()), "{stderr}");
    assert!(stderr.contains("cluster \"demo\""), "{stderr}");
    // The broken file is left for the operator, not replaced.
    assert!(std::fs::read_to_string(&pem).unwrap().contains("AAAA"));
}

/// A minimal HTTP/1.1 request without a body, so this module needs no async
/// runtime: the whole answer, status line first.
fn http_request(addr: &str, method: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub(crate) fn http_get(addr: &str, path: &str) -> String {
    http_request(addr, "GET", path)
}

#[test]
fn a_closed_log_pipe_does_not_take_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (child, mut lines) = spawn_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--keys-dir",
        keys.to_str().unwrap(),
    ]);
    let addr = loop {
        let line = lines.next().expect("server log ended").unwrap();
        if let Some(addr) = listening_addr(&line) {
            break addr;
        }
    };
    drop(lines); // the log reader goes away
    for _ in 0..3 {
        // A refused TokenRequest is logged; the write fails; serving goes on.
        let r = http_request(
            &addr,
            "POST",
            "/c/demo/api/v1/namespaces/a/serviceaccounts/b/token",
        );
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    }
    let body = http_get(&addr, "/c/demo/openid/v1/jwks");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(terminate(child).success());
}

#[test]
fn a_sighup_while_the_server_starts_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = dir.path().join("many.toml");
    // Generating keys for a dozen RSA clusters keeps the start busy long
    // enough to signal it halfway, as `systemctl reload` during a start does.
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\nkeys_dir = {:?}\n",
        keys.display().to_string()
    );
    for i in 0..12 {
        text += &format!("[[clusters]]\nid = \"c{i}\"\nalgorithm = \"RS256\"\n");
    }
    std::fs::write(&config, text).unwrap();
    let (mut child, mut lines) = spawn_logging(&["--config", config.to_str().unwrap()]);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !keys.join("c0").exists() {
        let exited = child.try_wait();
        assert!(exited.is_none(), "the server exited: {exited:?}");
        assert!(Instant::now() < deadline, "the start wrote no keys");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(pid, Signal::HUP);
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the server died of the SIGHUP: {seen:?}");
        };
        if let Some(addr) = listening_addr(&line) {
            break addr;
        }
        seen.push(line);
    };
    assert!(
        keys.join("c11").read_dir().unwrap().next().is_some(),
        "every cluster got its keys"
    );
    let body = http_get(&addr, "/c/c11/openid/v1/jwks");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    std::thread::spawn(move || lines.for_each(drop)); // keep the log drained
    assert!(terminate(child).success());
}
