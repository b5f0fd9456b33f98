//! An Entra ID federated identity credential, as `az identity
//! federated-credential show` or Microsoft Graph print it (`issuer`,
//! `subject`, `audiences`), matched against a token as Entra matches it:
//! issuer and subject byte for byte, the audience among the token's
//! ("Workload identity federation: important considerations and
//! restrictions").

use serde_json::Value;

use super::super::token::Token;
use super::strings;

#[derive(Clone, Debug)]
pub struct Credential {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

impl Credential {
    pub fn parse(json: &Value) -> Result<Credential, String> {
        let text = |name: &str| {
            json[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no \"{name}\" string: not a federated identity credential"))
        };
        Ok(Credential {
            issuer: text("issuer")?,
            subject: text("subject")?,
            audiences: strings(&json["audiences"])
                .ok_or("\"audiences\" is not a list of strings")?,
        })
    }

    /// Every mismatch between the credential and `token`, each naming the
    /// field; empty when Entra would accept the token.
    pub fn mismatches(&self, token: &Token) -> Vec<String> {
        let mut problems = Vec::new();
        for (field, value) in [("issuer", &self.issuer), ("subject", &self.subject)] {
            if value.trim() != value {
                problems.push(format!(
                    "the credential's {field} {value:?} has surrounding whitespace"
                ));
            }
        }
        for aud in &self.audiences {
            if aud.trim() != aud {
                problems.push(format!(
                    "the credential's audience {aud:?} has surrounding whitespace"
                ));
            }
        }
        let iss = token.claim_str("iss").unwrap_or_default();
        if iss != self.issuer {
            problems.push(format!(
                "the credential's issuer {:?} is not the token's iss {iss:?}{}",
                self.issuer,
                super::super::super::verify::slash_hint(&self.issuer, iss)
            ));
        }
        let sub = token.claim_str("sub").unwrap_or_default();
        if sub != self.subject {
            problems.push(format!(
                "the credential's subject {:?} is not the token's sub {sub:?}",
                self.subject
            ));
        }
        match self.audiences.as_slice() {
            [aud] if token.audiences().contains(&aud.as_str()) => {}
            [aud] => problems.push(format!(
                "the credential's audience {aud:?} is not among the token's {:?}",
                token.audiences()
            )),
            other => problems.push(format!(
                "the credential has {} audiences {other:?}: Entra takes exactly one",
                other.len()
            )),
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    fn token() -> Token {
        let claims = json!({"iss": "https://oidc.example.com/c/prod",
            "sub": "system:serviceaccount:ws-1:default", "aud": ["api://AzureADTokenExchange"]});
        Token::parse(&format!(
            "{}.{}.s",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
        .unwrap()
    }

    #[test]
    fn issuer_subject_and_audience_must_match_exactly() {
        let good = json!({"issuer": "https://oidc.example.com/c/prod",
            "subject": "system:serviceaccount:ws-1:default",
            "audiences": ["api://AzureADTokenExchange"]});
        assert!(Credential::parse(&good)
            .unwrap()
            .mismatches(&token())
            .is_empty());
        let mut slash = good.clone();
        slash["issuer"] = json!("https://oidc.example.com/c/prod/");
        let p = Credential::parse(&slash).unwrap().mismatches(&token());
        assert!(p.len() == 1 && p[0].contains("trailing '/'"), "{p:?}");
        let mut two = good.clone();
        two["audiences"] = json!(["api://AzureADTokenExchange", "x"]);
        let p = Credential::parse(&two).unwrap().mismatches(&token());
        assert!(p.len() == 1 && p[0].contains("exactly one"), "{p:?}");
        let mut space = good;
        space["subject"] = json!("system:serviceaccount:ws-1:default ");
        let p = Credential::parse(&space).unwrap().mismatches(&token());
        assert!(p[0].contains("whitespace"), "{p:?}");
    }
}
