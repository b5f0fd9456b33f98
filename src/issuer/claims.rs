//! Service-account token claims, as the Kubernetes API server issues them
//! (pkg/serviceaccount/claims.go). Fields are declared in sorted order so the
//! JSON has sorted keys, like Kubernetes' own.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always an array (RFC 7519 §4.1.3 allows a string; strict parties expect this).
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    pub serviceaccount: ObjectRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// `system:serviceaccount:<namespace>:<name>`, the subject Kubernetes uses.
pub fn subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The service account's uid. This issuer keeps no service-account objects, so
/// the uid is derived: a name-based UUID (RFC 9562 §5.5, version 5) in the URL
/// namespace over `<issuer>/serviceaccounts/<namespace>/<name>`. Namespaces and
/// names hold no '/', so different accounts never share the input; the same
/// account of the same issuer always gets the same uid, and the same names
/// under another issuer get another.
pub fn service_account_uid(issuer: &str, namespace: &str, name: &str) -> String {
    let input = format!("{issuer}/serviceaccounts/{namespace}/{name}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, input.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_serialize_with_sorted_keys() {
        let c = Claims {
            aud: vec!["a".into()],
            exp: 2,
            iat: 1,
            iss: "https://i".into(),
            jti: "j".into(),
            kubernetes: KubernetesClaims {
                namespace: "ns".into(),
                node: None,
                pod: Some(ObjectRef {
                    name: "p".into(),
                    uid: "u".into(),
                }),
                secret: None,
                serviceaccount: ObjectRef {
                    name: "sa".into(),
                    uid: "v".into(),
                },
            },
            nbf: 1,
            sub: subject("ns", "sa"),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"aud":["a"],"exp":2,"iat":1,"iss":"https://i","jti":"j","kubernetes.io":{"namespace":"ns","pod":{"name":"p","uid":"u"},"serviceaccount":{"name":"sa","uid":"v"}},"nbf":1,"sub":"system:serviceaccount:ns:sa"}"#
        );
    }

    #[test]
    fn service_account_uid_is_stable_and_issuer_scoped() {
        let a = service_account_uid("https://i/c/a", "ns", "sa");
        assert_eq!(a, service_account_uid("https://i/c/a", "ns", "sa"));
        assert_ne!(a, service_account_uid("https://i/c/b", "ns", "sa"));
        assert_ne!(a, service_account_uid("https://i/c/a", "ns", "sb"));
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }
}
