//! `workload-issuer agent`: the metadata-server pattern, a local API on a
//! Unix socket. `GET /v1/token?audience=A` answers the configured
//! identity's token for that audience, cached per audience, renewed at 80 %
//! of its life, and served marked stale while the issuer is down until it
//! expires.
//!
//! Owns the cache and the socket's routes. Mints through `identity`; imports
//! nothing of the server side (axum here is the agent's own small server)
//! and nothing of clap: `cli` fills `AgentOptions`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::identity::{Identity, IdentityOptions};
use super::renewal::{Backoff, MIN_RENEWAL_INTERVAL};
use super::signal::Stop;
use super::socket::bind_socket;
use super::{fail, ClientError, Issued};

/// What `agent` is asked to do.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub identity: IdentityOptions,
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// The socket's file mode.
    pub socket_mode: u32,
}

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
                    for warning in &issued.warnings {
                        tracing::warn!(audience, "the issuer warns: {warning}");
                    }
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

/// `workload-issuer agent`: serves until SIGTERM or SIGINT, then removes
/// the socket.
pub async fn run(options: AgentOptions) -> ExitCode {
    let identity = match Identity::new(&options.identity) {
        Ok(i) => Arc::new(i),
        Err(e) => return fail(&e),
    };
    let mut stop = match Stop::listen() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let listener = match bind_socket(&options.socket, options.socket_mode) {
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
    tracing::info!(socket = %options.socket.display(), "agent listening: GET /v1/token?audience=<audience>");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let name = stop.wait().await;
            tracing::info!("{name}: stopping; the socket is removed");
        })
        .await;
    let _ = std::fs::remove_file(&options.socket);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&ClientError::Input(format!("serving the socket: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn issued(life: Duration, since: Instant) -> Issued {
        crate::client::mint::issued_for_tests(life, since)
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
}
