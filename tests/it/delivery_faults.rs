//! The client side when something around it goes wrong: the client's clock
//! is skewed (the binary under libfaketime), the issuer is down, or a local
//! user watches the directory the agent's socket goes into (the binary under
//! strace, umask 000). Red-team review, issue #11, findings 6 and 7 and the
//! stale-token finding.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::delivery::{short_lived, unix_get_with_headers, BIN};
use crate::harness::{Options, Server};

async fn short_lived_server(keys: &Path, listen: Option<std::net::SocketAddr>) -> Server {
    Server::start(Options {
        listen,
        keys_dir: keys,
        clusters: short_lived(),
        tls: None,
        api_listener: false,
        extra: String::new(),
    })
    .await
}

async fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no {what} at {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        .kill_on_drop(true)
        .spawn()
        .expect("strace on PATH (apt-get install strace; .ci/run does)");
    wait_for(&socket, "agent socket").await;
    let (status, _, body) = unix_get_with_headers(&socket, "/v1/token?audience=a").await;
    assert_eq!(status, 200, "{body}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
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
