//! A cluster created at run time (the admin API, `clusters add`): the fields
//! of a `[[clusters]]` table, as a JSON object, checked by the same rules as
//! the file's, each problem naming its field.
//!
//! Imports nothing of the crate above `config`.

use std::fmt;

use super::model::ClusterConfig;
use super::schema::FileCluster;
use super::validate::validate_cluster;

/// The fields of a `[[clusters]]` table that a cluster made at run time may
/// not set, with the reason.
const NOT_AT_RUN_TIME: &[(&str, &str)] = &[
    (
        "publish_only",
        "a cluster that signs its own tokens is declared in the config file, where its \
         public keys are imported with `keys import`",
    ),
    (
        "kubernetes_signer_socket",
        "a socket is bound at start; declare such a cluster in the config file",
    ),
    (
        "kubernetes_signer_socket_group",
        "a socket is bound at start; declare such a cluster in the config file",
    ),
];

/// The fields a cluster made at run time may set.
pub const RUNTIME_FIELDS: &[&str] = &[
    "id",
    "issuer",
    "algorithm",
    "rsa_bits",
    "audiences",
    "min_token_lifetime",
    "max_token_lifetime",
    "jwks_max_age",
    "rotate_every",
    "publish_ahead",
    "clock_skew",
    "retention",
];

/// What is wrong with one field ("" when the body as a whole is wrong).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Problems of a cluster's settings, on one line.
pub fn joined(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a cluster's settings as the config file's `[[clusters]]` table is
/// checked; `public_url` gives the issuer when none is set. Every problem is
/// reported, each with its field.
pub fn runtime_cluster(
    settings: &serde_json::Value,
    public_url: &str,
) -> Result<ClusterConfig, Vec<FieldProblem>> {
    let Some(object) = settings.as_object() else {
        return Err(vec![FieldProblem {
            field: String::new(),
            message: format!(
                "must be a JSON object with the fields of a [[clusters]] table ({}), not {}",
                RUNTIME_FIELDS.join(", "),
                kind_of(settings)
            ),
        }]);
    };
    let mut problems = Vec::new();
    for (name, value) in object {
        if let Some((_, why)) = NOT_AT_RUN_TIME.iter().find(|(n, _)| n == name) {
            problems.push(FieldProblem {
                field: name.clone(),
                message: format!("cannot be set for a cluster created at run time: {why}"),
            });
        } else if !RUNTIME_FIELDS.contains(&name.as_str()) {
            problems.push(FieldProblem {
                field: name.clone(),
                message: format!(
                    "unknown field; expected one of: {}",
                    RUNTIME_FIELDS.join(", ")
                ),
            });
        } else if value.is_null() {
            problems.push(FieldProblem {
                field: name.clone(),
                message: "must not be null; leave the field out for its default".into(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let file: FileCluster = match serde_path_to_error::deserialize(settings) {
        Ok(file) => file,
        Err(e) => {
            let field = match e.path().to_string().as_str() {
                "." => String::new(),
                path => path.to_owned(),
            };
            return Err(vec![FieldProblem {
                field,
                message: e.inner().to_string(),
            }]);
        }
    };
    let mut found = Vec::new();
    match validate_cluster("", file, Some(public_url), &mut found) {
        Some(cluster) if found.is_empty() => Ok(ClusterConfig {
            origin: super::model::Origin::Runtime,
            ..cluster
        }),
        _ => Err(found.into_iter().map(|p| split_field(&p)).collect()),
    }
}

/// "`.name`: message" (as `validate_cluster` words a problem with no table
/// in front of it) into its field and message.
fn split_field(problem: &str) -> FieldProblem {
    let trimmed = problem.strip_prefix('.').unwrap_or(problem);
    match trimmed.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => FieldProblem {
            field: field.to_owned(),
            message: message.to_owned(),
        },
        _ => FieldProblem {
            field: String::new(),
            message: trimmed.to_owned(),
        },
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://oidc.example.com";

    fn problems(v: serde_json::Value) -> Vec<FieldProblem> {
        runtime_cluster(&v, BASE).unwrap_err()
    }

    #[test]
    fn a_good_cluster_gets_the_file_defaults_and_its_issuer_under_public_url() {
        let c = runtime_cluster(&json!({"id": "ws-1", "algorithm": "ES256"}), BASE).unwrap();
        assert_eq!(c.issuer, "https://oidc.example.com/c/ws-1");
        assert_eq!(c.issuer_path, "/c/ws-1");
        assert_eq!(c.key_spec, crate::config::KeySpec::P256);
        assert_eq!(
            c.audiences,
            vec![crate::config::DEFAULT_AUDIENCE.to_owned()]
        );
        let c = runtime_cluster(
            &json!({"id": "ws-2", "algorithm": "RS256", "rsa_bits": 3072,
                    "issuer": "https://other.example.com/x", "max_token_lifetime": "2h"}),
            BASE,
        )
        .unwrap();
        assert_eq!(c.issuer_path, "/x");
        assert_eq!(c.max_token_lifetime, std::time::Duration::from_secs(7200));
    }

    #[test]
    fn each_mistake_names_its_field_with_the_files_words() {
        let p = problems(json!({"id": "Bad_Id", "algorithm": "ES256"}));
        assert_eq!(p[0].field, "id");
        assert!(p[0].message.contains("must be a DNS label"), "{p:?}");
        let p = problems(json!({"id": "a", "algorithm": "HS256"}));
        assert_eq!(p[0].field, "algorithm");
        assert!(p[0].message.contains("\"HS256\" is not supported"), "{p:?}");
        let p = problems(json!({"id": "a", "colour": "red"}));
        assert_eq!(p[0].field, "colour");
        assert!(p[0].message.starts_with("unknown field"), "{p:?}");
        let p = problems(json!({"id": "a", "rsa_bits": "big"}));
        assert_eq!(p[0].field, "rsa_bits");
        let p = problems(json!({"id": "a", "publish_only": true}));
        assert_eq!(p[0].field, "publish_only");
        let p = problems(json!({"algorithm": "ES256"}));
        assert!(p[0].message.contains("missing field `id`"), "{p:?}");
        let p = problems(json!(["id"]));
        assert_eq!(p[0].field, "");
        let p =
            problems(json!({"id": "a", "max_token_lifetime": "5m", "min_token_lifetime": "10m"}));
        assert_eq!(p[0].field, "max_token_lifetime");
        assert_eq!(
            problems(json!({"id": "a", "audiences": null}))[0].field,
            "audiences"
        );
    }
}
