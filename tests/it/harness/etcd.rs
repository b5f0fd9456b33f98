//! A real etcd cluster for the tests of the etcd store (#15): N members of
//! Debian's `etcd-server` on loopback ports found free, data in a tempdir,
//! each member's log in a file; members stopped (SIGKILL) and started again
//! on the same data; `etcdctl` (Debian's `etcd-client`) to read and change
//! what the issuer wrote. Without etcd installed the tests that need it are
//! skipped with a message, unless `WORKLOAD_ISSUER_REQUIRE_ETCD=1` (CI), which
//! makes its absence a failure. Also the server config and the KEK such a
//! test gives the issuer. Nothing here knows the issuer's store code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::support::config_file;

const MISSING: &str = "etcd not installed (apt-get install etcd-server etcd-client)";

/// How long a start, a restart or a recovery may take before the harness
/// gives up: generous, the election itself takes about a second.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// A start is retried this often when another process took a port between
/// our probe and etcd's bind.
const START_ATTEMPTS: usize = 3;

struct Member {
    name: String,
    /// `http`, or `https` on a member of [`EtcdCluster::start_tls`].
    client_scheme: &'static str,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The last lines of the member's log, for a failure message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} ({}) ---\n{tail}", self.name, self.log.display())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            // Child::kill is SIGKILL to this process's own id.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A static etcd cluster on 127.0.0.1; every member is killed on drop.
pub struct EtcdCluster {
    etcd: PathBuf,
    etcdctl: PathBuf,
    token: String,
    members: Vec<Member>,
    /// The certificates of a cluster serving https with mutual TLS.
    tls: Option<EtcdTls>,
    /// The members' data dirs and logs; removed once the members are gone
    /// (fields drop after `Drop::drop` has killed them).
    _dir: tempfile::TempDir,
}

/// `name` found on PATH, as a shell would.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// 2 × `n` distinct ports free on 127.0.0.1 a moment ago: all bound at once
/// (so they differ), read, and released for etcd to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..2 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl EtcdCluster {
    /// Starts `members` etcd processes as one cluster and waits until every
    /// one answers healthy. `None` (with a message) when etcd or etcdctl is
    /// not installed, unless `WORKLOAD_ISSUER_REQUIRE_ETCD=1`: then a panic.
    pub fn start(members: usize) -> Option<EtcdCluster> {
        EtcdCluster::start_with(members, false)
    }

    /// One member serving https with mutual TLS (`--client-cert-auth`):
    /// its certificate, for 127.0.0.1, and the client's are signed by a
    /// test CA ([`EtcdCluster::tls`]); `etcdctl` presents the client's.
    /// `None` as [`EtcdCluster::start`] when etcd is not installed.
    pub fn start_tls() -> Option<EtcdCluster> {
        EtcdCluster::start_with(1, true)
    }

    fn start_with(members: usize, tls: bool) -> Option<EtcdCluster> {
        let (Some(etcd), Some(etcdctl)) = (on_path("etcd"), on_path("etcdctl")) else {
            let required = std::env::var("WORKLOAD_ISSUER_REQUIRE_ETCD").is_ok_and(|v| v == "1");
            assert!(!required, "WORKLOAD_ISSUER_REQUIRE_ETCD=1 but {MISSING}");
            eprintln!("skipped: {MISSING}");
            return None;
        };
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let ports = free_ports(members);
            let tls = tls.then(|| EtcdTls::new(dir.path()));
            let client_scheme = if tls.is_some() { "https" } else { "http" };
            let mut cluster = EtcdCluster {
                etcd: etcd.clone(),
                etcdctl: etcdctl.clone(),
                token: format!("wi-test-{}-{attempt}", std::process::id()),
                members: (0..members)
                    .map(|i| Member {
                        name: format!("m{i}"),
                        client_scheme,
                        client_port: ports[2 * i],
                        peer_port: ports[2 * i + 1],
                        data: dir.path().join(format!("m{i}.data")),
                        log: dir.path().join(format!("m{i}.log")),
                        process: None,
                    })
                    .collect(),
                tls,
                _dir: dir,
            };
            cluster.start_all();
            match cluster.healthy_within(HEALTHY_WITHIN) {
                Ok(()) => return Some(cluster),
                Err(why) if why.contains("address already in use") => {
                    eprintln!("etcd start attempt {attempt}: a port was taken, retrying");
                    failures.push(why);
                }
                Err(why) => panic!("the etcd cluster did not start:\n{why}"),
            }
        }
        panic!(
            "the etcd cluster did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The certificates of a cluster from [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The members' client URLs, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The endpoints comma-separated, as `--endpoints` and
    /// `WORKLOAD_ISSUER_STORE__ENDPOINTS` take them.
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data dir and ports: it rejoins the
    /// cluster. Does not wait; see [`EtcdCluster::wait_healthy`].
    pub fn start_member(&mut self, i: usize) {
        assert!(
            self.members[i].process.is_none(),
            "etcd member {i} is already running"
        );
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let mut command = Command::new(&self.etcd);
        // Settings the machine may have for its own etcd must not reach ours.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                command.env_remove(name);
            }
        }
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            // Read only on the first start: a member with data rejoins.
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // etcd's own timings (an election in 1-2 s): shorter ones make
            // a member on a loaded 2-core CI machine miss heartbeats and
            // call elections that stall writes for seconds. Pre-vote keeps
            // a member that rejoins from deposing a working leader.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .arg("--pre-vote")
            .args(["--quota-backend-bytes", &(256u64 << 20).to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.etcd.display()));
        self.members[i].process = Some(child);
    }

    /// Kills every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    /// Starts every member that is not running. Does not wait; see
    /// [`EtcdCluster::wait_healthy`].
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.start_member(i);
            }
        }
    }

    /// Waits until every running member answers `etcdctl endpoint health`
    /// (a quorum read through it: the cluster has a leader); panics with the
    /// members' logs after 30 s or when one has exited.
    pub fn wait_healthy(&mut self) {
        if let Err(why) = self.healthy_within(HEALTHY_WITHIN) {
            panic!("the etcd cluster is not healthy:\n{why}");
        }
    }

    fn healthy_within(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(Member::client_url)
            .collect();
        loop {
            let exited: Vec<String> = self
                .members
                .iter_mut()
                .filter_map(|m| {
                    let status = m.process.as_mut()?.try_wait().ok().flatten()?;
                    m.process = None;
                    Some(format!("{} exited ({status})\n{}", m.name, m.log_tail()))
                })
                .collect();
            if !exited.is_empty() {
                return Err(exited.join("\n"));
            }
            let (status, out, err) = self.etcdctl_at(
                &running.join(","),
                &[
                    "endpoint",
                    "health",
                    "--dial-timeout=1s",
                    "--command-timeout=2s",
                ],
            );
            if status.success() {
                return Ok(());
            }
            let last = format!("{out}{err}");
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy within {limit:?}; etcdctl endpoint health said:\n{last}\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the member that leads the cluster now, by `etcdctl
    /// endpoint status` of the running members; `None` while there is none.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(Member::client_url)
            .collect();
        let (status, out, _) =
            self.etcdctl_at(&running.join(","), &["endpoint", "status", "-w", "json"]);
        if !status.success() {
            return None;
        }
        let statuses: serde_json::Value = serde_json::from_str(&out).ok()?;
        let leading = statuses.as_array()?.iter().find(|s| {
            let own = &s["Status"]["header"]["member_id"];
            own.is_u64() && *own == s["Status"]["leader"]
        })?;
        let url = leading["Endpoint"].as_str()?;
        self.members.iter().position(|m| m.client_url() == url)
    }

    /// The last lines of every member's log, for a failure message.
    pub fn logs(&self) -> String {
        let logs: Vec<String> = self.members.iter().map(Member::log_tail).collect();
        logs.join("\n")
    }

    /// `etcdctl ARGS` (API v3) against every member, with the CA and the
    /// client certificate of a TLS cluster: its exit status, stdout and
    /// stderr.
    pub fn etcdctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        self.etcdctl_at(&self.endpoints_csv(), args)
    }

    fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> (ExitStatus, String, String) {
        let mut command = Command::new(&self.etcdctl);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL") {
                command.env_remove(name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.cert.display()))
                .arg(format!("--key={}", tls.key.display()));
        }
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.etcdctl.display()));
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `etcdctl ARGS`, which must succeed; its stdout.
    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.etcdctl(args);
        assert!(
            status.success(),
            "etcdctl {args:?}: {status}\n{out}{err}\n{}",
            self.logs()
        );
        out
    }

    /// Every key under `prefix` and its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let out = self.etcdctl_ok(&["get", "--prefix", prefix, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl get -w json: {e}: {out}"));
        let decode = |field: &serde_json::Value| {
            // etcd leaves out an empty value.
            STANDARD
                .decode(field.as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("etcdctl gave {field} that is not base64: {e}"))
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let key = String::from_utf8(decode(&kv["key"]))
                            .unwrap_or_else(|e| panic!("a key that is not UTF-8: {e}"));
                        (key, decode(&kv["value"]))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> u64 {
        // Any read carries the revision in its header.
        let out = self.etcdctl_ok(&["get", "/", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("no revision in {out}"))
    }

    /// Compacts the history up to the current revision, so a watch from an
    /// older revision breaks; the revision compacted.
    pub fn compact_now(&self) -> u64 {
        let revision = self.revision();
        self.etcdctl_ok(&["compaction", "--physical", &revision.to_string()]);
        revision
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Writes `dir/config.toml` for `workload-issuer` on `cluster`: listen on
/// 127.0.0.1:0, keys dir `dir/keys` (the admin token and such), then
/// `extra_tables` (clusters, clients, ...), then a `[store]` of kind etcd
/// under `prefix` with `kek_file` and a 2 s election lease. One listener
/// serves every face, /readyz and /metrics too, as in the other tests that
/// run the binary.
pub fn etcd_config(
    dir: &Path,
    cluster: &EtcdCluster,
    prefix: &str,
    kek_file: &Path,
    extra_tables: &str,
) -> PathBuf {
    let endpoints: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    config_file(
        dir,
        &format!(
            "{extra_tables}\n[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = {prefix:?}\n\
             kek_file = {:?}\nlease_ttl = \"2s\"\n",
            endpoints.join(", "),
            kek_file.display().to_string()
        ),
    )
}

/// Writes a new key-encryption key to `path`: 32 random bytes, mode 0600.
/// For tests that need one before `workload-issuer store new-kek FILE`
/// exists; once it does, tests should make their KEK with the binary.
pub fn new_kek(path: &Path) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut kek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut kek).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(&kek).unwrap();
}

/// A test CA and the certificates it signed for mutual TLS with etcd, PEM
/// files: the member's, for 127.0.0.1 (an IP SAN), and a client's (`ca`,
/// `cert`, `key`, what `[store]` and `etcdctl` are given). The client's
/// common name is no etcd user, so with etcd's auth enabled the certificate
/// alone grants nothing: a request needs a user's token.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    fn new(dir: &Path) -> EtcdTls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "workload-issuer etcd test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        // rcgen makes "127.0.0.1" an IP address SAN. Client use too: etcd's
        // own gRPC gateway dials the member with this certificate.
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "wi-test-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();
        EtcdTls {
            ca: write("etcd-ca.crt", ca_cert.pem()),
            cert: write("etcd-client.crt", client_cert.pem()),
            key: write("etcd-client.key", client_key.serialize_pem()),
            server_cert: write("etcd-server.crt", server_cert.pem()),
            server_key: write("etcd-server.key", server_key.serialize_pem()),
        }
    }
}
