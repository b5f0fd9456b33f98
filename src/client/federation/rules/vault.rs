//! HashiCorp Vault's JWT auth method (`vault auth enable jwt`), with
//! `oidc_discovery_url` or `jwks_url` and a role of `role_type = "jwt"`.

use super::super::{Finding, Subject};
use super::{no_token, same_issuer};

pub fn check(s: &Subject) -> Vec<Finding> {
    let role = s.roles.vault.as_ref();
    let mut out = Vec::new();
    // Vault (go-oidc) requires discovery's issuer to be oidc_discovery_url.
    out.push(match role.and_then(|r| r.oidc_discovery_url.as_deref()) {
        Some(url) if url != s.issuer => Finding::fail(
            "vault.discovery",
            format!("oidc_discovery_url {url:?}, issuer {:?}", s.issuer),
            "set oidc_discovery_url to the issuer exactly",
        ),
        _ => match role.and_then(|r| r.jwks_url.as_deref()) {
            Some(url) if Some(url) != s.documents.discovery["jwks_uri"].as_str() => Finding::fail(
                "vault.discovery",
                format!(
                    "jwks_url {url:?}, discovery's jwks_uri {}",
                    s.documents.discovery["jwks_uri"]
                ),
                "set jwks_url to the issuer's jwks_uri, or use oidc_discovery_url",
            ),
            _ => same_issuer("vault.discovery", s, "Vault"),
        },
    });
    if let Some(bound) = role.and_then(|r| r.bound_issuer.as_deref()) {
        let iss = s.token.and_then(|t| t.claim_str("iss")).unwrap_or(s.issuer);
        out.push(Finding::check(
            "vault.bound-issuer",
            bound == iss,
            format!("bound_issuer {bound:?}, iss {iss:?}"),
            "set bound_issuer to the issuer exactly",
        ));
    }
    let Some(t) = s.token else {
        for rule in [
            "vault.alg",
            "vault.aud",
            "vault.claims",
            "vault.user-claim",
            "vault.time",
        ] {
            out.push(no_token(rule));
        }
        return out;
    };
    let algs = role.map(|r| r.algorithms());
    out.push(match algs {
        Some(algs) => Finding::check(
            "vault.alg",
            algs.iter().any(|a| a == t.alg()),
            format!("alg {:?}, jwt_supported_algs {algs:?}", t.alg()),
            format!(
                "add {} to the auth method's jwt_supported_algs (RS256 when unset)",
                t.alg()
            ),
        ),
        None if t.alg() == "RS256" => Finding::pass("vault.alg", "alg \"RS256\", Vault's default"),
        None => Finding::warn(
            "vault.alg",
            format!("alg {:?}", t.alg()),
            format!(
                "Vault verifies RS256 only unless the auth method sets jwt_supported_algs={}",
                t.alg()
            ),
        ),
    });
    out.push(match role {
        Some(r) => match r.audience_refusal(t) {
            None => Finding::pass(
                "vault.aud",
                format!("bound_audiences {:?}", r.bound_audiences),
            ),
            Some(why) => Finding::fail(
                "vault.aud",
                why,
                format!(
                    "set the role's bound_audiences to the token's audience {:?}",
                    t.audiences().first().copied().unwrap_or("?")
                ),
            ),
        },
        None => match s.audience {
            Some(a) => super::audience(
                "vault.aud",
                s,
                &[a.to_owned()],
                " (the role's bound_audiences)",
            ),
            None => Finding::skip("vault.aud", "not checked: give --vault-role or --audience"),
        },
    });
    let Some(r) = role else {
        for rule in ["vault.claims", "vault.user-claim", "vault.time"] {
            out.push(Finding::skip(rule, "not checked: give --vault-role"));
        }
        return out;
    };
    let refusals = r.claim_refusals(t);
    out.push(Finding::check(
        "vault.claims",
        refusals.is_empty(),
        if refusals.is_empty() {
            "bound_subject and bound_claims match".to_owned()
        } else {
            refusals.join("; ")
        },
        "change the role's bound_subject or bound_claims, or mint for the account they name",
    ));
    out.push(Finding::check(
        "vault.user-claim",
        t.claims
            .get(&r.user_claim)
            .is_some_and(|v| v.is_string() || v.is_number()),
        format!("user_claim {:?}", r.user_claim),
        "set user_claim to a claim the token has (sub)",
    ));
    out.push(match r.time_refusal(t, s.now) {
        None => Finding::pass(
            "vault.time",
            format!(
                "within exp/nbf/iat with leeways {}s/{}s/{}s",
                r.expiration_leeway, r.not_before_leeway, r.clock_skew_leeway
            ),
        ),
        Some(why) => Finding::fail("vault.time", why, "mint a fresh token; check the clocks"),
    });
    out
}
