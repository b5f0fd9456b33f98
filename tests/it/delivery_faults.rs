//! The client side when something around it goes wrong: the client's clock
//! is skewed (the binary under libfaketime), the issuer is down, or a local
//! user watches the directory the agent's socket goes into (the binary under
//! strace, umask 000). Red-team review, issue #11: findings 6 and 7 and the
//! agent's stale token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::delivery::{short_lived_server, unix_get_with_headers, BIN};
use crate::harness::{decode_part, signal, sigterm_and_wait, Server};

/// libfaketime's multi-threaded build (Debian package `faketime`), preloaded
/// into the binary to skew its wall clock.
fn libfaketime() -> PathBuf {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|d| d.join("libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is not installed: apt-get install faketime (.ci/run does)")
}

/// The binary with its wall clock moved by `offset` (libfaketime's syntax:
/// "+2h", "-50m"). The monotonic clock stays real, as on a host whose NTP
/// is off.
fn skewed(offset: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("NO_COLOR", "1");
    cmd
}

/// Seconds since the epoch, on the clock the in-process server also reads.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no {what} at {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child started with its standard error read as it comes, so a chatty
/// child (the old tight loop logged thousands of lines) never blocks on a
/// full pipe.
struct Logged {
    child: tokio::process::Child,
    log: tokio::task::JoinHandle<String>,
}

fn start_logged(cmd: &mut tokio::process::Command) -> Logged {
    use tokio::io::AsyncReadExt as _;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    Logged { child, log }
}

/// Sends SIGTERM, checks the child ends with 0, and returns its log.
async fn terminate(mut logged: Logged) -> String {
    let out = sigterm_and_wait(&mut logged.child, Duration::from_secs(10)).await;
    let log = logged.log.await.unwrap();
    assert!(out.success(), "{out}: {log}");
    log
}

fn refresh_args<'a>(issuer: &'a str, keys: &'a Path, duration: &'a str) -> Vec<String> {
    [
        "token",
        "--server",
        issuer,
        "--token-file",
        keys.join("admin.token").to_str().unwrap(),
        "-n",
        "ns",
        "--service-account",
        "sa",
        "--audience",
        "skew",
        "--duration",
        duration,
        "--refresh",
        "--out",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A short-lived server (keys in `dir/keys`), and `token --refresh` of a
/// `duration` token from it under a clock moved by `offset`, writing
/// `dir/token`. Returns both, the file and the first token, once written.
async fn skewed_refresh(
    dir: &Path,
    offset: &str,
    duration: &str,
) -> (Server, Logged, PathBuf, String) {
    let out = dir.join("token");
    let keys = dir.join("keys");
    let s = short_lived_server(&keys, None).await;
    let child = start_logged(
        skewed(offset)
            .args(refresh_args(&s.issuer("s"), &keys, duration))
            .arg(&out),
    );
    wait_for(&out, "token file").await;
    let first = std::fs::read_to_string(&out).unwrap();
    (s, child, out, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_a_clock_two_hours_ahead_mints_once_per_lifetime_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (s, child, out, first) = skewed_refresh(dir.path(), "+2h", "1h").await;
    // A 1h token is renewed after ~48 minutes; any second mint within this
    // window is the fault (it minted thousands of times in 5 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = terminate(child).await;
    let writes = log.matches("token written").count();
    assert_eq!(
        writes,
        1,
        "a 1h token rewritten {writes} times in 2 s under a clock 2h ahead; log tail: {}",
        &log[log.len().saturating_sub(600)..]
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), first);
    assert!(
        log.contains("the local clock is 2h") && log.contains("ahead of the issuer's"),
        "{log}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_a_clock_50_minutes_behind_renews_before_the_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (s, child, out, first) = skewed_refresh(dir.path(), "-50m", "10s").await;
    let exp = decode_part(&first, 1)["exp"].as_i64().unwrap();
    // The server's clock is this process's: the first token expires at exp.
    loop {
        let now = std::fs::read_to_string(&out).unwrap();
        if now != first {
            break;
        }
        assert!(
            unix_now() < exp as f64,
            "under a clock 50 min behind, the token expiring at {exp} was not renewed before it expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = terminate(child).await;
    assert!(
        log.contains("the local clock is 49m 59s behind the issuer's")
            || log.contains("the local clock is 50m behind the issuer's"),
        "{log}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_with_a_clock_two_hours_ahead_serves_its_cached_token() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
    let socket = dir.path().join("agent.sock");
    let child = start_logged(
        skewed("+2h")
            .args(["agent", "--server", &s.issuer("s"), "--token-file"])
            .arg(keys.join("admin.token"))
            .args(["-n", "ns", "--service-account", "sa", "--duration", "1h"])
            .arg("--socket")
            .arg(&socket),
    );
    wait_for(&socket, "agent socket").await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = unix_get_with_headers(&socket, "/v1/token?audience=a").await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body);
    }
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "under a clock 2h ahead the agent minted a new 1h token for each request"
    );
    terminate(child).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_cached_token_until_expiry_while_the_issuer_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let issuer = s.issuer("s");
    let socket = dir.path().join("agent.sock");
    let child = start_logged(
        tokio::process::Command::new(BIN)
            .args(["agent", "--server", &issuer, "--token-file"])
            .arg(keys.join("admin.token"))
            .args(["-n", "ns", "--service-account", "sa", "--duration", "20s"])
            .arg("--socket")
            .arg(&socket)
            .env("NO_COLOR", "1"),
    );
    wait_for(&socket, "agent socket").await;
    let url = "/v1/token?audience=a";
    let (status, headers, cached) = unix_get_with_headers(&socket, url).await;
    assert_eq!(status, 200, "{cached}");
    assert!(!headers.contains_key("x-token-stale"), "{headers:?}");
    let expires = headers["x-token-expires"].clone();
    let exp = decode_part(&cached, 1)["exp"].as_i64().unwrap();
    s.stop().await;

    // While its token is unexpired the agent answers it, saying once the
    // renewal has failed that it is stale; then it answers an error. (It
    // used to answer the error from 80 % of the life on, 4 s before exp.)
    let exp = exp as f64;
    let mut stale = 0;
    let mut last_served = 0.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        assert!(
            Instant::now() < deadline,
            "the agent still answers after its token expired"
        );
        // Before the request: the agent decided later than this.
        let asked = unix_now();
        let (status, headers, body) = unix_get_with_headers(&socket, url).await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            asked < exp,
            "the agent served a token that expired at {exp}"
        );
        assert_eq!(body, cached, "a token while the issuer is down");
        assert_eq!(headers["x-token-expires"], expires);
        if let Some(why) = headers.get("x-token-stale") {
            assert!(why.starts_with("renewal failed; expires in "), "{why}");
            stale += 1;
        }
        last_served = asked;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // exp is whole seconds, so the agent counts the life 1 s short.
    assert!(
        last_served > exp - 2.5,
        "the agent stopped serving its token {:.1} s before it expired, then answered {status}: {body}",
        exp - last_served
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot reach"), "{body}");
    assert!(stale > 0, "no answer said the token was stale");

    // The issuer back: a fresh token, not stale.
    let s = short_lived_server(&keys, Some(addr)).await;
    let (status, headers, fresh) = unix_get_with_headers(&socket, url).await;
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh, cached);
    assert!(!headers.contains_key("x-token-stale"), "{headers:?}");
    terminate(child).await;
    s.stop().await;
}

/// Runs the agent under strace with umask 000 (the worst case the review
/// found) and returns the trace of the calls that place its socket, and the
/// socket's path.
async fn trace_agent_start(dir: &Path, issuer: &str, keys: &Path) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    // A shared directory, like /run/workload: anyone may look in it.
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = run.join("agent.sock");
    let trace = dir.join("trace");
    let pidfile = dir.join("pid");
    let mut strace = tokio::process::Command::new("strace")
        .args(["-f", "-qq", "-s", "4096", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=bind,mkdir,mkdirat,chmod,fchmodat,rename,renameat,renameat2",
            "--",
            "sh",
            "-c",
            "echo $$ > \"$0\"; umask 000; exec \"$@\"",
        ])
        .arg(&pidfile)
        .arg(BIN)
        .args(["agent", "--server", issuer, "--token-file"])
        .arg(keys.join("admin.token"))
        .args(["-n", "ns", "--service-account", "sa", "--socket"])
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("strace on PATH (apt-get install strace; .ci/run does)");
    wait_for(&socket, "agent socket").await;
    let (status, _, body) = unix_get_with_headers(&socket, "/v1/token?audience=a").await;
    assert_eq!(status, 200, "{body}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    signal(pid.trim().parse().unwrap(), rustix::process::Signal::TERM);
    let done = tokio::time::timeout(Duration::from_secs(10), strace.wait())
        .await
        .expect("the agent ends on SIGTERM")
        .unwrap();
    assert!(done.success(), "{done}");
    (std::fs::read_to_string(&trace).unwrap(), socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binds_its_socket_in_a_private_directory_before_moving_it_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
    let (trace, socket) = trace_agent_start(dir.path(), &s.issuer("s"), &keys).await;
    s.stop().await;
    let lines: Vec<&str> = trace.lines().collect();
    let find = |what: &dyn Fn(&str) -> bool| lines.iter().position(|l| what(l));

    let bind = find(&|l| l.contains("bind(") && l.contains("sun_path="))
        .unwrap_or_else(|| panic!("no bind in the trace:\n{trace}"));
    let bound = lines[bind]
        .split("sun_path=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(PathBuf::from)
        .unwrap();
    let private = bound.parent().unwrap();
    assert_ne!(
        private,
        socket.parent().unwrap(),
        "bound at {} directly in the shared directory, where anyone may connect \
         before its chmod:\n{trace}",
        bound.display()
    );
    let made = find(&|l| {
        l.contains("mkdir") && l.contains(&format!("\"{}\", 0700) = 0", private.display()))
    });
    assert!(
        made.is_some_and(|m| m < bind),
        "{} was not made 0700 before the bind:\n{trace}",
        private.display()
    );
    let chmod = find(&|l| {
        l.contains("chmod") && l.contains(&format!("\"{}\", 0600) = 0", bound.display()))
    });
    let moved = find(&|l| {
        l.contains("rename")
            && l.contains(&format!("\"{}\"", bound.display()))
            && l.contains(&format!("\"{}\") = 0", socket.display()))
    });
    assert!(
        matches!((chmod, moved), (Some(c), Some(m)) if bind < c && c < m),
        "the socket was not made 0600 before it was moved into place:\n{trace}"
    );
    // Nothing is left behind but the socket, and that is removed on exit.
    let left: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
