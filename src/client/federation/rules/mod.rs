//! Each provider's rules on the issuer URL, its discovery document, its
//! JWKS and a token, one `Finding` per rule; and what the rules share.
//! The source document of every rule is in deploy/federation.md.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod vault;

use serde_json::Value;

use super::{Finding, Subject};
use crate::client::verify::slash_hint;

/// The parts of an issuer URL the providers care about.
pub struct IssuerUrl<'a> {
    pub scheme: &'a str,
    /// Host and port as written.
    pub authority: &'a str,
    pub has_query: bool,
    pub has_fragment: bool,
}

impl<'a> IssuerUrl<'a> {
    pub fn split(issuer: &'a str) -> IssuerUrl<'a> {
        let (scheme, rest) = issuer.split_once("://").unwrap_or(("", issuer));
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        IssuerUrl {
            scheme,
            authority: &rest[..end],
            has_query: rest.contains('?'),
            has_fragment: rest.contains('#'),
        }
    }

    /// The port written in the URL, if any (an IPv6 host's colons aside).
    pub fn port(&self) -> Option<&'a str> {
        let host_end = self.authority.rfind(']').unwrap_or(0);
        self.authority[host_end..]
            .rfind(':')
            .map(|i| &self.authority[host_end + i + 1..])
    }
}

/// `rule`: the issuer is https.
pub fn https(rule: &'static str, s: &Subject, who: &str) -> Finding {
    let url = IssuerUrl::split(s.issuer);
    Finding::check(
        rule,
        url.scheme == "https",
        format!("{:?}", s.issuer),
        format!("{who} takes only an https issuer: serve the issuer over https (public_url = \"https://...\")"),
    )
}

/// `rule`: discovery's `issuer` and the token's `iss` are the issuer URL,
/// byte for byte.
pub fn same_issuer(rule: &'static str, s: &Subject, who: &str) -> Finding {
    let published = s.documents.issuer().unwrap_or_default();
    if published != s.issuer {
        return Finding::fail(
            rule,
            format!("discovery issuer {published:?}, issuer URL {:?}", s.issuer),
            format!(
                "{who} compares them byte for byte{}: register the issuer exactly as discovery states it",
                slash_hint(published, s.issuer)
            ),
        );
    }
    let Some(t) = s.token else {
        return Finding::pass(rule, format!("discovery issuer {published:?}"));
    };
    let iss = t.claim_str("iss").unwrap_or_default();
    Finding::check(
        rule,
        iss == s.issuer,
        format!("iss {iss:?}"),
        format!(
            "{who} needs iss equal to the issuer {:?}{}: mint from the cluster of this issuer",
            s.issuer,
            slash_hint(iss, s.issuer)
        ),
    )
}

/// The skip finding of a token rule without `--token`.
pub fn no_token(rule: &'static str) -> Finding {
    Finding::skip(rule, "not checked: give --token")
}

/// Each JWK's (kid, kty, alg), for messages.
pub fn key_summary(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{}:{}/{}",
                k["kid"].as_str().unwrap_or("?"),
                k["kty"].as_str().unwrap_or("?"),
                k["alg"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `rule`: the token's `aud` holds one of `wanted`.
pub fn audience(rule: &'static str, s: &Subject, wanted: &[String], how: &str) -> Finding {
    let Some(t) = s.token else {
        return no_token(rule);
    };
    let auds = t.audiences();
    Finding::check(
        rule,
        wanted.iter().any(|w| auds.contains(&w.as_str())),
        format!("aud {auds:?}, accepted {wanted:?}"),
        format!(
            "mint the token with --audience {}{how}",
            wanted.first().map_or("?", String::as_str)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_query_and_scheme_are_read_from_the_url_as_written() {
        let u = IssuerUrl::split("https://oidc.example.com:8443/c/p?x=1");
        assert_eq!(
            (u.scheme, u.port(), u.has_query, u.has_fragment),
            ("https", Some("8443"), true, false)
        );
        let u = IssuerUrl::split("https://[::1]/c#f");
        assert_eq!(
            (u.authority, u.port(), u.has_fragment),
            ("[::1]", None, true)
        );
        assert_eq!(IssuerUrl::split("https://[::1]:443").port(), Some("443"));
        assert_eq!(IssuerUrl::split("http://h/c").scheme, "http");
    }
}
