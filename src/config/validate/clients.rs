//! Validation of one `[[api_clients]]` table: its credential (a digest or a
//! token file, never the token), certificate names, rate limit and scope.
//!
//! Imports the `k8s` name rules; never `keys`, `issuer`, `http`, `server`,
//! `serve`, `client`.

use std::collections::HashMap;

use crate::config::model::{ApiClientConfig, Credential, RateLimit};
use crate::config::schema::FileApiClient;
use crate::k8s::names::is_dns_label;

pub(super) fn validate_client(
    at: &str,
    a: FileApiClient,
    clusters: &HashMap<String, usize>,
    client_ca: bool,
    problems: &mut Vec<String>,
) -> Option<ApiClientConfig> {
    let before = problems.len();
    if a.name.is_empty() || a.name.len() > 128 || a.name.chars().any(|c| c.is_control()) {
        problems.push(format!("{at}.name: must be 1 to 128 printable characters"));
    }
    let credential = match (a.token_sha256, a.token_file) {
        (Some(hex), None) => {
            if a.generate {
                problems.push(format!("{at}.generate: only applies with token_file"));
            }
            match decode_sha256_hex(&hex) {
                Some(d) => Some(Credential::Sha256(d)),
                None => {
                    problems.push(format!(
                        "{at}.token_sha256: must be 64 hex digits, the SHA-256 of the token \
                         (for example: printf %s \"$TOKEN\" | sha256sum)"
                    ));
                    None
                }
            }
        }
        (None, Some(path)) => Some(Credential::File {
            path,
            generate: a.generate,
        }),
        (Some(_), Some(_)) => {
            problems.push(format!("{at}: set token_sha256 or token_file, not both"));
            None
        }
        (None, None) => {
            if a.certificate_names.is_empty() {
                problems.push(format!(
                    "{at}: set token_sha256 (a digest) or token_file, or certificate_names for \
                     client certificates; tokens are never written inline"
                ));
            } else if a.generate {
                problems.push(format!("{at}.generate: only applies with token_file"));
            }
            None
        }
    };
    if a.allow_common_name && a.certificate_names.is_empty() {
        problems.push(format!(
            "{at}.allow_common_name: only applies with certificate_names"
        ));
    }
    if !a.certificate_names.is_empty() && !client_ca {
        problems.push(format!(
            "{at}.certificate_names: client certificates are only accepted with api.client_ca set"
        ));
    }
    for (j, n) in a.certificate_names.iter().enumerate() {
        if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_control() || c == ' ') {
            problems.push(format!(
                "{at}.certificate_names[{j}]: must be a DNS name, URI or common name of 1 to 253 \
                 characters without spaces"
            ));
        }
    }
    let rate_limit = match (a.rate_limit.as_deref(), a.burst) {
        (None, None) => None,
        (None, Some(_)) => {
            problems.push(format!("{at}.burst: only applies with rate_limit"));
            None
        }
        (Some(text), burst) => match parse_rate(text) {
            Some(per_second) => {
                let default_burst = text
                    .split_once('/')
                    .and_then(|(n, _)| n.trim().parse().ok())
                    .unwrap_or(1);
                let burst = burst.unwrap_or(default_burst);
                if burst == 0 {
                    problems.push(format!("{at}.burst: must be at least 1"));
                }
                Some(RateLimit { per_second, burst })
            }
            None => {
                problems.push(format!(
                    "{at}.rate_limit: \"{text}\" is not a rate; write it like \"200/s\", \"30/m\" \
                     or \"1000/h\" (a positive whole number of mints per second, minute or hour)"
                ));
                None
            }
        },
    };
    if a.clusters.is_empty() {
        problems.push(format!(
            "{at}.clusters: must list the clusters this client may mint for, or [\"*\"]"
        ));
    }
    let all_clusters = a.clusters.iter().any(|c| c == "*");
    for (j, c) in a.clusters.iter().enumerate() {
        if c != "*" && !clusters.contains_key(c) {
            problems.push(format!("{at}.clusters[{j}]: no cluster has id \"{c}\""));
        }
    }
    if let Some(ns) = &a.namespaces {
        if ns.is_empty() {
            problems.push(format!(
                "{at}.namespaces: an empty list would allow nothing; leave it out to allow every namespace"
            ));
        }
        for (j, n) in ns.iter().enumerate() {
            if !is_dns_label(n) {
                problems.push(format!(
                    "{at}.namespaces[{j}]: \"{n}\" is not a namespace name (a DNS label)"
                ));
            }
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(ApiClientConfig {
        name: a.name,
        credential,
        certificate_names: a.certificate_names,
        allow_common_name: a.allow_common_name,
        rate_limit,
        clusters: (!all_clusters).then_some(a.clusters),
        namespaces: a.namespaces,
        admin: a.admin,
    })
}

/// "200/s", "30/m" or "1000/h".
fn parse_rate(text: &str) -> Option<f64> {
    let (count, unit) = text.trim().split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(f64::from(count) / seconds)
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}
