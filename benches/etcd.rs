//! The etcd store, measured (issue 15, item 8): a benchmark of the real
//! server binary on a real etcd that prints figures.
//!
//!     cargo bench --bench etcd                        # the issue's sizes
//!     cargo bench --bench etcd -- --clusters 1000 --rotations 5 --seconds 2
//!
//! 1. A single-member etcd (`/usr/bin/etcd`, started by the integration
//!    tests' harness on free loopback ports, its data in a tempdir) and its
//!    version.
//! 2. Start-up from etcd: a dir-backed server creates `--clusters` ES256
//!    clusters through `POST /admin/v1/clusters` (and cluster `r`, declared
//!    in the config); `store migrate --from-keys-dir` copies the keys dir
//!    into etcd (timed). Then `--starts` starts of an etcd-backed server,
//!    each timed from spawn to `/readyz` 200, with its VmRSS after a second
//!    idle and the size of its working copy (a private tmpfs directory whose
//!    pages are memory but not in VmRSS); and as many starts of a
//!    dir-backed server on the same keys dir, for comparison.
//! 3. Rotation: two etcd-backed replicas; `--rotations` times `keys rotate
//!    --force --cluster r` by the CLI. The commit is the instant `etcdctl
//!    watch` (started before, on r's manifest) prints the new manifest; both
//!    replicas' JWKS of `r` are polled every millisecond from the CLI's
//!    launch until each lists a kid it did not list before. The figure is
//!    the time from the commit to the last of the two. One rotation before
//!    them is not counted (it proves the watch is in place).
//! 4. JWKS throughput: the same cluster (created at run time, migrated, so
//!    the same keys and the same bytes) served by an etcd-backed replica
//!    and a dir-backed server, `wrk -t1 -cN -dS` (keep-alive) in `--rounds`
//!    interleaved rounds, the order alternating; the ratio is the median of
//!    the rounds' own ratios.
//!
//! Every process started is stopped by its PID, also on a panic (`Spawned`
//! and the etcd harness kill on drop). Exits 1 when a step fails, 2 on
//! arguments it does not take.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{json, Value};

// Shared with the integration tests; this run uses part of each.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/harness/etcd.rs"]
mod etcd;

use etcd::EtcdCluster;
use support::{config_file, spawn_serve, token_sha256, Spawned, BIN};

/// The prefix in etcd: the default of `[store] prefix`.
const PREFIX: &str = "/workload-issuer";
/// How long a started server idles before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the rotation pollers ask each replica for r's JWKS.
const POLL: Duration = Duration::from_millis(1);
/// A rotation not served by both replicas this long after the CLI's launch
/// is an error (the CLI reads the whole store first: seconds with 10,000
/// clusters).
const FOLLOW_LIMIT: Duration = Duration::from_secs(60);

/// The etcd store, measured: start-up, rotation reaching replicas, JWKS rate.
#[derive(Parser)]
#[command(bin_name = "cargo bench --bench etcd --")]
struct Args {
    /// ES256 clusters created at run time, migrated into etcd, loaded at start.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    clusters: usize,
    /// Measured starts of each store.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    starts: usize,
    /// Rotations of r timed to the last replica serving them.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    rotations: usize,
    /// wrk rounds of each store.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Seconds of each wrk run.
    #[arg(long, value_name = "S", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// wrk connections (one thread, keep-alive).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    connections: usize,
    /// What `cargo bench` passes to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// The filter of `cargo bench FILTER`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

fn main() {
    let args = Args::parse();
    // etcd, the servers and the temporary directories live inside run() and
    // are dropped before exit(), which runs no destructors.
    let code = run(&args);
    std::process::exit(code);
}

// --- servers -------------------------------------------------------------------

/// A running server, its address, its working copy (etcd-backed) and the
/// WARN/ERROR lines it logged.
struct Server {
    process: Spawned,
    pid: u32,
    base: String,
    working_copy: Arc<Mutex<Option<PathBuf>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(config: &Path) -> Result<Server, String> {
        let config = config.to_str().ok_or("the config path is not UTF-8")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let working_copy: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let (tally, copy) = (log.clone(), working_copy.clone());
        let (process, addr) = spawn_serve(&["--config", config], &[], move |line| {
            let level = line.split_whitespace().nth(1).unwrap_or("");
            if level == "WARN" || level == "ERROR" || line.contains("watch") {
                tally.lock().unwrap().push(line.to_owned());
            }
            if let Some((_, path)) = line.split_once("working_copy=") {
                let path = path.split_whitespace().next().unwrap_or_default();
                *copy.lock().unwrap() = Some(PathBuf::from(path));
            }
        })?;
        Ok(Server {
            pid: process.id(),
            process,
            base: format!("http://{addr}"),
            working_copy,
            log,
        })
    }

    /// SIGTERM and the wait for the exit; the WARN/ERROR lines it logged.
    fn stop(self) -> Result<Vec<String>, String> {
        let lines = std::mem::take(&mut *self.log.lock().unwrap());
        match self.process.terminate(Duration::from_secs(60)) {
            Ok(status) if status.success() => Ok(lines),
            Ok(status) => Err(format!("server exited with {status} on SIGTERM: {lines:?}")),
            Err(e) => Err(format!("server shutdown: {e}: {lines:?}")),
        }
    }
}

/// Resident memory in kB (VmRSS of /proc/PID/status).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The space `dir`'s files take (allocated blocks, kB) and how many there are.
fn disk_use(dir: &Path) -> (u64, u64) {
    let (mut kb, mut files) = (0, 0);
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                kb += meta.blocks() / 2;
                files += 1;
            }
        }
    }
    (kb, files)
}

fn http() -> reqwest::Client {
    workload_issuer::client::http_client(None).expect("an HTTP client")
}

/// A start measured: seconds to `/readyz` 200, the clusters it counts,
/// VmRSS after `SETTLE`, the working copy's kB and files.
struct Start {
    server: Server,
    ready: f64,
    clusters: u64,
    rss_kb: u64,
    copy: Option<(u64, u64)>,
}

async fn start_measured(config: &Path) -> Result<Start, String> {
    let spawned = Instant::now();
    let server = tokio::task::block_in_place(|| Server::start(config))?;
    let client = http();
    let url = format!("{}/readyz", server.base);
    let clusters = loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == StatusCode::OK {
                let body: Value = r.json().await.map_err(|e| e.to_string())?;
                break body["clusters"].as_u64().unwrap_or(0);
            }
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            return Err("/readyz did not answer 200 within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ready = spawned.elapsed().as_secs_f64();
    drop(client);
    tokio::time::sleep(SETTLE).await;
    let rss_kb = rss_kb(server.pid).unwrap_or(0);
    let copy = server.working_copy.lock().unwrap().clone();
    Ok(Start {
        copy: copy.map(|d| disk_use(&d)),
        server,
        ready,
        clusters,
        rss_kb,
    })
}

/// `workload-issuer ARGS`, which must exit 0; how long it took.
async fn cli(args: &[&str]) -> Result<Duration, String> {
    let started = Instant::now();
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// The kids of a JWKS; `None` unless it answers 200 with a JWKS.
async fn kids(client: &reqwest::Client, url: &str) -> Option<Vec<String>> {
    let r = client.get(url).send().await.ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    let mut kids: Vec<String> = v["keys"]
        .as_array()?
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect();
    kids.sort();
    Some(kids)
}

// --- figures ---------------------------------------------------------------------

/// The value at rank `p` (0..=1) of sorted values.
fn pick(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v.to_vec());
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// "min / median / max" of `v` with `unit`, `digits` decimals.
fn spread(v: &[f64], digits: usize, unit: &str) -> String {
    let s = sorted(v.to_vec());
    format!(
        "{:.d$} / {:.d$} / {:.d$} {unit}",
        pick(&s, 0.0),
        median(&s),
        pick(&s, 1.0),
        d = digits
    )
}

/// Rows of figure and value, printed as a table.
#[derive(Default)]
struct Table(Vec<[String; 2]>);

impl Table {
    fn row(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.0.push([figure.into(), value.into()]);
    }

    fn print(&self) {
        let header = ["figure", "value"].map(String::from);
        let rows: Vec<&[String; 2]> = std::iter::once(&header).chain(&self.0).collect();
        let w: Vec<usize> = (0..2)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for (n, r) in rows.iter().enumerate() {
            println!("| {:<a$} | {:>b$} |", r[0], r[1], a = w[0], b = w[1]);
            if n == 0 {
                println!("|{}|{}|", "-".repeat(w[0] + 2), "-".repeat(w[1] + 2));
            }
        }
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// --- the steps -------------------------------------------------------------------

/// Creates `count` ES256 clusters `rt-NNNNN` on `base`, one request at a
/// time (the fastest on this machine: creates take the keys dir's lock in
/// turn); the time it took.
async fn create_all(base: &str, bearer: &str, count: usize) -> Result<Duration, String> {
    let client = http();
    let url = format!("{base}/admin/v1/clusters");
    let started = Instant::now();
    for n in 0..count {
        let id = format!("rt-{n:05}");
        let r = client
            .post(&url)
            .bearer_auth(bearer)
            .json(&json!({ "id": id, "algorithm": "ES256" }))
            .send()
            .await
            .map_err(|e| format!("create {id}: {e}"))?;
        if r.status() != StatusCode::CREATED {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(format!("create {id}: {status} {}", text.trim()));
        }
        let _ = r.bytes().await;
    }
    Ok(started.elapsed())
}

/// `starts` measured starts on `config`, each stopped after; rows added.
async fn starts(
    table: &mut Table,
    what: &str,
    config: &Path,
    starts: usize,
    expected: usize,
    lines: &mut Vec<String>,
) -> Result<(), String> {
    let (mut ready, mut rss, mut copies, mut served) = (vec![], vec![], vec![], vec![]);
    for n in 0..starts {
        eprintln!("etcd bench: {what} start {}/{starts}", n + 1);
        let s = start_measured(config).await?;
        ready.push(s.ready);
        rss.push(mb(s.rss_kb));
        served.push(s.clusters);
        if let Some((kb, files)) = s.copy {
            copies.push((kb, files));
        }
        lines.extend(s.server.stop()?);
    }
    if served.iter().any(|&c| c != expected as u64) {
        return Err(format!(
            "{what}: /readyz counted {served:?} clusters, not {expected}"
        ));
    }
    table.row(format!("{what}: clusters served"), expected.to_string());
    table.row(
        format!("{what}: spawn to /readyz 200 (min / median / max)"),
        spread(&ready, 2, "s"),
    );
    table.row(
        format!("{what}: idle RSS after ready + 1 s (min / median / max)"),
        spread(&rss, 1, "MB"),
    );
    if let Some(&(kb, files)) = copies.last() {
        table.row(
            format!("{what}: working copy (tmpfs, not in RSS)"),
            format!("{:.1} MB in {files} files", mb(kb)),
        );
    }
    Ok(())
}

/// `etcdctl watch` on one key, printing each change as a JSON line: the
/// instant each line arrived, through `events`.
fn watch(
    endpoints: &str,
    key: &str,
    from: u64,
) -> Result<(Spawned, mpsc::Receiver<Instant>), String> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["watch", "-w", "json", &format!("--rev={from}"), key])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start etcdctl watch: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let at = Instant::now();
            let is_event = serde_json::from_str::<Value>(&line)
                .is_ok_and(|v| v["Events"].as_array().is_some_and(|e| !e.is_empty()));
            if is_event && tx.send(at).is_err() {
                return;
            }
        }
    });
    Ok((Spawned::new(child), rx))
}

/// One rotation's instants, relative to the commit seen by the watch (ms):
/// the CLI's exit, and each replica first listing the new kid.
struct Rotation {
    cli_ms: f64,
    cli_exit_ms: f64,
    replicas_ms: [f64; 2],
}

/// Rotates r by the CLI and times it to both replicas.
async fn rotate_once(
    config: &str,
    jwks: &[String; 2],
    watched: &mpsc::Receiver<Instant>,
) -> Result<Rotation, String> {
    let client = http();
    let before = kids(&client, &jwks[0])
        .await
        .ok_or("r's JWKS did not answer")?;
    while watched.try_recv().is_ok() {}
    let pollers: Vec<_> = jwks
        .iter()
        .map(|url| {
            let (client, url, before) = (client.clone(), url.clone(), before.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut ticks = tokio::time::interval(POLL);
                loop {
                    ticks.tick().await;
                    if let Some(now) = kids(&client, &url).await {
                        if now.iter().any(|k| !before.contains(k)) {
                            return Ok((Instant::now(), now));
                        }
                    }
                    if started.elapsed() > FOLLOW_LIMIT {
                        return Err(format!("{url} did not list a new kid in {FOLLOW_LIMIT:?}"));
                    }
                }
            })
        })
        .collect();
    let launched = Instant::now();
    cli(&[
        "keys",
        "rotate",
        "--force",
        "--cluster",
        "r",
        "--config",
        config,
    ])
    .await?;
    let exited = Instant::now();
    let committed = tokio::task::block_in_place(|| watched.recv_timeout(FOLLOW_LIMIT))
        .map_err(|_| "etcdctl watch saw no new manifest of r".to_owned())?;
    let mut seen = Vec::new();
    for p in pollers {
        seen.push(p.await.map_err(|e| e.to_string())??);
    }
    if seen[0].1 != seen[1].1 {
        // Both list a new kid; once both have settled they must agree.
        let a = kids(&client, &jwks[0]).await;
        let b = kids(&client, &jwks[1]).await;
        if a != b {
            return Err(format!(
                "the replicas disagree on r's kids: {a:?} and {b:?}"
            ));
        }
    }
    let since = |t: Instant| -> f64 {
        if t >= committed {
            (t - committed).as_secs_f64() * 1000.0
        } else {
            -((committed - t).as_secs_f64() * 1000.0)
        }
    };
    Ok(Rotation {
        cli_ms: (exited - launched).as_secs_f64() * 1000.0,
        cli_exit_ms: since(exited),
        replicas_ms: [since(seen[0].0), since(seen[1].0)],
    })
}

/// `wrk -t1 -cN -dS URL`: requests/s, and the non-2xx/3xx count and
/// socket errors as reported.
fn wrk(url: &str, connections: usize, seconds: u64) -> Result<(f64, String), String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let problems: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .collect();
    Ok((rate, problems.join("; ")))
}

/// The config of a run's servers: cluster `r` (ES256, its own rotation
/// weeks away: rotated here by hand), an admin client, then `store` (a `[store]` table, or nothing).
fn config(dir: &Path, bearer: &str, store: &str) -> PathBuf {
    config_file(
        dir,
        &format!(
            "\n[[clusters]]\nid = \"r\"\nalgorithm = \"ES256\"\n\n\
             [[api_clients]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\n\
             admin = true\n{store}",
            token_sha256(bearer)
        ),
    )
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

// --- the run -------------------------------------------------------------------

fn run(args: &Args) -> i32 {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = first_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut table = Table::default();
    let mut lines = Vec::new();
    let etcd_version = first_line("etcd", &["--version"]);
    eprintln!("etcd bench: {BIN} (commit {commit}), {cores} cores, {etcd_version}");
    table.row("etcd", format!("{etcd_version}, 1 member"));
    table.row(
        "load average at the start",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );

    let result = runtime.block_on(steps(args, &mut table, &mut lines));
    drop(runtime);

    println!(
        "\netcd: workload-issuer {commit}, {cores} cores, {} clusters, {} rotations, wrk -t1 -c{} -d{}s x {}\n",
        args.clusters, args.rotations, args.connections, args.seconds, args.rounds
    );
    table.print();
    let mut code = 0;
    if let Err(e) = result {
        println!("\netcd bench: the run stopped: {e}");
        code = 1;
    }
    if !lines.is_empty() {
        println!("\nserver WARN/ERROR lines ({}; the first 10):", lines.len());
        for line in lines.iter().take(10) {
            println!("  {}", line.chars().take(300).collect::<String>());
        }
    }
    code
}

async fn steps(args: &Args, table: &mut Table, lines: &mut Vec<String>) -> Result<(), String> {
    let etcd = tokio::task::block_in_place(|| EtcdCluster::start(1))
        .ok_or("etcd is not installed (apt-get install etcd-server etcd-client)")?;
    let bearer = uuid::Uuid::new_v4().simple().to_string();
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (on_dir, on_etcd) = (root.path().join("dir"), root.path().join("etcd"));
    for d in [&on_dir, &on_etcd] {
        std::fs::create_dir(d).map_err(|e| e.to_string())?;
    }
    let dir_cfg = config(&on_dir, &bearer, "");
    let expected = args.clusters + 1;

    // 2. The clusters, made in a keys dir, then migrated into etcd.
    let filler = Server::start(&dir_cfg)?;
    eprintln!("etcd bench: creating {} ES256 clusters", args.clusters);
    let took = create_all(&filler.base, &bearer, args.clusters).await?;
    lines.extend(filler.stop()?);
    table.row(
        "ES256 clusters created (dir-backed, admin API, 1 in flight)",
        format!(
            "{} in {:.1} s ({:.0}/s)",
            args.clusters,
            took.as_secs_f64(),
            args.clusters as f64 / took.as_secs_f64()
        ),
    );
    let kek = on_etcd.join("kek");
    let kek_arg = kek.to_str().ok_or("a tempdir that is not UTF-8")?;
    cli(&["store", "new-kek", kek_arg]).await?;
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let etcd_cfg = config(
        &on_etcd,
        &bearer,
        &format!(
            "\n[store]\nkind = \"etcd\"\nendpoints = [{}]\nkek_file = {kek_arg:?}\n",
            endpoints.join(", ")
        ),
    );
    let etcd_arg = etcd_cfg.to_str().ok_or("a tempdir that is not UTF-8")?;
    let keys_dir = on_dir.join("keys");
    eprintln!("etcd bench: store migrate");
    let migrated = cli(&[
        "store",
        "migrate",
        "--config",
        etcd_arg,
        "--from-keys-dir",
        keys_dir.to_str().ok_or("a tempdir that is not UTF-8")?,
    ])
    .await?;
    table.row(
        "store migrate --from-keys-dir into etcd",
        format!("{:.1} s", migrated.as_secs_f64()),
    );
    let (status, out, err) = etcd.etcdctl(&[
        "get",
        "--prefix",
        PREFIX,
        "--keys-only",
        "--limit=1",
        "-w",
        "json",
    ]);
    let count = serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v["count"].as_u64());
    let (_, status_out, _) = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let db = serde_json::from_str::<Value>(&status_out)
        .ok()
        .and_then(|v| v[0]["Status"]["dbSize"].as_u64());
    match (status.success(), count, db) {
        (true, Some(count), Some(db)) => table.row(
            "etcd after the migration: keys under the prefix, db size",
            format!("{count}, {:.1} MB", db as f64 / 1048576.0),
        ),
        _ => return Err(format!("etcdctl get --keys-only: {status} {out}{err}")),
    }

    starts(
        table,
        "etcd-backed",
        &etcd_cfg,
        args.starts,
        expected,
        lines,
    )
    .await?;
    starts(table, "dir-backed", &dir_cfg, args.starts, expected, lines).await?;

    // 3. Rotation committed to the last of two replicas serving it.
    eprintln!("etcd bench: two replicas, {} rotations", args.rotations);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(&etcd_cfg));
        let b = s.spawn(|| Server::start(&etcd_cfg));
        (a.join(), b.join())
    });
    let (a, b) = (
        a.map_err(|_| "a replica's start panicked")??,
        b.map_err(|_| "a replica's start panicked")??,
    );
    let jwks = [
        format!("{}/c/r/openid/v1/jwks", a.base),
        format!("{}/c/r/openid/v1/jwks", b.base),
    ];
    let client = http();
    for url in &jwks {
        let started = Instant::now();
        while kids(&client, url).await.is_none() {
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("{url} did not answer 200 within 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let revision = etcd.revision();
    let (watcher, watched) = watch(
        &etcd.endpoints_csv(),
        &format!("{PREFIX}/keys/r/manifest"),
        revision + 1,
    )?;
    // Rotation 0 is not counted: once its commit is seen, the watch is
    // surely in place.
    let mut rotations = Vec::new();
    for n in 0..=args.rotations {
        let rotation = rotate_once(etcd_arg, &jwks, &watched).await;
        match rotation {
            Ok(r) if n > 0 => rotations.push(r),
            Ok(_) => {}
            Err(e) => {
                let logged = |s: &Server| s.log.lock().unwrap().join("\n");
                return Err(format!(
                    "rotation {n}: {e}\nreplica a logged:\n{}\nreplica b logged:\n{}",
                    logged(&a),
                    logged(&b)
                ));
            }
        }
    }
    drop(watcher);
    let last: Vec<f64> = sorted(
        rotations
            .iter()
            .map(|r| r.replicas_ms[0].max(r.replicas_ms[1]))
            .collect(),
    );
    let first: Vec<f64> = sorted(
        rotations
            .iter()
            .map(|r| r.replicas_ms[0].min(r.replicas_ms[1]))
            .collect(),
    );
    let exit: Vec<f64> = sorted(rotations.iter().map(|r| r.cli_exit_ms).collect());
    let cli_took: Vec<f64> = sorted(rotations.iter().map(|r| r.cli_ms).collect());
    let pcts = |s: &[f64]| {
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            pick(s, 0.5),
            pick(s, 0.95),
            pick(s, 1.0)
        )
    };
    table.row(
        "rotation: commit (etcdctl watch) to the last replica serving it, p50 / p95 / max",
        pcts(&last),
    );
    table.row(
        "rotation: commit to the first replica, p50 / p95 / max",
        pcts(&first),
    );
    table.row(
        "rotation: commit to the CLI's exit, p50 / p95 / max",
        pcts(&exit),
    );
    table.row(
        format!(
            "rotation: `keys rotate --force` run time ({expected} clusters in etcd), p50 / max"
        ),
        format!(
            "{:.0} / {:.0} ms",
            pick(&cli_took, 0.5),
            pick(&cli_took, 1.0)
        ),
    );
    lines.extend(b.stop()?);

    // 4. JWKS throughput, replica a against a dir-backed server.
    let dir_server = Server::start(&dir_cfg)?;
    let id = format!("rt-{:05}", args.clusters / 2);
    let urls = [
        ("etcd-backed", format!("{}/c/{id}/openid/v1/jwks", a.base)),
        (
            "dir-backed",
            format!("{}/c/{id}/openid/v1/jwks", dir_server.base),
        ),
    ];
    let bodies = [
        client
            .get(&urls[0].1)
            .send()
            .await
            .map_err(|e| e.to_string())?,
        client
            .get(&urls[1].1)
            .send()
            .await
            .map_err(|e| e.to_string())?,
    ];
    let mut texts = Vec::new();
    for r in bodies {
        if r.status() != StatusCode::OK {
            return Err(format!("{id}'s JWKS answered {}", r.status()));
        }
        texts.push(r.bytes().await.map_err(|e| e.to_string())?);
    }
    if texts[0] != texts[1] {
        return Err(format!(
            "{id}'s JWKS differs between the stores: {:?} and {:?}",
            texts[0], texts[1]
        ));
    }
    let (mut rates, mut ratios, mut problems) = ([vec![], vec![]], vec![], vec![]);
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut this = [0.0; 2];
        for i in order {
            eprintln!(
                "etcd bench: wrk round {}/{}: {}",
                round + 1,
                args.rounds,
                urls[i].0
            );
            let url = urls[i].1.clone();
            let (c, s) = (args.connections, args.seconds);
            let (rate, problem) = tokio::task::block_in_place(|| wrk(&url, c, s))?;
            if !problem.is_empty() {
                problems.push(format!("{}: {problem}", urls[i].0));
            }
            this[i] = rate;
            rates[i].push(rate);
        }
        ratios.push(this[0] / this[1]);
    }
    for (i, (what, _)) in urls.iter().enumerate() {
        let per: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        table.row(
            format!("JWKS {what}: requests/s, median (rounds)"),
            format!("{:.0} ({})", median(&rates[i]), per.join(", ")),
        );
    }
    let per: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    table.row(
        "JWKS etcd-backed / dir-backed: median of the rounds' ratios (rounds)",
        format!("{:.3} ({})", median(&ratios), per.join(", ")),
    );
    lines.extend(dir_server.stop()?);
    lines.extend(a.stop()?);
    if !problems.is_empty() {
        return Err(format!("wrk reported errors: {}", problems.join("; ")));
    }
    drop(etcd);
    Ok(())
}
