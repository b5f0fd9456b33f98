//! Clusters created at run time, at scale: a benchmark of the real server
//! binary that prints figures beside their goals (issue 14, item 6).
//!
//!     cargo bench --bench clusters                              # the sizes
//!     cargo bench --bench clusters -- --creates 100 --rsa 10 --runtime 1000
//!
//! 1. The storm: server A (one file cluster `base`, ES256, and an admin API
//!    client) creates `--creates` ES256 clusters through
//!    `POST /admin/v1/clusters`, `--creators` requests at a time, while
//!    `--probes` loops fetch the JWKS of `base`, each request timed. The
//!    same loops run `--baseline-seconds` before the storm for the baseline.
//! 2. Then `--rsa` RS256 clusters the same way, the probes still running.
//! 3. During the storm, server B runs on the same keys dir and config: for
//!    every `--follow-every`th create, the time from A's 201 to B answering
//!    200 on the new cluster's discovery document (polled every 5 ms).
//! 4. A fresh server on another keys dir gets `--runtime` ES256 clusters
//!    through the API, is stopped (SIGTERM) and started again: the time from
//!    spawn to `/readyz` 200, then the resident memory after a second idle.
//!    For comparison, the same number of clusters declared as `[[clusters]]`
//!    tables in a config file (started once to generate the keys, stopped,
//!    then measured on the second start).
//!
//! Every process started is stopped by its PID (`Spawned` kills on drop).
//! Exits 1 when a request fails (figures that miss a goal do not fail the
//! run: they are figures), 2 on arguments it does not take.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use reqwest::StatusCode;
use serde_json::json;

// Shared with the integration tests and the soak run; this run uses part of it.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use support::{config_file, spawn_serve, token_sha256, Spawned};

/// How often a follower asks server B for a new cluster's discovery.
const FOLLOW_POLL: Duration = Duration::from_millis(5);
/// A follower gives up after this (and it is counted as an error).
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);
/// How long a restarted server idles before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Clusters created at run time, at scale: prints figures beside their goals.
#[derive(Parser)]
#[command(bin_name = "cargo bench --bench clusters --")]
struct Args {
    /// ES256 clusters created in the storm (figures 1 and 3).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    creates: usize,
    /// RS256 clusters created after the storm (figure 2); 0 skips them.
    #[arg(long, value_name = "N", default_value_t = 100)]
    rsa: usize,
    /// Clusters created at run time before the restart, and declared in the
    /// config file for the comparison (figure 4); 0 skips figure 4.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    runtime: usize,
    /// Create requests in flight at once (1 was the fastest here: creates
    /// take the keys dir's lock in turn, more in flight only contend).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    creators: usize,
    /// Loops fetching the JWKS of `base`, one request at a time each.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    probes: usize,
    /// Each probe loop sends a request at most this often (ms): a steady
    /// load of relying parties, not one that takes every core from the
    /// creates. 0: back to back.
    #[arg(long, value_name = "MS", default_value_t = 1)]
    probe_every_ms: u64,
    /// How long the probes run before the storm, for the baseline.
    #[arg(long, value_name = "S", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    baseline_seconds: u64,
    /// Follow every Nth create of the storm on server B.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    follow_every: usize,
    /// What `cargo bench` passes to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// The filter of `cargo bench FILTER`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

fn main() {
    let args = Args::parse();
    // Servers and temporary directories live inside run() and are dropped
    // before exit(), which runs no destructors.
    let code = run(&args);
    std::process::exit(code);
}

// --- servers ------------------------------------------------------------------

/// A running server, its address and the WARN/ERROR lines it logged.
struct Server {
    process: Spawned,
    pid: u32,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(config: &Path) -> Result<Server, String> {
        let config = config.to_str().ok_or("the config path is not UTF-8")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let tally = log.clone();
        let (process, addr) = spawn_serve(&["--config", config], &[], move |line| {
            let level = line.split_whitespace().nth(1).unwrap_or("");
            if level == "WARN" || level == "ERROR" {
                tally.lock().unwrap().push(line.to_owned());
            }
        })?;
        Ok(Server {
            pid: process.id(),
            process,
            base: format!("http://{addr}"),
            log,
        })
    }

    /// SIGTERM and the wait for the exit; the WARN/ERROR lines it logged.
    fn stop(self, errors: &Errors) -> Vec<String> {
        match self.process.terminate(Duration::from_secs(60)) {
            Ok(status) if status.success() => {}
            Ok(status) => errors.add(format!("server exited with {status} on SIGTERM")),
            Err(e) => errors.add(format!("server shutdown: {e}")),
        }
        std::mem::take(&mut *self.log.lock().unwrap())
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

/// Errors of the run: counted, the first few kept.
#[derive(Default)]
struct Errors(Mutex<(u64, Vec<String>)>);

impl Errors {
    fn add(&self, what: impl Into<String>) {
        let mut e = self.0.lock().unwrap();
        e.0 += 1;
        if e.1.len() < 10 {
            e.1.push(what.into());
        }
    }
}

fn http() -> reqwest::Client {
    workload_issuer::client::http_client(None).expect("an HTTP client")
}

// --- the JWKS probes ------------------------------------------------------------

/// Loops fetching one URL, each on its own thread and single-threaded
/// runtime, so the creators' tasks never delay the probes' own clocks.
struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, u32)>>>,
}

impl Probes {
    fn start(url: String, n: usize, every: Duration, errors: Arc<Errors>) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let (url, stop, errors) = (url.clone(), stop.clone(), errors.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    rt.block_on(probe(url, every, stop, errors))
                })
            })
            .collect();
        Probes { stop, threads }
    }

    /// Every request's start and duration in µs.
    fn finish(self) -> Vec<(Instant, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

async fn probe(
    url: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
) -> Vec<(Instant, u32)> {
    let client = http();
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(every.max(Duration::from_nanos(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        if !every.is_zero() {
            ticks.tick().await;
        }
        let start = Instant::now();
        match client.get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => match r.bytes().await {
                Ok(_) => {
                    let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    samples.push((start, us));
                }
                Err(e) => errors.add(format!("JWKS body: {e}")),
            },
            Ok(r) => errors.add(format!("JWKS: {}", r.status())),
            Err(e) => errors.add(format!("JWKS: {e}")),
        }
    }
    samples
}

/// The durations (µs, sorted) of the requests started in `[from, to)`.
fn window(samples: &[(Instant, u32)], from: Instant, to: Instant) -> Vec<u32> {
    let mut v: Vec<u32> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|s| s.1)
        .collect();
    v.sort_unstable();
    v
}

// --- creating clusters ------------------------------------------------------------

/// A create to follow on server B: its id and when A's 201 arrived.
type Follow = (String, Instant);

/// Clusters to create: `{prefix}-NNNNN` of `algorithm`, `count` of them.
struct Batch<'a> {
    prefix: &'a str,
    algorithm: &'a str,
    count: usize,
}

/// Creates `batch` on `base`, `creators` at a time; every `follow_every`th
/// one's id and 201 time go to `follow`. Returns the time from the first
/// request to the last answer.
async fn create_all(
    base: &str,
    bearer: &str,
    batch: Batch<'_>,
    creators: usize,
    follow: Option<(usize, tokio::sync::mpsc::UnboundedSender<Follow>)>,
    errors: &Arc<Errors>,
) -> Duration {
    let Batch {
        prefix,
        algorithm,
        count,
    } = batch;
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/admin/v1/clusters");
    let started = Instant::now();
    let tasks: Vec<_> = (0..creators)
        .map(|_| {
            let (next, url, bearer) = (next.clone(), url.clone(), bearer.to_owned());
            let (prefix, algorithm) = (prefix.to_owned(), algorithm.to_owned());
            let (follow, errors) = (follow.clone(), errors.clone());
            tokio::spawn(async move {
                let client = http();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return;
                    }
                    let id = format!("{prefix}-{n:05}");
                    let body = json!({ "id": id, "algorithm": algorithm });
                    let sent = client.post(&url).bearer_auth(&bearer).json(&body).send();
                    match sent.await {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            let at = Instant::now();
                            let _ = r.bytes().await;
                            if let Some((every, tx)) = &follow {
                                if n % every == 0 {
                                    let _ = tx.send((id, at));
                                }
                            }
                        }
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            errors.add(format!("create {id}: {status} {}", text.trim()));
                        }
                        Err(e) => errors.add(format!("create {id}: {e}")),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            errors.add(format!("a creator panicked: {e}"));
        }
    }
    started.elapsed()
}

/// For each create sent, the time from A's 201 until `base` (server B)
/// answers 200 on the cluster's discovery document, in µs, sorted. Server A
/// (`created_on`) must already serve it: its 201 says so.
async fn follow_on(
    created_on: String,
    base: String,
    mut creates: tokio::sync::mpsc::UnboundedReceiver<Follow>,
    errors: Arc<Errors>,
) -> Vec<u32> {
    let client = http();
    let mut waits = Vec::new();
    while let Some((id, at)) = creates.recv().await {
        let (client, base, errors) = (client.clone(), base.clone(), errors.clone());
        let on_a = format!("{created_on}/c/{id}/.well-known/openid-configuration");
        waits.push(tokio::spawn(async move {
            match client.get(&on_a).send().await.map(|r| r.status()) {
                Ok(StatusCode::OK) => {}
                other => errors.add(format!(
                    "A answered 201 for {id}, then {other:?} on its discovery"
                )),
            }
            let url = format!("{base}/c/{id}/.well-known/openid-configuration");
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    let status = r.status();
                    let _ = r.bytes().await;
                    if status == StatusCode::OK {
                        return Some(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                }
                if at.elapsed() > FOLLOW_LIMIT {
                    errors.add(format!(
                        "server B did not serve {id} within {FOLLOW_LIMIT:?}"
                    ));
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }));
    }
    let mut out = Vec::new();
    for w in waits {
        if let Ok(Some(us)) = w.await {
            out.push(us);
        }
    }
    out.sort_unstable();
    out
}

// --- start-up --------------------------------------------------------------------

/// A start measured: seconds to the "listening" line and to `/readyz` 200,
/// the clusters `/readyz` counts, and VmRSS after `SETTLE`.
struct Start {
    server: Server,
    listening: f64,
    ready: f64,
    clusters: u64,
    rss_kb: u64,
}

async fn start_measured(config: &Path) -> Result<Start, String> {
    let spawned = Instant::now();
    let server = tokio::task::block_in_place(|| Server::start(config))?;
    let listening = spawned.elapsed().as_secs_f64();
    let client = http();
    let url = format!("{}/readyz", server.base);
    let clusters = loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == StatusCode::OK {
                let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
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
    Ok(Start {
        server,
        listening,
        ready,
        clusters,
        rss_kb,
    })
}

// --- figures ---------------------------------------------------------------------

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|&us| f64::from(us) / 1000.0)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} ms"))
}

/// The rows of a table: figure, value, goal, whether it is met.
#[derive(Default)]
struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.0
            .push([figure.into(), value.into(), String::new(), String::new()]);
    }
    /// A figure with its goal: met when `value <= limit`.
    fn goal(&mut self, figure: &str, value: Option<f64>, shown: String, goal: &str, limit: f64) {
        let met = match value {
            Some(v) if v <= limit => "yes",
            Some(_) => "MISSED",
            None => "-",
        };
        self.0.push([figure.into(), shown, goal.into(), met.into()]);
    }
    fn latencies(&mut self, what: &str, sorted: &[u32]) {
        self.row(format!("{what}: requests"), sorted.len().to_string());
        self.row(format!("{what}: p50"), ms(percentile(sorted, 0.50)));
        let p99 = percentile(sorted, 0.99);
        self.row(format!("{what}: p99"), ms(p99));
        self.row(format!("{what}: max"), ms(percentile(sorted, 1.0)));
    }
    fn print(&self) {
        let header = ["figure", "value", "goal", "met"].map(String::from);
        let rows: Vec<&[String; 4]> = std::iter::once(&header).chain(&self.0).collect();
        let w: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = std::io::stdout().lock();
        for (n, r) in rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {:<a$} | {:>b$} | {:<c$} | {:<d$} |",
                r[0],
                r[1],
                r[2],
                r[3],
                a = w[0],
                b = w[1],
                c = w[2],
                d = w[3]
            );
            if n == 0 {
                let dashes: Vec<String> = w.iter().map(|w| "-".repeat(w + 2)).collect();
                let _ = writeln!(out, "|{}|", dashes.join("|"));
            }
        }
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn per_second(n: usize, d: Duration) -> String {
    format!(
        "{:.0} /s ({n} in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

// --- the run -------------------------------------------------------------------

/// The config of a run's server: `base` (ES256), an admin client, `more`.
fn config(dir: &Path, bearer: &str, more: &str) -> std::path::PathBuf {
    config_file(
        dir,
        &format!(
            "\n[[clusters]]\nid = \"base\"\nalgorithm = \"ES256\"\n\n[[api_clients]]\n\
             name = \"bench\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nadmin = true\n{more}",
            token_sha256(bearer)
        ),
    )
}

fn run(args: &Args) -> i32 {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let errors = Arc::new(Errors::default());
    let mut table = Table::default();
    let mut server_lines = Vec::new();
    eprintln!(
        "clusters: {} (commit {commit}), {cores} cores",
        support::BIN
    );

    let result = runtime.block_on(async {
        let bearer = uuid::Uuid::new_v4().simple().to_string();
        let shared = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_a = config(shared.path(), &bearer, "");
        let a = Server::start(&config_a)?;
        let b = Server::start(&config_a)?;
        eprintln!(
            "clusters: A at {} (pid {}), B at {} (pid {})",
            a.base, a.pid, b.base, b.pid
        );

        // 1 and 3: the ES256 storm, the probes and server B.
        let probes = Probes::start(
            format!("{}/c/base/openid/v1/jwks", a.base),
            args.probes,
            Duration::from_millis(args.probe_every_ms),
            errors.clone(),
        );
        tokio::time::sleep(Duration::from_secs(args.baseline_seconds)).await;
        let storm_start = Instant::now();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let followers = tokio::spawn(follow_on(
            a.base.clone(),
            b.base.clone(),
            rx,
            errors.clone(),
        ));
        eprintln!(
            "clusters: creating {} ES256 clusters, {} at a time",
            args.creates, args.creators
        );
        let storm = create_all(
            &a.base,
            &bearer,
            Batch {
                prefix: "es",
                algorithm: "ES256",
                count: args.creates,
            },
            args.creators,
            Some((args.follow_every, tx)),
            &errors,
        )
        .await;
        let storm_end = Instant::now();
        let follows = followers.await.unwrap_or_default();
        server_lines.extend(b.stop(&errors));

        // 2: RS256.
        let rsa_start = Instant::now();
        let rsa = if args.rsa > 0 {
            eprintln!(
                "clusters: creating {} RS256 clusters, {} at a time",
                args.rsa, args.creators
            );
            Some(
                create_all(
                    &a.base,
                    &bearer,
                    Batch {
                        prefix: "rs",
                        algorithm: "RS256",
                        count: args.rsa,
                    },
                    args.creators,
                    None,
                    &errors,
                )
                .await,
            )
        } else {
            None
        };
        let rsa_end = Instant::now();
        let samples = probes.finish();
        let a_rss = rss_kb(a.pid).unwrap_or(0);
        server_lines.extend(a.stop(&errors));

        let baseline = window(
            &samples,
            storm_start - Duration::from_secs(args.baseline_seconds),
            storm_start,
        );
        let during = window(&samples, storm_start, storm_end);
        table.row("cores", cores.to_string());
        table.row("creators (requests in flight)", args.creators.to_string());
        table.row(
            "JWKS probe loops",
            format!(
                "{}, one request per {} ms at most",
                args.probes, args.probe_every_ms
            ),
        );
        table.row("1. ES256 creates", per_second(args.creates, storm));
        table.latencies("1. JWKS of base before the storm", &baseline);
        table.row(
            "1. JWKS during the storm: requests",
            during.len().to_string(),
        );
        table.row(
            "1. JWKS during the storm: p50",
            ms(percentile(&during, 0.5)),
        );
        let p99 = percentile(&during, 0.99);
        table.goal("1. JWKS during the storm: p99", p99, ms(p99), "< 5 ms", 5.0);
        table.row(
            "1. JWKS during the storm: max",
            ms(percentile(&during, 1.0)),
        );
        if let Some(rsa) = rsa {
            let during = window(&samples, rsa_start, rsa_end);
            table.row("2. RS256 creates", per_second(args.rsa, rsa));
            table.row(
                "2. JWKS during RS256 creates: requests",
                during.len().to_string(),
            );
            table.row(
                "2. JWKS during RS256 creates: p50",
                ms(percentile(&during, 0.5)),
            );
            let p99 = percentile(&during, 0.99);
            table.goal(
                "2. JWKS during RS256 creates: p99",
                p99,
                ms(p99),
                "< 5 ms",
                5.0,
            );
            table.row(
                "2. JWKS during RS256 creates: max",
                ms(percentile(&during, 1.0)),
            );
        }
        table.row("3. creates followed on B", follows.len().to_string());
        table.row("3. A's 201 to B's 200: p50", ms(percentile(&follows, 0.5)));
        table.row("3. A's 201 to B's 200: p99", ms(percentile(&follows, 0.99)));
        let max = percentile(&follows, 1.0);
        table.goal(
            "3. A's 201 to B's 200: max",
            max,
            ms(max),
            "< 1000 ms",
            1000.0,
        );
        table.row(
            format!("RSS of A with {} clusters", 1 + args.creates + args.rsa),
            format!("{:.1} MB", mb(a_rss)),
        );
        drop(shared);

        // 4: start-up and memory with many clusters, at run time and from the file.
        if args.runtime > 0 {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let config_r = config(dir.path(), &bearer, "");
            let r = Server::start(&config_r)?;
            eprintln!(
                "clusters: creating {} ES256 clusters for the restart",
                args.runtime
            );
            let took = create_all(
                &r.base,
                &bearer,
                Batch {
                    prefix: "rt",
                    algorithm: "ES256",
                    count: args.runtime,
                },
                args.creators,
                None,
                &errors,
            )
            .await;
            let rss_before = rss_kb(r.pid).unwrap_or(0);
            server_lines.extend(r.stop(&errors));
            let again = start_measured(&config_r).await?;
            table.row("4. runtime: ES256 creates", per_second(args.runtime, took));
            table.row(
                "4. runtime: RSS before the restart",
                format!("{:.1} MB", mb(rss_before)),
            );
            start_rows(&mut table, "4. runtime", &again, 1 + args.runtime);
            server_lines.extend(again.server.stop(&errors));
            drop(dir);

            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let tables: String = (0..args.runtime)
                .map(|n| format!("\n[[clusters]]\nid = \"f-{n:05}\"\nalgorithm = \"ES256\"\n"))
                .collect();
            let config_f = config(dir.path(), &bearer, &tables);
            eprintln!(
                "clusters: starting with {} clusters in the config file",
                args.runtime
            );
            let first = start_measured(&config_f).await?;
            table.row(
                "4. file: first start (keys made): ready",
                format!("{:.2} s", first.ready),
            );
            server_lines.extend(first.server.stop(&errors));
            let again = start_measured(&config_f).await?;
            start_rows(&mut table, "4. file", &again, 1 + args.runtime);
            server_lines.extend(again.server.stop(&errors));
        }
        Ok::<(), String>(())
    });
    drop(runtime);

    println!(
        "\nclusters: workload-issuer {commit}, {cores} cores, {} ES256 + {} RS256 creates, {} at run time\n",
        args.creates, args.rsa, args.runtime
    );
    table.print();
    let mut code = 0;
    if let Err(e) = result {
        println!("\nclusters: the run stopped: {e}");
        code = 1;
    }
    let (total, first) = std::mem::take(&mut *errors.0.lock().unwrap());
    if total > 0 {
        println!("\nclusters: {total} errors; the first:");
        for e in first {
            println!("  {e}");
        }
        code = 1;
    }
    if !server_lines.is_empty() {
        println!(
            "\nserver WARN/ERROR lines ({}; the first 10):",
            server_lines.len()
        );
        for line in server_lines.iter().take(10) {
            println!("  {}", line.chars().take(300).collect::<String>());
        }
    }
    code
}

/// The rows of a measured start with `expected` clusters.
fn start_rows(table: &mut Table, what: &str, start: &Start, expected: usize) {
    table.row(
        format!("{what}: clusters served after restart"),
        format!("{} of {expected}", start.clusters),
    );
    table.row(
        format!("{what}: spawn to listening"),
        format!("{:.2} s", start.listening),
    );
    table.goal(
        &format!("{what}: spawn to /readyz 200"),
        Some(start.ready),
        format!("{:.2} s", start.ready),
        "< 2 s",
        2.0,
    );
    let rss = mb(start.rss_kb);
    table.goal(
        &format!("{what}: idle RSS after ready + 1 s"),
        Some(rss),
        format!("{rss:.1} MB"),
        "< 60 MB",
        60.0,
    );
}
