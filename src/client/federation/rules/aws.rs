//! AWS IAM OIDC identity providers and STS `AssumeRoleWithWebIdentity`.

use std::time::Duration;

use super::super::roles::aws::Verdict;
use super::super::{Finding, Subject};
use super::{audience, https, no_token, same_issuer, IssuerUrl};

/// The default client id (audience) of an IAM OIDC provider used with STS.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
const ALGS: [&str; 6] = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"];
/// IAM: at most this many keys of each type in the JWKS.
const MAX_KEYS: usize = 100;
/// STS: `WebIdentityToken` length constraint.
const MAX_TOKEN: usize = 20_000;
/// IAM: `ClientIDList` member length constraint.
const MAX_CLIENT_ID: usize = 255;
/// Not in AWS's documentation: STS reports an error when the issuer takes
/// longer; checked as a warning only.
const FETCH_TIME: Duration = Duration::from_secs(5);

/// The OIDC provider's name in IAM: the issuer without `https://`.
pub fn provider_name(issuer: &str) -> &str {
    issuer.strip_prefix("https://").unwrap_or(issuer)
}

pub fn check(s: &Subject) -> Vec<Finding> {
    let url = IssuerUrl::split(s.issuer);
    let mut out = vec![
        https("aws.issuer-https", s, "IAM"),
        Finding::check(
            "aws.issuer-query",
            !url.has_query && !url.has_fragment,
            format!("{:?}", s.issuer),
            "IAM takes no query or fragment in the provider URL: drop them from public_url",
        ),
        Finding::check(
            "aws.issuer-port",
            url.port().is_none(),
            format!("{:?}", url.authority),
            "IAM takes no port in the provider URL: serve the issuer on 443 and drop the port",
        ),
        same_issuer("aws.iss", s, "STS"),
    ];
    let keys = s.documents.keys();
    let count = |kty: &str| keys.iter().filter(|k| k["kty"] == kty).count();
    let (rsa, ec) = (count("RSA"), count("EC"));
    out.push(Finding::check(
        "aws.jwks-keys",
        rsa <= MAX_KEYS && ec <= MAX_KEYS,
        format!("{rsa} RSA and {ec} EC keys"),
        format!(
            "IAM takes at most {MAX_KEYS} RSA and {MAX_KEYS} EC keys: shorten retention or rotate less often"
        ),
    ));
    let bad_keys: Vec<String> = keys
        .iter()
        .filter(|k| k["alg"].as_str().is_some_and(|a| !ALGS.contains(&a)))
        .map(|k| format!("{}:{}", k["kid"].as_str().unwrap_or("?"), k["alg"]))
        .collect();
    out.push(match s.token {
        _ if !bad_keys.is_empty() => Finding::fail(
            "aws.alg",
            format!("keys {bad_keys:?}"),
            format!("IAM takes {}", ALGS.join(", ")),
        ),
        Some(t) => Finding::check(
            "aws.alg",
            ALGS.contains(&t.alg()),
            format!("alg {:?}", t.alg()),
            format!("IAM takes {}: sign with RS256 or ES256", ALGS.join(", ")),
        ),
        None => Finding::pass("aws.alg", format!("{} key(s)", keys.len())),
    });
    if let Some(took) = s.documents.fetch_time {
        out.push(if took > FETCH_TIME {
            Finding::warn(
                "aws.fetch-time",
                format!("{} ms", took.as_millis()),
                "discovery and the JWKS took over 5 s: STS may give up (a limit AWS does not document)",
            )
        } else {
            Finding::pass("aws.fetch-time", format!("{} ms", took.as_millis()))
        });
    }
    let Some(t) = s.token else {
        for rule in [
            "aws.token-length",
            "aws.claims",
            "aws.aud",
            "aws.trust-policy",
        ] {
            out.push(no_token(rule));
        }
        return out;
    };
    out.push(Finding::check(
        "aws.token-length",
        t.raw.len() <= MAX_TOKEN,
        format!("{} characters", t.raw.len()),
        format!("STS takes a token of at most {MAX_TOKEN} characters: drop claims"),
    ));
    let missing: Vec<&str> = ["iss", "sub", "aud", "iat", "exp"]
        .into_iter()
        .filter(|c| t.claims.get(*c).is_none())
        .collect();
    out.push(Finding::check(
        "aws.claims",
        missing.is_empty(),
        if missing.is_empty() {
            "iss, sub, aud, iat, exp".into()
        } else {
            format!("missing {missing:?}")
        },
        "STS needs iss, sub, aud, iat and exp: mint with this issuer",
    ));
    let wanted = vec![s.audience.unwrap_or(DEFAULT_AUDIENCE).to_owned()];
    let too_long: Vec<&String> = wanted.iter().filter(|w| w.len() > MAX_CLIENT_ID).collect();
    out.push(if too_long.is_empty() {
        audience(
            "aws.aud",
            s,
            &wanted,
            " (or pass the provider's client id with --audience)",
        )
    } else {
        Finding::fail(
            "aws.aud",
            format!("client id of {} characters", too_long[0].len()),
            format!("IAM takes a client id of at most {MAX_CLIENT_ID} characters: choose a shorter audience"),
        )
    });
    out.push(match &s.roles.aws {
        None => Finding::skip("aws.trust-policy", "not checked: give --aws-trust-policy"),
        Some(policy) => match policy.evaluate(provider_name(s.issuer), t) {
            Verdict::Allowed(by) => Finding::pass("aws.trust-policy", by),
            Verdict::Denied(by) => Finding::fail(
                "aws.trust-policy",
                by,
                "the role's trust policy denies this token: change that Deny statement",
            ),
            Verdict::Refused(why) => Finding::fail(
                "aws.trust-policy",
                why.join("; "),
                "change that condition of the trust policy, or mint for the namespace and account it names",
            ),
            Verdict::Unknown(why) => Finding::warn(
                "aws.trust-policy",
                why,
                "check that condition by hand",
            ),
        },
    });
    out
}
