//! Minting through the TokenRequest API (`POST <server>/api/v1/namespaces/
//! <ns>/serviceaccounts/<sa>/token`), and the timing of what comes back:
//! `Issued` keeps a token's life on the local monotonic clock.
//!
//! Owns the request and the reading of the answer (the token, its expiry
//! and the issuer's `Warning` headers). Imports nothing of the server side.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{request_error, unverified_claims, ApiClient, ClientError};

/// What to mint.
#[derive(Clone, Debug)]
pub struct MintParams {
    /// The issuer URL, as a kubeconfig's server.
    pub server: String,
    /// The API client's bearer token; `None` when the HTTP client presents
    /// a client certificate instead.
    pub bearer: Option<String>,
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub duration: Option<Duration>,
    /// Bind the token to this pod (name, uid).
    pub bound_pod: Option<(String, String)>,
}

/// A minted token and its lifetime.
///
/// The schedule is kept on the local monotonic clock, from the token's own
/// lifetime (`exp - iat`): the local wall clock may be hours off the
/// issuer's, and mixing the two renewed a token thousands of times a second
/// (clock ahead) or after it had expired (clock behind).
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    /// The issuer's `status.expirationTimestamp`, on its clock: to show.
    pub expires_at: SystemTime,
    /// How long the token is good for, counted from `since`: `exp - iat`
    /// less 1 s, as `iat` is whole seconds and may be up to 1 s old.
    pub life: Duration,
    /// When the request was sent, on the local monotonic clock. The issuer
    /// stamped `iat` after this, so counting `life` from here is never late.
    pub since: Instant,
    /// How many seconds the local wall clock was ahead of the issuer's when
    /// the answer arrived (negative: behind), by `iat`; `None` without `iat`.
    pub clock_ahead: Option<i64>,
    /// The texts of the answer's `Warning` headers (RFC 9111 §5.5), such as
    /// a lifetime the issuer shortened: for the person who asked.
    pub warnings: Vec<String>,
}

/// How far the clocks may differ before `clock_warning` says so.
const CLOCK_TOLERANCE: i64 = 60;

impl Issued {
    /// The answer to a request sent at `sent` (monotonic), arrived at
    /// `arrived` (local wall clock). A token without numeric `iat` and `exp`
    /// (not one of ours, nor a Kubernetes one) is timed by
    /// `expires_at - arrived`, the best that is left.
    pub fn from_answer(
        token: String,
        expires_at: SystemTime,
        sent: Instant,
        arrived: SystemTime,
    ) -> Issued {
        let claims = unverified_claims(&token);
        let number = |name: &str| {
            claims
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(serde_json::Value::as_f64)
        };
        let (life, clock_ahead) = match (number("iat"), number("exp")) {
            (Some(iat), Some(exp)) => (
                Duration::try_from_secs_f64(exp - iat)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_secs(1)),
                Some((unix_seconds(arrived) - iat).round() as i64),
            ),
            _ => (expires_at.duration_since(arrived).unwrap_or_default(), None),
        };
        Issued {
            token,
            expires_at,
            life,
            since: sent,
            clock_ahead,
            warnings: Vec::new(),
        }
    }

    /// When to renew: at 80 % of the token's life, as kubelet and the DOCA
    /// credential request do.
    pub fn renew_at(&self) -> Instant {
        self.since + self.life.mul_f64(0.8)
    }

    /// When the token has expired, at the latest, on the local monotonic clock.
    pub fn expires(&self) -> Instant {
        self.since + self.life
    }

    /// A warning when the local clock and the issuer's differ by more than a
    /// minute: renewal does not depend on it, but the workload's own checks
    /// of `nbf` and `exp` (and TLS) do.
    pub fn clock_warning(&self) -> Option<String> {
        let ahead = self.clock_ahead?;
        if ahead.abs() <= CLOCK_TOLERANCE {
            return None;
        }
        Some(format!(
            "the local clock is {} {} the issuer's (by the token's iat); \
             renewal is timed on the token's own lifetime, but check the host's time synchronization",
            humantime::format_duration(Duration::from_secs(ahead.unsigned_abs())),
            if ahead > 0 { "ahead of" } else { "behind" }
        ))
    }
}

/// Seconds since the epoch, negative before it (a badly set clock can be).
fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[derive(Deserialize)]
struct Answer {
    status: Option<AnswerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
}

#[derive(Deserialize)]
struct StatusError {
    message: Option<String>,
}

/// POSTs a TokenRequest to `<server>/api/v1/namespaces/<ns>/serviceaccounts/<sa>/token`.
pub async fn mint(client: &ApiClient, p: &MintParams) -> Result<Issued, ClientError> {
    let url = format!(
        "{}/api/v1/namespaces/{}/serviceaccounts/{}/token",
        p.server.trim_end_matches('/'),
        p.namespace,
        p.service_account
    );
    let mut spec = serde_json::json!({ "audiences": p.audiences });
    if let Some(d) = p.duration {
        spec["expirationSeconds"] = d.as_secs().into();
    }
    if let Some((name, uid)) = &p.bound_pod {
        spec["boundObjectRef"] =
            serde_json::json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    });
    let sent = Instant::now();
    let mut request = client.http().post(&url).json(&body);
    if let Some(bearer) = &p.bearer {
        request = request.bearer_auth(bearer);
    }
    let response = client
        .send(request)
        .await
        .map_err(|failure| ClientError::Unreachable {
            url: url.clone(),
            reason: failure.reason,
        })?;
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all(reqwest::header::WARNING)
        .iter()
        .map(|v| warn_text(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: request_error(&e),
        })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<StatusError>(&bytes)
            .ok()
            .and_then(|s| s.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let answer: Answer =
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Answer(e.to_string()))?;
    let status = answer
        .status
        .ok_or_else(|| ClientError::Answer("no status".into()))?;
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ClientError::Answer("no status.token".into()))?;
    let expires_at = status
        .expiration_timestamp
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .ok_or_else(|| ClientError::Answer("no valid status.expirationTimestamp".into()))?;
    let mut issued = Issued::from_answer(token, expires_at, sent, crate::clock::system_now());
    issued.warnings = warnings;
    Ok(issued)
}

/// The text of a `Warning` header value, `299 - "text"` (RFC 9111 §5.5:
/// code, agent, quoted text, optional date), or the value as it is when it
/// has no quoted text.
fn warn_text(value: &str) -> String {
    let Some(start) = value.find('"') else {
        return value.trim().to_owned();
    };
    let mut text = String::new();
    let mut chars = value[start + 1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return text,
            '\\' => text.extend(chars.next()),
            c => text.push(c),
        }
    }
    value.trim().to_owned()
}

/// A token "a.b.c" good for `life` from `since`, for the client's tests.
#[cfg(test)]
pub(crate) fn issued_for_tests(life: Duration, since: Instant) -> Issued {
    Issued {
        token: "a.b.c".into(),
        expires_at: SystemTime::UNIX_EPOCH,
        life,
        since,
        clock_ahead: None,
        warnings: Vec::new(),
    }
}

/// The token of an hour minted at 2026-01-01T00:00:00Z, for the client's tests.
#[cfg(test)]
pub(crate) fn hour_token_for_tests() -> Issued {
    let t = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
    Issued {
        expires_at: t + Duration::from_secs(3600),
        clock_ahead: Some(0),
        ..issued_for_tests(Duration::from_secs(3599), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWT-shaped token with these claims; the signature is not looked at.
    fn jwt(iat: i64, exp: i64) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let claims = serde_json::json!({"iat": iat, "exp": exp});
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn issued() -> Issued {
        hour_token_for_tests()
    }

    #[test]
    fn a_warning_header_gives_its_quoted_text() {
        assert_eq!(
            warn_text(
                r#"299 - "requested expiration of 172800 seconds shortened to 86400 seconds""#
            ),
            "requested expiration of 172800 seconds shortened to 86400 seconds"
        );
        assert_eq!(
            warn_text(r#"299 issuer "say \"no\"" "Sat, 01 Jan 2026 00:00:00 GMT""#),
            r#"say "no""#
        );
        assert_eq!(warn_text(" no quotes "), "no quotes");
        assert_eq!(
            warn_text(r#"299 - "unterminated"#),
            r#"299 - "unterminated"#
        );
    }

    #[test]
    fn renewal_is_at_80_percent_of_the_life() {
        let i = issued();
        assert_eq!(i.renew_at(), i.since + Duration::from_millis(2_879_200));
        assert_eq!(i.expires(), i.since + Duration::from_secs(3599));
    }

    #[test]
    fn a_skewed_local_clock_changes_neither_renewal_nor_expiry_but_is_reported() {
        let iat = 1_767_225_600; // 2026-01-01T00:00:00Z
        let server_now = UNIX_EPOCH + Duration::from_secs(iat as u64);
        let expires_at = server_now + Duration::from_secs(3600);
        let sent = Instant::now();
        for (local, warning) in [
            (server_now, None),
            (server_now + Duration::from_secs(59), None),
            (
                server_now + Duration::from_secs(7200),
                Some("the local clock is 2h ahead of the issuer's"),
            ),
            (
                server_now - Duration::from_secs(3000),
                Some("the local clock is 50m behind the issuer's"),
            ),
        ] {
            let i = Issued::from_answer(jwt(iat, iat + 3600), expires_at, sent, local);
            assert_eq!(i.renew_at(), sent + Duration::from_millis(2_879_200));
            assert_eq!(i.expires(), sent + Duration::from_secs(3599));
            assert_eq!(i.expires_at, expires_at);
            let said = i.clock_warning();
            match warning {
                None => assert_eq!(said, None),
                Some(w) => assert!(
                    said.as_deref().is_some_and(|s| s.starts_with(w)),
                    "{said:?}"
                ),
            }
        }
    }

    #[test]
    fn a_token_without_iat_is_timed_by_its_expiry_on_the_local_clock() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let sent = Instant::now();
        let i = Issued::from_answer("opaque".into(), now + Duration::from_secs(600), sent, now);
        assert_eq!(i.expires(), sent + Duration::from_secs(600));
        assert_eq!(i.clock_warning(), None);
        // exp before iat: no life at all, not a panic.
        let i = Issued::from_answer(jwt(100, 50), now, sent, now);
        assert_eq!(i.life, Duration::ZERO);
    }
}
