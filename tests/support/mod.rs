//! Test support shared by the integration tests (`tests/it`, through
//! `harness.rs`) and the soak run (`benches/soak.rs`): the server binary run
//! as a child process, the config files they give it, the token digests and
//! request paths they use.
//!
//! Included by path from both, so it holds only what both use (anything else
//! would be dead code in one of them), and depends on nothing but std, the
//! crate's own dependencies and rustix for signals. What only the in-process
//! tests need (the in-process server, TLS fixtures, `eventually`) stays in
//! `tests/it/harness.rs`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");

/// Two clusters like config/example.toml: `demo` (RS256, a 5 min JWKS
/// max-age) and `edge` (ES256, one allowed audience, 12 h at most).
pub const CLUSTERS: &str = r#"
[[clusters]]
id = "demo"
algorithm = "RS256"
jwks_max_age = "5m"

[[clusters]]
id = "edge"
algorithm = "ES256"
audiences = ["sts.amazonaws.com"]
max_token_lifetime = "12h"
"#;

/// Hex SHA-256 of a bearer token, as `token_sha256` takes it.
pub fn token_sha256(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// An API client holding `token`, allowed on every cluster.
pub fn api_client(name: &str, token: &str) -> String {
    format!(
        "\n[[api_clients]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\n",
        token_sha256(token)
    )
}

/// Writes `dir/config.toml`: listen on 127.0.0.1:0, keys in `dir/keys`,
/// then `tables` (clusters, clients, ...).
pub fn config_file(dir: &Path, tables: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\nkeys_dir = {:?}\n{tables}",
        dir.join("keys").display().to_string()
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The TokenRequest path of a cluster, below the server's base URL.
pub fn token_path(cluster: &str, ns: &str, sa: &str) -> String {
    format!("/c/{cluster}/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token")
}

/// A server process, killed if dropped while it runs, so a failed test or
/// an early return never leaves it behind.
pub struct Spawned(Option<Child>);

impl Spawned {
    pub fn new(child: Child) -> Spawned {
        Spawned(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// How the process ended, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.0.as_mut()?.try_wait().ok().flatten()?;
        self.0 = None;
        Some(status)
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then up to `limit` for the exit; SIGKILL after that, as an
    /// error. A process that had already exited is an error too.
    pub fn terminate(mut self, limit: Duration) -> Result<ExitStatus, String> {
        let pid = self.0.as_ref().map(Pid::from_child);
        if let Some(status) = self.try_wait() {
            return Err(format!("exited before SIGTERM ({status})"));
        }
        let pid = pid.ok_or("not running")?;
        kill_process(pid, Signal::TERM).map_err(|e| format!("SIGTERM: {e}"))?;
        self.wait_exit(limit)
            .ok_or_else(|| format!("still running {limit:?} after SIGTERM; killed"))
        // Dropping `self` kills a process that is still running.
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `workload-issuer serve` with `args` and `envs` (and no other
/// `WORKLOAD_ISSUER_*` variable of this process), hands every line it logs to
/// `on_line` until it exits, and waits up to 60 s for its "listening on
/// http://ADDR" line. Returns the process and ADDR, or what went wrong with
/// the lines logged until then.
pub fn spawn_serve(
    args: &[&str],
    envs: &[(&str, &str)],
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Result<(Spawned, String), String> {
    let mut command = Command::new(BIN);
    command.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WORKLOAD_ISSUER_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {BIN}: {e}"))?;
    let stderr = child.stderr.take();
    let mut process = Spawned::new(child);
    let stderr = stderr.ok_or("no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Drains until the process ends, so the server never blocks on (or
        // fails writing to) a full pipe once nobody waits for its lines.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            on_line(&line);
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(addr) = listening_addr(&line) {
                    return Ok((process, addr));
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The pipe closed: the process has ended, or is about to.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = process
                    .wait_exit(Duration::from_secs(5))
                    .map_or("no exit status yet".into(), |s| s.to_string());
                return Err(format!(
                    "the server exited ({status}) before listening:\n{}",
                    lines.join("\n")
                ));
            }
        }
    }
    Err(format!(
        "the server did not listen within 60 s:\n{}",
        lines.join("\n")
    ))
}

/// The address in the server's "listening on http://ADDR" log line.
pub fn listening_addr(line: &str) -> Option<String> {
    let (_, after) = line.split_once("listening on http://")?;
    after.split_whitespace().next().map(str::to_owned)
}
