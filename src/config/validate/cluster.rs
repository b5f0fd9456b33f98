//! Validation of one `[[clusters]]` table: its id, issuer URL, algorithm,
//! audiences, token lifetimes and rotation policy (REFERENCE §5).
//!
//! Imports the `k8s` name rules and the key kinds of `config::keyspec`; never
//! `issuer`, `http`, `server`, `serve`, `client`.

use std::time::Duration;

use super::duration;
use crate::config::model::{
    ClusterConfig, RotationPolicy, SignerSocket, DEFAULT_AUDIENCE, MAX_KEYS_PER_TYPE,
};
use crate::config::schema::FileCluster;
use crate::config::{KeySpec, RSA_BITS};
use crate::k8s::names::{check_audience, is_dns_label};

const MAX_LIFETIME_CAP: Duration = Duration::from_secs(365 * 86400);
/// kube-apiserver's floor for `max_token_expiration_seconds`.
const MIN_SIGNER_LIFETIME: Duration = Duration::from_secs(600);

pub(in crate::config) fn validate_cluster(
    at: &str,
    c: FileCluster,
    public_url: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<ClusterConfig> {
    let before = problems.len();
    if !is_dns_label(&c.id) {
        problems.push(format!(
            "{at}.id: \"{}\" must be a DNS label: 1 to 63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit",
            c.id
        ));
    }
    let issuer = match (&c.issuer, public_url) {
        (Some(explicit), _) => explicit.clone(),
        (None, Some(base)) => format!("{base}/c/{}", c.id),
        (None, None) => String::new(), // public_url already reported
    };
    let mut issuer_path = String::new();
    if !issuer.is_empty() {
        match check_url(&issuer) {
            Ok(path) => issuer_path = path,
            Err(why) => problems.push(format!("{at}.issuer: \"{issuer}\" {why}")),
        }
    }
    let key_spec = match (c.algorithm.as_str(), c.rsa_bits) {
        ("RS256", None) => Some(KeySpec::Rsa { bits: 2048 }),
        ("RS256", Some(bits)) if RSA_BITS.contains(&bits) => Some(KeySpec::Rsa { bits }),
        ("RS256", Some(bits)) => {
            problems.push(format!(
                "{at}.rsa_bits: {bits} is not allowed; use 2048, 3072 or 4096 \
                 (RSA under 2048 bits is refused by cloud IAM providers)"
            ));
            None
        }
        ("ES256", None) => Some(KeySpec::P256),
        ("ES256", Some(_)) => {
            problems.push(format!(
                "{at}.rsa_bits: only applies to algorithm \"RS256\""
            ));
            None
        }
        (other, _) => {
            problems.push(format!(
                "{at}.algorithm: \"{other}\" is not supported; use \"RS256\" or \"ES256\""
            ));
            None
        }
    };
    let audiences = c
        .audiences
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
    if audiences.is_empty() {
        problems.push(format!("{at}.audiences: must name at least one audience"));
    }
    for (j, aud) in audiences.iter().enumerate() {
        if let Err(why) = check_audience(aud) {
            problems.push(format!("{at}.audiences[{j}]: {why}"));
        }
    }
    let min = duration(
        at,
        "min_token_lifetime",
        c.min_token_lifetime.as_deref(),
        "10m",
        problems,
    );
    let max = duration(
        at,
        "max_token_lifetime",
        c.max_token_lifetime.as_deref(),
        "24h",
        problems,
    );
    let max_age = duration(
        at,
        "jwks_max_age",
        c.jwks_max_age.as_deref(),
        "1h",
        problems,
    );
    if let (Some(min), Some(max)) = (min, max) {
        if min < Duration::from_secs(1) {
            problems.push(format!("{at}.min_token_lifetime: must be at least 1s"));
        }
        if max < min {
            problems.push(format!(
                "{at}.max_token_lifetime: {} is shorter than min_token_lifetime {}",
                humantime::format_duration(max),
                humantime::format_duration(min)
            ));
        }
        if max > MAX_LIFETIME_CAP {
            problems.push(format!(
                "{at}.max_token_lifetime: {} is longer than the 365-day cap",
                humantime::format_duration(max)
            ));
        }
    }
    if let Some(age) = max_age {
        if age < Duration::from_secs(1) || age > Duration::from_secs(7 * 86400) {
            problems.push(format!(
                "{at}.jwks_max_age: {} must be between 1s and 7d; relying parties that \
                 cannot cache refetch the JWKS on every verification",
                humantime::format_duration(age)
            ));
        }
    }
    let kubernetes_signer = validate_signer(at, &c, max, problems);
    let rotation = match (max, max_age) {
        (Some(max), Some(age)) => validate_policy(at, &c, max, age, problems),
        _ => None,
    };
    if problems.len() != before {
        return None;
    }
    Some(ClusterConfig {
        rotation: rotation?,
        id: c.id,
        issuer,
        issuer_path,
        key_spec: key_spec?,
        audiences,
        min_token_lifetime: min?,
        max_token_lifetime: max?,
        jwks_max_age: max_age?,
        publish_only: c.publish_only,
        kubernetes_signer,
        origin: crate::config::model::Origin::File,
    })
}

/// kube-apiserver refuses a signer whose maximum lifetime is under 10
/// minutes (REFERENCE §9), and dials an absolute socket path.
fn validate_signer(
    at: &str,
    c: &FileCluster,
    max_lifetime: Option<Duration>,
    problems: &mut Vec<String>,
) -> Option<SignerSocket> {
    let Some(path) = &c.kubernetes_signer_socket else {
        if c.kubernetes_signer_socket_group.is_some() {
            problems.push(format!(
                "{at}.kubernetes_signer_socket_group: only applies with kubernetes_signer_socket"
            ));
        }
        return None;
    };
    if c.publish_only {
        problems.push(format!(
            "{at}.kubernetes_signer_socket: a publish_only cluster holds no private key here \
             and cannot sign; drop publish_only or kubernetes_signer_socket"
        ));
    }
    if !path.is_absolute() || path.file_name().is_none() {
        problems.push(format!(
            "{at}.kubernetes_signer_socket: \"{}\" must be an absolute file path, as \
             kube-apiserver's --service-account-signing-endpoint names it",
            path.display()
        ));
    }
    if let Some(max) = max_lifetime.filter(|m| *m < MIN_SIGNER_LIFETIME) {
        problems.push(format!(
            "{at}.max_token_lifetime: {} is under 10m, the least kube-apiserver accepts from \
             an external signer (max_token_expiration_seconds >= 600); raise it or drop \
             kubernetes_signer_socket",
            humantime::format_duration(max)
        ));
    }
    if let Some(group) = &c.kubernetes_signer_socket_group {
        if group.is_empty() || group.contains(':') {
            problems.push(format!(
                "{at}.kubernetes_signer_socket_group: {group:?} is not a group name or id"
            ));
        }
    }
    Some(SignerSocket {
        path: path.clone(),
        group: c.kubernetes_signer_socket_group.clone(),
    })
}

/// Rotation policy of one cluster (REFERENCE §5). Refuses a policy under
/// which a relying party could miss a key: a next key published for less than
/// the JWKS max-age before it signs, or a retired key dropped while tokens it
/// signed may still be presented.
fn validate_policy(
    at: &str,
    c: &FileCluster,
    max_lifetime: Duration,
    max_age: Duration,
    problems: &mut Vec<String>,
) -> Option<RotationPolicy> {
    let rotate_every = duration(
        at,
        "rotate_every",
        c.rotate_every.as_deref(),
        "30d",
        problems,
    );
    let publish_ahead = duration(
        at,
        "publish_ahead",
        c.publish_ahead.as_deref(),
        "24h",
        problems,
    );
    let clock_skew = duration(at, "clock_skew", c.clock_skew.as_deref(), "5m", problems);
    let (rotate_every, publish_ahead, clock_skew) = (rotate_every?, publish_ahead?, clock_skew?);
    let floor = max_lifetime + max_age + clock_skew;
    let retention = match c.retention.as_deref() {
        Some(text) => duration(at, "retention", Some(text), "", problems)?,
        None => floor,
    };
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let before = problems.len();
    if publish_ahead < max_age {
        problems.push(format!(
            "{at}.publish_ahead: {} is shorter than jwks_max_age {}: a relying party that cached \
             the JWKS just before the next key appeared would not know it when it starts signing",
            show(publish_ahead),
            show(max_age)
        ));
    }
    if retention < floor {
        problems.push(format!(
            "{at}.retention: {} is shorter than max_token_lifetime {} + jwks_max_age {} + \
             clock_skew {} = {}: tokens signed just before a rotation would stop verifying \
             while still valid",
            show(retention),
            show(max_lifetime),
            show(max_age),
            show(clock_skew),
            show(floor)
        ));
    }
    if rotate_every < publish_ahead {
        problems.push(format!(
            "{at}.rotate_every: {} is shorter than publish_ahead {}: each next key must be \
             published for publish_ahead before it signs",
            show(rotate_every),
            show(publish_ahead)
        ));
    }
    if rotate_every < Duration::from_secs(1) {
        problems.push(format!("{at}.rotate_every: must be at least 1s"));
    }
    // AWS accepts at most 100 keys of a type in one JWKS (spire#4699). At
    // steady state the JWKS holds the current and next keys and the retired
    // ones still within retention.
    let published = 2 + retention.as_secs().div_ceil(rotate_every.as_secs().max(1));
    if published > MAX_KEYS_PER_TYPE as u64 {
        problems.push(format!(
            "{at}.rotate_every: rotating every {} with retention {} publishes up to {published} \
             keys; AWS accepts at most 100 of a type, so rotate less often",
            show(rotate_every),
            show(retention)
        ));
    }
    if problems.len() != before {
        return None;
    }
    Some(RotationPolicy {
        rotate_every,
        publish_ahead,
        retention,
    })
}

/// Checks an issuer-style URL and returns its path without a trailing slash.
/// OIDC Discovery §3 and §4.3: the issuer is https (http is accepted here for
/// loopback development), has no query or fragment, and is compared byte for
/// byte, so it must be written in normal form and without a trailing slash.
pub(super) fn check_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("must use https (or http for local development)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".into());
    }
    if text.contains('?') {
        return Err("must not have a query".into());
    }
    if text.contains('#') {
        return Err("must not have a fragment".into());
    }
    if text.ends_with('/') {
        return Err(
            "must not end with '/': relying parties compare the issuer byte for byte, and a \
             trailing slash on one side breaks Azure (AADSTS70021) and go-oidc"
                .into(),
        );
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let normal = format!("{}{}", url.origin().ascii_serialization(), path);
    if normal != text {
        return Err(format!(
            "is not in normal form; write it as \"{normal}\" so it matches the iss claim byte for byte"
        ));
    }
    for segment in path.split('/').skip(1) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("has an empty, '.' or '..' path segment".into());
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(format!(
                "path segment \"{segment}\" may hold only letters, digits, '-', '.', '_' and '~'"
            ));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, BASE};

    #[test]
    fn issuers_may_live_at_another_path_or_at_the_root() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"https://oidc.example.com/id/a\"\n\
             [[clusters]]\nid = \"b\"\nissuer = \"https://b.example.com\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.clusters[0].issuer_path, "/id/a");
        assert_eq!(c.clusters[1].issuer_path, "");
    }

    #[test]
    fn two_issuers_on_one_path_are_refused() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"https://one.example.com/x\"\n\
             [[clusters]]\nid = \"b\"\nissuer = \"https://two.example.com/x\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("clusters[1].issuer") && err.contains("same path"),
            "{err}"
        );
    }

    #[test]
    fn issuer_urls_must_be_in_normal_form() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"HTTPS://Oidc.Example.com:443/a\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("write it as \"https://oidc.example.com/a\""),
            "{err}"
        );
    }

    #[test]
    fn publish_only_is_set_in_the_file_or_by_its_variable_and_is_off_by_default() {
        use crate::config::{Config, Overrides};
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\npublish_only = true\n[[clusters]]\nid = \"b\"\n"
        );
        let c = parse(&text).unwrap();
        assert!(c.clusters[0].publish_only);
        assert!(!c.clusters[1].publish_only);
        let env = [("WORKLOAD_ISSUER_CLUSTERS__1__PUBLISH_ONLY", "true")];
        let c = Config::parse_with_env("test.toml", &text, env, &Overrides::default()).unwrap();
        assert!(c.clusters[1].publish_only);
        let env = [("WORKLOAD_ISSUER_CLUSTERS__0__PUBLISH_ONLY", "yes")];
        let err = Config::parse_with_env("test.toml", &text, env, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WORKLOAD_ISSUER_CLUSTERS__0__PUBLISH_ONLY")
                && err.contains("true or false"),
            "{err}"
        );
    }
}
