//! Public JWKs, the JWK Set document, and the Kubernetes kid.
//!
//! Public material only: nothing here can hold or print a private member.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;

/// The key id the Kubernetes API server gives a public key
/// (pkg/serviceaccount/jwt.go, keyIDFromPublicKey): base64url without padding of
/// SHA-256 over the PKIX SubjectPublicKeyInfo DER. Keeping the same rule lets
/// tokens of a kube-apiserver and of this issuer share one JWKS.
pub fn kid_from_spki_der(spki_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// One public key as published (RFC 7517 §4, RFC 7518 §6). Members in the order
/// relying parties are used to: kty, kid, use, alg, then the key's own.
/// GCP's uploaded-JWKS format allows no other members than these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    kty: &'static str,
    kid: String,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
}

/// Big-endian unsigned integers in JWKs carry no leading zero octets
/// (RFC 7518 §2, Base64urlUInt).
fn uint(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    URL_SAFE_NO_PAD.encode(&bytes[start..])
}

impl PublicJwk {
    pub fn rsa(kid: &str, n: &[u8], e: &[u8]) -> Self {
        PublicJwk {
            kty: "RSA",
            kid: kid.to_owned(),
            use_: "sig",
            alg: "RS256",
            n: Some(uint(n)),
            e: Some(uint(e)),
            crv: None,
            x: None,
            y: None,
        }
    }

    /// `x` and `y` are the 32-byte coordinates, kept at full length
    /// (RFC 7518 §6.2.1.2: the length is the full size of a coordinate).
    pub fn ec_p256(kid: &str, x: &[u8], y: &[u8]) -> Self {
        PublicJwk {
            kty: "EC",
            kid: kid.to_owned(),
            use_: "sig",
            alg: "ES256",
            n: None,
            e: None,
            crv: Some("P-256"),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> &'static str {
        self.alg
    }

    pub fn kty(&self) -> &'static str {
        self.kty
    }
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: &'a [PublicJwk],
}

/// Serializes a JWK Set (RFC 7517 §5), compact.
pub fn jwks_json(keys: &[PublicJwk]) -> Vec<u8> {
    // Serializing plain strings into a Vec cannot fail.
    serde_json::to_vec(&JwkSet { keys }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_matches_the_kubernetes_vector() {
        let pem = include_str!("../../tests/vectors/kubernetes-kid-rsa.pub.pem");
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "PUBLIC KEY");
        assert_eq!(
            kid_from_spki_der(&der),
            "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU"
        );
    }

    #[test]
    fn rsa_jwk_has_members_in_order_and_no_leading_zero() {
        let jwk = PublicJwk::rsa("k1", &[0, 0xc3, 0x01], &[1, 0, 1]);
        let json = serde_json::to_string(&jwk).unwrap();
        assert_eq!(
            json,
            r#"{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":"wwE","e":"AQAB"}"#
        );
    }

    #[test]
    fn ec_jwk_keeps_32_byte_coordinates() {
        let x = [0u8; 32];
        let y = [0xffu8; 32];
        let jwk = PublicJwk::ec_p256("k2", &x, &y);
        let v: serde_json::Value = serde_json::to_value(&jwk).unwrap();
        let decoded = URL_SAFE_NO_PAD.decode(v["x"].as_str().unwrap()).unwrap();
        assert_eq!(decoded.len(), 32);
        assert_eq!(v["crv"], "P-256");
        assert!(v.get("d").is_none());
    }
}
