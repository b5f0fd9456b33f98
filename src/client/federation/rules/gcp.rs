//! Google Cloud workload identity federation (OIDC providers of a workload
//! identity pool, and the Security Token Service exchange).

use super::super::{Finding, Subject};
use super::{audience, https, key_summary, no_token, same_issuer};

const ALGS: [&str; 2] = ["RS256", "ES256"];
/// `exp - iat` must stay under this.
const MAX_LIFETIME: i64 = 48 * 3600;
/// `google.subject`, as mapped, in bytes.
const MAX_SUBJECT: usize = 127;
/// The members of a JWK an uploaded JWKS (`--jwk-json-path`) may hold.
const JWK_MEMBERS: [&str; 9] = ["kty", "alg", "use", "kid", "n", "e", "x", "y", "crv"];

pub fn check(s: &Subject) -> Vec<Finding> {
    let provider = s.roles.gcp.as_ref();
    let mut out = vec![https("gcp.issuer-https", s, "GCP")];
    out.push(match provider.and_then(|p| p.issuer_uri.as_deref()) {
        Some(uri) if uri != s.issuer => Finding::fail(
            "gcp.iss",
            format!("provider issuerUri {uri:?}, issuer {:?}", s.issuer),
            "set the provider's --issuer-uri to the issuer exactly",
        ),
        _ => same_issuer("gcp.iss", s, "GCP"),
    });
    let keys = s.documents.keys();
    let extra: Vec<String> = keys
        .iter()
        .flat_map(|k| {
            k.as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|m| !JWK_MEMBERS.contains(&m.as_str()))
                .map(move |m| format!("{}:{m}", k["kid"].as_str().unwrap_or("?")))
        })
        .collect();
    out.push(match (extra.is_empty(), s.documents.offline()) {
        (true, _) => Finding::pass(
            "gcp.jwks-members",
            "only kty, alg, use, kid, n, e, x, y, crv",
        ),
        (false, true) => Finding::fail(
            "gcp.jwks-members",
            format!("members {extra:?}"),
            "an uploaded JWKS may hold only kty, alg, use, kid, n, e, x, y, crv: drop the others",
        ),
        (false, false) => Finding::warn(
            "gcp.jwks-members",
            format!("members {extra:?}"),
            "fine when GCP fetches the JWKS; drop them before uploading it with --jwk-json-path",
        ),
    });
    let bad: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| k["alg"].as_str().is_some_and(|a| !ALGS.contains(&a)))
        .cloned()
        .collect();
    let bad_keys = key_summary(&bad);
    let Some(t) = s.token else {
        out.push(Finding::check(
            "gcp.alg",
            bad_keys.is_empty(),
            format!("{} key(s){}", keys.len(), other_algs(&bad_keys)),
            "GCP takes RS256 or ES256 keys",
        ));
        for rule in [
            "gcp.kid",
            "gcp.iat",
            "gcp.lifetime",
            "gcp.aud",
            "gcp.subject",
            "gcp.condition",
        ] {
            out.push(no_token(rule));
        }
        return out;
    };
    let kid = t.kid();
    let published = kid.is_some_and(|kid| keys.iter().any(|k| k["kid"] == kid));
    out.push(Finding::check(
        "gcp.kid",
        published,
        match kid {
            Some(kid) => format!("kid {kid:?}"),
            None => "no kid".to_string(),
        },
        "GCP needs a kid in the header naming a key of the JWKS: mint with this issuer",
    ));
    out.push(Finding::check(
        "gcp.alg",
        ALGS.contains(&t.alg()) && bad_keys.is_empty(),
        format!("alg {:?}{}", t.alg(), other_algs(&bad_keys)),
        "GCP takes RS256 or ES256",
    ));
    let (iat, exp) = (t.time("iat"), t.time("exp"));
    out.push(match iat {
        Some(iat) => Finding::check(
            "gcp.iat",
            iat <= s.now,
            format!("iat {iat}, now {}", s.now),
            "GCP refuses a token issued in the future: synchronise the issuer's clock",
        ),
        None => Finding::fail("gcp.iat", "no iat", "GCP needs iat: mint with this issuer"),
    });
    out.push(match (iat, exp) {
        (Some(iat), Some(exp)) => Finding::check(
            "gcp.lifetime",
            exp - iat < MAX_LIFETIME,
            format!("exp - iat = {} s ({} h)", exp - iat, (exp - iat) / 3600),
            "GCP takes tokens valid under 48 h: mint with --duration under 48h (max_token_lifetime)",
        ),
        _ => Finding::fail("gcp.lifetime", "no iat or exp", "GCP needs both"),
    });
    let wanted: Vec<String> = match (s.audience, provider) {
        (Some(a), _) => vec![a.to_owned()],
        (None, Some(p)) => p.audiences(),
        (None, None) => Vec::new(),
    };
    out.push(if wanted.is_empty() {
        Finding::skip(
            "gcp.aud",
            "not checked: give --audience or --gcp-provider (with its name or allowedAudiences)",
        )
    } else {
        audience(
            "gcp.aud",
            s,
            &wanted,
            " (an allowed audience of the provider)",
        )
    });
    let mapped = match provider.map(|p| p.map(t)) {
        Some(Err(why)) => {
            out.push(Finding::fail(
                "gcp.mapping",
                why,
                "fix the provider's attribute mapping",
            ));
            return out;
        }
        Some(Ok(m)) => {
            out.push(Finding::pass("gcp.mapping", "every attribute maps"));
            Some(m)
        }
        None => None,
    };
    let subject = match &mapped {
        Some(m) => m.subject.clone(),
        // GCP's default for Kubernetes, and what `federation print` maps.
        None => t.claim_str("sub").map(str::to_owned),
    };
    out.push(match subject {
        Some(sub) => Finding::check(
            "gcp.subject",
            sub.len() <= MAX_SUBJECT,
            format!("google.subject of {} bytes", sub.len()),
            "GCP takes a google.subject of at most 127 bytes: shorten the namespace or account name, \
             or map google.subject to a shorter value",
        ),
        None => Finding::fail(
            "gcp.subject",
            "no google.subject",
            "map google.subject (google.subject=assertion.sub)",
        ),
    });
    out.push(match (provider, &mapped) {
        (Some(p), Some(m)) => match p.admits(t, m) {
            Ok(()) => Finding::pass(
                "gcp.condition",
                p.condition.as_deref().unwrap_or("no attribute condition"),
            ),
            Err(why) => Finding::fail(
                "gcp.condition",
                why,
                "change the provider's attribute condition, or mint for what it admits",
            ),
        },
        _ => Finding::skip("gcp.condition", "not checked: give --gcp-provider"),
    });
    out
}

/// The keys of another algorithm, for a finding's "saw" text: nothing when
/// there are none, so a healthy line reads without an empty list.
fn other_algs(bad_keys: &[String]) -> String {
    if bad_keys.is_empty() {
        String::new()
    } else {
        format!("; keys of another algorithm: {}", bad_keys.join(", "))
    }
}
