//! An IAM role's trust policy, evaluated for `sts:AssumeRoleWithWebIdentity`
//! with a token of this issuer, as IAM evaluates it: an explicit `Deny`
//! wins, else an `Allow` whose every condition holds (IAM User Guide,
//! "Policy evaluation logic" and "IAM JSON policy elements: Condition
//! operators"; the keys are "Available keys for AWS OIDC federation":
//! `<provider>:sub` and `<provider>:aud`, the provider being the issuer URL
//! without `https://`).

use serde_json::Value;

use super::super::glob::{matches, Wildcards};
use super::super::token::Token;
use super::strings;

const ACTION: &str = "sts:AssumeRoleWithWebIdentity";

#[derive(Clone, Debug)]
pub struct TrustPolicy {
    statements: Vec<Value>,
}

/// What IAM would decide, and on which statement and condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this statement.
    Allowed(String),
    /// No `Allow` statement admits the token: why each one does not.
    Refused(Vec<String>),
    /// A `Deny` statement matches the token.
    Denied(String),
    /// A condition this check cannot evaluate decides it.
    Unknown(String),
}

/// One condition's outcome.
enum Outcome {
    Met,
    NotMet(String),
    Unknown(String),
}

impl TrustPolicy {
    pub fn parse(json: &Value) -> Result<TrustPolicy, String> {
        let statements = match &json["Statement"] {
            Value::Array(a) => a.clone(),
            s @ Value::Object(_) => vec![s.clone()],
            _ => return Err("no \"Statement\": not an IAM policy document".into()),
        };
        for (i, s) in statements.iter().enumerate() {
            match s["Effect"].as_str() {
                Some("Allow" | "Deny") => {}
                other => {
                    return Err(format!(
                        "Statement[{i}].Effect is {other:?}: IAM takes \"Allow\" or \"Deny\""
                    ))
                }
            }
        }
        Ok(TrustPolicy { statements })
    }

    /// The decision for `token` presented to the OIDC provider `provider`
    /// (the issuer without `https://`).
    pub fn evaluate(&self, provider: &str, token: &Token) -> Verdict {
        let mut refusals = Vec::new();
        let mut allowed = None;
        for (i, s) in self.statements.iter().enumerate() {
            let at = format!("Statement[{i}]");
            if let Some(why) = not_applicable(s, provider) {
                if s["Effect"] == "Allow" {
                    refusals.push(format!("{at} {why}"));
                }
                continue;
            }
            let outcome = conditions(s, provider, token);
            match (s["Effect"].as_str(), outcome) {
                (Some("Deny"), Outcome::Met) => {
                    return Verdict::Denied(format!("{at} (Deny) matches the token"))
                }
                (Some("Deny"), Outcome::Unknown(why)) | (Some("Allow"), Outcome::Unknown(why)) => {
                    return Verdict::Unknown(format!("{at}: {why}"))
                }
                (Some("Allow"), Outcome::Met) => {
                    allowed.get_or_insert(format!("{at} allows it"));
                }
                (Some("Allow"), Outcome::NotMet(why)) => refusals.push(format!("{at} {why}")),
                _ => {}
            }
        }
        match allowed {
            Some(by) => Verdict::Allowed(by),
            None if refusals.is_empty() => {
                Verdict::Refused(vec!["no statement has Effect \"Allow\"".into()])
            }
            None => Verdict::Refused(refusals),
        }
    }
}

/// Why statement `s` does not concern a web-identity exchange with
/// `provider`; `None` when it does.
fn not_applicable(s: &Value, provider: &str) -> Option<String> {
    let actions = strings(&s["Action"]).unwrap_or_default();
    let covers = |a: &String| matches(a, ACTION, Wildcards::StarAndQuestion);
    if !actions.iter().any(covers) {
        return Some(format!("has Action {actions:?}, not {ACTION:?}"));
    }
    let federated = strings(&s["Principal"]["Federated"]).unwrap_or_default();
    let names_provider = |arn: &String| {
        arn.split_once(":oidc-provider/")
            .is_some_and(|(_, p)| p == provider)
    };
    if !federated.iter().any(names_provider) {
        return Some(format!(
            "has Principal.Federated {federated:?}, not arn:aws:iam::ACCOUNT:oidc-provider/{provider}"
        ));
    }
    None
}

/// Whether every condition of `s` holds; the first one that does not.
fn conditions(s: &Value, provider: &str, token: &Token) -> Outcome {
    let Some(ops) = s["Condition"].as_object() else {
        return Outcome::Met;
    };
    for (op, keys) in ops {
        let Some(keys) = keys.as_object() else {
            return Outcome::Unknown(format!("Condition {op} is not an object of keys"));
        };
        for (key, wanted) in keys {
            let Some(wanted) = strings(wanted) else {
                return Outcome::Unknown(format!(
                    "Condition {op} {key:?}: the value is not a string or a list of strings"
                ));
            };
            let Some(claim) = key.strip_prefix(provider).and_then(|k| k.strip_prefix(':')) else {
                return Outcome::Unknown(format!(
                    "Condition {op} {key:?}: not a key of this provider ({provider}:sub, \
                     {provider}:aud); this check cannot evaluate it"
                ));
            };
            let context: Vec<String> = match claim {
                "sub" => token
                    .claim_str("sub")
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                "aud" => token.audiences().into_iter().map(str::to_owned).collect(),
                // IAM sets no other key for a generic OIDC provider.
                _ => Vec::new(),
            };
            match operator(op, &wanted, &context) {
                Ok(true) => {}
                Ok(false) => {
                    return Outcome::NotMet(format!(
                        "Condition {op} {key:?} = {} refuses the token's {claim} {}",
                        show(&wanted),
                        if context.is_empty() {
                            "(absent)".to_owned()
                        } else {
                            show(&context)
                        }
                    ))
                }
                Err(why) => return Outcome::Unknown(format!("Condition {op} {key:?}: {why}")),
            }
        }
    }
    Outcome::Met
}

fn show(values: &[String]) -> String {
    match values {
        [one] => format!("{one:?}"),
        many => format!("{many:?}"),
    }
}

/// One condition operator (with its `ForAnyValue:`/`ForAllValues:` prefix
/// and `IfExists` suffix) applied to the request's values of the key.
fn operator(op: &str, wanted: &[String], context: &[String]) -> Result<bool, String> {
    let (set, base) = match op.split_once(':') {
        Some((set @ ("ForAnyValue" | "ForAllValues"), base)) => (Some(set), base),
        Some(_) => return Err(format!("unknown set operator in {op:?}")),
        None => (None, op),
    };
    let (base, if_exists) = match base.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (base, false),
    };
    if base == "Null" {
        // "true": the key must be absent.
        let absent = context.is_empty();
        return Ok(wanted.iter().any(|w| (w == "true") == absent));
    }
    let (negated, test): (bool, fn(&str, &str) -> bool) = match base {
        "StringEquals" => (false, |w, v| w == v),
        "StringNotEquals" => (true, |w, v| w == v),
        "StringEqualsIgnoreCase" => (false, |w, v| w.to_lowercase() == v.to_lowercase()),
        "StringNotEqualsIgnoreCase" => (true, |w, v| w.to_lowercase() == v.to_lowercase()),
        "StringLike" => (false, |w, v| matches(w, v, Wildcards::StarAndQuestion)),
        "StringNotLike" => (true, |w, v| matches(w, v, Wildcards::StarAndQuestion)),
        other => {
            return Err(format!(
                "operator {other:?} is not one this check evaluates"
            ))
        }
    };
    let hit = |v: &String| wanted.iter().any(|w| test(w, v));
    // A value satisfies the operator: it matches one wanted value, or for a
    // negated operator none of them.
    let satisfies = |v: &String| hit(v) != negated;
    if context.is_empty() {
        // IAM: an absent key fails every operator but the negated ones,
        // and `...IfExists` and `ForAllValues:` (vacuously true).
        return Ok(if_exists || negated || set == Some("ForAllValues"));
    }
    Ok(match set {
        Some("ForAllValues") => context.iter().all(satisfies),
        Some(_) => context.iter().any(satisfies),
        // A single-valued key; `aud` with several values is taken as any.
        None if negated => !context.iter().any(hit),
        None => context.iter().any(hit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const P: &str = "oidc.example.com/c/prod";

    fn token(sub: &str, aud: Value) -> Token {
        let claims = json!({"sub": sub, "aud": aud}).to_string();
        Token::parse(&format!(
            "{}.{}.s",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        ))
        .unwrap()
    }

    fn policy(effect: &str, condition: Value) -> TrustPolicy {
        TrustPolicy::parse(&json!({"Version": "2012-10-17", "Statement": [{
            "Effect": effect,
            "Principal": {"Federated": format!("arn:aws:iam::111122223333:oidc-provider/{P}")},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": condition}]}))
        .unwrap()
    }

    #[test]
    fn string_equals_on_sub_names_the_condition_that_refuses() {
        let p = policy(
            "Allow",
            json!({"StringEquals": {
                format!("{P}:sub"): "system:serviceaccount:other:default",
                format!("{P}:aud"): "sts.amazonaws.com"}}),
        );
        let t = token(
            "system:serviceaccount:ws-1:default",
            json!(["sts.amazonaws.com"]),
        );
        let Verdict::Refused(why) = p.evaluate(P, &t) else {
            panic!()
        };
        assert_eq!(why.len(), 1);
        assert!(
            why[0].contains(&format!("StringEquals \"{P}:sub\"")),
            "{why:?}"
        );
        assert!(
            why[0].contains("system:serviceaccount:ws-1:default"),
            "{why:?}"
        );
        let t = token(
            "system:serviceaccount:other:default",
            json!("sts.amazonaws.com"),
        );
        assert!(matches!(p.evaluate(P, &t), Verdict::Allowed(_)));
    }

    #[test]
    fn string_like_not_equals_and_for_any_value_apply_as_iam_does() {
        let t = token("system:serviceaccount:ws-1:default", json!(["a", "b"]));
        let like = policy(
            "Allow",
            json!({"StringLike": {format!("{P}:sub"): "system:serviceaccount:ws-?:*"}}),
        );
        assert!(matches!(like.evaluate(P, &t), Verdict::Allowed(_)));
        let not = policy(
            "Allow",
            json!({"StringNotEquals": {format!("{P}:sub"): "system:serviceaccount:ws-1:default"}}),
        );
        assert!(matches!(not.evaluate(P, &t), Verdict::Refused(_)));
        let any = policy(
            "Allow",
            json!({"ForAnyValue:StringEquals": {format!("{P}:aud"): ["b", "c"]}}),
        );
        assert!(matches!(any.evaluate(P, &t), Verdict::Allowed(_)));
        let all = policy(
            "Allow",
            json!({"ForAllValues:StringEquals": {format!("{P}:aud"): ["b", "c"]}}),
        );
        assert!(matches!(all.evaluate(P, &t), Verdict::Refused(_)));
        let deny = TrustPolicy::parse(&json!({"Statement": [
            {"Effect": "Allow", "Principal": {"Federated": format!("arn:aws:iam::1:oidc-provider/{P}")},
             "Action": "sts:*"},
            {"Effect": "Deny", "Principal": {"Federated": format!("arn:aws:iam::1:oidc-provider/{P}")},
             "Action": "sts:AssumeRoleWithWebIdentity",
             "Condition": {"StringLike": {format!("{P}:sub"): "*:ws-1:*"}}}]}))
        .unwrap();
        assert!(matches!(deny.evaluate(P, &t), Verdict::Denied(_)));
    }

    #[test]
    fn a_statement_for_another_provider_or_an_unknown_operator_is_named() {
        let t = token("s", json!("a"));
        let Verdict::Refused(why) = policy("Allow", json!({})).evaluate("other.example/c/x", &t)
        else {
            panic!()
        };
        assert!(
            why[0].contains("oidc-provider/other.example/c/x"),
            "{why:?}"
        );
        let p = policy(
            "Allow",
            json!({"DateGreaterThan": {format!("{P}:sub"): "x"}}),
        );
        assert!(matches!(p.evaluate(P, &t), Verdict::Unknown(_)));
        assert!(TrustPolicy::parse(&json!({"Statement": [{"Effect": "allow"}]})).is_err());
    }
}
