//! A GCP workload identity pool provider, as `gcloud iam
//! workload-identity-pools providers describe --format=json` prints it: its
//! attribute mapping and attribute condition, both CEL ("Workload Identity
//! Federation", attribute mappings and attribute conditions), evaluated
//! with the `cel` interpreter over the token's claims (`assertion`).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::super::token::Token;
use super::strings;

/// The mapping GCP's guides and `federation print` use for Kubernetes.
pub const DEFAULT_SUBJECT_MAPPING: &str = "assertion.sub";

#[derive(Clone, Debug, Default)]
pub struct ProviderConfig {
    /// `projects/N/locations/global/workloadIdentityPools/P/providers/ID`.
    pub name: Option<String>,
    /// Target attribute (`google.subject`, `attribute.x`) to CEL expression.
    pub mapping: BTreeMap<String, String>,
    pub condition: Option<String>,
    pub issuer_uri: Option<String>,
    pub allowed_audiences: Vec<String>,
}

/// The attributes a token maps to.
#[derive(Clone, Debug, Default)]
pub struct Mapped {
    /// `google.subject`, when the mapping gives a string.
    pub subject: Option<String>,
    google: HashMap<String, cel::Value>,
    attribute: HashMap<String, cel::Value>,
}

impl ProviderConfig {
    pub fn parse(json: &Value) -> Result<ProviderConfig, String> {
        let mut mapping = BTreeMap::new();
        match &json["attributeMapping"] {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    let expr = v
                        .as_str()
                        .ok_or_else(|| format!("attributeMapping.{k} is not a string"))?;
                    mapping.insert(k.clone(), expr.to_owned());
                }
            }
            _ => return Err("attributeMapping is not an object".into()),
        }
        let text = |v: &Value, name: &str| match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("{name} is not a string")),
        };
        Ok(ProviderConfig {
            name: text(&json["name"], "name")?,
            mapping,
            condition: text(&json["attributeCondition"], "attributeCondition")?,
            issuer_uri: text(&json["oidc"]["issuerUri"], "oidc.issuerUri")?,
            allowed_audiences: match &json["oidc"]["allowedAudiences"] {
                Value::Null => Vec::new(),
                v => strings(v).ok_or("oidc.allowedAudiences is not a list of strings")?,
            },
        })
    }

    /// The audiences a token may carry: the allowed ones, or when none are
    /// set the provider's own resource name, with or without `https:`.
    pub fn audiences(&self) -> Vec<String> {
        if !self.allowed_audiences.is_empty() {
            return self.allowed_audiences.clone();
        }
        match &self.name {
            Some(name) => vec![
                format!("//iam.googleapis.com/{name}"),
                format!("https://iam.googleapis.com/{name}"),
            ],
            None => Vec::new(),
        }
    }

    /// Maps the token's claims to attributes; the first mapping that fails
    /// to evaluate, quoted.
    pub fn map(&self, token: &Token) -> Result<Mapped, String> {
        let default = BTreeMap::from([(
            "google.subject".to_owned(),
            DEFAULT_SUBJECT_MAPPING.to_owned(),
        )]);
        let mapping = if self.mapping.is_empty() {
            &default
        } else {
            &self.mapping
        };
        let assertion = cel::to_value(&token.claims).map_err(|e| e.to_string())?;
        let mut mapped = Mapped::default();
        for (target, expr) in mapping {
            let value = eval(expr, &[("assertion", assertion.clone())])
                .map_err(|e| format!("attributeMapping {target:?}: {expr:?}: {e}"))?;
            if let Some(name) = target.strip_prefix("google.") {
                if name == "subject" {
                    let cel::Value::String(s) = &value else {
                        return Err(format!(
                            "attributeMapping \"google.subject\": {expr:?} gives {value:?}, not a string"
                        ));
                    };
                    mapped.subject = Some(s.to_string());
                }
                mapped.google.insert(name.to_owned(), value);
            } else if let Some(name) = target.strip_prefix("attribute.") {
                mapped.attribute.insert(name.to_owned(), value);
            } else {
                return Err(format!(
                    "attributeMapping {target:?}: the target must be google.<name> or attribute.<name>"
                ));
            }
        }
        Ok(mapped)
    }

    /// Whether the attribute condition admits the token (no condition
    /// admits every token); why not, quoted.
    pub fn admits(&self, token: &Token, mapped: &Mapped) -> Result<(), String> {
        let Some(condition) = &self.condition else {
            return Ok(());
        };
        let assertion = cel::to_value(&token.claims).map_err(|e| e.to_string())?;
        let vars = [
            ("assertion", assertion),
            ("google", cel::Value::from(mapped.google.clone())),
            ("attribute", cel::Value::from(mapped.attribute.clone())),
        ];
        match eval(condition, &vars) {
            Ok(cel::Value::Bool(true)) => Ok(()),
            Ok(cel::Value::Bool(false)) => Err(format!(
                "attributeCondition {condition:?} is false for this token"
            )),
            Ok(other) => Err(format!(
                "attributeCondition {condition:?} gives {other:?}, not a bool"
            )),
            Err(e) => Err(format!("attributeCondition {condition:?}: {e}")),
        }
    }
}

/// Compiles and runs `expr` with the given variables.
fn eval(expr: &str, vars: &[(&str, cel::Value)]) -> Result<cel::Value, String> {
    let program = cel::Program::compile(expr).map_err(|e| format!("not CEL: {e}"))?;
    let mut context = cel::Context::default();
    for (name, value) in vars {
        context.add_variable_from_value(*name, value.clone());
    }
    program.execute(&context).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    fn token() -> Token {
        let claims = json!({"sub": "system:serviceaccount:ws-1:default",
            "kubernetes.io": {"namespace": "ws-1"}})
        .to_string();
        Token::parse(&format!(
            "{}.{}.s",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        ))
        .unwrap()
    }

    fn provider(mapping: Value, condition: Option<&str>) -> ProviderConfig {
        ProviderConfig::parse(&json!({
            "name": "projects/123/locations/global/workloadIdentityPools/p/providers/prod",
            "attributeMapping": mapping,
            "attributeCondition": condition,
            "oidc": {"issuerUri": "https://oidc.example.com/c/prod"}}))
        .unwrap()
    }

    #[test]
    fn the_mapping_and_condition_are_evaluated_as_cel() {
        let p = provider(
            json!({"google.subject": "assertion.sub",
                   "attribute.namespace": "assertion['kubernetes.io']['namespace']"}),
            Some("attribute.namespace == 'ws-1' && google.subject.startsWith('system:')"),
        );
        let t = token();
        let mapped = p.map(&t).unwrap();
        assert_eq!(
            mapped.subject.as_deref(),
            Some("system:serviceaccount:ws-1:default")
        );
        p.admits(&t, &mapped).unwrap();
        let p = provider(
            json!({"google.subject": "assertion.sub",
            "attribute.namespace": "assertion['kubernetes.io']['namespace']"}),
            Some("attribute.namespace == 'ws-2'"),
        );
        let err = p.admits(&t, &p.map(&t).unwrap()).unwrap_err();
        assert!(
            err.contains("attribute.namespace == 'ws-2'") && err.contains("false"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_mapping_or_condition_is_quoted() {
        let t = token();
        let err = provider(json!({"google.subject": "assertion.sub +"}), None)
            .map(&t)
            .unwrap_err();
        assert!(
            err.contains("google.subject") && err.contains("not CEL"),
            "{err}"
        );
        let err = provider(json!({"google.subject": "assertion.nope"}), None)
            .map(&t)
            .unwrap_err();
        assert!(err.contains("assertion.nope"), "{err}");
        let p = provider(json!({}), Some("1 + 1"));
        let err = p.admits(&t, &p.map(&t).unwrap()).unwrap_err();
        assert!(err.contains("not a bool"), "{err}");
    }

    #[test]
    fn without_allowed_audiences_the_provider_name_is_the_audience() {
        let p = provider(json!({}), None);
        assert_eq!(
            p.audiences(),
            [
                "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/prod",
                "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/prod"
            ]
        );
    }
}
