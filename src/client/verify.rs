//! `workload-issuer verify`: what a relying party does with a token (OIDC
//! discovery, JWKS, signature, algorithm, kid, iss, aud, exp, nbf, iat), with a
//! diagnosis a person can act on for each common failure.
//!
//! Verifies with `jsonwebtoken`, not with the code that signs, and reads only
//! what any relying party can fetch: a client, like Vault or STS. Must not
//! import the server side (above all nothing of `keys` or `issuer`, or the
//! check would share the signer's mistakes) nor clap: `cli` fills
//! `VerifyOptions`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{http_client, read_flag_file, request_error, unverified_claims, ClientError};

/// What `verify` is asked to check.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The issuer the token must come from, exactly as in its `iss`.
    pub issuer: String,
    /// The audience the token must be for.
    pub audience: String,
    /// PEM CA bundle to trust for the issuer; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Print the report as JSON.
    pub json: bool,
    /// The token, a file holding it, or `-` for standard input.
    pub token: String,
}

/// Clock skew tolerated on exp, nbf and iat.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// What this issuer signs with, and all a relying party should accept here.
const ALLOWED: [jsonwebtoken::Algorithm; 2] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::ES256,
];

#[derive(Debug, Serialize)]
pub struct Report {
    pub valid: bool,
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
}

impl Report {
    fn invalid(problem: String) -> Report {
        Report {
            valid: false,
            problems: vec![problem],
            header: None,
            claims: None,
        }
    }
}

pub(crate) fn read_token(arg: &str) -> Result<String, ClientError> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
        s
    } else if arg.matches('.').count() == 2 && !std::path::Path::new(arg).is_file() {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).map_err(|e| {
            ClientError::Input(format!(
                "TOKEN {arg:?}: not a token, and not a readable file: {e}"
            ))
        })?
    };
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::Input("TOKEN: empty".into()));
    }
    Ok(token)
}

pub(crate) async fn fetch_json(
    http: &reqwest::Client,
    url: &str,
) -> Result<serde_json::Value, String> {
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {}", request_error(&e)))?;
    let status = r.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    r.json()
        .await
        .map_err(|e| format!("{url} did not answer JSON: {e}"))
}

pub(crate) fn slash_hint(a: &str, b: &str) -> &'static str {
    if a.trim_end_matches('/') == b.trim_end_matches('/') {
        " (they differ only in a trailing '/': the issuer must match byte for byte)"
    } else {
        ""
    }
}

fn ago(t: SystemTime, now: SystemTime) -> String {
    let d = now.duration_since(t).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Verifies `token` for `issuer` and `audience` at `now`.
pub async fn verify(
    http: &reqwest::Client,
    issuer: &str,
    audience: &str,
    token: &str,
    now: SystemTime,
) -> Report {
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(e) => return Report::invalid(format!("not a JWT: {e}")),
    };
    let header_json = serde_json::to_value(&header).ok();
    let claims = unverified_claims(token);
    let mut report = Report {
        valid: false,
        problems: Vec::new(),
        header: header_json,
        claims: claims.clone(),
    };

    if !ALLOWED.contains(&header.alg) {
        report.problems.push(format!(
            "algorithm {:?} is not allowed: only RS256 and ES256 are",
            header.alg
        ));
        return report;
    }

    // OIDC Discovery §4: the document lives under the issuer, whose value
    // in it must be the issuer exactly.
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let discovery = match fetch_json(http, &discovery_url).await {
        Ok(d) => d,
        Err(e) => {
            report.problems.push(format!("discovery failed: {e}"));
            return report;
        }
    };
    let published_issuer = discovery["issuer"].as_str().unwrap_or_default();
    if published_issuer != issuer {
        report.problems.push(format!(
            "issuer mismatch: discovery at {discovery_url} says {published_issuer:?}, you asked for {issuer:?}{}",
            slash_hint(published_issuer, issuer)
        ));
        return report;
    }
    let Some(jwks_uri) = discovery["jwks_uri"].as_str() else {
        report.problems.push("discovery has no jwks_uri".into());
        return report;
    };
    let jwks = match fetch_json(http, jwks_uri).await {
        Ok(j) => j,
        Err(e) => {
            report
                .problems
                .push(format!("fetching the JWKS failed: {e}"));
            return report;
        }
    };
    let set: jsonwebtoken::jwk::JwkSet = match serde_json::from_value(jwks) {
        Ok(s) => s,
        Err(e) => {
            report
                .problems
                .push(format!("{jwks_uri} is not a JWK Set: {e}"));
            return report;
        }
    };
    let Some(kid) = header.kid.as_deref() else {
        report
            .problems
            .push("the token has no kid header: GCP and most relying parties need one".into());
        return report;
    };
    let Some(jwk) = set.find(kid) else {
        let known: Vec<&str> = set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect();
        report.problems.push(format!(
            "kid {kid} is not published at {jwks_uri}; it has: {}. A retired key past its retention, a revoked key, or a token of another issuer",
            if known.is_empty() { "no keys".to_owned() } else { known.join(", ") }
        ));
        return report;
    };
    if let Some(key_alg) = jwk.common.key_algorithm {
        if format!("{key_alg:?}") != format!("{:?}", header.alg) {
            report.problems.push(format!(
                "algorithm mismatch: the token says {:?} but key {kid} is for {key_alg:?}",
                header.alg
            ));
            return report;
        }
    }
    let key = match jsonwebtoken::DecodingKey::from_jwk(jwk) {
        Ok(k) => k,
        Err(e) => {
            report
                .problems
                .push(format!("key {kid} in the JWKS is unusable: {e}"));
            return report;
        }
    };
    // The signature alone here; the claims are checked below, each with its
    // own diagnosis.
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    if let Err(e) = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
        report.problems.push(format!(
            "the signature does not verify with key {kid} ({e}): the token was altered, or signed by another key"
        ));
        return report;
    }

    let claims = claims.unwrap_or_default();
    match claims["iss"].as_str() {
        Some(iss) if iss == issuer => {}
        Some(iss) => report.problems.push(format!(
            "issuer mismatch: the token's iss is {iss:?}, you expect {issuer:?}{}",
            slash_hint(iss, issuer)
        )),
        None => report.problems.push("the token has no iss claim".into()),
    }
    let auds: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if !auds.contains(&audience) {
        report.problems.push(format!(
            "audience mismatch: the token is for {auds:?}, you expect {audience:?}; mint it with --audience {audience}"
        ));
    }
    let time = |name: &str| {
        claims[name]
            .as_i64()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64))
    };
    match time("exp") {
        Some(exp) if exp + LEEWAY <= now => report.problems.push(format!(
            "expired at {} ({} ago); mint a new one, or renew earlier (at 80 % of the lifetime)",
            humantime::format_rfc3339_seconds(exp),
            ago(exp, now)
        )),
        Some(_) => {}
        None => report.problems.push("the token has no exp claim".into()),
    }
    if let Some(nbf) = time("nbf") {
        if nbf > now + LEEWAY {
            report.problems.push(format!(
                "not valid before {} (in {}): check the clocks of the issuer and of this machine",
                humantime::format_rfc3339_seconds(nbf),
                ago(now, nbf)
            ));
        }
    }
    match time("iat") {
        Some(iat) if iat > now + LEEWAY => report.problems.push(format!(
            "issued in the future, at {}: check the clocks of the issuer and of this machine",
            humantime::format_rfc3339_seconds(iat)
        )),
        Some(_) => {}
        None => report
            .problems
            .push("the token has no iat claim (AWS and GCP need one)".into()),
    }
    report.valid = report.problems.is_empty();
    report
}

/// `workload-issuer verify`: exit 0 only for a valid token.
pub async fn run(options: VerifyOptions) -> ExitCode {
    let prepared = (|| {
        let token = read_token(&options.token)?;
        let ca = match &options.ca_file {
            Some(p) => Some(read_flag_file("--ca-file", p)?),
            None => None,
        };
        Ok::<_, ClientError>((token, http_client(ca.as_deref())?))
    })();
    let (token, http) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = verify(
        &http,
        &options.issuer,
        &options.audience,
        &token,
        crate::clock::system_now(),
    )
    .await;
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        if report.valid {
            println!("valid token");
        } else {
            println!("INVALID token:");
            for p in &report.problems {
                println!("  - {p}");
            }
        }
        if let Some(claims) = &report.claims {
            println!("claims (as the token states them):");
            println!(
                "{}",
                serde_json::to_string_pretty(claims).unwrap_or_default()
            );
        }
    }
    if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
