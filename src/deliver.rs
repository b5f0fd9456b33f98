//! Delivering tokens to workloads, the three ways the IETF practices deck
//! names: a file rewritten before expiry (`token --refresh`), environment
//! variables (`token --format env`), and a local API (`agent`).
//!
//! A client of the issuer's API through `client`; nothing of the server side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::cli::{AgentArgs, IdentityArgs, TokenArgs};
use crate::client::{self, ClientError, Issued, MintParams};

/// The workload identity to mint for, with a client to mint through.
pub struct Identity {
    client: reqwest::Client,
    params: MintParams,
    token_file: PathBuf,
    pub ca_pem: Option<Vec<u8>>,
}

impl Identity {
    pub fn from_args(args: &IdentityArgs) -> Result<Identity, ClientError> {
        url::Url::parse(&args.server)
            .ok()
            .filter(|u| u.scheme() == "https" || u.scheme() == "http")
            .ok_or_else(|| {
                ClientError::Input(format!("--server: {:?} is not an http(s) URL", args.server))
            })?;
        let ca_pem = match &args.ca_file {
            Some(p) => Some(client::read_flag_file("--ca-file", p)?),
            None => None,
        };
        let identity = Identity {
            client: client::http_client(ca_pem.as_deref())?,
            params: MintParams {
                server: args.server.clone(),
                bearer: String::new(),
                namespace: args.namespace.clone(),
                service_account: args.service_account.clone(),
                audiences: Vec::new(),
                duration: args.duration,
                bound_pod: args.bound_pod.clone(),
            },
            token_file: args.token_file.clone(),
            ca_pem,
        };
        // Fail early on an unreadable bearer file.
        identity.bearer()?;
        Ok(identity)
    }

    /// Re-read on every mint, so a rotated API token is picked up.
    fn bearer(&self) -> Result<String, ClientError> {
        let text = client::read_flag_file("--token-file", &self.token_file)?;
        let token = String::from_utf8_lossy(&text).trim().to_owned();
        if token.is_empty() {
            return Err(ClientError::Input(format!(
                "--token-file {}: the file is empty",
                self.token_file.display()
            )));
        }
        Ok(token)
    }

    pub async fn mint(&self, audiences: &[String]) -> Result<Issued, ClientError> {
        let mut params = self.params.clone();
        params.bearer = self.bearer()?;
        params.audiences = audiences.to_vec();
        let issued = client::mint(&self.client, &params).await?;
        if let Some(warning) = issued.clock_warning() {
            tracing::warn!("{warning}");
        }
        Ok(issued)
    }
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ClientError::Input(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// `workload-issuer token`.
pub async fn token(args: TokenArgs) -> ExitCode {
    let identity = match Identity::from_args(&args.identity) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    if args.refresh {
        return refresh(&identity, &args).await;
    }
    let issued = match identity.mint(&args.audiences).await {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    match write_out(&identity, &args, &issued) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn write_out(identity: &Identity, args: &TokenArgs, issued: &Issued) -> Result<(), ClientError> {
    let bytes = client::render(
        args.format,
        issued,
        &args.identity.server,
        identity.ca_pem.as_deref(),
    )?;
    match &args.out {
        Some(path) => {
            // A raw token file holds the token alone, as kubelet's projected
            // token files do: SDKs send AWS_WEB_IDENTITY_TOKEN_FILE and
            // AZURE_FEDERATED_TOKEN_FILE verbatim, newline included.
            let bytes = match args.format {
                client::Format::Raw => bytes.trim_ascii_end(),
                _ => &bytes[..],
            };
            crate::fsutil::write_atomic(path, bytes, args.mode)
                .map_err(|e| ClientError::Input(format!("--out {}: {e}", path.display())))
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|e| ClientError::Input(format!("standard output: {e}")))
        }
    }
}

/// Up to 5 % of `life`, so a fleet started together does not renew together.
fn jitter(life: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let r = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..=1
    life.mul_f64(0.05 * r)
}

/// No token is renewed sooner than this after it was minted, however short
/// it lives: a token too short to renew in time must not become a tight loop.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Delays between attempts that failed, or that gave a token too short to
/// renew in time: 1 s, doubling to 30 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// When `token --refresh` mints again after writing `issued`.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// At 80 % of the token's life less `jitter`, this long from now.
    In(Duration),
    /// The token lives too short for that: after this backoff instead.
    TooShort(Duration),
}

fn renewal(issued: &Issued, jitter: Duration, now: Instant, backoff: &mut Backoff) -> Renewal {
    let at = issued.renew_at().checked_sub(jitter).unwrap_or(now);
    let wait = at.saturating_duration_since(now);
    if wait < MIN_RENEWAL_INTERVAL {
        Renewal::TooShort(backoff.step().max(MIN_RENEWAL_INTERVAL))
    } else {
        backoff.reset();
        Renewal::In(wait)
    }
}

/// A duration in whole seconds, to log.
fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// Keeps `--out` holding a valid token: rewritten at 80 % of each token's
/// life (less a little jitter); on failure the old file stays untouched and
/// the request is retried with backoff. Ends cleanly on SIGTERM or SIGINT.
async fn refresh(identity: &Identity, args: &TokenArgs) -> ExitCode {
    let Some(out) = &args.out else {
        return fail(&ClientError::Input("--refresh needs --out".into()));
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            return fail(&ClientError::Input(format!(
                "cannot listen for SIGTERM: {e}"
            )))
        }
    };
    let mut backoff = Backoff::new();
    let mut written: Option<Issued> = None;
    loop {
        let wait = match identity.mint(&args.audiences).await {
            Ok(issued) => match write_out(identity, args, &issued) {
                Ok(()) => {
                    let wait = match renewal(
                        &issued,
                        jitter(issued.life),
                        Instant::now(),
                        &mut backoff,
                    ) {
                        Renewal::In(wait) => wait,
                        Renewal::TooShort(wait) => {
                            tracing::warn!(
                                life = %humantime::format_duration(issued.life),
                                "the token lives too short to renew before it expires; minting again after a backoff"
                            );
                            wait
                        }
                    };
                    tracing::info!(
                        out = %out.display(),
                        expires = %humantime::format_rfc3339_seconds(issued.expires_at),
                        renews_in = %seconds(wait),
                        "token written"
                    );
                    written = Some(issued);
                    wait
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the token; the old file is left as it was");
                    backoff.step()
                }
            },
            Err(e) => {
                let wait = backoff.step();
                let left = written
                    .as_ref()
                    .map(|w| w.expires().saturating_duration_since(Instant::now()));
                tracing::warn!(
                    error = %e,
                    retry_in = %seconds(wait),
                    current_token_valid_for = %left.map(|d| seconds(d).to_string()).unwrap_or_else(|| "-".into()),
                    "renewal failed; the old file is left as it was"
                );
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping; the token file stays");
                return ExitCode::SUCCESS;
            }
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

// ---- the local API ---------------------------------------------------------

/// Most audiences the agent keeps tokens for; beyond it the stalest goes.
const MAX_CACHED_AUDIENCES: usize = 64;

/// What the agent holds for one audience.
struct Held {
    issued: Option<Issued>,
    /// After a renewal failed while the token was still good: not before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// What a request for one audience gets, by what is held.
#[derive(Debug)]
enum Plan<'a> {
    /// The held token, with most of its life left.
    Cached(&'a Issued),
    /// The held token, unexpired, while renewals fail and back off.
    Stale(&'a Issued),
    /// A renewal: nothing is held, it has expired, or 80 % of its life is gone.
    Renew,
}

impl Held {
    fn new() -> Held {
        Held {
            issued: None,
            retry_at: None,
            backoff: Backoff::new(),
        }
    }

    fn plan(&self, now: Instant) -> Plan<'_> {
        let Some(issued) = self.issued.as_ref().filter(|i| now < i.expires()) else {
            return Plan::Renew;
        };
        match self.retry_at {
            Some(at) if now < at => Plan::Stale(issued),
            Some(_) => Plan::Renew,
            None if now < issued.renew_at().max(issued.since + MIN_RENEWAL_INTERVAL) => {
                Plan::Cached(issued)
            }
            None => Plan::Renew,
        }
    }

    fn renewed(&mut self, issued: Issued) {
        self.issued = Some(issued);
        self.retry_at = None;
        self.backoff.reset();
    }

    /// A renewal failed at `now` with an error worth retrying: the held
    /// token, while unexpired, is served until the next try.
    fn failed(&mut self, now: Instant) -> Option<&Issued> {
        self.retry_at = Some(now + self.backoff.step());
        self.issued.as_ref().filter(|i| now < i.expires())
    }
}

type Slot = Arc<tokio::sync::Mutex<Held>>;

/// A token to answer, and whether its renewal failed.
struct Served {
    issued: Issued,
    stale: bool,
}

#[derive(Clone)]
struct Agent {
    identity: Arc<Identity>,
    cache: Arc<std::sync::Mutex<HashMap<String, (Slot, Instant)>>>,
}

impl Agent {
    fn slot(&self, audience: &str) -> Slot {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !cache.contains_key(audience) && cache.len() >= MAX_CACHED_AUDIENCES {
            if let Some(stalest) = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&stalest);
            }
        }
        let entry = cache
            .entry(audience.to_owned())
            .or_insert_with(|| (Arc::new(tokio::sync::Mutex::new(Held::new())), now));
        entry.1 = now;
        entry.0.clone()
    }

    /// The cached token for `audience`, renewed once 80 % of its life is
    /// gone. Concurrent requests for one audience share one renewal. While
    /// the issuer is down (or busy) the cached token is served until it
    /// expires, marked stale, and renewal is retried with backoff.
    async fn token(&self, audience: &str) -> Result<Served, ClientError> {
        let slot = self.slot(audience);
        let mut held = slot.lock().await;
        let (issued, stale) = match held.plan(Instant::now()) {
            Plan::Cached(issued) => (issued, false),
            Plan::Stale(issued) => (issued, true),
            Plan::Renew => match self.identity.mint(&[audience.to_owned()]).await {
                Ok(issued) => {
                    held.renewed(issued.clone());
                    return Ok(Served {
                        issued,
                        stale: false,
                    });
                }
                Err(e) if e.is_transient() => match held.failed(Instant::now()) {
                    Some(issued) => {
                        tracing::warn!(
                            error = %e,
                            audience,
                            expires = %humantime::format_rfc3339_seconds(issued.expires_at),
                            "renewal failed; serving the cached token, marked stale, until it expires"
                        );
                        (issued, true)
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            },
        };
        Ok(Served {
            issued: issued.clone(),
            stale,
        })
    }
}

fn agent_error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": status.canonical_reason(), "message": message })),
    )
        .into_response()
}

async fn get_token(
    State(agent): State<Agent>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let audiences: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "audience")
        .map(|(_, v)| v.as_str())
        .collect();
    let audience = match audiences.as_slice() {
        [one] => *one,
        [] => {
            return agent_error(
                StatusCode::BAD_REQUEST,
                "the audience query parameter is required: GET /v1/token?audience=<audience>"
                    .into(),
            )
        }
        _ => {
            return agent_error(
                StatusCode::BAD_REQUEST,
                "give exactly one audience parameter".into(),
            )
        }
    };
    if let Err(why) = crate::k8s::names::check_audience(audience) {
        return agent_error(StatusCode::BAD_REQUEST, format!("audience {}", why));
    }
    match agent.token(audience).await {
        Ok(Served { issued, stale }) => {
            let expires = humantime::format_rfc3339_seconds(issued.expires_at).to_string();
            let mut response = (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                    (header::HeaderName::from_static("x-token-expires"), expires),
                ],
                issued.token.clone(),
            )
                .into_response();
            if stale {
                // Counted on the monotonic clock: right even when the
                // workload's wall clock is off.
                let left = issued.expires().saturating_duration_since(Instant::now());
                let value = format!("renewal failed; expires in {}s", left.as_secs());
                if let Ok(value) = header::HeaderValue::from_str(&value) {
                    response
                        .headers_mut()
                        .insert(header::HeaderName::from_static("x-token-stale"), value);
                }
            }
            response
        }
        Err(e @ ClientError::Refused { .. }) => agent_error(StatusCode::BAD_GATEWAY, e.to_string()),
        Err(e) => agent_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Binds `path` with `mode` so that no one else can reach the socket before
/// it has its mode: bound in a fresh 0700 directory beside `path`, given its
/// mode there, then renamed into place. (Bound in `path`'s own directory, it
/// was reachable with the umask's mode until the chmod; a local user watching
/// the directory connected in that window. Setting the umask instead needs
/// `unsafe`.)
fn bind_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, ClientError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let err = |e: std::io::Error| ClientError::Input(format!("--socket {}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ClientError::Input(format!(
                "--socket {}: exists and is not a socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ClientError::Input(format!(
                "--socket {}: another process is listening on it",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(err)?; // a stale socket
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // A random name: one guessed and made beforehand by someone else fails
    // the create instead of being used. Short, as a socket path has 107 bytes.
    let private = dir.join(format!(
        ".agent-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            ClientError::Input(format!(
                "--socket {}: cannot create {} to bind in: {e}",
                path.display(),
                private.display()
            ))
        })?;
    let tmp = private.join("s");
    let placed = (|| {
        let listener = tokio::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let _ = std::fs::remove_dir(&private);
    placed.map_err(err)
}

/// `workload-issuer agent`.
pub async fn agent(args: AgentArgs) -> ExitCode {
    let identity = match Identity::from_args(&args.identity) {
        Ok(i) => Arc::new(i),
        Err(e) => return fail(&e),
    };
    let listener = match bind_socket(&args.socket, args.socket_mode) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let agent = Agent {
        identity,
        cache: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/token", get(get_token))
        .with_state(agent);
    tracing::info!(socket = %args.socket.display(), "agent listening: GET /v1/token?audience=<audience>");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(crate::server::shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&args.socket);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&ClientError::Input(format!("serving the socket: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::SystemTime;

    fn issued(life: Duration, since: Instant) -> Issued {
        Issued {
            token: "a.b.c".into(),
            expires_at: SystemTime::UNIX_EPOCH,
            life,
            since,
            clock_ahead: None,
        }
    }

    #[test]
    fn refresh_renews_at_80_percent_of_the_life_counted_from_the_mint() {
        let since = Instant::now();
        let mut backoff = Backoff::new();
        let token = issued(Duration::from_secs(100), since);
        let later = since + Duration::from_secs(10);
        assert_eq!(
            renewal(&token, Duration::from_secs(2), later, &mut backoff),
            Renewal::In(Duration::from_secs(68))
        );
    }

    #[test]
    fn refresh_waits_at_least_a_second_and_backs_off_on_tokens_too_short_to_renew() {
        let since = Instant::now();
        let mut backoff = Backoff::new();
        let waits: Vec<_> = (0..7)
            .map(|_| {
                renewal(
                    &issued(Duration::ZERO, since),
                    Duration::ZERO,
                    since,
                    &mut backoff,
                )
            })
            .collect();
        let expected = [1, 2, 4, 8, 16, 30, 30].map(|s| Renewal::TooShort(Duration::from_secs(s)));
        assert_eq!(waits, expected);
        // Past the renewal time (a slow write): the same.
        let token = issued(Duration::from_secs(10), since);
        let late = since + Duration::from_secs(20);
        assert_eq!(
            renewal(&token, Duration::ZERO, late, &mut backoff),
            Renewal::TooShort(Duration::from_secs(30))
        );
        // A token that lives long enough ends the backoff.
        let token = issued(Duration::from_secs(10), since);
        assert_eq!(
            renewal(&token, Duration::ZERO, since, &mut backoff),
            Renewal::In(Duration::from_secs(8))
        );
        assert_eq!(backoff.step(), Duration::from_secs(1));
    }

    #[test]
    fn the_agent_serves_a_token_stale_while_renewals_fail_until_it_expires() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut held = Held::new();
        assert!(matches!(held.plan(t0), Plan::Renew));
        held.renewed(issued(Duration::from_secs(100), t0));
        assert!(matches!(held.plan(at(79)), Plan::Cached(_)));
        assert!(matches!(held.plan(at(80)), Plan::Renew));
        // The issuer is down at 80 s: stale until the retry 1 s later...
        assert!(held.failed(at(80)).is_some());
        assert!(matches!(held.plan(at(80)), Plan::Stale(_)));
        assert!(matches!(held.plan(at(81)), Plan::Renew));
        // ...then 2 s, 4 s, 8 s later.
        assert!(held.failed(at(81)).is_some());
        assert!(matches!(held.plan(at(82)), Plan::Stale(_)));
        assert!(matches!(held.plan(at(83)), Plan::Renew));
        assert!(held.failed(at(83)).is_some());
        assert!(matches!(held.plan(at(86)), Plan::Stale(_)));
        assert!(matches!(held.plan(at(87)), Plan::Renew));
        assert!(held.failed(at(97)).is_some());
        assert!(matches!(held.plan(at(99)), Plan::Stale(_)));
        // Expired: never served, whatever the backoff says.
        assert!(matches!(held.plan(at(100)), Plan::Renew));
        assert!(held.failed(at(100)).is_none());
        // Back: fresh again, and the backoff starts over.
        held.renewed(issued(Duration::from_secs(100), at(101)));
        assert!(matches!(held.plan(at(102)), Plan::Cached(_)));
        assert_eq!(held.backoff.step(), Duration::from_secs(1));
    }

    #[test]
    fn the_agent_does_not_renew_within_a_second_of_a_mint() {
        let t0 = Instant::now();
        let mut held = Held::new();
        held.renewed(issued(Duration::from_millis(1100), t0));
        // 80 % of 1.1 s is gone at 0.88 s; the minimum interval holds it to 1 s.
        assert!(matches!(
            held.plan(t0 + Duration::from_millis(950)),
            Plan::Cached(_)
        ));
        assert!(matches!(
            held.plan(t0 + Duration::from_millis(1000)),
            Plan::Renew
        ));
    }

    #[tokio::test]
    async fn the_socket_gets_its_mode_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = bind_socket(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["agent.sock"]);
    }

    #[tokio::test]
    async fn a_socket_in_a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/agent.sock");
        let err = bind_socket(&path, 0o600).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--socket {}: cannot create", path.display())),
            "{err}"
        );
    }
}
