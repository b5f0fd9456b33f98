//! A bounded soak test of the real server binary, printing figures.
//!
//! Starts `workload-issuer serve` as a child process (two clusters, `demo`
//! RS256 and `edge` ES256, and one API client known by the SHA-256 of a random
//! token), then runs N concurrent clients for a fixed time. Each client mints
//! tokens through the TokenRequest API (alternating clusters, random
//! namespaces, service accounts, audiences and lifetimes, some bound to a pod)
//! and, every few mints, fetches that cluster's JWKS (half of the time with
//! `If-None-Match`, to exercise 304s) and verifies every token it minted since
//! against it, as a relying party does: signature, `iss`, `aud`, `sub`, the
//! `kubernetes.io` claim, `exp`, `iat`, `nbf`, `jti`. The server's resident
//! memory is sampled every second.
//!
//!     cargo bench --bench soak                             # 30 s, 64 clients
//!     cargo bench --bench soak -- --seconds 5 --clients 16
//!
//! Not a criterion benchmark: `cargo bench` passes `--bench` (and a filter,
//! when one is given), which is ignored, so plain `cargo bench` runs the soak
//! on its defaults. Exits 1 on any error (a transport error, an answer other
//! than 2xx or 304, an unclean server exit), any failed verification, or
//! memory that grew by more than 20 % and more than 10 MB from the warm-up
//! sample to the end; 2 on arguments it does not take.
//!
//! The server process, its config file and the request paths come from the
//! support the integration tests use (`tests/support`).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[path = "../tests/support/mod.rs"]
mod support;

use support::{api_client, config_file, token_path, Spawned, BIN, CLUSTERS};
/// A client fetches a cluster's JWKS (and verifies what it minted there)
/// once it holds this many unverified tokens of that cluster.
const VERIFY_EVERY: usize = 4;
/// The warm-up sample, in seconds after the load starts (half the run when
/// the run is shorter than twice this).
const WARM_UP_SECONDS: u64 = 5;
/// Memory is "flat" unless it grew by more than both of these.
const RSS_GROWTH_LIMIT_RATIO: f64 = 0.20;
const RSS_GROWTH_LIMIT_KB: u64 = 10 * 1024;

const NAMESPACES: &[&str] = &["ws-1234", "ci", "builds", "team-a", "prod"];
const SERVICE_ACCOUNTS: &[&str] = &["default", "deployer", "web", "batch.worker"];
const AUDIENCES: &[&str] = &[
    "sts.amazonaws.com",
    "api://AzureADTokenExchange",
    "https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/soak",
    "vault",
];
const LIFETIMES: &[u64] = &[600, 3600, 7200];

fn main() {
    let args = Args::parse();
    if !args.filter.is_empty() {
        eprintln!("soak: ignoring the filter {:?}", args.filter);
    }
    // Everything that must be cleaned up (the server process, the temporary
    // directory) lives inside run() and is dropped before exit() here, which
    // runs no destructors.
    let code = run(&args);
    std::process::exit(code);
}

/// A bounded soak test of the workload-issuer binary: prints figures; exits
/// 1 on any error, failed verification or memory growth.
#[derive(Parser)]
#[command(bin_name = "cargo bench --bench soak --")]
struct Args {
    /// How long the load runs, in seconds.
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// How many clients run at once.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    clients: usize,
    /// What `cargo bench` passes to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// The filter of `cargo bench FILTER`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

// --- the server process ------------------------------------------------------

/// What the server wrote to stderr, tallied line by line as the support's
/// reader drains the pipe until the process ends.
#[derive(Default)]
struct ServerLog {
    lines: u64,
    warnings: u64,
    errors: u64,
    /// The first WARN and ERROR lines.
    notable: Vec<String>,
}

impl ServerLog {
    fn record(&mut self, line: &str) {
        self.lines += 1;
        let level = line.split_whitespace().nth(1).unwrap_or("");
        match level {
            "WARN" => self.warnings += 1,
            "ERROR" => self.errors += 1,
            _ => return,
        }
        if self.notable.len() < 10 {
            self.notable.push(line.to_owned());
        }
    }
}

/// The server child process (killed when dropped, so a panic or an early
/// return never leaves it running) and its log.
struct Server {
    process: Spawned,
    pid: u32,
    base: String,
    log: Arc<Mutex<ServerLog>>,
}

impl Server {
    /// Starts `serve` on a free port (the port is taken from a listener bound
    /// and dropped just before, so the public URL can name it). Retries on
    /// another port if the server exits before listening (the port was taken
    /// in between).
    fn start(config: &Path) -> Result<Server, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot find a free port: {e}"))?
                .port();
            match Server::start_on(config, port) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_on(config: &Path, port: u16) -> Result<Server, String> {
        let listen = format!("127.0.0.1:{port}");
        let base = format!("http://{listen}");
        let config = config.to_str().ok_or("the config path is not UTF-8")?;
        let log: Arc<Mutex<ServerLog>> = Arc::default();
        let tally = log.clone();
        let (process, addr) = support::spawn_serve(
            &[
                "--config",
                config,
                "--listen",
                &listen,
                "--public-url",
                &base,
            ],
            &[],
            move |line| tally.lock().unwrap().record(line),
        )?;
        if addr != listen {
            return Err(format!("the server listens on {addr}, not on {listen}"));
        }
        Ok(Server {
            pid: process.id(),
            process,
            base,
            log,
        })
    }
}

/// The number of a `Name:` line of /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident memory in kB (VmRSS).
fn rss_kb(pid: u32) -> Option<u64> {
    proc_status(pid, "VmRSS")
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

// --- tallies shared by the clients ------------------------------------------------

/// A count of events, and the first distinct kinds with an example each.
#[derive(Default)]
struct Tally {
    total: AtomicU64,
    kinds: Mutex<Vec<(String, u64, String)>>,
}

impl Tally {
    const MAX_KINDS: usize = 32;

    fn add(&self, kind: impl Into<String>, example: impl Into<String>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let kind = kind.into();
        let mut kinds = self.kinds.lock().unwrap();
        if let Some(k) = kinds.iter_mut().find(|k| k.0 == kind) {
            k.1 += 1;
        } else if kinds.len() < Self::MAX_KINDS {
            kinds.push((kind, 1, example.into()));
        } else if let Some(k) = kinds.iter_mut().find(|k| k.0 == "(other kinds)") {
            k.1 += 1;
        } else {
            kinds.push(("(other kinds)".into(), 1, String::new()));
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn print(&self, what: &str, first: usize) {
        let kinds = self.kinds.lock().unwrap();
        if kinds.is_empty() {
            return;
        }
        println!(
            "{what}: {} in {} kind(s); the first {}:",
            self.total(),
            kinds.len(),
            first.min(kinds.len())
        );
        for (kind, n, example) in kinds.iter().take(first) {
            println!("  {n:>8} x {kind}");
            if !example.is_empty() && example != kind {
                println!("             e.g. {}", truncate(example, 400));
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Running totals for the per-second progress line.
#[derive(Default)]
struct Progress {
    mints: AtomicU64,
    jwks: AtomicU64,
}

struct Cluster {
    id: &'static str,
    alg: Algorithm,
    key_alg: KeyAlgorithm,
    issuer: String,
    jwks_url: String,
}

struct Ctx {
    http: reqwest::Client,
    /// The server's base URL, below which the token paths are.
    base: String,
    bearer: String,
    clusters: [Cluster; 2],
    errors: Tally,
    failed: Tally,
    progress: Progress,
    /// Set by the memory sampler when the server process is gone: the
    /// clients stop instead of counting refused connections until the end.
    server_gone: AtomicBool,
}

impl Ctx {
    fn error(&self, kind: String, example: String) {
        self.errors.add(kind, example);
    }

    /// A transport error: counted, then a short pause, so a client does not
    /// spin on a server that refuses connections.
    async fn transport_error(&self, kind: String, example: String) {
        self.errors.add(kind, example);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn server_gone(&self) -> bool {
        self.server_gone.load(Ordering::Relaxed)
    }
}

// --- a client -----------------------------------------------------------------

/// One of `items` (a non-empty constant list), at random.
fn pick<T: Copy>(rng: &mut fastrand::Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

/// A minted token, waiting to be verified against the cluster's JWKS.
struct Minted {
    token: String,
    namespace: &'static str,
    service_account: &'static str,
    audiences: Vec<&'static str>,
    lifetime: u64,
    pod: Option<(String, String)>,
    expiration_timestamp: Option<String>,
    sent_unix: u64,
    received_unix: u64,
}

/// A client's cached copy of one cluster's JWKS.
#[derive(Default)]
struct JwksCache {
    etag: Option<String>,
    keys: HashMap<String, (DecodingKey, Option<KeyAlgorithm>, Option<PublicKeyUse>)>,
    fetches: u64,
    loaded: bool,
}

#[derive(Default)]
struct Stats {
    mints: [u64; 2],
    mint_us: [Vec<u32>; 2],
    jwks_200: u64,
    jwks_304: u64,
    /// Conditional requests answered 200 (the ETag changed, or was ignored).
    conditional_200: u64,
    jwks_us: Vec<u32>,
    verified: u64,
    jtis: Vec<u128>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn client(index: usize, ctx: Arc<Ctx>, deadline: Instant) -> Stats {
    // Seeded from the thread's generator, itself seeded from the system:
    // enough for picking names.
    let mut rng = fastrand::Rng::new();
    let mut stats = Stats::default();
    let mut caches = [JwksCache::default(), JwksCache::default()];
    let mut pending: [Vec<Minted>; 2] = [Vec::new(), Vec::new()];
    let mut iteration = 0usize;
    while Instant::now() < deadline && !ctx.server_gone() {
        let c = (index + iteration) % 2;
        iteration += 1;
        if let Some(m) = mint(&ctx, c, &mut rng, &mut stats).await {
            pending[c].push(m);
        }
        if pending[c].len() >= VERIFY_EVERY {
            fetch_jwks(&ctx, c, &mut caches[c], &mut stats).await;
            verify_pending(&ctx, c, &caches[c], &mut pending[c], &mut stats);
        }
    }
    // What is left: one more fetch per cluster, so every token is verified.
    for c in 0..2 {
        if !pending[c].is_empty() && !ctx.server_gone() {
            fetch_jwks(&ctx, c, &mut caches[c], &mut stats).await;
            verify_pending(&ctx, c, &caches[c], &mut pending[c], &mut stats);
        }
    }
    stats
}

async fn mint(ctx: &Ctx, c: usize, rng: &mut fastrand::Rng, stats: &mut Stats) -> Option<Minted> {
    let cluster = &ctx.clusters[c];
    let namespace = pick(rng, NAMESPACES);
    let service_account = pick(rng, SERVICE_ACCOUNTS);
    let first = rng.usize(..AUDIENCES.len());
    let mut audiences = vec![AUDIENCES[first]];
    if rng.usize(..3) == 0 {
        // A second, different one.
        audiences.push(AUDIENCES[(first + rng.usize(1..AUDIENCES.len())) % AUDIENCES.len()]);
    }
    let lifetime = pick(rng, LIFETIMES);
    let pod = (rng.usize(..4) == 0).then(|| {
        (
            format!("{service_account}-{}", rng.usize(..1000)).replace('.', "-"),
            uuid::Uuid::new_v4().to_string(),
        )
    });
    let mut spec = json!({"audiences": audiences, "expirationSeconds": lifetime});
    if let Some((name, uid)) = &pod {
        spec["boundObjectRef"] =
            json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    });
    let url = format!(
        "{}{}",
        ctx.base,
        token_path(cluster.id, namespace, service_account)
    );
    let what = format!("POST token ({})", cluster.id);
    let sent_unix = unix_now();
    let started = Instant::now();
    let answer = ctx
        .http
        .post(&url)
        .bearer_auth(&ctx.bearer)
        .json(&body)
        .send()
        .await;
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            let chain = workload_issuer::client::error_chain(&e.without_url());
            ctx.transport_error(format!("{what}: {chain}"), url).await;
            return None;
        }
    };
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let chain = workload_issuer::client::error_chain(&e.without_url());
            ctx.transport_error(format!("{what}: reading the body: {chain}"), url)
                .await;
            return None;
        }
    };
    let elapsed = started.elapsed();
    let received_unix = unix_now();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        ctx.error(format!("{what}: {status}"), truncate(&text, 300));
        return None;
    }
    stats.mints[c] += 1;
    stats.mint_us[c].push(micros(elapsed));
    ctx.progress.mints.fetch_add(1, Ordering::Relaxed);
    if status != StatusCode::CREATED {
        ctx.failed.add(
            format!(
                "{}: TokenRequest answered {status}, not 201 Created",
                cluster.id
            ),
            "",
        );
    }
    let answer: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            ctx.failed.add(
                format!("{}: the TokenRequest answer is not JSON", cluster.id),
                format!("{e}: {}", truncate(&String::from_utf8_lossy(&bytes), 200)),
            );
            return None;
        }
    };
    let Some(token) = answer["status"]["token"].as_str() else {
        ctx.failed.add(
            format!("{}: no status.token in the answer", cluster.id),
            truncate(&answer.to_string(), 300),
        );
        return None;
    };
    Some(Minted {
        token: token.to_owned(),
        namespace,
        service_account,
        audiences,
        lifetime,
        pod,
        expiration_timestamp: answer["status"]["expirationTimestamp"]
            .as_str()
            .map(str::to_owned),
        sent_unix,
        received_unix,
    })
}

async fn fetch_jwks(ctx: &Ctx, c: usize, cache: &mut JwksCache, stats: &mut Stats) {
    let cluster = &ctx.clusters[c];
    let what = format!("GET jwks ({})", cluster.id);
    cache.fetches += 1;
    let conditional = cache
        .etag
        .clone()
        .filter(|_| cache.fetches.is_multiple_of(2));
    let mut request = ctx.http.get(&cluster.jwks_url);
    if let Some(etag) = &conditional {
        request = request.header(IF_NONE_MATCH, etag);
    }
    let started = Instant::now();
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let chain = workload_issuer::client::error_chain(&e.without_url());
            ctx.transport_error(format!("{what}: {chain}"), String::new())
                .await;
            return;
        }
    };
    let status = response.status();
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let chain = workload_issuer::client::error_chain(&e.without_url());
            ctx.transport_error(format!("{what}: reading the body: {chain}"), String::new())
                .await;
            return;
        }
    };
    let elapsed = started.elapsed();
    if status == StatusCode::NOT_MODIFIED {
        stats.jwks_304 += 1;
        stats.jwks_us.push(micros(elapsed));
        ctx.progress.jwks.fetch_add(1, Ordering::Relaxed);
        if conditional.is_none() {
            ctx.failed.add(
                format!("{}: 304 for a request without If-None-Match", cluster.id),
                "",
            );
        } else if etag.is_some() && etag != conditional {
            ctx.failed.add(
                format!(
                    "{}: a 304 with another ETag than the one asked for",
                    cluster.id
                ),
                format!("asked {conditional:?}, got {etag:?}"),
            );
        }
        return;
    }
    if !status.is_success() {
        ctx.error(
            format!("{what}: {status}"),
            truncate(&String::from_utf8_lossy(&bytes), 300),
        );
        return;
    }
    stats.jwks_200 += 1;
    stats.jwks_us.push(micros(elapsed));
    ctx.progress.jwks.fetch_add(1, Ordering::Relaxed);
    if conditional.is_some() {
        stats.conditional_200 += 1;
    }
    let set: JwkSet = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            ctx.failed.add(
                format!("{}: the JWKS does not parse as a JWK set", cluster.id),
                e.to_string(),
            );
            return;
        }
    };
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            ctx.failed
                .add(format!("{}: a JWK without kid", cluster.id), String::new());
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(
                    kid,
                    (
                        key,
                        jwk.common.key_algorithm,
                        jwk.common.public_key_use.clone(),
                    ),
                );
            }
            Err(e) => ctx.failed.add(
                format!("{}: a JWK jsonwebtoken cannot use", cluster.id),
                e.to_string(),
            ),
        }
    }
    if etag.is_none() {
        ctx.failed.add(
            format!("{}: a JWKS without ETag", cluster.id),
            String::new(),
        );
    }
    cache.etag = etag;
    cache.keys = keys;
    cache.loaded = true;
}

fn verify_pending(
    ctx: &Ctx,
    c: usize,
    cache: &JwksCache,
    pending: &mut Vec<Minted>,
    stats: &mut Stats,
) {
    if !cache.loaded {
        // No JWKS yet (its fetch failed and was counted): keep the tokens
        // for the next fetch.
        return;
    }
    let cluster = &ctx.clusters[c];
    for minted in pending.drain(..) {
        match verify(cluster, cache, &minted) {
            Ok(jti) => {
                stats.verified += 1;
                stats.jtis.push(jti);
            }
            Err((kind, example)) => ctx.failed.add(format!("{}: {kind}", cluster.id), example),
        }
    }
}

/// Verifies one token as a relying party does, with jsonwebtoken and a key
/// from the JWKS; returns its jti (a UUID) or what is wrong.
fn verify(cluster: &Cluster, cache: &JwksCache, m: &Minted) -> Result<u128, (String, String)> {
    let fail = |kind: &str, example: String| (kind.to_owned(), example);
    let header = jsonwebtoken::decode_header(&m.token)
        .map_err(|e| fail("the header does not decode", e.to_string()))?;
    if header.alg != cluster.alg {
        return Err(fail("wrong alg in the header", format!("{:?}", header.alg)));
    }
    if header.typ.as_deref() != Some("JWT") {
        return Err(fail("typ is not JWT", format!("{:?}", header.typ)));
    }
    let kid = header.kid.ok_or_else(|| fail("no kid", String::new()))?;
    let (key, key_alg, key_use) = cache.keys.get(&kid).ok_or_else(|| {
        fail(
            "kid not in the JWKS",
            format!(
                "{kid}; published: {:?}",
                cache.keys.keys().collect::<Vec<_>>()
            ),
        )
    })?;
    if *key_alg != Some(cluster.key_alg) || *key_use != Some(PublicKeyUse::Signature) {
        return Err(fail(
            "the JWK's alg or use is wrong",
            format!("{key_alg:?} {key_use:?}"),
        ));
    }
    let sub = format!(
        "system:serviceaccount:{}:{}",
        m.namespace, m.service_account
    );
    let mut validation = Validation::new(cluster.alg);
    validation.set_issuer(&[&cluster.issuer]);
    validation.set_audience(&m.audiences);
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    validation.sub = Some(sub.clone());
    validation.validate_nbf = true;
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Value>(&m.token, key, &validation)
        .map_err(|e| (format!("jsonwebtoken: {:?}", e.kind()), e.to_string()))?
        .claims;

    let aud: Vec<&str> = claims["aud"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if aud != m.audiences {
        return Err(fail(
            "aud is not the requested audiences",
            format!("{aud:?} != {:?}", m.audiences),
        ));
    }
    if claims["sub"] != sub.as_str() {
        return Err(fail("wrong sub", claims["sub"].to_string()));
    }
    let (exp, iat, nbf) = (
        claims["exp"].as_u64().unwrap_or(0),
        claims["iat"].as_u64().unwrap_or(0),
        claims["nbf"].as_u64().unwrap_or(0),
    );
    if exp <= unix_now() {
        return Err(fail("expired", format!("exp {exp}")));
    }
    if iat + 2 < m.sent_unix || iat > m.received_unix + 2 {
        return Err(fail(
            "iat is not the time of the request",
            format!("iat {iat}, request {}..{}", m.sent_unix, m.received_unix),
        ));
    }
    if nbf != iat {
        return Err(fail("nbf differs from iat", format!("{nbf} != {iat}")));
    }
    if exp != iat + m.lifetime {
        return Err(fail(
            "exp - iat is not the requested expirationSeconds",
            format!("{} != {}", exp.saturating_sub(iat), m.lifetime),
        ));
    }
    let expiration = m
        .expiration_timestamp
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    if expiration != Some(exp) {
        return Err(fail(
            "status.expirationTimestamp is not exp",
            format!("{:?} vs {exp}", m.expiration_timestamp),
        ));
    }
    let k8s = &claims["kubernetes.io"];
    let uid = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!(
            "{}/serviceaccounts/{}/{}",
            cluster.issuer, m.namespace, m.service_account
        )
        .as_bytes(),
    )
    .to_string();
    if k8s["namespace"] != m.namespace
        || k8s["serviceaccount"]["name"] != m.service_account
        || k8s["serviceaccount"]["uid"] != uid.as_str()
    {
        return Err(fail(
            "the kubernetes.io claim does not name the service account",
            k8s.to_string(),
        ));
    }
    match &m.pod {
        Some((name, pod_uid)) => {
            if k8s["pod"]["name"] != name.as_str() || k8s["pod"]["uid"] != pod_uid.as_str() {
                return Err(fail("the bound pod is missing or wrong", k8s.to_string()));
            }
        }
        None => {
            if !k8s["pod"].is_null() {
                return Err(fail("a pod in an unbound token", k8s.to_string()));
            }
        }
    }
    let jti = claims["jti"].as_str().unwrap_or("");
    uuid::Uuid::parse_str(jti)
        .map(|u| u.as_u128())
        .map_err(|_| fail("jti is not a UUID", jti.to_owned()))
}

// --- figures ------------------------------------------------------------------

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

fn latency(samples: &mut [u32]) -> String {
    samples.sort_unstable();
    match (percentile(samples, 0.50), percentile(samples, 0.99)) {
        (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2}"),
        _ => "-".into(),
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

// --- the run ------------------------------------------------------------------

fn run(args: &Args) -> i32 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The API client's bearer token: 122 random bits, in hex.
    let bearer = uuid::Uuid::new_v4().simple().to_string();
    let config = config_file(
        dir.path(),
        &format!("{CLUSTERS}{}", api_client("soak", &bearer)),
    );

    let started = Instant::now();
    let server = match Server::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: {e}");
            return 1;
        }
    };
    let startup = started.elapsed();
    eprintln!(
        "soak: {BIN} (pid {}) listening at {} after {:.2} s; {} clients for {} s",
        server.pid,
        server.base,
        startup.as_secs_f64(),
        args.clients,
        args.seconds
    );

    let clusters = [("demo", Algorithm::RS256), ("edge", Algorithm::ES256)].map(|(id, alg)| {
        let issuer = format!("{}/c/{id}", server.base);
        Cluster {
            id,
            alg,
            key_alg: match alg {
                Algorithm::RS256 => KeyAlgorithm::RS256,
                _ => KeyAlgorithm::ES256,
            },
            jwks_url: format!("{issuer}/openid/v1/jwks"),
            issuer,
        }
    });
    let ctx = Arc::new(Ctx {
        http: workload_issuer::client::http_client(None).expect("an HTTP client"),
        base: server.base.clone(),
        bearer,
        clusters,
        errors: Tally::default(),
        failed: Tally::default(),
        progress: Progress::default(),
        server_gone: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    // Discovery, as a relying party starts: the issuer must be ours and the
    // jwks_uri where we fetch it.
    let discovery_ok = runtime.block_on(async {
        let mut ok = true;
        for cluster in &ctx.clusters {
            let url = format!("{}/.well-known/openid-configuration", cluster.issuer);
            let doc: Result<Value, String> = async {
                let r = ctx.http.get(&url).send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{}", r.status()));
                }
                r.json().await.map_err(|e| e.to_string())
            }
            .await;
            match doc {
                Ok(d)
                    if d["issuer"] == cluster.issuer.as_str()
                        && d["jwks_uri"] == cluster.jwks_url.as_str() => {}
                Ok(d) => {
                    eprintln!(
                        "soak: unexpected discovery document for {}: {d}",
                        cluster.id
                    );
                    ok = false;
                }
                Err(e) => {
                    eprintln!("soak: GET {url}: {e}");
                    ok = false;
                }
            }
        }
        ok
    });
    if !discovery_ok {
        return 1;
    }

    // Memory: a sample now (idle, keys loaded), then every second of the load.
    let idle_kb = rss_kb(server.pid).unwrap_or(0);
    let idle_fds = open_fds(server.pid);
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let deadline = load_start + Duration::from_secs(args.seconds);
    let sampler = {
        let (samples, stop, ctx) = (samples.clone(), stop_sampling.clone(), ctx.clone());
        let pid = server.pid;
        std::thread::spawn(move || {
            let mut second = 0u64;
            let mut last_mints = 0;
            loop {
                let next = load_start + Duration::from_secs(second + 1);
                while Instant::now() < next {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(
                        next.saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
                second += 1;
                let Some(kb) = rss_kb(pid) else {
                    // No VmRSS: the process has exited (or is a zombie).
                    eprintln!("  t={second:>4}s  the server process is gone");
                    ctx.server_gone.store(true, Ordering::Relaxed);
                    return;
                };
                samples
                    .lock()
                    .unwrap()
                    .push((load_start.elapsed().as_secs_f64(), kb));
                let mints = ctx.progress.mints.load(Ordering::Relaxed);
                eprintln!(
                    "  t={second:>4}s  rss {:>8}  mints {:>9} (+{:>6}/s)  jwks {:>8}  errors {}  failed verifications {}",
                    mb(kb),
                    thousands(mints),
                    thousands(mints - last_mints),
                    thousands(ctx.progress.jwks.load(Ordering::Relaxed)),
                    ctx.errors.total(),
                    ctx.failed.total(),
                );
                last_mints = mints;
            }
        })
    };

    let outcome = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| tokio::spawn(client(i, ctx.clone(), deadline)))
            .collect();
        let mut all = Vec::new();
        // Requests time out after 30 s: every client is done well before this.
        let limit = deadline + Duration::from_secs(90);
        for task in tasks {
            let left = limit.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, task).await {
                Ok(Ok(stats)) => all.push(stats),
                Ok(Err(e)) => ctx.error("a client task panicked".into(), e.to_string()),
                Err(_) => ctx.error(
                    "a client task did not finish 90 s after the end".into(),
                    String::new(),
                ),
            }
        }
        all
    });
    let elapsed = load_start.elapsed();
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let end_kb = rss_kb(server.pid);
    let end_fds = open_fds(server.pid);
    let end_threads = proc_status(server.pid, "Threads");
    // Close the clients' connections before stopping the server, so its
    // graceful shutdown has nothing to wait for.
    drop(runtime);
    let ctx = match Arc::try_unwrap(ctx) {
        Ok(ctx) => ctx,
        Err(_) => unreachable!("every client has finished"),
    };
    let Ctx {
        http,
        errors,
        failed,
        ..
    } = ctx;
    drop(http);
    let exit = server.process.terminate(Duration::from_secs(10));
    if let Err(e) = &exit {
        errors.add(format!("server shutdown: {e}"), String::new());
    } else if let Ok(status) = &exit {
        if !status.success() {
            errors.add(
                format!("server exited with {status} on SIGTERM"),
                String::new(),
            );
        }
    }
    let log = std::mem::take(&mut *server.log.lock().unwrap());
    if log.errors > 0 {
        errors.add(
            "ERROR lines in the server log",
            log.notable.first().cloned().unwrap_or_default(),
        );
    }

    // --- merge --------------------------------------------------------------
    let mut total = Stats::default();
    for s in outcome {
        for c in 0..2 {
            total.mints[c] += s.mints[c];
            total.mint_us[c].extend_from_slice(&s.mint_us[c]);
        }
        total.jwks_200 += s.jwks_200;
        total.jwks_304 += s.jwks_304;
        total.conditional_200 += s.conditional_200;
        total.jwks_us.extend_from_slice(&s.jwks_us);
        total.verified += s.verified;
        total.jtis.extend_from_slice(&s.jtis);
    }
    let unique: HashSet<u128> = total.jtis.iter().copied().collect();
    let duplicates = total.jtis.len() - unique.len();
    if duplicates > 0 {
        for _ in 0..duplicates {
            failed.add("a jti seen twice", String::new());
        }
    }

    // --- memory -------------------------------------------------------------
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let warm_at = if args.seconds >= 2 * WARM_UP_SECONDS {
        WARM_UP_SECONDS
    } else {
        (args.seconds / 2).max(1)
    };
    // A server gone before the end has no end figure: the last sample stands
    // in (the run has failed with errors anyway).
    let end_kb = end_kb.or(samples.last().map(|s| s.1)).unwrap_or(idle_kb);
    let warm = samples
        .get(usize::try_from(warm_at).unwrap_or(usize::MAX) - 1)
        .map_or(end_kb, |s| s.1);
    let max_kb = samples
        .iter()
        .map(|s| s.1)
        .chain([end_kb, idle_kb])
        .max()
        .unwrap_or(0);
    let growth = end_kb as i64 - warm as i64;
    let growth_pct = if warm > 0 {
        100.0 * growth as f64 / warm as f64
    } else {
        0.0
    };
    let memory_flat = !(growth > 0
        && growth as f64 > RSS_GROWTH_LIMIT_RATIO * warm as f64
        && growth as u64 > RSS_GROWTH_LIMIT_KB);

    // --- the table ----------------------------------------------------------
    let secs = elapsed.as_secs_f64();
    let mints = total.mints[0] + total.mints[1];
    let mut all_mint_us = [total.mint_us[0].clone(), total.mint_us[1].clone()].concat();
    let rows: Vec<(String, String)> = vec![
        ("duration".into(), format!("{secs:.2} s")),
        ("clients".into(), args.clients.to_string()),
        (
            "server startup".into(),
            format!("{:.2} s", startup.as_secs_f64()),
        ),
        ("mints demo (RS256)".into(), thousands(total.mints[0])),
        ("mints edge (ES256)".into(), thousands(total.mints[1])),
        ("mints total".into(), thousands(mints)),
        (
            "mints/s".into(),
            thousands((mints as f64 / secs).round() as u64),
        ),
        ("JWKS fetches 200".into(), thousands(total.jwks_200)),
        ("JWKS fetches 304".into(), thousands(total.jwks_304)),
        (
            "JWKS If-None-Match answered 200".into(),
            thousands(total.conditional_200),
        ),
        ("tokens verified".into(), thousands(total.verified)),
        ("errors".into(), thousands(errors.total())),
        ("failed verifications".into(), thousands(failed.total())),
        (
            "mint RS256 p50 / p99 ms".into(),
            latency(&mut total.mint_us[0]),
        ),
        (
            "mint ES256 p50 / p99 ms".into(),
            latency(&mut total.mint_us[1]),
        ),
        ("mint (both) p50 / p99 ms".into(), latency(&mut all_mint_us)),
        ("JWKS p50 / p99 ms".into(), latency(&mut total.jwks_us)),
        ("RSS idle (before load)".into(), mb(idle_kb)),
        (format!("RSS at warm-up (t={warm_at} s)"), mb(warm)),
        ("RSS at end".into(), mb(end_kb)),
        ("RSS max".into(), mb(max_kb)),
        (
            "RSS growth warm-up -> end".into(),
            format!("{:+.1} MB ({growth_pct:+.1} %)", growth as f64 / 1024.0),
        ),
        (
            "open fds idle / end".into(),
            format!(
                "{} / {}",
                idle_fds.map_or("-".into(), |n| n.to_string()),
                end_fds.map_or("-".into(), |n| n.to_string())
            ),
        ),
        (
            "server threads at end".into(),
            end_threads.map_or("-".into(), |n| n.to_string()),
        ),
        (
            "server log lines (WARN / ERROR)".into(),
            format!(
                "{} ({} / {})",
                thousands(log.lines),
                log.warnings,
                log.errors
            ),
        ),
        (
            "server exit on SIGTERM".into(),
            match &exit {
                Ok(s) => s.to_string(),
                Err(e) => e.clone(),
            },
        ),
    ];
    let series: Vec<String> = samples
        .iter()
        .map(|(_, kb)| format!("{:.1}", *kb as f64 / 1024.0))
        .collect();

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nsoak: workload-issuer, clusters demo (RS256) and edge (ES256), {} clients, {} s\n",
        args.clients, args.seconds
    );
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vwidth = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let _ = writeln!(out, "| {:<width$} | {:>vwidth$} |", "figure", "value");
    let _ = writeln!(
        out,
        "|{}|{}|",
        "-".repeat(width + 2),
        "-".repeat(vwidth + 2)
    );
    for (name, value) in &rows {
        let _ = writeln!(out, "| {name:<width$} | {value:>vwidth$} |");
    }
    let _ = writeln!(out, "\nRSS MB each second: {}", series.join(" "));
    drop(out);
    errors.print("errors", 5);
    failed.print("failed verifications", 5);
    if !log.notable.is_empty() {
        println!("server WARN/ERROR lines (first {}):", log.notable.len());
        for line in &log.notable {
            println!("  {}", truncate(line, 400));
        }
    }

    let mut reasons = Vec::new();
    if errors.total() > 0 {
        reasons.push(format!("{} errors", errors.total()));
    }
    if failed.total() > 0 {
        reasons.push(format!("{} failed verifications", failed.total()));
    }
    if !memory_flat {
        reasons.push(format!(
            "memory not flat: {:+.1} MB ({growth_pct:+.1} %) from t={warm_at} s to the end",
            growth as f64 / 1024.0
        ));
    }
    if mints == 0 {
        reasons.push("no token was minted".into());
    }
    if reasons.is_empty() {
        println!(
            "\nsoak: PASS (no errors, every token verified, memory flat: growth within {:.0} % or {} MB)",
            RSS_GROWTH_LIMIT_RATIO * 100.0,
            RSS_GROWTH_LIMIT_KB / 1024
        );
        0
    } else {
        println!("\nsoak: FAIL: {}", reasons.join("; "));
        1
    }
    // `dir` is dropped here.
}
