//! The OpenID Provider Metadata document (OIDC Discovery §3) as the Kubernetes
//! API server serves it (pkg/serviceaccount/openidmetadata.go): compact, in this
//! order, with the algorithms of the published keys.

use serde::Serialize;

use crate::keys::material::Algorithm;

#[derive(Serialize)]
struct ProviderMetadata<'a> {
    issuer: &'a str,
    jwks_uri: String,
    response_types_supported: [&'static str; 1],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: Vec<&'static str>,
}

/// Path of the JWKS under the issuer URL, as Kubernetes publishes it.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Path of the discovery document under the issuer URL (OIDC Discovery §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// `algorithms` must be sorted and unique (as `KeySet::algorithms` is).
pub fn document(issuer: &str, algorithms: &[Algorithm]) -> Vec<u8> {
    let meta = ProviderMetadata {
        issuer,
        // Absolute, so relying parties need not resolve it (OIDC Discovery §3).
        jwks_uri: format!("{issuer}{JWKS_PATH}"),
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: algorithms.iter().map(|a| a.as_str()).collect(),
    };
    serde_json::to_vec(&meta).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_matches_the_kubernetes_shape_byte_for_byte() {
        let doc = document(
            "https://oidc.example.com/c/demo",
            &[Algorithm::Es256, Algorithm::Rs256],
        );
        assert_eq!(
            std::str::from_utf8(&doc).unwrap(),
            r#"{"issuer":"https://oidc.example.com/c/demo","jwks_uri":"https://oidc.example.com/c/demo/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["ES256","RS256"]}"#
        );
    }
}
