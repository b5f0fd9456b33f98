//! Microsoft Entra ID federated identity credentials (workload identity
//! federation on an app registration or a user-assigned managed identity).

use super::super::{Finding, Subject};
use super::{audience, https, key_summary, no_token, same_issuer};

pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The longest issuer and subject a federated credential holds.
const MAX_FIELD: usize = 600;

pub fn check(s: &Subject) -> Vec<Finding> {
    let mut out = vec![
        https("azure.issuer-https", s, "Entra ID"),
        same_issuer("azure.iss", s, "Entra ID"),
        Finding::check(
            "azure.issuer-length",
            s.issuer.chars().count() <= MAX_FIELD,
            format!("{} characters", s.issuer.chars().count()),
            "a federated credential's issuer holds at most 600 characters: shorten public_url or the issuer path",
        ),
    ];
    let keys = s.documents.keys();
    let no_use: Vec<String> = keys
        .iter()
        .filter(|k| k.get("use").is_none())
        .map(|k| k["kid"].as_str().unwrap_or("?").to_owned())
        .collect();
    out.push(Finding::check(
        "azure.jwks-use",
        no_use.is_empty(),
        if no_use.is_empty() {
            "use on every key".to_owned()
        } else {
            format!("no use on {no_use:?}")
        },
        "Entra ID needs \"use\": \"sig\" on every JWK",
    ));
    let rs256 = keys
        .iter()
        .any(|k| k["alg"] == "RS256" || (k["kty"] == "RSA" && k.get("alg").is_none()));
    out.push(match s.token {
        Some(t) => Finding::check(
            "azure.alg",
            t.alg() == "RS256",
            format!("alg {:?}", t.alg()),
            "Entra ID takes RS256 only: give this issuer a cluster with algorithm = \"RS256\"",
        ),
        None => Finding::check(
            "azure.alg",
            rs256,
            format!("keys {:?}", key_summary(keys)),
            "Entra ID takes RS256 only: the JWKS has no RS256 key (algorithm = \"RS256\")",
        ),
    });
    let Some(t) = s.token else {
        for rule in ["azure.subject-length", "azure.aud", "azure.credential"] {
            out.push(no_token(rule));
        }
        return out;
    };
    let sub = t.claim_str("sub").unwrap_or_default();
    out.push(Finding::check(
        "azure.subject-length",
        !sub.is_empty() && sub.chars().count() <= MAX_FIELD,
        format!("sub of {} characters", sub.chars().count()),
        "a federated credential's subject holds 1 to 600 characters: shorten the namespace or account name",
    ));
    let credential = s.roles.azure.as_ref();
    let wanted = match (s.audience, credential) {
        (Some(a), _) => vec![a.to_owned()],
        (None, Some(c)) => c.audiences.clone(),
        (None, None) => vec![DEFAULT_AUDIENCE.to_owned()],
    };
    out.push(audience(
        "azure.aud",
        s,
        &wanted,
        " (the credential's audience)",
    ));
    out.push(match credential {
        None => Finding::skip("azure.credential", "not checked: give --azure-credential"),
        Some(c) => {
            let problems = c.mismatches(t);
            Finding::check(
                "azure.credential",
                problems.is_empty(),
                if problems.is_empty() {
                    format!("issuer, subject {:?} and audience match", c.subject)
                } else {
                    problems.join("; ")
                },
                "make the credential's issuer, subject and audience the token's, byte for byte",
            )
        }
    });
    out
}
