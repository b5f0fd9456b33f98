//! A role of Vault's JWT auth method, as `vault read -format=json
//! auth/jwt/role/NAME` prints it, optionally with the method's config
//! fields (`oidc_discovery_url`, `jwks_url`, `bound_issuer`,
//! `jwt_supported_algs`, as `vault read auth/jwt/config` prints them),
//! applied to a token the way the JWT/OIDC auth method documents it
//! (Vault docs, "JWT/OIDC auth method" and its API page).

use serde_json::Value;

use super::super::glob::{matches, Wildcards};
use super::super::token::Token;
use super::strings;

/// Vault's defaults, used for a leeway of 0; -1 turns one off.
const DEFAULT_CLOCK_SKEW: i64 = 60;
const DEFAULT_EXPIRATION: i64 = 150;
const DEFAULT_NOT_BEFORE: i64 = 150;

#[derive(Clone, Debug, Default)]
pub struct Role {
    pub bound_audiences: Vec<String>,
    pub bound_subject: Option<String>,
    pub bound_claims: Vec<(String, Vec<String>)>,
    pub glob: bool,
    /// Empty: Vault's default, RS256.
    pub jwt_supported_algs: Vec<String>,
    pub user_claim: String,
    pub oidc_discovery_url: Option<String>,
    pub jwks_url: Option<String>,
    pub bound_issuer: Option<String>,
    pub clock_skew_leeway: i64,
    pub expiration_leeway: i64,
    pub not_before_leeway: i64,
}

impl Role {
    pub fn parse(json: &Value) -> Result<Role, String> {
        let list = |name: &str| -> Result<Vec<String>, String> {
            match &json[name] {
                Value::Null => Ok(Vec::new()),
                // The CLI's key=value form writes lists comma-separated.
                Value::String(s) => Ok(s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()),
                v => strings(v).ok_or(format!("{name} is not a list of strings")),
            }
        };
        let text = |name: &str| -> Result<Option<String>, String> {
            match &json[name] {
                Value::Null => Ok(None),
                Value::String(s) if s.is_empty() => Ok(None),
                Value::String(s) => Ok(Some(s.clone())),
                _ => Err(format!("{name} is not a string")),
            }
        };
        let leeway = |name: &str, default: i64| -> Result<i64, String> {
            let secs = match &json[name] {
                Value::Null => 0,
                Value::Number(n) => n.as_i64().ok_or(format!("{name} is not whole seconds"))?,
                Value::String(s) => match s.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => humantime::parse_duration(s)
                        .map_err(|e| format!("{name} {s:?}: {e}"))?
                        .as_secs() as i64,
                },
                _ => return Err(format!("{name} is not a number of seconds")),
            };
            Ok(match secs {
                0 => default,
                -1 => 0,
                n if n < 0 => return Err(format!("{name} {n}: only -1 turns it off")),
                n => n,
            })
        };
        let mut bound_claims = Vec::new();
        match &json["bound_claims"] {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    let values = strings(v).ok_or(format!(
                        "bound_claims.{k} is not a string or list of strings"
                    ))?;
                    bound_claims.push((k.clone(), values));
                }
            }
            _ => return Err("bound_claims is not an object".into()),
        }
        let glob = match json["bound_claims_type"].as_str() {
            None | Some("string") => false,
            Some("glob") => true,
            Some(other) => {
                return Err(format!(
                    "bound_claims_type {other:?}: Vault takes \"string\" or \"glob\""
                ))
            }
        };
        Ok(Role {
            bound_audiences: list("bound_audiences")?,
            bound_subject: text("bound_subject")?,
            bound_claims,
            glob,
            jwt_supported_algs: list("jwt_supported_algs")?,
            user_claim: text("user_claim")?.unwrap_or_else(|| "sub".into()),
            oidc_discovery_url: text("oidc_discovery_url")?,
            jwks_url: text("jwks_url")?,
            bound_issuer: text("bound_issuer")?,
            clock_skew_leeway: leeway("clock_skew_leeway", DEFAULT_CLOCK_SKEW)?,
            expiration_leeway: leeway("expiration_leeway", DEFAULT_EXPIRATION)?,
            not_before_leeway: leeway("not_before_leeway", DEFAULT_NOT_BEFORE)?,
        })
    }

    /// The algorithms the method verifies.
    pub fn algorithms(&self) -> Vec<String> {
        if self.jwt_supported_algs.is_empty() {
            vec!["RS256".into()]
        } else {
            self.jwt_supported_algs.clone()
        }
    }

    /// Why `bound_audiences` refuses the token; `None` when it admits it.
    pub fn audience_refusal(&self, token: &Token) -> Option<String> {
        let auds = token.audiences();
        if self.bound_audiences.is_empty() {
            return (!auds.is_empty()).then(|| {
                format!(
                    "the token carries aud {auds:?} and the role binds no audience: Vault refuses that"
                )
            });
        }
        (!self
            .bound_audiences
            .iter()
            .any(|b| auds.contains(&b.as_str())))
        .then(|| {
            format!(
                "bound_audiences {:?} holds none of the token's aud {auds:?}",
                self.bound_audiences
            )
        })
    }

    /// Each bound claim (and `bound_subject`) the token does not meet.
    pub fn claim_refusals(&self, token: &Token) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(bound) = &self.bound_subject {
            let sub = token.claim_str("sub").unwrap_or_default();
            if sub != bound {
                problems.push(format!(
                    "bound_subject {bound:?} is not the token's sub {sub:?}"
                ));
            }
        }
        for (key, wanted) in &self.bound_claims {
            let actual = claim(&token.claims, key);
            let values: Vec<String> = match actual {
                Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
                Some(v) => scalar(v).into_iter().collect(),
                None => Vec::new(),
            };
            let hit = values.iter().any(|v| {
                wanted.iter().any(|w| {
                    if self.glob {
                        matches(w, v, Wildcards::Star)
                    } else {
                        w == v
                    }
                })
            });
            if !hit {
                problems.push(format!(
                    "bound_claims {key:?} = {wanted:?}{} refuses the token's {}",
                    if self.glob { " (glob)" } else { "" },
                    match actual {
                        Some(v) => format!("{v}"),
                        None => "missing claim".into(),
                    }
                ));
            }
        }
        problems
    }

    /// Why the token is outside its validity as Vault applies the leeways
    /// at `now`; `None` when it is inside.
    pub fn time_refusal(&self, token: &Token, now: i64) -> Option<String> {
        let skew = self.clock_skew_leeway;
        if let Some(exp) = token.time("exp") {
            if now > exp + self.expiration_leeway + skew {
                return Some(format!(
                    "expired at {exp}, past expiration_leeway {}s + clock_skew_leeway {skew}s",
                    self.expiration_leeway
                ));
            }
        } else {
            return Some("the token has no exp".into());
        }
        if let Some(nbf) = token.time("nbf") {
            if now + self.not_before_leeway + skew < nbf {
                return Some(format!(
                    "not valid before {nbf}, beyond not_before_leeway {}s + clock_skew_leeway {skew}s",
                    self.not_before_leeway
                ));
            }
        }
        if let Some(iat) = token.time("iat") {
            if now + skew < iat {
                return Some(format!(
                    "issued in the future ({iat}), beyond clock_skew_leeway {skew}s"
                ));
            }
        }
        None
    }
}

/// A claim by name, or by JSON pointer when the key starts with `/`.
fn claim<'a>(claims: &'a Value, key: &str) -> Option<&'a Value> {
    if key.starts_with('/') {
        claims.pointer(key)
    } else {
        claims.get(key)
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    fn token(claims: Value) -> Token {
        Token::parse(&format!(
            "{}.{}.s",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
        .unwrap()
    }

    #[test]
    fn bound_claims_match_by_glob_and_json_pointer() {
        let t = token(
            json!({"sub": "system:serviceaccount:ws-7:default", "aud": ["vault"],
            "kubernetes.io": {"namespace": "ws-7"}}),
        );
        let role = Role::parse(
            &json!({"bound_audiences": ["vault"], "bound_claims_type": "glob",
            "bound_claims": {"sub": "system:serviceaccount:ws-*:default",
                             "/kubernetes.io/namespace": ["ws-*"]}}),
        )
        .unwrap();
        assert!(role.claim_refusals(&t).is_empty());
        assert_eq!(role.audience_refusal(&t), None);
        let strict =
            Role::parse(&json!({"bound_claims": {"sub": "system:serviceaccount:ws-*:default"}}))
                .unwrap();
        let p = strict.claim_refusals(&t);
        assert!(
            p.len() == 1 && p[0].contains("bound_claims \"sub\""),
            "{p:?}"
        );
        let none = Role::parse(&json!({})).unwrap();
        assert!(none
            .audience_refusal(&t)
            .unwrap()
            .contains("binds no audience"));
        assert_eq!(none.algorithms(), ["RS256"]);
    }

    #[test]
    fn leeways_default_when_zero_and_turn_off_at_minus_one() {
        let t = token(json!({"exp": 1000, "iat": 400}));
        let default = Role::parse(&json!({"expiration_leeway": 0})).unwrap();
        // 150 s + 60 s past exp is still inside.
        assert_eq!(default.time_refusal(&t, 1210), None);
        assert!(default.time_refusal(&t, 1211).is_some());
        let off =
            Role::parse(&json!({"expiration_leeway": -1, "clock_skew_leeway": "-1"})).unwrap();
        assert!(off.time_refusal(&t, 1001).unwrap().contains("expired"));
        assert!(default.time_refusal(&t, 339).unwrap().contains("future"));
        assert!(Role::parse(&json!({"bound_claims_type": "regex"})).is_err());
    }
}
